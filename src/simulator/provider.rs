//! The simulator called in-process: a [`Provider`] whose calls take their latency in clock time,
//! bounded by the caller's timeout, exactly as an HTTP call with that timeout would be.

use std::net::Ipv4Addr;
use std::time::Duration;

use async_trait::async_trait;

use super::script::ActionEffect;
use super::{BuyReply, Simulator, StatusReply};
use crate::domain::{PackageName, RamGb};
use crate::provider::{
    CallContext, Command, LateReply, Outcome, Provider, ServerStatus, StockEntry,
};

/// The in-process SmartVPS. Cheap to clone; clones share the world.
#[derive(Clone, Debug)]
pub struct SimProvider {
    sim: Simulator,
}

impl SimProvider {
    /// A provider on `sim`'s world.
    pub fn new(sim: Simulator) -> Self {
        Self { sim }
    }

    /// The world behind it.
    pub fn simulator(&self) -> &Simulator {
        &self.sim
    }

    /// Waits `latency` of clock time if it fits in `timeout`; otherwise waits `timeout` and
    /// says so, as a client's timeout would.
    async fn wait(&self, latency: Duration, timeout: Duration) -> Result<(), String> {
        let clock = self.sim.clock();
        if latency <= timeout {
            clock.sleep(latency).await;
            Ok(())
        } else {
            clock.sleep(timeout).await;
            Err(format!(
                "timeout after {}",
                humantime::format_duration(timeout)
            ))
        }
    }
}

/// A buyvps reply as the client would classify it.
fn buy_outcome(reply: BuyReply, latency: Duration) -> Outcome<Ipv4Addr> {
    match reply {
        BuyReply::Success(ip) => Outcome::Succeeded(ip),
        BuyReply::Error => Outcome::Rejected("error".into()),
        BuyReply::ServerError => Outcome::Unknown("HTTP 500 Internal Server Error".into()),
        BuyReply::Garbled(n) => Outcome::Unknown(garbled(n)),
        BuyReply::NoReply => Outcome::Unknown(format!(
            "no reply: the connection closed after {}",
            humantime::format_duration(latency)
        )),
    }
}

/// What a garbled reply looks like in-process (the HTTP server sends the bytes themselves).
fn garbled(n: u64) -> String {
    format!("garbled 2xx reply: {:?}", super::http::garbled_body(n))
}

#[async_trait]
impl Provider for SimProvider {
    async fn ipstock(&self, timeout: Duration) -> Outcome<Vec<StockEntry>> {
        let latency = self.sim.begin_ipstock();
        match self.wait(latency, timeout).await {
            Ok(()) => Outcome::Succeeded(self.sim.stock()),
            Err(why) => Outcome::Unknown(why),
        }
    }

    async fn buy(
        &self,
        ctx: &CallContext,
        package: &PackageName,
        ram: RamGb,
        timeout: Duration,
    ) -> Outcome<Ipv4Addr> {
        // Registered upstream now: dropping `pending` (timeout, or this future dropped) leaves
        // the purchase to complete on its own.
        let pending = self
            .sim
            .begin_buy(package.as_str(), ram.get(), ctx.request_id());
        let latency = pending.latency();
        if let Err(why) = self.wait(latency, timeout).await {
            return Outcome::Unknown(why);
        }
        buy_outcome(pending.finish(), latency)
    }

    async fn buy_listening(
        &self,
        ctx: &CallContext,
        package: &PackageName,
        ram: RamGb,
        timeout: Duration,
        listen: Duration,
    ) -> (Outcome<Ipv4Addr>, Option<LateReply>) {
        let pending = self
            .sim
            .begin_buy(package.as_str(), ram.get(), ctx.request_id());
        let latency = pending.latency();
        let clock = self.sim.clock().clone();
        if latency <= timeout {
            clock.sleep(latency).await;
            return (buy_outcome(pending.finish(), latency), None);
        }
        clock.sleep(timeout).await;
        let outcome = Outcome::Unknown(format!(
            "timeout after {}",
            humantime::format_duration(timeout)
        ));
        // The connection stays open: the reply comes at its latency if that is within the
        // listening window; otherwise the caller hangs up when the window closes (and the
        // purchase, if any, still completes upstream).
        let listen = listen.max(timeout);
        let late = LateReply::new(async move {
            if latency > listen {
                clock.sleep(listen - timeout).await;
                drop(pending);
                return None;
            }
            clock.sleep(latency - timeout).await;
            Some(buy_outcome(pending.finish(), latency))
        });
        (outcome, Some(late))
    }

    async fn status(
        &self,
        _ctx: &CallContext,
        ip: Ipv4Addr,
        timeout: Duration,
    ) -> Outcome<ServerStatus> {
        let pending = self.sim.begin_status(Some(ip));
        if let Err(why) = self.wait(pending.latency(), timeout).await {
            return Outcome::Unknown(why);
        }
        match pending.finish() {
            StatusReply::Fields(fields) => Outcome::Succeeded(fields.to_server_status()),
            StatusReply::Error => Outcome::Rejected("error".into()),
            StatusReply::ServerError => Outcome::Unknown("HTTP 500 Internal Server Error".into()),
        }
    }

    async fn command(
        &self,
        _ctx: &CallContext,
        ip: Ipv4Addr,
        command: Command,
        timeout: Duration,
    ) -> Outcome<()> {
        let ticket = self
            .sim
            .begin_action(command.endpoint(), Some(ip), command_os(command));
        if let Err(why) = self.wait(ticket.latency, timeout).await {
            return Outcome::Unknown(why);
        }
        match ticket.effect {
            ActionEffect::Done => Outcome::Succeeded(()),
            ActionEffect::ErrorReply => Outcome::Rejected("error".into()),
            ActionEffect::ServerError | ActionEffect::ServerErrorAfterActing => {
                Outcome::Unknown("HTTP 500 Internal Server Error".into())
            }
        }
    }
}

/// The `os` field a command sends.
fn command_os(command: Command) -> Option<&'static str> {
    match command {
        Command::ChangeOs(os) => Some(os.code()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::{Clock, ScaledClock, Timestamp};
    use crate::domain::{OrderId, PackageId};
    use crate::simulator::{
        BuyEffect, BuyStep, FaultProfile, PackageSpec, StatusEffect, StatusStep,
    };

    const P5: PackageId = PackageId(5);
    const TIMEOUT: Duration = Duration::from_secs(120);

    fn world(seed: u64) -> (Simulator, SimProvider, Arc<dyn Clock>) {
        let clock: Arc<dyn Clock> = Arc::new(ScaledClock::virtual_at_epoch());
        let sim = Simulator::with_default_catalog(clock.clone(), seed);
        let provider = sim.provider();
        (sim, provider, clock)
    }

    fn name(s: &str) -> PackageName {
        PackageName::parse(s).unwrap()
    }

    fn ram(gb: i64) -> RamGb {
        RamGb::parse(gb).unwrap()
    }

    fn ctx(order: &OrderId, attempt: u32) -> CallContext {
        CallContext::for_order(order, attempt)
    }

    #[tokio::test(start_paused = true)]
    async fn a_listening_buyer_hears_the_late_reply_within_the_window_and_not_after() {
        let (sim, p, clock) = world(1);
        let window = Duration::from_secs(600);
        sim.script_buy(
            P5,
            [
                BuyStep::succeed(Duration::from_secs(210)),
                BuyStep::succeed(Duration::from_secs(900)),
            ],
        )
        .unwrap();
        let order = OrderId::new();
        let t0 = clock.now();
        let (out, late) = p
            .buy_listening(&ctx(&order, 1), &name("103.82.72"), ram(4), TIMEOUT, window)
            .await;
        assert!(
            matches!(&out, Outcome::Unknown(why) if why == "timeout after 2m"),
            "{out:?}"
        );
        assert_eq!(clock.now(), t0.plus(TIMEOUT));
        let reply = late.expect("the connection stays open").wait().await;
        let Some(Outcome::Succeeded(ip)) = reply else {
            panic!("{reply:?}")
        };
        assert_eq!(
            clock.now(),
            t0.plus(Duration::from_secs(210)),
            "heard when it completed"
        );
        assert_eq!(sim.purchases_for(&format!("{order}/"))[0].ip, ip);

        // A purchase slower than the window: the listener hangs up at the window's end, and
        // the purchase still completes upstream.
        let t1 = clock.now();
        let (_, late) = p
            .buy_listening(&ctx(&order, 2), &name("103.82.72"), ram(4), TIMEOUT, window)
            .await;
        assert_eq!(late.unwrap().wait().await, None);
        assert_eq!(clock.now(), t1.plus(window));
        clock.sleep(Duration::from_secs(300)).await;
        assert_eq!(sim.purchases_for(&format!("{order}/2")).len(), 1);

        // A call that answers within its timeout has nothing to listen for.
        sim.script_buy(P5, [BuyStep::succeed(Duration::from_secs(30))])
            .unwrap();
        let (out, late) = p
            .buy_listening(&ctx(&order, 3), &name("103.82.72"), ram(4), TIMEOUT, window)
            .await;
        assert!(matches!(out, Outcome::Succeeded(_)) && late.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_buy_is_unknown_at_the_timeout_and_completes_upstream_later() {
        let (sim, p, clock) = world(1);
        sim.script_buy(P5, [BuyStep::succeed(Duration::from_secs(210))])
            .unwrap();
        let order = OrderId::new();
        let t0 = clock.now();
        let out = p
            .buy(&ctx(&order, 1), &name("103.82.72"), ram(4), TIMEOUT)
            .await;
        assert!(
            matches!(&out, Outcome::Unknown(why) if why == "timeout after 2m"),
            "{out:?}"
        );
        assert_eq!(
            clock.now(),
            t0.plus(TIMEOUT),
            "gave up at exactly the timeout"
        );
        assert!(
            sim.purchases().is_empty(),
            "not completed yet at the timeout"
        );
        assert_eq!(sim.pending_purchases(), 1);
        assert_eq!(sim.free(P5), Some(71));

        clock.sleep(Duration::from_secs(90)).await;
        let bought = sim.purchases_for(&format!("{order}/"));
        assert_eq!(bought.len(), 1);
        assert_eq!(bought[0].completed_at, t0.plus(Duration::from_secs(210)));
        assert_eq!(
            bought[0].request_id.as_deref(),
            Some(format!("{order}/1").as_str())
        );
        assert!(name("103.82.72").contains(bought[0].ip));
        assert_eq!(sim.free(P5), Some(70));
        // The server is ours and status knows it.
        let st = p
            .status(&CallContext::default(), bought[0].ip, TIMEOUT)
            .await;
        assert!(matches!(st, Outcome::Succeeded(s) if s.credentials(bought[0].ip).is_some()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_caller_does_not_stop_the_purchase() {
        let (sim, p, clock) = world(1);
        let order = OrderId::new();
        let (c, n) = (ctx(&order, 1), name("103.82.72"));
        let call = p.buy(&c, &n, ram(2), TIMEOUT);
        // The worker "crashes" 5 s into the 30 s call.
        assert!(
            tokio::time::timeout(Duration::from_secs(5), call)
                .await
                .is_err()
        );
        assert!(sim.purchases().is_empty());
        clock.sleep(Duration::from_secs(25)).await;
        assert_eq!(sim.purchases_for(&format!("{order}/")).len(), 1);
        assert_eq!(sim.free(P5), Some(70));
    }

    #[tokio::test(start_paused = true)]
    async fn a_normal_buy_takes_its_latency_and_decrements_stock() {
        let (sim, p, clock) = world(1);
        let t0 = clock.now();
        let mut ips = Vec::new();
        for attempt in 1..=3 {
            match p
                .buy(
                    &ctx(&OrderId::new(), attempt),
                    &name("103.82.72"),
                    ram(4),
                    TIMEOUT,
                )
                .await
            {
                Outcome::Succeeded(ip) => ips.push(ip),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(clock.now(), t0.plus(Duration::from_secs(90)));
        assert_eq!(sim.free(P5), Some(68));
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 3, "addresses are unique");
        assert_eq!(sim.calls().buy, 3);
        assert_eq!(sim.take_stock(P5, 100).unwrap(), 68);
        assert_eq!(sim.free(P5), Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn an_exhausted_package_hands_out_another_packages_address() {
        let (sim, p, _) = world(1);
        // Package 17 (103.56.161) starts with no stock.
        let out = p
            .buy(
                &ctx(&OrderId::new(), 1),
                &name("103.56.161"),
                ram(4),
                TIMEOUT,
            )
            .await;
        let Outcome::Succeeded(ip) = out else {
            panic!("SmartVPS still says success: {out:?}")
        };
        assert!(
            !name("103.56.161").contains(ip),
            "{ip} came from another package"
        );
        let rec = &sim.purchases()[0];
        assert!(rec.from_other_package);
        assert_eq!(rec.package, PackageId(17));
        let source = sim
            .stock()
            .into_iter()
            .find(|s| s.id == rec.address_package)
            .unwrap();
        assert!(source.name.unwrap().contains(ip));

        // The quirk when scripted: other resellers exhaust the package at that moment.
        sim.script_buy(
            P5,
            [BuyStep::new(
                Duration::from_secs(30),
                BuyEffect::SucceedInOtherPackage,
            )],
        )
        .unwrap();
        let Outcome::Succeeded(ip) = p
            .buy(
                &ctx(&OrderId::new(), 1),
                &name("103.82.72"),
                ram(4),
                TIMEOUT,
            )
            .await
        else {
            panic!()
        };
        assert!(!name("103.82.72").contains(ip));
        assert_eq!(
            sim.free(P5),
            Some(0),
            "the asked-for package ran dry (other resellers), which is when SmartVPS does this"
        );

        // No stock anywhere: a plain error, nothing bought.
        for s in sim.stock() {
            sim.set_free(s.id, 0).unwrap();
        }
        let out = p
            .buy(
                &ctx(&OrderId::new(), 1),
                &name("103.82.72"),
                ram(4),
                TIMEOUT,
            )
            .await;
        assert_eq!(out, Outcome::Rejected("error".into()));
        assert_eq!(sim.purchases().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn addresses_stay_inside_the_package_prefix() {
        let (sim, p, _) = world(9);
        for s in default_catalog_active() {
            sim.set_defaults(
                s.id,
                crate::simulator::PackageDefaults {
                    buy_latency: Duration::ZERO,
                    ..Default::default()
                },
            )
            .unwrap();
            let free = sim.free(s.id).unwrap();
            for _ in 0..free.min(40) {
                let out = p
                    .buy(&CallContext::default(), &s.name, ram(1), TIMEOUT)
                    .await;
                let Outcome::Succeeded(ip) = out else {
                    panic!("{out:?}")
                };
                assert!(s.name.contains(ip), "{ip} outside {}", s.name);
            }
        }
        let servers = sim.servers();
        assert_eq!(servers.len(), sim.purchases().len());
        assert!(sim.purchases().iter().all(|r| !r.from_other_package));
    }

    fn default_catalog_active() -> Vec<PackageSpec> {
        crate::simulator::default_catalog()
            .into_iter()
            .filter(|s| s.active && s.free > 0)
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_or_inactive_package_is_rejected_at_once() {
        let (sim, p, clock) = world(1);
        let t0 = clock.now();
        for n in ["10.9.8", "103.121.18"] {
            let out = p
                .buy(&CallContext::default(), &name(n), ram(1), TIMEOUT)
                .await;
            assert_eq!(out, Outcome::Rejected("error".into()));
        }
        assert_eq!(clock.now(), t0);
        assert_eq!(sim.calls().buy, 2);
        assert!(sim.script_buy(PackageId(999), []).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn credentials_appear_after_the_build_time() {
        let (sim, p, clock) = world(1);
        sim.set_build_time(P5, Duration::from_secs(300)).unwrap();
        let Outcome::Succeeded(ip) = p
            .buy(&CallContext::default(), &name("103.82.72"), ram(8), TIMEOUT)
            .await
        else {
            panic!()
        };
        let bought_at = clock.now();
        let Outcome::Succeeded(st) = p
            .status(&CallContext::default(), ip, Duration::from_secs(90))
            .await
        else {
            panic!()
        };
        assert!(st.credentials(ip).is_none());
        assert_eq!(st.action.as_deref(), Some("pending"));
        clock.sleep(Duration::from_secs(280)).await;
        let Outcome::Succeeded(st) = p
            .status(&CallContext::default(), ip, Duration::from_secs(90))
            .await
        else {
            panic!()
        };
        // Asked at bought_at + 290 s, answered at +300 s: the reply reflects the reply's moment.
        assert_eq!(clock.now(), bought_at.plus(Duration::from_secs(300)));
        let creds = st.credentials(ip).expect("built by now");
        assert_eq!(creds.username, "root");
        let info = sim.server(ip).unwrap();
        assert_eq!(
            creds.expose_password(),
            secrecy::ExposeSecret::expose_secret(&info.password)
        );
        assert_eq!(creds.expose_password().len(), 16);
        assert_eq!(st.ram.as_deref(), Some("8GB"));
        // An address that is not ours: `error`.
        let out = p
            .status(
                &CallContext::default(),
                Ipv4Addr::new(1, 2, 3, 4),
                Duration::from_secs(90),
            )
            .await;
        assert!(
            matches!(&out, Outcome::Rejected(e) if e == "error"),
            "{out:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn scripted_buy_effects() {
        let (sim, p, clock) = world(1);
        let s = Duration::from_secs(30);
        sim.script_buy(
            P5,
            [
                BuyStep::new(s, BuyEffect::ErrorReply),
                BuyStep::new(s, BuyEffect::ServerError),
                BuyStep::new(s, BuyEffect::Garbled),
                BuyStep::new(s, BuyEffect::NoEffect),
                BuyStep::new(s, BuyEffect::ServerErrorAfterBuying),
            ],
        )
        .unwrap();
        let mut kinds = Vec::new();
        for _ in 0..5 {
            let out = p
                .buy(&CallContext::default(), &name("103.82.72"), ram(1), TIMEOUT)
                .await;
            kinds.push(out.kind());
        }
        assert_eq!(
            kinds,
            ["rejected", "unknown", "unknown", "unknown", "unknown"]
        );
        assert_eq!(
            sim.purchases().len(),
            1,
            "only the 500-after-buying bought a server"
        );
        assert_eq!(sim.free(P5), Some(70));
        assert_eq!(
            clock.now().since(Timestamp(1_767_225_600_000)),
            Duration::from_secs(150)
        );

        sim.script_status(
            P5,
            [
                StatusStep::new(Duration::from_secs(5), StatusEffect::ErrorReply),
                StatusStep::new(Duration::from_secs(5), StatusEffect::ServerError),
                StatusStep::hang(Duration::from_secs(600)),
            ],
        )
        .unwrap();
        let ip = sim.purchases()[0].ip;
        let t = Duration::from_secs(90);
        assert_eq!(
            p.status(&CallContext::default(), ip, t).await.kind(),
            "rejected"
        );
        assert_eq!(
            p.status(&CallContext::default(), ip, t).await.kind(),
            "unknown"
        );
        let before = clock.now();
        let out = p.status(&CallContext::default(), ip, t).await;
        assert!(
            matches!(&out, Outcome::Unknown(w) if w == "timeout after 1m 30s"),
            "{out:?}"
        );
        assert_eq!(clock.now(), before.plus(t));
        assert_eq!(
            p.status(&CallContext::default(), ip, t).await.kind(),
            "succeeded"
        );
        assert_eq!(sim.calls().status, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn ipstock_is_instant_and_lists_the_catalog() {
        let (sim, p, clock) = world(1);
        let t0 = clock.now();
        let Outcome::Succeeded(stock) = p.ipstock(Duration::from_secs(30)).await else {
            panic!()
        };
        assert_eq!(clock.now(), t0);
        assert_eq!(stock.len(), 7);
        assert!(stock.iter().any(|s| s.id == P5 && s.free == 71 && s.active));
        sim.set_ipstock_latency(Duration::from_secs(60));
        assert_eq!(p.ipstock(Duration::from_secs(30)).await.kind(), "unknown");
        assert_eq!(sim.calls().ipstock, 2);
    }

    /// Drives a fixed call sequence against a hostile world and writes down everything seen.
    async fn transcript(seed: u64) -> Vec<String> {
        let (sim, p, clock) = world(seed);
        sim.set_fault_profile(Some(FaultProfile::hostile()));
        let mut lines = Vec::new();
        for i in 0..30u32 {
            let pkg = ["103.82.72", "103.109.18x", "103.83.x", "45.117"][i as usize % 4];
            let out = p
                .buy(
                    &ctx(
                        &OrderId::parse("0190c000-0000-7000-8000-000000000000").unwrap(),
                        i,
                    ),
                    &name(pkg),
                    ram(2),
                    TIMEOUT,
                )
                .await;
            lines.push(format!("{} buy {pkg}: {out:?}", clock.now()));
            if let Outcome::Succeeded(ip) = out {
                let st = p
                    .status(&CallContext::default(), ip, Duration::from_secs(90))
                    .await;
                let creds = match &st {
                    Outcome::Succeeded(s) => {
                        s.credentials(ip).map(|c| c.expose_password().to_string())
                    }
                    _ => None,
                };
                lines.push(format!(
                    "{} status {ip}: {} {creds:?}",
                    clock.now(),
                    st.kind()
                ));
            }
            clock.sleep(Duration::from_secs(60)).await;
        }
        for r in sim.purchases() {
            lines.push(format!("{r:?}"));
        }
        lines.push(format!("{:?} {:?}", sim.calls(), sim.stock()));
        lines
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_seed_gives_the_same_world() {
        let a = transcript(42).await;
        let b = transcript(42).await;
        assert_eq!(a, b);
        let c = transcript(43).await;
        assert_ne!(a, c, "another seed, another world");
        // The hostile profile really did throw faults at us.
        assert!(a.iter().any(|l| l.contains("Unknown")));
        assert!(a.iter().any(|l| l.contains("Succeeded")));
    }
}
