//! Where a checkout step fetches from when the server serves the sources
//! (`herd_proto::StepAction::Checkout::served`): the server this worker is
//! connected to, with this worker's token and, over TLS, the pinned key.
//! git gets all of it through its environment (`GIT_CONFIG_COUNT`), never
//! on a command line.

use std::collections::BTreeMap;

/// How this worker reaches the server it is connected to now.
#[derive(Clone)]
pub struct SourceAccess {
    /// `http://host:port` or `https://host:port`.
    pub base: String,
    pub token: String,
    pub tls_pin: Option<String>,
}

impl std::fmt::Debug for SourceAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceAccess")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl SourceAccess {
    /// From the worker endpoint URL of a connection (`ws://host:port/api/…`).
    pub fn for_endpoint(endpoint: &str, token: &str, tls_pin: Option<&str>) -> SourceAccess {
        let rest = endpoint
            .strip_suffix(herd_proto::WORKER_ENDPOINT)
            .unwrap_or(endpoint);
        let base = if let Some(r) = rest.strip_prefix("wss://") {
            format!("https://{r}")
        } else if let Some(r) = rest.strip_prefix("ws://") {
            format!("http://{r}")
        } else {
            rest.to_string()
        };
        SourceAccess {
            base,
            token: token.trim().to_string(),
            tls_pin: tls_pin.map(str::to_string),
        }
    }

    /// The repository URL of a served checkout and the environment that
    /// lets git fetch from it.
    pub fn checkout_env(&self, served: &str) -> (String, BTreeMap<String, String>) {
        let mut config = vec![(
            "http.extraHeader",
            format!("Authorization: Bearer {}", self.token),
        )];
        if let Some(pin) = &self.tls_pin {
            // As `curl -k --pinnedpubkey`: the key must be the pinned one;
            // the CA check is what the pin replaces.
            config.push(("http.sslVerify", "false".into()));
            config.push(("http.pinnedPubkey", pin.clone()));
        }
        let mut env = BTreeMap::new();
        env.insert("GIT_CONFIG_COUNT".into(), config.len().to_string());
        for (i, (k, v)) in config.into_iter().enumerate() {
            env.insert(format!("GIT_CONFIG_KEY_{i}"), k.to_string());
            env.insert(format!("GIT_CONFIG_VALUE_{i}"), v);
        }
        (format!("{}{served}", self.base), env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_is_the_connected_servers_http_address() {
        let s = SourceAccess::for_endpoint(
            &format!("wss://ci.example.org:8443{}", herd_proto::WORKER_ENDPOINT),
            "t\n",
            Some("sha256//x"),
        );
        assert_eq!(s.base, "https://ci.example.org:8443");
        let (url, env) = s.checkout_env("/git/p/abc");
        assert_eq!(url, "https://ci.example.org:8443/git/p/abc");
        assert_eq!(env["GIT_CONFIG_COUNT"], "3");
        assert_eq!(env["GIT_CONFIG_VALUE_0"], "Authorization: Bearer t");
        assert_eq!(env["GIT_CONFIG_VALUE_2"], "sha256//x");
        let plain = SourceAccess::for_endpoint(
            &format!("ws://127.0.0.1:1{}", herd_proto::WORKER_ENDPOINT),
            "t",
            None,
        );
        assert_eq!(plain.base, "http://127.0.0.1:1");
        assert_eq!(plain.checkout_env("/x").1["GIT_CONFIG_COUNT"], "1");
        assert!(!format!("{plain:?}").contains("\"t\""));
    }
}
