//! The worker's config file (`herd worker --config FILE`): where the server
//! is, the worker's own token, and what the installer set up. Mode 0600:
//! the token is a secret.

use super::service::Manager;
use super::system::{self, Account};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    pub server: String,
    pub token: String,
    pub name: String,
    pub workdir: PathBuf,
    #[serde(default = "one")]
    pub slots: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Custom probes the machine's owner defines: name -> shell command
    /// (they win over the server's definitions).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub probes: BTreeMap<String, String>,
    /// The server's TLS pin (`sha256//…`), from the install one-liner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_pin: Option<String>,
    /// Free space to keep where workspaces live (`10%`, `20GB`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_free: Option<String>,
    /// Workspaces kept warm at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_workspaces: Option<usize>,
    /// What `herd worker install` set up, for `uninstall` and `upgrade`.
    #[serde(default)]
    pub install: Option<InstallInfo>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallInfo {
    pub user: String,
    pub home: PathBuf,
    pub bin: PathBuf,
    pub manager: Manager,
    #[serde(default)]
    pub service_file: Option<PathBuf>,
    /// Whether the installer created `user` (only then does --purge remove it).
    #[serde(default)]
    pub created_user: bool,
}

impl WorkerConfig {
    pub fn load(path: &Path) -> Result<WorkerConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Writes the file (mode 0600, owned by the service user). True when
    /// its content changed.
    pub fn save(&self, path: &Path, owner: &Account) -> Result<bool, String> {
        let text = serde_saphyr::to_string(self).map_err(|e| e.to_string())?;
        let text = format!(
            "# herd worker config, written by `herd worker install`. It holds the\n# worker's token: keep it readable by the service user only.\n{text}"
        );
        let changed = system::write_if_changed(path, &text, 0o600)?;
        system::chown(path, owner)?;
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_yaml() {
        let c = WorkerConfig {
            server: "http://127.0.0.1:8080".into(),
            token: "herd_worker_ab_cd".into(),
            name: "kestrel".into(),
            workdir: "/var/lib/herd/work".into(),
            slots: 2,
            labels: BTreeMap::from([("gpu".into(), "a100".into())]),
            probes: BTreeMap::from([("wx".into(), "wx-config --version".into())]),
            tls_pin: None,
            min_free: Some("15%".into()),
            max_workspaces: Some(20),
            install: Some(InstallInfo {
                user: "herd".into(),
                home: "/var/lib/herd".into(),
                bin: "/usr/local/bin/herd".into(),
                manager: Manager::Systemd,
                service_file: Some("/etc/systemd/system/herd-worker.service".into()),
                created_user: true,
            }),
        };
        let text = serde_saphyr::to_string(&c).unwrap();
        let back: WorkerConfig = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(back, c);
    }
}
