-- owner_of asks `outcome_ip = ? OR late_ip = ?` after every successful purchase. Without an index
-- on late_ip SQLite answers the OR by scanning the whole ledger (EXPLAIN QUERY PLAN: SCAN
-- purchases), so each purchase costs more than the last; with it, MULTI-INDEX OR. Partial,
-- because almost every row's late_ip is NULL.
CREATE INDEX purchases_late_ip ON purchases (late_ip) WHERE late_ip IS NOT NULL;
