//! A restart during a strategic wait loses nothing: the wait is a row in the database, not a
//! sleeping task, and the new process picks the order up when it falls due.

use std::time::Duration;

use provisioner::crypto::Cipher;
use provisioner::simulator::{Scenario, Simulator};
use serde_json::json;

use crate::helpers::{fast_clock, scenario_package, start_service};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_during_a_wait_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("restart.db");
    // 100x: the 2-minute wait after buy attempt 1 lasts 1.2 s of real time, long enough to
    // stop the service inside it.
    let clock = fast_clock(100.0);
    let sim = Simulator::new(clock.clone(), 5);
    let pkg = scenario_package(&sim, 21, "103.82.72");
    Scenario::Moderate.install(&sim, pkg).unwrap();
    let key = Cipher::generate_key();

    let first = start_service(&db, &sim, clock.clone(), &key).await;
    let body = json!({ "order_ref": "pay-restart", "package": 21, "ram_gb": 2, "customer": { "email": "bo@example.com", "name": "Bo" } });
    let (_, created) = first.intake(&body).await;
    let id = created["id"].as_str().unwrap().to_string();
    let waiting = first
        .until(&id, Duration::from_secs(20), |v| {
            v["timeline"].as_array().is_some_and(|t| {
                t.iter().any(|l| {
                    l["message"]
                        .as_str()
                        .unwrap_or("")
                        .contains("Strategic delay")
                })
            })
        })
        .await;
    assert_eq!(waiting["state"], "buying");
    assert_eq!(waiting["attempts"]["buy"], 1);
    first.running.stop().await;

    let second = start_service(&db, &sim, clock, &key).await;
    let done = second
        .until(&id, Duration::from_secs(30), |v| v["state"] == "ready")
        .await;
    assert_eq!(
        done["attempts"]["buy"], 2,
        "the wait resumed where it was; no attempt repeated or skipped"
    );
    assert_eq!(
        sim.purchases_for(&format!("{id}/")).len(),
        1,
        "exactly one server bought"
    );
    let lines: Vec<String> = done["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("Calling buyVps"))
            .count(),
        2,
        "{lines:#?}"
    );
    second.running.stop().await;
}
