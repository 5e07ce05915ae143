//! The HTTP routes, one module per resource, and the OpenAPI document built from them.

pub mod admin;
pub mod auth;
pub mod balances;
pub mod health;
pub mod movements;
pub mod openapi;
pub mod rules;
pub mod transactions;
pub mod users;
pub mod views;
