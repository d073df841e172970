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
