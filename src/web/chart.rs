//! The timing chart on an order's dashboard page: every buyVps and status attempt as a bar on a
//! time axis from the order's creation, and what came between them, so the seed's timing (120 s
//! timeouts, waits of 2 and 3 minutes, ...) can be seen at a glance.
//!
//! Pure: built from the order, its timeline and its ledger. Attempts are found by the engine's
//! own lines: "Calling buyVps - attempt" for a purchase sent, "Checking stock for buyVps -
//! attempt" for one refused before sending (sold out, inactive, stock unreadable: drawn with
//! that kind), "Calling status - attempt". A bar ends when the next line was written (the
//! call's reply), or for purchases when the ledger recorded the outcome.
//!
//! What lies between attempts is drawn as what it is: the policy's wait (a strategic delay was
//! announced), a reconcile window (after an unknown outcome), time stopped until an admin acted,
//! or time the order was not worked (another order's purchase of the package in flight, a
//! worker stopped). A purchase cut off by a restart is drawn as such, not as a wait; only a
//! wait still ahead is "waiting now". An order stopped for an admin says since when, in words.

use crate::clock::Timestamp;
use crate::domain::{EntryKind, Order, OrderState, Purchase, PurchaseOutcome, TimelineEntry};

/// Left margin for the row labels, in pixels.
const LEFT: i64 = 80;
/// Width of the time axis, in pixels.
const AXIS: i64 = 840;
/// Bar height.
const BAR_H: i64 = 22;
/// The rows' top edges: buy, then status.
const ROWS: [i64; 2] = [16, 52];
/// Where the axis line is drawn.
const AXIS_Y: i64 = 88;

/// One rectangle of the chart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bar {
    /// Left edge (px).
    pub x: i64,
    /// Top edge (px).
    pub y: i64,
    /// Width (px), at least 2 so an instant is visible.
    pub w: i64,
    /// Height (px).
    pub h: i64,
    /// CSS class: `ok`, `rejected`, `unknown`, `failed`, `inflight`, `refused` (not sent),
    /// `restart` (a purchase cut off by a restart), `wait` (the policy's delay), `reconcile`
    /// (after an unknown outcome), `idle` (stopped until an admin acted), `gap` (not worked),
    /// `planned` (the wait in progress).
    pub class: &'static str,
    /// Hover text: what and when.
    pub title: String,
    /// Short label drawn in the bar when it is wide enough.
    pub label: String,
}

/// A labelled tick on the time axis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tick {
    /// Position (px).
    pub x: i64,
    /// Offset from the order's creation, e.g. `4:00`.
    pub label: String,
}

/// The chart, ready for the template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chart {
    /// Total width (px).
    pub width: i64,
    /// Total height (px).
    pub height: i64,
    /// Bars, in time order.
    pub bars: Vec<Bar>,
    /// Axis ticks.
    pub ticks: Vec<Tick>,
    /// The axis line's y.
    pub axis_y: i64,
    /// The axis line's right end.
    pub axis_end: i64,
    /// Row label positions: (y of the label baseline, text).
    pub rows: Vec<(i64, &'static str)>,
    /// The time span shown, e.g. `7:10`.
    pub span: String,
    /// For an order stopped until an admin acts: since when, in words (not drawn, so that days
    /// of waiting do not squash the attempts).
    pub stopped: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Row {
    Buy,
    Status,
    /// The install of the ordered OS before delivery (changeos, then the wait for the image).
    Install,
}

struct Segment {
    row: Row,
    start: Timestamp,
    end: Timestamp,
    class: &'static str,
    what: String,
}

/// Offset `t - origin` as `m:ss` (or `h:mm:ss` past an hour).
pub fn offset_label(origin: Timestamp, t: Timestamp) -> String {
    let s = t.since(origin).as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

fn outcome_class(p: Option<&Purchase>) -> &'static str {
    match p.and_then(|p| p.outcome.as_ref()) {
        Some(PurchaseOutcome::Succeeded { .. }) => "ok",
        Some(PurchaseOutcome::Rejected { .. }) => "rejected",
        Some(PurchaseOutcome::Unknown { .. }) => "unknown",
        None => "inflight",
    }
}

/// The kind of a refusal before sending, from its timeline line.
fn refusal_kind(line: &str) -> &'static str {
    if line.contains(crate::engine::buy::STOCK_UNREADABLE) {
        "stock unreadable"
    } else if line.contains("sold out") {
        "sold out"
    } else if line.contains("not active") {
        "inactive"
    } else {
        "refused"
    }
}

fn human(d: std::time::Duration) -> String {
    crate::clock::human_duration(d)
}

/// Builds the chart. `now` ends a bar whose call has not returned yet.
pub fn build(
    order: &Order,
    timeline: &[TimelineEntry],
    purchases: &[Purchase],
    now: Timestamp,
) -> Chart {
    let origin = order.created_at;
    let mut segments: Vec<Segment> = Vec::new();
    let mut buys = 0usize;
    for (i, e) in timeline.iter().enumerate() {
        let next = timeline.get(i + 1);
        let (row, sent) = if e.message.contains("Calling buyVps - attempt") {
            (Row::Buy, true)
        } else if e.message.contains("Checking stock for buyVps - attempt") {
            (Row::Buy, false)
        } else if e.message.contains("Calling status - attempt") {
            (Row::Status, true)
        } else {
            continue;
        };
        let attempt = e
            .message
            .split("attempt ")
            .nth(1)
            .unwrap_or("")
            .trim()
            .to_string();
        let (end, class, what) = match (row, sent) {
            (Row::Buy, true) => {
                let purchase = purchases.get(buys);
                buys += 1;
                let end = purchase
                    .and_then(|p| p.decided_at)
                    .or_else(|| next.map(|n| n.at))
                    .unwrap_or(now);
                let cut_off = purchase.is_some_and(|p| {
                    matches!(&p.outcome, Some(PurchaseOutcome::Unknown { reason }) if reason == crate::engine::buy::NO_REPLY_RECORDED)
                });
                if cut_off {
                    (
                        end,
                        "restart",
                        format!(
                            "buyVps attempt {attempt} (cut off by a restart: no reply recorded, outcome unknown until the next worker took over)"
                        ),
                    )
                } else {
                    let class = outcome_class(purchase);
                    (end, class, format!("buyVps attempt {attempt} ({class})"))
                }
            }
            (Row::Buy, false) => match next {
                Some(n) if n.message.contains("not sent") => (
                    n.at,
                    "refused",
                    format!(
                        "buyVps attempt {attempt} (not sent: {}; nothing was bought)",
                        refusal_kind(&n.message)
                    ),
                ),
                _ => (
                    next.map_or(now, |n| n.at),
                    "inflight",
                    format!("buyVps attempt {attempt} (reading stock)"),
                ),
            },
            (Row::Status | Row::Install, _) => {
                let end = next.map_or(now, |n| n.at);
                let class = match next {
                    None => "inflight",
                    Some(n) if n.message.contains("status succeeded") => "ok",
                    Some(_) => "failed",
                };
                (end, class, format!("status attempt {attempt} ({class})"))
            }
        };
        segments.push(Segment {
            row,
            start: e.at,
            end: end.max(e.at),
            class,
            what,
        });
    }
    // Between attempts, in the row of the attempt they lead to.
    let mut gaps = Vec::new();
    for pair in segments.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if b.start <= a.end {
            continue;
        }
        let in_gap = |pred: &dyn Fn(&TimelineEntry) -> bool| {
            timeline
                .iter()
                .any(|e| e.at >= a.end && e.at <= b.start && pred(e))
        };
        let long = human(b.start.since(a.end));
        let (class, what) = if in_gap(&|e| e.kind == EntryKind::Admin) {
            ("idle", format!("stopped {long}, until an admin acted"))
        } else if matches!(a.class, "unknown" | "restart") {
            (
                "reconcile",
                format!(
                    "reconcile window {long} (the purchase is left to settle, its late reply listened for, before the evidence is read)"
                ),
            )
        } else if in_gap(&|e| e.message.contains(crate::policy::next::STRATEGIC_DELAY)) {
            ("wait", format!("wait {long} (the policy's delay)"))
        } else {
            (
                "gap",
                format!(
                    "not worked for {long} (another order's purchase of the package in flight, or the worker stopped)"
                ),
            )
        };
        gaps.push(Segment {
            row: b.row,
            start: a.end,
            end: b.start,
            class,
            what,
        });
    }
    // The wait the order is in now, until its persisted wake-up time.
    if order.state.is_active()
        && let Some(run_at) = order.run_at
    {
        let from = segments.last().map_or(order.created_at, |s| s.end);
        if run_at > from && run_at > now {
            let reconcile = segments
                .last()
                .is_some_and(|s| matches!(s.class, "unknown" | "restart"));
            gaps.push(Segment {
                row: if order.server_ip.is_some() {
                    Row::Status
                } else {
                    Row::Buy
                },
                start: from,
                end: run_at,
                class: "planned",
                what: format!(
                    "waiting now{}: {} in all, until {}",
                    if reconcile { " (reconcile window)" } else { "" },
                    human(run_at.since(from)),
                    offset_label(origin, run_at)
                ),
            });
        }
    }
    segments.extend(gaps);
    let installs = install_segments(order, timeline, now);
    let install_row = !installs.is_empty();
    segments.extend(installs);
    segments.sort_by_key(|s| (s.start, s.end));
    let stopped = match order.state {
        OrderState::Failed | OrderState::NeedsAttention => Some(format!(
            "Stopped at +{} ({}): waiting for an admin for {}.",
            offset_label(origin, order.updated_at),
            order.state,
            human(now.since(order.updated_at))
        )),
        _ => None,
    };

    let mut last = segments
        .iter()
        .map(|s| s.end)
        .chain([order.updated_at])
        .chain(order.ready_at)
        .max()
        .unwrap_or(origin);
    // At least 10 s, so an instant order still has an axis.
    if last.since(origin).as_millis() < 10_000 {
        last = origin.plus(std::time::Duration::from_secs(10));
    }
    let span_ms = i64::try_from(last.since(origin).as_millis())
        .unwrap_or(i64::MAX)
        .max(1);
    let x_of = |t: Timestamp| LEFT + (t.0 - origin.0).clamp(0, span_ms) * AXIS / span_ms;

    let bars = segments
        .iter()
        .map(|s| {
            let x = x_of(s.start);
            let w = (x_of(s.end) - x).max(2);
            let y = match s.row {
                Row::Buy => ROWS[0],
                Row::Status => ROWS[1],
                Row::Install => ROWS[1] + (ROWS[1] - ROWS[0]),
            };
            let short = match s.class {
                "wait" | "planned" | "reconcile" | "idle" | "gap" => human(s.end.since(s.start)),
                _ => s
                    .what
                    .split(" (")
                    .next()
                    .unwrap_or("")
                    .replace("attempt ", "#"),
            };
            Bar {
                x,
                y,
                w,
                h: BAR_H,
                class: s.class,
                title: format!(
                    "{}: {} → {}",
                    s.what,
                    offset_label(origin, s.start),
                    offset_label(origin, s.end)
                ),
                // About 7 px per character at the chart's font size.
                label: if i64::try_from(short.chars().count()).unwrap_or(i64::MAX) * 7 + 6 <= w {
                    short
                } else {
                    String::new()
                },
            }
        })
        .collect();

    let steps = [
        1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21_600, 43_200, 86_400,
    ];
    let span_s = span_ms / 1000;
    let step = steps
        .into_iter()
        .find(|s| span_s / s <= 10)
        .unwrap_or(86_400);
    let ticks = (0..=span_s / step)
        .map(|k| {
            let t = origin.plus(std::time::Duration::from_secs(
                u64::try_from(k * step).unwrap_or(0),
            ));
            Tick {
                x: x_of(t),
                label: offset_label(origin, t),
            }
        })
        .collect();
    // The install row, when there is one, sits under the status row and pushes the axis down.
    let extra = if install_row { ROWS[1] - ROWS[0] } else { 0 };
    let mut rows = vec![(ROWS[0] + 15, "buyVps"), (ROWS[1] + 15, "status")];
    if install_row {
        rows.push((ROWS[1] + extra + 15, "OS install"));
    }
    Chart {
        width: LEFT + AXIS + 20,
        height: AXIS_Y + extra + 24,
        bars,
        ticks,
        axis_y: AXIS_Y + extra,
        axis_end: LEFT + AXIS,
        rows,
        span: offset_label(origin, last),
        stopped,
    }
}

/// The install of the ordered OS before delivery, from the engine's lines: each changeos call
/// ("Calling changeos for") until its reply, then the install ("Installing") until the image is
/// in ("is installed"), given up, or now. Actions asked for after delivery are not drawn: the
/// chart is the provisioning's timing.
fn install_segments(order: &Order, timeline: &[TimelineEntry], now: Timestamp) -> Vec<Segment> {
    let before_ready = |t: Timestamp| order.ready_at.is_none_or(|r| t <= r);
    let mut out = Vec::new();
    for (i, e) in timeline.iter().enumerate() {
        if !before_ready(e.at) {
            break;
        }
        let next = timeline.get(i + 1);
        if e.message.contains("Calling changeos for") {
            let (class, what) = match next {
                None => ("inflight", "changeos (in flight)"),
                Some(n) if n.message.contains("succeeded") => ("ok", "changeos (succeeded)"),
                Some(n)
                    if n.message.contains("no definite outcome")
                        || n.message.contains("cut off") =>
                {
                    ("unknown", "changeos (outcome unknown: settled by status)")
                }
                Some(_) => ("rejected", "changeos (refused)"),
            };
            out.push(Segment {
                row: Row::Install,
                start: e.at,
                end: next.map_or(now, |n| n.at).max(e.at),
                class,
                what: what.to_string(),
            });
        } else if e.message.starts_with("⏳ Installing") {
            let end = timeline[i + 1..]
                .iter()
                .find(|n| n.message.contains("is installed") || n.message.contains("given up"));
            let (class, what) = match end {
                Some(n) if n.message.contains("is installed") => {
                    ("ok", "install (finished with a new password)")
                }
                Some(_) => ("failed", "install (given up)"),
                None => ("inflight", "install (in progress)"),
            };
            out.push(Segment {
                row: Row::Install,
                start: e.at,
                end: end.map_or(now, |n| n.at).max(e.at),
                class,
                what: what.to_string(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::order::CustomerRequest;
    use crate::domain::{NewOrder, OrderRequest, OrderState, PackageId, PackageName};

    fn order() -> Order {
        let req = OrderRequest {
            order_ref: "r".into(),
            package: 7,
            ram_gb: 2,
            customer: CustomerRequest {
                email: "a@example.com".into(),
                name: "A".into(),
            },
            os: None,
        };
        Order::accept(NewOrder::parse(&req).unwrap(), Timestamp(0))
    }

    fn line(s: i64, m: &str) -> TimelineEntry {
        TimelineEntry {
            at: Timestamp(s * 1000),
            kind: EntryKind::Progress,
            message: m.into(),
        }
    }

    fn purchase(attempt: u32, sent: i64, decided: i64, outcome: PurchaseOutcome) -> Purchase {
        Purchase {
            id: crate::domain::PurchaseId(i64::from(attempt)),
            order_id: crate::domain::OrderId::new(),
            attempt,
            package_id: PackageId(7),
            package_name: PackageName::parse("103.82.72").unwrap(),
            stock_before: Some(5),
            pool_before: Some(500),
            sent_at: Timestamp(sent * 1000),
            outcome: Some(outcome),
            decided_at: Some(Timestamp(decided * 1000)),
            resolution: None,
            late_ip: None,
            stock_after: None,
        }
    }

    /// The seed's moderate case: buy 1 times out at 2:00, waits 2 min; buy 2 at 4:00 takes 30 s;
    /// status 1 times out after 90 s, waits 1 min; status 2 at 7:00 takes 10 s.
    #[test]
    fn the_moderate_case_shows_its_attempts_and_waits_in_place() {
        let mut o = order();
        o.state = OrderState::Ready;
        o.updated_at = Timestamp(430_000);
        o.ready_at = Some(Timestamp(430_000));
        let timeline = [
            line(0, "[SMARTVPS] Calling buyVps - attempt 1/3"),
            line(120, "[SMARTVPS] ❌ buyVps attempt 1 failed: timed out"),
            line(
                120,
                "[SMARTVPS] ⏳ Strategic delay: Waiting 2 minutes before retry...",
            ),
            line(240, "[SMARTVPS] Calling buyVps - attempt 2/3"),
            line(270, "[SMARTVPS] ✅ buyVps succeeded on attempt 2"),
            line(270, "[SMARTVPS] Calling status - attempt 1/3"),
            line(360, "[SMARTVPS] ❌ status attempt 1 failed: timed out"),
            line(
                360,
                "[SMARTVPS] ⏳ Strategic delay: Waiting 1 minute(s) before retry...",
            ),
            line(420, "[SMARTVPS] Calling status - attempt 2/3"),
            line(430, "[SMARTVPS] ✅ status succeeded on attempt 2"),
        ];
        let ledger = [
            purchase(
                1,
                0,
                120,
                PurchaseOutcome::Unknown {
                    reason: "t/o".into(),
                },
            ),
            purchase(
                2,
                240,
                270,
                PurchaseOutcome::Succeeded {
                    ip: "103.82.72.9".parse().unwrap(),
                },
            ),
        ];
        let chart = build(&o, &timeline, &ledger, Timestamp(500_000));
        let summary: Vec<(&str, String)> = chart
            .bars
            .iter()
            .map(|b| {
                (
                    b.class,
                    b.title.split(": ").nth(1).unwrap_or("").to_string(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("unknown", "0:00 → 2:00".to_string()),
                ("reconcile", "2:00 → 4:00".to_string()),
                ("ok", "4:00 → 4:30".to_string()),
                ("failed", "4:30 → 6:00".to_string()),
                ("wait", "6:00 → 7:00".to_string()),
                ("ok", "7:00 → 7:10".to_string()),
            ]
        );
        assert_eq!(chart.span, "7:10");
        // Bars sit on the axis in proportion to time: 4:00 of 7:10 is at 240/430 of the axis.
        let buy2 = &chart.bars[2];
        assert_eq!(buy2.x, LEFT + 240 * AXIS / 430);
        assert_eq!(buy2.y, ROWS[0]);
        assert_eq!(chart.bars[3].y, ROWS[1]);
        assert_eq!(chart.ticks.first().unwrap().label, "0:00");
        assert_eq!(chart.ticks[1].label, "1:00");
    }

    #[test]
    fn time_stopped_until_an_admin_acted_is_not_a_wait() {
        let mut o = order();
        o.state = OrderState::Buying;
        o.updated_at = Timestamp(2_000_000);
        let mut retry = line(1_900, "🔁 Retry by alice: upstream back");
        retry.kind = EntryKind::Admin;
        let timeline = [
            line(0, "[SMARTVPS] Calling buyVps - attempt 3/3"),
            line(120, "[SMARTVPS] ❌ buyVps attempt 3 failed: error"),
            retry,
            line(1_905, "[SMARTVPS] Calling buyVps - attempt 1/3"),
        ];
        let ledger = [purchase(
            3,
            0,
            120,
            PurchaseOutcome::Rejected {
                reason: "error".into(),
            },
        )];
        let chart = build(&o, &timeline, &ledger, Timestamp(1_910_000));
        let classes: Vec<&str> = chart.bars.iter().map(|b| b.class).collect();
        assert_eq!(classes, ["rejected", "idle", "inflight"]);
        assert!(chart.bars[1].title.contains("until an admin acted"));
    }

    #[test]
    fn a_waiting_order_shows_its_planned_wake_up() {
        let mut o = order();
        o.state = OrderState::Buying;
        o.run_at = Some(Timestamp(240_000));
        o.updated_at = Timestamp(120_000);
        let timeline = [
            line(0, "[SMARTVPS] Calling buyVps - attempt 1/3"),
            line(120, "[SMARTVPS] ❌ buyVps attempt 1 failed: error"),
        ];
        let ledger = [purchase(
            1,
            0,
            120,
            PurchaseOutcome::Rejected {
                reason: "error".into(),
            },
        )];
        let chart = build(&o, &timeline, &ledger, Timestamp(130_000));
        let classes: Vec<&str> = chart.bars.iter().map(|b| b.class).collect();
        assert_eq!(classes, ["rejected", "planned"]);
        assert!(
            chart.bars[1].title.contains("until 4:00"),
            "{}",
            chart.bars[1].title
        );
    }

    #[test]
    fn attempts_refused_before_sending_are_drawn_with_their_kind() {
        let mut o = order();
        o.state = OrderState::Failed;
        o.updated_at = Timestamp(300_000);
        let timeline = [
            line(0, "[SMARTVPS] Checking stock for buyVps - attempt 1/3"),
            line(
                1,
                "[SMARTVPS] ⛔ buyVps attempt 1 not sent: package 103.82.72 is sold out (0 free); nothing was bought",
            ),
            line(
                1,
                "[SMARTVPS] ⏳ Strategic delay: Waiting 2 minute(s) before retry...",
            ),
            line(121, "[SMARTVPS] Checking stock for buyVps - attempt 2/3"),
            line(
                241,
                "[SMARTVPS] ⛔ buyVps attempt 2 not sent: could not read stock: timeout after 2m; nothing was bought",
            ),
            line(241, "💥 PROVISIONING FAILED after 2 attempts"),
        ];
        let chart = build(&o, &timeline, &[], Timestamp(3_900_000));
        let got: Vec<(&str, &str)> = chart
            .bars
            .iter()
            .map(|b| (b.class, b.title.as_str()))
            .collect();
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0].0, "refused");
        assert!(got[0].1.contains("not sent: sold out"), "{}", got[0].1);
        assert_eq!(got[1].0, "wait");
        assert!(
            got[1].1.starts_with("wait 2m (the policy's delay)"),
            "{}",
            got[1].1
        );
        assert_eq!(got[2].0, "refused");
        assert!(
            got[2].1.contains("not sent: stock unreadable"),
            "{}",
            got[2].1
        );
        assert!(got[2].1.ends_with("2:01 → 4:01"), "{}", got[2].1);
        // A failed order is not "waiting now": it says it waits for an admin, and since when.
        assert!(chart.bars.iter().all(|b| b.class != "planned"));
        assert_eq!(
            chart.stopped.as_deref(),
            Some("Stopped at +5:00 (failed): waiting for an admin for 1h 0m 0s.")
        );
    }

    #[test]
    fn a_purchase_cut_off_by_a_restart_and_an_unexplained_gap_are_not_waits() {
        let mut o = order();
        o.state = OrderState::Buying;
        o.updated_at = Timestamp(400_000);
        let timeline = [
            line(0, "[SMARTVPS] Calling buyVps - attempt 1/3"),
            line(
                270,
                "❓ buyVps attempt 1 has no recorded reply (worker stopped mid-call): outcome unknown",
            ),
            line(390, "[SMARTVPS] Calling status - attempt 1/3"),
            line(395, "[SMARTVPS] ❌ status attempt 1 failed: error"),
            line(455, "[SMARTVPS] Calling status - attempt 2/3"),
        ];
        let cut = Purchase {
            outcome: Some(PurchaseOutcome::Unknown {
                reason: crate::engine::buy::NO_REPLY_RECORDED.into(),
            }),
            ..purchase(
                1,
                0,
                270,
                PurchaseOutcome::Unknown {
                    reason: String::new(),
                },
            )
        };
        let chart = build(&o, &timeline, &[cut], Timestamp(456_000));
        let classes: Vec<&str> = chart.bars.iter().map(|b| b.class).collect();
        assert_eq!(
            classes,
            ["restart", "reconcile", "failed", "gap", "inflight"]
        );
        assert!(chart.bars[0].title.contains("cut off by a restart"));
        assert!(
            chart.bars[3].title.starts_with("not worked for 1m"),
            "{}",
            chart.bars[3].title
        );
        // Durations in human units, never raw milliseconds.
        for b in &chart.bars {
            assert!(!b.title.contains("ms"), "{}", b.title);
        }
    }

    #[test]
    fn the_install_of_the_ordered_os_has_its_own_row() {
        let o = order();
        let lines = [
            line(0, "[SMARTVPS] Calling buyVps - attempt 1/3"),
            line(30, "[SMARTVPS] ✅ buyVps succeeded on attempt 1"),
            line(30, "[SMARTVPS] Calling status - attempt 1/3"),
            line(
                40,
                "[SMARTVPS] 💿 The server reports ubuntu; the order is for Windows Server 2022",
            ),
            line(
                40,
                "[SMARTVPS] ▶ Calling changeos for 10.0.0.1 (change OS to Windows Server 2022) - attempt 1/3",
            ),
            line(50, "[SMARTVPS] ✅ changeos succeeded on attempt 1"),
            line(
                50,
                "⏳ Installing Windows Server 2022: waiting for it to finish with a new password",
            ),
            line(
                650,
                "🎉 Windows Server 2022 is installed on 10.0.0.1 (user administrator)",
            ),
        ];
        let chart = build(&o, &lines, &[], Timestamp(700_000));
        assert_eq!(chart.rows.len(), 3);
        assert_eq!(chart.rows[2].1, "OS install");
        let y = ROWS[1] + (ROWS[1] - ROWS[0]);
        let install: Vec<&Bar> = chart.bars.iter().filter(|b| b.y == y).collect();
        assert_eq!(install.len(), 2, "{:?}", chart.bars);
        assert!(install.iter().all(|b| b.class == "ok"));
        assert!(
            install[1]
                .title
                .starts_with("install (finished with a new password)")
        );
        assert!(chart.axis_y > AXIS_Y, "the axis moves under the extra row");
        // An order with no install keeps two rows.
        let plain = build(&o, &lines[..3], &[], Timestamp(700_000));
        assert_eq!((plain.rows.len(), plain.axis_y), (2, AXIS_Y));
    }
}
