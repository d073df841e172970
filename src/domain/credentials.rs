//! Server credentials. The password is a `SecretString`: it never appears in `Debug` output.

use std::fmt;
use std::net::Ipv4Addr;

use secrecy::{ExposeSecret, SecretString};

/// What the customer needs to log in to their server.
#[derive(Clone)]
pub struct Credentials {
    /// The server's address, the only handle SmartVPS gives on it.
    pub ip: Ipv4Addr,
    /// Login name; `administrator` for Windows images and `root` otherwise when SmartVPS omits it.
    pub username: String,
    /// Login password; redacted in `Debug`, encrypted at rest.
    pub password: SecretString,
    /// Operating system as SmartVPS reports it, when it does.
    pub os: Option<String>,
}

impl Credentials {
    /// The username SmartVPS's convention implies when the reply has none.
    pub fn default_username(os: Option<&str>) -> &'static str {
        let windows = os.is_some_and(|os| {
            super::Os::recognise(os).is_some_and(super::Os::is_windows)
                || os.to_ascii_lowercase().contains("win")
        });
        if windows { "administrator" } else { "root" }
    }

    /// The password, for the few places that must deliver it.
    pub fn expose_password(&self) -> &str {
        self.password.expose_secret()
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("ip", &self.ip)
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .field("os", &self.os)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_password() {
        let c = Credentials {
            ip: Ipv4Addr::new(1, 2, 3, 4),
            username: "root".into(),
            password: SecretString::from("hunter2-secret"),
            os: None,
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn username_convention() {
        assert_eq!(
            Credentials::default_username(Some("Windows 2019")),
            "administrator"
        );
        assert_eq!(Credentials::default_username(Some("2022")), "administrator");
        assert_eq!(Credentials::default_username(Some("ubuntu")), "root");
        assert_eq!(Credentials::default_username(None), "root");
    }
}
