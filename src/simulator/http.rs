//! The simulator over HTTP, speaking SmartVPS's production wire (`smartvps-wire.md`): every call
//! a `POST` under a path prefix, Basic auth, and replies in the shapes production sends, quirks
//! included (double-encoded JSON, spread strings, `Usernane`, bare `error`, 500s).
//!
//! The server does not know the client's timeout: a call simply takes its latency in clock time
//! (a `ScaledClock` at speed 60 compresses a 30 s buy to half a second) and replies. The purchase
//! is registered when the request arrives, so it completes even if the client disconnects.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use super::script::ActionEffect;
use super::world::StatusFields;
use super::{BuyReply, Simulator, StatusReply};

/// How status replies are encoded (production has been seen sending all three).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Encoding {
    /// A JSON object.
    Object,
    /// A JSON string whose content is the object's JSON.
    DoubleEncoded,
    /// An object with numeric keys holding one character each: a spread string.
    Spread,
    /// Cycles Object, DoubleEncoded, Spread, one per reply.
    #[default]
    Rotate,
}

/// How ipstock replies are encoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StockEncoding {
    /// A JSON object.
    Object,
    /// That object's JSON inside a JSON string.
    DoubleEncoded,
    /// Alternates the two, one per reply.
    #[default]
    Rotate,
}

/// How buyvps status strings (`success|...`, `error`) are sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BuyReplyFormat {
    /// The bare text, `text/plain`.
    Text,
    /// A JSON string, `application/json`.
    JsonString,
    /// Alternates the two, one per reply.
    #[default]
    Rotate,
}

/// The HTTP server's settings.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Path prefix before the call name: production `api/oceansmart/`, the vendor sheet
    /// `api/ocean/`. Leading and trailing slashes are optional.
    pub prefix: String,
    /// The Basic-auth username the server accepts.
    pub username: String,
    /// The Basic-auth password the server accepts.
    pub password: SecretString,
    /// Encoding of status replies.
    pub status_encoding: Encoding,
    /// Encoding of ipstock replies.
    pub stock_encoding: StockEncoding,
    /// Format of buyvps replies.
    pub buy_format: BuyReplyFormat,
    /// Spell the username key `Usernane`, as production mostly does (`Username` otherwise).
    pub misspelled_username: bool,
}

impl HttpConfig {
    /// Production's prefix.
    pub const DEFAULT_PREFIX: &'static str = "api/oceansmart/";

    /// Settings accepting `username`/`password`, with production's prefix and every encoding
    /// quirk on rotation (so a client is exercised against all of them).
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            prefix: Self::DEFAULT_PREFIX.to_string(),
            username: username.into(),
            password: SecretString::from(password.into()),
            status_encoding: Encoding::Rotate,
            stock_encoding: StockEncoding::Rotate,
            buy_format: BuyReplyFormat::Rotate,
            misspelled_username: true,
        }
    }
}

impl Default for HttpConfig {
    /// The demo's credentials: `demo` / `demo-password`.
    fn default() -> Self {
        Self::new("demo", "demo-password")
    }
}

struct AppState {
    sim: Simulator,
    cfg: HttpConfig,
    /// The expected `Basic` token: base64 of `username:password`.
    token: String,
    status_turn: AtomicU64,
    stock_turn: AtomicU64,
    buy_turn: AtomicU64,
    /// Cancels replies still sleeping, so shutdown does not wait for a 10-minute hang.
    shutdown: CancellationToken,
}

type Shared = Arc<AppState>;

/// The router for the simulator's wire (without a shutdown signal: sleeping replies run out).
pub fn router(sim: Simulator, cfg: HttpConfig) -> Router {
    router_with_shutdown(sim, cfg, CancellationToken::new())
}

fn router_with_shutdown(sim: Simulator, cfg: HttpConfig, shutdown: CancellationToken) -> Router {
    let base = normalize_prefix(&cfg.prefix);
    let token = base64(format!("{}:{}", cfg.username, cfg.password.expose_secret()).as_bytes());
    let state = Arc::new(AppState {
        sim,
        cfg,
        token,
        status_turn: AtomicU64::new(0),
        stock_turn: AtomicU64::new(0),
        buy_turn: AtomicU64::new(0),
        shutdown,
    });
    let mut router = Router::new()
        .route(&format!("{base}ipstock"), post(ipstock))
        .route(&format!("{base}buyvps"), post(buyvps))
        .route(&format!("{base}status"), post(status));
    for name in ["start", "stop", "format", "changeos", "renewvps"] {
        router = router.route(
            &format!("{base}{name}"),
            post(
                move |State(st): State<Shared>, headers: HeaderMap, body: Bytes| {
                    action(st, name, headers, body)
                },
            ),
        );
    }
    router.fallback(not_found).with_state(state)
}

/// Serves the simulator on `listener` until `shutdown` is cancelled. Replies still sleeping at
/// shutdown end at once with a 503; their purchases still complete in the world.
///
/// # Errors
/// When the listener fails.
pub async fn serve(
    sim: Simulator,
    listener: tokio::net::TcpListener,
    cfg: HttpConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, prefix = %cfg.prefix, seed = sim.seed(), "SmartVPS simulator listening");
    let app = router_with_shutdown(sim, cfg, shutdown.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// `api/oceansmart` → `/api/oceansmart/`; empty → `/`.
fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim().trim_matches('/');
    if trimmed.is_empty() {
        "/".to_string()
    } else {
        format!("/{trimmed}/")
    }
}

impl AppState {
    fn authorized(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            .is_some_and(|(scheme, token)| {
                scheme.eq_ignore_ascii_case("basic") && token.trim() == self.token
            })
    }

    /// Waits `d` of clock time; `false` when shutdown came first.
    async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            () = self.sim.clock().sleep(d) => true,
            () = self.shutdown.cancelled() => false,
        }
    }

    fn turn(counter: &AtomicU64) -> u64 {
        counter.fetch_add(1, Ordering::Relaxed)
    }

    /// A buyvps status string in the configured format.
    fn buy_text(&self, text: &str) -> Response {
        let as_json = match self.cfg.buy_format {
            BuyReplyFormat::Text => false,
            BuyReplyFormat::JsonString => true,
            BuyReplyFormat::Rotate => Self::turn(&self.buy_turn) % 2 == 1,
        };
        if as_json {
            json_body(StatusCode::OK, json_string(text))
        } else {
            text_body(StatusCode::OK, text.to_string())
        }
    }

    fn status_body(&self, f: &StatusFields) -> Response {
        let user_key = if self.cfg.misspelled_username {
            "Usernane"
        } else {
            "Username"
        };
        let mut obj = Map::new();
        obj.insert("IP".into(), f.ip.clone().into());
        obj.insert("OS".into(), f.os.clone().into());
        obj.insert(user_key.into(), f.username.clone().into());
        obj.insert("Password".into(), f.password.clone().into());
        obj.insert("ExpiryDate".into(), f.expiry.clone().into());
        obj.insert("PowerStatus".into(), f.power.into());
        obj.insert("MachineStatus".into(), f.machine.into());
        obj.insert("ActionStatus".into(), f.action.into());
        obj.insert("RAM".into(), f.ram.clone().into());
        let object = Value::Object(obj).to_string();
        let encoding = match self.cfg.status_encoding {
            Encoding::Rotate => [Encoding::Object, Encoding::DoubleEncoded, Encoding::Spread]
                [(Self::turn(&self.status_turn) % 3) as usize],
            other => other,
        };
        let body = match encoding {
            Encoding::DoubleEncoded => json_string(&object),
            Encoding::Spread => spread(&object),
            Encoding::Object | Encoding::Rotate => object,
        };
        json_body(StatusCode::OK, body)
    }

    fn stock_body(&self) -> Response {
        let packages: Vec<Value> = self
            .sim
            .stock()
            .into_iter()
            .map(|s| {
                let name = match &s.name {
                    Ok(n) => n.as_str().to_string(),
                    Err(raw) => raw.clone(),
                };
                json!({"id": s.id.0, "name": name, "ipv4": s.free, "status": if s.active { "active" } else { "inactive" }})
            })
            .collect();
        let object = json!({ "packages": packages }).to_string();
        let double = match self.cfg.stock_encoding {
            StockEncoding::Object => false,
            StockEncoding::DoubleEncoded => true,
            StockEncoding::Rotate => Self::turn(&self.stock_turn) % 2 == 1,
        };
        json_body(
            StatusCode::OK,
            if double { json_string(&object) } else { object },
        )
    }
}

// ----- handlers ------------------------------------------------------------------------------

async fn ipstock(State(st): State<Shared>, headers: HeaderMap) -> Response {
    if !st.authorized(&headers) {
        return unauthorized();
    }
    let latency = st.sim.begin_ipstock();
    if !st.sleep(latency).await {
        return shutting_down();
    }
    st.stock_body()
}

async fn buyvps(
    State(st): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, BadRequest> {
    if !st.authorized(&headers) {
        return Ok(unauthorized());
    }
    let fields = object(&body)?;
    let package = string_field(&fields, "ip", "the package name, e.g. \"103.82.72\"")?;
    let ram = string_field(&fields, "ram", "whole GB as a string, e.g. \"4\"")?
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|gb| *gb > 0)
        .ok_or_else(|| BadRequest("field `ram` must be whole GB as a string, e.g. \"4\"".into()))?;
    // Registered upstream now: if the client goes away, `pending` is dropped with this future
    // and the purchase still completes in the world.
    let pending = st.sim.begin_buy(package, ram, request_id(&headers));
    if !st.sleep(pending.latency()).await {
        return Ok(shutting_down());
    }
    Ok(match pending.finish() {
        BuyReply::Success(ip) => st.buy_text(&success_text(ip)),
        BuyReply::Error => st.buy_text("error"),
        BuyReply::ServerError => message(StatusCode::INTERNAL_SERVER_ERROR, "Server Error"),
        BuyReply::Garbled(n) => text_body(StatusCode::OK, garbled_body(n).to_string()),
        // A proxy in front gave up waiting; what happened behind it is unknown to the client.
        BuyReply::NoReply => message(StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout"),
    })
}

async fn status(
    State(st): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, BadRequest> {
    if !st.authorized(&headers) {
        return Ok(unauthorized());
    }
    let fields = object(&body)?;
    // Not an address at all: SmartVPS does not know it, so the reply is the bare `error`.
    let ip = string_field(&fields, "ip", "the server's address")?
        .trim()
        .parse::<Ipv4Addr>()
        .ok();
    let pending = st.sim.begin_status(ip);
    if !st.sleep(pending.latency()).await {
        return Ok(shutting_down());
    }
    Ok(match pending.finish() {
        StatusReply::Fields(f) => st.status_body(&f),
        StatusReply::Error => text_body(StatusCode::OK, "error".into()),
        StatusReply::ServerError => message(StatusCode::INTERNAL_SERVER_ERROR, "Server Error"),
    })
}

async fn action(
    st: Shared,
    name: &'static str,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, BadRequest> {
    if !st.authorized(&headers) {
        return Ok(unauthorized());
    }
    let fields = object(&body)?;
    let ip = string_field(&fields, "ip", "the server's address")?
        .trim()
        .parse::<Ipv4Addr>()
        .ok();
    let os = fields.get("os").and_then(Value::as_str);
    let ticket = st.sim.begin_action(name, ip, os);
    if !st.sleep(ticket.latency).await {
        return Ok(shutting_down());
    }
    Ok(match ticket.effect {
        ActionEffect::Done => text_body(StatusCode::OK, format!("success|{name} done")),
        ActionEffect::ErrorReply => text_body(StatusCode::OK, "error".into()),
        ActionEffect::ServerError | ActionEffect::ServerErrorAfterActing => {
            message(StatusCode::INTERNAL_SERVER_ERROR, "Server Error")
        }
    })
}

async fn not_found() -> Response {
    message(StatusCode::NOT_FOUND, "Not Found")
}

// ----- reply helpers -------------------------------------------------------------------------

fn success_text(ip: Ipv4Addr) -> String {
    format!("success|Congratulations! Your VPS has been deployed successfully. Your ip is: {ip}")
}

/// Garbage a 2xx buyvps reply may carry: none of it is a success (empty, an HTML error page,
/// the success marker without an address, truncated JSON, an address without the marker).
pub(crate) fn garbled_body(n: u64) -> &'static str {
    const BODIES: [&str; 5] = [
        "",
        "<html><head><title>502 Bad Gateway</title></head><body>Bad Gateway</body></html>",
        "success|Congratulations! Your VPS has been deployed successfully. Your ip is: ",
        "{\"status\":\"succ",
        "Your ip is: 192.0.2.1",
    ];
    BODIES[(n % BODIES.len() as u64) as usize]
}

fn request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// A request SmartVPS would not understand: 400 with a message (never a panic).
struct BadRequest(String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        message(StatusCode::BAD_REQUEST, &self.0)
    }
}

fn object(body: &Bytes) -> Result<Map<String, Value>, BadRequest> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(BadRequest("the body must be a JSON object".into())),
        Err(e) => Err(BadRequest(format!("malformed JSON body: {e}"))),
    }
}

fn string_field<'a>(
    fields: &'a Map<String, Value>,
    key: &str,
    what: &str,
) -> Result<&'a str, BadRequest> {
    fields
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| BadRequest(format!("field `{key}` must be a string: {what}")))
}

fn unauthorized() -> Response {
    message(StatusCode::UNAUTHORIZED, "Unauthorized")
}

fn shutting_down() -> Response {
    message(StatusCode::SERVICE_UNAVAILABLE, "simulator shutting down")
}

fn message(code: StatusCode, msg: &str) -> Response {
    json_body(code, json!({ "message": msg }).to_string())
}

fn json_body(code: StatusCode, body: String) -> Response {
    (
        code,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

fn text_body(code: StatusCode, body: String) -> Response {
    (
        code,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// `{"0":"{","1":"\"",...}`: what spreading a string into an object gives, keys in numeric
/// order as production sends them (serde_json's map would sort them as text: 0, 1, 10, ...).
fn spread(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 8);
    out.push('{');
    for (i, ch) in s.chars().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            "\"{i}\":{}",
            json_string(ch.encode_utf8(&mut [0; 4]))
        ));
    }
    out.push('}');
    out
}

/// Standard base64 with padding (for the expected Basic token; not worth a dependency).
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::clock::{ScaledClock, Timestamp};
    use crate::domain::{PackageId, PackageName};
    use crate::simulator::{BuyEffect, BuyStep, StatusStep};

    const P5: PackageId = PackageId(5);

    struct Server {
        sim: Simulator,
        url: String,
        client: reqwest::Client,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<std::io::Result<()>>,
    }

    impl Server {
        /// A simulator whose clock runs 1000× real time (a 30 s buy takes 30 ms), served on an
        /// ephemeral port. Real time, not paused: real sockets and paused time do not mix.
        async fn start(cfg: HttpConfig) -> Self {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let clock = Arc::new(ScaledClock::new(Timestamp(1_767_225_600_000), 1000.0));
            let sim = Simulator::with_default_catalog(clock, 5);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!(
                "http://{}/{}",
                listener.local_addr().unwrap(),
                cfg.prefix.trim_matches('/')
            );
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(serve(sim.clone(), listener, cfg, shutdown.clone()));
            Self {
                sim,
                url,
                client: reqwest::Client::new(),
                shutdown,
                task,
            }
        }

        fn post(&self, call: &str) -> reqwest::RequestBuilder {
            self.client
                .post(format!("{}/{call}", self.url))
                .header(header::ACCEPT, "application/json")
        }

        fn authed(&self, call: &str) -> reqwest::RequestBuilder {
            self.post(call).basic_auth("demo", Some("demo-password"))
        }

        async fn call(&self, call: &str, body: Option<Value>) -> (StatusCode, String, String) {
            let mut req = self.authed(call);
            if let Some(b) = body {
                req = req
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(b.to_string());
            }
            let resp = req.send().await.unwrap();
            let code = StatusCode::from_u16(resp.status().as_u16()).unwrap();
            let ctype = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            (code, ctype, resp.text().await.unwrap())
        }

        async fn stop(self) {
            self.shutdown.cancel();
            self.task.await.unwrap().unwrap();
        }
    }

    /// Decodes any of the status encodings back to a key → value map.
    fn decode_status(body: &str) -> BTreeMap<String, String> {
        let v: Value = serde_json::from_str(body).unwrap();
        let text = match v {
            Value::String(s) => s,
            Value::Object(m) if m.contains_key("0") => {
                let mut chars: Vec<(usize, String)> = m
                    .into_iter()
                    .map(|(k, v)| (k.parse().unwrap(), v.as_str().unwrap().to_string()))
                    .collect();
                chars.sort();
                chars.into_iter().map(|(_, c)| c).collect()
            }
            other => other.to_string(),
        };
        let obj: Map<String, Value> = serde_json::from_str(&text).unwrap();
        obj.into_iter()
            .map(|(k, v)| (k, v.as_str().unwrap().to_string()))
            .collect()
    }

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
        ] {
            assert_eq!(base64(plain.as_bytes()), enc);
        }
        assert_eq!(normalize_prefix("api/oceansmart"), "/api/oceansmart/");
        assert_eq!(normalize_prefix("/"), "/");
        assert_eq!(
            spread("{\"a\"}"),
            r#"{"0":"{","1":"\"","2":"a","3":"\"","4":"}"}"#
        );
    }

    #[tokio::test]
    async fn auth_is_required() {
        let s = Server::start(HttpConfig::default()).await;
        let resp = s.post("ipstock").send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401);
        assert_eq!(resp.text().await.unwrap(), r#"{"message":"Unauthorized"}"#);
        let resp = s
            .post("buyvps")
            .basic_auth("demo", Some("wrong"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401);
        assert_eq!(s.sim.calls().buy, 0, "rejected before it counts");
        s.stop().await;
    }

    #[tokio::test]
    async fn ipstock_alternates_object_and_double_encoded() {
        let s = Server::start(HttpConfig::default()).await;
        let (code, ctype, first) = s.call("ipstock", None).await;
        assert_eq!((code, ctype.as_str()), (StatusCode::OK, "application/json"));
        let v: Value = serde_json::from_str(&first).unwrap();
        let pkgs = v["packages"].as_array().unwrap();
        assert_eq!(pkgs.len(), 7);
        assert!(
            pkgs.contains(&json!({"id": 5, "name": "103.82.72", "ipv4": 71, "status": "active"}))
        );
        assert!(
            pkgs.contains(
                &json!({"id": 21, "name": "103.121.18", "ipv4": 30, "status": "inactive"})
            )
        );
        let (_, _, second) = s.call("ipstock", None).await;
        let inner: String = serde_json::from_str(&second).unwrap();
        assert_eq!(inner, first, "the same JSON, encoded again inside a string");
        assert_eq!(s.sim.calls().ipstock, 2);
        s.stop().await;
    }

    #[tokio::test]
    async fn buy_then_status_in_every_encoding() {
        let s = Server::start(HttpConfig::default()).await;
        let body = json!({"ip": "103.109.18x", "ram": "4"});
        let resp = s
            .authed("buyvps")
            .header("X-Request-Id", "order-1/1")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
        let text = resp.text().await.unwrap();
        let ip: Ipv4Addr = text.rsplit("Your ip is: ").next().unwrap().parse().unwrap();
        assert!(text.starts_with("success|Congratulations"));
        assert!(PackageName::parse("103.109.18x").unwrap().contains(ip));
        assert_eq!(s.sim.purchases_for("order-1/")[0].ip, ip);

        let (_, ctype, json_reply) = s.call("buyvps", Some(body)).await;
        assert_eq!(ctype, "application/json");
        let decoded: String = serde_json::from_str(&json_reply).unwrap();
        assert!(decoded.starts_with("success|") && decoded.contains("Your ip is: 103.109.18"));

        let mut seen = Vec::new();
        for _ in 0..3 {
            let (code, _, body) = s.call("status", Some(json!({"ip": ip.to_string()}))).await;
            assert_eq!(code, StatusCode::OK);
            seen.push(body);
        }
        assert!(
            seen[0].starts_with("{\"ActionStatus\""),
            "object: {}",
            seen[0]
        );
        assert!(
            seen[1].starts_with("\"{\\\"ActionStatus"),
            "double-encoded: {}",
            seen[1]
        );
        assert!(
            seen[2].starts_with("{\"0\":\"{\",\"1\":\"\\\"\",\"2\":\"A\""),
            "spread: {}",
            seen[2]
        );
        let fields: Vec<_> = seen.iter().map(|b| decode_status(b)).collect();
        assert!(fields.iter().all(|f| f == &fields[0]));
        let f = &fields[0];
        assert_eq!(f["IP"], ip.to_string());
        assert_eq!(f["Usernane"], "root");
        assert_eq!(f["ActionStatus"], "completed");
        assert_eq!(f["Password"].len(), 16);
        assert_eq!(f["RAM"], "4GB");
        s.stop().await;
    }

    #[tokio::test]
    async fn bad_requests_and_error_replies() {
        let s = Server::start(HttpConfig {
            status_encoding: Encoding::Object,
            ..HttpConfig::default()
        })
        .await;
        for bad in ["{not json", "[1,2]"] {
            let resp = s.authed("buyvps").body(bad).send().await.unwrap();
            assert_eq!(resp.status().as_u16(), 400);
            let v: Value = resp.json().await.unwrap();
            assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
        let (code, _, body) = s
            .call("buyvps", Some(json!({"ip": "103.82.72", "ram": 4})))
            .await;
        assert_eq!(
            code,
            StatusCode::BAD_REQUEST,
            "ram travels as a string: {body}"
        );
        let (code, _, _) = s.call("status", Some(json!({}))).await;
        assert_eq!(code, StatusCode::BAD_REQUEST);

        // An unknown package, an unknown address: the bare `error`.
        let (code, _, body) = s
            .call("buyvps", Some(json!({"ip": "10.1.2", "ram": "1"})))
            .await;
        assert_eq!((code, body.as_str()), (StatusCode::OK, "error"));
        let (_, _, body) = s.call("status", Some(json!({"ip": "1.2.3.4"}))).await;
        assert_eq!(body, "error");

        // Scripted 500 (server bought anyway) and garbage.
        s.sim
            .script_buy(
                P5,
                [
                    BuyStep::new(Duration::ZERO, BuyEffect::ServerErrorAfterBuying),
                    BuyStep::new(Duration::ZERO, BuyEffect::Garbled),
                    BuyStep::new(Duration::ZERO, BuyEffect::NoEffect),
                ],
            )
            .unwrap();
        let (code, _, body) = s
            .call("buyvps", Some(json!({"ip": "103.82.72", "ram": "2"})))
            .await;
        assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body, r#"{"message":"Server Error"}"#);
        assert_eq!(s.sim.purchases().len(), 1);
        let (code, _, body) = s
            .call("buyvps", Some(json!({"ip": "103.82.72", "ram": "2"})))
            .await;
        assert_eq!(code, StatusCode::OK);
        assert!((0..5).any(|n| garbled_body(n) == body), "garbage: {body:?}");
        let (code, _, _) = s
            .call("buyvps", Some(json!({"ip": "103.82.72", "ram": "2"})))
            .await;
        assert_eq!(code, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(s.sim.purchases().len(), 1);

        // A pending server: empty password, ActionStatus pending.
        s.sim.set_build_time(P5, Duration::from_secs(3600)).unwrap();
        s.sim
            .script_status(P5, [StatusStep::normal(Duration::ZERO)])
            .unwrap();
        let (_, _, body) = s
            .call("buyvps", Some(json!({"ip": "103.82.72", "ram": "2"})))
            .await;
        let ip = serde_json::from_str::<String>(&body).unwrap_or(body);
        let ip = ip.rsplit(' ').next().unwrap().to_string();
        let (_, _, body) = s.call("status", Some(json!({"ip": ip}))).await;
        let f = decode_status(&body);
        assert_eq!(
            (f["Password"].as_str(), f["ActionStatus"].as_str()),
            ("", "pending")
        );

        // Paths and methods.
        let resp = s.authed("nonsense").send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 404);
        let resp = s
            .client
            .get(format!("{}/ipstock", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 405);
        let (_, _, body) = s.call("stop", Some(json!({"ip": ip}))).await;
        assert!(body.starts_with("success|"));
        let (_, _, body) = s
            .call("changeos", Some(json!({"ip": ip, "os": "haiku"})))
            .await;
        assert_eq!(body, "error");
        s.stop().await;
    }

    #[tokio::test]
    async fn the_prefix_is_configurable() {
        let cfg = HttpConfig {
            prefix: "/api/ocean".into(),
            stock_encoding: StockEncoding::DoubleEncoded,
            ..HttpConfig::default()
        };
        let s = Server::start(cfg).await;
        let (code, _, body) = s.call("ipstock", None).await;
        assert_eq!(code, StatusCode::OK);
        assert!(body.starts_with('"'));
        let other = s.url.replace("/api/ocean", "/api/oceansmart");
        let resp = s
            .client
            .post(format!("{other}/ipstock"))
            .basic_auth("demo", Some("demo-password"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 404);
        s.stop().await;
    }

    /// Polls `f` until it holds (real-time tests on a busy machine must not race).
    async fn eventually(mut f: impl FnMut() -> bool) {
        for _ in 0..500 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition not reached within 5 s");
    }

    #[tokio::test]
    async fn a_purchase_completes_after_the_client_hung_up() {
        let s = Server::start(HttpConfig::default()).await;
        // 1000 s of clock time = 1 s here; the client gives up after 150 ms.
        s.sim
            .script_buy(P5, [BuyStep::succeed(Duration::from_secs(1000))])
            .unwrap();
        let out = s
            .authed("buyvps")
            .header("X-Request-Id", "order-9/1")
            .body(json!({"ip": "103.82.72", "ram": "1"}).to_string())
            .timeout(Duration::from_millis(150))
            .send()
            .await;
        assert!(out.is_err());
        assert_eq!(s.sim.calls().buy, 1, "the request reached the simulator");
        assert!(s.sim.purchases().is_empty());
        eventually(|| !s.sim.purchases_for("order-9/").is_empty()).await;
        let bought = s.sim.purchases_for("order-9/");
        assert_eq!(
            bought[0].completed_at.since(bought[0].requested_at),
            Duration::from_secs(1000)
        );
        s.stop().await;
    }

    #[tokio::test]
    async fn shutdown_does_not_wait_for_hanging_replies() {
        let s = Server::start(HttpConfig::default()).await;
        // A 10-hour hang: 36 s of real time at this speed.
        s.sim
            .script_buy(P5, [BuyStep::hang(Duration::from_secs(36_000))])
            .unwrap();
        let req = s
            .authed("buyvps")
            .body(json!({"ip": "103.82.72", "ram": "1"}).to_string())
            .send();
        let call = tokio::spawn(req);
        eventually(|| s.sim.calls().buy == 1).await;
        let started = std::time::Instant::now();
        s.shutdown.cancel();
        s.task.await.unwrap().unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        let resp = call.await.unwrap().unwrap();
        assert_eq!(resp.status().as_u16(), 503);
    }
}
