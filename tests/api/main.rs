//! API tests: the real server on port 0 against a fresh database, on both stores.

mod helpers;

mod auth;
mod authorization;
mod bad_inputs;
mod balances;
mod batches;
mod cli;
mod concurrency;
mod health;
mod holds;
mod jwt;
mod logs;
mod metrics;
mod openapi;
mod redis;
mod rules;
mod transactions;
