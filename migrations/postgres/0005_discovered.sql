-- Issue 12 (PostgreSQL): the inventory of servers discovery scans found on our SmartVPS account.

-- Every server a scan found (status answered for it), once, with when it was first seen: a
-- later scan tells a server that appeared since (a candidate) from one seen before.
CREATE TABLE discovered (
    ip            TEXT PRIMARY KEY,
    package_id    BIGINT NOT NULL,
    ram_gb        BIGINT,
    expiry        TEXT,
    first_seen    BIGINT NOT NULL,
    -- The order the server is listed for as a candidate (needs_attention), if any.
    candidate_for TEXT
);
CREATE INDEX discovered_package ON discovered (package_id);
CREATE INDEX discovered_candidate_for ON discovered (candidate_for) WHERE candidate_for IS NOT NULL;
