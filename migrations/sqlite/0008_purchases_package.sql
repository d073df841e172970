-- A buy attempt takes its package's flight only if no other order's purchase of the package went
-- out since it read the stock list (`purchases` newer than the one it saw): this index answers
-- "newest purchase of a package" and "any newer one" without scanning the ledger.
CREATE INDEX purchases_package ON purchases (package_id, id);
