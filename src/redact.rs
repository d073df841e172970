//! Showing URLs without their secrets, in logs and error messages. The one place that decides
//! what of a URL is secret: the password in its user info and a `password=` query value always;
//! the whole user info when none belongs there; and, in free text from HTTP libraries and in URLs
//! that should carry no secret of ours (a webhook's endpoint), any query string (a token can hide
//! in any parameter).

/// What of a URL's user info stays visible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum User {
    /// The user name stays and the password becomes `***` (`postgres://app:***@db/x`): a database
    /// URL, whose user an operator needs to see to tell which account failed.
    Shown,
    /// All of it becomes `[redacted]` (`https://[redacted]@host/`): a URL that should carry no
    /// credentials at all (SmartVPS's are separate settings), so whatever is there may be secret.
    Hidden,
}

/// `raw` with its secrets replaced (see [`User`]), and any `password=` query value replaced by
/// `***`. A URL without credentials comes back unchanged.
pub fn url(raw: &str, user: User) -> String {
    let mut out = match raw.split_once("://") {
        Some((scheme, rest)) => {
            // The authority ends at the first '/', '?' or '#'; user info precedes its last '@'.
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            match (rest[..end].rfind('@'), user) {
                (Some(at), User::Hidden) => format!("{scheme}://[redacted]{}", &rest[at..]),
                (Some(at), User::Shown) => match rest[..at].split_once(':') {
                    Some((name, _password)) => format!("{scheme}://{name}:***{}", &rest[at..]),
                    None => raw.to_string(),
                },
                (None, _) => raw.to_string(),
            }
        }
        // Not even a scheme: no telling where an authority would end, so hide up to any `@`.
        None => match (raw.rfind('@'), user) {
            (Some(at), User::Hidden) => format!("[redacted]{}", &raw[at..]),
            _ => raw.to_string(),
        },
    };
    if let Some(i) = out.find("password=") {
        let start = i + "password=".len();
        let stop = out[start..].find('&').map_or(out.len(), |n| start + n);
        out.replace_range(start..stop, "***");
    }
    out
}

/// `raw` without query, fragment or user info (a token can hide in any of them): a URL that
/// should carry no secret of ours, such as a webhook's endpoint, as logs may show it.
pub fn url_without_query(raw: &str) -> String {
    url(raw.split(['?', '#']).next().unwrap_or(raw), User::Hidden)
}

/// `text` with every URL in it shown as [`url_without_query`] shows it (error texts from HTTP
/// libraries can carry the URL a request was sent to).
pub fn urls_in(text: &str) -> String {
    text.split(' ')
        .map(|word| match word.find("://") {
            Some(_) => url_without_query(word),
            None => word.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_passwords() {
        let shown = |u: &str| url(u, User::Shown);
        assert_eq!(
            shown("postgres://app:s3cret@db:5432/provisioner"),
            "postgres://app:***@db:5432/provisioner"
        );
        assert_eq!(
            shown("postgresql://app:p@ss@db/x?sslmode=require"),
            "postgresql://app:***@db/x?sslmode=require"
        );
        assert_eq!(
            shown("postgres://db/x?user=app&password=s3cret&sslmode=require"),
            "postgres://db/x?user=app&password=***&sslmode=require"
        );
        assert_eq!(shown("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(shown("sqlite://provisioner.db"), "sqlite://provisioner.db");
    }

    #[test]
    fn hidden_user_info_goes_whole() {
        let hidden = |u: &str| url(u, User::Hidden);
        assert_eq!(
            hidden("https://u:p@h.example/x"),
            "https://[redacted]@h.example/x"
        );
        assert_eq!(
            hidden("https://u@h.example"),
            "https://[redacted]@h.example"
        );
        assert_eq!(hidden("u:p@h.example/x"), "[redacted]@h.example/x");
        assert_eq!(hidden("https://h.example/a@b"), "https://h.example/a@b");
    }

    #[test]
    fn url_secrets_are_stripped_from_error_texts() {
        let text = urls_in("error for url (https://u:p@h.example/api/buyvps?token=abc) x");
        assert_eq!(
            text,
            "error for url (https://[redacted]@h.example/api/buyvps x"
        );
    }
}
