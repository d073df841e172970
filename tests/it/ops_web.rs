//! The operator's day over HTTP (issue 15): SmartVPS down on `/healthz`, `/metrics`, catalog
//! sync and the dashboard; the failed queue's bulk actions and search in the admin API; the
//! order page's forms that keep what was typed, state the evidence before a cancel and take
//! their example address from the order's own package.

use std::time::Duration;

use provisioner::config::SmartVpsSettings;
use provisioner::crypto::Cipher;
use provisioner::simulator::{Scenario, Simulator};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::admin_api::Browser;
use crate::helpers::{
    RealService, fast_clock, scenario_package, start_service, start_service_with,
};

/// The package every order here is for.
const PKG: u32 = 41;

pub(crate) fn order_body(order_ref: &str, email: &str, package: u32) -> Value {
    json!({ "order_ref": order_ref, "package": package, "ram_gb": 2, "customer": { "email": email, "name": "Ann" } })
}

/// A service whose SmartVPS is down: nothing listens where it is configured. The database's
/// catalog was synced by a first run while SmartVPS was up, so intake still takes orders (as
/// it would in an outage that began after the last sync).
pub(crate) async fn service_with_smartvps_down(dir: &tempfile::TempDir) -> RealService {
    let db = dir.path().join("outage.db");
    let key = Cipher::generate_key();
    let clock = fast_clock(1000.0);
    let sim = Simulator::new(clock.clone(), 3);
    scenario_package(&sim, PKG, "103.82.72");
    let up = start_service(&db, &sim, clock.clone(), &key).await;
    let (status, v) = up.admin_post("/api/v1/catalog/sync", &json!({})).await;
    assert_eq!(status, 200, "{v}");
    up.running.stop().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    start_service_with(&db, &sim, clock, &key, |s| {
        s.smartvps = Some(SmartVpsSettings {
            base_url: format!("http://{dead}/"),
            path_prefix: "api/".into(),
            username: "reseller".into(),
            password: SecretString::from("reseller-password"),
        });
    })
    .await
}

/// Posts orders and waits until each is failed; returns their ids.
pub(crate) async fn failed_orders(svc: &RealService, orders: &[(&str, &str)]) -> Vec<String> {
    let mut ids = Vec::new();
    for (order_ref, email) in orders {
        let (status, v) = svc.intake(&order_body(order_ref, email, PKG)).await;
        assert_eq!(status, 201, "{v}");
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        svc.until(id, Duration::from_secs(30), |v| v["state"] == "failed")
            .await;
    }
    ids
}

fn refs(list: &Value) -> Vec<String> {
    let mut refs: Vec<String> = list["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_ref"].as_str().unwrap().to_string())
        .collect();
    refs.sort();
    refs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_shows_on_healthz_metrics_catalog_sync_and_the_timeline_in_plain_words() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service_with_smartvps_down(&dir).await;
    let ids = failed_orders(
        &svc,
        &[
            ("WHMCS-1003", "ann@example.com"),
            ("WHMCS-1004", "bob@example.org"),
        ],
    )
    .await;

    // /healthz: the process is fine (200), SmartVPS is not, and it says since when.
    let r = svc
        .http
        .get(format!("{}/healthz", svc.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let health: Value = r.json().await.unwrap();
    let upstream = health["upstream"].as_str().unwrap();
    assert!(upstream.starts_with("unreachable since "), "{health}");
    assert!(
        upstream.contains("SmartVPS could not be reached"),
        "{health}"
    );
    assert!(health["upstream_down_since"].is_string(), "{health}");
    assert_eq!(health["upstream_last_success"]["ipstock"], Value::Null);
    assert_eq!(health["status"], "ok");

    // /metrics: the gauge says down, and is described.
    let text = svc
        .http
        .get(format!("{}/metrics", svc.api))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("\nprovisioner_upstream_up 0\n"), "{text}");
    assert!(text.contains("# HELP provisioner_upstream_up "), "{text}");

    // Catalog sync: 502 in plain words, no transport error chain.
    let (status, v) = svc.admin_post("/api/v1/catalog/sync", &json!({})).await;
    assert_eq!(status, 502, "{v}");
    let error = v["error"].as_str().unwrap();
    assert!(error.contains("SmartVPS could not be reached"), "{error}");
    for raw in ["tcp connect", "os error", "error sending request"] {
        assert!(!error.contains(raw), "{error}");
    }

    // The timeline agrees with the ledger: no purchase was sent, and it says so.
    let order = svc.get(&ids[0]).await;
    assert_eq!(order["purchases"].as_array().unwrap().len(), 0, "{order}");
    let reason = order["failure"]["reason"].as_str().unwrap();
    assert!(reason.contains("no purchase sent"), "{reason}");
    assert!(reason.contains("SmartVPS could not be reached"), "{reason}");
    let lines: Vec<String> = order["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("buyVps attempt 1 not sent")),
        "{lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("prevents race conditions")),
        "no purchase was sent, so no race to prevent: {lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("buyVps attempt 1 failed")),
        "{lines:#?}"
    );

    // The dashboard: the banner, the badge, and the failed queue with the raw error disclosed.
    let dash = Browser::login(&svc).await;
    let (status, html) = dash.get("/admin").await;
    assert_eq!(status, 200);
    assert!(html.contains("id=\"outage\""), "{html}");
    assert!(html.contains("SmartVPS unreachable since"), "{html}");
    assert!(html.contains("2 orders failed since then"), "{html}");
    assert!(html.contains("id=\"failed-badge\">2<"), "{html}");
    let (status, html) = dash.get("/admin/failed?phase=buy").await;
    assert_eq!(status, 200);
    assert!(html.contains("WHMCS-1003") && html.contains("WHMCS-1004"));
    assert!(html.contains("<details class=\"raw\">"), "{html}");
    assert!(html.contains("connection failed"), "the raw detail is kept");
    let (status, html) = dash.get("/admin/failed?phase=credentials").await;
    assert_eq!(status, 200);
    assert!(!html.contains("WHMCS-1003"), "filtered by phase");
    let (status, _) = dash.get("/admin/failed?phase=later").await;
    assert_eq!(status, 422);

    // Mark resolved from a row of the queue: the order leaves it, the badge counts one.
    let csrf = crate::admin_api::csrf_of(&html);
    let r = dash
        .post(
            &format!("/admin/orders/{}/mark-resolved", ids[1]),
            &[("csrf", csrf.as_str()), ("reason", "refunded")],
        )
        .await;
    assert_eq!(r.status(), 303);
    assert_eq!(svc.get(&ids[1]).await["state"], "cancelled");
    let (_, html) = dash.get("/admin/failed").await;
    assert!(html.contains("id=\"failed-badge\">1<"), "{html}");
    assert!(!html.contains("WHMCS-1004"), "{html}");
    svc.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_found_by_reference_email_and_id_and_failed_ones_retried_in_bulk() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service_with_smartvps_down(&dir).await;
    let ids = failed_orders(
        &svc,
        &[
            ("WHMCS-1003", "ann@example.com"),
            ("WHMCS-1004", "Bob@Example.org"),
        ],
    )
    .await;
    let list = |q: &str| {
        let svc = &svc;
        let q = provisioner::web::percent_encode(q);
        async move {
            let (status, text) = svc.admin_get(&format!("/api/v1/orders?q={q}")).await;
            assert_eq!(status, 200, "{text}");
            serde_json::from_str::<Value>(&text).unwrap()
        }
    };
    assert_eq!(refs(&list("whmcs-1003").await), ["WHMCS-1003"]);
    assert_eq!(refs(&list("bob@example.org").await), ["WHMCS-1004"]);
    assert_eq!(refs(&list("WHMCS").await), ["WHMCS-1003", "WHMCS-1004"]);
    let short: String = ids[1][ids[1].len() - 12..].to_string();
    assert_eq!(refs(&list(&short).await), ["WHMCS-1004"], "the short id");
    assert!(refs(&list("nobody").await).is_empty());
    let (status, text) = svc
        .admin_get(&format!("/api/v1/orders?q={}", "x".repeat(201)))
        .await;
    assert_eq!(status, 422, "{text}");
    assert!(text.contains("\"field\":\"q\""), "{text}");

    // Bulk retry: a reason and a filter that parse, or a clear error naming the field.
    for (body, field) in [
        (json!({ "phase": "buy" }), "reason"),
        (json!({ "reason": "x", "phase": "soon" }), "phase"),
        (json!({ "reason": "x", "package": "41" }), "package"),
        (json!({ "reason": "x", "force": true }), "force"),
    ] {
        let (status, v) = svc.admin_post("/api/v1/failed/retry", &body).await;
        assert_eq!((status, v["field"].as_str()), (422, Some(field)), "{v}");
    }
    let (status, v) = svc
        .admin_post(
            "/api/v1/failed/retry",
            &json!({ "reason": "checking SmartVPS again", "phase": "buy", "q": "WHMCS-1003" }),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["done"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["done"][0]["order_ref"], "WHMCS-1003");
    assert_eq!(v["refused"], json!([]));
    let timeline = svc.get(&ids[0]).await["timeline"].to_string();
    assert!(
        timeline.contains("Retry by alice: checking SmartVPS again"),
        "{timeline}"
    );
    // Still down: it fails again. Mark resolved closes the queue with one reason.
    svc.until(&ids[0], Duration::from_secs(30), |v| v["state"] == "failed")
        .await;
    let (status, v) = svc
        .admin_post(
            "/api/v1/failed/mark-resolved",
            &json!({ "reason": "refunded both" }),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["done"].as_array().unwrap().len(), 2, "{v}");
    for id in &ids {
        assert_eq!(svc.get(id).await["state"], "cancelled");
    }
    svc.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_page_keeps_what_was_typed_states_the_evidence_and_suggests_its_own_package() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::new(fast_clock(1000.0), 13);
    // Another package, so that an example address from the wrong package would show.
    scenario_package(&sim, 71, "103.82.72");
    let late = scenario_package(&sim, 72, "45.12.33");
    crate::helpers::buy_outside(&sim, "45.12.33", 2).await;
    Scenario::LostReply.install(&sim, late).unwrap();
    let svc = start_service(
        &dir.path().join("forms.db"),
        &sim,
        sim.clock().clone(),
        &Cipher::generate_key(),
    )
    .await;
    let (status, v) = svc
        .intake(&order_body("late-1", "ann@example.com", 72))
        .await;
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    svc.until(&id, Duration::from_secs(30), |v| {
        v["state"] == "needs_attention"
    })
    .await;
    let dash = Browser::login(&svc).await;
    let page = format!("/admin/orders/{id}");
    let (_, html) = dash.get(&page).await;
    let csrf = crate::admin_api::csrf_of(&html);
    assert!(html.contains("placeholder=\"45.12.33.10\""), "{html}");
    assert!(!html.contains("placeholder=\"103.82.72"), "{html}");
    assert!(html.contains("id=\"cancel-evidence\""), "{html}");
    assert!(html.contains("unknown outcome"), "{html}");

    // No address to change before one was adopted; a bad address is named.
    let address = format!("/api/v1/orders/{id}/address");
    let (status, v) = svc
        .admin_post(&address, &json!({ "reason": "typo", "ip": "45.12.33" }))
        .await;
    assert_eq!((status, v["field"].as_str()), (422, Some("ip")), "{v}");
    let (status, v) = svc
        .admin_post(&address, &json!({ "reason": "typo", "ip": "45.12.33.7" }))
        .await;
    assert_eq!(status, 409, "{v}");

    // A refused resolve: the page comes back with the choice, the address and the reason.
    let r = dash
        .post(
            &format!("{page}/resolve"),
            &[
                ("csrf", csrf.as_str()),
                ("action", "adopt"),
                ("ip", "45.12.33.999"),
                ("reason", "typed once, not twice"),
            ],
        )
        .await;
    assert_eq!(r.status(), 422);
    let html = r.text().await.unwrap();
    assert!(html.contains("value=\"typed once, not twice\""), "{html}");
    assert!(html.contains("value=\"45.12.33.999\""), "{html}");
    assert!(
        html.contains("value=\"adopt\" required checked"),
        "the action stays chosen: {html}"
    );

    // Cancel without the override: refused with the evidence, the reason kept.
    let r = dash
        .post(
            &format!("{page}/cancel"),
            &[("csrf", csrf.as_str()), ("reason", "customer asked")],
        )
        .await;
    assert_eq!(r.status(), 422);
    let html = r.text().await.unwrap();
    assert!(html.contains("a server may have been bought"), "{html}");
    assert!(html.contains("value=\"customer asked\""), "{html}");
    assert_eq!(svc.get(&id).await["state"], "needs_attention");
    // With it: cancelled, and the warning is on the record.
    let r = dash
        .post(
            &format!("{page}/cancel"),
            &[
                ("csrf", csrf.as_str()),
                ("reason", "nothing in the panel"),
                ("override_server_check", "true"),
            ],
        )
        .await;
    assert_eq!(r.status(), 303);
    let order = svc.get(&id).await;
    assert_eq!(order["state"], "cancelled");
    assert!(
        order["timeline"]
            .to_string()
            .contains("cancelled although a server may exist"),
        "{order}"
    );
    svc.running.stop().await;
}
