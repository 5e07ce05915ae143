-- Holds, per-account rules, atomic batches and reversals.

-- Rules an account's actor enforces, and the day's debits the daily cap counts.
ALTER TABLE balances
    ADD COLUMN overdraft_limit BIGINT NOT NULL DEFAULT 0 CHECK (overdraft_limit >= 0),
    ADD COLUMN max_balance     BIGINT CHECK (max_balance >= 0),
    ADD COLUMN daily_debit_cap BIGINT CHECK (daily_debit_cap > 0),
    -- Days since the Unix epoch (UTC) and what left the account that day.
    ADD COLUMN debit_day       BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN debited_on_day  BIGINT NOT NULL DEFAULT 0;

-- A hold is a transaction row with status 'pending' until it is posted or voided; its
-- original amount stays in held_amount when a partial post changes amount.
ALTER TABLE transactions
    ADD COLUMN held_amount BIGINT CHECK (held_amount > 0),
    ADD COLUMN expires_at  TIMESTAMPTZ,
    -- A reversal points at what it reverses.
    ADD COLUMN parent_id   UUID,
    -- The legs of an atomic batch share its id and are numbered from 0.
    ADD COLUMN batch_id    UUID,
    ADD COLUMN leg         INTEGER;

-- Open holds by account (loaded when an account's actor starts) and by expiry (the
-- engine's expiry timer): small, only pending rows.
CREATE INDEX transactions_open_holds ON transactions (from_user_id) WHERE status = 'pending';
CREATE INDEX transactions_hold_expiry ON transactions (expires_at) WHERE status = 'pending';
CREATE INDEX transactions_reversals ON transactions (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX transactions_batches ON transactions (batch_id, leg) WHERE batch_id IS NOT NULL;
