-- Issue 12: discovery scans of a package that were complete, with every `error` reply confirmed
-- by re-reads. A purchase whose horizon ended before such a scan started cannot own a server of
-- that package first seen after the scan finished (the scan would have found it), so it is no
-- rival for that server.
CREATE TABLE complete_scans (
    package_id  INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER NOT NULL
);
CREATE INDEX complete_scans_package ON complete_scans (package_id, started_at);
