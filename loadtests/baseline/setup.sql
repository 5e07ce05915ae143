-- The plain-PostgreSQL baseline's tables: the least a correct ledger needs to do what
-- one Tally transfer does (two balances, one journal row, history indexed by account).
--
--   psql "$URL" -v accounts=100000 -v initial_balance=100000 -f loadtests/baseline/setup.sql
--
-- accounts: how many accounts (ids 1..accounts), as Tally's load-test users;
-- initial_balance: each account's balance in minor units (100000 = 1000.00, what
-- `tally-loadtest setup` funds by default).

\set ON_ERROR_STOP on
SET client_min_messages = warning;

DROP TABLE IF EXISTS baseline_journal;
DROP TABLE IF EXISTS baseline_accounts;

CREATE TABLE baseline_accounts (
    id      BIGINT PRIMARY KEY,
    -- The conditional debit in transfer.sql refuses insufficient funds; the check is
    -- the database's own guarantee on top.
    balance BIGINT NOT NULL CHECK (balance >= 0),
    version BIGINT NOT NULL DEFAULT 0
);

-- One row per attempt, refused ones included, as Tally records failed transfers.
CREATE TABLE baseline_journal (
    id         BIGSERIAL PRIMARY KEY,
    from_id    BIGINT NOT NULL,
    to_id      BIGINT NOT NULL,
    amount     BIGINT NOT NULL CHECK (amount > 0),
    status     TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Each account's history from both sides, as Tally indexes its journal.
CREATE INDEX baseline_journal_from ON baseline_journal (from_id, created_at);
CREATE INDEX baseline_journal_to ON baseline_journal (to_id, created_at);

INSERT INTO baseline_accounts (id, balance)
SELECT account, :initial_balance FROM generate_series(1, :accounts) AS account;

VACUUM ANALYZE baseline_accounts;
