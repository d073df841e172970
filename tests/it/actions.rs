//! The server after it is bought (issue 13): the ordered OS installed before delivery, and the
//! actions customers and admins ask for, in virtual time on the in-memory store with the
//! simulator in-process.

use std::time::Duration;

use provisioner::clock::Clock;
use provisioner::domain::{ActionKind, ActionState, NewOrder, NoticeKind, Order, OrderState, Os};
use provisioner::policy::RetryPolicy;
use provisioner::simulator::FaultProfile;
use provisioner::store::{ActionRequest, Intake, Store};
use secrecy::ExposeSecret;

use crate::helpers::{VirtualWorld, request};

const PKG: u32 = 7;

fn world() -> VirtualWorld {
    VirtualWorld::new(RetryPolicy::default(), &[(PKG, "103.82.72", 50)])
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// An order for `os` (a code or a readable name), accepted.
async fn accept_for(w: &VirtualWorld, order_ref: &str, os: &str) -> Order {
    let mut req = request(order_ref, PKG);
    req.os = Some(os.into());
    match w
        .engine
        .accept(NewOrder::parse(&req).unwrap())
        .await
        .unwrap()
    {
        Intake::Created(o) => o,
        other => panic!("expected a new order, got {other:?}"),
    }
}

/// A ready order (Ubuntu, as the package installs).
async fn ready(w: &VirtualWorld, order_ref: &str) -> Order {
    let o = w.accept(order_ref, PKG).await;
    w.drive().await;
    let o = w.order(&o.id).await;
    assert_eq!(o.state, OrderState::Ready);
    o
}

async fn ask(w: &VirtualWorld, o: &Order, kind: ActionKind) {
    match w
        .engine
        .request_action(&o.id, kind, "customer", None)
        .await
        .unwrap()
    {
        ActionRequest::Created(_) => {}
        other => panic!("the action was refused: {other:?}"),
    }
}

async fn last_action(w: &VirtualWorld, o: &Order) -> provisioner::domain::ServerAction {
    w.store
        .actions(&o.id)
        .await
        .unwrap()
        .pop()
        .expect("an action")
}

#[tokio::test(start_paused = true)]
async fn a_windows_order_on_an_ubuntu_package_is_delivered_with_windows_credentials() {
    let w = world();
    w.sim
        .set_install_time(provisioner::domain::PackageId(PKG), secs(600))
        .unwrap();
    let o = accept_for(&w, "win-1", "Windows Server 2022").await;
    assert_eq!(o.os.as_deref(), Some("2022"), "stored as the changeos code");
    w.drive().await;
    let done = w.order(&o.id).await;
    assert_eq!(done.state, OrderState::Ready, "{:?}", done.failure);
    let ip = done.server_ip.unwrap();
    let server = w.sim.server(ip).unwrap();
    assert_eq!(server.os, "2022", "changeos installed the ordered image");
    let creds = w.engine.queries().credentials(&done).await.unwrap();
    assert_eq!(creds.username, "administrator");
    assert_eq!(
        creds.expose_password(),
        server.password.expose_secret(),
        "the password from after the change"
    );
    assert_eq!(w.sim.calls().other, 1, "one changeos");
    let timeline = w.timeline(&o.id).await;
    let text: Vec<&str> = timeline.iter().map(|e| e.message.as_str()).collect();
    let install = text
        .iter()
        .position(|l| l.contains("installing Windows Server 2022 with changeos"))
        .expect("the install is on the timeline");
    let ready_line = text
        .iter()
        .position(|l| l.starts_with("Total Time:"))
        .unwrap();
    assert!(install < ready_line, "installed before delivery: {text:#?}");
    // The ready notice went out once, after the install (10 minutes of it, polled each minute).
    let ready_at = w.offset(done.ready_at.unwrap());
    assert!(
        ready_at >= 600,
        "ready {ready_at} s in, after the 10-minute install"
    );
    let a = last_action(&w, &o).await;
    assert_eq!(a.kind, ActionKind::ChangeOs(Os::WindowsServer2022));
    assert_eq!(a.state, ActionState::Done);
    assert_eq!(a.requested_by, "provisioning");
}

#[tokio::test(start_paused = true)]
async fn an_order_for_the_os_the_package_installs_gets_no_install() {
    let w = world();
    let o = accept_for(&w, "ubu-1", "Ubuntu").await;
    w.drive().await;
    assert_eq!(w.order(&o.id).await.state, OrderState::Ready);
    assert_eq!(w.sim.calls().other, 0);
    assert!(w.store.actions(&o.id).await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn reboot_stops_then_starts_and_is_on_the_timeline() {
    let w = world();
    let o = ready(&w, "reboot-1").await;
    ask(&w, &o, ActionKind::Reboot).await;
    w.drive().await;
    let a = last_action(&w, &o).await;
    assert_eq!(a.state, ActionState::Done, "{:?}", a.result);
    let ip = o.server_ip.unwrap();
    assert_eq!(w.sim.powered_on(ip), Some(true));
    assert_eq!(w.sim.calls().other, 2, "stop, then start");
    assert_eq!(w.times_of(&o.id, "Calling stop").await.len(), 1);
    assert_eq!(w.times_of(&o.id, "Calling start").await.len(), 1);
    assert_eq!(w.times_of(&o.id, "rebooted").await.len(), 1);
    let o = w.order(&o.id).await;
    assert_eq!(o.state, OrderState::Ready);
    assert_eq!(o.run_at, None, "idle again once the action is done");
}

#[tokio::test(start_paused = true)]
async fn stop_and_start_change_the_power_state() {
    let w = world();
    let o = ready(&w, "power-1").await;
    let ip = o.server_ip.unwrap();
    ask(&w, &o, ActionKind::Stop).await;
    w.drive().await;
    assert_eq!(w.sim.powered_on(ip), Some(false));
    ask(&w, &o, ActionKind::Start).await;
    w.drive().await;
    assert_eq!(w.sim.powered_on(ip), Some(true));
    let actions = w.store.actions(&o.id).await.unwrap();
    assert!(actions.iter().all(|a| a.state == ActionState::Done));
}

#[tokio::test(start_paused = true)]
async fn a_reinstall_saves_the_new_password_and_tells_the_customer() {
    let w = world();
    let o = ready(&w, "format-1").await;
    let before = w.engine.queries().credentials(&o).await.unwrap();
    ask(&w, &o, ActionKind::Reinstall).await;
    w.drive().await;
    let a = last_action(&w, &o).await;
    assert_eq!(a.state, ActionState::Done, "{:?}", a.result);
    let after = w.engine.queries().credentials(&o).await.unwrap();
    let server = w.sim.server(o.server_ip.unwrap()).unwrap();
    assert_ne!(after.expose_password(), before.expose_password());
    assert_eq!(after.expose_password(), server.password.expose_secret());
    let notices = w.store.due_notices(w.clock.now(), 100).await.unwrap();
    let kinds: Vec<NoticeKind> = notices
        .iter()
        .filter(|n| n.order_id == o.id)
        .map(|n| n.kind)
        .collect();
    assert!(kinds.contains(&NoticeKind::CredentialsChanged), "{kinds:?}");
}

#[tokio::test(start_paused = true)]
async fn an_action_whose_reply_is_lost_is_settled_by_status_not_sent_again() {
    let w = world();
    let o = ready(&w, "lost-1").await;
    // Every action call does what it was asked and answers HTTP 500.
    w.sim.set_fault_profile(Some(FaultProfile {
        action_server_error_after_acting: 1.0,
        ..FaultProfile::default()
    }));
    ask(&w, &o, ActionKind::Stop).await;
    w.drive().await;
    let a = last_action(&w, &o).await;
    assert_eq!(a.state, ActionState::Done, "{:?}", a.result);
    assert_eq!(a.attempts, 1);
    assert_eq!(
        w.sim.calls().other,
        1,
        "stop sent once; status told the rest"
    );
    assert_eq!(
        w.times_of(&o.id, "status shows the stop took effect")
            .await
            .len(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_that_did_nothing_is_sent_again_only_after_the_horizon() {
    let w = world();
    let o = ready(&w, "nothing-1").await;
    // Every action call does nothing and answers HTTP 500: unknown, every time.
    w.sim.set_fault_profile(Some(FaultProfile {
        action_server_error: 1.0,
        ..FaultProfile::default()
    }));
    ask(&w, &o, ActionKind::Stop).await;
    let second = w
        .engine
        .request_action(&o.id, ActionKind::Reboot, "customer", None)
        .await
        .unwrap();
    assert!(
        matches!(second, ActionRequest::Busy(_)),
        "one action in flight per server: {second:?}"
    );
    w.drive().await;
    let a = last_action(&w, &o).await;
    assert_eq!(a.state, ActionState::Failed, "{:?}", a.result);
    let sends = w.times_of(&o.id, "Calling stop").await;
    assert_eq!(sends.len(), 3, "the policy's 3 attempts: {sends:?}");
    let horizon = RetryPolicy::default().server.action_horizon.as_secs();
    for pair in sends.windows(2) {
        assert!(
            pair[1] - pair[0] >= horizon,
            "a stop was sent again before the horizon: {sends:?}"
        );
    }
    assert_eq!(w.sim.powered_on(o.server_ip.unwrap()), Some(true));
    let o = w.order(&o.id).await;
    assert_eq!(o.state, OrderState::Ready, "the order stays ready");
    assert_eq!(o.run_at, None);
}

#[tokio::test(start_paused = true)]
async fn a_crash_mid_action_is_settled_by_status_after_the_restart() {
    let w = world();
    let o = ready(&w, "crash-1").await;
    ask(&w, &o, ActionKind::Stop).await;
    // The worker dies 2 s into the stop call (it takes 10 s to answer; SmartVPS stops the
    // server on arrival).
    let claimed = w.engine.claim(10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let step = w.engine.work_one(claimed.into_iter().next().unwrap());
    assert!(tokio::time::timeout(secs(2), step).await.is_err());
    let a = last_action(&w, &o).await;
    assert!(
        a.sent_at.is_some() && a.outcome.is_none(),
        "the intent was committed before the call"
    );

    let clock: std::sync::Arc<dyn provisioner::clock::Clock> = w.clock.clone();
    let second = VirtualWorld::engine_on(&w.store, &w.sim, &clock, RetryPolicy::default());
    for _ in 0..100 {
        second.run_due_once().await.unwrap();
        match w.store.next_due().await.unwrap() {
            Some(at) if at > w.clock.now() => w.clock.sleep(at.since(w.clock.now())).await,
            Some(_) => {}
            None => break,
        }
    }
    let a = last_action(&w, &o).await;
    assert_eq!(a.state, ActionState::Done, "{:?}", a.result);
    assert_eq!(
        w.sim.calls().other,
        1,
        "not sent again: status showed it stopped"
    );
    assert_eq!(w.times_of(&o.id, "was cut off").await.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn actions_are_limited_per_server_per_hour_and_refused_before_ready() {
    let w = world();
    let waiting = w.accept("not-yet", PKG).await;
    assert!(matches!(
        w.engine
            .request_action(&waiting.id, ActionKind::Start, "customer", None)
            .await
            .unwrap(),
        ActionRequest::NotReady(OrderState::Queued)
    ));
    let o = ready(&w, "limit-1").await;
    let per_hour = RetryPolicy::default().server.per_hour;
    for _ in 0..per_hour {
        ask(&w, &o, ActionKind::Start).await;
        w.drive().await;
    }
    match w
        .engine
        .request_action(&o.id, ActionKind::Start, "customer", None)
        .await
        .unwrap()
    {
        ActionRequest::TooMany { retry_at } => assert!(retry_at > w.clock.now()),
        other => panic!("expected the hourly limit, got {other:?}"),
    }
    w.clock.sleep(secs(3600)).await;
    ask(&w, &o, ActionKind::Start).await;
}

#[tokio::test(start_paused = true)]
async fn cancelling_an_order_mid_install_ends_its_install_too() {
    let w = world();
    w.sim
        .set_install_time(provisioner::domain::PackageId(PKG), secs(1800))
        .unwrap();
    let o = accept_for(&w, "win-cancel", "2019").await;
    for _ in 0..100 {
        w.engine.run_due_once().await.unwrap();
        if w.order(&o.id).await.state == OrderState::InstallingOs
            && w.store
                .open_action(&o.id)
                .await
                .unwrap()
                .is_some_and(|a| a.install_started_at.is_some())
        {
            break;
        }
        if let Some(at) = w.store.next_due().await.unwrap() {
            let now = w.clock.now();
            if at > now {
                w.clock.sleep(at.since(now)).await;
            }
        }
    }
    assert_eq!(w.order(&o.id).await.state, OrderState::InstallingOs);
    let refused = w
        .engine
        .admin()
        .cancel(&o.id, "alice", "refunded")
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("server"),
        "the owned server is the evidence: {refused}"
    );
    w.engine
        .admin()
        .cancel_with(&o.id, "alice", "refunded", true)
        .await
        .unwrap();
    assert_eq!(w.order(&o.id).await.state, OrderState::Cancelled);
    let a = last_action(&w, &o).await;
    assert_eq!(a.state, ActionState::Failed);
    assert!(a.result.unwrap().contains("cancelled by alice"));
    assert!(w.store.open_action(&o.id).await.unwrap().is_none());
}
