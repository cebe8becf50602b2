//! A client of the server's REST API: the `herd-api` types in and out, and
//! errors that say what to do and carry the exit code of their kind.

use crate::exit_codes;
use crate::ClientArgs;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;

pub struct Client {
    pub base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// A log range and what the server says about the step.
pub struct LogRange {
    pub data: Vec<u8>,
    pub size: u64,
    pub more: bool,
}

/// Why a call to the server failed, by what a script can do about it.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ClientError {
    #[error("cannot reach the herd server at {base}: {detail}\n  help: is it running? Set HERD_SERVER or --server to its address")]
    Unreachable { base: String, detail: String },
    #[error("refusing the server at {base}: its TLS certificate does not verify: {why}")]
    TlsRefused { base: String, why: String },
    #[error("the server answered {status}: {message}{}", help.as_deref().map(|h| format!("\n  help: {h}")).unwrap_or_default())]
    Refused {
        status: u16,
        message: String,
        help: Option<String>,
    },
    #[error("the server answered {status}: {message}")]
    NotFound { status: u16, message: String },
    #[error("the server answered {status}: {message}")]
    Rejected { status: u16, message: String },
    #[error("bad answer from the server at {base}: {detail}")]
    BadAnswer { base: String, detail: String },
}

impl ClientError {
    /// The exit code of this kind of failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Unreachable { .. } | ClientError::TlsRefused { .. } => {
                exit_codes::UNREACHABLE
            }
            ClientError::Refused { .. } => exit_codes::REFUSED,
            ClientError::NotFound { .. } => exit_codes::NOT_FOUND,
            ClientError::Rejected { .. } | ClientError::BadAnswer { .. } => {
                exit_codes::REQUEST_FAILED
            }
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

impl Client {
    pub fn new(args: &ClientArgs) -> miette::Result<Client> {
        let token = args.token.clone().or_else(|| {
            let dir = std::env::var("HERD_DATA").unwrap_or_else(|_| "herd-data".into());
            std::fs::read_to_string(Path::new(&dir).join("admin-token"))
                .ok()
                .map(|t| t.trim().to_string())
        });
        let base = server_url(&args.server)?;
        let http = herd_worker::http_client(&base, args.tls_pin.as_deref(), None)
            .map_err(|e| miette::miette!("{e}"))?;
        Ok(Client { base, token, http })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let res = req.send().await.map_err(|e| {
            if let Some(why) = herd_tls::client::refusal(&e) {
                ClientError::TlsRefused {
                    base: self.base.clone(),
                    why,
                }
            } else {
                ClientError::Unreachable {
                    base: self.base.clone(),
                    detail: e.to_string(),
                }
            }
        })?;
        if res.status().is_success() {
            return Ok(res);
        }
        let status = res.status().as_u16();
        let body = res.text().await.unwrap_or_default();
        let message = serde_json::from_str::<herd_api::ErrorBody>(&body)
            .map(|e| e.error)
            .unwrap_or(body);
        Err(match status {
            401 | 403 => ClientError::Refused {
                status,
                message,
                help: (status == 401 && self.token.is_none()).then(|| {
                    "no token given: set HERD_TOKEN or --token (the admin token is in DATA/admin-token)"
                        .to_string()
                }),
            },
            404 => ClientError::NotFound { status, message },
            _ => ClientError::Rejected { status, message },
        })
    }

    async fn read<T: DeserializeOwned>(&self, res: reqwest::Response) -> Result<T> {
        res.json().await.map_err(|e| ClientError::BadAnswer {
            base: self.base.clone(),
            detail: e.to_string(),
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let res = self.send(self.http.get(self.url(path))).await?;
        self.read(res).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let res = self.send(self.http.post(self.url(path)).json(body)).await?;
        self.read(res).await
    }

    /// A POST without a body (an action on what the path names).
    pub async fn act<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let res = self.send(self.http.post(self.url(path))).await?;
        self.read(res).await
    }

    /// Streams what `path` answers into `dest` (through a part file,
    /// renamed when whole); returns its size and SHA-256.
    pub async fn download(&self, path: &str, dest: &Path) -> Result<(u64, String)> {
        use futures_util::StreamExt;
        use sha2::Digest;
        use tokio::io::AsyncWriteExt;
        let res = self.send(self.http.get(self.url(path))).await?;
        let local = |detail: String| ClientError::BadAnswer {
            base: self.base.clone(),
            detail,
        };
        if let Some(dir) = dest.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| local(format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut part = dest.as_os_str().to_owned();
        part.push(".herd-part");
        let part = std::path::PathBuf::from(part);
        let file = tokio::fs::File::create(&part)
            .await
            .map_err(|e| local(format!("cannot write {}: {e}", part.display())))?;
        let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let mut hasher = sha2::Sha256::new();
        let mut size = 0u64;
        let mut body = res.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| local(format!("the download broke off: {e}")))?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
            out.write_all(&chunk)
                .await
                .map_err(|e| local(format!("cannot write {}: {e}", part.display())))?;
        }
        out.flush()
            .await
            .map_err(|e| local(format!("cannot write {}: {e}", part.display())))?;
        tokio::fs::rename(&part, dest)
            .await
            .map_err(|e| local(format!("cannot write {}: {e}", dest.display())))?;
        Ok((size, hex::encode(hasher.finalize())))
    }

    pub async fn log(
        &self,
        attempt: i64,
        step: i64,
        offset: u64,
        wait_ms: u64,
    ) -> Result<LogRange> {
        use herd_api::builds::log_headers;
        let path = format!(
            "/api/v1/attempts/{attempt}/steps/{step}/log?offset={offset}&wait_ms={wait_ms}"
        );
        let res = self.send(self.http.get(self.url(&path))).await?;
        let header = |name: &str| {
            res.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let size = header(log_headers::SIZE)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let more = header(log_headers::MORE).as_deref() == Some("1");
        let data = res
            .bytes()
            .await
            .map_err(|e| ClientError::BadAnswer {
                base: self.base.clone(),
                detail: format!("reading the log failed: {e}"),
            })?
            .to_vec();
        Ok(LogRange { data, size, more })
    }
}

/// The server's address as the client uses it: `host:port` means
/// `http://host:port`; a scheme other than http(s) is refused.
fn server_url(given: &str) -> miette::Result<String> {
    let s = given.trim().trim_end_matches('/');
    match s.split_once("://") {
        None if !s.is_empty() => Ok(format!("http://{s}")),
        Some(("http" | "https", rest)) if !rest.is_empty() => Ok(s.to_string()),
        _ => Err(miette::miette!(
            help = "give it as http://HOST:PORT or https://HOST:PORT (HERD_SERVER or --server)",
            "`{given}` is not a herd server's address"
        )),
    }
}

#[cfg(test)]
mod address_tests {
    use super::server_url;

    #[test]
    fn an_address_without_a_scheme_is_http_and_others_are_refused() {
        assert_eq!(
            server_url("127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            server_url("https://ci.example.org/").unwrap(),
            "https://ci.example.org"
        );
        assert!(server_url("ftp://x").is_err());
        assert!(server_url("").is_err());
    }
}
