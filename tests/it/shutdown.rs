//! SIGTERM on `provisioner serve`: in-flight work finishes within the grace period or its lease
//! is released, then the process exits 0. The order is not lost: its purchase intent stays in
//! the ledger for the next process to reconcile.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use provisioner::crypto::Cipher;
use provisioner::store::Store;
use provisioner::store::sqlite::SqliteStore;

use crate::helpers::{get_order, post_order};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_releases_the_lease_of_an_unfinished_purchase_and_exits_cleanly() {
    crate::helpers::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("term.db");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("provisioner.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"sqlite://{}\"\n[server]\nlisten = \"127.0.0.1:{port}\"\n[worker]\nshutdown_grace = \"1s\"\npoll_interval = \"100ms\"\n",
            db.display()
        ),
    )
    .unwrap();
    let key = Cipher::generate_key();
    let mut child = Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .args(["--config", config.to_str().unwrap(), "serve"])
        .env(
            "PROVISIONER_SECRET_KEY",
            secrecy::ExposeSecret::expose_secret(&key),
        )
        .env("RUST_LOG", "info")
        .env(
            "PROVISIONER_STOREFRONTS",
            format!(
                "{}:{}",
                crate::helpers::STOREFRONT,
                crate::helpers::STOREFRONT_SECRET
            ),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it listens (it logs the address).
    let stderr = child.stderr.take().unwrap();
    // Should an assertion fail before the SIGTERM below, the server must not outlive the test.
    let guard = KillOnDrop(child.id());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut log = Vec::new();
    while !log
        .iter()
        .any(|l: &String| l.contains("provisioner listening"))
    {
        assert!(Instant::now() < deadline, "serve did not start: {log:#?}");
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            log.push(l);
        }
    }
    assert!(
        log.iter().any(|l| l.contains("BUILT-IN SIMULATOR")),
        "the log says plainly that SmartVPS is simulated"
    );

    // Package 5 of the built-in catalog answers buyVps after 30 s: the purchase is in flight.
    let http = reqwest::Client::new();
    let body = serde_json::json!({ "order_ref": "term-1", "package": 5, "ram_gb": 2, "customer": { "email": "t@example.com", "name": "T" } });
    let api = format!("http://127.0.0.1:{port}");
    let (_, created) = post_order(&http, &api, &body).await;
    let id = created["id"].as_str().unwrap().to_string();
    let token = created["access_token"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = get_order(&http, &api, &id, &token).await;
        if v["attempts"]["buy"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the purchase never started: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let stopped_at = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    std::mem::forget(guard);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        stopped_at.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        stopped_at.elapsed()
    );

    // The order is intact and free for the next process: lease released, intent in the ledger
    // without an outcome (read as unknown, and reconciled, by whoever claims it next).
    let store = SqliteStore::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let order_id = provisioner::domain::OrderId::parse(&id).unwrap();
    let order = store.order(&order_id).await.unwrap().unwrap();
    assert_eq!(order.state, provisioner::domain::OrderState::Buying);
    let ledger = store.purchases(&order_id).await.unwrap();
    assert_eq!(ledger.len(), 1);
    // Either the step was cut short (no outcome: read as unknown by the next claimant) or it
    // finished within the grace period with an unknown outcome awaiting reconciliation (the
    // built-in simulator stops with the service and answers the hanging call with a 503).
    // Never a success, never a second purchase.
    assert!(
        matches!(
            ledger[0].outcome,
            None | Some(provisioner::domain::PurchaseOutcome::Unknown { .. })
        ),
        "{:?}",
        ledger[0].outcome
    );
    let due = order.run_at.unwrap().max(order.updated_at);
    let claim = store
        .claim_due("next-process", due, Duration::from_secs(60), 10)
        .await
        .unwrap();
    assert_eq!(
        claim.len(),
        1,
        "no lease outlives the process: the order can be claimed as soon as it is due"
    );
}

/// Kills the child process with SIGKILL when dropped (a test that panics early).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
    }
}
