//! What a machine that becomes a worker is given: the one-line install
//! command, the install script with this server's address and a token in
//! it, and the executables the script downloads. Used by the API (the
//! token answer, `/install.sh`, `/download/…`) and the web page (Add a
//! worker).

use crate::App;
use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const INSTALL_SH: &str = include_str!("assets/install.sh");

/// `herd-linux-x86_64`: what this server's own executable is served as.
pub fn own_platform_file() -> String {
    format!("herd-{}-{}", std::env::consts::OS, std::env::consts::ARCH)
}

/// The address other machines use for this server: the one the caller
/// used (`http(s)://HOST[:PORT]`), unless that is this machine's loopback
/// and the server's public address (`--url`) is not: a one-liner read in
/// a browser on the server's own machine is for other machines.
pub fn caller_base(app: &App, headers: &HeaderMap) -> Option<String> {
    let base = host_base(app, headers)?;
    if is_loopback_url(&base) && !is_loopback_url(&app.public_url) {
        return Some(app.public_url.trim_end_matches('/').to_string());
    }
    Some(base)
}

/// Whether `url`'s host is this machine only (loopback or unspecified).
pub fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split('/').next().unwrap_or("");
    let host = match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
}

fn host_base(app: &App, headers: &HeaderMap) -> Option<String> {
    let scheme = if app.tls_pin.is_some() {
        "https"
    } else {
        "http"
    };
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let ok = !host.is_empty()
        && host.len() <= 255
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    ok.then(|| format!("{scheme}://{host}"))
}

/// The one-liner that makes a machine a worker with enrollment `token`.
/// On a TLS server it pins the server's key with curl (`-k` only skips the
/// CA check, which the pin replaces), so nothing unverified runs.
pub fn install_command(app: &App, headers: &HeaderMap, token: &str) -> Option<String> {
    let base = caller_base(app, headers)?;
    let curl = match &app.tls_pin {
        Some(pin) => format!("curl -fsSL -k --pinnedpubkey '{pin}'"),
        None => "curl -fsSL".to_string(),
    };
    Some(format!(
        "{curl} '{base}/install.sh?token={token}' | sudo sh"
    ))
}

/// A token as it may appear inside the script: nothing a shell reads specially.
pub fn plain_token(t: &str) -> bool {
    !t.is_empty() && t.len() <= 200 && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The install script for a server at `base`, enrolling with `token`
/// (checked with [`plain_token`]), pinning `pin` when the server has TLS.
pub fn install_script(base: &str, token: &str, pin: Option<&str>) -> String {
    INSTALL_SH
        .replace("@SERVER@", base)
        .replace("@TOKEN@", token)
        .replace("@PIN@", pin.unwrap_or(""))
}

/// Path of the executable served as `file` (`herd-OS-ARCH`), if any.
pub fn executable_for(app: &App, file: &str) -> Option<PathBuf> {
    let plain = !file.is_empty()
        && file.len() <= 64
        && file
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    if !plain || !file.starts_with("herd-") {
        return None;
    }
    if let Some(dir) = &app.dist_dir {
        let p = dir.join(file);
        if p.is_file() {
            return Some(p);
        }
    }
    if file == own_platform_file() {
        // /proc/self/exe still reads when the file was replaced on disk
        // (an upgrade in place) while this server runs.
        let proc_exe = PathBuf::from("/proc/self/exe");
        if proc_exe.exists() {
            return Some(proc_exe);
        }
        return std::env::current_exe().ok();
    }
    None
}

/// The executables this server can serve, by name.
pub fn served_executables(app: &App) -> Vec<String> {
    let mut have = vec![own_platform_file()];
    if let Some(dir) = &app.dist_dir {
        if let Ok(rd) = std::fs::read_dir(dir) {
            have.extend(
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("herd-") && !n.ends_with(".sha256")),
            );
        }
    }
    have
}

/// The SHA-256 of this server's own executable, computed once.
static OWN_SHA256: OnceLock<String> = OnceLock::new();

/// The SHA-256 of an executable; `own` when it is this server's (kept).
pub fn sha256_of(path: &Path, own: bool) -> std::io::Result<String> {
    if own {
        if let Some(s) = OWN_SHA256.get() {
            return Ok(s.clone());
        }
    }
    let bytes = std::fs::read(path)?;
    let sum = hex::encode(Sha256::digest(&bytes));
    if own {
        let _ = OWN_SHA256.set(sum.clone());
    }
    Ok(sum)
}
