-- Every group commit rewrites the balance row of each account it touched. With room left
-- on each page, PostgreSQL keeps the new row version on the same page and skips the
-- primary-key index (a heap-only update), and pruning reclaims the old versions without
-- waiting for vacuum. Only pages written from now on leave the room; VACUUM FULL
-- rewrites the existing ones.
ALTER TABLE balances SET (fillfactor = 50);
