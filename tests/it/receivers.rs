//! Test doubles for the other end of notifications: a webhook receiver that can be told to fail,
//! an SMTP server process (aiosmtpd) that writes what it receives to a directory, and a clock
//! moved by hand (real sockets, so tokio's paused time cannot be used).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use provisioner::clock::{Clock, Timestamp};
use provisioner::notify::webhook;

/// A clock that moves only when told to.
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new() -> Arc<Self> {
        Arc::new(Self(AtomicI64::new(1_767_225_600_000)))
    }

    pub fn advance(&self, d: Duration) {
        self.0
            .fetch_add(i64::try_from(d.as_millis()).unwrap(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }

    fn real(&self, d: Duration) -> Duration {
        d
    }
}

/// One request the receiver saw.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: serde_json::Value,
    /// Whether the signature verified with the receiver's secret.
    pub signature_ok: bool,
    /// What the receiver answered.
    pub status: u16,
}

struct ReceiverState {
    secret: Vec<u8>,
    clock: Arc<dyn Clock>,
    failing: AtomicBool,
    seen: Mutex<Vec<Received>>,
}

/// A webhook endpoint on loopback that verifies signatures and answers 500 while failing.
pub struct WebhookReceiver {
    pub url: String,
    state: Arc<ReceiverState>,
}

impl WebhookReceiver {
    pub async fn start(secret: &str, clock: Arc<dyn Clock>) -> Self {
        let state = Arc::new(ReceiverState {
            secret: secret.as_bytes().to_vec(),
            clock,
            failing: AtomicBool::new(false),
            seen: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url: format!("http://{addr}/hook"),
            state,
        }
    }

    pub fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    pub fn seen(&self) -> Vec<Received> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Accepted (2xx) requests per idempotency key.
    pub fn accepted_per_key(&self) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for r in self.seen().iter().filter(|r| r.status == 200) {
            let key = r.headers["idempotency-key"].to_str().unwrap().to_string();
            *out.entry(key).or_insert(0) += 1;
        }
        out
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let signature = headers
        .get(webhook::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let now = state.clock.now().millis() / 1000;
    let signature_ok = webhook::verify(
        &state.secret,
        signature,
        &body,
        now,
        Duration::from_secs(300),
    )
    .is_ok();
    let status = if state.failing.load(Ordering::SeqCst) {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    state.seen.lock().unwrap().push(Received {
        headers,
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        signature_ok,
        status: status.as_u16(),
    });
    status
}

/// One message the SMTP sink received, as parsed by Python's email package.
#[derive(Debug, serde::Deserialize)]
pub struct Mail {
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    pub subject: String,
    pub from: String,
    pub to: String,
    pub message_id: String,
    pub body: String,
}

/// `python3 tests/fixtures/smtp_sink.py`: a real SMTP server (aiosmtpd) on loopback.
pub struct SmtpSink {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl SmtpSink {
    /// Starts the sink, or `None` (with a loud note) when aiosmtpd is not installed outside CI.
    ///
    /// # Panics
    /// When aiosmtpd is missing under `CI=true`: CI must run the SMTP tests.
    pub fn start() -> Option<Self> {
        Self::start_with(&[])
    }

    /// A sink that refuses every recipient with a permanent 550: mail that never gets through.
    pub fn start_refusing() -> Option<Self> {
        Self::start_with(&["refuse"])
    }

    fn start_with(args: &[&str]) -> Option<Self> {
        let available = Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !available {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "aiosmtpd is required in CI (.ci/run installs it: python3 -m pip install aiosmtpd)"
            );
            eprintln!(
                "SKIPPED: python3 with aiosmtpd not found; install it with `python3 -m pip install aiosmtpd` to run the SMTP tests"
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smtp_sink.py");
        let port_file = dir.path().join("port");
        let child = Command::new("python3")
            .arg(&script)
            .arg(dir.path())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the SMTP sink");
        // The sink writes its port once it accepts connections.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file)
                && let Ok(port) = text.trim().parse()
            {
                break port;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "SMTP sink did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Some(Self { port, dir, child })
    }

    fn mail_dir(&self) -> PathBuf {
        self.dir.path().join("mail")
    }

    /// Messages received so far, oldest first.
    pub fn messages(&self) -> Vec<Mail> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.mail_dir())
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|e| e == "json"));
        files.sort();
        files
            .iter()
            .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
