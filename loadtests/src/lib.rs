//! `tally-loadtest`: the load tester of Tally (design.md §10).
//!
//! * [`workload`] — what to send: operation mix, account shapes, amounts;
//! * [`runner`] — how to send it: closed loop or open loop (coordinated omission
//!   corrected), live progress;
//! * [`client`] — HTTP to Tally: login, retries with idempotency keys, the write log;
//!   [`http`] — its lean keep-alive transport; [`owners`] — the users' own tokens;
//! * [`report`] — HdrHistogram latencies, outcome and error counts, the report;
//! * [`plot`] — the per-second timeline as SVG;
//! * [`setup`] — users created in the store and funded through the API;
//! * [`verify`] — the ledger's invariants, from the store and through the API, and every
//!   acknowledged write of a run;
//! * [`server`] and [`chaos`] — Tally started, killed and restarted by the tester;
//! * [`session`] — one run from start to verdict; [`cli`] — the command line.
//!
//! The binary is `src/main.rs`; everything testable lives here.

pub mod chaos;
pub mod cli;
pub mod client;
pub mod database;
pub mod http;
pub mod owners;
pub mod plot;
pub mod report;
pub mod runner;
pub mod server;
pub mod session;
pub mod setup;
pub mod verify;
pub mod workload;
