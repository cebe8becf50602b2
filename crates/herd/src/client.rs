//! A small client of the server's REST API, with errors that say what to do.

use crate::ClientArgs;
use miette::{miette, Result};
use serde_json::Value;
use std::path::Path;

pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// A log range and what the server says about the step.
pub struct LogRange {
    pub data: Vec<u8>,
    pub size: u64,
    pub more: bool,
}

impl Client {
    pub fn new(args: &ClientArgs) -> Result<Client> {
        let token = args.token.clone().or_else(|| {
            let dir = std::env::var("HERD_DATA").unwrap_or_else(|_| "herd-data".into());
            std::fs::read_to_string(Path::new(&dir).join("admin-token"))
                .ok()
                .map(|t| t.trim().to_string())
        });
        let http = herd_worker::http_client(&args.server, args.tls_pin.as_deref(), None)
            .map_err(|e| miette!("{e}"))?;
        Ok(Client {
            base: args.server.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn authed(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let res = self.authed(req).send().await.map_err(|e| {
            if let Some(why) = herd_tls::client::refusal(&e) {
                miette!(
                    "refusing the server at {}: its TLS certificate does not verify: {why}",
                    self.base
                )
            } else if e.is_connect() || e.is_timeout() {
                miette!(
                    "cannot reach the herd server at {}: {e}\n  help: is it running? Set HERD_SERVER or --server to its address",
                    self.base
                )
            } else {
                miette!("request to {} failed: {e}", self.base)
            }
        })?;
        if res.status().is_success() {
            return Ok(res);
        }
        let status = res.status();
        let body = res.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(body);
        let help = if status == 401 && self.token.is_none() {
            "\n  help: no token given: set HERD_TOKEN or --token (the admin token is in DATA/admin-token)"
        } else {
            ""
        };
        Err(miette!("the server answered {status}: {message}{help}"))
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        let res = self.send(self.http.get(self.url(path))).await?;
        res.json()
            .await
            .map_err(|e| miette!("bad answer from the server: {e}"))
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let res = self.send(self.http.post(self.url(path)).json(body)).await?;
        res.json()
            .await
            .map_err(|e| miette!("bad answer from the server: {e}"))
    }

    pub async fn log(
        &self,
        attempt: i64,
        step: i64,
        offset: u64,
        wait_ms: u64,
    ) -> Result<LogRange> {
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
        let size = header("x-herd-log-size")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let more = header("x-herd-more").as_deref() == Some("1");
        let data = res
            .bytes()
            .await
            .map_err(|e| miette!("reading the log failed: {e}"))?
            .to_vec();
        Ok(LogRange { data, size, more })
    }
}

/// The strings of a JSON array (nothing for anything else).
pub fn str_list(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}
