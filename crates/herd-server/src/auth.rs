//! Tokens: random, shown once, stored only as a hash, compared in constant time.
//!
//! A token reads `herd_<kind>_<id>_<secret>`: the id finds the row, the
//! secret is checked against its stored SHA-256 hash. Tokens carry 256 bits
//! of randomness, so a fast hash is enough (no password stretching needed).

use crate::store::{now_ms, Store, StoreError, TokenRow};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Admin,
    Worker,
    /// Trades for a worker token once per use (`herd worker install`).
    Enroll,
    /// Sends try builds (`herd try`) and reads.
    Try,
    /// Reads only (a private server's pages and API, for dashboards).
    Read,
    /// Scrapes `/metrics` only (a Prometheus server's token).
    Metrics,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Admin => "admin",
            TokenKind::Worker => "worker",
            TokenKind::Enroll => "enroll",
            TokenKind::Try => "try",
            TokenKind::Read => "read",
            TokenKind::Metrics => "metrics",
        }
    }

    pub fn parse(text: &str) -> Option<TokenKind> {
        [
            TokenKind::Admin,
            TokenKind::Worker,
            TokenKind::Enroll,
            TokenKind::Try,
            TokenKind::Read,
            TokenKind::Metrics,
        ]
        .into_iter()
        .find(|k| k.as_str() == text)
    }
}

/// Options of a new token.
#[derive(Debug, Clone, Default)]
pub struct NewToken {
    pub worker: Option<String>,
    pub expires_at: Option<i64>,
    pub uses: Option<i64>,
    pub labels: Option<std::collections::BTreeMap<String, String>>,
}

/// Why an enrollment token cannot be used, in words for the installer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollRefusal {
    Invalid,
    Revoked,
    Expired,
    UsedUp,
}

impl EnrollRefusal {
    pub fn message(&self) -> &'static str {
        match self {
            EnrollRefusal::Invalid => {
                "the enrollment token is not valid (mistyped, or not an enrollment token)"
            }
            EnrollRefusal::Revoked => "the enrollment token was revoked",
            EnrollRefusal::Expired => "the enrollment token has expired",
            EnrollRefusal::UsedUp => {
                "the enrollment token is used up (it enrolled as many workers as it was made for)"
            }
        }
    }
}

/// The labels an enrollment token gives, once its secret is checked.
pub async fn check_enroll(
    store: &Store,
    presented: &str,
) -> Result<Result<(TokenRow, std::collections::BTreeMap<String, String>), EnrollRefusal>, StoreError>
{
    let Some(row) = matching_row(store, presented).await? else {
        return Ok(Err(EnrollRefusal::Invalid));
    };
    if row.kind != "enroll" {
        return Ok(Err(EnrollRefusal::Invalid));
    }
    if row.revoked_at.is_some() {
        return Ok(Err(EnrollRefusal::Revoked));
    }
    if row.expires_at.is_some_and(|t| t <= now_ms()) {
        return Ok(Err(EnrollRefusal::Expired));
    }
    if row.uses_left.is_some_and(|n| n <= 0) {
        return Ok(Err(EnrollRefusal::UsedUp));
    }
    let labels = row
        .labels
        .as_deref()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_default();
    Ok(Ok((row, labels)))
}

/// Who presented a valid token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin {
        token_id: String,
    },
    Worker {
        token_id: String,
        worker: String,
        /// When the token expires (ms since the epoch): its connection
        /// ends then.
        expires_at: Option<i64>,
    },
    /// A try token; `user` is the name it was made for.
    Try {
        token_id: String,
        user: Option<String>,
    },
    Read {
        token_id: String,
    },
    /// Scrapes `/metrics`, nothing else.
    Metrics {
        token_id: String,
    },
    /// An enrollment token presented as a bearer: it may only enroll (its
    /// own call takes it in the body), so it is refused everywhere else.
    Enroll {
        token_id: String,
    },
}

/// What a call needs from the token presented with it; the table of every
/// route is `access::scope_of`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Open to all (health, downloads); a token, if given, must be valid.
    Open,
    /// Any valid token (`whoami`).
    AnyToken,
    /// Reading: pages, builds, logs, workers.
    Read,
    /// Sending try builds.
    Try,
    /// Changing state: builds, workers, tokens.
    Admin,
    /// The worker endpoint: only a worker token.
    Worker,
    /// A worker acting on itself (forget), or the admin.
    OwnWorkerOrAdmin,
    /// Reading one worker: any reader, or that worker itself (the
    /// installer waits for it to come online).
    OwnWorkerOrRead,
    /// `/metrics`: a metrics or admin token.
    Metrics,
}

impl Scope {
    /// The tokens a call needs, in words for a refusal.
    pub fn needs(self) -> &'static str {
        match self {
            Scope::Open | Scope::AnyToken => "any valid token",
            Scope::Read => "a read, try or admin token",
            Scope::Try => "a try or admin token",
            Scope::Admin => "the admin token",
            Scope::Worker => "a worker token",
            Scope::OwnWorkerOrAdmin => "the worker's own token or the admin token",
            Scope::OwnWorkerOrRead => "the worker's own token or a read, try or admin token",
            Scope::Metrics => "a metrics or admin token",
        }
    }
}

impl Principal {
    pub fn kind(&self) -> TokenKind {
        match self {
            Principal::Admin { .. } => TokenKind::Admin,
            Principal::Worker { .. } => TokenKind::Worker,
            Principal::Try { .. } => TokenKind::Try,
            Principal::Read { .. } => TokenKind::Read,
            Principal::Metrics { .. } => TokenKind::Metrics,
            Principal::Enroll { .. } => TokenKind::Enroll,
        }
    }

    /// Architecture invariant: each kind of token makes only its own calls.
    /// (For the `OwnWorker…` scopes the caller also checks that a worker
    /// names itself: see `access`.)
    /// The admin token cannot pose as a worker, and a worker token reads
    /// nothing (a volunteer's machine learns only its own jobs).
    pub fn allows(&self, scope: Scope) -> bool {
        use TokenKind as K;
        matches!(
            (self.kind(), scope),
            (_, Scope::Open | Scope::AnyToken)
                | (
                    K::Admin,
                    Scope::Read
                        | Scope::Try
                        | Scope::Admin
                        | Scope::OwnWorkerOrAdmin
                        | Scope::OwnWorkerOrRead
                        | Scope::Metrics
                )
                | (K::Metrics, Scope::Metrics)
                | (K::Try, Scope::Read | Scope::Try | Scope::OwnWorkerOrRead)
                | (K::Read, Scope::Read | Scope::OwnWorkerOrRead)
                | (
                    K::Worker,
                    Scope::Worker | Scope::OwnWorkerOrAdmin | Scope::OwnWorkerOrRead
                )
        )
    }
}

fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// `bytes` random bytes as hex (tokens, sessions, CSRF tokens).
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::fill(&mut buf[..]);
    hex::encode(buf)
}

/// Creates a token, stores its hash, and returns the token text (the only
/// time it exists in clear).
pub async fn create_token(
    store: &Store,
    kind: TokenKind,
    worker: Option<&str>,
) -> Result<String, StoreError> {
    create_token_with(
        store,
        kind,
        NewToken {
            worker: worker.map(str::to_string),
            ..NewToken::default()
        },
    )
    .await
}

pub async fn create_token_with(
    store: &Store,
    kind: TokenKind,
    opts: NewToken,
) -> Result<String, StoreError> {
    let id = random_hex(8);
    let secret = random_hex(32);
    store
        .insert_token(&TokenRow {
            id: id.clone(),
            secret_hash: hash_secret(&secret),
            kind: kind.as_str().into(),
            worker: opts.worker,
            created_at: now_ms(),
            expires_at: opts.expires_at,
            revoked_at: None,
            uses_left: opts.uses,
            labels: opts
                .labels
                .map(|l| serde_json::to_string(&l).unwrap_or_else(|_| "{}".into())),
        })
        .await?;
    Ok(format!("herd_{}_{id}_{secret}", kind.as_str()))
}

/// Checks a presented token. None for anything not valid now; the caller
/// answers 401 without saying which part was wrong.
pub async fn verify(store: &Store, presented: &str) -> Result<Option<Principal>, StoreError> {
    let Some(row) = matching_row(store, presented).await? else {
        return Ok(None);
    };
    if row.revoked_at.is_some() || row.expires_at.is_some_and(|t| t <= now_ms()) {
        return Ok(None);
    }
    let user = row
        .labels
        .as_deref()
        .and_then(|l| serde_json::from_str::<std::collections::BTreeMap<String, String>>(l).ok())
        .and_then(|mut l| l.remove("user"));
    Ok(match (row.kind.as_str(), row.worker) {
        ("admin", _) => Some(Principal::Admin { token_id: row.id }),
        ("try", _) => Some(Principal::Try {
            token_id: row.id,
            user,
        }),
        ("read", _) => Some(Principal::Read { token_id: row.id }),
        ("metrics", _) => Some(Principal::Metrics { token_id: row.id }),
        ("enroll", _) if row.uses_left.is_none_or(|n| n > 0) => {
            Some(Principal::Enroll { token_id: row.id })
        }
        ("worker", Some(worker)) => Some(Principal::Worker {
            token_id: row.id,
            worker,
            expires_at: row.expires_at,
        }),
        _ => None,
    })
}

/// The stored token whose id and secret match what was presented.
async fn matching_row(store: &Store, presented: &str) -> Result<Option<TokenRow>, StoreError> {
    let mut parts = presented.trim().splitn(4, '_');
    let (Some("herd"), Some(_kind), Some(id), Some(secret)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Ok(None);
    };
    if id.len() > 64 || secret.len() > 128 {
        return Ok(None);
    }
    let Some(row) = store.token(id).await? else {
        return Ok(None);
    };
    let given = hash_secret(secret);
    if !bool::from(given.as_bytes().ct_eq(row.secret_hash.as_bytes())) {
        return Ok(None);
    }
    Ok(Some(row))
}

/// The token a request presents (`Authorization: Bearer …`), if any.
pub fn presented(headers: &axum::http::HeaderMap) -> Option<&str> {
    bearer(
        headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok()),
    )
}

/// Takes the token from an `Authorization: Bearer …` header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let h = header?.trim();
    h.strip_prefix("Bearer ")
        .or_else(|| h.strip_prefix("bearer "))
        .map(str::trim)
}

type HmacSha256 = hmac::Hmac<Sha256>;

/// HMAC-SHA256 of `body` under `key`, lower-case hex (what GitHub, Gitea
/// and herd's own webhooks sign with).
pub fn hmac_sha256_hex(key: &[u8], body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Checks a hex HMAC-SHA256 signature in constant time.
pub fn hmac_sha256_verify(key: &[u8], body: &[u8], signature_hex: &str) -> bool {
    use hmac::{KeyInit, Mac};
    let Ok(given) = hex::decode(signature_hex.trim()) else {
        return false;
    };
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

/// Compares two secrets in constant time (for their length, too).
pub fn secrets_equal(a: &str, b: &str) -> bool {
    let (ha, hb) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    bool::from(ha.as_slice().ct_eq(hb.as_slice()))
}

#[cfg(test)]
mod hmac_tests {
    use super::*;

    #[test]
    fn hmac_matches_the_rfc_4231_vector_and_verifies() {
        // RFC 4231, test case 2.
        let sig = hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(hmac_sha256_verify(
            b"Jefe",
            b"what do ya want for nothing?",
            &sig
        ));
        assert!(!hmac_sha256_verify(
            b"Jefe",
            b"what do ya want for nothing!",
            &sig
        ));
        assert!(!hmac_sha256_verify(b"Jefe", b"x", "not hex"));
        assert!(secrets_equal("abc", "abc"));
        assert!(!secrets_equal("abc", "abd"));
    }
}
