//! Server actions end to end: the real service (SQLite file, HTTP API, the real SmartVPS
//! client) against the simulator over HTTP, on a clock 100 times as fast.

use std::time::Duration;

use provisioner::crypto::Cipher;
use provisioner::simulator::Simulator;
use serde_json::{Value, json};

use crate::helpers::{
    ADMIN_TOKEN, RealService, fast_clock, scenario_package, start_service, start_service_with,
};

const LIMIT: Duration = Duration::from_secs(60);

fn simulator() -> Simulator {
    Simulator::new(fast_clock(100.0), 13)
}

/// A ready order; returns its id and the customer's token.
async fn ready_order(svc: &RealService, order_ref: &str, pkg: u32, os: &str) -> (String, String) {
    let body = json!({
        "order_ref": order_ref, "package": pkg, "ram_gb": 2, "os": os,
        "customer": { "email": "cy@example.com", "name": "Cy" }
    });
    let (status, created) = svc.intake(&body).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let token = created["access_token"].as_str().unwrap().to_string();
    svc.until(&id, LIMIT, |v| v["state"] == "ready").await;
    (id, token)
}

/// POSTs an action as `token`; returns the status and the body.
async fn act(svc: &RealService, id: &str, token: &str, body: Value) -> (u16, Value) {
    let r = svc
        .http
        .post(format!("{}/api/v1/orders/{id}/actions", svc.api))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// Waits until the order's newest action is no longer pending; returns the order.
async fn settled(svc: &RealService, id: &str, count: usize) -> Value {
    svc.until(id, LIMIT, |v| {
        v["actions"]
            .as_array()
            .is_some_and(|a| a.len() == count && a.iter().all(|x| x["state"] != "pending"))
    })
    .await
}

async fn credentials(svc: &RealService, id: &str, token: &str) -> Value {
    svc.http
        .get(format!("{}/api/v1/orders/{id}/credentials", svc.api))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_action_over_http_against_the_simulator() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator();
    let pkg = scenario_package(&sim, 41, "103.77.41");
    sim.set_install_time(pkg, Duration::from_secs(120)).unwrap();
    let svc = start_service(
        &dir.path().join("a.db"),
        &sim,
        sim.clock().clone(),
        &Cipher::generate_key(),
    )
    .await;
    let (id, token) = ready_order(&svc, "act-1", 41, "ubuntu").await;
    let ip: std::net::Ipv4Addr = svc.get(&id).await["server_ip"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // Bad requests name the problem.
    let (s, v) = act(&svc, &id, &token, json!({ "action": "explode" })).await;
    assert_eq!((s, v["field"].as_str()), (422, Some("action")), "{v}");
    let (s, v) = act(
        &svc,
        &id,
        &token,
        json!({ "action": "change_os", "os": "haiku" }),
    )
    .await;
    assert_eq!((s, v["field"].as_str()), (422, Some("os")), "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("Windows Server 2022"),
        "{v}"
    );
    let (s, _) = act(&svc, &id, "not-the-token", json!({ "action": "stop" })).await;
    assert_eq!(s, 401);
    let (s, v) = act(&svc, &id, ADMIN_TOKEN, json!({ "action": "stop" })).await;
    assert_eq!(
        (s, v["field"].as_str()),
        (422, Some("reason")),
        "an admin says why: {v}"
    );

    // Stop (the customer), then a second request while it runs: 409.
    let (s, v) = act(&svc, &id, &token, json!({ "action": "stop" })).await;
    assert_eq!(s, 202, "{v}");
    let (s, v) = act(&svc, &id, &token, json!({ "action": "start" })).await;
    assert_eq!(s, 409, "one action at a time: {v}");
    let v = settled(&svc, &id, 1).await;
    assert_eq!(v["actions"][0]["state"], "done", "{v:#}");
    assert_eq!(sim.powered_on(ip), Some(false));
    assert_eq!(v["server"]["power"], "Offline", "{v:#}");

    // Start (an admin, on the record).
    let (s, _) = act(
        &svc,
        &id,
        ADMIN_TOKEN,
        json!({ "action": "start", "reason": "customer asked by phone" }),
    )
    .await;
    assert_eq!(s, 202);
    let v = settled(&svc, &id, 2).await;
    assert_eq!(sim.powered_on(ip), Some(true));
    assert!(
        v["timeline"]
            .to_string()
            .contains("Start asked by admin alice: customer asked by phone"),
        "{v:#}"
    );

    // Reboot: stop, then start.
    let (s, _) = act(&svc, &id, &token, json!({ "action": "reboot" })).await;
    assert_eq!(s, 202);
    let v = settled(&svc, &id, 3).await;
    assert_eq!(v["actions"][2]["state"], "done");
    assert!(v["timeline"].to_string().contains("rebooted"));

    // Reinstall: a new password, delivered; the old one is gone from the store.
    let before = credentials(&svc, &id, &token).await;
    let (s, _) = act(&svc, &id, &token, json!({ "action": "reinstall" })).await;
    assert_eq!(s, 202);
    let v = settled(&svc, &id, 4).await;
    assert_eq!(v["actions"][3]["state"], "done", "{v:#}");
    let after = credentials(&svc, &id, &token).await;
    assert_ne!(after["password"], before["password"]);
    assert_eq!(
        after["password"].as_str().unwrap(),
        secrecy::ExposeSecret::expose_secret(&sim.server(ip).unwrap().password)
    );

    // Change OS by its readable name: Windows, so the login is administrator.
    let (s, _) = act(
        &svc,
        &id,
        &token,
        json!({ "action": "change_os", "os": "Windows Server 2019" }),
    )
    .await;
    assert_eq!(s, 202);
    let v = settled(&svc, &id, 5).await;
    assert_eq!(v["actions"][4]["state"], "done", "{v:#}");
    assert_eq!(sim.server(ip).unwrap().os, "2019");
    let win = credentials(&svc, &id, &token).await;
    assert_eq!(win["username"], "administrator");
    assert_ne!(win["password"], after["password"]);
    assert_eq!(
        sim.calls().other,
        6,
        "stop, start, stop, start, format, changeos: each once"
    );

    // The list route says the same.
    let list: Value = svc
        .http
        .get(format!("{}/api/v1/orders/{id}/actions", svc.api))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kinds: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["stop", "start", "reboot", "reinstall", "change_os"]);
    svc.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_windows_order_is_delivered_with_the_windows_login() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator();
    let pkg = scenario_package(&sim, 42, "103.77.42");
    sim.set_install_time(pkg, Duration::from_secs(60)).unwrap();
    let svc = start_service(
        &dir.path().join("w.db"),
        &sim,
        sim.clock().clone(),
        &Cipher::generate_key(),
    )
    .await;
    let (id, token) = ready_order(&svc, "win-http", 42, "2022").await;
    let v = svc.get(&id).await;
    assert_eq!(v["os_name"], "Windows Server 2022");
    assert!(
        v["timeline"]
            .to_string()
            .contains("installing Windows Server 2022 with changeos"),
        "{v:#}"
    );
    let creds = credentials(&svc, &id, &token).await;
    assert_eq!(creds["username"], "administrator");
    let ip: std::net::Ipv4Addr = creds["ip"].as_str().unwrap().parse().unwrap();
    assert_eq!(sim.server(ip).unwrap().os, "2022");
    svc.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_action_settles_it_by_status_without_sending_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let sim = simulator();
    let pkg = scenario_package(&sim, 43, "103.77.43");
    let key = Cipher::generate_key();
    // No grace: a step still running at shutdown is dropped, as a SIGKILL would leave it.
    let quick = |s: &mut provisioner::config::Settings| s.worker.shutdown_grace = Duration::ZERO;
    let first = start_service_with(&db, &sim, sim.clock().clone(), &key, quick).await;
    let (id, token) = ready_order(&first, "restart-act", 43, "ubuntu").await;
    let ip: std::net::Ipv4Addr = first.get(&id).await["server_ip"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // The stop takes 40 s (0.4 s here) to answer; SmartVPS stops the server on arrival.
    let mut defaults = sim.defaults(pkg).unwrap();
    defaults.status_latency = Duration::from_secs(40);
    sim.set_defaults(pkg, defaults).unwrap();
    let (s, _) = act(&first, &id, &token, json!({ "action": "stop" })).await;
    assert_eq!(s, 202);
    first
        .until(&id, LIMIT, |v| {
            v["timeline"].to_string().contains("Calling stop")
        })
        .await;
    first.running.stop().await;
    assert_eq!(sim.calls().other, 1);

    let second = start_service(&db, &sim, sim.clock().clone(), &key).await;
    let v = settled(&second, &id, 1).await;
    assert_eq!(v["actions"][0]["state"], "done", "{v:#}");
    assert_eq!(sim.powered_on(ip), Some(false));
    assert_eq!(sim.calls().other, 1, "the stop was not sent again");
    assert!(v["timeline"].to_string().contains("was cut off"), "{v:#}");
    second.running.stop().await;
}
