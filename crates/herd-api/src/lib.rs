//! The types of herd's REST API (`/api/v1/…`): what the server answers and
//! what it takes, shared by the server (which serializes them and
//! generates its OpenAPI document from them), the `herd` CLI (which reads
//! them) and the tests.
//!
//! Compatibility rules, so that an older CLI reads a newer server:
//! * fields are only ever added, and an added field is optional or has a
//!   default (readers ignore fields they do not know);
//! * enums that will grow are `#[non_exhaustive]`, and match arms on them
//!   in other crates need a wildcard;
//! * times are milliseconds since the Unix epoch (UTC), sizes bytes,
//!   durations milliseconds.
//!
//! Architecture invariant: nothing here does IO or knows the server's
//! internals; the server maps its rows into these types in `api/`.

pub mod artifacts;
pub mod builds;
pub mod int;
pub mod ops;
pub mod projects;
pub mod tests;
pub mod tokens;
pub mod workers;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use herd_core::state::{AttemptState, RunState, StepState};

/// `as_str` and `Display` for an API enum: its name on the wire.
macro_rules! wire_names {
    ($name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }
    };
}
pub(crate) use wire_names;

/// The API's version, in its paths (`/api/v1/…`).
pub const API_VERSION: u32 = 1;

/// Every error answer: what went wrong and what to do next, in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

/// `GET /api/v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub ok: bool,
    /// The server's herd version.
    pub version: String,
    pub workers_online: u64,
    pub queued_jobs: u64,
}

/// `POST /api/v1/try`: a patch built on top of a revision the server has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TryRequest {
    pub project: String,
    /// The commit the patch applies to (40 hex digits): the merge base on
    /// the sender's side.
    #[schema(pattern = "^[0-9a-fA-F]{40}$")]
    pub base: String,
    /// `git diff --binary` output: not empty, at most 384 KiB.
    #[schema(pattern = "\\S", max_length = 393216)]
    pub patch: String,
    /// Only this builder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builder: Option<String>,
    /// The sender's git identity, shown beside the token's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
}

/// The answer to a try.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TryStarted {
    pub id: i64,
    /// The build's page.
    pub url: String,
}

/// The answer to a webhook delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum HookAnswer {
    /// The poller of `fetching` was woken.
    Fetching {
        fetching: String,
        #[serde(rename = "ref")]
        reference: Option<String>,
    },
    /// A ping, answered.
    Pong { ok: String },
    /// Nothing to do, and why.
    Ignored { ignored: String },
}
