-- Orders, with the worker lease and fencing token on the row itself.
CREATE TABLE orders (
    id               TEXT PRIMARY KEY,
    order_ref        TEXT NOT NULL UNIQUE,
    fingerprint      TEXT NOT NULL,
    package_id       INTEGER NOT NULL,
    ram_gb           INTEGER NOT NULL,
    customer_email   TEXT NOT NULL,
    customer_name    TEXT NOT NULL,
    os               TEXT,
    state            TEXT NOT NULL,
    buy_attempts     INTEGER NOT NULL DEFAULT 0,
    status_attempts  INTEGER NOT NULL DEFAULT 0,
    server_ip        TEXT,
    failure_phase    TEXT,
    failure_reason   TEXT,
    run_at           INTEGER,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    ready_at         INTEGER,
    lease_owner      TEXT,
    lease_token      INTEGER NOT NULL DEFAULT 0,
    lease_expires_at INTEGER,
    credentials      BLOB
);
CREATE INDEX orders_due ON orders (run_at) WHERE state IN ('queued', 'buying', 'awaiting_credentials');
CREATE INDEX orders_created ON orders (created_at);
CREATE INDEX orders_server_ip ON orders (server_ip);

CREATE TABLE timeline (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id TEXT NOT NULL REFERENCES orders (id),
    at       INTEGER NOT NULL,
    kind     TEXT NOT NULL,
    message  TEXT NOT NULL
);
CREATE INDEX timeline_order ON timeline (order_id, id);

-- The purchase ledger: the intent row is committed before buyvps is sent.
CREATE TABLE purchases (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id          TEXT NOT NULL REFERENCES orders (id),
    attempt           INTEGER NOT NULL,
    package_id        INTEGER NOT NULL,
    package_name      TEXT NOT NULL,
    stock_before      INTEGER,
    pool_before       INTEGER,
    sent_at           INTEGER NOT NULL,
    outcome           TEXT,
    outcome_ip        TEXT,
    outcome_reason    TEXT,
    decided_at        INTEGER,
    resolution        TEXT,
    resolution_detail TEXT,
    late_ip           TEXT
);
CREATE INDEX purchases_order ON purchases (order_id, id);
CREATE INDEX purchases_ip ON purchases (outcome_ip);

-- Per-package single flight: at most one order with a purchase in flight per package.
CREATE TABLE flights (
    package_id  INTEGER PRIMARY KEY,
    order_id    TEXT NOT NULL REFERENCES orders (id)
);

-- Notices written with the state change that causes them; no secrets in here.
CREATE TABLE outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id    TEXT NOT NULL REFERENCES orders (id),
    kind        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_at     INTEGER,
    delivered_at INTEGER,
    last_error  TEXT
);
CREATE INDEX outbox_due ON outbox (next_at) WHERE next_at IS NOT NULL;
