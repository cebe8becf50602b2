//! A stand-in forge: a bare repository the server fetches and a clone to
//! push from, with the helpers the change tests share.

use super::*;
use hmac::{KeyInit, Mac};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

pub const LONG: Duration = Duration::from_secs(60);

/// A bare repository (what the server fetches) and a clone to push from.
pub struct Forge {
    _root: tempfile::TempDir,
    pub bare: PathBuf,
    pub work: PathBuf,
}

impl Forge {
    pub fn new(herd_yml: &str) -> Forge {
        let root = tempfile::tempdir().expect("tempdir");
        let seed = git_repo(root.path(), "seed", &[("herd.yml", herd_yml.as_bytes())]);
        let bare = root.path().join("origin.git");
        run_git(
            root.path(),
            &[
                "clone",
                "-q",
                "--bare",
                &seed.display().to_string(),
                &bare.display().to_string(),
            ],
        );
        let work = root.path().join("work");
        run_git(
            root.path(),
            &[
                "clone",
                "-q",
                &bare.display().to_string(),
                &work.display().to_string(),
            ],
        );
        Forge {
            _root: root,
            bare,
            work,
        }
    }

    /// Commits the files on the current branch and pushes; returns the sha.
    pub fn push(&self, files: &[(&str, &[u8])], message: &str) -> String {
        let sha = commit(&self.work, files, message);
        let branch = String::from_utf8_lossy(
            &run_git(&self.work, &["rev-parse", "--abbrev-ref", "HEAD"]).stdout,
        )
        .trim()
        .to_string();
        run_git(
            &self.work,
            &["push", "-q", "origin", &format!("HEAD:refs/heads/{branch}")],
        );
        sha
    }

    pub fn repo(&self) -> String {
        self.bare.display().to_string()
    }
}

pub fn project(server: &Server, name: &str) -> Value {
    server
        .get(&format!("/api/v1/projects/{name}"))
        .expect("project")
}

/// Waits until the project has been polled once (its heads are known).
pub fn wait_first_poll(server: &Server, name: &str) {
    wait_until(LONG, "the first poll", || {
        project(server, name)["polling"]["last_success_at"]
            .as_i64()
            .map(|_| ())
    });
}

/// A server watching `forge` as project `p` (`settings`: more lines of its
/// project config), a worker, and the first poll done.
pub fn watching(forge: &Forge, settings: &str, slots: u32) -> (Server, Worker) {
    let server = Server::start_with_config(
        &format!("projects:\n  p:\n    repo: {}\n{settings}", forge.repo()),
        &[],
    );
    let worker = server.worker("w1", slots, &[]);
    wait_first_poll(&server, "p");
    (server, worker)
}

/// The change recorded for `sha`, once settled (built or skipped).
pub fn settled_change(server: &Server, name: &str, sha: &str) -> Value {
    wait_until(LONG, &format!("a settled change for {sha}"), || {
        project(server, name)["changes"]
            .as_array()?
            .iter()
            .find(|c| c["revision"] == sha && (c["build_id"].is_i64() || c["skipped"].is_string()))
            .cloned()
    })
}

pub fn hmac_hex(key: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// POSTs raw bytes with headers; returns the status and the JSON answer.
pub fn post_raw(url: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut req = http().build().unwrap().post(url).body(body.to_vec());
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let res = req.send().await.expect("post");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    })
}
