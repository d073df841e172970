//! Email against a real SMTP server process (aiosmtpd, started by the test): the messages that
//! arrive are read back and checked.

use std::sync::Arc;
use std::time::Duration;

use provisioner::clock::Clock;
use provisioner::crypto::Cipher;
use provisioner::notify::email::{EmailNotifier, EmailSettings, SmtpTls};
use provisioner::notify::{Dispatcher, DispatcherSettings};
use provisioner::store::Store;
use provisioner::store::sqlite::SqliteStore;

use crate::outbox::{failed_order, ready_order};
use crate::receivers::{ManualClock, SmtpSink};

fn settings(port: u16, tls: SmtpTls) -> EmailSettings {
    EmailSettings {
        host: "127.0.0.1".into(),
        port,
        tls,
        username: None,
        password: None,
        from: "Provisioner <noreply@provisioner.test>".parse().unwrap(),
        admin_to: vec!["Ops <ops@provisioner.test>".parse().unwrap()],
        timeout: Duration::from_secs(10),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_and_admin_emails_arrive_at_a_real_smtp_server() {
    let Some(sink) = SmtpSink::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("mail.db").display());
    let store: Arc<dyn Store> = Arc::new(SqliteStore::connect(&url).await.unwrap());
    let clock = ManualClock::new();
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    let cipher = Arc::new(Cipher::from_hex(&Cipher::generate_key()).unwrap());
    let channels = EmailNotifier::channels(&settings(sink.port, SmtpTls::None)).unwrap();
    let dispatcher = Dispatcher::new(
        Arc::clone(&store),
        channels.into(),
        Arc::clone(&cipher),
        dyn_clock,
        DispatcherSettings::default(),
    );
    let password = "Cust0mer-Pa55-mail";
    let ready = ready_order(store.as_ref(), &cipher, &clock, password).await;
    let failed = failed_order(store.as_ref(), &clock).await;

    let round = dispatcher.run_due_once().await.unwrap();
    assert_eq!((round.delivered, round.retrying), (5, 0), "{round:?}");
    // The server has written each message before it answered 250, so they are all there.
    let mails = sink.messages();
    assert_eq!(mails.len(), 5, "{mails:#?}");
    let by_subject = |s: &str| mails.iter().filter(|m| m.subject == s).collect::<Vec<_>>();

    let ready_mail = by_subject("Your server is ready!");
    assert_eq!(ready_mail.len(), 1);
    let m = ready_mail[0];
    assert_eq!(m.rcpt_tos, ["ann@example.com"]);
    assert!(m.to.contains("ann@example.com"), "{m:?}");
    assert_eq!(m.mail_from, "noreply@provisioner.test");
    assert!(m.from.contains("Provisioner"), "{m:?}");
    assert!(
        m.body.contains(&format!("Password: {password}")),
        "{}",
        m.body
    );
    assert!(m.body.contains("Username: root"), "{}", m.body);
    assert!(m.body.contains("103.82.72.9"), "{}", m.body);
    assert!(m.body.contains(ready.order_ref.as_str()), "{}", m.body);
    assert!(m.message_id.ends_with("@provisioner.test>"), "{m:?}");
    assert_eq!(by_subject("Your server is being provisioned...").len(), 2);

    let customer_failed = by_subject("We could not provision your server yet");
    assert_eq!(customer_failed.len(), 1);
    assert!(
        customer_failed[0]
            .body
            .contains("Our team has been alerted")
    );

    let admin = by_subject(&format!(
        "[provisioner] Order {} failed",
        failed.order_ref.as_str()
    ));
    assert_eq!(admin.len(), 1, "{mails:#?}");
    assert_eq!(admin[0].rcpt_tos, ["ops@provisioner.test"]);
    assert!(
        admin[0].body.contains("buyVps failed 3 times"),
        "{}",
        admin[0].body
    );
    assert!(admin[0].body.contains(&failed.id.to_string()));
    // Admins never get the customer's password.
    assert!(
        mails
            .iter()
            .filter(|m| m.rcpt_tos[0].starts_with("ops"))
            .all(|m| !m.body.contains(password))
    );

    // Delivered once: later rounds send nothing.
    clock.advance(Duration::from_secs(7200));
    assert_eq!(dispatcher.run_due_once().await.unwrap().delivered, 0);
    assert_eq!(sink.messages().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_never_falls_back_to_plain_text() {
    let Some(sink) = SmtpSink::start() else {
        return;
    };
    let store: Arc<dyn Store> = Arc::new(provisioner::store::memory::MemoryStore::new());
    let clock = ManualClock::new();
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    let cipher = Arc::new(Cipher::from_hex(&Cipher::generate_key()).unwrap());
    // The sink offers no STARTTLS: a transport that requires it must refuse to send.
    let channels = EmailNotifier::channels(&settings(sink.port, SmtpTls::StartTls)).unwrap();
    let dispatcher = Dispatcher::new(
        Arc::clone(&store),
        channels.into(),
        Arc::clone(&cipher),
        dyn_clock,
        DispatcherSettings::default(),
    );
    ready_order(store.as_ref(), &cipher, &clock, "never-sent-pw").await;
    let round = dispatcher.run_due_once().await.unwrap();
    assert_eq!((round.delivered, round.retrying), (0, 2), "{round:?}");
    assert!(sink.messages().is_empty());
}

async fn timeline(store: &dyn Store, order: &provisioner::domain::Order) -> Vec<String> {
    store
        .timeline(&order.id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.message)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_that_never_gets_through_is_abandoned_on_the_timeline_not_notified() {
    let Some(sink) = SmtpSink::start_refusing() else {
        return;
    };
    let store: Arc<dyn Store> = Arc::new(provisioner::store::memory::MemoryStore::new());
    let clock = ManualClock::new();
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    let cipher = Arc::new(Cipher::from_hex(&Cipher::generate_key()).unwrap());
    let channels = EmailNotifier::channels(&settings(sink.port, SmtpTls::None)).unwrap();
    let dispatcher = Dispatcher::new(
        Arc::clone(&store),
        channels.into(),
        Arc::clone(&cipher),
        dyn_clock,
        DispatcherSettings {
            max_attempts: 2,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(1),
            ..DispatcherSettings::default()
        },
    );
    let failed = failed_order(store.as_ref(), &clock).await;
    let first = dispatcher.run_due_once().await.unwrap();
    assert_eq!((first.delivered, first.retrying), (0, 3), "{first:?}");
    let lines = timeline(store.as_ref(), &failed).await;
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("📧 Customer notice queued (email)")),
        "{lines:#?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("notified") || l.contains("delivered")),
        "queued is not notified: {lines:#?}"
    );
    clock.advance(Duration::from_secs(2));
    let second = dispatcher.run_due_once().await.unwrap();
    assert_eq!(second.abandoned, 3, "{second:?}");
    let lines = timeline(store.as_ref(), &failed).await;
    let abandoned: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("abandoned after 2 attempts by email"))
        .collect();
    assert_eq!(
        abandoned.len(),
        3,
        "provisioning, failed, the admin alert: {lines:#?}"
    );
    assert!(
        abandoned
            .iter()
            .all(|l| l.ends_with("the mail server refused the message")),
        "in plain words: {abandoned:#?}"
    );
    // The list says the same, with the raw error for whoever needs it.
    let list = store.deliveries(&failed.id).await.unwrap();
    assert!(
        list.iter()
            .all(|d| d.state.as_str() == "abandoned" && d.attempts == 2),
        "{list:#?}"
    );
    assert!(
        list.iter()
            .all(|d| d.last_error.as_deref().is_some_and(|e| e.contains("550")))
    );
    assert!(sink.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_that_fails_again_sends_no_second_identical_failure_notice() {
    let Some(sink) = SmtpSink::start() else {
        return;
    };
    let store: Arc<dyn Store> = Arc::new(provisioner::store::memory::MemoryStore::new());
    let clock = ManualClock::new();
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    let cipher = Arc::new(Cipher::from_hex(&Cipher::generate_key()).unwrap());
    let channels = EmailNotifier::channels(&settings(sink.port, SmtpTls::None)).unwrap();
    let dispatcher = Dispatcher::new(
        Arc::clone(&store),
        channels.into(),
        Arc::clone(&cipher),
        dyn_clock.clone(),
        DispatcherSettings::default(),
    );
    let mut order = failed_order(store.as_ref(), &clock).await;
    assert_eq!(dispatcher.run_due_once().await.unwrap().delivered, 3);
    let lines = timeline(store.as_ref(), &order).await;
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("✅ Customer notice delivered by email (provisioning failed)")),
        "{lines:#?}"
    );
    // An admin retries; the buy phase fails again the same way.
    let admin = provisioner::engine::admin::AdminService::new(Arc::clone(&store), dyn_clock);
    clock.advance(Duration::from_secs(60));
    order = admin.retry(&order.id, "alice", "try again").await.unwrap();
    let now = clock.now();
    let claimed = store
        .claim_due("test", now, Duration::from_secs(60), 10)
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.order.id == order.id)
        .unwrap();
    order
        .fail(
            provisioner::domain::Phase::Buy,
            "buyVps failed 3 times",
            now,
        )
        .unwrap();
    let change = provisioner::store::Change {
        notices: vec![
            provisioner::domain::NoticeKind::Failed,
            provisioner::domain::NoticeKind::AdminFailed,
        ],
        ..provisioner::store::Change::default()
    };
    store.save(&claimed.lease, &order, change).await.unwrap();
    dispatcher.run_due_once().await.unwrap();

    let mails = sink.messages();
    let customer_failures = mails
        .iter()
        .filter(|m| m.subject == "We could not provision your server yet")
        .count();
    assert_eq!(
        customer_failures, 1,
        "one failure notice per episode: {mails:#?}"
    );
    let admin_alerts = mails
        .iter()
        .filter(|m| m.subject.ends_with("failed"))
        .count();
    assert_eq!(admin_alerts, 2, "the team hears of every failure");
    let lines = timeline(store.as_ref(), &order).await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("not sent again") && l.contains("email")),
        "{lines:#?}"
    );
}
