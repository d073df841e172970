// The issue 16 peer benchmark: provisioner's four-step workflow (intake, buy, status, notify)
// on graphile-worker and on pg-boss, each on a fresh database of the same PostgreSQL server that
// `provisioner bench throughput --store postgres` uses. Zero upstream latency: "buy" and
// "status" are instant, as the provisioner benchmark's in-process simulator is. Not part of CI.
//
//   node run.mjs graphile|pgboss      one run, one JSON line on stdout
//
// `run.sh` interleaves these runs with `provisioner bench throughput` and prints one table.
//
// Per order each system does: intake = one transaction inserting the order row and enqueuing
// "buy"; each of buy, status and notify = the job fetched, one transaction updating the order
// row and enqueuing the next job (notify enqueues nothing), then the job completed by the queue.
// Much less than provisioner does per order (no lease fencing, no ledger, no flight, no
// timeline, no outbox, no encryption): the comparison flatters the peers.
//
// Environment: PEER_DATABASE_URL (a database on the server; fresh ones are created beside it,
// default postgres://postgres@127.0.0.1:5432/postgres), PEER_ORDERS (10000), PEER_WORKERS (16).

import fs from "node:fs";
import pg from "pg";
import { Logger, run as runGraphile } from "graphile-worker";
import PgBoss from "pg-boss";

const ADMIN = process.env.PEER_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
const ORDERS = Number(process.env.PEER_ORDERS ?? 10000);
const WORKERS = Number(process.env.PEER_WORKERS ?? 16);

function urlFor(db) {
  const u = new URL(ADMIN);
  u.pathname = `/${db}`;
  return u.toString();
}

async function admin(sql) {
  const c = new pg.Client({ connectionString: ADMIN });
  await c.connect();
  try {
    await c.query(sql);
  } finally {
    await c.end();
  }
}

/** CPU seconds (user + system) of a process, from /proc; null when gone. */
function cpuSeconds(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return null;
  }
}

/** The database's counters and its backends' CPU, for before/after differences. */
async function sample(client) {
  const s = await client.query(
    "SELECT xact_commit::bigint AS commits, pg_current_wal_lsn() AS lsn FROM pg_stat_database WHERE datname = current_database()",
  );
  const pids = await client.query(
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
  );
  const cpu = new Map();
  for (const { pid } of pids.rows) {
    const s2 = cpuSeconds(pid);
    if (s2 !== null) cpu.set(pid, s2);
  }
  return { commits: Number(s.rows[0].commits), lsn: s.rows[0].lsn, cpu };
}

async function main() {
  const system = process.argv[2];
  if (system !== "graphile" && system !== "pgboss") {
    throw new Error("usage: node run.mjs graphile|pgboss");
  }
  const db = `peer_bench_${system}_${process.pid}_${Date.now()}`;
  await admin(`CREATE DATABASE ${db}`);
  const url = urlFor(db);
  const pool = new pg.Pool({ connectionString: url, max: WORKERS });
  // The database is dropped WITH (FORCE) at the end: idle connections it cuts are expected.
  pool.on("error", () => {});
  try {
    await pool.query(
      "CREATE TABLE orders (id BIGINT PRIMARY KEY, state TEXT NOT NULL, ip TEXT, credentials TEXT, created_at BIGINT NOT NULL, ready_at BIGINT, notified_at BIGINT)",
    );
    const result = system === "graphile" ? await graphile(url, pool) : await pgboss(url, pool);
    console.log(JSON.stringify({ system, orders: ORDERS, workers: WORKERS, ...result }));
  } finally {
    await pool.end();
    await admin(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
  }
}

/** Runs `work` (the intake and the jobs) and measures it until every order is notified. */
async function measure(pool, start, intake) {
  const probe = await pool.connect();
  const before = await sample(probe);
  const cpuBefore = process.cpuUsage();
  const t0 = performance.now();
  await intake();
  for (;;) {
    const r = await probe.query("SELECT count(*)::int AS n FROM orders WHERE notified_at IS NOT NULL");
    if (r.rows[0].n >= ORDERS) break;
    await new Promise((res) => setTimeout(res, 20));
  }
  const seconds = (performance.now() - t0) / 1000;
  const after = await sample(probe);
  const wal = await probe.query("SELECT pg_wal_lsn_diff($1, $2)::float8 AS bytes", [after.lsn, before.lsn]);
  probe.release();
  const own = process.cpuUsage(cpuBefore);
  let backends = 0;
  for (const [pid, s] of after.cpu) backends += s - (before.cpu.get(pid) ?? 0);
  void start;
  return {
    orders_per_s: ORDERS / seconds,
    seconds,
    // Every transaction the database committed, reads included (pg_stat_database counts both).
    commits_per_order: (after.commits - before.commits) / ORDERS,
    wal_bytes_per_order: wal.rows[0].bytes / ORDERS,
    cpu_ms_per_order_process: ((own.user + own.system) / 1000) / ORDERS,
    cpu_ms_per_order_backends: (backends * 1000) / ORDERS,
  };
}

/** 16 concurrent intake streams, each order one transaction with its first job. */
async function intakeStreams(pool, enqueue) {
  let next = 0;
  const stream = async () => {
    for (;;) {
      const id = next++;
      if (id >= ORDERS) return;
      const c = await pool.connect();
      try {
        await c.query("BEGIN");
        await c.query("INSERT INTO orders (id, state, created_at) VALUES ($1, 'queued', $2)", [id, Date.now()]);
        await enqueue(c, "buy", { id });
        await c.query("COMMIT");
      } catch (e) {
        await c.query("ROLLBACK");
        throw e;
      } finally {
        c.release();
      }
    }
  };
  await Promise.all(Array.from({ length: WORKERS }, stream));
}

/** One workflow step: the order row updated and the next job enqueued, one transaction. */
async function step(c, name, id, enqueue) {
  await c.query("BEGIN");
  if (name === "buy") {
    await c.query("UPDATE orders SET state = 'bought', ip = $2 WHERE id = $1", [id, `10.0.${id >> 8 & 255}.${id & 255}`]);
    await enqueue(c, "status", { id });
  } else if (name === "status") {
    await c.query("UPDATE orders SET state = 'ready', credentials = 'root:secret', ready_at = $2 WHERE id = $1", [id, Date.now()]);
    await enqueue(c, "notify", { id });
  } else {
    await c.query("UPDATE orders SET notified_at = $2 WHERE id = $1", [id, Date.now()]);
  }
  await c.query("COMMIT");
}

/** Errors only: graphile-worker's default logger prints a line per job, which would be measured. */
const quiet = new Logger(() => (level, message) => {
  if (level === "error") console.error(message);
});

/** graphile-worker 0.16 with its documented defaults (jobs wake workers by LISTEN/NOTIFY), quiet. */
async function graphile(url, pool) {
  // Migrate before measuring.
  const warm = await runGraphile({ connectionString: url, concurrency: 1, noHandleSignals: true, logger: quiet, taskList: {} });
  await warm.stop();
  const enqueue = (c, name, payload) =>
    c.query("SELECT graphile_worker.add_job($1, $2::json)", [name, JSON.stringify(payload)]);
  const task = (name) => async (payload, helpers) => {
    await helpers.withPgClient((c) => step(c, name, payload.id, enqueue));
  };
  let runner;
  const out = await measure(pool, null, async () => {
    runner = await runGraphile({
      connectionString: url,
      concurrency: WORKERS,
      noHandleSignals: true,
      logger: quiet,
      taskList: { buy: task("buy"), status: task("status"), notify: task("notify") },
    });
    await intakeStreams(pool, enqueue);
  });
  await runner.stop();
  return out;
}

/**
 * pg-boss 10: per queue, WORKERS / 4 workers fetching batches of 16 (16 workers' worth of jobs
 * in flight over the three queues), and every send wakes one of the next queue's workers
 * in-process (`notifyWorker`) instead of waiting for its poll.
 */
async function pgboss(url, pool) {
  const boss = new PgBoss({ connectionString: url, max: WORKERS });
  boss.on("error", (e) => console.error("pg-boss:", e.message));
  await boss.start();
  for (const q of ["buy", "status", "notify"]) await boss.createQueue(q);
  const workers = { buy: [], status: [], notify: [] };
  let turn = 0;
  const enqueue = async (c, name, payload) => {
    await boss.send(name, payload, { db: { executeSql: (text, values) => c.query(text, values) } });
    const ids = workers[name];
    if (ids.length) boss.notifyWorker(ids[turn++ % ids.length]);
  };
  const perQueue = Math.max(1, Math.floor(WORKERS / 4));
  const out = await measure(pool, null, async () => {
    for (const name of ["buy", "status", "notify"]) {
      for (let i = 0; i < perQueue; i++) {
        const id = await boss.work(name, { batchSize: 16, pollingIntervalSeconds: 0.5 }, async (jobs) => {
          const c = await pool.connect();
          try {
            for (const job of jobs) await step(c, name, job.data.id, enqueue);
          } finally {
            c.release();
          }
        });
        workers[name].push(id);
      }
    }
    await intakeStreams(pool, enqueue);
  });
  await boss.stop({ graceful: false, wait: true });
  return out;
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
