//! `GET /metrics` after a real run: the families exist with their labels, and Prometheus's own
//! `promtool check metrics` accepts the text.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use provisioner::crypto::Cipher;
use provisioner::simulator::{Scenario, Simulator};
use serde_json::json;

use crate::helpers::{fast_clock, scenario_package, start_service};

/// `promtool`, or `None` (with a loud note) when it is missing outside CI.
pub(crate) fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some("promtool");
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "promtool is required in CI (.ci/run installs Debian's prometheus package)"
    );
    eprintln!("SKIPPED promtool check: install it with `apt-get install prometheus`");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_run_pass_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let clock = fast_clock(1000.0);
    let sim = Simulator::new(clock.clone(), 5);
    let best = scenario_package(&sim, 21, "103.82.72");
    let late = scenario_package(&sim, 22, "45.12.34");
    Scenario::Best.install(&sim, best).unwrap();
    // Another unowned server of ours in the package, so the scan lists two and an admin decides.
    crate::helpers::buy_outside(&sim, "45.12.34", 4).await;
    Scenario::LostReply.install(&sim, late).unwrap();
    let svc = start_service(
        &dir.path().join("m.db"),
        &sim,
        clock,
        &Cipher::generate_key(),
    )
    .await;
    let mut ids = Vec::new();
    for (order_ref, package) in [("pay-m-1", 21), ("pay-m-2", 22)] {
        let body = json!({ "order_ref": order_ref, "package": package, "ram_gb": 4, "customer": { "email": "ann@example.com", "name": "Ann" } });
        let (status, created) = svc.intake(&body).await;
        assert_eq!(status, 201);
        ids.push(created["id"].as_str().unwrap().to_string());
    }
    svc.until(&ids[0], Duration::from_secs(30), |v| v["state"] == "ready")
        .await;
    svc.until(&ids[1], Duration::from_secs(30), |v| {
        v["state"] == "needs_attention"
    })
    .await;

    let r = svc
        .http
        .get(format!("{}/metrics", svc.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = r.text().await.unwrap();
    svc.running.stop().await;

    for needle in [
        "# HELP provisioner_upstream_calls_total ",
        "provisioner_upstream_calls_total{operation=\"buyvps\",outcome=\"succeeded\"}",
        "provisioner_upstream_calls_total{operation=\"status\",outcome=\"succeeded\"}",
        "provisioner_upstream_calls_total{operation=\"buyvps\",outcome=\"unknown\"}",
        "provisioner_upstream_call_duration_seconds_bucket{operation=\"buyvps\",le=\"0.05\"}",
        "provisioner_attempts_until_success_bucket{phase=\"buy\",le=\"1\"}",
        "provisioner_time_to_ready_seconds_bucket{le=\"60\"}",
        "provisioner_purchases_total{outcome=\"succeeded\"}",
        "provisioner_unknown_outcomes_total",
        "provisioner_reconciliations_total{result=\"escalated\"}",
        "provisioner_orders{state=\"ready\"}",
        "provisioner_orders{state=\"needs_attention\"}",
        "provisioner_outbox_backlog",
        "# HELP provisioner_oldest_overdue_seconds ",
        "provisioner_oldest_overdue_seconds ",
        "provisioner_package_free{",
        "provisioner_package_low_stock_threshold 5",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    // The orders gauge is this service's store: one ready, one needing attention.
    let value = |line_start: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(value("provisioner_orders{state=\"ready\"}"), 1.0);
    assert_eq!(value("provisioner_orders{state=\"needs_attention\"}"), 1.0);

    let Some(promtool) = promtool() else { return };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- input ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
