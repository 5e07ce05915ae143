-- One transfer in plain SQL, for pgbench: the same work as Tally's transfer.
--
--   pgbench -n -M prepared -c 64 -j 2 -T 15 -D range=100000 -f loadtests/baseline/transfer.sql "$URL"
--
-- range: accounts 1..range take part: the account count for a uniform load, 10 for a
-- hot set of 10 (Tally's --shape hot-set --hot-accounts 10 uses its first 10 users the
-- same way). For a Zipf shape, replace the two random() calls with
-- random_zipfian(1, :range, 1.01).
--
-- Both rows are locked in id order first, so two opposite transfers cannot deadlock;
-- then a conditional debit (refused when the balance is short), the credit only when the
-- debit happened, and the journal row recording either outcome: one transaction.

\set from random(1, :range)
\set to random(1, :range - 1)
\set to CASE WHEN :to >= :from THEN :to + 1 ELSE :to END
-- 0.01 .. 10.00, Tally's default --amount-min / --amount-max.
\set amount random(1, 1000)
\set low least(:from, :to)
\set high greatest(:from, :to)

BEGIN;
SELECT id FROM baseline_accounts WHERE id IN (:low, :high) ORDER BY id FOR UPDATE;
WITH debit AS (
    UPDATE baseline_accounts SET balance = balance - :amount, version = version + 1
     WHERE id = :from AND balance >= :amount
     RETURNING id
), credit AS (
    UPDATE baseline_accounts SET balance = balance + :amount, version = version + 1
     WHERE id = :to AND EXISTS (SELECT 1 FROM debit)
     RETURNING id
)
INSERT INTO baseline_journal (from_id, to_id, amount, status)
SELECT :from, :to, :amount,
       CASE WHEN EXISTS (SELECT 1 FROM credit) THEN 'completed' ELSE 'failed' END;
END;
