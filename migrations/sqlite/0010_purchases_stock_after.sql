-- The package's free count read by the reconciliation that settled an unknown purchase, after
-- its horizon. Beside `stock_before` it says whether the package can have run dry while the
-- purchase could complete (SmartVPS then places it in another package): a discovery scan of
-- another package uses it to tell whether that purchase can own a server it found.
ALTER TABLE purchases ADD COLUMN stock_after INTEGER;
