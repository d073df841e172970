//! Storefront authentication for intake (and for a storefront's own token rotation).
//!
//! A storefront signs each request: `Provisioner-Signature: t=UNIX_SECONDS,v1=HEX`, where HEX is
//! the lowercase hex HMAC-SHA256, keyed by the storefront's secret, of `UNIX_SECONDS + "." +` the
//! exact request body (the convention payment providers use for their webhooks). The timestamp
//! must be within [`TOLERANCE`] of our clock, so a captured request cannot be replayed later.
//! Several `v1=` values may be sent (a storefront moving to a new secret sends both).
//! `Authorization: Bearer SECRET` with the storefront's secret itself is the fallback for
//! storefronts that cannot sign. Every configured storefront is checked, whichever matches, so
//! the time taken says nothing about which one did.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use ring::hmac;
use secrecy::ExposeSecret;

use super::auth::bearer;
use crate::config::Storefront;
use crate::crypto::{digests_equal, token_digest};

/// The signature header.
pub const SIGNATURE_HEADER: &str = "provisioner-signature";
/// How far a signature's timestamp may be from our clock, either way.
pub const TOLERANCE_SECS: i64 = 300;
/// [`TOLERANCE_SECS`] as a duration, for the docs.
pub const TOLERANCE: std::time::Duration = std::time::Duration::from_secs(300);

/// One configured storefront, as kept for checking: the secret is only ever used as a key.
struct Known {
    name: String,
    key: hmac::Key,
    /// SHA-256 of the secret, for the bearer fallback (compared at a fixed length).
    digest: [u8; 32],
}

/// The configured storefronts.
pub struct StorefrontAuth {
    known: Vec<Known>,
}

impl fmt::Debug for StorefrontAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.known.iter().map(|k| k.name.as_str()).collect();
        f.debug_struct("StorefrontAuth")
            .field("names", &names)
            .finish_non_exhaustive()
    }
}

/// Why a request was not taken as a storefront's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No storefront is configured: intake is closed.
    #[error(
        "intake is closed: no storefront is configured (set PROVISIONER_STOREFRONTS=\"name:SECRET\" or [[storefronts]])"
    )]
    NoneConfigured,
    /// Neither a signature nor a bearer secret.
    #[error(
        "a storefront signature is required: Provisioner-Signature: t=UNIX_SECONDS,v1=HMAC_SHA256_HEX (or Authorization: Bearer SECRET)"
    )]
    Missing,
    /// The signature header cannot be read.
    #[error("the Provisioner-Signature header is malformed: {0}")]
    Malformed(&'static str),
    /// The timestamp is too far from now: a stale (replayed) or mis-clocked request.
    #[error(
        "the signature's timestamp is {0} s from this server's clock, beyond the 300 s tolerance: sign each request when it is sent, and check the storefront's clock"
    )]
    Stale(i64),
    /// No storefront's secret produces this signature (or is this bearer secret).
    #[error("the storefront signature does not match any configured storefront")]
    Invalid,
}

impl StorefrontAuth {
    /// Auth for the given storefronts (none: every request is refused).
    pub fn new(storefronts: &[Storefront]) -> Self {
        Self {
            known: storefronts
                .iter()
                .map(|s| Known {
                    name: s.name.clone(),
                    key: hmac::Key::new(hmac::HMAC_SHA256, s.secret.expose_secret().as_bytes()),
                    digest: token_digest(s.secret.expose_secret()),
                })
                .collect(),
        }
    }

    /// Whether any storefront is configured.
    pub fn enabled(&self) -> bool {
        !self.known.is_empty()
    }

    /// The storefront that sent `body` with these headers, checked against our clock now.
    ///
    /// # Errors
    /// See [`Refusal`].
    pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<&str, Refusal> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.verify_at(headers, body, now)
    }

    /// [`StorefrontAuth::verify`] at a given Unix time.
    ///
    /// # Errors
    /// See [`Refusal`].
    pub fn verify_at(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<&str, Refusal> {
        if self.known.is_empty() {
            return Err(Refusal::NoneConfigured);
        }
        if let Some(value) = headers.get(SIGNATURE_HEADER) {
            let value = value
                .to_str()
                .map_err(|_| Refusal::Malformed("it is not ASCII"))?;
            let (t, signatures) = parse_signature(value)?;
            let skew = now.saturating_sub(t);
            if skew.abs() > TOLERANCE_SECS {
                return Err(Refusal::Stale(skew));
            }
            let mut signed = Vec::with_capacity(body.len() + 21);
            signed.extend_from_slice(t.to_string().as_bytes());
            signed.push(b'.');
            signed.extend_from_slice(body);
            let mut found = None;
            for known in &self.known {
                for sig in &signatures {
                    // ring's verify compares in constant time.
                    if hmac::verify(&known.key, &signed, sig).is_ok() && found.is_none() {
                        found = Some(known.name.as_str());
                    }
                }
            }
            return found.ok_or(Refusal::Invalid);
        }
        let Some(secret) = bearer(headers) else {
            return Err(Refusal::Missing);
        };
        let digest = token_digest(secret);
        let mut found = None;
        for known in &self.known {
            if digests_equal(&digest, &known.digest) && found.is_none() {
                found = Some(known.name.as_str());
            }
        }
        found.ok_or(Refusal::Invalid)
    }
}

/// `t=UNIX_SECONDS,v1=HEX[,v1=HEX...]`: the timestamp and the decoded signatures. Unknown
/// schemes (`v0=`, a future `v2=`) are ignored, as payment providers' verifiers do.
fn parse_signature(value: &str) -> Result<(i64, Vec<Vec<u8>>), Refusal> {
    let mut t = None;
    let mut signatures = Vec::new();
    for part in value.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or(Refusal::Malformed("expected t=UNIX_SECONDS,v1=HEX"))?;
        match k.trim() {
            "t" => {
                let secs = v
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| Refusal::Malformed("t must be whole Unix seconds"))?;
                t = Some(secs);
            }
            "v1" => signatures.push(
                decode_hex(v.trim())
                    .ok_or(Refusal::Malformed("v1 must be 64 hexadecimal characters"))?,
            ),
            _ => {}
        }
    }
    let t = t.ok_or(Refusal::Malformed("t=UNIX_SECONDS is missing"))?;
    if signatures.is_empty() {
        return Err(Refusal::Malformed("v1=HEX is missing"));
    }
    Ok((t, signatures))
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// The `Provisioner-Signature` value for `body` signed with `secret` at Unix time `t`: what a
/// storefront sends (used by the demo, the tests and the benchmark's serve child).
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(t.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// [`sign`] at the current time.
pub fn sign_now(secret: &str, body: &[u8]) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    sign(secret, now, body)
}

/// A request as a storefront sends one: the JSON body, signed now with `secret`.
pub fn signed_json(
    http: &reqwest::Client,
    url: &str,
    secret: &str,
    body: &serde_json::Value,
) -> reqwest::RequestBuilder {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    http.post(url)
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, sign_now(secret, &bytes))
        .body(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use axum::http::header::AUTHORIZATION;
    use secrecy::SecretString;

    const SHOP: &str = "shop-secret-7f3a9c2e41d85b60";
    const OTHER: &str = "other-secret-0b1e2d3c4f5a6978";

    fn auth() -> StorefrontAuth {
        StorefrontAuth::new(&[
            Storefront {
                name: "shop".into(),
                secret: SecretString::from(SHOP),
            },
            Storefront {
                name: "other".into(),
                secret: SecretString::from(OTHER),
            },
        ])
    }

    fn signed(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(SIGNATURE_HEADER, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn a_signature_names_its_storefront() {
        let a = auth();
        let body = br#"{"order_ref":"A-1"}"#;
        assert_eq!(
            a.verify_at(&signed(&sign(SHOP, 1000, body)), body, 1000),
            Ok("shop")
        );
        assert_eq!(
            a.verify_at(&signed(&sign(OTHER, 1000, body)), body, 1100),
            Ok("other")
        );
        // A known vector, computed independently (Python's hmac): HMAC-SHA256("k", "1.x").
        assert_eq!(
            sign("k", 1, b"x"),
            "t=1,v1=976cb87e4f568d1c0f03f32859e90af8597cf00b978ba37c229c97d3a15b8449"
        );
    }

    #[test]
    fn forged_stale_and_tampered_requests_are_refused() {
        let a = auth();
        let body = br#"{"order_ref":"A-1"}"#;
        let good = sign(SHOP, 1000, body);
        assert_eq!(
            a.verify_at(&signed(&good), br#"{"order_ref":"A-2"}"#, 1000),
            Err(Refusal::Invalid),
            "the body is covered"
        );
        assert_eq!(
            a.verify_at(&signed(&good), body, 1301),
            Err(Refusal::Stale(301))
        );
        assert_eq!(
            a.verify_at(&signed(&good), body, 699),
            Err(Refusal::Stale(-301))
        );
        assert_eq!(a.verify_at(&signed(&good), body, 1300), Ok("shop"));
        let forged = sign("not-a-configured-secret-123456", 1000, body);
        assert_eq!(
            a.verify_at(&signed(&forged), body, 1000),
            Err(Refusal::Invalid)
        );
        // The timestamp is covered: moving it forward breaks the signature.
        let moved = good.replace("t=1000", "t=1200");
        assert_eq!(
            a.verify_at(&signed(&moved), body, 1200),
            Err(Refusal::Invalid)
        );
        for bad in ["", "t=1000", "v1=00", "t=x,v1=00", "nonsense"] {
            assert!(
                matches!(
                    a.verify_at(&signed(bad), body, 1000),
                    Err(Refusal::Malformed(_))
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            a.verify_at(&HeaderMap::new(), body, 1000),
            Err(Refusal::Missing)
        );
        assert_eq!(
            StorefrontAuth::new(&[]).verify_at(&signed(&good), body, 1000),
            Err(Refusal::NoneConfigured)
        );
    }

    #[test]
    fn a_second_signature_and_the_bearer_fallback() {
        let a = auth();
        let body = b"{}";
        let rotated = format!(
            "{},v1={}",
            sign("old-secret-no-longer-configured", 5, body),
            sign(SHOP, 5, body).split("v1=").nth(1).unwrap()
        );
        assert_eq!(a.verify_at(&signed(&rotated), body, 5), Ok("shop"));
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {OTHER}")).unwrap(),
        );
        assert_eq!(a.verify_at(&h, body, 5), Ok("other"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer wrong"));
        assert_eq!(a.verify_at(&h, body, 5), Err(Refusal::Invalid));
        assert!(!format!("{a:?}").contains(SHOP));
    }
}
