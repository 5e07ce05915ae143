//! API tests: the real server on port 0 against a fresh database, on both stores.

mod helpers;

mod health;
