//! A full run with every log line captured at TRACE, as JSON: intake over HTTP, the real SmartVPS
//! client against the simulator over HTTP with a known account, a trusted webhook and (when
//! aiosmtpd is installed) email that both carry the customer's password. Neither that password,
//! nor the SmartVPS password, nor the Basic-auth header, nor the signing secret may appear in any
//! line; every line the service writes about the order must carry its `order_id`.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use provisioner::app::{StartOptions, start};
use provisioner::config::{Settings, SmartVpsSettings};
use provisioner::crypto::Cipher;
use provisioner::notify::email::{EmailSettings, SmtpTls};
use provisioner::notify::webhook::WebhookEndpoint;
use provisioner::simulator::{self, HttpConfig, Scenario, Simulator};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::helpers::{STOREFRONT_SECRET, fast_clock, get_order, post_order, scenario_package};
use crate::receivers::{SmtpSink, WebhookReceiver};

const SMARTVPS_USER: &str = "reseller-7731";
const SMARTVPS_PASSWORD: &str = "Sm4rtVPS-account-Secret";
const HOOK_SECRET: &str = "whsec-no-secrets-0123456789";

/// A `MakeWriter` appending to a shared buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[test]
fn a_full_run_logs_no_secret_and_tags_every_order_line() {
    // The capture runs in a process of its own: tracing caches each call site's interest
    // process-wide, and tests running in parallel without a subscriber can leave call sites
    // switched off for this test's scoped subscriber, so lines would go missing.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "no_secrets::capture_a_full_run",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("1 passed"),
        "the capture did not run:\n{stdout}\n{stderr}"
    );
}

#[test]
#[ignore = "run in its own process by a_full_run_logs_no_secret_and_tags_every_order_line"]
fn capture_a_full_run() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_max_level(tracing::Level::TRACE)
        .with_writer(capture.clone())
        .finish();
    // A current-thread runtime runs every task of the service on this thread, where the
    // capturing subscriber is the default.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (order_id, secrets) =
        tracing::subscriber::with_default(subscriber, || runtime.block_on(run()));
    let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();

    // The run was logged in depth, so the absence of secrets means something.
    for needle in [
        "Total Time",
        "smartvps call",
        "notice delivered",
        "SmartVPS simulator listening",
    ] {
        assert!(text.contains(needle), "no {needle:?} in the captured log");
    }
    for (what, secret) in &secrets {
        assert!(!secret.is_empty());
        if let Some(line) = text.lines().find(|l| l.contains(secret.as_str())) {
            panic!("{what} found in a log line: {line}");
        }
    }
    let mut checked = 0;
    for line in text.lines() {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let ours = v["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("provisioner"));
        if !ours || !line.contains(&order_id) {
            continue;
        }
        let tagged = v["order_id"] == order_id.as_str()
            || v["span"]["order_id"] == order_id.as_str()
            || v["spans"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["order_id"] == order_id.as_str()));
        assert!(
            tagged,
            "a line about the order without its order_id: {line}"
        );
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} lines about the order");
    // Customer emails appear only at debug level: order ids identify orders.
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let level = v["level"].as_str().unwrap_or_default();
        if !matches!(level, "DEBUG" | "TRACE") {
            assert!(
                !line.contains("ann@example.com"),
                "a customer email logged at {level}: {line}"
            );
        }
    }
}

async fn run() -> (String, Vec<(&'static str, String)>) {
    let dir = tempfile::tempdir().unwrap();
    let clock = fast_clock(1000.0);
    let sim = Simulator::new(clock.clone(), 11);
    let pkg = scenario_package(&sim, 31, "103.82.72");
    Scenario::Moderate.install(&sim, pkg).unwrap();
    let stop = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim_addr = listener.local_addr().unwrap();
    let cfg = HttpConfig::new(SMARTVPS_USER, SMARTVPS_PASSWORD);
    tokio::spawn(simulator::serve(sim.clone(), listener, cfg, stop.clone()));

    let hook = WebhookReceiver::start(HOOK_SECRET, clock.clone()).await;
    let sink = SmtpSink::start();
    let key = Cipher::generate_key();
    let mut settings = Settings::from_sources(None, &|_| None).unwrap();
    settings.database.url = format!("sqlite://{}", dir.path().join("s.db").display());
    settings.server.listen = "127.0.0.1:0".parse().unwrap();
    settings.secret_key = Some(key.clone());
    settings.worker.engine.poll_interval = Duration::from_millis(20);
    settings.storefronts = vec![provisioner::config::Storefront {
        name: "shop".into(),
        secret: SecretString::from(STOREFRONT_SECRET),
    }];
    settings.smartvps = Some(SmartVpsSettings {
        base_url: format!("http://{sim_addr}/"),
        path_prefix: HttpConfig::DEFAULT_PREFIX.into(),
        username: SMARTVPS_USER.into(),
        password: SecretString::from(SMARTVPS_PASSWORD),
    });
    settings.notify.webhooks = vec![WebhookEndpoint {
        name: "shop".into(),
        url: hook.url.parse().unwrap(),
        secret: SecretString::from(HOOK_SECRET),
        trusted: true,
        events: vec![],
    }];
    settings.notify.email = sink.as_ref().map(|s| EmailSettings {
        host: "127.0.0.1".into(),
        port: s.port,
        tls: SmtpTls::None,
        username: None,
        password: None,
        from: "noreply@provisioner.test".parse().unwrap(),
        admin_to: vec!["ops@provisioner.test".parse().unwrap()],
        timeout: Duration::from_secs(10),
    });
    let running = start(&settings, clock, StartOptions::default())
        .await
        .unwrap();
    let api = format!("http://{}", running.addr);
    let http = reqwest::Client::new();
    let body = json!({ "order_ref": "pay-secret-1", "package": 31, "ram_gb": 4, "customer": { "email": "ann@example.com", "name": "Ann" } });
    let (_, created) = post_order(&http, &api, &body).await;
    let id = created["id"].as_str().unwrap().to_string();
    let access_token = created["access_token"].as_str().unwrap().to_string();

    // Until the order is ready and its ready notice reached the webhook and the mailbox.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let ip = loop {
        let v = get_order(&http, &api, &id, &access_token).await;
        let hooked = hook
            .seen()
            .iter()
            .any(|r| r.body["event"] == "order.ready" && r.status == 200);
        let mailed = sink.as_ref().is_none_or(|s| {
            s.messages()
                .iter()
                .any(|m| m.subject == "Your server is ready!")
        });
        if v["state"] == "ready" && hooked && mailed {
            break v["server_ip"].as_str().unwrap().to_string();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the run did not finish: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    running.stop().await;
    stop.cancel();

    let customer_password = sim
        .server(ip.parse().unwrap())
        .unwrap()
        .password
        .expose_secret()
        .to_string();
    // The password really was delivered, so its absence from the log is not an accident.
    let ready = hook
        .seen()
        .into_iter()
        .find(|r| r.body["event"] == "order.ready")
        .unwrap();
    assert_eq!(
        ready.body["credentials"]["password"],
        customer_password.as_str()
    );
    if let Some(sink) = &sink {
        assert!(
            sink.messages()
                .iter()
                .any(|m| m.body.contains(&customer_password))
        );
    }
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{SMARTVPS_USER}:{SMARTVPS_PASSWORD}"));
    let secrets = vec![
        ("the customer's password", customer_password),
        ("the SmartVPS password", SMARTVPS_PASSWORD.to_string()),
        ("the Basic-auth header value", basic),
        ("the webhook signing secret", HOOK_SECRET.to_string()),
        ("the credentials key", key.expose_secret().to_string()),
        ("the customer's access token", access_token),
        ("the storefront's secret", STOREFRONT_SECRET.to_string()),
    ];
    (id, secrets)
}
