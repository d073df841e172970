-- Issue 11: which storefront sent each order, and derived customer access tokens.

-- The configured storefront's name; NULL for orders taken before storefronts authenticated.
ALTER TABLE orders ADD COLUMN storefront TEXT;
-- The rotation the access token was derived for (0 at intake). NULL with a hash: a random token
-- issued before tokens were derived, which can be rotated but not handed out again.
ALTER TABLE orders ADD COLUMN access_token_gen INTEGER;
