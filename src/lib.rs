//! Conversation Session Service: sessions (phone calls) and their immutable events, over
//! REST, stored in MongoDB or in memory.

pub mod app;
pub mod cli;
pub mod config;
pub mod domain;
pub mod feed;
#[cfg(test)]
mod fuzz;
pub mod http;
pub mod metrics;
pub mod service;
pub mod store;
pub mod telemetry;

pub use app::{shutdown_signal, Application};
pub use config::Config;
