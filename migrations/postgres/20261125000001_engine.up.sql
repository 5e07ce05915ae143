-- The engine's tables: balances (one row per account), transactions (which are also the
-- journal: each side's version and balance after the movement) and audit_logs.

CREATE TABLE balances (
    user_id         BIGINT PRIMARY KEY CHECK (user_id >= 0),
    amount          BIGINT NOT NULL DEFAULT 0,
    held            BIGINT NOT NULL DEFAULT 0 CHECK (held >= 0),
    status          TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'frozen', 'closed')),
    version         BIGINT NOT NULL DEFAULT 0 CHECK (version >= 0),
    last_updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Account 0 is the system account credits come from and debits go to.
INSERT INTO balances (user_id) VALUES (0);

CREATE TABLE transactions (
    id                   UUID PRIMARY KEY,
    type                 TEXT NOT NULL CHECK (type IN ('credit', 'debit', 'transfer', 'reversal')),
    status               TEXT NOT NULL
                         CHECK (status IN ('completed', 'rolled_back', 'failed', 'pending', 'posted', 'voided')),
    from_user_id         BIGINT NOT NULL,
    to_user_id           BIGINT NOT NULL,
    amount               BIGINT NOT NULL CHECK (amount > 0),
    from_version         BIGINT,
    from_balance_after   BIGINT,
    to_version           BIGINT,
    to_balance_after     BIGINT,
    refund_version       BIGINT,
    refund_balance_after BIGINT,
    failure_reason       TEXT,
    initiator_id         BIGINT,
    idempotency_key      TEXT,
    created_at           TIMESTAMPTZ NOT NULL,
    completed_at         TIMESTAMPTZ NOT NULL,
    CHECK (from_user_id <> to_user_id)
);

-- Each account's journal, in its own order, from both sides.
CREATE INDEX transactions_from_journal ON transactions (from_user_id, from_version);
CREATE INDEX transactions_to_journal ON transactions (to_user_id, to_version);
-- Refunds are journal entries of the source too; only rolled-back rows are indexed.
CREATE INDEX transactions_refund_journal ON transactions (from_user_id, refund_version)
    WHERE refund_version IS NOT NULL;
-- Idempotency keys are scoped to the requesting user; only keyed rows are indexed.
CREATE UNIQUE INDEX transactions_idempotency_key ON transactions (initiator_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE audit_logs (
    id            UUID PRIMARY KEY,
    entity_type   TEXT NOT NULL,
    entity_id     TEXT NOT NULL,
    action        TEXT NOT NULL,
    actor_user_id BIGINT,
    details       JSONB NOT NULL DEFAULT '{}',
    request_id    TEXT,
    created_at    TIMESTAMPTZ NOT NULL
);

CREATE INDEX audit_logs_entity ON audit_logs (entity_type, entity_id, created_at);
