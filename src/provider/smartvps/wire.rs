//! Tolerant decoding of SmartVPS reply bodies.
//!
//! SmartVPS sends the same data in several encodings (see `smartvps-wire.md`): a JSON object, that
//! object's JSON inside a JSON string, or a "spread string" object (`{"0":"{","1":"\"",...}`).
//! Everything here is pure and panic-free on any input, so the HTTP client (and the simulator's
//! tests) can feed it whatever came off the wire. Error texts never quote a status reply, since
//! one may carry a server password.

use std::net::Ipv4Addr;

use secrecy::SecretString;
use serde_json::{Map, Value};

use crate::domain::{PackageId, PackageName};
use crate::provider::{Outcome, ServerStatus, StockEntry};

/// How many layers of string or spread encoding are peeled before giving up. Production has been
/// seen to use two; the bound keeps a hostile body from making us loop.
const MAX_LAYERS: usize = 4;

/// How much of a reply body a reason quotes: enough to recognise it, short enough for a log line.
const EXCERPT_CHARS: usize = 80;

/// How much of an error reply [`error_message`] keeps.
const MESSAGE_CHARS: usize = 200;

/// Every key a status reply has been seen to carry; an object with none of them is not details.
const STATUS_KEYS: [&str; 10] = [
    "IP",
    "OS",
    "Usernane",
    "Username",
    "Password",
    "ExpiryDate",
    "PowerStatus",
    "MachineStatus",
    "ActionStatus",
    "RAM",
];

/// What a `status` call answered.
// Boxing the details would cost an allocation per reply to save a few hundred bytes on a value
// that lives only until the caller matches on it.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum StatusReply {
    /// The server's details (possibly not ready yet: empty password, `pending` action).
    Details(ServerStatus),
    /// The bare string `error`: an unknown address or a failure at SmartVPS.
    Error,
}

/// Decodes an `ipstock` reply into stock entries.
///
/// An entry whose name does not parse keeps the name's error text; an entry without a usable id is
/// skipped, since the PID is the only safe key for a product.
///
/// # Errors
/// When the body is not JSON in any known encoding, or has no `packages` list.
pub fn decode_stock(body: &str) -> Result<Vec<StockEntry>, String> {
    let value = peel(body).map_err(|e| format!("ipstock reply is not JSON: {e}"))?;
    let Value::Object(obj) = value else {
        return Err(format!(
            "ipstock reply is not an object (got {})",
            kind_of(&value)
        ));
    };
    let packages = match get_ci(&obj, "packages")
        .cloned()
        .map(|v| unwrap_layers(v, 0))
    {
        Some(Ok(Value::Array(list))) => list,
        Some(Ok(other)) => {
            return Err(format!(
                "ipstock reply's `packages` is {}, not a list",
                kind_of(&other)
            ));
        }
        Some(Err(e)) => return Err(format!("ipstock reply's `packages` is garbled: {e}")),
        None => return Err("ipstock reply has no `packages` list".to_string()),
    };
    Ok(packages.into_iter().filter_map(stock_entry).collect())
}

/// One stock entry, or `None` when it has no usable id.
fn stock_entry(raw: Value) -> Option<StockEntry> {
    let Ok(Value::Object(entry)) = unwrap_layers(raw, 0) else {
        return None;
    };
    let id = get_ci(&entry, "id")
        .and_then(as_u64)
        .and_then(|id| u32::try_from(id).ok())
        .filter(|id| *id > 0)?;
    let name = match get_ci(&entry, "name") {
        Some(Value::String(s)) => PackageName::parse(s).map_err(|e| e.to_string()),
        // An integer is exact ("103" is a one-group name); a float has lost its trailing zeros.
        Some(Value::Number(n)) if n.is_u64() => {
            PackageName::parse(&n.to_string()).map_err(|e| e.to_string())
        }
        Some(Value::Number(n)) => Err(format!(
            "package name arrived as the number {n}; its digits are ambiguous"
        )),
        Some(other) => Err(format!("package name is {}, not text", kind_of(other))),
        None => Err("package has no name".to_string()),
    };
    // A missing or unreadable count reads as none free: the noisy signal errs towards "sold out".
    let free = get_ci(&entry, "ipv4")
        .and_then(as_u64)
        .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX));
    let active = get_ci(&entry, "status")
        .and_then(as_text)
        .is_some_and(|s| s.trim().eq_ignore_ascii_case("active"));
    Some(StockEntry {
        id: PackageId(id),
        name,
        free,
        active,
    })
}

/// Classifies a 2xx `buyvps` reply.
///
/// Succeeded only for a `success|` reply carrying an address; `error`/`fail...` is a definite no;
/// anything else may have bought a server and is unknown.
pub fn classify_buy(body: &str) -> Outcome<Ipv4Addr> {
    let text = reply_text(body);
    if text.is_empty() {
        return Outcome::Unknown("buyvps answered with an empty body".to_string());
    }
    let lower = text.to_ascii_lowercase();
    let address = last_dotted_quad(&text);
    if let Some(rest) = lower.strip_prefix("success") {
        if !rest.trim_start().starts_with('|') {
            return Outcome::Unknown(format!(
                "buyvps reply is not a recognised status: {}",
                excerpt(&text)
            ));
        }
        return match address {
            Some(ip) if usable(ip) => Outcome::Succeeded(ip),
            Some(ip) => Outcome::Unknown(format!(
                "buyvps said success with an unusable address {ip}: {}",
                excerpt(&text)
            )),
            None => Outcome::Unknown(format!(
                "buyvps said success but gave no IPv4 address: {}",
                excerpt(&text)
            )),
        };
    }
    if lower.starts_with("error") || lower.starts_with("fail") {
        return Outcome::Rejected(format!("SmartVPS refused the purchase: {}", excerpt(&text)));
    }
    match address {
        Some(ip) => Outcome::Unknown(format!(
            "buyvps reply names {ip} but has no `success|` marker: {}",
            excerpt(&text)
        )),
        None => Outcome::Unknown(format!(
            "buyvps reply is not a recognised status: {}",
            excerpt(&text)
        )),
    }
}

/// Classifies a 2xx reply of `start`, `stop`, `format`, `changeos` or `renewvps` (named by
/// `endpoint`, for the reason).
///
/// Succeeded for a reply starting `success`; `error`/`fail...` is a definite no; anything else
/// (an empty body, other text) may have changed the server and is unknown.
pub fn classify_command(endpoint: &str, body: &str) -> Outcome<()> {
    let text = reply_text(body);
    let lower = text.to_ascii_lowercase();
    if lower.starts_with("success") {
        Outcome::Succeeded(())
    } else if lower.starts_with("error") || lower.starts_with("fail") {
        Outcome::Rejected(format!("SmartVPS refused {endpoint}: {}", excerpt(&text)))
    } else if text.is_empty() {
        Outcome::Unknown(format!("{endpoint} answered with an empty body"))
    } else {
        Outcome::Unknown(format!(
            "{endpoint} reply is not a recognised status: {}",
            excerpt(&text)
        ))
    }
}

/// Decodes a 2xx `status` reply.
///
/// # Errors
/// When the body is neither details in a known encoding nor the bare `error`. The text never quotes
/// a JSON body, which may hold a password.
pub fn decode_status(body: &str) -> Result<StatusReply, String> {
    let value = match peel(body) {
        Ok(v) => v,
        // The bare word `error` is not JSON at all.
        Err(_) if reply_text(body).eq_ignore_ascii_case("error") => return Ok(StatusReply::Error),
        Err(e) => return Err(format!("status reply is not JSON: {e}")),
    };
    let obj = match value {
        Value::Object(obj) => obj,
        Value::String(s) if s.trim().eq_ignore_ascii_case("error") => {
            return Ok(StatusReply::Error);
        }
        Value::String(s) => {
            return Err(format!(
                "status reply is text, not details: {}",
                excerpt(&s)
            ));
        }
        other => {
            return Err(format!(
                "status reply is {}, not an object",
                kind_of(&other)
            ));
        }
    };
    if !STATUS_KEYS.iter().any(|k| get_ci(&obj, k).is_some()) {
        return Err(
            "status reply has none of the expected keys (IP, Password, ActionStatus, ...)"
                .to_string(),
        );
    }
    let text = |key: &str| {
        get_ci(&obj, key)
            .and_then(as_text)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    // Production spells it `Usernane`; some replies say `Username`. Prefer whichever is non-empty.
    let username = text("Usernane").or_else(|| text("Username"));
    // The password is kept verbatim (no trimming): it is a secret, not ours to reshape.
    let password = get_ci(&obj, "Password")
        .and_then(as_text)
        .map(SecretString::from);
    let status = ServerStatus {
        ip: text("IP"),
        os: text("OS"),
        username,
        password,
        expiry: text("ExpiryDate"),
        power: text("PowerStatus"),
        machine: text("MachineStatus"),
        action: text("ActionStatus"),
        ram: text("RAM"),
    };
    Ok(StatusReply::Details(status))
}

/// The message of a non-2xx reply: its text, or its `message`/`error` field, cut to ~200 chars.
pub fn error_message(body: &str) -> String {
    let raw = reply_text(body);
    if raw.is_empty() {
        return "(empty body)".to_string();
    }
    let message = match peel(body) {
        Ok(Value::Object(obj)) => ["message", "error", "msg", "detail"]
            .iter()
            .find_map(|k| get_ci(&obj, k).and_then(as_text))
            .unwrap_or_else(|| raw.clone()),
        Ok(Value::String(s)) => s,
        _ => raw,
    };
    truncate(&redact_password(message.trim()), MESSAGE_CHARS)
}

/// Parses `body` as JSON and peels string and spread-string layers until a value remains. A string
/// whose content is not JSON is returned as that string (e.g. `"error"`).
///
/// # Errors
/// When the body is empty, not JSON, or nested in more than four layers.
pub fn peel(body: &str) -> Result<Value, String> {
    let text = clean(body);
    if text.is_empty() {
        return Err("empty body".to_string());
    }
    let value = serde_json::from_str::<Value>(text).map_err(|e| e.to_string())?;
    unwrap_layers(value, 0)
}

/// Peels layers off an already-parsed value; `depth` counts the layers already peeled.
fn unwrap_layers(mut value: Value, mut depth: usize) -> Result<Value, String> {
    loop {
        let inner = match &value {
            Value::String(s) => s.clone(),
            Value::Object(obj) => match spread_string(obj) {
                Some(s) => s,
                None => return Ok(value),
            },
            _ => return Ok(value),
        };
        let text = clean(&inner);
        let Ok(parsed) = serde_json::from_str::<Value>(text) else {
            // Plain text, not another layer: the content itself is the answer.
            return Ok(Value::String(inner));
        };
        depth += 1;
        if depth > MAX_LAYERS {
            return Err(format!("more than {MAX_LAYERS} layers of encoding"));
        }
        value = parsed;
    }
}

/// The string a spread-string object (`{"0":"{","1":"\"",...}`) was made from, or `None` when the
/// object is not one: every key a decimal integer, every value a one-character string.
fn spread_string(obj: &Map<String, Value>) -> Option<String> {
    if obj.is_empty() {
        return None;
    }
    let mut chars = Vec::with_capacity(obj.len());
    for (key, value) in obj {
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let index = key.parse::<usize>().ok()?;
        let Value::String(s) = value else { return None };
        let mut it = s.chars();
        let (Some(c), None) = (it.next(), it.next()) else {
            return None;
        };
        chars.push((index, c));
    }
    // The map orders keys as text ("10" before "2"); the string's order is numeric.
    chars.sort_unstable_by_key(|(i, _)| *i);
    Some(chars.into_iter().map(|(_, c)| c).collect())
}

/// A reply as plain text: BOM and whitespace trimmed, one or more JSON string layers removed.
fn reply_text(body: &str) -> String {
    match peel(body) {
        Ok(Value::String(s)) => clean(&s).to_string(),
        // Not JSON (the usual `success|...`): tolerate stray quotes from a broken encoding.
        _ => clean(body).trim_matches('"').trim().to_string(),
    }
}

/// Strips byte-order marks and surrounding whitespace.
fn clean(text: &str) -> &str {
    text.trim_matches(|c: char| c == '\u{feff}' || c.is_whitespace())
}

/// The last dotted quad in `text` that parses as an IPv4 address.
fn last_dotted_quad(text: &str) -> Option<Ipv4Addr> {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .rev()
        .map(|run| run.trim_matches('.'))
        .find_map(|run| run.parse::<Ipv4Addr>().ok())
}

/// Whether an address can be a bought server's (not 0.0.0.0, loopback or broadcast).
fn usable(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_loopback() || ip.is_broadcast())
}

/// A field by name, ignoring ASCII case (an exact match wins).
fn get_ci<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

/// A whole, non-negative number from a JSON number or its text (`71`, `"71"`, `71.0`).
fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0 && f.fract() == 0.0 && *f <= u64::MAX as f64)
                .map(|f| f as u64)
        }),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<u64>().ok().or_else(|| {
                s.parse::<f64>()
                    .ok()
                    .filter(|f| {
                        f.is_finite() && *f >= 0.0 && f.fract() == 0.0 && *f <= u64::MAX as f64
                    })
                    .map(|f| f as u64)
            })
        }
        _ => None,
    }
}

/// A scalar as text: strings as they are, numbers and booleans as written; `null` and containers
/// have none.
fn as_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A JSON value's kind, for error texts that must not quote the value.
fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A short, quoted, password-free excerpt of a reply for a reason text.
fn excerpt(text: &str) -> String {
    format!("{:?}", truncate(&redact_password(text), EXCERPT_CHARS))
}

/// Cuts `text` to `max` characters, marking the cut.
fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// Everything from the first mention of a password on is dropped: a quoted reply must never carry
/// one into a log or a stored reason.
fn redact_password(text: &str) -> String {
    match text.to_ascii_lowercase().find("pass") {
        // `find` on the ASCII-lowercased copy gives a char boundary of the original: ASCII
        // lowercasing never changes byte lengths.
        Some(at) => format!("{}[redacted]", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use secrecy::ExposeSecret;

    use super::*;

    /// `s` spread into a numeric-keyed object, as a JavaScript `{...str}` would.
    fn spread(s: &str) -> String {
        let map: Map<String, Value> = s
            .chars()
            .enumerate()
            .map(|(i, c)| (i.to_string(), Value::String(c.to_string())))
            .collect();
        Value::Object(map).to_string()
    }

    /// `s` encoded again as a JSON string.
    fn stringify(s: &str) -> String {
        Value::String(s.to_string()).to_string()
    }

    const STOCK: &str = r#"{"packages":[{"id":5,"name":"103.82.72","ipv4":71,"status":"active"},{"id":"9","name":"103.109.18x","ipv4":"0","status":"Inactive"}]}"#;

    const STATUS: &str = r#"{"IP":"103.195.26.51","OS":"ubuntu","Usernane":"root","Password":"Xy9#pq","ExpiryDate":"2026-02-01","PowerStatus":"Online","MachineStatus":"active","ActionStatus":"completed","RAM":4}"#;

    fn expect_stock(entries: &[StockEntry]) {
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].id, PackageId(5));
        assert_eq!(
            entries[0].name.as_ref().map(PackageName::as_str),
            Ok("103.82.72")
        );
        assert_eq!(entries[0].free, 71);
        assert!(entries[0].active);
        assert_eq!(entries[1].id, PackageId(9));
        assert_eq!(
            entries[1].name.as_ref().map(PackageName::as_str),
            Ok("103.109.18x")
        );
        assert_eq!(entries[1].free, 0);
        assert!(!entries[1].active);
    }

    fn details(body: &str) -> ServerStatus {
        match decode_status(body) {
            Ok(StatusReply::Details(s)) => s,
            other => panic!("expected details, got {other:?}"),
        }
    }

    #[test]
    fn stock_as_plain_object() {
        expect_stock(&decode_stock(STOCK).unwrap());
    }

    #[test]
    fn stock_double_encoded_in_a_string() {
        expect_stock(&decode_stock(&stringify(STOCK)).unwrap());
        expect_stock(&decode_stock(&stringify(&stringify(STOCK))).unwrap());
    }

    #[test]
    fn stock_spread_into_characters() {
        expect_stock(&decode_stock(&spread(STOCK)).unwrap());
        expect_stock(&decode_stock(&stringify(&spread(STOCK))).unwrap());
    }

    #[test]
    fn stock_tolerates_bom_whitespace_and_key_case() {
        let body = format!(
            "\u{feff}  \n{}\r\n",
            STOCK
                .replace("packages", "Packages")
                .replace("\"status\"", "\"STATUS\"")
        );
        expect_stock(&decode_stock(&body).unwrap());
    }

    #[test]
    fn stock_keeps_bad_names_and_skips_entries_without_id() {
        let body = r#"{"packages":[
            {"id":1,"name":"103.x.5","ipv4":3,"status":"active"},
            {"name":"103.83.x","ipv4":3,"status":"active"},
            {"id":"abc","name":"103.83.x"},
            {"id":0,"name":"103.83.x"},
            {"id":2,"name":"103.83.x","ipv4":"12","status":" ACTIVE "},
            {"id":3,"name":103.80,"ipv4":-4},
            "garbage"
        ]}"#;
        let entries = decode_stock(body).unwrap();
        assert_eq!(entries.len(), 3);
        assert!(entries[0].name.as_ref().unwrap_err().contains("103.x.5"));
        assert_eq!(entries[1].id, PackageId(2));
        assert_eq!(
            entries[1].name.as_ref().map(PackageName::as_str),
            Ok("103.83.x")
        );
        assert_eq!(entries[1].free, 12);
        assert!(entries[1].active);
        assert!(entries[2].name.is_err());
        assert_eq!(entries[2].free, 0);
        assert!(!entries[2].active);
    }

    #[test]
    fn stock_errors_name_the_problem() {
        assert_eq!(
            decode_stock(r#"{"items":[]}"#).unwrap_err(),
            "ipstock reply has no `packages` list"
        );
        assert!(
            decode_stock(r#"{"packages":{}}"#)
                .unwrap_err()
                .contains("not a list")
        );
        assert!(decode_stock("").unwrap_err().contains("not JSON"));
        assert!(decode_stock("<html>").unwrap_err().contains("not JSON"));
        assert!(decode_stock("[1,2]").unwrap_err().contains("not an object"));
        assert!(decode_stock(r#"{"packages":[]}"#).unwrap().is_empty());
    }

    #[test]
    fn encoding_layers_are_bounded() {
        let mut body = STOCK.to_string();
        for _ in 0..=MAX_LAYERS {
            body = stringify(&body);
        }
        assert!(decode_stock(&body).unwrap_err().contains("layers"));
    }

    #[test]
    fn buy_success_with_address() {
        let body = "success|Congratulations, your VPS is being set up. Your ip is: 103.195.26.51";
        assert_eq!(
            classify_buy(body),
            Outcome::Succeeded(Ipv4Addr::new(103, 195, 26, 51))
        );
        assert_eq!(
            classify_buy(&stringify(body)),
            Outcome::Succeeded(Ipv4Addr::new(103, 195, 26, 51))
        );
        assert_eq!(
            classify_buy(&format!(
                "\u{feff} SUCCESS|ip 10.0.0.1 then {}.\n",
                "103.82.72.9"
            )),
            Outcome::Succeeded(Ipv4Addr::new(103, 82, 72, 9))
        );
    }

    #[test]
    fn buy_success_without_address_is_unknown() {
        for body in [
            "success|Congratulations, your VPS is being set up.",
            "success|ip 999.1.2.3",
            "success|ip 0.0.0.0",
        ] {
            assert!(matches!(classify_buy(body), Outcome::Unknown(_)), "{body}");
        }
    }

    #[test]
    fn buy_address_without_marker_is_unknown() {
        let out = classify_buy("Your ip is: 103.195.26.51");
        let Outcome::Unknown(reason) = out else {
            panic!("{out:?}")
        };
        assert!(reason.contains("103.195.26.51") && reason.contains("success|"));
        assert!(matches!(
            classify_buy("successful 103.195.26.51"),
            Outcome::Unknown(_)
        ));
    }

    #[test]
    fn buy_error_and_fail_are_rejected() {
        for body in [
            "error",
            "ERROR",
            "\"error\"",
            " Error|out of stock ",
            "failed: package sold out",
            "\"\\\"error\\\"\"",
        ] {
            assert!(matches!(classify_buy(body), Outcome::Rejected(_)), "{body}");
        }
    }

    #[test]
    fn buy_empty_or_garbled_is_unknown_with_a_short_quote() {
        assert!(matches!(classify_buy(""), Outcome::Unknown(_)));
        assert!(matches!(classify_buy("  \n"), Outcome::Unknown(_)));
        assert!(matches!(
            classify_buy(r#"{"status":"ok"}"#),
            Outcome::Unknown(_)
        ));
        let long = "x".repeat(500);
        let Outcome::Unknown(reason) = classify_buy(&long) else {
            panic!()
        };
        assert!(reason.len() < 200, "{reason}");
    }

    #[test]
    fn status_as_object_and_in_every_encoding() {
        for body in [
            STATUS.to_string(),
            stringify(STATUS),
            spread(STATUS),
            stringify(&spread(STATUS)),
        ] {
            let s = details(&body);
            assert_eq!(s.ip.as_deref(), Some("103.195.26.51"));
            assert_eq!(s.os.as_deref(), Some("ubuntu"));
            assert_eq!(s.username.as_deref(), Some("root"));
            assert_eq!(
                s.password
                    .as_ref()
                    .map(|p| p.expose_secret().to_string())
                    .as_deref(),
                Some("Xy9#pq")
            );
            assert_eq!(s.action.as_deref(), Some("completed"));
            assert_eq!(s.power.as_deref(), Some("Online"));
            assert_eq!(s.machine.as_deref(), Some("active"));
            assert_eq!(s.expiry.as_deref(), Some("2026-02-01"));
            assert_eq!(s.ram.as_deref(), Some("4"));
            assert!(s.credentials(Ipv4Addr::new(103, 195, 26, 51)).is_some());
        }
    }

    #[test]
    fn status_username_spellings_and_case() {
        let s = details(r#"{"ip":"1.2.3.4","username":"administrator","password":"p"}"#);
        assert_eq!(s.username.as_deref(), Some("administrator"));
        assert_eq!(s.ip.as_deref(), Some("1.2.3.4"));
        let s = details(r#"{"IP":"1.2.3.4","Usernane":"","Username":"admin2"}"#);
        assert_eq!(s.username.as_deref(), Some("admin2"));
    }

    #[test]
    fn status_pending_with_empty_password_is_not_ready() {
        let s = details(
            r#"{"IP":"1.2.3.4","OS":"2019","Usernane":"","Password":"","ActionStatus":"pending"}"#,
        );
        assert_eq!(
            s.password.as_ref().map(|p| p.expose_secret().is_empty()),
            Some(true)
        );
        assert!(s.credentials(Ipv4Addr::new(1, 2, 3, 4)).is_none());
        assert!(!format!("{s:?}").contains("Xy9"));
    }

    #[test]
    fn status_numbers_may_be_text_or_numbers() {
        let s = details(r#"{"IP":"1.2.3.4","RAM":"8","Password":12345}"#);
        assert_eq!(s.ram.as_deref(), Some("8"));
        assert_eq!(
            s.password
                .as_ref()
                .map(|p| p.expose_secret().to_string())
                .as_deref(),
            Some("12345")
        );
    }

    #[test]
    fn status_bare_error() {
        for body in ["error", "\"error\"", " ERROR\n", "\"\\\"Error\\\"\""] {
            assert!(
                matches!(decode_status(body), Ok(StatusReply::Error)),
                "{body}"
            );
        }
    }

    #[test]
    fn status_garbage_is_an_error_that_never_quotes_a_password() {
        let truncated = r#"{"IP":"1.2.3.4","Password":"hunter2-secret"#;
        let err = decode_status(truncated).unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(
            decode_status(r#"{"message":"nope"}"#)
                .unwrap_err()
                .contains("expected keys")
        );
        assert!(decode_status("").is_err());
        assert!(decode_status("[]").is_err());
        let err = decode_status(&stringify("IP 1.2.3.4 Password hunter2-secret")).unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn error_messages_from_text_or_json() {
        assert_eq!(
            error_message("Internal Server Error"),
            "Internal Server Error"
        );
        assert_eq!(error_message(r#"{"message":"maintenance"}"#), "maintenance");
        assert_eq!(error_message(r#"{"Error":"bad ip"}"#), "bad ip");
        assert_eq!(error_message(r#""quoted""#), "quoted");
        assert_eq!(error_message(""), "(empty body)");
        assert_eq!(error_message(r#"{"code":7}"#), r#"{"code":7}"#);
        assert!(error_message(&"é".repeat(1000)).chars().count() <= MESSAGE_CHARS + 1);
        assert!(!error_message("user x password hunter2").contains("hunter2"));
    }

    #[test]
    fn spread_keys_sort_numerically() {
        // Eleven characters: the map's text order would put "10" before "2".
        assert_eq!(
            peel(&spread("\"abcdefghi\"")).unwrap(),
            Value::String("abcdefghi".into())
        );
        // Not a spread: a multi-character value or a non-numeric key.
        assert!(matches!(peel(r#"{"0":"ab"}"#).unwrap(), Value::Object(_)));
        assert!(matches!(
            peel(r#"{"0":"a","x":"b"}"#).unwrap(),
            Value::Object(_)
        ));
        assert!(matches!(peel("{}").unwrap(), Value::Object(_)));
    }

    /// Strings that look like JSON often enough to reach the decoders' deeper branches.
    fn jsonish() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                proptest::sample::select(vec![
                    '{', '}', '[', ']', '"', ':', ',', '|', '.', '\\', ' '
                ]),
                proptest::char::range('0', '9'),
                proptest::char::range('a', 'z'),
            ],
            0..120,
        )
        .prop_map(|chars| chars.into_iter().collect())
    }

    fn run_all(body: &str) {
        let _ = decode_stock(body);
        let _ = classify_buy(body);
        let _ = decode_status(body);
        let _ = error_message(body);
        let _ = peel(body);
    }

    proptest! {
        #[test]
        fn no_decoder_panics_on_arbitrary_text(body in any::<String>()) {
            run_all(&body);
        }

        #[test]
        fn no_decoder_panics_on_jsonish_text(body in jsonish()) {
            run_all(&body);
            run_all(&stringify(&body));
            run_all(&spread(&body));
        }

        #[test]
        fn every_encoding_peels_to_the_same_value(ip in any::<u32>(), free in any::<u32>(), id in 1u32..) {
            let ip = Ipv4Addr::from(ip);
            let body = format!(r#"{{"packages":[{{"id":{id},"name":"103.82","ipv4":"{free}","status":"active","x":"{ip}"}}]}}"#);
            let want = peel(&body).unwrap();
            prop_assert_eq!(&peel(&stringify(&body)).unwrap(), &want);
            prop_assert_eq!(&peel(&spread(&body)).unwrap(), &want);
            prop_assert_eq!(&peel(&stringify(&spread(&body))).unwrap(), &want);
            let entries = decode_stock(&spread(&body)).unwrap();
            prop_assert_eq!(entries.len(), 1);
            prop_assert_eq!(entries[0].free, free);
        }

        #[test]
        fn a_success_reply_yields_its_last_address(a in any::<u32>(), b in any::<u32>()) {
            let (a, b) = (Ipv4Addr::from(a), Ipv4Addr::from(b));
            let out = classify_buy(&format!("success|gateway {a}, your ip is: {b}"));
            if usable(b) {
                prop_assert_eq!(out, Outcome::Succeeded(b));
            } else {
                prop_assert!(matches!(out, Outcome::Unknown(_)));
            }
        }
    }
}
