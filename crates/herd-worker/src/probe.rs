//! Running probes: is a tool, library or Python module here, and which
//! version. Probes run concurrently, each in its own process group with a
//! timeout; when a probe's command ends (or times out) its group is
//! stopped, so nothing it started survives. What they print is masked
//! before it leaves the worker.
//!
//! A custom probe's command comes from the server's config, or from this
//! worker's own (`--probe NAME=COMMAND`), which wins: never from a
//! repository.

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

/// Runs the probes asked for: a probe this worker defines itself runs its
/// own command. Results are masked with `masker`.
pub async fn run_all(
    requests: Vec<ProbeRequest>,
    own: &std::collections::BTreeMap<String, String>,
    masker: Option<&crate::mask::Masker>,
) -> Vec<ProbeResult> {
    let mut set = tokio::task::JoinSet::new();
    for r in requests {
        let command = own.get(&r.name).cloned().or(r.command);
        set.spawn(run_one(ProbeSpec {
            name: r.name,
            command,
        }));
    }
    let mut out = Vec::new();
    while let Some(res) = set.join_next().await {
        if let Ok(mut r) = res {
            let mask = |t: Option<String>| t.map(|t| crate::mask::mask_opt(masker, &t));
            r.version = mask(r.version);
            r.output = mask(r.output);
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

/// Runs a probe's command in its own process group: its output until it
/// exits (at most [`PROBE_TIMEOUT`]); then the group is stopped, whatever
/// it left running in the background.
async fn run(program: &str, args: &[&str]) -> Ran {
    use tokio::io::AsyncReadExt;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Ran {
                ok: false,
                output: format!("cannot run {program}: {e}"),
            }
        }
    };
    let pgid = child.id().map(|p| nix::unistd::Pid::from_raw(p as i32));
    // Read both pipes as they come, keeping at most a little of each.
    let reader = |pipe: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>| {
        tokio::spawn(async move {
            let mut kept = Vec::new();
            if let Some(mut p) = pipe {
                let mut buf = [0u8; 4096];
                while let Ok(n) = p.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if kept.len() < 16 * MAX_OUTPUT {
                        kept.extend_from_slice(&buf[..n]);
                    }
                }
            }
            kept
        })
    };
    let out = reader(child.stdout.take().map(|p| Box::new(p) as _));
    let err = reader(child.stderr.take().map(|p| Box::new(p) as _));
    let status = tokio::time::timeout(PROBE_TIMEOUT, child.wait()).await;
    if let Some(pgid) = pgid {
        crate::process::kill_group(pgid, &mut child).await;
    }
    let _ = child.wait().await;
    // The pipes close once the group is gone; a process that left the
    // group may still hold one: do not wait for it.
    let grace = std::time::Duration::from_secs(1);
    let mut text = String::from_utf8_lossy(
        &tokio::time::timeout(grace, out)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default(),
    )
    .into_owned();
    text.push_str(&String::from_utf8_lossy(
        &tokio::time::timeout(grace, err)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default(),
    ));
    match status {
        Err(_) => Ran {
            ok: false,
            output: format!("timed out after {PROBE_TIMEOUT:?}"),
        },
        Ok(Err(e)) => Ran {
            ok: false,
            output: format!("cannot wait for {program}: {e}"),
        },
        Ok(Ok(status)) => Ran {
            ok: status.success(),
            output: text,
        },
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
        let results = run_all(
            vec![
                req("git", None),
                req("sh", None),
                req("no-such-tool-herd", None),
                req("custom", Some("echo 3.2.4")),
                req("failing", Some("exit 3")),
                req("mine", Some("echo 1.0")),
            ],
            &std::collections::BTreeMap::from([("mine".to_string(), "echo 7.7".to_string())]),
            None,
        )
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
        // The worker's own definition wins over the server's.
        assert_eq!(by("mine").version.as_deref(), Some("7.7"));
    }

    #[tokio::test]
    async fn nothing_a_probe_starts_survives_it_and_its_output_is_masked() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let command = format!(
            "sleep 300 & echo $! > {}; echo 2.0 token-abcdef",
            pid_file.display()
        );
        let masker = crate::mask::Masker::new(&["token-abcdef".to_string()]).unwrap();
        let started = std::time::Instant::now();
        let results = run_all(
            vec![req("bg", Some(&command))],
            &Default::default(),
            Some(&masker),
        )
        .await;
        assert!(
            started.elapsed() < PROBE_TIMEOUT,
            "the probe ended with its command"
        );
        assert_eq!(results[0].version.as_deref(), Some("2.0"));
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        assert!(!alive, "the background sleep was stopped with its group");
        let failing = run_all(
            vec![req("leak", Some("echo token-abcdef; exit 1"))],
            &Default::default(),
            Some(&masker),
        )
        .await;
        assert_eq!(failing[0].output.as_deref(), Some("***"));
    }
}
