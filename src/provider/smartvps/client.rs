//! The SmartVPS HTTP client: builds each call, bounds it by the caller's timeout, and classifies
//! what came back as succeeded, rejected or unknown.
//!
//! Classification follows one question: could SmartVPS have acted on the request? A connection
//! that never opened could not (rejected); a request that was sent and then timed out, was reset
//! or hit a 5xx could have (unknown).

use std::fmt;
use std::net::Ipv4Addr;
use std::sync::{Arc, Once};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{ACCEPT, HeaderValue};
use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use super::wire::{self, StatusReply};
use crate::clock::Clock;
use crate::domain::{PackageName, RamGb};
use crate::provider::{
    CallContext, Command, LateReply, Outcome, Provider, ServerStatus, StockEntry,
};
use crate::telemetry::error_chain;

/// Upper bound on connection set-up. Client-wide, because reqwest has no per-request connect
/// timeout; a call whose own (real) timeout is shorter is still cut at its own timeout, and a
/// connect still pending then reads as unknown: the safe direction.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest reply body read. SmartVPS replies are a few KiB; a larger one is not a reply we know.
const MAX_BODY_BYTES: usize = 1 << 20;

/// The header that carries [`CallContext::request_id`].
const REQUEST_ID: &str = "x-request-id";

/// Where SmartVPS is and who we are to it.
#[derive(Clone)]
pub struct SmartVpsConfig {
    /// Scheme, host and optional path, e.g. `https://smartvps.online/`.
    pub base_url: String,
    /// The API's path under the base, e.g. `api/oceansmart/` (production) or `api/ocean/` (the
    /// vendor's sheet); slashes at either end are optional.
    pub path_prefix: String,
    /// Reseller account name, sent only in the Basic auth header.
    pub username: String,
    /// Reseller account password, sent only in the Basic auth header.
    pub password: SecretString,
}

impl fmt::Debug for SmartVpsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmartVpsConfig")
            .field("base_url", &self.base_url)
            .field("path_prefix", &self.path_prefix)
            .field("username", &"[redacted]")
            .field("password", &"[redacted]")
            .finish()
    }
}

/// Why a [`SmartVpsClient`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `smartvps.base_url` is not a usable http(s) URL.
    #[error("invalid smartvps.base_url {value:?}: {reason}")]
    BaseUrl {
        /// The value as configured (any credentials in it replaced by `[redacted]`).
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `smartvps.path_prefix` cannot be a path.
    #[error("invalid smartvps.path_prefix {value:?}: {reason}")]
    PathPrefix {
        /// The value as configured.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The HTTP stack could not be set up (e.g. TLS roots unavailable).
    #[error("could not build the HTTP client: {0}")]
    Http(String),
}

/// The three SmartVPS calls the engine uses, over HTTPS. Cloning shares the connection machinery,
/// so a call can outlive the attempt that made it (a late reply).
#[derive(Clone)]
pub struct SmartVpsClient {
    /// Shared connection machinery; no client-wide timeout, each call sets its own.
    http: reqwest::Client,
    /// `{base_url}{path_prefix}`, ending in `/`, so an endpoint name joins onto it.
    api: Url,
    /// Basic auth user; never logged.
    username: String,
    /// Basic auth password; never logged.
    password: SecretString,
    /// Converts the caller's clock-time timeouts into real ones.
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for SmartVpsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmartVpsClient")
            .field("api", &self.api.as_str())
            .field("username", &"[redacted]")
            .field("password", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// The SmartVPS endpoints this client calls.
#[derive(Clone, Copy, Debug)]
enum Endpoint {
    Ipstock,
    Buyvps,
    Status,
    Command(Command),
}

impl Endpoint {
    /// The path segment, also the operation's name in logs.
    fn name(self) -> &'static str {
        match self {
            Self::Ipstock => "ipstock",
            Self::Buyvps => "buyvps",
            Self::Status => "status",
            Self::Command(c) => c.endpoint(),
        }
    }
}

/// A call that produced no usable 2xx body.
enum Failure {
    /// Nothing can have happened upstream.
    Rejected(String),
    /// Something may have happened upstream.
    Unknown(String),
    /// No reply within the call's timeout: something may have happened upstream, and the reply
    /// may still come to a caller that keeps listening.
    TimedOut(String),
}

impl Failure {
    fn into_outcome<T>(self) -> Outcome<T> {
        match self {
            Self::Rejected(r) => Outcome::Rejected(r),
            Self::Unknown(r) | Self::TimedOut(r) => Outcome::Unknown(r),
        }
    }
}

/// Aborts a spawned call when the last interest in it is dropped, so a late listener that is
/// given up on hangs up instead of lingering.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl SmartVpsClient {
    /// A client for the API at `cfg.base_url` + `cfg.path_prefix`.
    ///
    /// # Errors
    /// When the base URL is not an absolute http(s) URL without credentials, query or fragment,
    /// when the prefix holds `?` or `#`, or when the HTTP stack cannot be built.
    pub fn new(cfg: SmartVpsConfig, clock: Arc<dyn Clock>) -> Result<Self, ClientError> {
        let api = api_url(&cfg.base_url, &cfg.path_prefix)?;
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .tls_backend_rustls()
            .connect_timeout(CONNECT_TIMEOUT)
            // A fresh connection per call: calls are minutes apart, and a request written onto a
            // pooled connection the server has just closed would read as an unknown purchase.
            .pool_max_idle_per_host(0)
            // A redirected POST would be replayed as a GET elsewhere; surface it instead.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("provisioner/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Http(error_chain(&e.without_url())))?;
        Ok(Self {
            http,
            api,
            username: cfg.username,
            password: cfg.password,
            clock,
        })
    }

    /// The URL an endpoint is called at.
    fn url(&self, endpoint: Endpoint) -> Url {
        // Joining a bare segment onto a URL ending in `/` cannot fail; the fallback only keeps
        // this panic-free.
        self.api
            .join(endpoint.name())
            .unwrap_or_else(|_| self.api.clone())
    }

    /// Sends one call and returns its 2xx body, or why there is none.
    async fn exchange(
        &self,
        endpoint: Endpoint,
        ctx: Option<&CallContext>,
        body: Option<serde_json::Value>,
        timeout: Duration,
    ) -> Result<String, Failure> {
        let mut request = self
            .http
            .post(self.url(endpoint))
            .timeout(self.clock.real(timeout))
            .header(ACCEPT, HeaderValue::from_static("application/json"))
            .basic_auth(&self.username, Some(self.password.expose_secret()));
        if let Some(body) = body {
            request = request.json(&body);
        }
        // An id that is not a valid header value is dropped rather than failing the call: it is
        // for attribution only.
        if let Some(id) = ctx
            .and_then(CallContext::request_id)
            .and_then(|id| HeaderValue::from_str(&id).ok())
        {
            request = request.header(REQUEST_ID, id);
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| transport_failure(e, timeout))?;
        let status = response.status();
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| transport_failure(e, timeout))?
        {
            if bytes.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(Failure::Unknown(format!(
                    "HTTP {status} reply larger than {MAX_BODY_BYTES} bytes"
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        classify_status(status, &text).map(|()| text)
    }

    /// Scrubs the account's credentials from a reason (a server may echo them) and logs the call.
    fn finish<T>(
        &self,
        endpoint: Endpoint,
        ctx: Option<&CallContext>,
        started: tokio::time::Instant,
        outcome: Outcome<T>,
    ) -> Outcome<T> {
        let outcome = match outcome {
            Outcome::Rejected(r) => Outcome::Rejected(self.scrub(&r)),
            Outcome::Unknown(r) => Outcome::Unknown(self.scrub(&r)),
            done => done,
        };
        let reason = match &outcome {
            Outcome::Rejected(r) | Outcome::Unknown(r) => r.as_str(),
            Outcome::Succeeded(_) => "",
        };
        tracing::debug!(
            op = endpoint.name(),
            request_id = ctx.and_then(CallContext::request_id).unwrap_or_default(),
            outcome = outcome.kind(),
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            reason,
            "smartvps call"
        );
        outcome
    }

    /// `text` with URL secrets dropped and any reply text that echoes the account's username or
    /// password as a whole word (a server quoting "user X is suspended") replaced. Whole words
    /// only: a short username is not hunted inside other words, which would mangle every message
    /// and reveal the username by where the gaps fall. The client itself never formats its
    /// credentials into any text.
    fn scrub(&self, text: &str) -> String {
        let mut out = crate::redact::urls_in(text);
        for secret in [self.password.expose_secret(), self.username.as_str()] {
            out = replace_word(&out, secret);
        }
        out
    }
}

/// `text` with every occurrence of `word` that stands alone (not inside a longer run of letters,
/// digits or `_`) replaced by `[redacted]`.
fn replace_word(text: &str, word: &str) -> String {
    if word.is_empty() {
        return text.to_string();
    }
    let inside = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(word) {
        let before = if i > 0 {
            rest[..i].chars().last()
        } else {
            out.chars().last()
        };
        let after = rest[i + word.len()..].chars().next();
        out.push_str(&rest[..i]);
        if inside(before) || inside(after) {
            out.push_str(word);
        } else {
            out.push_str("[redacted]");
        }
        rest = &rest[i + word.len()..];
    }
    out.push_str(rest);
    out
}

#[async_trait]
impl Provider for SmartVpsClient {
    async fn ipstock(&self, timeout: Duration) -> Outcome<Vec<StockEntry>> {
        let started = tokio::time::Instant::now();
        let outcome = match self.exchange(Endpoint::Ipstock, None, None, timeout).await {
            Ok(body) => match wire::decode_stock(&body) {
                Ok(stock) => Outcome::Succeeded(stock),
                Err(e) => Outcome::Unknown(e),
            },
            Err(f) => f.into_outcome(),
        };
        self.finish(Endpoint::Ipstock, None, started, outcome)
    }

    async fn buy(
        &self,
        ctx: &CallContext,
        package: &PackageName,
        ram: RamGb,
        timeout: Duration,
    ) -> Outcome<Ipv4Addr> {
        let started = tokio::time::Instant::now();
        let body = json!({ "ip": package.as_str(), "ram": ram.get().to_string() });
        let outcome = match self
            .exchange(Endpoint::Buyvps, Some(ctx), Some(body), timeout)
            .await
        {
            Ok(body) => wire::classify_buy(&body),
            Err(f) => f.into_outcome(),
        };
        self.finish(Endpoint::Buyvps, Some(ctx), started, outcome)
    }

    async fn buy_listening(
        &self,
        ctx: &CallContext,
        package: &PackageName,
        ram: RamGb,
        timeout: Duration,
        listen: Duration,
    ) -> (Outcome<Ipv4Addr>, Option<LateReply>) {
        let started = tokio::time::Instant::now();
        let body = json!({ "ip": package.as_str(), "ram": ram.get().to_string() });
        // The request's own timeout is the listening window; the attempt's timeout is ours to
        // enforce here, so that reaching it does not hang up.
        let listen = listen.max(timeout);
        let (client, call_ctx) = (self.clone(), ctx.clone());
        let mut call = AbortOnDrop(tokio::spawn(async move {
            client
                .exchange(Endpoint::Buyvps, Some(&call_ctx), Some(body), listen)
                .await
        }));
        let decode = |joined: Result<Result<String, Failure>, tokio::task::JoinError>| match joined
        {
            Ok(Ok(body)) => wire::classify_buy(&body),
            Ok(Err(f)) => f.into_outcome(),
            Err(e) => Outcome::Unknown(format!("the call stopped: {e}")),
        };
        match tokio::time::timeout(self.clock.real(timeout), &mut call.0).await {
            Ok(joined) => {
                let outcome = decode(joined);
                (
                    self.finish(Endpoint::Buyvps, Some(ctx), started, outcome),
                    None,
                )
            }
            Err(_) => {
                let outcome = Outcome::Unknown(format!(
                    "timeout after {}",
                    humantime::format_duration(timeout)
                ));
                let outcome = self.finish(Endpoint::Buyvps, Some(ctx), started, outcome);
                let (client, late_ctx) = (self.clone(), ctx.clone());
                let late = LateReply::new(async move {
                    let joined = (&mut call.0).await;
                    // The listening window itself ending is not a reply.
                    if matches!(joined, Ok(Err(Failure::TimedOut(_)))) {
                        return None;
                    }
                    let outcome = decode(joined);
                    tracing::info!(
                        request_id = late_ctx.request_id().unwrap_or_default(),
                        outcome = outcome.kind(),
                        "late buyvps reply after the attempt's timeout"
                    );
                    Some(client.finish(Endpoint::Buyvps, Some(&late_ctx), started, outcome))
                });
                (outcome, Some(late))
            }
        }
    }

    async fn status(
        &self,
        ctx: &CallContext,
        ip: Ipv4Addr,
        timeout: Duration,
    ) -> Outcome<ServerStatus> {
        let started = tokio::time::Instant::now();
        let body = json!({ "ip": ip.to_string() });
        let outcome = match self
            .exchange(Endpoint::Status, Some(ctx), Some(body), timeout)
            .await
        {
            Ok(body) => match wire::decode_status(&body) {
                Ok(StatusReply::Details(status)) => Outcome::Succeeded(status),
                Ok(StatusReply::Error) => Outcome::Rejected(
                    "SmartVPS answered error: unknown address or failure".to_string(),
                ),
                Err(e) => Outcome::Unknown(e),
            },
            Err(f) => f.into_outcome(),
        };
        self.finish(Endpoint::Status, Some(ctx), started, outcome)
    }

    async fn command(
        &self,
        ctx: &CallContext,
        ip: Ipv4Addr,
        command: Command,
        timeout: Duration,
    ) -> Outcome<()> {
        let started = tokio::time::Instant::now();
        let body = match command {
            Command::ChangeOs(os) => json!({ "ip": ip.to_string(), "os": os.code() }),
            _ => json!({ "ip": ip.to_string() }),
        };
        let endpoint = Endpoint::Command(command);
        let outcome = match self
            .exchange(endpoint, Some(ctx), Some(body), timeout)
            .await
        {
            Ok(body) => wire::classify_command(command.endpoint(), &body),
            Err(f) => f.into_outcome(),
        };
        self.finish(endpoint, Some(ctx), started, outcome)
    }
}

/// Installs rustls's ring provider as the process default, once. reqwest is built without a
/// provider of its own (no aws-lc), so one must be installed before a client is built; another
/// part of the process having installed one already is fine.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err means a provider is already installed, which is all we need.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// `{base_url}{path_prefix}` as a URL ending in `/`, tolerant of slashes at the seam.
fn api_url(base_url: &str, path_prefix: &str) -> Result<Url, ClientError> {
    let raw = base_url.trim();
    let bad = |reason: &str| ClientError::BaseUrl {
        value: crate::redact::url(raw, crate::redact::User::Hidden),
        reason: reason.to_string(),
    };
    let mut url = Url::parse(raw).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("it has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "it must not carry credentials; set smartvps.username and smartvps.password",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("it must not have a query or fragment"));
    }
    let prefix = path_prefix.trim().trim_matches('/');
    if prefix.contains(['?', '#', '\\']) {
        return Err(ClientError::PathPrefix {
            value: path_prefix.to_string(),
            reason: "a path prefix cannot hold `?`, `#` or `\\`",
        });
    }
    let mut path = url.path().trim_end_matches('/').to_string();
    path.push('/');
    if !prefix.is_empty() {
        path.push_str(prefix);
        path.push('/');
    }
    url.set_path(&path);
    Ok(url)
}

/// Classifies a non-2xx status; `Ok` for 2xx.
fn classify_status(status: StatusCode, body: &str) -> Result<(), Failure> {
    if status.is_success() {
        return Ok(());
    }
    let code = status.as_u16();
    Err(match code {
        401 => Failure::Rejected(
            "authentication failed: check smartvps.username/password (HTTP 401)".to_string(),
        ),
        404 => Failure::Rejected(format!(
            "HTTP 404 (check smartvps.base_url and smartvps.path_prefix): {}",
            wire::error_message(body)
        )),
        400..=499 => Failure::Rejected(format!("HTTP {code}: {}", wire::error_message(body))),
        500..=599 => Failure::Unknown(format!(
            "SmartVPS server error HTTP {code}: {}",
            wire::error_message(body)
        )),
        // Redirects are not followed (see `new`), and a front end redirecting is not the API
        // acting on the request.
        300..=399 => Failure::Rejected(format!(
            "HTTP {code} redirect, not followed (check smartvps.base_url)"
        )),
        _ => Failure::Unknown(format!(
            "unexpected HTTP {code}: {}",
            wire::error_message(body)
        )),
    })
}

/// Classifies a reqwest error by whether the request can have reached SmartVPS.
fn transport_failure(err: reqwest::Error, timeout: Duration) -> Failure {
    let err = err.without_url();
    if err.is_connect() {
        // Includes connect timeouts, DNS failures, refusals and TLS handshake failures: the
        // request was never written.
        return Failure::Rejected(format!("connection failed: {}", error_chain(&err)));
    }
    if err.is_timeout() {
        return Failure::TimedOut(format!(
            "timeout after {}",
            humantime::format_duration(timeout)
        ));
    }
    if err.is_builder() {
        return Failure::Rejected(format!("request could not be built: {}", error_chain(&err)));
    }
    Failure::Unknown(format!(
        "transport error after the request was sent: {}",
        error_chain(&err)
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, Method, StatusCode as AxStatus, Uri};
    use axum::response::IntoResponse;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::clock::SystemClock;
    use crate::domain::OrderId;

    const USER: &str = "smart-user";
    const PASS: &str = "s3cret-pass";
    /// base64("smart-user:s3cret-pass").
    const BASIC: &str = "Basic c21hcnQtdXNlcjpzM2NyZXQtcGFzcw==";

    /// One request as the stub saw it.
    #[derive(Clone, Debug)]
    struct Seen {
        method: Method,
        path: String,
        headers: HeaderMap,
        body: Bytes,
    }

    /// What the stub answers.
    #[derive(Clone)]
    struct Script {
        status: u16,
        body: String,
        delay: Duration,
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    async fn record(
        State(s): State<Script>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> impl IntoResponse {
        s.seen.lock().unwrap().push(Seen {
            method,
            path: uri.path().to_string(),
            headers,
            body,
        });
        tokio::time::sleep(s.delay).await;
        (AxStatus::from_u16(s.status).unwrap(), s.body.clone())
    }

    /// A stub on 127.0.0.1:0 answering every request with `status` and `body` after `delay`.
    async fn stub(status: u16, body: &str, delay: Duration) -> (String, Arc<Mutex<Vec<Seen>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script = Script {
            status,
            body: body.to_string(),
            delay,
            seen: seen.clone(),
        };
        let app = Router::new().fallback(record).with_state(script);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/"), seen)
    }

    fn client_for(base_url: &str, prefix: &str) -> SmartVpsClient {
        let cfg = SmartVpsConfig {
            base_url: base_url.to_string(),
            path_prefix: prefix.to_string(),
            username: USER.to_string(),
            password: SecretString::from(PASS),
        };
        SmartVpsClient::new(cfg, Arc::new(SystemClock)).unwrap()
    }

    fn ctx() -> CallContext {
        CallContext {
            order_id: None,
            attempt: 2,
        }
    }

    fn package() -> PackageName {
        PackageName::parse("103.82.72").unwrap()
    }

    fn ram() -> RamGb {
        RamGb::parse(4).unwrap()
    }

    const SECOND: Duration = Duration::from_secs(1);

    fn reason<T: fmt::Debug>(outcome: &Outcome<T>) -> &str {
        match outcome {
            Outcome::Rejected(r) | Outcome::Unknown(r) => r,
            Outcome::Succeeded(v) => panic!("unexpected success: {v:?}"),
        }
    }

    #[test]
    fn api_url_joins_slashes_robustly() {
        let cases = [
            (
                "https://smartvps.online/",
                "api/oceansmart/",
                "https://smartvps.online/api/oceansmart/buyvps",
            ),
            (
                "https://smartvps.online",
                "/api/oceansmart",
                "https://smartvps.online/api/oceansmart/buyvps",
            ),
            (
                "https://smartvps.store//",
                "//api/ocean//",
                "https://smartvps.store/api/ocean/buyvps",
            ),
            (
                "https://h.example/base",
                "api/",
                "https://h.example/base/api/buyvps",
            ),
            (
                "https://h.example/base/",
                "",
                "https://h.example/base/buyvps",
            ),
            (
                " http://127.0.0.1:8080 ",
                " / ",
                "http://127.0.0.1:8080/buyvps",
            ),
        ];
        for (base, prefix, want) in cases {
            let url = api_url(base, prefix).unwrap().join("buyvps").unwrap();
            assert_eq!(url.as_str(), want, "{base} + {prefix}");
        }
    }

    #[test]
    fn bad_base_urls_are_named_without_credentials() {
        let err = SmartVpsClient::new(
            SmartVpsConfig {
                base_url: "smartvps.online".into(),
                path_prefix: "api/".into(),
                username: USER.into(),
                password: SecretString::from(PASS),
            },
            Arc::new(SystemClock),
        )
        .unwrap_err();
        assert!(err.to_string().contains("\"smartvps.online\""), "{err}");
        for bad in ["ftp://h/", "https://h/?x=1", "https://h/#f", "http:///"] {
            assert!(api_url(bad, "").is_err(), "{bad}");
        }
        let err = api_url("https://bob:hunter2@h.example/", "")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2") && !err.contains("bob"), "{err}");
        assert!(err.contains("h.example"), "{err}");
        let err = api_url("https//bob:hunter2@h.example/", "")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(matches!(
            api_url("https://h/", "api?x"),
            Err(ClientError::PathPrefix { .. })
        ));
    }

    #[test]
    fn debug_never_shows_credentials() {
        let cfg = SmartVpsConfig {
            base_url: "https://smartvps.online/".into(),
            path_prefix: "api/oceansmart/".into(),
            username: USER.into(),
            password: SecretString::from(PASS),
        };
        let text = format!("{cfg:?}");
        assert!(!text.contains(PASS) && !text.contains(USER), "{text}");
        let client = SmartVpsClient::new(cfg, Arc::new(SystemClock)).unwrap();
        let text = format!("{client:?}");
        assert!(!text.contains(PASS) && !text.contains(USER), "{text}");
        assert!(text.contains("api/oceansmart/"), "{text}");
    }

    #[tokio::test]
    async fn buy_sends_post_json_auth_accept_and_request_id() {
        let (base, seen) = stub(
            200,
            "success|Congratulations! Your ip is: 103.82.72.9",
            Duration::ZERO,
        )
        .await;
        let client = client_for(&base, "api/oceansmart/");
        let order = OrderId::new();
        let ctx = CallContext::for_order(&order, 1);
        let out = client.buy(&ctx, &package(), ram(), SECOND).await;
        assert_eq!(out, Outcome::Succeeded(Ipv4Addr::new(103, 82, 72, 9)));
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1);
        let req = &seen[0];
        assert_eq!(req.method, Method::POST);
        assert_eq!(req.path, "/api/oceansmart/buyvps");
        assert_eq!(req.headers["authorization"], BASIC);
        assert_eq!(req.headers["accept"], "application/json");
        assert_eq!(req.headers["content-type"], "application/json");
        assert_eq!(req.headers[REQUEST_ID], format!("{order}/1").as_str());
        let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(body, json!({ "ip": "103.82.72", "ram": "4" }));
    }

    #[tokio::test]
    async fn both_prefix_spellings_reach_the_right_paths() {
        let (base, seen) = stub(200, r#"{"packages":[]}"#, Duration::ZERO).await;
        let vendor = client_for(base.trim_end_matches('/'), "/api/ocean");
        assert_eq!(vendor.ipstock(SECOND).await, Outcome::Succeeded(vec![]));
        let production = client_for(&base, "api/oceansmart/");
        assert_eq!(production.ipstock(SECOND).await, Outcome::Succeeded(vec![]));
        let _ = production
            .status(&ctx(), Ipv4Addr::new(1, 2, 3, 4), SECOND)
            .await;
        let seen = seen.lock().unwrap().clone();
        let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/api/ocean/ipstock",
                "/api/oceansmart/ipstock",
                "/api/oceansmart/status"
            ]
        );
        assert!(
            seen.iter()
                .all(|s| s.method == Method::POST && s.headers["authorization"] == BASIC)
        );
        assert!(seen[0].body.is_empty(), "ipstock has no body");
        assert!(!seen[0].headers.contains_key(REQUEST_ID));
        let body: serde_json::Value = serde_json::from_slice(&seen[2].body).unwrap();
        assert_eq!(body, json!({ "ip": "1.2.3.4" }));
    }

    #[tokio::test]
    async fn status_decodes_details_and_bare_error() {
        let details = serde_json::Value::String(
            r#"{"IP":"1.2.3.4","Usernane":"root","Password":"pw-9","ActionStatus":"completed"}"#
                .into(),
        )
        .to_string();
        let (base, _) = stub(200, &details, Duration::ZERO).await;
        let out = client_for(&base, "api/")
            .status(&ctx(), Ipv4Addr::new(1, 2, 3, 4), SECOND)
            .await;
        let Outcome::Succeeded(status) = out else {
            panic!("{out:?}")
        };
        assert!(status.credentials(Ipv4Addr::new(1, 2, 3, 4)).is_some());

        let (base, _) = stub(200, "error", Duration::ZERO).await;
        let out = client_for(&base, "api/")
            .status(&ctx(), Ipv4Addr::new(1, 2, 3, 4), SECOND)
            .await;
        assert!(
            matches!(&out, Outcome::Rejected(r) if r == "SmartVPS answered error: unknown address or failure"),
            "{out:?}"
        );

        let (base, _) = stub(200, r#"{"IP":"1.2.3.4","Password":"pw-9"#, Duration::ZERO).await;
        let out = client_for(&base, "api/")
            .status(&ctx(), Ipv4Addr::new(1, 2, 3, 4), SECOND)
            .await;
        assert!(
            matches!(&out, Outcome::Unknown(r) if !r.contains("pw-9")),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn garbled_stock_is_unknown() {
        let (base, _) = stub(200, "<html>maintenance</html>", Duration::ZERO).await;
        let out = client_for(&base, "api/").ipstock(SECOND).await;
        assert!(matches!(out, Outcome::Unknown(_)), "{out:?}");
    }

    #[tokio::test]
    async fn a_listening_buyer_hears_the_reply_that_comes_after_the_timeout() {
        let (base, seen) = stub(
            200,
            "success|Congratulations. Your ip is: 103.82.72.9",
            Duration::from_millis(600),
        )
        .await;
        let client = client_for(&base, "api/");
        let (out, late) = client
            .buy_listening(
                &ctx(),
                &package(),
                ram(),
                Duration::from_millis(200),
                Duration::from_secs(5),
            )
            .await;
        assert_eq!(out, Outcome::Unknown("timeout after 200ms".into()));
        let reply = late.expect("still listening").wait().await;
        assert_eq!(
            reply,
            Some(Outcome::Succeeded("103.82.72.9".parse().unwrap()))
        );
        assert_eq!(
            seen.lock().unwrap().len(),
            1,
            "one request, heard twice: no second purchase"
        );

        // A window shorter than the reply: the listener hangs up and hears nothing.
        let (base, _) = stub(
            200,
            "success|Your ip is: 103.82.72.10",
            Duration::from_secs(3),
        )
        .await;
        let (_, late) = client_for(&base, "api/")
            .buy_listening(
                &ctx(),
                &package(),
                ram(),
                Duration::from_millis(100),
                Duration::from_millis(400),
            )
            .await;
        assert_eq!(late.unwrap().wait().await, None);
    }

    #[tokio::test]
    async fn a_slow_server_past_the_timeout_is_unknown() {
        let (base, _) = stub(200, "success|ip 103.82.72.9", Duration::from_secs(2)).await;
        let client = client_for(&base, "api/");
        let started = std::time::Instant::now();
        let out = client
            .buy(&ctx(), &package(), ram(), Duration::from_millis(200))
            .await;
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(out, Outcome::Unknown("timeout after 200ms".into()));
    }

    #[tokio::test]
    async fn the_timeout_is_converted_by_the_clock() {
        // A clock running 600 times faster: 120 s of clock time is 200 ms of real time.
        let (base, _) = stub(200, "success|ip 103.82.72.9", Duration::from_secs(2)).await;
        let clock = crate::clock::ScaledClock::new(crate::clock::Timestamp(0), 600.0);
        let cfg = SmartVpsConfig {
            base_url: base,
            path_prefix: "api/".into(),
            username: USER.into(),
            password: SecretString::from(PASS),
        };
        let client = SmartVpsClient::new(cfg, Arc::new(clock)).unwrap();
        let started = std::time::Instant::now();
        let out = client
            .buy(&ctx(), &package(), ram(), Duration::from_secs(120))
            .await;
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(out, Outcome::Unknown("timeout after 2m".into()));
    }

    #[tokio::test]
    async fn server_errors_are_unknown() {
        let (base, _) = stub(500, r#"{"message":"database down"}"#, Duration::ZERO).await;
        let out = client_for(&base, "api/")
            .buy(&ctx(), &package(), ram(), SECOND)
            .await;
        assert!(
            matches!(&out, Outcome::Unknown(r) if r.contains("500") && r.contains("database down")),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn a_reset_after_the_request_was_read_is_unknown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 8192];
            let mut read = Vec::new();
            // Read the head and the JSON body (the body is small and follows the blank line).
            while !String::from_utf8_lossy(&read).contains("\"ram\"") {
                let n = sock.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                read.extend_from_slice(&buf[..n]);
            }
            sock.set_zero_linger().unwrap();
            drop(sock);
        });
        let out = client_for(&format!("http://{addr}"), "api/")
            .buy(&ctx(), &package(), ram(), SECOND)
            .await;
        assert!(
            matches!(&out, Outcome::Unknown(r) if r.contains("after the request was sent")),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn a_half_written_reply_is_unknown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 8192];
            let _ = sock.read(&mut buf).await.unwrap();
            let _ = sock
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nsuccess|")
                .await;
            drop(sock);
        });
        let out = client_for(&format!("http://{addr}"), "api/")
            .buy(&ctx(), &package(), ram(), SECOND)
            .await;
        assert!(matches!(out, Outcome::Unknown(_)), "{out:?}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_rejected() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let out = client_for(&format!("http://{addr}/"), "api/")
            .buy(&ctx(), &package(), ram(), SECOND)
            .await;
        assert!(
            matches!(&out, Outcome::Rejected(r) if r.starts_with("connection failed")),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn unauthorised_is_rejected_without_echoing_credentials() {
        let (base, _) = stub(401, &format!("bad login {USER}:{PASS}"), Duration::ZERO).await;
        let out = client_for(&base, "api/")
            .buy(&ctx(), &package(), ram(), SECOND)
            .await;
        let r = reason(&out);
        assert!(matches!(out, Outcome::Rejected(_)));
        assert!(
            r.contains("authentication failed: check smartvps.username/password"),
            "{r}"
        );
        assert!(!r.contains(USER) && !r.contains(PASS), "{r}");

        let (base, _) = stub(
            403,
            &format!("{{\"error\":\"user {USER} is suspended\"}}"),
            Duration::ZERO,
        )
        .await;
        let out = client_for(&base, "api/").ipstock(SECOND).await;
        let r = reason(&out);
        assert!(
            matches!(out, Outcome::Rejected(_)) && r.contains("403") && r.contains("suspended"),
            "{r}"
        );
        assert!(!r.contains(USER), "{r}");
    }

    #[tokio::test]
    async fn buy_replies_are_classified() {
        for (body, kind) in [
            ("error", "rejected"),
            ("", "unknown"),
            ("success|done", "unknown"),
            ("ip 1.2.3.4", "unknown"),
        ] {
            let (base, _) = stub(200, body, Duration::ZERO).await;
            let out = client_for(&base, "api/")
                .buy(&ctx(), &package(), ram(), SECOND)
                .await;
            assert_eq!(out.kind(), kind, "{body:?}: {out:?}");
        }
    }

    #[tokio::test]
    async fn commands_send_the_address_and_the_image_and_are_classified() {
        let (base, seen) = stub(200, "success|changeos done", Duration::ZERO).await;
        let ip = Ipv4Addr::new(103, 82, 72, 9);
        let out = client_for(&base, "api/")
            .command(
                &ctx(),
                ip,
                Command::ChangeOs(crate::domain::Os::WindowsServer2022),
                SECOND,
            )
            .await;
        assert_eq!(out, Outcome::Succeeded(()));
        let req = seen.lock().unwrap()[0].clone();
        assert_eq!(req.path, "/api/changeos");
        let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(body, json!({ "ip": "103.82.72.9", "os": "2022" }));
        for (status, body, kind) in [
            (200, "error", "rejected"),
            (200, "", "unknown"),
            (200, "done?", "unknown"),
            (500, "oops", "unknown"),
            (200, "\"success|stopped\"", "succeeded"),
        ] {
            let (base, seen) = stub(status, body, Duration::ZERO).await;
            let out = client_for(&base, "api/")
                .command(&ctx(), ip, Command::Stop, SECOND)
                .await;
            assert_eq!(out.kind(), kind, "{status} {body:?}: {out:?}");
            assert_eq!(seen.lock().unwrap()[0].path, "/api/stop");
        }
        let (base, _) = stub(200, "x", Duration::from_secs(3)).await;
        let out = client_for(&base, "api/")
            .command(&ctx(), ip, Command::Start, Duration::from_millis(200))
            .await;
        assert_eq!(
            out.kind(),
            "unknown",
            "a timeout may have started it: {out:?}"
        );
    }

    #[test]
    fn only_whole_words_are_redacted() {
        assert_eq!(
            replace_word("ipstock failed for u", "u"),
            "ipstock failed for [redacted]"
        );
        assert_eq!(
            replace_word("user u: invalid", "u"),
            "user [redacted]: invalid"
        );
        assert_eq!(replace_word("status unknown", "u"), "status unknown");
        assert_eq!(replace_word("pp p", "p"), "pp [redacted]");
        assert_eq!(replace_word("x", ""), "x");
    }
}
