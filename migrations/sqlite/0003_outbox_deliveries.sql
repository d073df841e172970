-- One row per (event, channel): a notice fanned out to two webhooks and the customer's email is
-- three deliveries, each with its own attempts and schedule, so one failing receiver neither
-- blocks nor repeats the others. No secrets in here either: credentials are decrypted at send.
CREATE TABLE outbox_deliveries (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    -- Idempotency key sent to the receiver; UNIQUE makes a repeated fan-out a no-op.
    key              TEXT NOT NULL UNIQUE,
    event_id         TEXT NOT NULL,
    notice_id        INTEGER REFERENCES outbox (id),
    -- NULL for alerts that are not about an order (low stock).
    order_id         TEXT REFERENCES orders (id),
    kind             TEXT NOT NULL,
    channel          TEXT NOT NULL,
    detail           TEXT,
    created_at       INTEGER NOT NULL,
    -- Attempts started, counted at claim time so a crash mid-send still counts.
    attempts         INTEGER NOT NULL DEFAULT 0,
    -- When the next attempt is due; NULL once delivered or abandoned.
    next_at          INTEGER,
    claimed_by       TEXT,
    claim_token      INTEGER NOT NULL DEFAULT 0,
    claim_expires_at INTEGER,
    delivered_at     INTEGER,
    last_error       TEXT
);
CREATE INDEX outbox_deliveries_due ON outbox_deliveries (next_at) WHERE next_at IS NOT NULL;
CREATE INDEX outbox_deliveries_order ON outbox_deliveries (order_id);
