-- Issue 13 (PostgreSQL): actions on a customer's server (start, stop, reboot, reinstall, change OS), the OS
-- install of provisioning, and what status last said about each server.

-- One row per action. Each upstream call of its current stage is recorded before it is sent
-- (sent_at set, outcome NULL) and its outcome after: a row found with sent_at and no outcome is a
-- call cut off by a crash, settled by reading status, never sent again blindly.
CREATE TABLE server_actions (
    id                  BIGSERIAL PRIMARY KEY,
    order_id            TEXT NOT NULL REFERENCES orders (id),
    kind                TEXT NOT NULL,
    os                  TEXT,
    requested_by        TEXT NOT NULL,
    reason              TEXT,
    created_at          BIGINT NOT NULL,
    state               TEXT NOT NULL,
    stage               TEXT NOT NULL,
    attempts            BIGINT NOT NULL DEFAULT 0,
    sent_at             BIGINT,
    outcome             TEXT,
    outcome_reason      TEXT,
    install_started_at  BIGINT,
    old_password_digest TEXT,
    finished_at         BIGINT,
    result              TEXT
);
-- Never two actions in flight on one server.
CREATE UNIQUE INDEX server_actions_one_open ON server_actions (order_id) WHERE state = 'pending';
CREATE INDEX server_actions_order ON server_actions (order_id, created_at);

CREATE TABLE server_facts (
    order_id      TEXT PRIMARY KEY REFERENCES orders (id),
    power         TEXT,
    os            TEXT,
    expiry        TEXT,
    action_status TEXT,
    checked_at    BIGINT NOT NULL
);

-- A worker now also claims ready orders whose server has an action due, and orders installing
-- their ordered OS.
DROP INDEX orders_due;
CREATE INDEX orders_due ON orders (run_at) WHERE state IN ('queued', 'buying', 'awaiting_credentials', 'installing_os', 'ready');
