-- Issue 14: renewals (the renewal ledger) and what the engine keeps about each server's term.

-- One row per paid (or admin-granted) renewal. Each renewvps is recorded before it is sent
-- (sent_at and the ExpiryDate read just before, outcome NULL) and its outcome after: a row with
-- sent_at and no outcome is a call cut off by a crash, settled by reading ExpiryDate, never sent
-- again blindly.
CREATE TABLE renewals (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id       TEXT NOT NULL REFERENCES orders (id),
    renewal_ref    TEXT NOT NULL,
    requested_by   TEXT NOT NULL,
    reason         TEXT,
    created_at     INTEGER NOT NULL,
    state          TEXT NOT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    sent_at        INTEGER,
    outcome        TEXT,
    outcome_reason TEXT,
    expiry_before  TEXT,
    expiry_after   TEXT,
    finished_at    INTEGER,
    result         TEXT
);
-- A replayed webhook finds the renewal it paid for and never renews twice.
CREATE UNIQUE INDEX renewals_ref ON renewals (renewal_ref);
CREATE INDEX renewals_order ON renewals (order_id, id);

-- One row per server once the engine has something to keep about its term: the ExpiryDate its
-- reminder went out for, and whether its service was cancelled (not to be renewed).
CREATE TABLE server_terms (
    order_id     TEXT PRIMARY KEY REFERENCES orders (id),
    reminded_for TEXT,
    cancelled_at INTEGER,
    cancelled_by TEXT
);
