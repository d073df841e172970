-- Issue 12: discovery's rival check reads the purchases that may still own an unaccounted
-- server (no outcome, or an unknown one) sent since a moment, instead of every order of the day.
-- Only those rows are indexed: settled purchases are the great majority and never asked for.
CREATE INDEX purchases_unknown ON purchases (sent_at) WHERE outcome IS NULL OR outcome = 'unknown';
