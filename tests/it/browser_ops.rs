//! The operator's day in a real Chromium (issue 15), on the WebDriver harness of
//! [`crate::browser`]: the outage banner and the failed badge, search, Retry All on the failed
//! queue, and every page at 600 px without horizontal overflow
//! (`document.documentElement.scrollWidth <= innerWidth`). Screenshots go to
//! `target/browser-test/`.

use std::path::PathBuf;
use std::time::Duration;

use provisioner::crypto::Cipher;
use provisioner::simulator::{BuyEffect, BuyStep, Simulator};
use serde_json::{Value, json};

use crate::browser::{Driver, find_program, target_dir};
use crate::helpers::{ADMIN_TOKEN, RealService, fast_clock, scenario_package, start_service};
use crate::ops_web::{failed_orders, order_body, service_with_smartvps_down};

impl Driver {
    /// Runs `script` in the page and returns its value.
    async fn script(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            &format!("{}/execute/sync", self.s()),
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    /// Resizes the browser window.
    async fn resize(&self, width: u32, height: u32) {
        self.call(
            reqwest::Method::POST,
            &format!("{}/window/rect", self.s()),
            Some(json!({ "width": width, "height": height })),
        )
        .await;
    }

    async fn login(&self, svc: &RealService) {
        self.go(&format!("{}/admin", svc.api)).await;
        self.type_into("#token", ADMIN_TOKEN).await;
        self.click("#login").await;
        self.navigated_to(|u| u.ends_with("/admin")).await;
    }

    /// Waits until the navigation a click started has reached a URL `arrived` accepts: a form
    /// submission's click may return before the next page replaces this one.
    async fn navigated_to(&self, arrived: impl Fn(&str) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let url = self.url().await;
            let loaded = self.script("return document.readyState;").await == "complete";
            if arrived(&url) && loaded {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the browser stayed at {url}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The page's layout width and the viewport's, as the browser measures them.
    async fn widths(&self) -> (u64, u64) {
        let v = self
            .script("return [document.documentElement.scrollWidth, window.innerWidth];")
            .await;
        (v[0].as_u64().unwrap(), v[1].as_u64().unwrap())
    }
}

/// chromedriver and Chromium, or `None` (with a loud note) outside CI when either is missing.
fn browser(test: &str) -> Option<(PathBuf, PathBuf)> {
    let chromedriver = find_program("CHROMEDRIVER", &["chromedriver"]);
    let chromium = find_program(
        "CHROME_BIN",
        &[
            "chromium",
            "chromium-browser",
            "google-chrome",
            "google-chrome-stable",
        ],
    );
    match (chromedriver, chromium) {
        (Some(d), Some(c)) => Some((d, c)),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but chromedriver or Chromium is missing: the browser tests are required in CI"
            );
            eprintln!("\n!! SKIPPED: browser test {test}: chromedriver or Chromium not found\n");
            None
        }
    }
}

fn screenshots() -> PathBuf {
    let out = target_dir().join("browser-test");
    std::fs::create_dir_all(&out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outage_banner_search_and_600px_pages_in_chromium() {
    let Some((chromedriver, chromium)) = browser("the_outage_banner_search_and_600px_pages") else {
        return;
    };
    let out = screenshots();
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

    let driver = Driver::start(&chromedriver, &chromium, &out).await;
    driver.login(&svc).await;
    let banner = driver.text("#outage").await;
    assert!(banner.contains("SmartVPS unreachable since"), "{banner}");
    assert!(banner.contains("2 orders failed"), "{banner}");
    assert!(banner.contains("could not be reached"), "{banner}");
    assert_eq!(driver.text("#failed-badge").await, "2");
    driver.screenshot(&out.join("outage-banner.png")).await;

    // Search by reference: one row, its first cell the order_ref linking to the order.
    driver.type_into("#q", "whmcs-1004").await;
    driver.click("#filter").await;
    driver.navigated_to(|u| u.contains("q=whmcs-1004")).await;
    let rows = driver
        .script("return Array.from(document.querySelectorAll('#orders tbody tr')).map(r => r.cells[0].innerText);")
        .await;
    assert_eq!(rows, json!(["WHMCS-1004"]), "{rows}");
    // By email.
    driver
        .go(&format!("{}/admin?q=ann%40example.com", svc.api))
        .await;
    let rows = driver
        .script("return Array.from(document.querySelectorAll('#orders tbody tr')).map(r => r.cells[0].innerText);")
        .await;
    assert_eq!(rows, json!(["WHMCS-1003"]), "{rows}");

    // The failed order's chart draws its three attempts, none of which was sent, as such.
    driver
        .go(&format!("{}/admin/orders/{}", svc.api, ids[0]))
        .await;
    let refused = driver
        .script("return Array.from(document.querySelectorAll('#chart rect.refused')).map(r => r.parentNode.querySelector('title').textContent);")
        .await;
    let refused: Vec<String> = serde_json::from_value(refused).unwrap();
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert!(
        refused
            .iter()
            .all(|t| t.contains("not sent: stock unreadable")),
        "{refused:?}"
    );
    assert!(
        driver
            .text("#chart-stopped")
            .await
            .contains("waiting for an admin")
    );
    driver.screenshot(&out.join("order-not-sent.png")).await;

    // 600 px: no page scrolls sideways; wide tables scroll in their own box.
    driver.resize(600, 1000).await;
    let pages = [
        ("orders", format!("{}/admin", svc.api)),
        ("failed", format!("{}/admin/failed", svc.api)),
        ("order", format!("{}/admin/orders/{}", svc.api, ids[0])),
    ];
    for (name, url) in &pages {
        driver.go(url).await;
        let (scroll, inner) = driver.widths().await;
        assert!(inner <= 600, "{name}: the window is {inner} px wide");
        assert!(
            scroll <= inner,
            "{name} at {inner} px overflows: scrollWidth {scroll}"
        );
        driver
            .screenshot(&out.join(format!("600px-{name}.png")))
            .await;
    }
    // The chart scales to the width instead of overflowing.
    let chart = driver
        .script("return document.getElementById('chart').getBoundingClientRect().width;")
        .await;
    assert!(chart.as_f64().unwrap() <= 600.0, "{chart}");
    drop(driver);
    svc.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_all_on_the_failed_queue_in_chromium() {
    let Some((chromedriver, chromium)) = browser("retry_all_on_the_failed_queue") else {
        return;
    };
    let out = screenshots();
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::new(fast_clock(1000.0), 19);
    let pkg = scenario_package(&sim, 41, "103.82.72");
    // Six definite "no"s: both orders fail in the buy phase; then SmartVPS sells.
    let no = BuyStep::new(Duration::from_secs(1), BuyEffect::ErrorReply);
    sim.script_buy(pkg, [no; 6]).unwrap();
    let svc = start_service(
        &dir.path().join("retry-all.db"),
        &sim,
        sim.clock().clone(),
        &Cipher::generate_key(),
    )
    .await;
    let mut ids = Vec::new();
    for order_ref in ["retry-all-1", "retry-all-2"] {
        let (status, v) = svc
            .intake(&order_body(order_ref, "ann@example.com", 41))
            .await;
        assert_eq!(status, 201, "{v}");
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        svc.until(id, Duration::from_secs(30), |v| v["state"] == "failed")
            .await;
    }

    let driver = Driver::start(&chromedriver, &chromium, &out).await;
    driver.login(&svc).await;
    driver.click("#nav-failed").await;
    driver.navigated_to(|u| u.ends_with("/admin/failed")).await;
    let rows = driver
        .script("return document.querySelectorAll('#failed tbody tr.failed').length;")
        .await;
    assert_eq!(rows, json!(2));
    driver
        .type_into("#retry-all-reason", "Chromium test: SmartVPS sells again")
        .await;
    driver.click("#retry-all").await;
    driver
        .navigated_to(|u| u.ends_with("/admin/failed/retry"))
        .await;
    let result = driver.text("#bulk-result").await;
    assert!(result.starts_with("Retried 2 orders."), "{result}");
    driver.screenshot(&out.join("retry-all.png")).await;
    for id in &ids {
        let done = svc
            .until(id, Duration::from_secs(30), |v| v["state"] == "ready")
            .await;
        assert!(
            done["timeline"]
                .to_string()
                .contains("Retry by alice: Chromium test: SmartVPS sells again"),
            "{done}"
        );
    }
    driver.go(&format!("{}/admin/failed", svc.api)).await;
    assert!(driver.source().await.contains("Nothing failed"));
    drop(driver);
    svc.running.stop().await;
}
