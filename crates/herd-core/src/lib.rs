//! The pure core of herd: the pipeline model (herd.yml), requirements and
//! their matching, versions, and the scheduling decisions. No IO here: this
//! crate is tested without sockets, files or processes.
//!
//! Architecture invariant: nothing in this crate performs IO or reads the
//! clock; callers pass in the current time where a decision depends on it.

pub mod change;
pub mod config_error;
pub mod cron;
pub mod duration;
pub mod junit;
pub mod needs;
pub mod notify;
pub mod pipeline;
pub mod plan;
pub mod probe;
pub mod redact;
pub mod requirement;
pub mod results;
pub mod retention;
pub mod schedule;
pub mod secret_ref;
pub mod size;
pub mod split;
pub mod state;
pub mod version;
pub mod webhook;

pub use config_error::ConfigError;
pub use pipeline::Pipeline;
