-- What landed beside the PostgreSQL store: the pool-wide free count recorded with each purchase
-- intent (evidence for an admin), the package catalog and customer access tokens, and one outbox
-- delivery per (event, channel). Mirrors SQLite's migrations 2 and 3 and 0001's pool_before.

ALTER TABLE purchases ADD COLUMN pool_before BIGINT;

-- The last ipstock read, replaced whole on every sync.
CREATE TABLE packages (
    id        BIGINT PRIMARY KEY,
    name      TEXT NOT NULL,
    free      BIGINT NOT NULL,
    status    TEXT NOT NULL,
    synced_at BIGINT NOT NULL
);

-- SHA-256 (hex) of the order's customer access token; the token itself is never stored.
ALTER TABLE orders ADD COLUMN access_token_hash TEXT;

-- One row per (event, channel); the unique key makes a repeated fan-out a no-op.
CREATE TABLE outbox_deliveries (
    id               BIGSERIAL PRIMARY KEY,
    key              TEXT NOT NULL UNIQUE,
    event_id         TEXT NOT NULL,
    notice_id        BIGINT REFERENCES outbox (id),
    order_id         TEXT REFERENCES orders (id),
    kind             TEXT NOT NULL,
    channel          TEXT NOT NULL,
    detail           TEXT,
    created_at       BIGINT NOT NULL,
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_at          BIGINT,
    claimed_by       TEXT,
    claim_token      BIGINT NOT NULL DEFAULT 0,
    claim_expires_at BIGINT,
    delivered_at     BIGINT,
    last_error       TEXT
);
CREATE INDEX outbox_deliveries_due ON outbox_deliveries (next_at) WHERE next_at IS NOT NULL;
CREATE INDEX outbox_deliveries_order ON outbox_deliveries (order_id);
