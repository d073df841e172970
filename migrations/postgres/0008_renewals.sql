-- Issue 14 (PostgreSQL): renewals (the renewal ledger) and what the engine keeps about each server's term.

-- One row per paid (or admin-granted) renewal. Each renewvps is recorded before it is sent
-- (sent_at and the ExpiryDate read just before, outcome NULL) and its outcome after: a row with
-- sent_at and no outcome is a call cut off by a crash, settled by reading ExpiryDate, never sent
-- again blindly.
CREATE TABLE renewals (
    id             BIGSERIAL PRIMARY KEY,
    order_id       TEXT NOT NULL REFERENCES orders (id),
    renewal_ref    TEXT NOT NULL,
    requested_by   TEXT NOT NULL,
    reason         TEXT,
    created_at     BIGINT NOT NULL,
    state          TEXT NOT NULL,
    attempts       BIGINT NOT NULL DEFAULT 0,
    sent_at        BIGINT,
    outcome        TEXT,
    outcome_reason TEXT,
    expiry_before  TEXT,
    expiry_after   TEXT,
    finished_at    BIGINT,
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
    cancelled_at BIGINT,
    cancelled_by TEXT
);
