//! The admin API, the customer endpoints and the dashboard over real HTTP (SQLite file, the real
//! SmartVPS client, the simulator over HTTP, time 1000x): every endpoint with its 401, 404, 409
//! and 422 cases, and no password anywhere but the credentials endpoint.

use std::time::Duration;

use provisioner::crypto::Cipher;
use provisioner::domain::PackageId;
use provisioner::simulator::{BuyEffect, BuyStep, Scenario, Simulator};
use provisioner::web::percent_encode;
use reqwest::StatusCode;
use reqwest::header::{LOCATION, SET_COOKIE, WWW_AUTHENTICATE};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, RealService, fast_clock, scenario_package, start_service};

fn body(order_ref: &str, package: u32) -> Value {
    json!({ "order_ref": order_ref, "package": package, "ram_gb": 2, "customer": { "email": "cy@example.com", "name": "Cy" }, "os": "ubuntu" })
}

/// A service on a fresh database with the given simulator.
async fn service(dir: &tempfile::TempDir, sim: &Simulator) -> RealService {
    start_service(
        &dir.path().join("admin.db"),
        sim,
        sim.clock().clone(),
        &Cipher::generate_key(),
    )
    .await
}

fn simulator() -> Simulator {
    Simulator::new(fast_clock(1000.0), 11)
}

/// Three definite "no"s: the order fails in the buy phase within a fraction of a second.
fn fail_three_times(sim: &Simulator, pkg: PackageId) {
    let no = BuyStep::new(Duration::from_secs(1), BuyEffect::ErrorReply);
    sim.script_buy(pkg, [no, no, no]).unwrap();
}

async fn created(svc: &RealService, order_ref: &str, pkg: u32) -> (String, String) {
    let (status, v) = svc.intake(&body(order_ref, pkg)).await;
    assert_eq!(status, 201, "{v}");
    (
        v["id"].as_str().unwrap().to_string(),
        v["access_token"].as_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_refuse_requests_without_a_valid_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator();
    scenario_package(&sim, 31, "103.82.72");
    let svc = service(&dir, &sim).await;
    let (id, customer_token) = created(&svc, "auth-1", 31).await;
    let api = &svc.api;
    let requests: Vec<(reqwest::Method, String)> = vec![
        (reqwest::Method::GET, format!("{api}/api/v1/orders")),
        (reqwest::Method::GET, format!("{api}/api/v1/orders/{id}")),
        (
            reqwest::Method::GET,
            format!("{api}/api/v1/orders/{id}/credentials"),
        ),
        (
            reqwest::Method::POST,
            format!("{api}/api/v1/orders/{id}/retry"),
        ),
        (
            reqwest::Method::POST,
            format!("{api}/api/v1/orders/{id}/resolve"),
        ),
        (
            reqwest::Method::POST,
            format!("{api}/api/v1/orders/{id}/cancel"),
        ),
        (reqwest::Method::GET, format!("{api}/api/v1/catalog")),
        (reqwest::Method::POST, format!("{api}/api/v1/catalog/sync")),
    ];
    for (method, url) in &requests {
        for token in [None, Some("wrong-token-0123456789"), Some("")] {
            let mut r = svc.http.request(method.clone(), url);
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            let r = r.json(&json!({ "reason": "x" })).send().await.unwrap();
            assert_eq!(r.status(), 401, "{method} {url} with {token:?}");
            assert_eq!(r.headers()[WWW_AUTHENTICATE], "Bearer");
            let v: Value = r.json().await.unwrap();
            assert!(v["error"].as_str().unwrap().contains("Bearer"), "{v}");
        }
    }
    // The customer's token opens its own order, not the admin API.
    for (method, url) in &requests[3..] {
        let r = svc
            .http
            .request(method.clone(), url)
            .bearer_auth(&customer_token)
            .json(&json!({ "reason": "x" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{method} {url} with the customer token");
    }
    let r = svc
        .http
        .get(format!("{api}/api/v1/orders"))
        .bearer_auth(&customer_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The admin token works, the public routes need none.
    assert_eq!(svc.admin_get("/api/v1/orders").await.0, 200);
    for path in ["/healthz", "/api/v1/openapi.json"] {
        let r = svc.http.get(format!("{api}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    svc.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_token_opens_its_own_order_and_only_credentials_carry_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator();
    let pkg = scenario_package(&sim, 41, "103.82.72");
    Scenario::Best.install(&sim, pkg).unwrap();
    let slow = scenario_package(&sim, 42, "45.12.33");
    // Never ready: three definite "no"s, then failed.
    fail_three_times(&sim, slow);
    let svc = service(&dir, &sim).await;
    let api = svc.api.clone();

    let (status, first) = svc.intake(&body("cred-1", 41)).await;
    assert_eq!(status, 201);
    let id = first["id"].as_str().unwrap().to_string();
    let token = first["access_token"].as_str().unwrap().to_string();
    assert_eq!(token.len(), 64);
    let (waiting_id, waiting_token) = created(&svc, "cred-2", 42).await;

    let get = |url: String, token: Option<String>| {
        let http = svc.http.clone();
        async move {
            let mut r = http.get(url);
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            let r = r.send().await.unwrap();
            let status = r.status();
            let cache = r
                .headers()
                .get("cache-control")
                .map(|v| v.to_str().unwrap().to_string());
            (status, cache, r.text().await.unwrap())
        }
    };

    // The customer sees its order without the timeline or the ledger, and not another order.
    let (s, _, text) = get(format!("{api}/api/v1/orders/{id}"), Some(token.clone())).await;
    assert_eq!(s, 200);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["id"], id.as_str());
    assert!(
        v.get("timeline").is_none() && v.get("purchases").is_none(),
        "{v}"
    );
    // A failed order: the customer sees the state, not the admin-facing failure text.
    svc.until(&waiting_id, Duration::from_secs(30), |v| {
        v["state"] == "failed"
    })
    .await;
    let (s, _, text) = get(
        format!("{api}/api/v1/orders/{waiting_id}"),
        Some(waiting_token.clone()),
    )
    .await;
    assert_eq!(s, 200);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["state"], "failed");
    assert!(v["failure"].is_null(), "{v}");
    let (s, _, _) = get(
        format!("{api}/api/v1/orders/{waiting_id}"),
        Some(token.clone()),
    )
    .await;
    assert_eq!(s, 401);
    let (s, _, _) = get(
        format!("{api}/api/v1/orders/{waiting_id}/credentials"),
        Some(token.clone()),
    )
    .await;
    assert_eq!(s, 401);
    // Not ready yet: 409. Unknown order: 404.
    let (s, _, text) = get(
        format!("{api}/api/v1/orders/{waiting_id}/credentials"),
        Some(waiting_token.clone()),
    )
    .await;
    assert_eq!(s, 409, "{text}");
    assert!(text.contains("no credentials yet"), "{text}");
    let missing = "0196a0e0-0000-7000-8000-000000000000";
    for path in [
        format!("/api/v1/orders/{missing}"),
        format!("/api/v1/orders/{missing}/credentials"),
        "/api/v1/orders/not-an-id/credentials".to_string(),
    ] {
        let (s, _, _) = get(format!("{api}{path}"), Some(ADMIN_TOKEN.to_string())).await;
        assert_eq!(s, 404, "{path}");
    }

    let done = svc
        .until(&id, Duration::from_secs(30), |v| v["state"] == "ready")
        .await;
    let ip = done["server_ip"].as_str().unwrap().to_string();
    let password = sim
        .server(ip.parse().unwrap())
        .unwrap()
        .password
        .expose_secret()
        .to_string();
    assert!(password.len() >= 8);

    // The credentials: for the customer and for an admin, never cached; nobody else.
    for t in [token.clone(), ADMIN_TOKEN.to_string()] {
        let (s, cache, text) = get(format!("{api}/api/v1/orders/{id}/credentials"), Some(t)).await;
        assert_eq!(s, 200, "{text}");
        assert_eq!(cache.as_deref(), Some("no-store"));
        let c: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(c["password"], password.as_str());
        assert_eq!(c["ip"], ip.as_str());
        assert_eq!(c["username"], "root");
    }
    for t in [None, Some(waiting_token.clone())] {
        let (s, _, text) = get(format!("{api}/api/v1/orders/{id}/credentials"), t).await;
        assert_eq!(s, 401);
        assert!(!text.contains(&password));
    }

    // Every other response: intake (and its replay), list, detail (admin and customer),
    // catalog, OpenAPI, health, the dashboard's pages. None carries the password.
    let mut bodies = vec![first.to_string()];
    let (s, replay) = svc.intake(&body("cred-1", 41)).await;
    assert_eq!(s, 200);
    assert_eq!(replay["id"], id.as_str());
    // A replay hands out the same token, which keeps working: a replayed body must never
    // revoke the token the customer holds.
    let again = replay["access_token"].as_str().unwrap().to_string();
    assert_eq!(again, token);
    assert_eq!(
        get(format!("{api}/api/v1/orders/{id}"), Some(token.clone()))
            .await
            .0,
        200
    );
    bodies.push(replay.to_string());
    for path in [
        "/api/v1/orders".to_string(),
        format!("/api/v1/orders/{id}"),
        "/api/v1/catalog".to_string(),
        "/api/v1/openapi.json".to_string(),
        "/healthz".to_string(),
    ] {
        let (s, text) = svc.admin_get(&path).await;
        assert_eq!(s, 200, "{path}");
        bodies.push(text);
    }
    bodies.push(
        get(format!("{api}/api/v1/orders/{id}"), Some(token.clone()))
            .await
            .2,
    );
    let browser = Browser::login(&svc).await;
    bodies.push(browser.get("/admin").await.1);
    bodies.push(browser.get(&format!("/admin/orders/{id}")).await.1);
    for (i, b) in bodies.iter().enumerate() {
        assert!(
            !b.contains(&password),
            "response {i} carries the password: {b}"
        );
    }
    assert!(
        bodies.iter().any(|b| b.contains(&ip)),
        "the address is shown"
    );

    svc.running.stop().await;
    let mut bytes = std::fs::read(dir.path().join("admin.db")).unwrap();
    for suffix in ["-wal", "-shm"] {
        if let Ok(more) = std::fs::read(dir.path().join(format!("admin.db{suffix}"))) {
            bytes.extend(more);
        }
    }
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(
        !contains(password.as_bytes()),
        "password in plain text in the database"
    );
    assert!(
        !contains(token.as_bytes()),
        "access token in plain text in the database"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_checks_the_catalog_and_the_catalog_is_listed_and_synced() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator();
    scenario_package(&sim, 51, "103.82.72");
    let low = scenario_package(&sim, 52, "45.12.33");
    sim.set_free(low, 3).unwrap();
    let off = scenario_package(&sim, 53, "45.12.34");
    sim.set_active(off, false).unwrap();
    let svc = service(&dir, &sim).await;

    let (s, v) = svc.intake(&body("cat-1", 999)).await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["field"], "package");
    let msg = v["error"].as_str().unwrap();
    assert!(
        msg.contains("unknown package 999") && msg.contains("51"),
        "{msg}"
    );
    let (s, v) = svc.intake(&body("cat-2", 53)).await;
    assert_eq!(s, 422);
    assert_eq!(v["field"], "package");
    assert!(v["error"].as_str().unwrap().contains("not active"), "{v}");

    let (s, text) = svc.admin_get("/api/v1/catalog").await;
    assert_eq!(s, 200);
    let c: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(c["low_stock_threshold"], 5);
    let row = |c: &Value, id: u64| {
        c["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(row(&c, 52)["low_stock"], true);
    assert_eq!(row(&c, 51)["low_stock"], false);
    assert_eq!(row(&c, 53)["status"], "inactive");

    // An order accepted while its package is sold is still answered after the package stops
    // being sold: a replayed webhook gets its order back, a new one is refused.
    let (s, _) = svc.intake(&body("cat-3", 51)).await;
    assert_eq!(s, 201);
    sim.set_active(PackageId(51), false).unwrap();
    sim.set_active(off, true).unwrap();
    let (s, v) = svc.admin_post("/api/v1/catalog/sync", &json!({})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(row(&v, 51)["status"], "inactive");
    assert_eq!(svc.intake(&body("cat-3", 51)).await.0, 200);
    assert_eq!(svc.intake(&body("cat-4", 51)).await.0, 422);
    assert_eq!(svc.intake(&body("cat-5", 53)).await.0, 201);
    svc.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_list_filters_and_pages() {
    let dir = tempfile::tempdir().unwrap();
    // Real time: the purchases hang for the whole test, so the orders stay where they are
    // (one buying with its purchase in flight, the other waiting for the package's flight).
    let sim = Simulator::new(fast_clock(1.0), 11);
    for (id, name) in [(61, "103.82.72"), (62, "45.12.33")] {
        let pkg = scenario_package(&sim, id, name);
        sim.script_buy(pkg, [BuyStep::hang(Duration::from_secs(100_000))])
            .unwrap();
    }
    let svc = service(&dir, &sim).await;
    let mut ids = Vec::new();
    for (r, p) in [("l-1", 61), ("l-2", 61), ("l-3", 62)] {
        ids.push(created(&svc, r, p).await.0);
    }
    for id in &ids {
        svc.until(id, Duration::from_secs(20), |v| v["state"] == "buying")
            .await;
    }
    let list = |q: &'static str| {
        let svc = &svc;
        async move {
            let (s, text) = svc.admin_get(&format!("/api/v1/orders{q}")).await;
            (s, serde_json::from_str::<Value>(&text).unwrap())
        }
    };
    let refs = |v: &Value| -> Vec<String> {
        v["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["order_ref"].as_str().unwrap().to_string())
            .collect()
    };
    let (s, all) = list("").await;
    assert_eq!(s, 200);
    assert_eq!(refs(&all), ["l-3", "l-2", "l-1"], "newest first");
    let counted: u64 = all["counts"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(counted, 3);
    assert!(all["orders"][0].get("timeline").is_none());
    assert_eq!(refs(&list("?package=61").await.1), ["l-2", "l-1"]);
    let (_, page1) = list("?limit=2").await;
    assert_eq!(refs(&page1), ["l-3", "l-2"]);
    assert_eq!(page1["next_offset"], 2);
    let (_, page2) = list("?limit=2&offset=2").await;
    assert_eq!(refs(&page2), ["l-1"]);
    assert!(page2["next_offset"].is_null());
    assert!(refs(&list("?state=failed").await.1).is_empty());
    assert_eq!(
        list("?state=buying&package=62").await.1["orders"][0]["id"],
        ids[2].as_str()
    );
    assert!(refs(&list("?from=2999-01-01T00:00:00Z").await.1).is_empty());
    assert_eq!(
        refs(&list("?from=2000-01-01&to=99999999999999").await.1).len(),
        3
    );
    assert!(refs(&list("?to=0").await.1).is_empty());
    for (q, field) in [
        ("?state=done", "state"),
        ("?package=x", "package"),
        ("?from=yesterday", "from"),
        ("?limit=0", "limit"),
        ("?sort=asc", "sort"),
    ] {
        let (s, v) = list(q).await;
        assert_eq!(s, 422, "{q}");
        assert_eq!(v["field"], field, "{q}");
    }

    // Cancel over HTTP: refused while the purchase is in flight; the order waiting for the
    // package's flight (nothing sent) is cancelled.
    let first_two = [ids[0].clone(), ids[1].clone()];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (sending, waiting) = loop {
        let a = svc.get(&first_two[0]).await;
        let b = svc.get(&first_two[1]).await;
        let sent = |v: &Value| v["purchases"].as_array().is_some_and(|p| !p.is_empty());
        let waited = |v: &Value| v["timeline"].as_array().is_some_and(|t| t.len() >= 3);
        if sent(&a) && waited(&b) {
            break (a, b);
        }
        if sent(&b) && waited(&a) {
            break (b, a);
        }
        assert!(tokio::time::Instant::now() < deadline, "{a:#}\n{b:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let sending = sending["id"].as_str().unwrap();
    let waiting = waiting["id"].as_str().unwrap();
    let (s, v) = svc
        .admin_post(
            &format!("/api/v1/orders/{sending}/cancel"),
            &json!({ "reason": "customer asked" }),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("in flight"), "{v}");
    let (s, v) = svc
        .admin_post(
            &format!("/api/v1/orders/{waiting}/cancel"),
            &json!({ "reason": "duplicate payment" }),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "cancelled");
    assert!(
        svc.get(waiting).await["timeline"]
            .to_string()
            .contains("Cancelled by alice: duplicate payment")
    );
    // The storefront and the customer hear of it: an order.cancelled notice goes out.
    svc.until(waiting, Duration::from_secs(10), |v| {
        v["notifications"]
            .as_array()
            .is_some_and(|n| n.iter().any(|d| d["event"] == "order.cancelled"))
    })
    .await;
    // Not stopped gracefully: that would wait out the hanging purchase. The runtime's end drops
    // the service's tasks.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_resolve_and_cancel_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator();
    let failing = scenario_package(&sim, 71, "103.82.72");
    fail_three_times(&sim, failing);
    let late = scenario_package(&sim, 72, "45.12.33");
    // Another unowned server of ours in the package, so the scan lists two and an admin decides.
    crate::helpers::buy_outside(&sim, "45.12.33", 2).await;
    Scenario::LostReply.install(&sim, late).unwrap();
    let svc = service(&dir, &sim).await;
    let (failed_id, _) = created(&svc, "act-failed", 71).await;
    let (late_id, _) = created(&svc, "act-late", 72).await;
    let long = Duration::from_secs(30);
    svc.until(&failed_id, long, |v| v["state"] == "failed")
        .await;
    svc.until(&late_id, long, |v| v["state"] == "needs_attention")
        .await;

    let post = |id: &str, action: &str, body: Value| {
        let path = format!("/api/v1/orders/{id}/{action}");
        let svc = &svc;
        async move { svc.admin_post(&path, &body).await }
    };
    let expect = |(s, v): (u16, Value), status: u16, field: Option<&str>| {
        assert_eq!(s, status, "{v}");
        if let Some(f) = field {
            assert_eq!(v["field"], f, "{v}");
        }
        v
    };

    // 404 for an order that does not exist, whatever the action.
    let missing = "0196a0e0-0000-7000-8000-000000000000";
    for (action, body) in [
        ("retry", json!({ "reason": "x" })),
        ("resolve", json!({ "reason": "x", "action": "fail" })),
        ("cancel", json!({ "reason": "x" })),
    ] {
        expect(post(missing, action, body.clone()).await, 404, None);
        expect(post("nope", action, body).await, 404, None);
    }
    // 400 for malformed JSON, 422 for a missing reason or an unknown field.
    let r = svc
        .http
        .post(format!("{}/api/v1/orders/{failed_id}/retry", svc.api))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    expect(
        post(&failed_id, "retry", json!({})).await,
        422,
        Some("reason"),
    );
    expect(
        post(&failed_id, "retry", json!({ "reason": "  " })).await,
        422,
        Some("reason"),
    );
    expect(
        post(&failed_id, "retry", json!({ "reason": "x", "force": true })).await,
        422,
        Some("force"),
    );

    // Retry: only a failed order; it moves on (the scripted refusals are used up).
    expect(
        post(&late_id, "retry", json!({ "reason": "again" })).await,
        409,
        None,
    );
    let v = expect(
        post(
            &failed_id,
            "retry",
            json!({ "reason": "SmartVPS had an outage" }),
        )
        .await,
        200,
        None,
    );
    assert_eq!(v["state"], "buying");
    let done = svc.until(&failed_id, long, |v| v["state"] == "ready").await;
    let lines = done["timeline"].to_string();
    assert!(
        lines.contains("Retry by alice: SmartVPS had an outage"),
        "{lines}"
    );

    // Resolve: only needs_attention; the action, address and reason are checked.
    expect(
        post(
            &failed_id,
            "resolve",
            json!({ "action": "fail", "reason": "x" }),
        )
        .await,
        409,
        None,
    );
    expect(
        post(
            &late_id,
            "resolve",
            json!({ "action": "explode", "reason": "x" }),
        )
        .await,
        422,
        Some("action"),
    );
    expect(
        post(
            &late_id,
            "resolve",
            json!({ "action": "adopt", "reason": "x" }),
        )
        .await,
        422,
        Some("ip"),
    );
    expect(
        post(
            &late_id,
            "resolve",
            json!({ "action": "adopt", "ip": "300.1.1.1", "reason": "x" }),
        )
        .await,
        422,
        Some("ip"),
    );
    expect(
        post(
            &late_id,
            "resolve",
            json!({ "action": "adopt", "ip": "9.9.9.9", "reason": "x" }),
        )
        .await,
        422,
        Some("ip"),
    );
    expect(
        post(
            &late_id,
            "resolve",
            json!({ "action": "adopt", "ip": "45.12.33.1" }),
        )
        .await,
        422,
        Some("reason"),
    );
    let owned_by_other = done["server_ip"].as_str().unwrap();
    expect(
        post(&late_id, "resolve", json!({ "action": "adopt", "ip": owned_by_other, "reason": "x", "override_package_check": true })).await,
        409,
        None,
    );
    let bought = sim.purchases_for(&format!("{late_id}/"));
    assert_eq!(bought.len(), 1);
    let ip = bought[0].ip.to_string();
    let v = expect(
        post(
            &late_id,
            "resolve",
            json!({ "action": "adopt", "ip": ip, "reason": "in the panel, bought late" }),
        )
        .await,
        200,
        None,
    );
    assert_eq!(v["state"], "awaiting_credentials");
    let ready = svc.until(&late_id, long, |v| v["state"] == "ready").await;
    assert_eq!(ready["server_ip"], ip.as_str());
    assert_eq!(ready["purchases"][0]["resolution"]["kind"], "adopted");
    assert_eq!(
        sim.purchases_for(&format!("{late_id}/")).len(),
        1,
        "nothing more bought"
    );

    // Cancel: refused for a ready order; a reason is required.
    expect(
        post(&late_id, "cancel", json!({ "reason": "x" })).await,
        409,
        None,
    );
    expect(
        post(&late_id, "cancel", json!({})).await,
        422,
        Some("reason"),
    );
    svc.running.stop().await;
}

/// A cookie-keeping client for the dashboard, driven without a browser.
pub(crate) struct Browser<'a> {
    svc: &'a RealService,
    http: reqwest::Client,
    cookie: String,
}

/// An `application/x-www-form-urlencoded` body, as a browser sends a form.
pub fn form_body(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

pub(crate) trait FormExt {
    fn form_of(self, pairs: &[(&str, &str)]) -> Self;
}

impl FormExt for reqwest::RequestBuilder {
    fn form_of(self, pairs: &[(&str, &str)]) -> Self {
        self.header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(pairs))
    }
}

pub(crate) fn csrf_of(html: &str) -> String {
    html.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a csrf field")
        .to_string()
}

fn cookie_of(r: &reqwest::Response, name: &str) -> Option<(String, String)> {
    r.headers().get_all(SET_COOKIE).iter().find_map(|v| {
        let v = v.to_str().ok()?;
        let (pair, _) = v.split_once(';')?;
        let (k, val) = pair.split_once('=')?;
        (k == name).then(|| (val.to_string(), v.to_string()))
    })
}

impl<'a> Browser<'a> {
    pub(crate) fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }

    pub(crate) async fn login(svc: &'a RealService) -> Self {
        let http = Self::client();
        let form = http
            .get(format!("{}/admin/login", svc.api))
            .send()
            .await
            .unwrap();
        let (csrf_cookie, _) = cookie_of(&form, "provisioner_login_csrf").unwrap();
        let csrf = csrf_of(&form.text().await.unwrap());
        let r = http
            .post(format!("{}/admin/login", svc.api))
            .header("cookie", format!("provisioner_login_csrf={csrf_cookie}"))
            .form_of(&[("csrf", csrf.as_str()), ("token", ADMIN_TOKEN)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        let (session, raw) = cookie_of(&r, "provisioner_session").unwrap();
        assert!(
            raw.contains("HttpOnly") && raw.contains("SameSite=Strict"),
            "{raw}"
        );
        Self {
            svc,
            http,
            cookie: format!("provisioner_session={session}"),
        }
    }

    pub(crate) async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.svc.api))
            .header("cookie", &self.cookie)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    pub(crate) async fn post(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.svc.api))
            .header("cookie", &self.cookie)
            .form_of(form)
            .send()
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_needs_a_session_and_a_csrf_token_on_every_form() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator();
    let failing = scenario_package(&sim, 81, "103.82.72");
    fail_three_times(&sim, failing);
    let low = scenario_package(&sim, 82, "45.12.33");
    sim.set_free(low, 2).unwrap();
    let svc = service(&dir, &sim).await;
    let (id, _) = created(&svc, "dash-1", 81).await;
    svc.until(&id, Duration::from_secs(30), |v| v["state"] == "failed")
        .await;
    let http = Browser::client();

    // No session: to the login page. A forged or stale login form: 403. A wrong token: 401.
    for path in ["/admin", &format!("/admin/orders/{id}")] {
        let r = http.get(format!("{}{path}", svc.api)).send().await.unwrap();
        assert_eq!(r.status(), 303, "{path}");
        assert_eq!(r.headers()[LOCATION], "/admin/login");
    }
    let r = http
        .post(format!("{}/admin/orders/{id}/retry", svc.api))
        .form_of(&[("reason", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "no session, no action");
    let form = http
        .get(format!("{}/admin/login", svc.api))
        .send()
        .await
        .unwrap();
    assert!(
        form.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    let (csrf_cookie, _) = cookie_of(&form, "provisioner_login_csrf").unwrap();
    let csrf = csrf_of(&form.text().await.unwrap());
    let attempt = |csrf: String, token: &'static str| {
        let (http, api, cookie) = (http.clone(), svc.api.clone(), csrf_cookie.clone());
        async move {
            http.post(format!("{api}/admin/login"))
                .header("cookie", format!("provisioner_login_csrf={cookie}"))
                .form_of(&[("csrf", csrf.as_str()), ("token", token)])
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(attempt("forged".into(), ADMIN_TOKEN).await, 403);
    assert_eq!(attempt(csrf.clone(), "not-the-token-0123456").await, 401);

    let b = Browser::login(&svc).await;
    let (s, html) = b.get("/admin").await;
    assert_eq!(s, 200);
    assert!(
        html.contains("dash-1") && html.contains("badge failed"),
        "{html}"
    );
    assert!(
        html.contains("id=\"low-stock\"") && html.contains("package 82"),
        "{html}"
    );
    assert!(
        html.contains("class=\"failed alarm"),
        "failed stands out: {html}"
    );
    let (s, html) = b.get(&format!("/admin/orders/{id}")).await;
    assert_eq!(s, 200);
    assert!(html.contains("id=\"retry-form\"") && html.contains("<svg class=\"chart\""));
    assert!(
        html.matches("class=\"rejected\"").count() == 3,
        "three rejected attempts drawn: {html}"
    );
    let page_csrf = csrf_of(&html);

    // An action without the session's CSRF token changes nothing.
    for token in ["", "forged"] {
        let r = b
            .post(
                &format!("/admin/orders/{id}/retry"),
                &[("csrf", token), ("reason", "x")],
            )
            .await;
        assert_eq!(r.status(), 403);
    }
    assert_eq!(svc.get(&id).await["state"], "failed");
    // Without a reason: the page again, with the refusal.
    let r = b
        .post(
            &format!("/admin/orders/{id}/retry"),
            &[("csrf", &page_csrf), ("reason", "")],
        )
        .await;
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("reason"));
    let r = b
        .post(
            &format!("/admin/orders/{id}/retry"),
            &[("csrf", &page_csrf), ("reason", "upstream is back")],
        )
        .await;
    assert_eq!(r.status(), 303);
    assert_eq!(
        r.headers()[LOCATION],
        format!("/admin/orders/{id}?done=retry")
    );
    let v = svc.get(&id).await;
    assert_ne!(v["state"], "failed");
    assert!(
        v["timeline"]
            .to_string()
            .contains("Retry by alice: upstream is back")
    );
    // Logging out ends the session.
    let r = b.post("/admin/logout", &[("csrf", &page_csrf)]).await;
    assert_eq!(r.status(), 303);
    assert_eq!(b.get("/admin").await.0, 303);
    svc.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_candidate_is_adopted_from_the_dashboard_in_one_click() {
    let dir = tempfile::tempdir().unwrap();
    // 100 times as fast, not 1000: the scan of 256 addresses must fit in the lease's budget
    // (235 s of the clock), which at 1000x is a quarter of a real second, too little for a
    // loaded CI machine; an unread address is not listed, and the button this test needs with it.
    let sim = Simulator::new(fast_clock(100.0), 11);
    let pkg = scenario_package(&sim, 73, "45.12.36");
    // A server bought in the panel beside the order's lost one: the scan lists both.
    let outside = crate::helpers::buy_outside(&sim, "45.12.36", 2).await;
    Scenario::LostReply.install(&sim, pkg).unwrap();
    let svc = service(&dir, &sim).await;
    let (id, _) = created(&svc, "cand-1", 73).await;
    let v = svc
        .until(&id, Duration::from_secs(60), |v| {
            v["state"] == "needs_attention"
        })
        .await;
    let said = v.to_string();
    assert!(
        said.contains("scanned 256 of 256 address(es)"),
        "the scan read every address: {said}"
    );
    let ours = sim.purchases_for(&format!("{id}/"))[0].ip.to_string();
    let browser = Browser::login(&svc).await;
    let (status, page) = browser.get(&format!("/admin/orders/{id}")).await;
    assert_eq!(status, 200);
    for ip in [ours.as_str(), &outside.to_string()] {
        assert!(
            page.contains(&format!("id=\"adopt-{ip}\"")),
            "a button for {ip}"
        );
    }
    // The button's form, as the browser submits it: one click.
    let csrf = csrf_of(&page);
    let reason = format!("adopted {ours}, a server the discovery scan found for this order");
    let r = browser
        .post(
            &format!("/admin/orders/{id}/resolve"),
            &[
                ("csrf", csrf.as_str()),
                ("action", "adopt"),
                ("ip", ours.as_str()),
                ("reason", reason.as_str()),
            ],
        )
        .await;
    assert_eq!(r.status(), 303);
    let v = svc
        .until(&id, Duration::from_secs(30), |v| v["state"] == "ready")
        .await;
    assert_eq!(v["server_ip"], ours.as_str());
    assert_eq!(
        sim.purchases_for(&format!("{id}/")).len(),
        1,
        "nothing bought again"
    );
    svc.running.stop().await;
}
