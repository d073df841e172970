//! `provisioner demo`: the whole job on embedded defaults, no credentials, no set-up.
//!
//! The simulator and the service run in-process on loopback (the real SmartVPS client talks
//! to the simulator over HTTP), SQLite lives in a temporary directory, and time runs `speed`
//! times as fast. One order per seed case, plus one whose purchase times out on our side but
//! completes upstream (the case the seed's blind retries turn into a second server; the late
//! reply settles it), and one whose reply is lost (an admin decides).

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};

use crate::app::{StartOptions, start};
use crate::clock::{Clock, ScaledClock, SystemClock, Timestamp};
use crate::config::Settings;
use crate::crypto::Cipher;
use crate::domain::{OrderId, OrderState, PackageId};
use crate::policy::RetryPolicy;
use crate::policy::plan::format_total;
use crate::simulator::{PackageSpec, Scenario, Simulator};

/// `println!` that ignores a closed stdout (`provisioner demo | head`): the demo's output is
/// for a reader, and one who stopped reading is not an error.
macro_rules! say {
    () => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout());
    }};
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// One demo order and what its scenario expects.
struct Case {
    scenario: Scenario,
    package: PackageId,
    expect_state: OrderState,
    expect_time: Duration,
    expect_servers: usize,
    order_id: Option<OrderId>,
    seen: usize,
}

const SCENARIOS: [(Scenario, u32, &str, OrderState, u64, usize); 6] = [
    (Scenario::Best, 101, "103.82.72", OrderState::Ready, 40, 1),
    // The seed's failing buys hang: each is an unknown outcome, so the next purchase waits for
    // the first one's 10-minute horizon rather than the seed's 2-minute wait (13:10, `plan`'s
    // second summary). The status retries keep the seed's waits.
    (
        Scenario::Moderate,
        102,
        "103.109.18x",
        OrderState::Ready,
        790,
        1,
    ),
    (Scenario::Worst, 103, "103.83.x", OrderState::Ready, 1600, 1),
    // Attempts at 0:00, 10:00 and 20:00; the last one timed out, so the engine waits until its
    // horizon and confirms nothing was bought before declaring failure: 30:00.
    (
        Scenario::CompleteFailure,
        104,
        "45.12.33",
        OrderState::Failed,
        1800,
        0,
    ),
    // The purchase completes 90 s after our 120 s timeout; the connection was kept open, the
    // late reply names the server, and the order is ready with it: one server, no admin.
    (
        Scenario::LateCompletion,
        105,
        "45.12.34",
        OrderState::Ready,
        220,
        1,
    ),
    // The purchase buys a server but answers HTTP 500: nothing names the server, the stock fell,
    // and at the horizon the discovery scan finds exactly one new server of ours in the package
    // (its `error` replies read four times): the order is ready with it, one server, no admin.
    (
        Scenario::LostReply,
        106,
        "45.12.35",
        OrderState::Ready,
        662,
        1,
    ),
];
/// Runs the demo; exit code 0 only if every order ended as its scenario expects. With `keep`,
/// the service then stays up on its database (which is kept) until Ctrl-C, for the dashboard.
///
/// # Errors
/// A speed outside 1 to 100000, or start-up failures.
pub async fn run(speed: f64, keep: bool) -> anyhow::Result<ExitCode> {
    if !speed.is_finite() || !(1.0..=100_000.0).contains(&speed) {
        anyhow::bail!("--speed must be between 1 and 100000; got {speed}");
    }
    let dir = tempfile::Builder::new()
        .prefix("provisioner-demo-")
        .tempdir()
        .context("creating a temporary directory")?;
    let clock: Arc<dyn Clock> = Arc::new(ScaledClock::new(SystemClock.now(), speed));
    let sim = Simulator::new(Arc::clone(&clock), 7);
    let mut cases = Vec::new();
    for (scenario, pid, name, expect_state, secs, servers) in SCENARIOS {
        sim.add_package(PackageSpec::new(pid, name, 50)?);
        scenario.install(&sim, PackageId(pid))?;
        cases.push(Case {
            scenario,
            package: PackageId(pid),
            expect_state,
            expect_time: Duration::from_secs(secs),
            expect_servers: servers,
            order_id: None,
            seen: 0,
        });
    }

    let mut settings = Settings::from_sources(None, &|_| None)?;
    settings.database.url = format!("sqlite://{}", dir.path().join("demo.db").display());
    settings.server.listen = "127.0.0.1:0".parse()?;
    settings.secret_key = Some(Cipher::generate_key());
    settings.worker.engine.poll_interval = Duration::from_millis(200);
    // The demo reads timelines through the admin API, with a token made for this run only.
    let admin_token = crate::crypto::random_token();
    settings.admin.tokens = vec![crate::config::AdminToken {
        name: "demo".into(),
        token: admin_token.clone(),
    }];
    // Orders come in as a storefront's would: signed, with a secret made for this run only.
    let storefront_secret = crate::crypto::random_token();
    settings.storefronts = vec![crate::config::Storefront {
        name: "demo-shop".into(),
        secret: storefront_secret.clone(),
    }];
    let running = start(
        &settings,
        Arc::clone(&clock),
        StartOptions {
            simulator: Some(sim.clone()),
            ..StartOptions::default()
        },
    )
    .await?;
    let api = format!("http://{}", running.addr);
    say!(
        "provisioner demo: service at {api}, SmartVPS simulator at http://{}, time x{speed}",
        running
            .simulator_addr
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    say!(
        "policy: the seed's (buy 3 x 120s, waits 2m/3m; status 3 x 90s, waits 1m/2m; on_unknown = reconcile)\n"
    );

    let http = reqwest::Client::new();
    let start_at = clock.now();
    for case in &mut cases {
        let body = json!({
            "order_ref": format!("demo-{}", case.scenario.name()),
            "package": case.package.0,
            "ram_gb": 4,
            "customer": { "email": format!("{}@example.com", case.scenario.name()), "name": "Demo Customer" },
            "os": "ubuntu",
        });
        let reply: Value = crate::web::storefront::signed_json(
            &http,
            &format!("{api}/api/v1/orders"),
            secrecy::ExposeSecret::expose_secret(&storefront_secret),
            &body,
        )
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
        let id = reply["id"].as_str().context("intake reply has no id")?;
        case.order_id = Some(OrderId::parse(id).map_err(|e| anyhow::anyhow!("{e}"))?);
    }

    // Live progress: every new timeline line of every order, at its simulated time.
    let deadline = start_at.plus(Duration::from_secs(40 * 60));
    let mut finals: HashMap<String, Value> = HashMap::new();
    loop {
        for case in &mut cases {
            let Some(id) = &case.order_id else { continue };
            let view: Value = http
                .get(format!("{api}/api/v1/orders/{id}"))
                .bearer_auth(secrecy::ExposeSecret::expose_secret(&admin_token))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            if let Some(lines) = view["timeline"].as_array() {
                for line in lines.iter().skip(case.seen) {
                    let at = line["at"]
                        .as_str()
                        .and_then(|s| humantime::parse_rfc3339(s).ok());
                    let offset = at
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| Timestamp(d.as_millis() as i64).since(start_at))
                        .unwrap_or_default();
                    say!(
                        "[{:>5}] {:<16} {}",
                        clockface(offset),
                        case.scenario.name(),
                        line["message"].as_str().unwrap_or("")
                    );
                }
                case.seen = lines.len();
            }
            finals.insert(id.to_string(), view);
        }
        let done = cases.iter().all(|c| {
            c.order_id
                .as_ref()
                .and_then(|id| finals.get(id.as_str()))
                .and_then(|v| v["state"].as_str())
                .is_some_and(|s| s.parse::<OrderState>().is_ok_and(|st| !st.is_active()))
        });
        if done || clock.now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    say!();
    say!(
        "{:<17} {:<16} {:>4} {:>6} {:>12} {:>12} {:>11} {:>8}  AS EXPECTED",
        "SCENARIO",
        "STATE",
        "BUYS",
        "STATUS",
        "SIM. TIME",
        "SEED SUMS",
        "SEED SAYS",
        "SERVERS"
    );
    let mut all_ok = true;
    for case in &cases {
        let id = case
            .order_id
            .as_ref()
            .map(OrderId::to_string)
            .unwrap_or_default();
        let view = finals.get(&id).cloned().unwrap_or(Value::Null);
        let state = view["state"].as_str().unwrap_or("?").to_string();
        let created = view["created_at"]
            .as_str()
            .and_then(|s| humantime::parse_rfc3339(s).ok());
        let ended = view["ready_at"]
            .as_str()
            .or(view["updated_at"].as_str())
            .and_then(|s| humantime::parse_rfc3339(s).ok());
        let took = match (created, ended) {
            (Some(a), Some(b)) => b.duration_since(a).unwrap_or_default(),
            _ => Duration::ZERO,
        };
        let servers = sim.purchases_for(&format!("{id}/")).len();
        let tolerance = Duration::from_secs(5).max(Duration::from_secs_f64(0.2 * speed));
        let time_ok = took.abs_diff(case.expect_time) <= tolerance;
        let ok = state == case.expect_state.as_str() && servers == case.expect_servers && time_ok;
        all_ok &= ok;
        let seed = case
            .scenario
            .seed_total()
            .map(|d| format!("~{}", format_total(d)))
            .unwrap_or_else(|| "-".into());
        let sums = case
            .scenario
            .expected_total(&RetryPolicy::default())
            .map(format_total)
            .unwrap_or_else(|| "-".into());
        say!(
            "{:<17} {:<16} {:>4} {:>6} {:>12} {:>12} {:>11} {:>8}  {}",
            case.scenario.name(),
            state,
            view["attempts"]["buy"].as_u64().unwrap_or(0),
            view["attempts"]["status"].as_u64().unwrap_or(0),
            format_total(Duration::from_secs(took.as_secs_f64().round() as u64)),
            sums,
            seed,
            servers,
            if ok {
                "yes".to_string()
            } else {
                format!(
                    "NO (expected {} after {}, {} server(s))",
                    case.expect_state,
                    format_total(case.expect_time),
                    case.expect_servers
                )
            }
        );
    }
    say!();
    say!(
        "SIM. TIME: intake to ready (or to the final state) on the simulated clock. SEED SUMS: the seed's own step"
    );
    say!(
        "figures added up, as if every failure were definite (`plan`'s first summary). SEED SAYS: its prose estimate."
    );
    say!(
        "The seed's failing buyVps calls time out, and a timed-out purchase may still complete at SmartVPS: no"
    );
    say!(
        "\"nothing was bought\" verdict comes before policy.buy.horizon (10 min) has passed since it was sent, so the"
    );
    say!(
        "buy retries of moderate, worst and complete_failure wait for it (`provisioner plan` shows both sums)."
    );
    say!(
        "late_completion: the seed's literal retry would have bought a second server; the late reply on the open"
    );
    say!(
        "connection named the server, and the order was delivered with it. lost_reply: the reply was lost, the stock"
    );
    say!(
        "fell, and at the horizon a scan of the package found the one new server of ours: delivered, no admin."
    );
    let resolved = resolve_lost_reply(&http, &api, &admin_token, &cases, &finals, &clock).await;
    all_ok &= resolved.unwrap_or_else(|e| {
        say!("\nthe admin's resolution of lost_reply failed: {e:#}");
        false
    });
    if all_ok {
        say!("\ndemo OK: every order ended as its scenario expects");
    } else {
        say!("\ndemo FAILED: some order did not end as its scenario expects");
    }
    if keep {
        let db = dir.keep();
        say!("\n--keep: the service keeps running on its database; Ctrl-C stops it.");
        say!("  dashboard:   {api}/admin");
        say!(
            "  admin token: {}   (sign in with it; the API takes it as a Bearer token)",
            secrecy::ExposeSecret::expose_secret(&admin_token)
        );
        say!("  database:    sqlite://{}", db.join("demo.db").display());
        say!("  orders:      provisioner orders list --api {api} --token <admin token>");
        crate::app::wait_for_signal().await;
        say!("stopping; the database stays at {}", db.display());
    }
    running.stop().await;
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// When the scan could not settle the lost reply on its own (it normally does), what an admin
/// does with the order that needs attention: adopts the server the discovery scan found for it
/// (one click on the dashboard), on the record, and the order goes on to ready. Whether it came
/// out ready.
async fn resolve_lost_reply(
    http: &reqwest::Client,
    api: &str,
    token: &secrecy::SecretString,
    cases: &[Case],
    finals: &HashMap<String, Value>,
    clock: &Arc<dyn Clock>,
) -> anyhow::Result<bool> {
    let token = secrecy::ExposeSecret::expose_secret(token);
    let Some(id) = cases
        .iter()
        .find(|c| c.scenario == Scenario::LostReply)
        .and_then(|c| c.order_id.clone())
    else {
        return Ok(true);
    };
    let view = finals.get(id.as_str()).cloned().unwrap_or(Value::Null);
    if view["state"] == "ready" {
        say!("\nlost_reply was settled by the discovery scan: nothing for an admin to resolve");
        return Ok(true);
    }
    if view["state"] != "needs_attention" {
        say!(
            "\nlost_reply is {} rather than needs_attention: nothing for an admin to resolve",
            view["state"]
        );
        return Ok(false);
    }
    let seen = view["timeline"].as_array().map_or(0, Vec::len);
    let candidate = view["candidates"]
        .as_array()
        .and_then(|c| c.first())
        .and_then(|c| c["ip"].as_str())
        .map(str::to_string);
    let body = match &candidate {
        Some(ip) => json!({
            "action": "adopt",
            "ip": ip,
            "reason": "the server the discovery scan found is the one this order bought",
        }),
        None => json!({
            "action": "fail",
            "reason": "no candidate server was found; refund the customer",
        }),
    };
    say!(
        "\nAn admin resolves lost_reply: {}",
        match &candidate {
            Some(ip) => format!("adopts {ip}, the server the discovery scan found"),
            None => "no candidate was found, so it is failed".to_string(),
        }
    );
    http.post(format!("{api}/api/v1/orders/{id}/resolve"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?
        .error_for_status()?;
    let deadline = clock.now().plus(Duration::from_secs(10 * 60));
    let mut shown = seen;
    loop {
        let view: Value = http
            .get(format!("{api}/api/v1/orders/{id}"))
            .bearer_auth(token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        if let Some(lines) = view["timeline"].as_array() {
            for line in lines.iter().skip(shown) {
                say!(
                    "        {:<16} {}",
                    "lost_reply",
                    line["message"].as_str().unwrap_or("")
                );
            }
            shown = lines.len();
        }
        let state = view["state"].as_str().unwrap_or("?").to_string();
        let settled = state == "ready" || state == "failed";
        if settled || clock.now() > deadline {
            let ok = state
                == if candidate.is_some() {
                    "ready"
                } else {
                    "failed"
                };
            say!(
                "lost_reply is now {state}{}",
                if ok {
                    " (resolved by an admin, on the record)"
                } else {
                    ""
                }
            );
            return Ok(ok);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn clockface(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}", s / 60, s % 60)
}
