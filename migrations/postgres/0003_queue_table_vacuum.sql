-- The queue tables churn: every order's row is updated about six times on its way to ready, its
-- flight row is inserted and deleted once per purchase, and every notice and delivery row is
-- updated as it is sent. Each update leaves a dead row version and dead index entries, and the
-- claim (an index scan of orders_due in run_at order) walks past the dead entries of every order
-- finished since the last vacuum. PostgreSQL's default waits for 20% of a table to be dead; on a
-- table of a million orders that is 200,000 dead entries in front of every claim. Vacuum these at
-- 1% instead (flights, a handful of live rows, after 500 dead ones), and leave room on each orders
-- page so the lease-only updates of a claim can stay on the page (HOT) without touching indexes.
ALTER TABLE orders SET (
    fillfactor = 90,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.02
);
ALTER TABLE flights SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 500);
ALTER TABLE outbox SET (autovacuum_vacuum_scale_factor = 0.01);
ALTER TABLE outbox_deliveries SET (autovacuum_vacuum_scale_factor = 0.01);
