//! Encryption of customer credentials at rest: ChaCha20-Poly1305 with a random 96-bit nonce per
//! record, keyed by `PROVISIONER_SECRET_KEY` (64 hex characters, 32 bytes). Also the token
//! helpers: random bearer tokens, their SHA-256 digests, and constant-time comparison; the
//! derivation of each order's customer access token; and the strength check for configured
//! secrets.

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::domain::{Credentials, OrderId};

/// Why a key or a ciphertext was refused.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The key is not 64 hex characters.
    #[error(
        "PROVISIONER_SECRET_KEY must be 64 hexadecimal characters (32 bytes); generate one with `provisioner keygen`"
    )]
    BadKey,
    /// Decryption failed: wrong key, or the record was tampered with.
    #[error(
        "stored credentials cannot be decrypted with this key (wrong PROVISIONER_SECRET_KEY, or corrupted data)"
    )]
    Decrypt,
}

/// The credentials cipher, and the key customer access tokens are derived with. `Debug` shows
/// nothing of either.
pub struct Cipher {
    aead: ChaCha20Poly1305,
    /// HMAC key for customer access tokens, derived from the same secret under its own label, so
    /// a token reveals nothing about the encryption key and the token needs no storage: a replayed
    /// intake is answered with the same token the customer already holds.
    tokens: ring::hmac::Key,
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cipher([redacted])")
    }
}

const NONCE_LEN: usize = 12;

/// The label the access-token key is derived under (HMAC of the secret key over this text).
const ACCESS_TOKEN_LABEL: &[u8] = b"provisioner customer access tokens v1";

#[derive(serde::Serialize, serde::Deserialize)]
struct Sealed<'a> {
    username: &'a str,
    password: &'a str,
    os: Option<&'a str>,
}

impl Cipher {
    /// A cipher from a hex key.
    ///
    /// # Errors
    /// [`CryptoError::BadKey`] unless the key is 64 hex characters.
    pub fn from_hex(key: &SecretString) -> Result<Self, CryptoError> {
        let hex = key.expose_secret().trim();
        if hex.len() != 64 {
            return Err(CryptoError::BadKey);
        }
        let mut bytes = [0u8; 32];
        for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
            let s = std::str::from_utf8(chunk).map_err(|_| CryptoError::BadKey)?;
            bytes[i] = u8::from_str_radix(s, 16).map_err(|_| CryptoError::BadKey)?;
        }
        let master = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes);
        let token_key = ring::hmac::sign(&master, ACCESS_TOKEN_LABEL);
        Ok(Self {
            aead: ChaCha20Poly1305::new(Key::from_slice(&bytes)),
            tokens: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token_key.as_ref()),
        })
    }

    /// A fresh random key, hex-encoded.
    pub fn generate_key() -> SecretString {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        SecretString::from(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
    }

    /// Encrypts credentials (the address is stored in clear on the order; it is not a secret).
    pub fn seal(&self, creds: &Credentials) -> Vec<u8> {
        let plain = serde_json::to_vec(&Sealed {
            username: &creds.username,
            password: creds.expose_password(),
            os: creds.os.as_deref(),
        })
        .unwrap_or_default();
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let mut out = nonce.to_vec();
        // Encryption with a valid key and nonce cannot fail for in-memory buffers.
        out.extend(
            self.aead
                .encrypt(Nonce::from_slice(&nonce), plain.as_slice())
                .unwrap_or_default(),
        );
        out
    }

    /// Decrypts credentials sealed by [`Cipher::seal`].
    ///
    /// # Errors
    /// [`CryptoError::Decrypt`] with the wrong key or tampered data.
    pub fn open(&self, ip: std::net::Ipv4Addr, sealed: &[u8]) -> Result<Credentials, CryptoError> {
        if sealed.len() < NONCE_LEN {
            return Err(CryptoError::Decrypt);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let plain = self
            .aead
            .decrypt(Nonce::from_slice(nonce), body)
            .map_err(|_| CryptoError::Decrypt)?;
        let s: Sealed<'_> = serde_json::from_slice(&plain).map_err(|_| CryptoError::Decrypt)?;
        Ok(Credentials {
            ip,
            username: s.username.to_string(),
            password: SecretString::from(s.password.to_string()),
            os: s.os.map(str::to_string),
        })
    }
}

impl Cipher {
    /// The customer access token of an order at a rotation `generation` (0 at intake): 64 hex
    /// characters, HMAC-SHA256 of the order id and generation under the token key. The same
    /// order and generation always give the same token, so every intake answer for an order
    /// carries the token the customer already holds; rotating moves to the next generation.
    pub fn access_token(&self, order: &OrderId, generation: u32) -> SecretString {
        let mut ctx = ring::hmac::Context::with_key(&self.tokens);
        ctx.update(order.as_str().as_bytes());
        ctx.update(b"\0");
        ctx.update(&generation.to_be_bytes());
        let tag = ctx.sign();
        SecretString::from(hex(tag.as_ref()))
    }
}

impl Cipher {
    /// A keyed digest of a server password (HMAC-SHA256 under the token key, bound to the
    /// order): kept while an install runs so the new password can be told from the old one
    /// without keeping the old one, and useless to anyone without the key.
    pub fn password_digest(&self, order: &OrderId, password: &str) -> String {
        let mut ctx = ring::hmac::Context::with_key(&self.tokens);
        ctx.update(b"password\0");
        ctx.update(order.as_str().as_bytes());
        ctx.update(b"\0");
        ctx.update(password.as_bytes());
        hex(ctx.sign().as_ref())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The least strength, in bits, accepted for an admin token or a storefront secret: a secret
/// anyone can reach must not be guessable, online or offline (`keygen` makes 256-bit ones).
pub const MIN_SECRET_BITS: f64 = 128.0;

/// An estimate of a secret's strength in bits, as if each character were drawn at random from
/// the character classes it uses (lowercase, uppercase, digits, anything else): the length times
/// the log of that alphabet. A secret that repeats itself is counted shorter: under 8 distinct
/// characters it counts as only those, and otherwise as at most four times its distinct
/// characters, so `aaaaaaaa...` or `abcabcabc...` is weak however long it is.
pub fn secret_bits(secret: &str) -> f64 {
    let chars: Vec<char> = secret.chars().collect();
    let mut classes = 0u32;
    if chars.iter().any(char::is_ascii_lowercase) {
        classes += 26;
    }
    if chars.iter().any(char::is_ascii_uppercase) {
        classes += 26;
    }
    if chars.iter().any(char::is_ascii_digit) {
        classes += 10;
    }
    if chars.iter().any(|c| !c.is_ascii_alphanumeric()) {
        classes += 33;
    }
    if classes == 0 {
        return 0.0;
    }
    let distinct = chars.iter().collect::<std::collections::HashSet<_>>().len();
    let per_char = f64::from(classes).log2();
    let len = chars.len();
    let counted = if distinct < 8 {
        distinct
    } else {
        len.min(distinct * 4)
    };
    counted as f64 * per_char
}

/// A fresh random bearer token: 32 bytes from the OS-seeded generator, hex-encoded.
pub fn random_token() -> SecretString {
    Cipher::generate_key()
}

/// The SHA-256 digest of a token. Tokens are 256-bit random values, so an unkeyed hash is
/// enough: it cannot be reversed or guessed, and a leaked database yields no usable token.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// [`token_digest`] as 64 hex characters, the form stored in the database.
pub fn token_hash_hex(token: &str) -> String {
    token_digest(token)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether a presented token matches a stored hex digest, in time independent of where they
/// differ (digests have a fixed length, so the length leaks nothing either).
pub fn token_matches_hash(token: &str, stored_hex: &str) -> bool {
    let presented = token_hash_hex(token);
    presented.as_bytes().ct_eq(stored_hex.as_bytes()).into()
}

/// Constant-time equality of two digests.
pub fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials {
            ip: "1.2.3.4".parse().unwrap(),
            username: "root".into(),
            password: SecretString::from("S3cret-pass"),
            os: None,
        }
    }

    #[test]
    fn access_tokens_are_stable_per_order_and_generation_and_keyed() {
        let key = Cipher::generate_key();
        let a = Cipher::from_hex(&key).unwrap();
        let same_key = Cipher::from_hex(&key).unwrap();
        let other_key = Cipher::from_hex(&Cipher::generate_key()).unwrap();
        let (o1, o2) = (OrderId::new(), OrderId::new());
        let t = |c: &Cipher, o: &OrderId, g: u32| c.access_token(o, g).expose_secret().to_string();
        assert_eq!(
            t(&a, &o1, 0),
            t(&same_key, &o1, 0),
            "a replay gets the same token"
        );
        assert_ne!(t(&a, &o1, 0), t(&a, &o1, 1), "a rotation changes it");
        assert_ne!(t(&a, &o1, 0), t(&a, &o2, 0), "each order has its own");
        assert_ne!(
            t(&a, &o1, 0),
            t(&other_key, &o1, 0),
            "it depends on the secret key"
        );
        assert_eq!(t(&a, &o1, 0).len(), 64);
        assert!(!format!("{a:?}").contains(&key.expose_secret()[..16]));
    }

    #[test]
    fn weak_secrets_are_measured_as_weak() {
        assert!(
            secret_bits(&"a".repeat(16)) < MIN_SECRET_BITS,
            "sixteen a's"
        );
        assert!(
            secret_bits(&"a".repeat(200)) < MIN_SECRET_BITS,
            "length alone is not strength"
        );
        assert!(
            secret_bits(&"abc".repeat(40)) < MIN_SECRET_BITS,
            "a repeated pattern"
        );
        assert!(secret_bits("change-me") < MIN_SECRET_BITS);
        assert!(
            secret_bits("0123456789abcdef") < MIN_SECRET_BITS,
            "16 hex characters: 83 bits"
        );
        // What `keygen` prints, and what `openssl rand -hex 16` or a 22-character random
        // base64url string give: at least 128 bits.
        for _ in 0..2000 {
            assert!(secret_bits(Cipher::generate_key().expose_secret()) >= MIN_SECRET_BITS);
        }
        assert!(secret_bits("9f86d081884c7d659a2feaa0c55ad015") >= MIN_SECRET_BITS);
        assert!(secret_bits("Xq3_vR8kLm2ZpT9wNc4yHd") >= MIN_SECRET_BITS);
        assert_eq!(secret_bits(""), 0.0);
    }

    #[test]
    fn round_trip_and_no_plaintext() {
        let c = Cipher::from_hex(&Cipher::generate_key()).unwrap();
        let sealed = c.seal(&creds());
        assert!(!sealed.windows(11).any(|w| w == b"S3cret-pass"));
        let back = c.open("1.2.3.4".parse().unwrap(), &sealed).unwrap();
        assert_eq!(back.expose_password(), "S3cret-pass");
        let other = Cipher::from_hex(&Cipher::generate_key()).unwrap();
        assert!(other.open("1.2.3.4".parse().unwrap(), &sealed).is_err());
    }

    #[test]
    fn token_hashes_match_only_their_token() {
        let token = random_token();
        let t = token.expose_secret();
        assert_eq!(t.len(), 64);
        let stored = token_hash_hex(t);
        assert_eq!(stored.len(), 64);
        assert!(!stored.contains(t), "the hash is not the token");
        assert!(token_matches_hash(t, &stored));
        assert!(!token_matches_hash(&t[1..], &stored));
        assert!(!token_matches_hash(random_token().expose_secret(), &stored));
        assert!(digests_equal(&token_digest("a"), &token_digest("a")));
        assert!(!digests_equal(&token_digest("a"), &token_digest("b")));
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(Cipher::from_hex(&SecretString::from("abc")).is_err());
        assert!(Cipher::from_hex(&SecretString::from("zz".repeat(32))).is_err());
    }
}
