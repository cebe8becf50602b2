//! Tokens: creating, listing and revoking them; enrolling a worker.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// What a token may do (docs/security.md has the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TokenKind {
    /// Everything.
    Admin,
    /// One worker's connection (and reading its own record).
    Worker,
    /// Trading for a worker token: `herd worker install`.
    Enroll,
    /// Sending try builds, and reading.
    Try,
    /// Reading only (a private server's pages and API).
    Read,
    /// Scraping `/metrics` only.
    Metrics,
}

crate::wire_names!(TokenKind {
    Admin => "admin",
    Worker => "worker",
    Enroll => "enroll",
    Try => "try",
    Read => "read",
    Metrics => "metrics",
});

/// A duration as people write it: `90s`, `20m`, `1h30m`, `7d`, or seconds.
pub const DURATION_PATTERN: &str = "^ *(?:[0-9]{1,9}|(?:[0-9]{1,9} *(?:ms|s|m|h|d) *){1,8})$";
/// A worker's name: letters, digits, `-`, `_` and `.`.
pub const WORKER_NAME_PATTERN: &str = "^[A-Za-z0-9._-]{1,100}$";

/// `POST /api/v1/tokens`: one kind of token and what that kind takes. An
/// admin token is made once, at the server's first start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum CreateToken {
    /// A worker's own token.
    Worker {
        #[schema(pattern = "^[A-Za-z0-9._-]{1,100}$")]
        worker: String,
        /// How long it is valid; none: until revoked.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(pattern = "^ *(?:[0-9]{1,9}|(?:[0-9]{1,9} *(?:ms|s|m|h|d) *){1,8})$")]
        expires: Option<String>,
    },
    /// Trades for a worker token, once per use (the one-line installer).
    Enroll {
        /// How many workers it may enroll; none: no limit.
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "crate::int::option_integral"
        )]
        #[schema(minimum = 1)]
        uses: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(pattern = "^ *(?:[0-9]{1,9}|(?:[0-9]{1,9} *(?:ms|s|m|h|d) *){1,8})$")]
        expires: Option<String>,
        /// Labels the workers it enrolls get.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        labels: Option<BTreeMap<String, String>>,
    },
    /// Sends try builds (`herd try`), and reads.
    Try {
        /// Who it is for (shown on their try builds).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(pattern = "^ *(?:[0-9]{1,9}|(?:[0-9]{1,9} *(?:ms|s|m|h|d) *){1,8})$")]
        expires: Option<String>,
    },
    /// Reads only: a private server's pages and API.
    Read {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(pattern = "^ *(?:[0-9]{1,9}|(?:[0-9]{1,9} *(?:ms|s|m|h|d) *){1,8})$")]
        expires: Option<String>,
    },
    /// Scrapes `GET /metrics` only (a Prometheus server's token).
    Metrics {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(pattern = "^ *(?:[0-9]{1,9}|(?:[0-9]{1,9} *(?:ms|s|m|h|d) *){1,8})$")]
        expires: Option<String>,
    },
}

/// A token just made: the only time its secret is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    pub token: String,
    pub kind: TokenKind,
    /// Enrollment tokens: the one-line install command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install: Option<String>,
    /// Worker tokens: the worker it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
}

/// A token as lists show it: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    pub id: String,
    pub kind: TokenKind,
    pub worker: Option<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// Enrollment tokens: workers it may still enroll (null: no limit).
    pub uses_left: Option<i64>,
    pub labels: BTreeMap<String, String>,
}

/// `GET /api/v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
}

/// `POST /api/v1/tokens/{id}/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Revoked {
    pub id: String,
    pub revoked: bool,
}

/// `POST /api/v1/enroll`: an enrollment token traded for a worker token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub token: String,
    /// The worker's name; default: from the host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z0-9._-]{1,100}$")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Who lends the machine (an email address): its `owner` label, unless
    /// the enrollment token names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Enrolled {
    pub worker: String,
    pub token: String,
    /// Labels the enrollment token gives.
    pub labels: BTreeMap<String, String>,
    pub server_version: String,
}

/// `GET /api/v1/whoami`: what the presented token is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    pub kind: TokenKind,
    /// Worker tokens: the worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Try tokens: who it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}
