//! Tally's HTTP service: configuration, telemetry, startup and routes over the engine in
//! `tally-actors`. It knows no SQL beyond what the engine's store exposes.

pub mod cli;
pub mod configuration;
pub mod routes;
pub mod startup;
pub mod telemetry;
