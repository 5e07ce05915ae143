//! Engine tests, each run against PostgreSQL (a fresh database per test on
//! `DATABASE_URL`) and against an SQLite file.

mod support;

mod basics;
mod checkpoint;
mod crash;
mod features;
mod hammer;
mod idempotency;
mod outage;
mod passivation;
mod refund;
mod store_history;
mod store_users;
