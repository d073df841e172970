//! End to end over HTTP: SQLite file, the API, the real SmartVPS client, the simulator over HTTP.
//! Time runs 1000x so the seed's minutes are milliseconds; assertions are about outcomes.

use std::time::Duration;

use provisioner::crypto::Cipher;
use provisioner::simulator::{Scenario, Simulator};
use serde_json::json;

use crate::helpers::{fast_clock, scenario_package, signed_post, start_service};

fn body(order_ref: &str, package: u32) -> serde_json::Value {
    json!({ "order_ref": order_ref, "package": package, "ram_gb": 4, "customer": { "email": "ann@example.com", "name": "Ann" }, "os": "ubuntu" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_to_ready_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let clock = fast_clock(1000.0);
    let sim = Simulator::new(clock.clone(), 3);
    let pkg = scenario_package(&sim, 11, "103.82.72");
    Scenario::Moderate.install(&sim, pkg).unwrap();
    let key = Cipher::generate_key();
    let svc = start_service(&dir.path().join("e2e.db"), &sim, clock, &key).await;

    let (status, created) = svc.intake(&body("pay-e2e-1", 11)).await;
    assert_eq!(status, 201);
    let id = created["id"].as_str().unwrap().to_string();

    // A replayed webhook returns the same order; a different body under the same ref is refused.
    let (status, again) = svc.intake(&body("pay-e2e-1", 11)).await;
    assert_eq!(status, 200);
    assert_eq!(again["id"], created["id"]);
    let (status, _) = svc.intake(&body("pay-e2e-1", 12)).await;
    assert_eq!(status, 409);

    let done = svc
        .until(&id, Duration::from_secs(30), |v| v["state"] == "ready")
        .await;
    assert_eq!(done["attempts"]["buy"], 2);
    assert_eq!(done["attempts"]["status"], 2);
    let ip = done["server_ip"].as_str().unwrap();
    assert!(ip.starts_with("103.82.72."), "{ip}");
    let lines: Vec<&str> = done["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("✅ buyVps succeeded on attempt 2")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("Total Time: ")),
        "{lines:#?}"
    );
    assert_eq!(sim.purchases_for(&format!("{id}/")).len(), 1);

    // No response carries the password, and the database file holds it only encrypted.
    let server = sim.server(ip.parse().unwrap()).unwrap();
    let password = secrecy::ExposeSecret::expose_secret(&server.password).to_string();
    assert!(!password.is_empty());
    let raw = serde_json::to_string(&done).unwrap();
    assert!(!raw.contains(&password));
    svc.running.stop().await;
    let mut bytes = std::fs::read(dir.path().join("e2e.db")).unwrap();
    for suffix in ["-wal", "-shm"] {
        if let Ok(more) = std::fs::read(dir.path().join(format!("e2e.db{suffix}"))) {
            bytes.extend(more);
        }
    }
    assert!(
        !bytes
            .windows(password.len())
            .any(|w| w == password.as_bytes()),
        "password found in plain text in the database"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_validation_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let clock = fast_clock(1000.0);
    let sim = Simulator::new(clock.clone(), 3);
    let svc = start_service(
        &dir.path().join("v.db"),
        &sim,
        clock,
        &Cipher::generate_key(),
    )
    .await;
    let url = format!("{}/api/v1/orders", svc.api);
    let cases = [
        (
            json!({ "order_ref": "x", "package": 1, "ram_gb": 0, "customer": { "email": "a@b.co", "name": "A" } }),
            422,
            "ram_gb",
        ),
        (
            json!({ "order_ref": "x", "package": 1, "ram_gb": 2, "customer": { "email": "nope", "name": "A" } }),
            422,
            "customer.email",
        ),
        (
            json!({ "order_ref": "x", "package": 1, "ram_gb": 2 }),
            422,
            "customer",
        ),
        (
            json!({ "order_ref": "x", "package": "five", "ram_gb": 2, "customer": { "email": "a@b.co", "name": "A" } }),
            422,
            "package",
        ),
        (
            json!({ "order_ref": "x", "package": 1, "ram_gb": 2, "customer": { "email": "a@b.co", "name": "A", "vip": true } }),
            422,
            "customer.vip",
        ),
        (
            json!({ "package": 1, "ram_gb": 2, "customer": { "email": "a@b.co", "name": "A" } }),
            422,
            "order_ref",
        ),
    ];
    for (body, status, field) in cases {
        let r = signed_post(&svc.http, &url, &serde_json::to_vec(&body).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{body}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["field"], field, "{v}");
    }
    let r = signed_post(&svc.http, &url, b"{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("malformed JSON"));
    let r = svc
        .http
        .get(format!("{}/api/v1/orders/not-an-id", svc.api))
        .send()
        .await
        .unwrap();
    // Without an admin token, an unknown order and a wrong token look the same.
    assert_eq!(r.status(), 401);
    let r = svc
        .http
        .get(format!("{}/healthz", svc.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let health: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        health["worker"].as_str(),
        Some(svc.running.engine.worker_id()),
        "healthz names the worker id used in leases: {health}"
    );
    svc.running.stop().await;
}
