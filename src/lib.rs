//! Tally's HTTP service: configuration, telemetry, authentication, startup and routes
//! over the engine in `tally-actors`. It knows no SQL beyond what the engine's store
//! exposes.

pub mod auth;
pub mod cache;
pub mod cli;
pub mod configuration;
pub mod domain;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod middleware;
pub mod rate_limit;
pub mod redis_link;
pub mod routes;
pub mod startup;
pub mod telemetry;
