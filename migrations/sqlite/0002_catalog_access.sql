-- Issue 4: the package catalog (SmartVPS's ipstock, keyed by PID) and per-order customer access.

-- The last ipstock read, replaced whole on every sync.
CREATE TABLE packages (
    id        INTEGER PRIMARY KEY,
    name      TEXT NOT NULL,
    free      INTEGER NOT NULL,
    status    TEXT NOT NULL,
    synced_at INTEGER NOT NULL
);

-- SHA-256 (hex) of the order's customer access token; the token itself is never stored.
ALTER TABLE orders ADD COLUMN access_token_hash TEXT;
