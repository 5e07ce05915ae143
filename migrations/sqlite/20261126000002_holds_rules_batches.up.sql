-- Holds, per-account rules, atomic batches and reversals. Times are integer
-- microseconds since the Unix epoch.

ALTER TABLE balances ADD COLUMN overdraft_limit INTEGER NOT NULL DEFAULT 0 CHECK (overdraft_limit >= 0);
ALTER TABLE balances ADD COLUMN max_balance INTEGER CHECK (max_balance >= 0);
ALTER TABLE balances ADD COLUMN daily_debit_cap INTEGER CHECK (daily_debit_cap > 0);
ALTER TABLE balances ADD COLUMN debit_day INTEGER NOT NULL DEFAULT 0;
ALTER TABLE balances ADD COLUMN debited_on_day INTEGER NOT NULL DEFAULT 0;

ALTER TABLE transactions ADD COLUMN held_amount INTEGER CHECK (held_amount > 0);
ALTER TABLE transactions ADD COLUMN expires_at INTEGER;
ALTER TABLE transactions ADD COLUMN parent_id TEXT;
ALTER TABLE transactions ADD COLUMN batch_id TEXT;
ALTER TABLE transactions ADD COLUMN leg INTEGER;

CREATE INDEX transactions_open_holds ON transactions (from_user_id) WHERE status = 'pending';
CREATE INDEX transactions_hold_expiry ON transactions (expires_at) WHERE status = 'pending';
CREATE INDEX transactions_reversals ON transactions (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX transactions_batches ON transactions (batch_id, leg) WHERE batch_id IS NOT NULL;
