//! The findings of the attacker's review of `serve`, each reproduced and shown closed: intake
//! without a storefront's signature, a replayed body stealing the password, order ids probed by
//! their error, guessing at full speed, and a socket flood costing orders their buy attempts.

use std::time::Duration;

use futures_util::future::join_all;
use provisioner::config::Storefront;
use provisioner::crypto::Cipher;
use provisioner::simulator::Simulator;
use provisioner::web::storefront::{sign, sign_now};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{
    ADMIN_TOKEN, RealService, STOREFRONT_SECRET, fast_clock, post_order, scenario_package,
    signed_post, start_service, start_service_with,
};

const OTHER_SECRET: &str = "other-shop-signing-secret-0b1e2d3c4f";

fn body(order_ref: &str, pkg: u32) -> Value {
    json!({
        "order_ref": order_ref,
        "package": pkg,
        "ram_gb": 2,
        "customer": { "email": "ann@example.com", "name": "Ann" },
        "os": "ubuntu",
    })
}

/// A service on a fresh database in `dir`, its settings adjusted by `tweak`.
async fn tweaked(
    dir: &tempfile::TempDir,
    sim: &Simulator,
    tweak: impl FnOnce(&mut provisioner::config::Settings),
) -> RealService {
    start_service_with(
        &dir.path().join("sec.db"),
        sim,
        sim.clock().clone(),
        &Cipher::generate_key(),
        tweak,
    )
    .await
}

async fn service(dir: &tempfile::TempDir, sim: &Simulator) -> RealService {
    start_service(
        &dir.path().join("sec.db"),
        sim,
        sim.clock().clone(),
        &Cipher::generate_key(),
    )
    .await
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn status_and_json(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_takes_only_signed_json_from_a_configured_storefront() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::new(fast_clock(1000.0), 21);
    let pkg = scenario_package(&sim, 501, "103.10.1");
    let svc = service(&dir, &sim).await;
    let url = format!("{}/api/v1/orders", svc.api);
    let order = serde_json::to_vec(&body("SEC-1", pkg.0)).unwrap();

    // Anonymous, as the attacker did: refused, and no order exists afterwards.
    let (status, v) = status_and_json(
        svc.http
            .post(&url)
            .header("content-type", "application/json")
            .body(order.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401, "{v}");
    assert!(v["error"].as_str().unwrap().contains("signature"), "{v}");
    // A plain form from a web page: no signature, not JSON.
    let r = svc
        .http
        .post(&url)
        .header("content-type", "text/plain")
        .body(order.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Forged: signed with a secret that is not configured.
    let forged = sign("not-the-storefronts-secret-1234567", unix_now(), &order);
    let r = svc
        .http
        .post(&url)
        .header("content-type", "application/json")
        .header("provisioner-signature", forged)
        .body(order.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Stale: a captured request replayed ten minutes later.
    let stale = sign(STOREFRONT_SECRET, unix_now() - 600, &order);
    let (status, v) = status_and_json(
        svc.http
            .post(&url)
            .header("content-type", "application/json")
            .header("provisioner-signature", stale)
            .body(order.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401, "{v}");
    assert!(v["error"].as_str().unwrap().contains("tolerance"), "{v}");
    // The signature covers the body: a valid signature on other bytes is refused.
    let tampered = serde_json::to_vec(&body("SEC-1-x", pkg.0)).unwrap();
    let r = svc
        .http
        .post(&url)
        .header("content-type", "application/json")
        .header("provisioner-signature", sign_now(STOREFRONT_SECRET, &order))
        .body(tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Signed but not JSON.
    let r = svc
        .http
        .post(&url)
        .header("content-type", "text/plain")
        .header("provisioner-signature", sign_now(STOREFRONT_SECRET, &order))
        .body(order.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let (_, list) = svc.admin_get("/api/v1/orders").await;
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["orders"].as_array().map(Vec::len), Some(0), "{list}");

    // Signed: taken, and the order records who sent it.
    let (status, v) = post_order(&svc.http, &svc.api, &body("SEC-1", pkg.0)).await;
    assert_eq!(status, 201, "{v}");
    let admin_view = svc.get(v["id"].as_str().unwrap()).await;
    assert_eq!(admin_view["storefront"], "shop", "{admin_view}");
    // The bearer fallback, for a storefront that cannot sign.
    let r = svc
        .http
        .post(&url)
        .bearer_auth(STOREFRONT_SECRET)
        .json(&body("SEC-2", pkg.0))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // An admin token is not a storefront's secret.
    let r = svc
        .http
        .post(&url)
        .bearer_auth(ADMIN_TOKEN)
        .json(&body("SEC-3", pkg.0))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    svc.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_storefront_configured_intake_refuses_everything() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::new(fast_clock(1000.0), 22);
    let pkg = scenario_package(&sim, 502, "103.10.2");
    let svc = tweaked(&dir, &sim, |s| s.storefronts.clear()).await;
    let (status, v) = post_order(&svc.http, &svc.api, &body("CLOSED-1", pkg.0)).await;
    assert_eq!(status, 503, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("no storefront"),
        "{v}"
    );
    svc.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_body_gets_the_working_token_and_never_revokes_the_customers() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::new(fast_clock(1000.0), 23);
    let pkg = scenario_package(&sim, 503, "103.10.3");
    let svc = tweaked(&dir, &sim, |s| {
        s.storefronts.push(Storefront {
            name: "other".into(),
            secret: secrecy::SecretString::from(OTHER_SECRET),
        })
    })
    .await;
    let (status, first) = post_order(&svc.http, &svc.api, &body("REPLAY-1", pkg.0)).await;
    assert_eq!(status, 201, "{first}");
    let id = first["id"].as_str().unwrap().to_string();
    let token = first["access_token"].as_str().unwrap().to_string();
    svc.until(&id, Duration::from_secs(20), |v| v["state"] == "ready")
        .await;
    let credentials = |t: String| {
        let (http, url) = (
            svc.http.clone(),
            format!("{}/api/v1/orders/{id}/credentials", svc.api),
        );
        async move {
            http.get(url)
                .bearer_auth(t)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(credentials(token.clone()).await, 200);

    // The attack: post the same body again. The answer carries the customer's own token, which
    // keeps working.
    let (status, again) = post_order(&svc.http, &svc.api, &body("REPLAY-1", pkg.0)).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["access_token"].as_str(), Some(token.as_str()));
    assert_eq!(
        credentials(token.clone()).await,
        200,
        "the customer's token still works"
    );

    // Ten identical posts at once: every answer carries a token that works.
    let replay_body = body("REPLAY-2", pkg.0);
    let posts = (0..10).map(|_| post_order(&svc.http, &svc.api, &replay_body));
    let answers = join_all(posts).await;
    let tokens: Vec<String> = answers
        .iter()
        .map(|(s, v)| {
            assert!(*s == 200 || *s == 201, "{v}");
            v["access_token"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(answers.iter().filter(|(s, _)| *s == 201).count(), 1);
    assert!(tokens.iter().all(|t| *t == tokens[0]), "{tokens:?}");
    let id2 = answers[0].1["id"].as_str().unwrap().to_string();
    let r = svc
        .http
        .get(format!("{}/api/v1/orders/{id2}", svc.api))
        .bearer_auth(&tokens[0])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the token in every answer works");

    // Another storefront replaying this storefront's body learns nothing.
    let bytes = serde_json::to_vec(&body("REPLAY-1", pkg.0)).unwrap();
    let (status, v) = status_and_json(
        svc.http
            .post(format!("{}/api/v1/orders", svc.api))
            .header("content-type", "application/json")
            .header("provisioner-signature", sign_now(OTHER_SECRET, &bytes))
            .body(bytes)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 409, "{v}");
    assert!(v.get("access_token").is_none(), "{v}");

    // Rotation is explicit and on the record. An admin rotates: the old token stops working,
    // the admin does not see the new one, the storefront's next replay carries it.
    let (status, rotated) = svc
        .admin_post(
            &format!("/api/v1/orders/{id}/access-token"),
            &json!({ "reason": "customer says the email was forwarded" }),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    assert!(rotated.get("access_token").is_none(), "{rotated}");
    assert_eq!(
        credentials(token.clone()).await,
        401,
        "the old token is revoked"
    );
    let (_, replay) = post_order(&svc.http, &svc.api, &body("REPLAY-1", pkg.0)).await;
    let new_token = replay["access_token"].as_str().unwrap().to_string();
    assert_ne!(new_token, token);
    assert_eq!(credentials(new_token.clone()).await, 200);
    let timeline = svc.get(&id).await["timeline"].to_string();
    assert!(
        timeline
            .contains("access token rotated by admin alice: customer says the email was forwarded"),
        "{timeline}"
    );
    // A storefront rotates its own order and receives the token; a reason is required.
    let url = format!("{}/api/v1/orders/{id}/access-token", svc.api);
    let r = signed_post(&svc.http, &url, br#"{"reason": ""}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let (status, v) = status_and_json(
        signed_post(
            &svc.http,
            &url,
            br#"{"reason": "storefront support ticket 7"}"#,
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let third = v["access_token"].as_str().unwrap().to_string();
    assert_eq!(credentials(third).await, 200);
    assert_eq!(credentials(new_token).await, 401);
    // Another storefront cannot rotate it.
    let bytes = br#"{"reason": "x"}"#;
    let r = svc
        .http
        .post(&url)
        .header("content-type", "application/json")
        .header("provisioner-signature", sign_now(OTHER_SECRET, bytes))
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    svc.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_routes_answer_alike_for_an_unknown_order_and_a_wrong_token() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::new(fast_clock(1000.0), 24);
    let pkg = scenario_package(&sim, 504, "103.10.4");
    let svc = service(&dir, &sim).await;
    let (_, v) = post_order(&svc.http, &svc.api, &body("PROBE-1", pkg.0)).await;
    let real = v["id"].as_str().unwrap().to_string();
    let unknown = provisioner::domain::OrderId::new().to_string();
    let mut answers = Vec::new();
    for id in [real.as_str(), unknown.as_str(), "not-an-id"] {
        for (post, path) in [
            (false, ""),
            (false, "/credentials"),
            (false, "/actions"),
            (true, "/actions"),
        ] {
            let url = format!("{}/api/v1/orders/{id}{path}", svc.api);
            let r = if post {
                svc.http.post(url).json(&json!({ "action": "reboot" }))
            } else {
                svc.http.get(url)
            };
            let r = r
                .bearer_auth("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
                .send()
                .await
                .unwrap();
            answers.push((r.status().as_u16(), r.text().await.unwrap()));
        }
    }
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:#?}");
    assert_eq!(answers[0].0, 401);
    // Admins still get 404 for an unknown order.
    let (status, _) = svc.admin_get(&format!("/api/v1/orders/{unknown}")).await;
    assert_eq!(status, 404);
    svc.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_is_throttled_per_address_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::new(fast_clock(1000.0), 25);
    let pkg = scenario_package(&sim, 505, "103.10.5");
    let svc = tweaked(&dir, &sim, |s| {
        s.server.auth_failure_burst = 5;
        s.server.auth_failures_per_minute = 1;
    })
    .await;
    // A customer token made before the guessing starts.
    let (_, v) = post_order(&svc.http, &svc.api, &body("GUESS-1", pkg.0)).await;
    let id = v["id"].as_str().unwrap().to_string();
    let token = v["access_token"].as_str().unwrap().to_string();

    // Guesses of admin tokens, customer tokens, signatures and dashboard logins share one budget.
    let mut statuses = Vec::new();
    for i in 0..8 {
        let r = match i % 3 {
            0 => svc
                .http
                .get(format!("{}/api/v1/orders", svc.api))
                .bearer_auth(format!("guess-{i}-0123456789abcdef"))
                .send()
                .await
                .unwrap(),
            1 => svc
                .http
                .get(format!("{}/api/v1/orders/{id}/credentials", svc.api))
                .bearer_auth(format!("guess-{i}"))
                .send()
                .await
                .unwrap(),
            _ => svc
                .http
                .post(format!("{}/api/v1/orders", svc.api))
                .header("content-type", "application/json")
                .header(
                    "provisioner-signature",
                    format!("t={},v1={}", unix_now(), "ab".repeat(32)),
                )
                .body(serde_json::to_vec(&body("GUESS-2", pkg.0)).unwrap())
                .send()
                .await
                .unwrap(),
        };
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            let retry: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=60).contains(&retry), "{retry}");
        }
    }
    assert_eq!(statuses[..5], [401; 5], "{statuses:?}");
    assert_eq!(statuses[5..], [429; 3], "{statuses:?}");
    // While throttled, even a right credential from this address waits: a guess that happens to
    // be right must not be told apart.
    let r = svc
        .http
        .get(format!("{}/api/v1/orders/{id}", svc.api))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    // The dashboard's login form is throttled the same way.
    let r = svc
        .http
        .post(format!("{}/admin/login", svc.api))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("csrf=x&token=guess")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    // Requests without any credential are not guesses and are not throttled.
    let r = svc
        .http
        .get(format!("{}/healthz", svc.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    svc.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_dashboard_logins_use_up_the_addresss_budget() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::new(fast_clock(1000.0), 26);
    let svc = tweaked(&dir, &sim, |s| {
        s.server.auth_failure_burst = 3;
        s.server.auth_failures_per_minute = 1;
    })
    .await;
    // A real login form: its CSRF cookie and the same token in the hidden field.
    let page = svc
        .http
        .get(format!("{}/admin/login", svc.api))
        .send()
        .await
        .unwrap();
    let cookie = page
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("provisioner_login_csrf="))
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_string();
    let csrf = cookie.split_once('=').unwrap().1.to_string();
    let html = page.text().await.unwrap();
    assert!(html.contains(&csrf), "the form carries the cookie's token");
    let mut statuses = Vec::new();
    for i in 0..5 {
        let r = svc
            .http
            .post(format!("{}/admin/login", svc.api))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("cookie", &cookie)
            .body(format!("csrf={csrf}&token=guess-{i}-0123456789abcdef0123"))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429], "{statuses:?}");
    // The right token from this address now waits too: a lucky guess is not told apart.
    let r = svc
        .http
        .post(format!("{}/admin/login", svc.api))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", &cookie)
        .body(format!("csrf={csrf}&token={ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    svc.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_budget() {
    let guess = |svc: &RealService, forwarded: Option<&'static str>| {
        let mut r = svc
            .http
            .get(format!("{}/api/v1/orders", svc.api))
            .bearer_auth("guess-0123456789abcdef0123456789abcdef");
        if let Some(f) = forwarded {
            r = r.header("x-forwarded-for", f);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    // Without trusted proxies a forged X-Forwarded-For changes nothing: one budget per peer.
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::new(fast_clock(1000.0), 28);
    let svc = tweaked(&dir, &sim, |s| {
        s.server.auth_failure_burst = 2;
        s.server.auth_failures_per_minute = 1;
    })
    .await;
    let mut statuses = Vec::new();
    for f in ["203.0.113.1", "203.0.113.2", "203.0.113.3"] {
        statuses.push(guess(&svc, Some(f)).await);
    }
    assert_eq!(statuses, [401, 401, 429]);
    svc.running.stop().await;

    // Behind a trusted proxy (the test's own loopback address), each forwarded client counts alone.
    let dir = tempfile::tempdir().unwrap();
    let svc = tweaked(&dir, &sim, |s| {
        s.server.auth_failure_burst = 2;
        s.server.auth_failures_per_minute = 1;
        s.server.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    let mut statuses = Vec::new();
    for f in ["203.0.113.1", "203.0.113.1", "203.0.113.1", "203.0.113.2"] {
        statuses.push(guess(&svc, Some(f)).await);
    }
    assert_eq!(
        statuses,
        [401, 401, 429, 401],
        "one client throttled, not the proxy"
    );
    svc.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_refuses_an_order_ref_with_format_characters() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::new(fast_clock(1000.0), 27);
    let pkg = scenario_package(&sim, 507, "103.10.7");
    let svc = service(&dir, &sim).await;
    for bad in [
        "PAY-\u{202E}1",
        "PAY-\u{200B}2",
        "PAY-\u{0600}3",
        "PAY-\u{2028}4",
    ] {
        let (status, v) = post_order(&svc.http, &svc.api, &body(bad, pkg.0)).await;
        assert_eq!(status, 422, "{bad:?}: {v}");
        assert!(v.to_string().contains("order_ref"), "{v}");
    }
    svc.running.stop().await;
}

/// Reads from a socket until the server closes it (EOF or reset) or `limit` passes; whether
/// the server closed it.
async fn closed_by_server(mut s: TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_and_slow_sockets_costs_no_order_a_buy_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::new(fast_clock(100.0), 26);
    let pkg = scenario_package(&sim, 506, "103.10.6");
    let svc = tweaked(&dir, &sim, |s| {
        s.server.max_connections = 16;
        s.server.header_timeout = Duration::from_millis(700);
        s.server.body_timeout = Duration::from_millis(700);
        s.server.idle_timeout = Duration::from_millis(700);
    })
    .await;
    let addr = svc.running.addr;

    // The flood: idle sockets, half-sent headers, and a body trickled a byte at a time.
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let mut half = Vec::new();
    for _ in 0..10 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        half.push(s);
    }
    // Orders posted during the flood are still taken (the flood's sockets are dropped after the
    // header timeout, freeing the slots) and provisioned with one purchase each.
    let mut ids = Vec::new();
    for i in 0..5 {
        let (status, v) =
            post_order(&svc.http, &svc.api, &body(&format!("FLOOD-{i}"), pkg.0)).await;
        assert_eq!(status, 201, "{v}");
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    let closes = join_all(
        idle.into_iter()
            .chain(half)
            .map(|s| closed_by_server(s, Duration::from_secs(10))),
    )
    .await;
    assert!(
        closes.iter().all(|c| *c),
        "every idle or half-sent socket is closed by the server: {closes:?}"
    );

    // A body sent too slowly gets 408, not a held socket.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(
        b"POST /api/v1/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    )
    .await
    .unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut reply)).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");

    for id in &ids {
        let v = svc
            .until(id, Duration::from_secs(30), |v| v["state"] == "ready")
            .await;
        assert_eq!(v["attempts"]["buy"], 1, "no buy attempt was lost: {v}");
        assert_eq!(
            svc.running
                .simulator
                .as_ref()
                .unwrap()
                .purchases_for(&format!("{id}/"))
                .len(),
            1
        );
    }
    svc.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_is_refused_with_413() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::new(fast_clock(1000.0), 27);
    let svc = tweaked(&dir, &sim, |s| s.server.max_body_bytes = 4096).await;
    let big = vec![b' '; 10_000];
    let r = signed_post(&svc.http, &format!("{}/api/v1/orders", svc.api), &big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    svc.running.stop().await;
}

/// The README's storefront snippet for `lang`, as written.
fn readme_snippet(lang: &str) -> String {
    let readme = include_str!("../../README.md");
    let marker = format!("<!-- storefront-sign:{lang} -->");
    let after = &readme[readme.find(&marker).expect("the README has the snippet") + marker.len()..];
    let start = after.find("```").unwrap();
    let code = &after[start..];
    let code = &code[code.find('\n').unwrap() + 1..];
    code[..code.find("```").unwrap()].to_string()
}

/// Runs each README snippet's signing function with `interpreter` and checks the server's own
/// verifier takes its signature. Required under CI (which installs php); skipped locally when an
/// interpreter is missing.
#[test]
fn the_readme_signing_snippets_produce_signatures_the_server_accepts() {
    use provisioner::web::storefront::StorefrontAuth;
    let secret = "snippet-secret-1f2e3d4c5b6a79880";
    let body =
        r#"{"order_ref":"SNIP-1","package":5,"ram_gb":2,"customer":{"email":"a@b.co","name":"A"}}"#;
    let t = unix_now();
    let auth = StorefrontAuth::new(&[Storefront {
        name: "shop".into(),
        secret: secrecy::SecretString::from(secret),
    }]);
    let dir = tempfile::tempdir().unwrap();
    let body_path = dir.path().join("body.json");
    std::fs::write(&body_path, body).unwrap();
    let body_file = body_path.display().to_string();
    let cases = [
        (
            "python",
            "python3",
            "py",
            format!(
                "{}\nprint(sign({secret:?}, {t}, open({body_file:?}, 'rb').read()))\n",
                readme_snippet("python")
            ),
        ),
        (
            "php",
            "php",
            "php",
            format!(
                "<?php\n{}\necho provisioner_sign('{secret}', {t}, file_get_contents('{body_file}'));\n",
                readme_snippet("php")
            ),
        ),
        (
            "node",
            "node",
            "js",
            format!(
                "{}\nconsole.log(sign({secret:?}, {t}, require('node:fs').readFileSync({body_file:?})));\n",
                readme_snippet("node")
            ),
        ),
    ];
    let ci = std::env::var_os("CI").is_some();
    for (lang, interpreter, ext, program) in cases {
        let path = dir.path().join(format!("sign.{ext}"));
        std::fs::write(&path, program).unwrap();
        let out = match std::process::Command::new(interpreter).arg(&path).output() {
            Ok(out) => out,
            Err(e) if !ci => {
                eprintln!("skipping the {lang} snippet: {interpreter} not available ({e})");
                continue;
            }
            Err(e) => panic!("{interpreter} is required under CI: {e}"),
        };
        assert!(
            out.status.success(),
            "{lang}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let header = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert_eq!(header, sign(secret, t, body.as_bytes()), "{lang}");
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("provisioner-signature", header.parse().unwrap());
        assert_eq!(auth.verify(&headers, body.as_bytes()), Ok("shop"), "{lang}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_every_connection() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::new(fast_clock(1000.0), 28);
    let svc = tweaked(&dir, &sim, |s| {
        s.server.max_connections_per_client = 5;
        s.server.header_timeout = Duration::from_secs(30);
        s.server.idle_timeout = Duration::from_secs(30);
    })
    .await;
    let addr = svc.running.addr;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    // The sixth from the same address is closed on arrival, long before any timeout.
    let sixth = TcpStream::connect(addr).await.unwrap();
    assert!(closed_by_server(sixth, Duration::from_secs(5)).await);
    // The five held ones are still open: a request on one is answered.
    let mut first = held.remove(0);
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), first.read_to_end(&mut reply)).await;
    assert!(String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 200"));
    svc.running.stop().await;
}
