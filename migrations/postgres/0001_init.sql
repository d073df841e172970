-- The PostgreSQL schema mirrors migrations/sqlite/0001_init.sql column for column. Every integer
-- is BIGINT (timestamps are milliseconds bound from the Clock, never SQL now()), so one Rust type
-- (i64) reads every numeric column on both backends.

-- Orders, with the worker lease and fencing token on the row itself.
CREATE TABLE orders (
    id               TEXT PRIMARY KEY,
    order_ref        TEXT NOT NULL UNIQUE,
    fingerprint      TEXT NOT NULL,
    package_id       BIGINT NOT NULL,
    ram_gb           BIGINT NOT NULL,
    customer_email   TEXT NOT NULL,
    customer_name    TEXT NOT NULL,
    os               TEXT,
    state            TEXT NOT NULL,
    buy_attempts     BIGINT NOT NULL DEFAULT 0,
    status_attempts  BIGINT NOT NULL DEFAULT 0,
    server_ip        TEXT,
    failure_phase    TEXT,
    failure_reason   TEXT,
    run_at           BIGINT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    ready_at         BIGINT,
    lease_owner      TEXT,
    lease_token      BIGINT NOT NULL DEFAULT 0,
    lease_expires_at BIGINT,
    credentials      BYTEA
);
-- What claim_due scans: active orders by due time. Partial, so finished orders (the bulk of the
-- table after a while) cost the claim nothing.
CREATE INDEX orders_due ON orders (run_at) WHERE state IN ('queued', 'buying', 'awaiting_credentials');
CREATE INDEX orders_created ON orders (created_at);
CREATE INDEX orders_server_ip ON orders (server_ip);

CREATE TABLE timeline (
    id       BIGSERIAL PRIMARY KEY,
    order_id TEXT NOT NULL REFERENCES orders (id),
    at       BIGINT NOT NULL,
    kind     TEXT NOT NULL,
    message  TEXT NOT NULL
);
CREATE INDEX timeline_order ON timeline (order_id, id);

-- The purchase ledger: the intent row is committed before buyvps is sent.
CREATE TABLE purchases (
    id                BIGSERIAL PRIMARY KEY,
    order_id          TEXT NOT NULL REFERENCES orders (id),
    attempt           BIGINT NOT NULL,
    package_id        BIGINT NOT NULL,
    package_name      TEXT NOT NULL,
    stock_before      BIGINT,
    sent_at           BIGINT NOT NULL,
    outcome           TEXT,
    outcome_ip        TEXT,
    outcome_reason    TEXT,
    decided_at        BIGINT,
    resolution        TEXT,
    resolution_detail TEXT,
    late_ip           TEXT
);
CREATE INDEX purchases_order ON purchases (order_id, id);
CREATE INDEX purchases_ip ON purchases (outcome_ip);
-- owner_of asks `outcome_ip = $1 OR late_ip = $1` after every successful purchase: without this
-- index the OR turns into a scan of the whole ledger, and throughput falls as the ledger grows.
CREATE INDEX purchases_late_ip ON purchases (late_ip) WHERE late_ip IS NOT NULL;

-- Per-package single flight: at most one order with a purchase in flight per package, across
-- every process on this database.
CREATE TABLE flights (
    package_id  BIGINT PRIMARY KEY,
    order_id    TEXT NOT NULL REFERENCES orders (id)
);
CREATE INDEX flights_order ON flights (order_id);

-- Notices written with the state change that causes them; no secrets in here.
CREATE TABLE outbox (
    id           BIGSERIAL PRIMARY KEY,
    order_id     TEXT NOT NULL REFERENCES orders (id),
    kind         TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    attempts     BIGINT NOT NULL DEFAULT 0,
    next_at      BIGINT,
    delivered_at BIGINT,
    last_error   TEXT
);
CREATE INDEX outbox_due ON outbox (next_at) WHERE next_at IS NOT NULL;
