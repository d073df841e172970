//! The notice outbox: per-channel deliveries in the store, and the dispatcher against a real
//! webhook receiver that fails and then recovers.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use provisioner::clock::{Clock, Timestamp};
use provisioner::crypto::Cipher;
use provisioner::domain::{Credentials, NewOrder, NoticeKind, Order, Phase};
use provisioner::notify::webhook::{WebhookEndpoint, WebhookNotifier};
use provisioner::notify::{Dispatched, Dispatcher, DispatcherSettings, Notifier, admin_alert};
use provisioner::store::memory::MemoryStore;
use provisioner::store::sqlite::SqliteStore;
use provisioner::store::{Change, DeliveryResult, NewDelivery, Store};
use secrecy::SecretString;

use crate::helpers::request;
use crate::receivers::{ManualClock, WebhookReceiver};

const SECRET: &str = "whsec-0123456789abcdef";

async fn stores() -> (tempfile::TempDir, Vec<(&'static str, Arc<dyn Store>)>) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("outbox.db").display());
    let sqlite: Arc<dyn Store> = Arc::new(SqliteStore::connect(&url).await.unwrap());
    let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());
    (dir, vec![("sqlite", sqlite), ("memory", memory)])
}

async fn new_order(store: &dyn Store, order_ref: &str, now: Timestamp) -> Order {
    let order = Order::accept(NewOrder::parse(&request(order_ref, 7)).unwrap(), now);
    store
        .insert_order(
            &order,
            &provisioner::store::AccessToken {
                hash: "h".into(),
                generation: Some(0),
            },
            &[],
            &[NoticeKind::Provisioning],
        )
        .await
        .unwrap();
    order
}

fn delivery(order: &Order, key: &str, channel: &str) -> NewDelivery {
    NewDelivery {
        key: key.into(),
        event_id: "evt".into(),
        notice_id: None,
        order_id: Some(order.id.clone()),
        kind: NoticeKind::Provisioning,
        channel: channel.into(),
        detail: None,
    }
}

#[tokio::test]
async fn deliveries_are_idempotent_exclusive_and_never_resent_once_delivered() {
    let (_dir, stores) = stores().await;
    for (name, store) in stores {
        let t0 = Timestamp(1_000_000);
        let order = new_order(store.as_ref(), &format!("pay-{name}"), t0).await;
        let a = delivery(&order, "evt/webhook:a", "webhook:a");
        let b = delivery(&order, "evt/webhook:b", "webhook:b");
        store
            .add_deliveries(&[a.clone(), b.clone()], t0)
            .await
            .unwrap();
        // A repeated fan-out queues nothing new.
        store
            .add_deliveries(std::slice::from_ref(&a), t0)
            .await
            .unwrap();
        // The outbox notice itself is still waiting to be fanned out: 1 + 2.
        assert_eq!(store.outbox_backlog().await.unwrap(), 3, "{name}");

        let lease = Duration::from_secs(60);
        let first = store.claim_deliveries("w1", t0, lease, 10).await.unwrap();
        assert_eq!(first.len(), 2, "{name}");
        assert!(first.iter().all(|d| d.attempt == 1), "{name}");
        // Claimed rows are not handed to a second dispatcher while the claim lives.
        assert!(
            store
                .claim_deliveries("w2", t0, lease, 10)
                .await
                .unwrap()
                .is_empty(),
            "{name}"
        );

        let (da, db) = (&first[0], &first[1]);
        assert_eq!(da.key, "evt/webhook:a", "{name}");
        let delivered = DeliveryResult::Delivered { at: t0 };
        assert!(
            store.finish_delivery(da, &delivered).await.unwrap(),
            "{name}"
        );
        let retry = DeliveryResult::Failed {
            error: "HTTP 500".into(),
            retry_at: Some(t0.plus(Duration::from_secs(5))),
        };
        assert!(store.finish_delivery(db, &retry).await.unwrap(), "{name}");
        // A failure reported late for a delivered row changes nothing.
        assert!(!store.finish_delivery(da, &retry).await.unwrap(), "{name}");

        // Only b comes back, when its retry is due, as attempt 2.
        let later = t0.plus(Duration::from_secs(5));
        assert!(
            store
                .claim_deliveries("w1", t0, lease, 10)
                .await
                .unwrap()
                .is_empty()
        );
        let again = store
            .claim_deliveries("w2", later, lease, 10)
            .await
            .unwrap();
        assert_eq!(again.len(), 1, "{name}");
        assert_eq!(
            (again[0].key.as_str(), again[0].attempt),
            ("evt/webhook:b", 2)
        );

        // The first claimer's claim on b is stale now: its failure report is ignored, while a
        // success is a fact and is kept whoever reports it.
        assert!(!store.finish_delivery(db, &retry).await.unwrap(), "{name}");
        assert!(
            store.finish_delivery(db, &delivered).await.unwrap(),
            "{name}"
        );
        assert!(
            !store.finish_delivery(&again[0], &retry).await.unwrap(),
            "{name}"
        );
        let much_later = later.plus(Duration::from_secs(3600));
        assert!(
            store
                .claim_deliveries("w3", much_later, lease, 10)
                .await
                .unwrap()
                .is_empty(),
            "{name}"
        );

        // A crashed claimer's delivery comes back once its claim lapses, its attempt counted.
        let c = delivery(&order, "evt/email:customer", "email:customer");
        store.add_deliveries(&[c], much_later).await.unwrap();
        let lost = store
            .claim_deliveries("crashed", much_later, lease, 10)
            .await
            .unwrap();
        assert_eq!(lost.len(), 1);
        let resumed = store
            .claim_deliveries("w4", much_later.plus(lease), lease, 10)
            .await
            .unwrap();
        assert_eq!((resumed.len(), resumed[0].attempt), (1, 2), "{name}");
        // Giving up leaves nothing in the backlog but the unfanned notice.
        let give_up = DeliveryResult::Failed {
            error: "x".into(),
            retry_at: None,
        };
        assert!(store.finish_delivery(&resumed[0], &give_up).await.unwrap());
        assert_eq!(store.outbox_backlog().await.unwrap(), 1, "{name}");
    }
}

/// An order taken to ready with stored credentials, queuing the ready notice like the engine.
pub async fn ready_order(
    store: &dyn Store,
    cipher: &Cipher,
    clock: &ManualClock,
    password: &str,
) -> Order {
    let now = clock.now();
    let mut order = new_order(store, "pay-ready", now).await;
    let claimed = store
        .claim_due("test", now, Duration::from_secs(60), 10)
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.order.id == order.id)
        .unwrap();
    let ip = Ipv4Addr::new(103, 82, 72, 9);
    order.begin_buying(now).unwrap();
    order.start_buy_attempt(now).unwrap();
    order.bought(ip, now).unwrap();
    order.start_status_attempt(now).unwrap();
    order.ready(now).unwrap();
    let creds = Credentials {
        ip,
        username: "root".into(),
        password: SecretString::from(password.to_string()),
        os: Some("ubuntu".into()),
    };
    let change = Change {
        credentials: Some(cipher.seal(&creds)),
        notices: vec![NoticeKind::Ready],
        ..Change::default()
    };
    store.save(&claimed.lease, &order, change).await.unwrap();
    order
}

pub async fn failed_order(store: &dyn Store, clock: &ManualClock) -> Order {
    let now = clock.now();
    let mut order = new_order(store, "pay-failed", now).await;
    let claimed = store
        .claim_due("test", now, Duration::from_secs(60), 10)
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.order.id == order.id)
        .unwrap();
    order
        .fail(Phase::Buy, "buyVps failed 3 times", now)
        .unwrap();
    let change = Change {
        notices: vec![NoticeKind::Failed, NoticeKind::AdminFailed],
        ..Change::default()
    };
    store.save(&claimed.lease, &order, change).await.unwrap();
    order
}

fn hook(name: &str, url: &str, trusted: bool, clock: &Arc<ManualClock>) -> Arc<dyn Notifier> {
    let endpoint = WebhookEndpoint {
        name: name.into(),
        url: url.parse().unwrap(),
        secret: SecretString::from(SECRET),
        trusted,
        // Every event, admin.alert included (an endpoint gets alerts only when it lists them).
        events: provisioner::notify::webhook::EVENTS
            .iter()
            .map(|e| e.to_string())
            .collect(),
    };
    let clock: Arc<dyn Clock> = clock.clone();
    Arc::new(WebhookNotifier::new(endpoint, Duration::from_secs(5), clock).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_that_fails_then_recovers_gets_each_event_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("hooks.db").display());
    let store: Arc<dyn Store> = Arc::new(SqliteStore::connect(&url).await.unwrap());
    let clock = ManualClock::new();
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    let cipher = Arc::new(Cipher::from_hex(&Cipher::generate_key()).unwrap());

    let flaky = WebhookReceiver::start(SECRET, dyn_clock.clone()).await;
    let steady = WebhookReceiver::start(SECRET, dyn_clock.clone()).await;
    flaky.set_failing(true);
    let channels: Vec<Arc<dyn Notifier>> = vec![
        hook("flaky", &flaky.url, true, &clock),
        hook("steady", &steady.url, false, &clock),
    ];
    let settings = DispatcherSettings {
        max_attempts: 10,
        backoff_base: Duration::from_secs(1),
        backoff_cap: Duration::from_secs(8),
        ..DispatcherSettings::default()
    };
    let dispatcher = Dispatcher::new(
        Arc::clone(&store),
        channels.into(),
        Arc::clone(&cipher),
        dyn_clock.clone(),
        settings,
    );

    let password = "Cust0mer-Pa55-XYZ";
    let ready = ready_order(store.as_ref(), &cipher, &clock, password).await;
    let failed = failed_order(store.as_ref(), &clock).await;
    // Five notices (two provisioning, ready, failed, the admin alert) on two endpoints.
    let round = dispatcher.run_due_once().await.unwrap();
    assert_eq!(
        round,
        Dispatched {
            fanned_out: 5,
            delivered: 5,
            retrying: 5,
            abandoned: 0
        }
    );
    // Two more rounds of failures, each after the backoff ceiling (full jitter waits at most that).
    for ceiling in [1, 2] {
        clock.advance(Duration::from_secs(ceiling));
        let r = dispatcher.run_due_once().await.unwrap();
        assert_eq!((r.delivered, r.retrying), (0, 5), "{r:?}");
    }
    flaky.set_failing(false);
    clock.advance(Duration::from_secs(4));
    assert_eq!(dispatcher.run_due_once().await.unwrap().delivered, 5);
    // Nothing is ever sent again, however long we wait.
    for _ in 0..3 {
        clock.advance(Duration::from_secs(3600));
        assert_eq!(
            dispatcher.run_due_once().await.unwrap(),
            Dispatched::default()
        );
    }
    assert_eq!(store.outbox_backlog().await.unwrap(), 0);

    for (name, receiver) in [("flaky", &flaky), ("steady", &steady)] {
        let accepted = receiver.accepted_per_key();
        assert_eq!(accepted.len(), 5, "{name}: {accepted:?}");
        assert!(accepted.values().all(|n| *n == 1), "{name}: {accepted:?}");
        for r in receiver.seen() {
            assert!(r.signature_ok, "{name}: bad signature on {:?}", r.body);
            // The key is in the header and the payload, and stays the same on every retry.
            assert_eq!(
                r.headers["idempotency-key"],
                r.headers["x-provisioner-delivery"]
            );
            assert_eq!(r.body["id"], r.headers["idempotency-key"].to_str().unwrap());
            assert!(
                r.body["id"]
                    .as_str()
                    .unwrap()
                    .ends_with(&format!("/webhook:{name}"))
            );
        }
    }
    assert_eq!(flaky.seen().len(), 20, "3 failures + 1 success per event");
    assert_eq!(steady.seen().len(), 5);

    let events = |r: &WebhookReceiver, event: &str| -> Vec<serde_json::Value> {
        r.seen()
            .into_iter()
            .filter(|x| x.status == 200 && x.body["event"] == event)
            .map(|x| x.body)
            .collect()
    };
    // Credentials go to the trusted endpoint only.
    let trusted = &events(&flaky, "order.ready")[0];
    assert_eq!(trusted["credentials"]["password"], password);
    assert_eq!(trusted["order"]["id"], ready.id.as_str());
    let untrusted = &events(&steady, "order.ready")[0];
    assert!(untrusted.get("credentials").is_none(), "{untrusted}");
    assert!(!untrusted.to_string().contains(password));
    // The failed order reaches the storefront and the admins.
    let alert = &events(&steady, "admin.alert")[0];
    assert_eq!(alert["alert"]["kind"], "order_failed");
    assert_eq!(alert["order"]["id"], failed.id.as_str());
    assert!(
        alert["alert"]["message"]
            .as_str()
            .unwrap()
            .contains("buyVps failed 3 times")
    );
    assert_eq!(events(&steady, "order.failed").len(), 1);
    assert_eq!(events(&steady, "order.provisioning").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_is_abandoned_after_max_attempts_and_alerts_need_no_order() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let clock = ManualClock::new();
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    // A port nothing listens on: connection refused.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hook", l.local_addr().unwrap())
    };
    let live = WebhookReceiver::start(SECRET, dyn_clock.clone()).await;
    let channels: Vec<Arc<dyn Notifier>> = vec![
        hook("dead", &dead, false, &clock),
        hook("live", &live.url, false, &clock),
    ];
    let dispatcher = Dispatcher::new(
        Arc::clone(&store),
        channels.into(),
        Arc::new(Cipher::from_hex(&Cipher::generate_key()).unwrap()),
        dyn_clock.clone(),
        DispatcherSettings {
            max_attempts: 3,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(1),
            ..DispatcherSettings::default()
        },
    );
    let event_id = admin_alert(
        store.as_ref(),
        dispatcher.channels(),
        NoticeKind::AdminLowStock,
        "package 7 (103.82.72) has 1 free address left",
        clock.now(),
    )
    .await
    .unwrap();
    let mut rounds = Vec::new();
    for _ in 0..5 {
        rounds.push(dispatcher.run_due_once().await.unwrap());
        clock.advance(Duration::from_secs(2));
    }
    assert_eq!(rounds.iter().map(|r| r.delivered).sum::<usize>(), 1);
    assert_eq!(rounds.iter().map(|r| r.retrying).sum::<usize>(), 2);
    assert_eq!(rounds.iter().map(|r| r.abandoned).sum::<usize>(), 1);
    assert_eq!(store.outbox_backlog().await.unwrap(), 0);
    let got = live.seen();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body["event"], "admin.alert");
    assert_eq!(got[0].body["event_id"], event_id.as_str());
    assert_eq!(got[0].body["alert"]["kind"], "low_stock");
    assert!(got[0].body.get("order").is_none());
}

/// The README's Python verification snippet accepts what we send and refuses a changed body.
#[test]
fn readme_verification_snippet_accepts_our_signature() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme
        .find("### Verifying webhooks")
        .expect("README section")..];
    let start = section.find("```python\n").expect("python block") + "```python\n".len();
    let snippet = &section[start..start + section[start..].find("```").unwrap()];
    let body = r#"{"event":"order.ready","id":"ntc_1_x/webhook:shop"}"#;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = provisioner::notify::webhook::sign(SECRET.as_bytes(), now as i64, body.as_bytes());
    let program = format!(
        "{snippet}\nprint(verify({SECRET:?}.encode(), {header:?}, {body:?}.encode()), verify({SECRET:?}.encode(), {header:?}, b'{{}}'))\n"
    );
    let out = match std::process::Command::new("python3")
        .args(["-c", &program])
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "python3 is required in CI: {e}"
            );
            eprintln!("SKIPPED: python3 not found ({e})");
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        "True False",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
