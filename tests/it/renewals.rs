//! Renewals and expiry (issue 14): a renewvps that times out and renews upstream anyway is
//! applied exactly once; a replayed renewal webhook renews once; a server nobody renews is
//! reminded, then expires at its expiry. Virtual time on the in-memory store, except the
//! webhook replay, which goes over HTTP to a real service on SQLite.

use std::time::Duration;

use provisioner::clock::{Clock, Timestamp};
use provisioner::crypto::Cipher;
use provisioner::domain::{NoticeKind, OrderId, OrderState, RenewalState};
use provisioner::policy::RetryPolicy;
use provisioner::simulator::script::FaultProfile;
use provisioner::simulator::{Scenario, Simulator};
use provisioner::store::Store;
use serde_json::json;

use crate::helpers::{VirtualWorld, fast_clock, scenario_package, signed_post, start_service};

const DAY: Duration = Duration::from_secs(86_400);

/// Works due orders until nothing is due before `until` (virtual time jumps between them).
async fn drive_until(w: &VirtualWorld, until: Timestamp) {
    for _ in 0..10_000 {
        w.engine.run_due_once().await.unwrap();
        match w.store.next_due().await.unwrap() {
            Some(at) if at <= until => {
                let now = w.clock.now();
                if at > now {
                    tokio::select! {
                        () = w.clock.sleep(at.since(now)) => {}
                        () = w.engine.woken() => {}
                    }
                }
            }
            _ => return,
        }
    }
    panic!("the engine did not settle");
}

/// A ready order in a world with no faults.
async fn ready_world() -> (VirtualWorld, OrderId, std::net::Ipv4Addr) {
    let w = VirtualWorld::new(RetryPolicy::default(), &[(5, "103.82.72", 20)]);
    let order = w.accept("pay-1", 5).await;
    w.drive().await;
    let o = w.order(&order.id).await;
    assert_eq!(o.state, OrderState::Ready, "{:?}", o.failure);
    let ip = o.server_ip.unwrap();
    (w, order.id, ip)
}

fn notices(kinds: &[NoticeKind], kind: NoticeKind) -> usize {
    kinds.iter().filter(|k| **k == kind).count()
}

async fn notice_kinds(w: &VirtualWorld) -> Vec<NoticeKind> {
    w.store
        .due_notices(Timestamp(i64::MAX), 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.kind)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_renewvps_that_times_out_but_renews_upstream_is_applied_exactly_once() {
    let (w, id, ip) = ready_world().await;
    let (expiry_before, _) = w.sim.term(ip).unwrap();
    // Every renewvps now renews upstream but answers only after the caller gave up.
    w.sim.set_fault_profile(Some(FaultProfile {
        action_hang: 1.0,
        ..FaultProfile::default()
    }));
    let taken = w
        .engine
        .storefront_renewal(&id, "renew-1", "shop")
        .await
        .unwrap();
    assert!(taken.created);
    drive_until(&w, w.clock.now().plus(Duration::from_secs(3600))).await;

    let (expiry_after, renewed) = w.sim.term(ip).unwrap();
    assert_eq!(renewed, 1, "exactly one renewvps took effect");
    assert_eq!(expiry_after, expiry_before.plus(30 * DAY));
    let renewals = w.store.renewals(&id).await.unwrap();
    assert_eq!(renewals.len(), 1);
    let r = &renewals[0];
    assert_eq!(r.state, RenewalState::Done, "{r:?}");
    assert_eq!(r.attempts, 1, "never sent again blindly: {r:?}");
    assert!(r.expiry_after > r.expiry_before, "{r:?}");
    let lines = w.times_of(&id, "the renewvps renewed").await;
    assert_eq!(lines.len(), 1, "settled by ExpiryDate");
    assert_eq!(w.order(&id).await.state, OrderState::Ready);
    assert_eq!(notices(&notice_kinds(&w).await, NoticeKind::Renewed), 1);
}

#[tokio::test(start_paused = true)]
async fn a_renewal_cut_off_by_a_crash_is_settled_by_expiry_not_sent_again() {
    let (w, id, ip) = ready_world().await;
    // 5xx after renewing: unknown outcome; then the status read settles it.
    w.sim.set_fault_profile(Some(FaultProfile {
        action_server_error_after_acting: 1.0,
        ..FaultProfile::default()
    }));
    w.engine
        .storefront_renewal(&id, "renew-5xx", "shop")
        .await
        .unwrap();
    drive_until(&w, w.clock.now().plus(Duration::from_secs(3600))).await;
    assert_eq!(w.sim.term(ip).unwrap().1, 1);
    let r = &w.store.renewals(&id).await.unwrap()[0];
    assert_eq!((r.state, r.attempts), (RenewalState::Done, 1), "{r:?}");

    // A definite refusal is tried again on the schedule, and renews once it goes through.
    w.sim.set_fault_profile(None);
    w.engine
        .storefront_renewal(&id, "renew-2", "shop")
        .await
        .unwrap();
    w.engine
        .storefront_renewal(&id, "renew-3", "shop")
        .await
        .unwrap();
    drive_until(&w, w.clock.now().plus(Duration::from_secs(3600))).await;
    assert_eq!(
        w.sim.term(ip).unwrap().1,
        3,
        "queued renewals applied one at a time"
    );
    let states: Vec<RenewalState> = w
        .store
        .renewals(&id)
        .await
        .unwrap()
        .iter()
        .map(|r| r.state)
        .collect();
    assert_eq!(states, vec![RenewalState::Done; 3]);
}

#[tokio::test(start_paused = true)]
async fn a_replayed_renewal_renews_once_and_a_foreign_ref_is_refused() {
    let (w, id, ip) = ready_world().await;
    let first = w
        .engine
        .storefront_renewal(&id, "renew-x", "shop")
        .await
        .unwrap();
    let again = w
        .engine
        .storefront_renewal(&id, "renew-x", "shop")
        .await
        .unwrap();
    assert!(first.created && !again.created);
    assert_eq!(first.renewal.id, again.renewal.id);
    drive_until(&w, w.clock.now().plus(Duration::from_secs(3600))).await;
    let replay = w
        .engine
        .storefront_renewal(&id, "renew-x", "shop")
        .await
        .unwrap();
    assert!(!replay.created);
    assert_eq!(replay.renewal.state, RenewalState::Done);
    drive_until(&w, w.clock.now().plus(Duration::from_secs(3600))).await;
    assert_eq!(
        w.sim.term(ip).unwrap().1,
        1,
        "one renewal for one renewal_ref"
    );

    let other = w.accept("pay-2", 5).await;
    w.drive().await;
    let err = w
        .engine
        .storefront_renewal(&other.id, "renew-x", "shop")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("another order"), "{err}");
    assert!(
        w.engine
            .storefront_renewal(&id, "admin:sneaky", "shop")
            .await
            .is_err(),
        "admin refs are reserved"
    );
}

#[tokio::test(start_paused = true)]
async fn an_unrenewed_server_is_reminded_then_expires_at_its_expiry() {
    let (w, id, ip) = ready_world().await;
    let (expires_at, _) = w.sim.term(ip).unwrap();
    // Nothing is due for a ready server until the sweep brings it in.
    assert_eq!(w.store.next_due().await.unwrap(), None);
    let mut reminded_at = None;
    let mut expired_at = None;
    for _ in 0..(24 * 40) {
        w.engine.sweep_terms_once().await.unwrap();
        w.engine.run_due_once().await.unwrap();
        let kinds = notice_kinds(&w).await;
        if reminded_at.is_none() && notices(&kinds, NoticeKind::ExpiryReminder) > 0 {
            reminded_at = Some(w.clock.now());
        }
        if w.order(&id).await.state == OrderState::Expired {
            expired_at = Some(w.clock.now());
            break;
        }
        let step = Duration::from_secs(3600);
        let next = w.store.next_due().await.unwrap();
        let wait = next.map_or(step, |at| at.since(w.clock.now()).min(step));
        w.clock.sleep(wait.max(Duration::from_millis(1))).await;
    }
    let reminded_at = reminded_at.expect("reminded");
    let expired_at = expired_at.expect("expired");
    // The expiry is the start of ExpiryDate: never later than SmartVPS's own lapse.
    let day_start = Timestamp(expires_at.millis() - expires_at.millis() % DAY.as_millis() as i64);
    assert!(expired_at >= day_start, "not before its ExpiryDate");
    assert!(
        expired_at <= day_start.plus(Duration::from_secs(3600)),
        "at its expiry"
    );
    assert!(reminded_at <= day_start.minus(3 * DAY).plus(Duration::from_secs(3600)));
    assert!(reminded_at >= day_start.minus(3 * DAY).minus(Duration::from_secs(3600)));
    let kinds = notice_kinds(&w).await;
    assert_eq!(
        notices(&kinds, NoticeKind::ExpiryReminder),
        1,
        "one reminder"
    );
    assert_eq!(notices(&kinds, NoticeKind::Expired), 1);
    assert_eq!(w.sim.term(ip).unwrap().1, 0, "never renewed unpaid");
    let o = w.order(&id).await;
    assert_eq!(o.server_ip, Some(ip), "history kept");
    assert!(
        w.engine
            .storefront_renewal(&id, "too-late", "shop")
            .await
            .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_service_is_not_renewed_and_ends_terminated() {
    let (w, id, ip) = ready_world().await;
    w.engine
        .cancel_service(&id, "admin:alice", "customer left")
        .await
        .unwrap();
    let err = w
        .engine
        .cancel_service(&id, "admin:alice", " ")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("reason"), "{err}");
    // Near the expiry, the sweep brings it in; no reminder for a cancelled service.
    let (expires_at, _) = w.sim.term(ip).unwrap();
    w.clock.sleep(expires_at.since(w.clock.now())).await;
    w.engine.sweep_terms_once().await.unwrap();
    drive_until(&w, w.clock.now().plus(DAY)).await;
    assert_eq!(w.order(&id).await.state, OrderState::Terminated);
    let kinds = notice_kinds(&w).await;
    assert_eq!(notices(&kinds, NoticeKind::ExpiryReminder), 0);
    assert_eq!(notices(&kinds, NoticeKind::Terminated), 1);
    assert!(
        w.times_of(&id, "Service cancelled by admin:alice: customer left")
            .await
            .len()
            == 1
    );
}

#[tokio::test(start_paused = true)]
async fn an_admin_renewal_needs_a_reason_and_is_on_the_record() {
    let (w, id, ip) = ready_world().await;
    assert!(w.engine.admin_renewal(&id, "alice", "").await.is_err());
    w.engine
        .admin_renewal(&id, "alice", "goodwill month")
        .await
        .unwrap();
    drive_until(&w, w.clock.now().plus(Duration::from_secs(3600))).await;
    assert_eq!(w.sim.term(ip).unwrap().1, 1);
    assert_eq!(
        w.times_of(&id, "Renewal asked for by alice: goodwill month")
            .await
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_renewal_webhook_renews_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock = fast_clock(1000.0);
    let sim = Simulator::new(clock.clone(), 9);
    let pkg = scenario_package(&sim, 11, "103.82.72");
    Scenario::Best.install(&sim, pkg).unwrap();
    let key = Cipher::generate_key();
    let svc = start_service(&dir.path().join("renew.db"), &sim, clock, &key).await;
    let order = json!({ "order_ref": "pay-r1", "package": 11, "ram_gb": 4, "customer": { "email": "ann@example.com", "name": "Ann" }, "os": "ubuntu" });
    let (status, created) = svc.intake(&order).await;
    assert_eq!(status, 201);
    let id = created["id"].as_str().unwrap().to_string();
    let done = svc
        .until(&id, Duration::from_secs(30), |v| v["state"] == "ready")
        .await;
    let ip: std::net::Ipv4Addr = done["server_ip"].as_str().unwrap().parse().unwrap();

    let url = format!("{}/api/v1/orders/pay-r1/renewals", svc.api);
    let body = serde_json::to_vec(&json!({ "renewal_ref": "renew-pay-1" })).unwrap();
    let first = signed_post(&svc.http, &url, &body).send().await.unwrap();
    assert_eq!(first.status(), 201);
    let replay = signed_post(&svc.http, &url, &body).send().await.unwrap();
    assert_eq!(
        replay.status(),
        200,
        "a replay is answered, not taken again"
    );
    let unsigned = svc
        .http
        .post(&url)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    let bad = serde_json::to_vec(&json!({ "renewal_ref": "" })).unwrap();
    let refused = signed_post(&svc.http, &url, &bad).send().await.unwrap();
    assert_eq!(refused.status(), 422);

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sim.term(ip).unwrap().1 == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let anything else that might run, run: still one renewal.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = signed_post(&svc.http, &url, &body).send().await.unwrap();
    assert_eq!(again.status(), 200);
    let view: serde_json::Value = again.json().await.unwrap();
    assert_eq!(view["state"], "done", "{view}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sim.term(ip).unwrap().1,
        1,
        "one renewal for one renewal_ref"
    );
    svc.running.stop().await;
}

/// The deterministic renewal simulation: `RENEW_SIM_SERVERS` servers (default 1000) over about
/// a hundred simulated days, renewvps and status faults on, one step in thirty cut off
/// mid-flight (a crash: the lease lapses and another step takes over). Each server is paid for
/// 0, 1 or 2 renewals (some webhooks replayed), each paid before the expiry it extends. At the
/// end: every paid renewal applied upstream exactly as often as the ledger says it was done
/// (once), none unpaid; one given up only after `policy.renew.attempts` definite refusals, with
/// the admins alerted; every server expired, never before its paid-up expiry.
#[tokio::test(start_paused = true)]
async fn simulation_every_paid_renewal_once_none_unpaid_none_expired_while_paid() {
    use futures_util::future::join_all;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    let n: usize = std::env::var("RENEW_SIM_SERVERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let seed: u64 = std::env::var("RENEW_SIM_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(14);
    let mut rng = StdRng::seed_from_u64(seed);
    let w = VirtualWorld::new(RetryPolicy::default(), &[(5, "103.82", (n + 10) as u32)]);
    let mut orders = Vec::with_capacity(n);
    for i in 0..n {
        orders.push(w.accept(&format!("pay-{i}"), 5).await.id);
    }
    w.drive().await;
    let mut servers = Vec::with_capacity(n);
    for id in &orders {
        let o = w.order(id).await;
        assert_eq!(o.state, OrderState::Ready, "{:?}", o.failure);
        servers.push(o.server_ip.unwrap());
    }
    w.sim.set_fault_profile(Some(FaultProfile {
        action_hang: 0.08,
        action_error: 0.05,
        action_server_error: 0.05,
        action_server_error_after_acting: 0.05,
        status_error: 0.03,
        ..FaultProfile::default()
    }));
    // Payments: (when, order index, renewal_ref), each before the expiry it extends.
    let term = 30 * DAY;
    let mut paid = vec![0u32; n];
    let mut arrivals: Vec<(Timestamp, usize, String)> = Vec::new();
    for (i, ip) in servers.iter().enumerate() {
        let (first_expiry, _) = w.sim.term(*ip).unwrap();
        paid[i] = (i % 3) as u32;
        for k in 0..paid[i] {
            let due = first_expiry.plus(term * k);
            let at = due.minus(Duration::from_secs(rng.random_range(86_400..10 * 86_400)));
            let reference = format!("renew-{i}-{k}");
            arrivals.push((at, i, reference.clone()));
            if rng.random_bool(0.3) {
                let replay = at.plus(Duration::from_secs(rng.random_range(1..2 * 86_400)));
                arrivals.push((replay, i, reference));
            }
        }
    }
    arrivals.sort();
    let mut arrivals = arrivals.into_iter().peekable();
    let end = w.clock.now().plus(100 * DAY);
    let mut next_sweep = w.clock.now();
    let (mut steps, mut crashes) = (0usize, 0usize);
    let mut late = Vec::new();
    while w.clock.now() < end {
        let now = w.clock.now();
        while let Some((at, i, reference)) = arrivals.peek().cloned()
            && at <= now
        {
            arrivals.next();
            if let Err(e) = w
                .engine
                .storefront_renewal(&orders[i], &reference, "shop")
                .await
            {
                late.push(format!("{}: {reference} at {at} refused: {e}", orders[i]));
            }
        }
        if now >= next_sweep {
            w.engine.sweep_terms_once().await.unwrap();
            next_sweep = now.plus(Duration::from_secs(3600));
        }
        let claimed = w.engine.claim(64).await.unwrap();
        let mut work = Vec::new();
        for c in claimed {
            steps += 1;
            let cut = rng.random_bool(1.0 / 30.0).then(|| {
                crashes += 1;
                Duration::from_millis(rng.random_range(1..120_000))
            });
            let engine = &w.engine;
            work.push(async move {
                match cut {
                    Some(after) => {
                        let _ = tokio::time::timeout(after, engine.work_one(c)).await;
                    }
                    None => {
                        let _ = engine.work_one(c).await;
                    }
                }
            });
        }
        let worked = !work.is_empty();
        join_all(work).await;
        if worked {
            continue;
        }
        let next = [
            w.store.next_due().await.unwrap(),
            arrivals.peek().map(|a| a.0),
            Some(next_sweep),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap();
        let now = w.clock.now();
        if next > now {
            w.clock.sleep(next.since(now)).await;
        } else {
            // Due but not claimable yet (a crashed step's lease): let virtual time run on.
            w.clock.sleep(Duration::from_secs(1)).await;
        }
    }

    let mut problems = late;
    let mut applied = 0;
    let mut given_up = 0;
    let alerts: std::collections::HashSet<OrderId> = w
        .store
        .due_notices(Timestamp(i64::MAX), usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .filter(|n| n.kind == NoticeKind::AdminRenewalFailed)
        .map(|n| n.order_id)
        .collect();
    for (i, id) in orders.iter().enumerate() {
        let (expires_at, renewed) = w.sim.term(servers[i]).unwrap();
        applied += renewed;
        let renewals = w.store.renewals(id).await.unwrap();
        let done = renewals
            .iter()
            .filter(|r| r.state == RenewalState::Done)
            .count() as u32;
        let failed: Vec<_> = renewals
            .iter()
            .filter(|r| r.state == RenewalState::Failed)
            .collect();
        // Exactly once: what the ledger says is applied is what SmartVPS applied.
        if renewed != done || renewals.len() as u32 != paid[i] {
            problems.push(format!(
                "{id}: {renewed} renewals upstream, {done} done in the ledger, {} taken, {} paid",
                renewals.len(),
                paid[i]
            ));
        }
        // A paid renewal is given up only after definite refusals, with the admins alerted.
        for r in &failed {
            given_up += 1;
            let definite = r
                .result
                .as_deref()
                .is_some_and(|t| t.contains("not renewed after"));
            if !definite || !alerts.contains(id) {
                problems.push(format!(
                    "{id}: renewal {} given up: {:?}",
                    r.renewal_ref, r.result
                ));
            }
        }
        let o = w.order(id).await;
        if o.state != OrderState::Expired {
            problems.push(format!("{id}: {} at the end, not expired", o.state));
            continue;
        }
        let paid_up = Timestamp(expires_at.millis() - expires_at.millis() % DAY.as_millis() as i64);
        let lapsed = w
            .timeline(id)
            .await
            .iter()
            .find(|e| e.message.contains("with no renewal: expired"))
            .map(|e| e.at);
        if lapsed.is_none_or(|at| at < paid_up) {
            problems.push(format!("{id}: expired at {lapsed:?}, paid up to {paid_up}"));
        }
    }
    eprintln!(
        "renewal simulation: {n} servers, seed {seed}, {applied} renewals applied, {given_up} given up after definite refusals (admins alerted), {steps} steps, {crashes} cut off"
    );
    assert!(crashes > 0 && applied > 0);
    assert!(
        given_up * 100 <= applied,
        "refusals are rare: {given_up} given up"
    );
    assert!(
        problems.is_empty(),
        "{} problems, first: {:#?}",
        problems.len(),
        &problems[..problems.len().min(10)]
    );
}
