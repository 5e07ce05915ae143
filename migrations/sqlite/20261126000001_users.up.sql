-- Users and their refresh tokens. A user's account is the balances row with the same id,
-- so user ids start at 1: id 0 is the system `external` account and never a user.
-- Times are integer microseconds since the Unix epoch; ids are hyphenated UUID text.

CREATE TABLE users (
    -- AUTOINCREMENT: an id is never reused, even after the highest user is deleted.
    id            INTEGER PRIMARY KEY AUTOINCREMENT CHECK (id > 0),
    username      TEXT NOT NULL,
    email         TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('user', 'admin')),
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    deleted_at    INTEGER,
    -- Bumped when the user's tokens must stop working (new password, role change,
    -- deletion); tokens carry the version they were issued under.
    token_version INTEGER NOT NULL DEFAULT 0
);

-- Usernames and emails are unique whatever their case, deleted users included (a name
-- once used is never handed to someone else). The store maps a violation of either
-- index to a typed error by the index's name, so these names are part of the contract.
-- SQLite's lower() folds ASCII letters only.
CREATE UNIQUE INDEX users_username_lower ON users (lower(username));
CREATE UNIQUE INDEX users_email_lower ON users (lower(email));

CREATE TABLE refresh_tokens (
    id         TEXT PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users (id),
    -- Every token rotated from one login shares its family; reusing a spent token
    -- revokes the whole family.
    family     TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    used_at    INTEGER,
    revoked_at INTEGER
) WITHOUT ROWID;

CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family);
