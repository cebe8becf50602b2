//! Running probes: is a tool, library or Python module here, and which
//! version. Each probe runs with a timeout; probes run concurrently.

use herd_core::probe::{first_version, ProbeKind, ProbeSpec};
use herd_proto::{ProbeRequest, ProbeResult};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_OUTPUT: usize = 1024;
const PYTHON_VERSION: &str = "import importlib, sys\n\
name = sys.argv[1]\n\
m = importlib.import_module(name)\n\
v = getattr(m, '__version__', None)\n\
if not isinstance(v, str):\n\
    try:\n\
        from importlib.metadata import version\n\
        v = version(name.split('.')[0])\n\
    except Exception:\n\
        v = ''\n\
print(v)\n";

pub async fn run_all(requests: Vec<ProbeRequest>) -> Vec<ProbeResult> {
    let mut set = tokio::task::JoinSet::new();
    for r in requests {
        set.spawn(run_one(ProbeSpec {
            name: r.name,
            command: r.command,
        }));
    }
    let mut out = Vec::new();
    while let Some(res) = set.join_next().await {
        if let Ok(r) = res {
            out.push(r);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

struct Ran {
    ok: bool,
    output: String,
}

async fn run(program: &str, args: &[&str]) -> Ran {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    match tokio::time::timeout(PROBE_TIMEOUT, cmd.output()).await {
        Err(_) => Ran {
            ok: false,
            output: format!("timed out after {PROBE_TIMEOUT:?}"),
        },
        Ok(Err(e)) => Ran {
            ok: false,
            output: format!("cannot run {program}: {e}"),
        },
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            Ran {
                ok: out.status.success(),
                output: text,
            }
        }
    }
}

fn truncate(s: &str) -> String {
    let s = s.trim();
    if s.len() <= MAX_OUTPUT {
        return s.to_string();
    }
    let mut end = MAX_OUTPUT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The executable `name` on PATH, as a shell would find it.
pub fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = Path::new(name);
        return is_executable(p).then(|| p.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| is_executable(p))
    })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

pub async fn run_one(spec: ProbeSpec) -> ProbeResult {
    let now = chrono_ms();
    let (present, version, output) = match spec.kind() {
        ProbeKind::Executable(name) => match which(name) {
            None => (false, None, Some(format!("{name} not found on PATH"))),
            Some(path) => {
                let path = path.to_string_lossy().into_owned();
                let mut version = None;
                for flag in ["--version", "-version", "-V"] {
                    let ran = run(&path, &[flag]).await;
                    if let Some(v) = first_version(&ran.output) {
                        version = Some(v);
                        break;
                    }
                }
                (true, version, None)
            }
        },
        ProbeKind::PkgConfig(lib) => {
            let ran = run("pkg-config", &["--modversion", lib]).await;
            if ran.ok {
                let v = ran.output.lines().next().unwrap_or("").trim().to_string();
                (true, (!v.is_empty()).then_some(v), None)
            } else {
                (false, None, Some(truncate(&ran.output)))
            }
        }
        ProbeKind::Python(module) => {
            let ran = run("python3", &["-c", PYTHON_VERSION, module]).await;
            if ran.ok {
                let v = ran.output.trim().to_string();
                (true, (!v.is_empty()).then_some(v), None)
            } else {
                (false, None, Some(truncate(&ran.output)))
            }
        }
        ProbeKind::Custom(command) => {
            let ran = run("sh", &["-c", command]).await;
            let text = ran.output.trim();
            if ran.ok && !text.is_empty() {
                let v = first_version(text)
                    .unwrap_or_else(|| text.lines().next().unwrap_or("").to_string());
                (true, Some(v), None)
            } else {
                (false, None, Some(truncate(&ran.output)))
            }
        }
    };
    ProbeResult {
        name: spec.name,
        present,
        version,
        output,
        probed_at: now,
    }
}

fn chrono_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str, command: Option<&str>) -> ProbeRequest {
        ProbeRequest {
            name: name.into(),
            command: command.map(str::to_string),
        }
    }

    #[tokio::test]
    async fn real_tools_are_found_with_their_versions() {
        let results = run_all(vec![
            req("git", None),
            req("sh", None),
            req("no-such-tool-herd", None),
            req("custom", Some("echo 3.2.4")),
            req("failing", Some("exit 3")),
        ])
        .await;
        let by = |n: &str| results.iter().find(|r| r.name == n).unwrap().clone();
        let git = by("git");
        assert!(git.present);
        let real = std::process::Command::new("git")
            .arg("--version")
            .output()
            .unwrap();
        assert_eq!(
            git.version,
            first_version(&String::from_utf8_lossy(&real.stdout))
        );
        assert!(by("sh").present);
        assert!(!by("no-such-tool-herd").present);
        assert_eq!(by("custom").version.as_deref(), Some("3.2.4"));
        assert!(!by("failing").present);
    }
}
