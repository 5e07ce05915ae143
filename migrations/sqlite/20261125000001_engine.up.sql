-- The engine's tables: balances (one row per account), transactions (which are also the
-- journal: each side's version and balance after the movement) and audit_logs.
-- Times are integer microseconds since the Unix epoch; ids are hyphenated UUID text.

CREATE TABLE balances (
    user_id         INTEGER PRIMARY KEY CHECK (user_id >= 0),
    amount          INTEGER NOT NULL DEFAULT 0,
    held            INTEGER NOT NULL DEFAULT 0 CHECK (held >= 0),
    status          TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'frozen', 'closed')),
    version         INTEGER NOT NULL DEFAULT 0 CHECK (version >= 0),
    last_updated_at INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER))
);

-- Account 0 is the system account credits come from and debits go to.
INSERT INTO balances (user_id) VALUES (0);

CREATE TABLE transactions (
    id                   TEXT PRIMARY KEY,
    type                 TEXT NOT NULL CHECK (type IN ('credit', 'debit', 'transfer', 'reversal')),
    status               TEXT NOT NULL
                         CHECK (status IN ('completed', 'rolled_back', 'failed', 'pending', 'posted', 'voided')),
    from_user_id         INTEGER NOT NULL,
    to_user_id           INTEGER NOT NULL,
    amount               INTEGER NOT NULL CHECK (amount > 0),
    from_version         INTEGER,
    from_balance_after   INTEGER,
    to_version           INTEGER,
    to_balance_after     INTEGER,
    refund_version       INTEGER,
    refund_balance_after INTEGER,
    failure_reason       TEXT,
    initiator_id         INTEGER,
    idempotency_key      TEXT,
    created_at           INTEGER NOT NULL,
    completed_at         INTEGER NOT NULL,
    CHECK (from_user_id <> to_user_id)
) WITHOUT ROWID;

CREATE INDEX transactions_from_journal ON transactions (from_user_id, from_version);
CREATE INDEX transactions_to_journal ON transactions (to_user_id, to_version);
-- Refunds are journal entries of the source too; only rolled-back rows are indexed.
CREATE INDEX transactions_refund_journal ON transactions (from_user_id, refund_version)
    WHERE refund_version IS NOT NULL;
CREATE UNIQUE INDEX transactions_idempotency_key ON transactions (initiator_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE audit_logs (
    id            TEXT PRIMARY KEY,
    entity_type   TEXT NOT NULL,
    entity_id     TEXT NOT NULL,
    action        TEXT NOT NULL,
    actor_user_id INTEGER,
    details       TEXT NOT NULL DEFAULT '{}',
    request_id    TEXT,
    created_at    INTEGER NOT NULL
) WITHOUT ROWID;

CREATE INDEX audit_logs_entity ON audit_logs (entity_type, entity_id, created_at);
