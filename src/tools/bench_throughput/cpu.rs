//! CPU time, read from `/proc`: of this process, and of the PostgreSQL backends serving the
//! benchmark's database. On this machine CPU, not the disk, is what binds (see
//! `docs/benchmarks.md`), so CPU-seconds per order is the figure to compare.

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on every Linux ABI).
const TICKS_PER_SECOND: f64 = 100.0;

/// User plus system CPU seconds of process `pid` (`"self"` for this one), all threads, from
/// `/proc/<pid>/stat`; `None` when it is gone or unreadable.
pub(super) fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: count fields after its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of the line, utime 14 and stime 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

/// The CPU of the PostgreSQL backends connected to one database, sampled by pid: a backend's
/// seconds count from the first sample that saw it (or from zero if it started after the
/// first sample). A backend that exits between samples takes its seconds with it (the
/// housekeeping's short vacuum connection), so this is a lower bound.
pub(super) struct BackendCpu {
    conn: sqlx::PgConnection,
    /// CPU seconds per backend pid at the first sample.
    start: std::collections::HashMap<i32, f64>,
}

impl BackendCpu {
    /// Samples the backends of the database at `url`, through a connection of its own (which
    /// is left out of the figure).
    pub(super) async fn start(url: &str) -> anyhow::Result<Self> {
        use sqlx::Connection;
        let conn = sqlx::PgConnection::connect(url).await?;
        let mut me = Self {
            conn,
            start: std::collections::HashMap::new(),
        };
        me.start = me.sample().await?;
        Ok(me)
    }

    async fn sample(&mut self) -> anyhow::Result<std::collections::HashMap<i32, f64>> {
        let pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_all(&mut self.conn)
        .await?;
        Ok(pids
            .into_iter()
            .filter_map(|pid| cpu_seconds(&pid.to_string()).map(|s| (pid, s)))
            .collect())
    }

    /// CPU seconds the database's backends used since [`BackendCpu::start`]; `None` when
    /// their `/proc` entries cannot be read (the server is on another machine).
    pub(super) async fn since_start(&mut self) -> anyhow::Result<Option<f64>> {
        let now = self.sample().await?;
        if now.is_empty() && self.start.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            now.iter()
                .map(|(pid, s)| s - self.start.get(pid).copied().unwrap_or(0.0))
                .sum(),
        ))
    }
}
