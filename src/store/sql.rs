//! What the two SQL backends share: row decoding, the statements that read the same on both, and
//! the SQL list of active states derived from the domain.
//!
//! A shared statement is a [`Stmt`]: its text with `$n` placeholders and its values, neutral
//! between backends. `$n` is PostgreSQL's own placeholder, and sqlx binds SQLite's `$NNN` by
//! number too, so one text serves both. Each backend binds a [`Stmt`] in one function (its
//! `query`) and runs it on its own connection. Rows come back through [`SqlRow`], so each decoder
//! here is written once for both row types.
//!
//! What really differs stays in the backend's file, in one place each: transactions and locking
//! (`BEGIN IMMEDIATE` on the single SQLite writer, `FOR UPDATE SKIP LOCKED` on PostgreSQL, passed
//! in here as `lock`), multi-row inserts (VALUES lists vs UNNEST), the single flight and vacuum.

use crate::domain::PurchaseId;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::LazyLock;

use sqlx::{ColumnIndex, Decode, Row, Type};

use super::{
    AccessToken, Change, Claimed, Delivery, DeliveryResult, DeliveryStatus, Lease, Notice,
    OrderFilter, StateCounts, StoreError,
};
use crate::clock::Timestamp;
use crate::domain::{ActionKind, ActionState, CallOutcome, Os, ServerAction, ServerFacts, Stage};
use crate::domain::{
    CatalogPackage, CompleteScan, Customer, Discovered, EntryKind, Failure, NoticeKind, Order,
    OrderId, OrderRef, OrderState, PackageId, PackageName, Phase, Purchase, PurchaseIntent,
    PurchaseOutcome, RamGb, Resolution, TimelineEntry,
};
use crate::domain::{Renewal, RenewalState, ServerTerm};

/// A discovery inventory row.
pub(crate) fn discovered<R: SqlRow>(row: &R) -> Result<Discovered, StoreError> {
    let ip = row.text("ip")?;
    let pkg = row.int("package_id")?;
    let ram = row.opt_int("ram_gb")?;
    let candidate = row.opt_text("candidate_for")?;
    Ok(Discovered {
        ip: ip
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("discovered.ip {ip:?} is not an address")))?,
        package_id: PackageId(
            u32::try_from(pkg).map_err(|_| StoreError::Corrupt("discovered.package_id".into()))?,
        ),
        ram_gb: ram
            .map(u32::try_from)
            .transpose()
            .map_err(|_| StoreError::Corrupt("discovered.ram_gb".into()))?,
        expiry: row.opt_text("expiry")?,
        first_seen: Timestamp(row.int("first_seen")?),
        candidate_for: candidate
            .map(|c| {
                OrderId::parse(&c)
                    .map_err(|_| StoreError::Corrupt(format!("discovered.candidate_for {c:?}")))
            })
            .transpose()?,
    })
}

/// A complete scan row.
pub(crate) fn complete_scan<R: SqlRow>(row: &R) -> Result<CompleteScan, StoreError> {
    let pkg = row.int("package_id")?;
    Ok(CompleteScan {
        package_id: PackageId(
            u32::try_from(pkg)
                .map_err(|_| StoreError::Corrupt("complete_scans.package_id".into()))?,
        ),
        started_at: Timestamp(row.int("started_at")?),
        finished_at: Timestamp(row.int("finished_at")?),
    })
}

/// The columns every order read selects; [`order`] reads them by name.
pub(crate) const ORDER_COLUMNS: &str = "id, order_ref, fingerprint, package_id, ram_gb, customer_email, customer_name, os, state, \
     buy_attempts, status_attempts, server_ip, failure_phase, failure_reason, run_at, created_at, updated_at, ready_at, storefront";

/// The states a worker claims, as an SQL list: `('queued', 'buying', 'awaiting_credentials',
/// 'installing_os', 'ready')` (a ready order is due only while an action on its server is).
/// Made from [`OrderState::is_workable`], so the claim cannot drift from the domain; the partial
/// index `orders_due` in the migrations must say the same (a test below checks it), or claims
/// stop using it.
pub(crate) static ACTIVE_STATES: LazyLock<String> = LazyLock::new(|| {
    let names: Vec<String> = OrderState::ALL
        .iter()
        .filter(|s| s.is_workable())
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    format!("({})", names.join(", "))
});

// ---------------------------------------------------------------------------------------------
// Statements.

/// A value to bind. Every column the stores write is an integer, text or a blob, and each
/// variant binds as the Rust type the backends bound before (so PostgreSQL sees the same types).
#[derive(Clone, Debug)]
pub(crate) enum Arg {
    /// BIGINT / INTEGER, or NULL.
    Int(Option<i64>),
    /// TEXT, or NULL.
    Text(Option<String>),
    /// BYTEA / BLOB, or NULL.
    Bytes(Option<Vec<u8>>),
}

/// One statement for either backend: its text and the values of `$1`, `$2`, ...
#[derive(Clone, Debug)]
pub(crate) struct Stmt {
    /// The text, with `$n` placeholders.
    pub(crate) sql: String,
    /// The values, `args[n - 1]` for `$n`.
    pub(crate) args: Vec<Arg>,
}

impl Stmt {
    pub(crate) fn new(sql: impl Into<String>) -> Self {
        Self {
            sql: sql.into(),
            args: Vec::new(),
        }
    }

    /// Adds a value and returns its placeholder, for statements whose text depends on what is
    /// bound (placeholders are numbered as they are added: PostgreSQL refuses a gap).
    pub(crate) fn param(&mut self, arg: Arg) -> String {
        self.args.push(arg);
        format!("${}", self.args.len())
    }

    fn int(mut self, v: impl Into<Option<i64>>) -> Self {
        self.args.push(Arg::Int(v.into()));
        self
    }

    fn text(mut self, v: Option<&str>) -> Self {
        self.args.push(Arg::Text(v.map(str::to_string)));
        self
    }

    fn str(self, v: &str) -> Self {
        self.text(Some(v))
    }
}

impl Stmt {
    /// This statement and then `next`, as one text of two statements, `next`'s placeholders
    /// renumbered after this one's values: SQLite runs both in one call to its connection's
    /// thread (sqlx binds `$n` by number across the statements of one text). SQLite only:
    /// PostgreSQL's extended protocol takes one statement per query.
    pub(crate) fn then(mut self, next: Stmt) -> Stmt {
        let offset = self.args.len();
        let mut sql = String::with_capacity(self.sql.len() + next.sql.len() + 8);
        sql.push_str(&self.sql);
        sql.push_str(";\n");
        let mut chars = next.sql.char_indices().peekable();
        while let Some((_, c)) = chars.next() {
            if c != '$' {
                sql.push(c);
                continue;
            }
            let mut digits = String::new();
            while let Some((_, d)) = chars.peek().copied().filter(|(_, d)| d.is_ascii_digit()) {
                digits.push(d);
                chars.next();
            }
            match digits.parse::<usize>() {
                Ok(n) => sql.push_str(&format!("${}", n + offset)),
                Err(_) => sql.push('$'),
            }
        }
        self.sql = sql;
        self.args.extend(next.args);
        self
    }

    /// The statements one after the other (see [`Stmt::then`]); `None` for none.
    pub(crate) fn chain(stmts: impl IntoIterator<Item = Stmt>) -> Option<Stmt> {
        stmts.into_iter().reduce(Stmt::then)
    }
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Inserts a new order unless its reference is taken (`ON CONFLICT DO NOTHING`: two intakes of
/// the same webhook at once end with one order, and the second finds it).
pub(crate) fn insert_order(order: &Order, access: &AccessToken) -> Stmt {
    Stmt::new(
        "INSERT INTO orders (id, order_ref, fingerprint, package_id, ram_gb, customer_email, customer_name, os, state, run_at, \
         created_at, updated_at, storefront, access_token_hash, access_token_gen) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) ON CONFLICT (order_ref) DO NOTHING",
    )
    .str(order.id.as_str())
    .str(order.order_ref.as_str())
    .str(&order.fingerprint)
    .int(i64::from(order.package_id.0))
    .int(i64::from(order.ram_gb.get()))
    .str(&order.customer.email)
    .str(&order.customer.name)
    .text(order.os.as_deref())
    .str(order.state.as_str())
    .int(order.run_at.map(Timestamp::millis))
    .int(order.created_at.millis())
    .int(order.updated_at.millis())
    .text(order.storefront.as_deref())
    .str(&access.hash)
    .int(access.generation.map(i64::from))
}

/// One order by id.
pub(crate) fn order_by_id(id: &OrderId) -> Stmt {
    Stmt::new(format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1")).str(id.as_str())
}

/// One order by its storefront reference.
pub(crate) fn order_by_ref(order_ref: &OrderRef) -> Stmt {
    Stmt::new(format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE order_ref = $1"
    ))
    .str(order_ref.as_str())
}

/// A page of orders, newest first. The casts let PostgreSQL type a parameter that is only
/// compared with NULL; SQLite accepts them as they are.
pub(crate) fn orders(f: &OrderFilter) -> Stmt {
    // A suffix that cannot end an id matches nothing rather than everything.
    let suffix = f.id_suffix.as_ref().map(|_| {
        f.id_suffix_text()
            .map_or_else(|| "z".to_string(), |s| format!("%{s}"))
    });
    Stmt::new(format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE (CAST($1 AS TEXT) IS NULL OR state = $1) \
         AND (CAST($2 AS BIGINT) IS NULL OR package_id = $2) \
         AND (CAST($3 AS BIGINT) IS NULL OR created_at >= $3) AND (CAST($4 AS BIGINT) IS NULL OR created_at < $4) \
         AND (CAST($7 AS TEXT) IS NULL OR failure_phase = $7) \
         AND (CAST($8 AS TEXT) IS NULL OR LOWER(order_ref) LIKE $8 ESCAPE '\\' OR LOWER(customer_email) LIKE $8 ESCAPE '\\' \
              OR server_ip LIKE $8 ESCAPE '\\' OR LOWER(id) LIKE $8 ESCAPE '\\') \
         AND (CAST($9 AS TEXT) IS NULL OR id LIKE $9) \
         ORDER BY created_at DESC, id DESC LIMIT $5 OFFSET $6"
    ))
    .text(f.state.map(OrderState::as_str))
    .int(f.package.map(|p| i64::from(p.0)))
    .int(f.created_from.map(Timestamp::millis))
    .int(f.created_to.map(Timestamp::millis))
    .int(limit(f.page_size()))
    .int(limit(f.offset.unwrap_or(0)))
    .text(f.phase.map(Phase::as_str))
    .text(f.search.as_deref().map(like_pattern).as_deref())
    .text(suffix.as_deref())
}

/// `%text%` for `LIKE ... ESCAPE '\'`, lowercased as the columns are compared: the text's own
/// `%`, `_` and `\` match themselves.
fn like_pattern(text: &str) -> String {
    let mut p = String::from("%");
    for c in text.to_ascii_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// Orders per state (decoded by [`state_counts`]).
pub(crate) fn state_counts_query() -> Stmt {
    Stmt::new("SELECT state, COUNT(*) AS n FROM orders GROUP BY state")
}

/// An order's timeline, oldest first (decoded by [`timeline_entry`]).
pub(crate) fn timeline(id: &OrderId) -> Stmt {
    Stmt::new("SELECT at, kind, message FROM timeline WHERE order_id = $1 ORDER BY id")
        .str(id.as_str())
}

/// An order's purchases, oldest first (decoded by [`purchase`]).
pub(crate) fn purchases(id: &OrderId) -> Stmt {
    Stmt::new("SELECT * FROM purchases WHERE order_id = $1 ORDER BY id").str(id.as_str())
}

/// An order's sealed credentials, column `credentials`.
pub(crate) fn credentials(id: &OrderId) -> Stmt {
    Stmt::new("SELECT credentials FROM orders WHERE id = $1").str(id.as_str())
}

/// Claims up to `n` due orders for `worker` until `expires`, returning each with its new lease
/// token (decoded by [`claimed`]). `lock` is the backend's row locking for the inner select.
pub(crate) fn claim_due(
    worker: &str,
    expires: Timestamp,
    now: Timestamp,
    n: usize,
    lock: &str,
) -> Stmt {
    Stmt::new(format!(
        "UPDATE orders SET lease_owner = $1, lease_token = lease_token + 1, lease_expires_at = $2 WHERE id IN (\
           SELECT id FROM orders WHERE state IN {states} AND run_at <= $3 \
           AND (lease_expires_at IS NULL OR lease_expires_at <= $3) ORDER BY run_at LIMIT $4{lock}) \
         RETURNING {ORDER_COLUMNS}, lease_token",
        states = *ACTIVE_STATES,
    ))
    .str(worker)
    .int(expires.millis())
    .int(now.millis())
    .int(limit(n))
}

/// When the next active order falls due: its `run_at`, or its lease expiry if later. Column
/// `next_due`. (CASE rather than SQLite's two-argument MAX or PostgreSQL's GREATEST: both
/// read it.)
pub(crate) fn next_due() -> Stmt {
    Stmt::new(format!(
        "SELECT MIN(CASE WHEN lease_expires_at > run_at THEN lease_expires_at ELSE run_at END) AS next_due \
         FROM orders WHERE state IN {states} AND run_at IS NOT NULL",
        states = *ACTIVE_STATES,
    ))
}

/// Writes the order's mutable columns (and sealed credentials, and the lease's end unless it is
/// kept). With `fence`, the update applies only under that lease: it is the fence check itself,
/// one statement instead of a check and an update.
pub(crate) fn update_order(fence: Option<&Lease>, order: &Order, change: &Change) -> Stmt {
    let mut s = Stmt::new(String::new());
    let mut sql = format!(
        "UPDATE orders SET state = {}, buy_attempts = {}, status_attempts = {}, server_ip = {}, failure_phase = {}, \
         failure_reason = {}, run_at = {}, updated_at = {}, ready_at = {}",
        s.param(Arg::Text(Some(order.state.as_str().into()))),
        s.param(Arg::Int(Some(i64::from(order.buy_attempts)))),
        s.param(Arg::Int(Some(i64::from(order.status_attempts)))),
        s.param(Arg::Text(order.server_ip.map(|ip| ip.to_string()))),
        s.param(Arg::Text(
            order.failure.as_ref().map(|f| f.phase.as_str().into())
        )),
        s.param(Arg::Text(order.failure.as_ref().map(|f| f.reason.clone()))),
        s.param(Arg::Int(order.run_at.map(Timestamp::millis))),
        s.param(Arg::Int(Some(order.updated_at.millis()))),
        s.param(Arg::Int(order.ready_at.map(Timestamp::millis))),
    );
    if let Some(c) = &change.credentials {
        sql.push_str(&format!(
            ", credentials = {}",
            s.param(Arg::Bytes(Some(c.clone())))
        ));
    }
    if !change.keep_lease {
        sql.push_str(", lease_owner = NULL, lease_expires_at = NULL");
    }
    sql.push_str(&format!(
        " WHERE id = {}",
        s.param(Arg::Text(Some(order.id.as_str().into())))
    ));
    if let Some(lease) = fence {
        sql.push_str(&format!(
            " AND lease_token = {} AND lease_owner = {}",
            s.param(Arg::Int(Some(lease.token))),
            s.param(Arg::Text(Some(lease.worker.clone())))
        ));
    }
    s.sql = sql;
    s
}

/// What an order write does after the order row and its timeline lines: gives up the order's
/// single flight when it leaves the buying state (or its purchase is settled), and settles an
/// unknown purchase. Run in order, in the write's transaction.
pub(crate) fn after_order_write(order: &Order, change: &Change) -> Vec<Stmt> {
    let mut out = Vec::new();
    if order.state != OrderState::Buying || change.release_flight {
        out.push(Stmt::new("DELETE FROM flights WHERE order_id = $1").str(order.id.as_str()));
    }
    if let Some(a) = &change.action {
        out.push(if a.id == 0 {
            insert_action(a)
        } else {
            update_action(a)
        });
    }
    if let Some(f) = &change.facts {
        out.push(upsert_facts(&order.id, f));
    }
    if let Some(r) = &change.renewal {
        out.push(update_renewal(r));
    }
    if let Some(t) = &change.term {
        out.push(upsert_term(&order.id, t));
    }
    if order.state == OrderState::Ready
        && (change.renewals_seen.is_some() || order.run_at.is_none())
    {
        out.push(keep_due_for_renewals(order, change.renewals_seen));
    }
    if let Some((pid, res)) = &change.resolve {
        out.push(
            Stmt::new(
                "UPDATE purchases SET resolution = $1, resolution_detail = $2, stock_after = COALESCE($5, stock_after) \
                 WHERE id = $3 AND order_id = $4",
            )
            .str(res.kind())
            .text(res.detail().as_deref())
            .int(pid.0)
            .str(order.id.as_str())
            .int(change.stock_after.map(i64::from)),
        );
    }
    out
}

/// The columns every action read selects; [`server_action`] reads them by name.
const ACTION_COLUMNS: &str = "id, order_id, kind, os, requested_by, reason, created_at, state, stage, attempts, sent_at, \
     outcome, outcome_reason, install_started_at, old_password_digest, finished_at, result";

/// A new action.
pub(crate) fn insert_action(a: &ServerAction) -> Stmt {
    Stmt::new(
        "INSERT INTO server_actions (order_id, kind, os, requested_by, reason, created_at, state, stage, attempts, sent_at, \
         outcome, outcome_reason, install_started_at, old_password_digest, finished_at, result) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
    )
    .str(a.order_id.as_str())
    .str(a.kind.as_str())
    .text(a.kind.os().map(Os::code))
    .str(&a.requested_by)
    .text(a.reason.as_deref())
    .int(a.created_at.millis())
    .str(a.state.as_str())
    .str(a.stage.as_str())
    .int(i64::from(a.attempts))
    .int(a.sent_at.map(Timestamp::millis))
    .text(a.outcome.as_ref().map(CallOutcome::kind))
    .text(a.outcome.as_ref().and_then(CallOutcome::reason))
    .int(a.install_started_at.map(Timestamp::millis))
    .text(a.old_password_digest.as_deref())
    .int(a.finished_at.map(Timestamp::millis))
    .text(a.result.as_deref())
}

/// An action's progress (it is written only under its order's lease).
pub(crate) fn update_action(a: &ServerAction) -> Stmt {
    Stmt::new(
        "UPDATE server_actions SET state = $1, stage = $2, attempts = $3, sent_at = $4, outcome = $5, outcome_reason = $6, \
         install_started_at = $7, old_password_digest = $8, finished_at = $9, result = $10 WHERE id = $11 AND order_id = $12",
    )
    .str(a.state.as_str())
    .str(a.stage.as_str())
    .int(i64::from(a.attempts))
    .int(a.sent_at.map(Timestamp::millis))
    .text(a.outcome.as_ref().map(CallOutcome::kind))
    .text(a.outcome.as_ref().and_then(CallOutcome::reason))
    .int(a.install_started_at.map(Timestamp::millis))
    .text(a.old_password_digest.as_deref())
    .int(a.finished_at.map(Timestamp::millis))
    .text(a.result.as_deref())
    .int(a.id)
    .str(a.order_id.as_str())
}

/// What status last said about an order's server.
pub(crate) fn upsert_facts(id: &OrderId, f: &ServerFacts) -> Stmt {
    Stmt::new(
        "INSERT INTO server_facts (order_id, power, os, expiry, action_status, checked_at) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (order_id) DO UPDATE SET power = excluded.power, os = excluded.os, expiry = excluded.expiry, \
         action_status = excluded.action_status, checked_at = excluded.checked_at",
    )
    .str(id.as_str())
    .text(f.power.as_deref())
    .text(f.os.as_deref())
    .text(f.expiry.as_deref())
    .text(f.action_status.as_deref())
    .int(f.checked_at.map_or(0, Timestamp::millis))
}

/// An order's server facts (decoded by [`server_facts`]).
pub(crate) fn facts_of(id: &OrderId) -> Stmt {
    Stmt::new(
        "SELECT power, os, expiry, action_status, checked_at FROM server_facts WHERE order_id = $1",
    )
    .str(id.as_str())
}

/// A server facts row.
pub(crate) fn server_facts(row: &impl SqlRow) -> Result<ServerFacts, StoreError> {
    Ok(ServerFacts {
        power: row.opt_text("power")?,
        os: row.opt_text("os")?,
        expiry: row.opt_text("expiry")?,
        action_status: row.opt_text("action_status")?,
        checked_at: Some(Timestamp(row.int("checked_at")?)),
    })
}

/// An order's actions, oldest first (decoded by [`server_action`]).
pub(crate) fn actions_of(id: &OrderId) -> Stmt {
    Stmt::new(format!(
        "SELECT {ACTION_COLUMNS} FROM server_actions WHERE order_id = $1 ORDER BY created_at, id"
    ))
    .str(id.as_str())
}

/// An order's pending action, if any (decoded by [`server_action`]).
pub(crate) fn open_action(id: &OrderId) -> Stmt {
    Stmt::new(format!(
        "SELECT {ACTION_COLUMNS} FROM server_actions WHERE order_id = $1 AND state = 'pending'"
    ))
    .str(id.as_str())
}

/// The creation times of an order's actions since `since`, oldest first (column `created_at`).
pub(crate) fn actions_since(id: &OrderId, since: Timestamp) -> Stmt {
    Stmt::new(
        "SELECT created_at FROM server_actions WHERE order_id = $1 AND created_at > $2 AND requested_by <> 'provisioning' \
         ORDER BY created_at",
    )
    .str(id.as_str())
    .int(since.millis())
}

/// The state of an order, to check an action can be asked for (column `state`); `lock` is the
/// backend's row lock, so two requests for one server are taken one after the other.
pub(crate) fn order_state(id: &OrderId, lock: &str) -> Stmt {
    Stmt::new(format!("SELECT state FROM orders WHERE id = $1{lock}")).str(id.as_str())
}

/// Makes a ready order due for the action just asked for.
pub(crate) fn schedule_action(id: &OrderId, now: Timestamp) -> Stmt {
    Stmt::new(
        "UPDATE orders SET run_at = $1 WHERE id = $2 AND state = 'ready' AND (run_at IS NULL OR run_at > $1)",
    )
    .int(now.millis())
    .str(id.as_str())
}

/// Whether an action may be asked for, from what the request's transaction read: the order's
/// state (`None`: no order), its pending action and the creation times of its recent actions.
/// `None` means go ahead; otherwise the refusal.
pub(crate) fn refuse_action(
    state: Option<&str>,
    open: Option<ServerAction>,
    recent: &[i64],
    per_hour: u32,
) -> Result<Option<super::ActionRequest>, StoreError> {
    use super::ActionRequest;
    let Some(state) = state else {
        return Ok(Some(ActionRequest::NoOrder));
    };
    let state = OrderState::from_str(state).map_err(StoreError::Corrupt)?;
    if state != OrderState::Ready {
        return Ok(Some(ActionRequest::NotReady(state)));
    }
    if let Some(open) = open {
        return Ok(Some(ActionRequest::Busy(open)));
    }
    let per_hour = per_hour.max(1) as usize;
    if recent.len() >= per_hour {
        // The window frees up when the oldest action that keeps it full leaves it.
        let oldest = recent[recent.len() - per_hour];
        return Ok(Some(ActionRequest::TooMany {
            retry_at: Timestamp(oldest).plus(ACTION_WINDOW),
        }));
    }
    Ok(None)
}

/// The window of the per-server action limit.
pub(crate) const ACTION_WINDOW: std::time::Duration = std::time::Duration::from_secs(3600);

/// An action row.
pub(crate) fn server_action(row: &impl SqlRow) -> Result<ServerAction, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("server_actions.{what}"));
    let id = row.int("id")?;
    let order_id = row.text("order_id")?;
    let os = row
        .opt_text("os")?
        .map(|o| Os::parse(&o).map_err(|_| corrupt("os")))
        .transpose()?;
    let kind_name = row.text("kind")?;
    let kind = ActionKind::parse(&kind_name, os.map(Os::code)).map_err(|_| corrupt("kind"))?;
    let stage = Stage::parse(&row.text("stage")?, os).ok_or_else(|| corrupt("stage"))?;
    let outcome = match row.opt_text("outcome")? {
        Some(k) => Some(
            CallOutcome::from_parts(&k, row.opt_text("outcome_reason")?)
                .ok_or_else(|| corrupt("outcome"))?,
        ),
        None => None,
    };
    let ts =
        |c: &str| -> Result<Option<Timestamp>, StoreError> { Ok(row.opt_int(c)?.map(Timestamp)) };
    Ok(ServerAction {
        id,
        order_id: OrderId::parse(&order_id).map_err(|_| corrupt("order_id"))?,
        kind,
        requested_by: row.text("requested_by")?,
        reason: row.opt_text("reason")?,
        created_at: Timestamp(row.int("created_at")?),
        state: ActionState::parse(&row.text("state")?).ok_or_else(|| corrupt("state"))?,
        stage,
        attempts: u32::try_from(row.int("attempts")?).map_err(|_| corrupt("attempts"))?,
        sent_at: ts("sent_at")?,
        outcome,
        install_started_at: ts("install_started_at")?,
        old_password_digest: row.opt_text("old_password_digest")?,
        finished_at: ts("finished_at")?,
        result: row.opt_text("result")?,
    })
}

/// Who holds a package's flight (column `holder`) and its newest purchase (`last_purchase`).
pub(crate) fn flight_state(package: PackageId) -> Stmt {
    Stmt::new(
        "SELECT (SELECT order_id FROM flights WHERE package_id = $1) AS holder, \
         (SELECT MAX(id) FROM purchases WHERE package_id = $1) AS last_purchase",
    )
    .int(i64::from(package.0))
}

/// Decodes a [`flight_state`] row.
pub(crate) fn flight_state_row(row: &impl SqlRow) -> Result<super::FlightState, StoreError> {
    Ok(super::FlightState {
        holder: row
            .opt_text("holder")?
            .map(|h| order_id(&h, "flights.order_id"))
            .transpose()?,
        last_purchase: row.opt_int("last_purchase")?.map(PurchaseId),
    })
}

/// Takes a package's free flight for the lease's order in one statement: the fence is the
/// INSERT's SELECT, and so is the check that no other order's purchase of the package is newer
/// than `seen`. Inserts nothing when the package is taken (by anyone, this order included), the
/// lease is gone or the stock read may count another purchase; [`flight_after_refusal`] tells
/// which.
pub(crate) fn take_flight(lease: &Lease, package: PackageId, seen: &super::FlightState) -> Stmt {
    Stmt::new(
        "INSERT INTO flights (package_id, order_id) SELECT $1, id FROM orders \
         WHERE id = $2 AND lease_token = $3 AND lease_owner = $4 \
         AND NOT EXISTS (SELECT 1 FROM purchases WHERE package_id = $1 AND id > $5 AND order_id <> $2) \
         ON CONFLICT (package_id) DO NOTHING",
    )
    .int(i64::from(package.0))
    .str(lease.order_id.as_str())
    .int(lease.token)
    .str(&lease.worker)
    .int(seen.last_purchase.map_or(0, |p| p.0))
}

/// Why [`take_flight`] inserted nothing, in one snapshot: whether the lease is still held
/// (`leased`, 0 or 1) and who holds the flight (`holder`).
pub(crate) fn flight_after_refusal(lease: &Lease, package: PackageId) -> Stmt {
    Stmt::new(
        "SELECT CAST(CASE WHEN EXISTS (SELECT 1 FROM orders WHERE id = $1 AND lease_token = $2 AND lease_owner = $3) \
         THEN 1 ELSE 0 END AS BIGINT) AS leased, (SELECT order_id FROM flights WHERE package_id = $4) AS holder",
    )
    .str(lease.order_id.as_str())
    .int(lease.token)
    .str(&lease.worker)
    .int(i64::from(package.0))
}

/// What a refused [`take_flight`] means, from a [`flight_after_refusal`] row: `Ok(None)` when
/// the flight is this order's after all (it already held it), else what to answer.
pub(crate) fn refused_flight(
    row: &impl SqlRow,
    lease: &Lease,
) -> Result<Option<super::Begun>, StoreError> {
    if row.int("leased")? == 0 {
        return Err(StoreError::LeaseLost(lease.order_id.clone()));
    }
    Ok(match row.opt_text("holder")? {
        Some(h) if h == lease.order_id.as_str() => None,
        Some(h) => Some(super::Begun::HeldBy(order_id(&h, "flights.order_id")?)),
        None => Some(super::Begun::Moved),
    })
}

/// The columns every renewal read selects; [`renewal`] reads them by name.
const RENEWAL_COLUMNS: &str = "id, order_id, renewal_ref, requested_by, reason, created_at, state, attempts, sent_at, \
     outcome, outcome_reason, expiry_before, expiry_after, finished_at, result";

/// A new renewal.
pub(crate) fn insert_renewal(r: &Renewal) -> Stmt {
    Stmt::new(
        "INSERT INTO renewals (order_id, renewal_ref, requested_by, reason, created_at, state, attempts, sent_at, outcome, \
         outcome_reason, expiry_before, expiry_after, finished_at, result) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .str(r.order_id.as_str())
    .str(&r.renewal_ref)
    .str(&r.requested_by)
    .text(r.reason.as_deref())
    .int(r.created_at.millis())
    .str(r.state.as_str())
    .int(i64::from(r.attempts))
    .int(r.sent_at.map(Timestamp::millis))
    .text(r.outcome.as_ref().map(CallOutcome::kind))
    .text(r.outcome.as_ref().and_then(CallOutcome::reason))
    .text(r.expiry_before.as_deref())
    .text(r.expiry_after.as_deref())
    .int(r.finished_at.map(Timestamp::millis))
    .text(r.result.as_deref())
}

/// A renewal's progress (written only under its order's lease).
pub(crate) fn update_renewal(r: &Renewal) -> Stmt {
    Stmt::new(
        "UPDATE renewals SET state = $1, attempts = $2, sent_at = $3, outcome = $4, outcome_reason = $5, \
         expiry_before = $6, expiry_after = $7, finished_at = $8, result = $9 WHERE id = $10 AND order_id = $11",
    )
    .str(r.state.as_str())
    .int(i64::from(r.attempts))
    .int(r.sent_at.map(Timestamp::millis))
    .text(r.outcome.as_ref().map(CallOutcome::kind))
    .text(r.outcome.as_ref().and_then(CallOutcome::reason))
    .text(r.expiry_before.as_deref())
    .text(r.expiry_after.as_deref())
    .int(r.finished_at.map(Timestamp::millis))
    .text(r.result.as_deref())
    .int(r.id)
    .str(r.order_id.as_str())
}

/// An order's renewals, oldest first (decoded by [`renewal`]).
pub(crate) fn renewals_of(id: &OrderId) -> Stmt {
    Stmt::new(format!(
        "SELECT {RENEWAL_COLUMNS} FROM renewals WHERE order_id = $1 ORDER BY id"
    ))
    .str(id.as_str())
}

/// The renewal stored under a reference (decoded by [`renewal`]).
pub(crate) fn renewal_by_ref(renewal_ref: &str) -> Stmt {
    Stmt::new(format!(
        "SELECT {RENEWAL_COLUMNS} FROM renewals WHERE renewal_ref = $1"
    ))
    .str(renewal_ref)
}

/// A renewal row.
pub(crate) fn renewal(row: &impl SqlRow) -> Result<Renewal, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("renewals.{what}"));
    let outcome = match row.opt_text("outcome")? {
        Some(k) => Some(
            CallOutcome::from_parts(&k, row.opt_text("outcome_reason")?)
                .ok_or_else(|| corrupt("outcome"))?,
        ),
        None => None,
    };
    let ts =
        |c: &str| -> Result<Option<Timestamp>, StoreError> { Ok(row.opt_int(c)?.map(Timestamp)) };
    Ok(Renewal {
        id: row.int("id")?,
        order_id: OrderId::parse(&row.text("order_id")?).map_err(|_| corrupt("order_id"))?,
        renewal_ref: row.text("renewal_ref")?,
        requested_by: row.text("requested_by")?,
        reason: row.opt_text("reason")?,
        created_at: Timestamp(row.int("created_at")?),
        state: RenewalState::parse(&row.text("state")?).ok_or_else(|| corrupt("state"))?,
        attempts: u32::try_from(row.int("attempts")?).map_err(|_| corrupt("attempts"))?,
        sent_at: ts("sent_at")?,
        outcome,
        expiry_before: row.opt_text("expiry_before")?,
        expiry_after: row.opt_text("expiry_after")?,
        finished_at: ts("finished_at")?,
        result: row.opt_text("result")?,
    })
}

/// What the engine keeps about a server's term.
pub(crate) fn upsert_term(id: &OrderId, t: &ServerTerm) -> Stmt {
    Stmt::new(
        "INSERT INTO server_terms (order_id, reminded_for, cancelled_at, cancelled_by) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (order_id) DO UPDATE SET reminded_for = excluded.reminded_for, cancelled_at = excluded.cancelled_at, \
         cancelled_by = excluded.cancelled_by",
    )
    .str(id.as_str())
    .text(t.reminded_for.as_deref())
    .int(t.cancelled_at.map(Timestamp::millis))
    .text(t.cancelled_by.as_deref())
}

/// An order's server term (decoded by [`server_term`]).
pub(crate) fn term_of(id: &OrderId) -> Stmt {
    Stmt::new(
        "SELECT reminded_for, cancelled_at, cancelled_by FROM server_terms WHERE order_id = $1",
    )
    .str(id.as_str())
}

/// A server term row.
pub(crate) fn server_term(row: &impl SqlRow) -> Result<ServerTerm, StoreError> {
    Ok(ServerTerm {
        reminded_for: row.opt_text("reminded_for")?,
        cancelled_at: row.opt_int("cancelled_at")?.map(Timestamp),
        cancelled_by: row.opt_text("cancelled_by")?,
    })
}

/// Ready servers whose `ExpiryDate` is at or before `until` (a `YYYY-MM-DD` date, so text order is
/// date order), soonest first (columns `order_id`, `expiry`).
pub(crate) fn expiring(until: &str, limit: usize) -> Stmt {
    Stmt::new(
        "SELECT f.order_id AS order_id, f.expiry AS expiry FROM server_facts f JOIN orders o ON o.id = f.order_id \
         WHERE o.state = 'ready' AND f.expiry IS NOT NULL AND f.expiry <= $1 ORDER BY f.expiry, f.order_id LIMIT $2",
    )
    .str(until)
    .int(i64::try_from(limit).unwrap_or(i64::MAX))
}

/// A ready order written to sleep stays due when a renewal was queued that the writing step
/// did not see (taken while it worked): the step's later `run_at` must not bury it.
pub(crate) fn keep_due_for_renewals(order: &Order, seen: Option<i64>) -> Stmt {
    Stmt::new(
        "UPDATE orders SET run_at = $1 WHERE id = $2 AND state = 'ready' AND (run_at IS NULL OR run_at > $1) \
         AND EXISTS (SELECT 1 FROM renewals r WHERE r.order_id = $2 AND r.state = 'pending' AND r.id > $3)",
    )
    .int(order.updated_at.millis())
    .str(order.id.as_str())
    .int(seen.unwrap_or(0))
}

/// Makes idle ready orders whose server expires by `until` due at `now` (see
/// [`super::Store::wake_expiring`]).
pub(crate) fn wake_expiring(until: &str, now: Timestamp, limit: usize) -> Stmt {
    Stmt::new(
        "UPDATE orders SET run_at = $1 WHERE id IN (SELECT o.id FROM orders o JOIN server_facts f ON f.order_id = o.id \
         WHERE o.state = 'ready' AND o.run_at IS NULL AND (o.lease_expires_at IS NULL OR o.lease_expires_at <= $1) \
         AND f.expiry IS NOT NULL AND f.expiry <= $2 ORDER BY f.expiry, o.id LIMIT $3)",
    )
    .int(now.millis())
    .str(until)
    .int(i64::try_from(limit).unwrap_or(i64::MAX))
}

/// Whether a renewal may be taken, from what the request's transaction read: the order's state
/// (`None`: no order) and the renewal already stored under the reference. `None`: go ahead.
pub(crate) fn refuse_renewal(
    renewal: &Renewal,
    state: Option<&str>,
    existing: Option<Renewal>,
) -> Result<Option<super::RenewalRequest>, StoreError> {
    use super::RenewalRequest;
    if let Some(existing) = existing {
        return Ok(Some(if existing.order_id == renewal.order_id {
            RenewalRequest::Existing(existing)
        } else {
            RenewalRequest::Conflict(existing)
        }));
    }
    let Some(state) = state else {
        return Ok(Some(RenewalRequest::NoOrder));
    };
    let state = OrderState::from_str(state).map_err(StoreError::Corrupt)?;
    if state != OrderState::Ready {
        return Ok(Some(RenewalRequest::NotRenewable(state)));
    }
    Ok(None)
}

/// Gives up a lease; matches no row when the lease is no longer held.
pub(crate) fn release(lease: &Lease) -> Stmt {
    Stmt::new(
        "UPDATE orders SET lease_owner = NULL, lease_expires_at = NULL WHERE id = $1 AND lease_token = $2 AND lease_owner = $3",
    )
    .str(lease.order_id.as_str())
    .int(lease.token)
    .str(&lease.worker)
}

/// Writes a purchase intent, returning its `id`.
pub(crate) fn insert_purchase(intent: &PurchaseIntent) -> Stmt {
    Stmt::new(
        "INSERT INTO purchases (order_id, attempt, package_id, package_name, stock_before, pool_before, sent_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .str(intent.order_id.as_str())
    .int(i64::from(intent.attempt))
    .int(i64::from(intent.package_id.0))
    .str(intent.package_name.as_str())
    .int(intent.stock_before.map(i64::from))
    .int(intent.pool_before.and_then(|v| i64::try_from(v).ok()))
    .int(intent.sent_at.millis())
}

/// Records an outcome if the purchase has none yet (first writer wins, in one statement so it
/// holds across processes), and the statement that keeps a late success as evidence when it
/// already had one.
pub(crate) fn record_outcome(
    purchase_id: PurchaseId,
    outcome: &PurchaseOutcome,
    at: Timestamp,
) -> (Stmt, Option<Stmt>) {
    let (ip, reason) = match outcome {
        PurchaseOutcome::Succeeded { ip } => (Some(ip.to_string()), None),
        PurchaseOutcome::Rejected { reason } | PurchaseOutcome::Unknown { reason } => {
            (None, Some(reason.as_str()))
        }
    };
    let first = Stmt::new(
        "UPDATE purchases SET outcome = $1, outcome_ip = $2, outcome_reason = $3, decided_at = $4 WHERE id = $5 AND outcome IS NULL",
    )
    .str(outcome.kind())
    .text(ip.as_deref())
    .text(reason)
    .int(at.millis())
    .int(purchase_id.0);
    let late = ip.map(|ip| {
        Stmt::new("UPDATE purchases SET late_ip = $1 WHERE id = $2")
            .str(&ip)
            .int(purchase_id.0)
    });
    (first, late)
}

/// Which order owns an address, from the orders and the ledger; column `id`.
pub(crate) fn owner_of(ip: Ipv4Addr) -> Stmt {
    Stmt::new(
        "SELECT id FROM orders WHERE server_ip = $1 UNION ALL \
         SELECT order_id FROM purchases WHERE outcome_ip = $1 OR late_ip = $1 LIMIT 1",
    )
    .str(&ip.to_string())
}

/// The admin's fence: matches the order only when no live lease holds it and it is unchanged
/// since `expected`, and bumps the token so a stale worker's next write no longer matches.
pub(crate) fn admin_fence(order: &Order, expected: Timestamp, now: Timestamp) -> Stmt {
    Stmt::new(
        "UPDATE orders SET lease_token = lease_token + 1, lease_owner = NULL, lease_expires_at = NULL \
         WHERE id = $1 AND updated_at = $2 AND (lease_expires_at IS NULL OR lease_expires_at <= $3)",
    )
    .str(order.id.as_str())
    .int(expected.millis())
    .int(now.millis())
}

/// Notices due for delivery (decoded by [`notice`]).
pub(crate) fn due_notices(now: Timestamp, n: usize) -> Stmt {
    Stmt::new(
        "SELECT id, order_id, kind, attempts FROM outbox WHERE next_at IS NOT NULL AND next_at <= $1 ORDER BY next_at, id LIMIT $2",
    )
    .int(now.millis())
    .int(limit(n))
}

/// Claims due deliveries, counting an attempt on each (decoded by [`delivery`]). `lock` is the
/// backend's row locking for the inner select.
pub(crate) fn claim_deliveries(
    worker: &str,
    expires: Timestamp,
    now: Timestamp,
    n: usize,
    lock: &str,
) -> Stmt {
    Stmt::new(format!(
        "UPDATE outbox_deliveries SET claimed_by = $1, claim_token = claim_token + 1, claim_expires_at = $2, \
           attempts = attempts + 1 WHERE id IN (\
           SELECT id FROM outbox_deliveries WHERE next_at IS NOT NULL AND next_at <= $3 \
           AND (claim_expires_at IS NULL OR claim_expires_at <= $3) ORDER BY next_at, id LIMIT $4{lock}) \
         RETURNING id, key, event_id, order_id, kind, channel, detail, created_at, attempts, claim_token"
    ))
    .str(worker)
    .int(expires.millis())
    .int(now.millis())
    .int(limit(n))
}

/// Records how a claimed delivery went: `Delivered` whatever the claim, `Failed` only under the
/// current claim.
pub(crate) fn finish_delivery(d: &Delivery, result: &DeliveryResult) -> Stmt {
    match result {
        DeliveryResult::Delivered { at } => Stmt::new(
            "UPDATE outbox_deliveries SET delivered_at = $1, next_at = NULL, last_error = NULL, claimed_by = NULL, \
             claim_expires_at = NULL WHERE id = $2 AND delivered_at IS NULL",
        )
        .int(at.millis())
        .int(d.id),
        DeliveryResult::Failed { error, retry_at } => Stmt::new(
            "UPDATE outbox_deliveries SET next_at = $1, last_error = $2, claimed_by = NULL, claim_expires_at = NULL \
             WHERE id = $3 AND claim_token = $4 AND claimed_by = $5 AND delivered_at IS NULL",
        )
        .int(retry_at.map(Timestamp::millis))
        .str(error)
        .int(d.id)
        .int(d.token)
        .str(&d.worker),
    }
}

/// An order's deliveries, oldest first (decoded by [`delivery_status`]).
pub(crate) fn deliveries_of(order: &OrderId) -> Stmt {
    Stmt::new(
        "SELECT id, key, event_id, order_id, kind, channel, detail, created_at, attempts, next_at, delivered_at, \
         last_error FROM outbox_deliveries WHERE order_id = $1 ORDER BY id",
    )
    .str(order.as_str())
}

/// One timeline line for an order that exists (a line for a missing order inserts nothing).
pub(crate) fn append_timeline(id: &OrderId, e: &TimelineEntry) -> Stmt {
    Stmt::new(
        "INSERT INTO timeline (order_id, at, kind, message) SELECT id, $1, $2, $3 FROM orders WHERE id = $4",
    )
    .int(e.at.millis())
    .str(e.kind.as_str())
    .str(&e.message)
    .str(id.as_str())
}

/// Marks many claimed deliveries delivered in one statement (each at its own time), as
/// [`finish_delivery`] does one: whatever the claim, unless delivered already. Returns the `id`
/// of each row it changed. At most a few hundred at a time (two values each).
pub(crate) fn finish_delivered(done: &[(i64, Timestamp)]) -> Stmt {
    let mut s = Stmt::new(String::new());
    let mut cases = String::new();
    let mut ids = Vec::with_capacity(done.len());
    for (id, at) in done {
        let id_p = s.param(Arg::Int(Some(*id)));
        let at_p = s.param(Arg::Int(Some(at.millis())));
        cases.push_str(&format!(" WHEN {id_p} THEN {at_p}"));
        ids.push(id_p);
    }
    s.sql = format!(
        "UPDATE outbox_deliveries SET delivered_at = CASE id{cases} END, next_at = NULL, last_error = NULL, \
         claimed_by = NULL, claim_expires_at = NULL WHERE id IN ({}) AND delivered_at IS NULL RETURNING id",
        ids.join(", ")
    );
    s
}

/// Notices not yet fanned out plus deliveries still to send; column `backlog`.
pub(crate) fn outbox_backlog() -> Stmt {
    Stmt::new(
        "SELECT (SELECT COUNT(*) FROM outbox WHERE next_at IS NOT NULL) \
         + (SELECT COUNT(*) FROM outbox_deliveries WHERE next_at IS NOT NULL) AS backlog",
    )
}

/// Empties the catalog, before a sync writes it again in the same transaction.
pub(crate) fn delete_catalog() -> Stmt {
    Stmt::new("DELETE FROM packages")
}

/// One catalog package.
pub(crate) fn insert_package(p: &CatalogPackage) -> Stmt {
    Stmt::new(
        "INSERT INTO packages (id, name, free, status, synced_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .int(i64::from(p.id.0))
    .str(&p.name)
    .int(i64::from(p.free))
    .str(p.status())
    .int(p.synced_at.millis())
}

/// The catalog by PID (decoded by [`catalog_package`]).
pub(crate) fn catalog() -> Stmt {
    Stmt::new("SELECT id, name, free, status, synced_at FROM packages ORDER BY id")
}

/// Adds one server to the discovery inventory; an address already there keeps its first
/// sighting, and takes the new `candidate_for` when one is given.
pub(crate) fn record_discovered(d: &Discovered) -> Stmt {
    Stmt::new(
        "INSERT INTO discovered (ip, package_id, ram_gb, expiry, first_seen, candidate_for) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (ip) DO UPDATE SET candidate_for = COALESCE(excluded.candidate_for, discovered.candidate_for)",
    )
    .str(&d.ip.to_string())
    .int(i64::from(d.package_id.0))
    .int(d.ram_gb.map(i64::from))
    .text(d.expiry.as_deref())
    .int(d.first_seen.millis())
    .text(d.candidate_for.as_ref().map(OrderId::as_str))
}

const DISCOVERED_COLUMNS: &str = "ip, package_id, ram_gb, expiry, first_seen, candidate_for";

/// A package's discovery inventory (decoded by [`discovered`]).
pub(crate) fn discovered_in(package: PackageId) -> Stmt {
    Stmt::new(format!(
        "SELECT {DISCOVERED_COLUMNS} FROM discovered WHERE package_id = $1 ORDER BY ip"
    ))
    .int(i64::from(package.0))
}

/// The inventory of every package since a moment (decoded by [`discovered`]).
pub(crate) fn discovered_since(since: Timestamp) -> Stmt {
    Stmt::new(format!(
        "SELECT {DISCOVERED_COLUMNS} FROM discovered WHERE first_seen >= $1 ORDER BY ip"
    ))
    .int(since.millis())
}

/// Purchases sent at or after `since` that may still own an unaccounted server (decoded by
/// [`purchase`]): see [`super::Store::unsettled_purchases_since`]. The partial index
/// `purchases_unknown` keeps it to the open few.
pub(crate) fn unsettled_purchases_since(since: Timestamp) -> Stmt {
    Stmt::new(
        "SELECT * FROM purchases WHERE (outcome IS NULL OR outcome = 'unknown') AND sent_at >= $1 \
         AND (resolution IS NULL OR resolution IN ('escalated', 'retried_blindly')) ORDER BY id",
    )
    .int(since.millis())
}

/// The servers listed as candidates for an order (decoded by [`discovered`]).
pub(crate) fn candidates_for(order: &OrderId) -> Stmt {
    Stmt::new(format!(
        "SELECT {DISCOVERED_COLUMNS} FROM discovered WHERE candidate_for = $1 ORDER BY ip"
    ))
    .str(order.as_str())
}

/// Records a complete discovery scan with every `error` confirmed.
pub(crate) fn record_complete_scan(scan: &CompleteScan) -> Stmt {
    Stmt::new(
        "INSERT INTO complete_scans (package_id, started_at, finished_at) VALUES ($1, $2, $3)",
    )
    .int(i64::from(scan.package_id.0))
    .int(scan.started_at.millis())
    .int(scan.finished_at.millis())
}

/// Forgets a package's complete scans that started before `before` (see
/// [`super::COMPLETE_SCAN_RETENTION`]).
pub(crate) fn prune_complete_scans(package: PackageId, before: Timestamp) -> Stmt {
    Stmt::new("DELETE FROM complete_scans WHERE package_id = $1 AND started_at < $2")
        .int(i64::from(package.0))
        .int(before.millis())
}

/// A package's complete scans started after a moment, by start (decoded by [`complete_scan`]).
pub(crate) fn complete_scans(package: PackageId, after: Timestamp) -> Stmt {
    Stmt::new(
        "SELECT package_id, started_at, finished_at FROM complete_scans \
         WHERE package_id = $1 AND started_at > $2 ORDER BY started_at, finished_at",
    )
    .int(i64::from(package.0))
    .int(after.millis())
}

/// Makes a waiting, unleased, active order due at `at` if it would run later.
pub(crate) fn expedite(id: &OrderId, at: Timestamp) -> Stmt {
    Stmt::new(format!(
        "UPDATE orders SET run_at = $1 WHERE id = $2 AND state IN {} AND run_at > $1 \
         AND (lease_expires_at IS NULL OR lease_expires_at <= $1)",
        *ACTIVE_STATES
    ))
    .int(at.millis())
    .str(id.as_str())
}

/// Replaces an order's access token; matches no row when there is no such order.
pub(crate) fn rotate_access_token(id: &OrderId, next: &AccessToken) -> Stmt {
    Stmt::new("UPDATE orders SET access_token_hash = $1, access_token_gen = $2 WHERE id = $3")
        .str(&next.hash)
        .int(next.generation.map(i64::from))
        .str(id.as_str())
}

/// An order's access token columns (decoded by [`access_token`]).
pub(crate) fn access_token_query(id: &OrderId) -> Stmt {
    Stmt::new("SELECT access_token_hash, access_token_gen FROM orders WHERE id = $1")
        .str(id.as_str())
}

/// What a token rotation that matched no row means: there is no such order.
pub(crate) fn no_order_for_token(id: &OrderId) -> StoreError {
    StoreError::Corrupt(format!("no order {id} to hold an access token"))
}

// ---------------------------------------------------------------------------------------------
// Row decoding.

/// The column reads the decoders need, for either backend's row type. One blanket impl: the
/// bounds that make `try_get` work for both live here, not on every decoder.
pub(crate) trait SqlRow {
    /// A non-NULL integer column.
    fn int(&self, col: &str) -> Result<i64, StoreError>;
    /// An integer column that may be NULL.
    fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError>;
    /// A non-NULL text column.
    fn text(&self, col: &str) -> Result<String, StoreError>;
    /// A text column that may be NULL.
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError>;
    /// A blob column that may be NULL.
    fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>, StoreError>;
}

impl<R> SqlRow for R
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    fn int(&self, col: &str) -> Result<i64, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn text(&self, col: &str) -> Result<String, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.try_get(col)?)
    }
}

/// A row that does not decode into the domain.
pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

/// A count or id that must fit a `u32` (attempt numbers, package ids): anything else, negative
/// or too large, is corrupt, the same on every backend.
fn u32_col(row: &impl SqlRow, col: &str) -> Result<u32, StoreError> {
    u32::try_from(row.int(col)?).map_err(|e| corrupt(col, e))
}

fn ip_col(row: &impl SqlRow, col: &str) -> Result<Option<Ipv4Addr>, StoreError> {
    row.opt_text(col)?
        .map(|s| s.parse().map_err(|e| corrupt(col, e)))
        .transpose()
}

fn ts_col(row: &impl SqlRow, col: &str) -> Result<Option<Timestamp>, StoreError> {
    Ok(row.opt_int(col)?.map(Timestamp))
}

/// An order id read from column `col` (named in the error as `what`).
pub(crate) fn order_id(s: &str, what: &str) -> Result<OrderId, StoreError> {
    OrderId::parse(s).map_err(|e| corrupt(what, e))
}

/// An order from its [`ORDER_COLUMNS`].
pub(crate) fn order(row: &impl SqlRow) -> Result<Order, StoreError> {
    let failure = match row.opt_text("failure_phase")? {
        Some(ph) => Some(Failure {
            phase: Phase::from_str(&ph).map_err(|e| corrupt("failure_phase", e))?,
            reason: row.opt_text("failure_reason")?.unwrap_or_default(),
        }),
        None => None,
    };
    Ok(Order {
        id: order_id(&row.text("id")?, "id")?,
        order_ref: OrderRef::parse(&row.text("order_ref")?).map_err(|e| corrupt("order_ref", e))?,
        fingerprint: row.text("fingerprint")?,
        package_id: PackageId(u32_col(row, "package_id")?),
        ram_gb: RamGb::parse(row.int("ram_gb")?).map_err(|e| corrupt("ram_gb", e))?,
        customer: Customer {
            email: row.text("customer_email")?,
            name: row.text("customer_name")?,
        },
        os: row.opt_text("os")?,
        storefront: row.opt_text("storefront")?,
        state: OrderState::from_str(&row.text("state")?).map_err(|e| corrupt("state", e))?,
        buy_attempts: u32_col(row, "buy_attempts")?,
        status_attempts: u32_col(row, "status_attempts")?,
        server_ip: ip_col(row, "server_ip")?,
        failure,
        run_at: ts_col(row, "run_at")?,
        created_at: Timestamp(row.int("created_at")?),
        updated_at: Timestamp(row.int("updated_at")?),
        ready_at: ts_col(row, "ready_at")?,
    })
}

/// A claimed order from a [`claim_due`] row.
pub(crate) fn claimed(
    row: &impl SqlRow,
    worker: &str,
    expires: Timestamp,
) -> Result<Claimed, StoreError> {
    let order = order(row)?;
    let lease = Lease {
        order_id: order.id.clone(),
        worker: worker.to_string(),
        token: row.int("lease_token")?,
        expires_at: expires,
    };
    Ok(Claimed { lease, order })
}

/// Every row a claim returned (see [`claimed`]).
pub(crate) fn claimed_all<R: SqlRow>(
    rows: &[R],
    worker: &str,
    expires: Timestamp,
) -> Result<Vec<Claimed>, StoreError> {
    rows.iter()
        .map(|row| claimed(row, worker, expires))
        .collect()
}

/// A ledger row.
pub(crate) fn purchase(row: &impl SqlRow) -> Result<Purchase, StoreError> {
    let outcome_ip = ip_col(row, "outcome_ip")?;
    let outcome = row
        .opt_text("outcome")?
        .map(|kind| {
            PurchaseOutcome::from_parts(&kind, outcome_ip, row.opt_text("outcome_reason")?)
                .map_err(|e| corrupt("outcome", e))
        })
        .transpose()?;
    let resolution = row
        .opt_text("resolution")?
        .map(|kind| {
            Resolution::from_parts(&kind, row.opt_text("resolution_detail")?)
                .map_err(|e| corrupt("resolution", e))
        })
        .transpose()?;
    let name = row.text("package_name")?;
    Ok(Purchase {
        id: PurchaseId(row.int("id")?),
        order_id: order_id(&row.text("order_id")?, "order_id")?,
        attempt: u32_col(row, "attempt")?,
        package_id: PackageId(u32_col(row, "package_id")?),
        package_name: PackageName::parse(&name).map_err(|e| corrupt("package_name", e))?,
        // Evidence read from the provider, not our own counts: an odd value is dropped, not fatal.
        stock_before: row
            .opt_int("stock_before")?
            .and_then(|v| u32::try_from(v).ok()),
        pool_before: row
            .opt_int("pool_before")?
            .and_then(|v| u64::try_from(v).ok()),
        sent_at: Timestamp(row.int("sent_at")?),
        outcome,
        decided_at: ts_col(row, "decided_at")?,
        resolution,
        late_ip: ip_col(row, "late_ip")?,
        stock_after: row
            .opt_int("stock_after")?
            .and_then(|v| u32::try_from(v).ok()),
    })
}

/// The columns a claimed delivery and a delivery's status both read.
struct DeliveryColumns {
    id: i64,
    key: String,
    event_id: String,
    order_id: Option<OrderId>,
    kind: NoticeKind,
    channel: String,
    detail: Option<String>,
    created_at: Timestamp,
    attempts: u32,
}

fn delivery_columns(row: &impl SqlRow) -> Result<DeliveryColumns, StoreError> {
    let kind = row.text("kind")?;
    Ok(DeliveryColumns {
        id: row.int("id")?,
        key: row.text("key")?,
        event_id: row.text("event_id")?,
        order_id: row
            .opt_text("order_id")?
            .map(|s| order_id(&s, "outbox_deliveries.order_id"))
            .transpose()?,
        kind: NoticeKind::parse(&kind).ok_or_else(|| corrupt("outbox_deliveries.kind", &kind))?,
        channel: row.text("channel")?,
        detail: row.opt_text("detail")?,
        created_at: Timestamp(row.int("created_at")?),
        attempts: u32_col(row, "attempts")?,
    })
}

/// A claimed delivery from a [`claim_deliveries`] row.
pub(crate) fn delivery(row: &impl SqlRow, worker: &str) -> Result<Delivery, StoreError> {
    let c = delivery_columns(row)?;
    Ok(Delivery {
        id: c.id,
        key: c.key,
        event_id: c.event_id,
        order_id: c.order_id,
        kind: c.kind,
        channel: c.channel,
        detail: c.detail,
        created_at: c.created_at,
        attempt: c.attempts,
        worker: worker.to_string(),
        token: row.int("claim_token")?,
    })
}

/// A delivery's status from a [`deliveries_of`] row.
pub(crate) fn delivery_status(row: &impl SqlRow) -> Result<DeliveryStatus, StoreError> {
    let c = delivery_columns(row)?;
    let delivered_at = ts_col(row, "delivered_at")?;
    let next_at = ts_col(row, "next_at")?;
    Ok(DeliveryStatus {
        id: c.id,
        key: c.key,
        event_id: c.event_id,
        order_id: c.order_id,
        kind: c.kind,
        channel: c.channel,
        detail: c.detail,
        created_at: c.created_at,
        attempts: c.attempts,
        state: DeliveryStatus::state_of(delivered_at, next_at, c.attempts),
        last_error: row.opt_text("last_error")?,
        delivered_at,
        next_at,
    })
}

/// An outbox notice from a [`due_notices`] row.
pub(crate) fn notice(row: &impl SqlRow) -> Result<Notice, StoreError> {
    let kind = row.text("kind")?;
    Ok(Notice {
        id: row.int("id")?,
        order_id: order_id(&row.text("order_id")?, "outbox.order_id")?,
        kind: NoticeKind::parse(&kind).ok_or_else(|| corrupt("outbox.kind", &kind))?,
        attempts: u32_col(row, "attempts")?,
    })
}

/// A catalog package from a [`catalog`] row.
pub(crate) fn catalog_package(row: &impl SqlRow) -> Result<CatalogPackage, StoreError> {
    Ok(CatalogPackage {
        id: PackageId(u32::try_from(row.int("id")?).map_err(|e| corrupt("packages.id", e))?),
        name: row.text("name")?,
        // ipstock's count as last read; a value that does not fit reads as sold out.
        free: u32::try_from(row.int("free")?).unwrap_or(0),
        active: row.text("status")? == "active",
        synced_at: Timestamp(row.int("synced_at")?),
    })
}

/// A timeline line from a [`timeline`] row.
pub(crate) fn timeline_entry(row: &impl SqlRow) -> Result<TimelineEntry, StoreError> {
    Ok(TimelineEntry {
        at: Timestamp(row.int("at")?),
        kind: EntryKind::parse(&row.text("kind")?),
        message: row.text("message")?,
    })
}

/// An order's access token from an [`access_token_query`] row; no row means no such order.
pub(crate) fn access_token(row: Option<&impl SqlRow>) -> Result<Option<AccessToken>, StoreError> {
    let Some(row) = row else {
        return Ok(None);
    };
    let Some(hash) = row.opt_text("access_token_hash")? else {
        return Ok(None);
    };
    let generation = row
        .opt_int("access_token_gen")?
        .map(u32::try_from)
        .transpose()
        .map_err(|_| StoreError::Corrupt("access_token_gen out of range".into()))?;
    Ok(Some(AccessToken { hash, generation }))
}

/// Every state with its count from [`state_counts_query`] rows: zero for a state with no row,
/// and a row of an unknown state ignored.
pub(crate) fn state_counts(rows: &[impl SqlRow]) -> Result<StateCounts, StoreError> {
    let mut found = Vec::with_capacity(rows.len());
    for r in rows {
        found.push((r.text("state")?, r.int("n")?));
    }
    Ok(OrderState::ALL
        .iter()
        .map(|s| {
            let n = found
                .iter()
                .find(|(name, _)| name == s.as_str())
                .map_or(0, |(_, n)| u64::try_from(*n).unwrap_or(0));
            (*s, n)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The last definition of the partial index `orders_due` in a backend's migrations (a later
    /// migration may redefine it).
    fn orders_due_index(backend: &str) -> String {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(backend);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .collect();
        files.sort();
        let mut last = None;
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for stmt in text.split(';') {
                let flat = stmt.split_whitespace().collect::<Vec<_>>().join(" ");
                if flat.contains("INDEX orders_due ") {
                    last = Some(flat);
                }
            }
        }
        last.unwrap_or_else(|| panic!("no orders_due index in {}", dir.display()))
    }

    #[test]
    fn the_active_states_are_the_domains_and_the_due_index_covers_them() {
        for s in OrderState::ALL {
            let quoted = format!("'{}'", s.as_str());
            assert_eq!(ACTIVE_STATES.contains(&quoted), s.is_workable(), "{s}");
        }
        // The claim's `state IN (...)` must match the partial index, or the claim scans the table.
        for backend in ["sqlite", "postgres"] {
            let index = orders_due_index(backend);
            assert!(
                index.ends_with(&format!("WHERE state IN {}", *ACTIVE_STATES)),
                "{backend}: {index} does not cover exactly {}",
                *ACTIVE_STATES
            );
        }
    }

    #[test]
    fn chained_statements_number_their_placeholders_on() {
        let a = Stmt::new("UPDATE t SET a = $1 WHERE b = $2").int(1).int(2);
        let b = Stmt::new("INSERT INTO u VALUES ($1, $2, $1)")
            .int(3)
            .str("x");
        let c = Stmt::chain([a, b, Stmt::new("DELETE FROM v WHERE w = $1").int(4)]).unwrap();
        assert_eq!(
            c.sql,
            "UPDATE t SET a = $1 WHERE b = $2;\nINSERT INTO u VALUES ($3, $4, $3);\nDELETE FROM v WHERE w = $5"
        );
        assert_eq!(c.args.len(), 5);
        assert!(Stmt::chain(Vec::new()).is_none());
    }

    #[test]
    fn placeholders_are_numbered_in_the_order_values_are_bound() {
        let o = crate::domain::Order::accept(
            crate::domain::NewOrder::parse(&crate::domain::OrderRequest {
                order_ref: "r".into(),
                package: 5,
                ram_gb: 2,
                customer: crate::domain::order::CustomerRequest {
                    email: "a@example.com".into(),
                    name: "A".into(),
                },
                os: None,
            })
            .unwrap(),
            Timestamp(1),
        );
        let lease = Lease {
            order_id: o.id.clone(),
            worker: "w".into(),
            token: 3,
            expires_at: Timestamp(9),
        };
        let change = Change {
            credentials: Some(vec![1]),
            ..Change::default()
        };
        let s = update_order(Some(&lease), &o, &change);
        assert_eq!(s.args.len(), 13);
        assert!(s.sql.contains("credentials = $10"), "{}", s.sql);
        assert!(
            s.sql
                .ends_with("WHERE id = $11 AND lease_token = $12 AND lease_owner = $13"),
            "{}",
            s.sql
        );
    }
}
