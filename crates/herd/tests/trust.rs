//! Issue 17's attacks by whoever can push or holds a try token, each tried
//! against the real server and workers: probes from a repository, secrets
//! reached by naming a builder or from another branch, a secret through
//! every output channel, credentials in a repository URL, try builds
//! without end, and control characters aimed at a terminal.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use sha2::Digest as _;
use std::time::Duration;

/// Each probe's row on a worker, by name.
fn probe(server: &Server, worker: &str, name: &str) -> Value {
    let w = server.get(&format!("/api/v1/workers/{worker}")).unwrap();
    w["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no probe {name} on {worker}: {w:#}"))
}

#[test]
fn a_repository_names_probes_and_only_the_server_or_the_worker_defines_them() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let marker = dir.join("ran-from-herd-yml");
    // The attack: herd.yml defines a probe whose command every worker
    // would run at connect time.
    let evil = git_repo(
        dir,
        "evil",
        &[(
            "herd.yml",
            format!(
                "probes:\n  x: touch {}\nbuilders:\n  a:\n    requires: [x]\n    steps: [{{run: echo hi}}]\n",
                marker.display()
            )
            .as_bytes(),
        )],
    );
    let bg_pid = dir.join("bg.pid");
    let config = format!(
        r#"probes:
  wx: "echo wx-config 3.2.4; sleep 300 & echo $! > {bg}"
  leak: "tr '\\0' ' ' < /proc/$PPID/cmdline; exit 1"
projects:
  evil:
    repo: {evil}
    poll: off
  gui:
    pipeline: |
      builders:
        gui:
          requires: [wx >= 3.0]
          steps: [{{run: echo built}}]
        leaky:
          requires: [leak]
          steps: [{{run: echo never}}]
"#,
        bg = bg_pid.display(),
        evil = evil.display()
    );
    let server = Server::start_with_config(&config, &[]);
    let w = server.worker("w", 1, &[]);
    let token_of_w = {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", w.pid())).unwrap();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let at = args.iter().position(|a| a == "--token").unwrap();
        args[at + 1].clone()
    };

    // herd.yml's `probes:` fails that build, says where probes go, and its
    // command never runs.
    let id = server.start_build("evil", &[]);
    let b = server.wait_build(id, Duration::from_secs(30));
    assert_eq!(b["state"], "error", "{b:#}");
    let error = b["error"].as_str().unwrap();
    assert!(
        error.contains("`probes:` cannot be defined in herd.yml"),
        "{error}"
    );
    assert!(error.contains("server config"), "{error}");

    // The server config's probe works where a builder needs it.
    let id = server.start_build("gui", &["--builder", "gui"]);
    let b = server.wait_build(id, Duration::from_secs(30));
    assert_eq!(b["state"], "success", "{b:#}");
    assert_eq!(probe(&server, "w", "wx")["version"], "3.2.4");
    assert!(!marker.exists(), "herd.yml's probe command ran");

    // Nothing a probe starts outlives it.
    let pid: i32 = wait_until(Duration::from_secs(10), "the probe's pid file", || {
        std::fs::read_to_string(&bg_pid).ok()?.trim().parse().ok()
    });
    wait_until(
        Duration::from_secs(10),
        "the probe's sleep to be gone",
        || (!alive(pid)).then_some(()),
    );

    // A probe's output is masked like a step's: the worker's token (on
    // its command line) never reaches the API.
    let leak = wait_until(Duration::from_secs(20), "the leak probe", || {
        let p = probe(&server, "w", "leak");
        p["output"].is_string().then_some(p)
    });
    let output = leak["output"].as_str().unwrap();
    assert!(output.contains("--token ***"), "{output}");
    let workers = server.get_text("/api/v1/workers").unwrap();
    assert!(
        !workers.contains(&token_of_w),
        "the token leaked: {workers}"
    );
    assert!(!marker.exists());

    // A worker's own probe (its owner's word) wins over the server's.
    let _own = server.worker_with_args("own", &["--probe", "wx=echo wx-config 3.3.0"]);
    let id = server.start_build("gui", &["--builder", "gui"]);
    server.wait_build(id, Duration::from_secs(30));
    wait_until(Duration::from_secs(20), "own's wx probe", || {
        (probe(&server, "own", "wx")["version"] == "3.3.0").then_some(())
    });
}

const RELEASE_PIPELINE: &str = r#"builders:
  release:
    steps:
      - run: printf '%s' "$K" | sha256sum
        env: {K: "${{ secrets.release-key }}"}
"#;

/// The sha256 a step prints of the value it got.
fn sha_hex(value: &str) -> String {
    hex::encode(sha2::Sha256::digest(value.as_bytes()))
}

#[test]
fn a_restricted_secret_follows_project_and_branch_never_a_builder_name_or_a_try() {
    const SECRET: &str = "rel-7f3a9c2e-d00d";
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(
        root.path(),
        "p",
        &[("herd.yml", RELEASE_PIPELINE.as_bytes())],
    );
    run_git(&repo, &["tag", "v1.0"]);
    // Whoever can push makes a branch (and a tag named like the protected
    // branch) whose herd.yml has a builder called `release`.
    run_git(&repo, &["checkout", "-q", "-b", "evil"]);
    commit(&repo, &[("evil.txt", b"x")], "evil");
    run_git(&repo, &["tag", "main-not"]);
    run_git(&repo, &["checkout", "-q", "main"]);
    let other = git_repo(
        root.path(),
        "other",
        &[("herd.yml", RELEASE_PIPELINE.as_bytes())],
    );
    let config = format!(
        "secrets:\n  release-key:\n    value: {SECRET}\n    projects: [p]\n    refs: [main, 'v*']\n    builders: [release]\nprojects:\n  p:\n    repo: {}\n    poll: off\n  other:\n    repo: {}\n    poll: off\n",
        repo.display(),
        other.display()
    );
    let server = Server::start_with_config(&config, &[]);
    let _w = server.worker("w", 1, &[]);
    let run = |project: &str, extra: &[&str]| {
        let id = server.start_build(project, extra);
        let b = server.wait_build(id, Duration::from_secs(30));
        assert_eq!(b["state"], "success", "{b:#}");
        let log = String::from_utf8(server.step_log(id, "release", "1")).unwrap();
        let job = server.job(&b, "release", "main").clone();
        (id, log, job)
    };
    let got = sha_hex(SECRET);
    let empty = sha_hex("");

    // The default branch and a `v*` tag get it.
    for extra in [&[][..], &["--rev", "main"], &["--rev", "v1.0"]] {
        let (_, log, job) = run("p", extra);
        assert!(log.contains(&got), "{extra:?}: {log}");
        assert_eq!(job["withheld"], json!([]), "{extra:?}");
    }
    // Another branch, a bare commit, another project: no secret, and why.
    let evil_sha = String::from_utf8(run_git(&repo, &["rev-parse", "evil"]).stdout).unwrap();
    for (project, extra, why) in [
        (
            "p",
            vec!["--rev", "evil"],
            "`evil` is not among its branches and tags",
        ),
        ("p", vec!["--rev", evil_sha.trim()], "of no branch or tag"),
        ("other", vec![], "project `other` is not among its projects"),
    ] {
        let (id, log, job) = run(project, &extra);
        assert!(log.contains(&empty), "{project} {extra:?}: {log}");
        assert!(!log.contains(&got), "{project} {extra:?}: {log}");
        let reason = job["withheld"][0]["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(why), "{project} {extra:?}: {job:#}");
        // The job's log says it first (atop the checkout).
        let first = String::from_utf8(server.step_log(id, "release", "0")).unwrap();
        assert!(
            first.starts_with("[herd] secret `release-key` is withheld from this job"),
            "{first}"
        );
    }

    // A try patch of main that adds its own `release`-named builder.
    let out = server.cli(&["token", "create", "--try", "--user", "mallory"]);
    let try_token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let base = String::from_utf8(run_git(&repo, &["rev-parse", "main"]).stdout).unwrap();
    std::fs::write(
        repo.join("herd.yml"),
        format!("{RELEASE_PIPELINE}      - run: echo patched\n"),
    )
    .unwrap();
    let patch = String::from_utf8(run_git(&repo, &["diff"]).stdout).unwrap();
    run_git(&repo, &["checkout", "--", "herd.yml"]);
    let (status, answer) = server.post(
        "/api/v1/try",
        json!({"project": "p", "base": base.trim(), "patch": patch}),
        Some(&try_token),
    );
    assert_eq!(status, 201, "{answer}");
    let id = answer["id"].as_i64().unwrap();
    let b = server.wait_build(id, Duration::from_secs(30));
    let log = String::from_utf8(server.step_log(id, "release", "1")).unwrap();
    assert!(log.contains(&empty) && !log.contains(&got), "{log}");
    let reason = server.job(&b, "release", "main")["withheld"][0]["reason"].clone();
    assert!(reason.as_str().unwrap().contains("try builds"), "{b:#}");
    // The page and `herd build show` say it too.
    let page = server.get_text(&format!("/builds/{id}")).unwrap();
    assert!(page.contains("secret `release-key` is withheld"), "{page}");
    let shown = server.cli(&["build", "show", &id.to_string()]);
    assert!(
        String::from_utf8_lossy(&shown.stdout)
            .contains("secret `release-key` is withheld: try builds"),
        "{}",
        String::from_utf8_lossy(&shown.stdout)
    );
}

/// A secret that each encoding writes differently.
const LEAKY: &str = "Tr0ub4dor&3/x\"y+z-2026";

const LEAK_SCRIPT: &str = r#"import json, sys, urllib.parse
k = sys.argv[1]
print("hex", k.encode().hex())
print("HEX", k.encode().hex().upper())
print("pct", urllib.parse.quote(k))
print("PCT", urllib.parse.quote(k, safe="").replace("%2f", "%2F"))
print("json", json.dumps(k))
print("ujson", json.dumps(k).replace("&", "\\u0026").replace("/", "\\/"))
"#;

const JUNIT_SCRIPT: &str = r#"import os
from xml.sax.saxutils import escape, quoteattr
k = os.environ["K"]
ids = open(os.environ["HERD_TESTS_FILE"]).read().split()
cases = "".join(
    "<testcase name=%s><failure message=%s>%s</failure></testcase>"
    % (quoteattr(i), quoteattr("leaked " + k), escape(k))
    for i in ids
)
open("r.xml", "w").write("<testsuite>" + cases + "</testsuite>")
raise SystemExit(1)
"#;

#[test]
fn a_secret_is_masked_in_every_channel_and_every_common_encoding() {
    let root = tempfile::tempdir().unwrap();
    let pipeline = r#"builders:
  leak:
    steps:
      - run: python3 leak.py "$K"
        env: {K: "${{ secrets.k }}"}
      - name: tests
        split:
          list: printf 'plain\nid-%s\n' "$K"
          run: python3 junit.py @$HERD_TESTS_FILE
          junit: r.xml
          workers: 1
        env: {K: "${{ secrets.k }}"}
"#;
    let repo = git_repo(
        root.path(),
        "p",
        &[
            ("herd.yml", pipeline.as_bytes()),
            ("leak.py", LEAK_SCRIPT.as_bytes()),
            ("junit.py", JUNIT_SCRIPT.as_bytes()),
        ],
    );
    let config = format!(
        "secrets:\n  k:\n    value: {}\nprojects:\n  p:\n    repo: {}\n    poll: off\n",
        serde_json::to_string(LEAKY).unwrap(),
        repo.display()
    );
    let server = Server::start_with_config(&config, &[]);
    let _w = server.worker("w", 1, &[]);
    let id = server.start_build("p", &[]);
    let b = server.wait_build(id, Duration::from_secs(60));
    assert_eq!(b["state"], "failure", "the junit says failed: {b:#}");

    let forms: Vec<String> = vec![
        LEAKY.to_string(),
        hex_of(LEAKY),
        hex_of(LEAKY).to_uppercase(),
        "Tr0ub4dor%263/x%22y%2Bz-2026".into(),
        "Tr0ub4dor%263%2Fx%22y%2Bz-2026".into(),
        "Tr0ub4dor&3/x\\\"y+z-2026".into(),
        "Tr0ub4dor\\u00263/x\\\"y+z-2026".into(),
        "Tr0ub4dor&amp;3/x&quot;y+z-2026".into(),
    ];
    let log = String::from_utf8(server.step_log(id, "leak", "1")).unwrap();
    for line in [
        "hex ***",
        "HEX ***",
        "pct ***",
        "PCT ***",
        "json \"***\"",
        "ujson \"***\"",
    ] {
        assert!(log.contains(line), "{line}: {log}");
    }
    let mut seen = vec![
        ("step log", log),
        (
            "tests log",
            String::from_utf8(server.step_log(id, "leak", "2")).unwrap(),
        ),
        (
            "build",
            server.get_text(&format!("/api/v1/builds/{id}")).unwrap(),
        ),
        (
            "tests",
            server
                .get_text(&format!("/api/v1/builds/{id}/tests"))
                .unwrap(),
        ),
        ("page", server.get_text(&format!("/builds/{id}")).unwrap()),
        (
            "show",
            String::from_utf8(server.cli(&["build", "show", &id.to_string()]).stdout).unwrap(),
        ),
    ];
    let tests: Value = server.get(&format!("/api/v1/builds/{id}/tests")).unwrap();
    let split = &tests["splits"][0];
    let junit_url = format!("/api/v1/splits/{}/junit.xml", split["id"]);
    seen.push(("junit", server.get_text(&junit_url).unwrap()));
    let ids: Vec<&str> = split["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"id-***"),
        "the list output is masked: {ids:?}"
    );
    let failed = split["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "plain")
        .unwrap();
    assert!(
        failed["message"].as_str().unwrap().contains("leaked ***"),
        "{failed}"
    );
    for (channel, text) in &seen {
        for form in &forms {
            assert!(
                !text.contains(form.as_str()),
                "{channel} holds {form}: {text}"
            );
        }
    }
}

fn hex_of(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn credentials_in_a_repository_url_are_never_shown() {
    const PAT: &str = "ghp_Zq9sEcReTpAt0123";
    let config =
        format!("projects:\n  p:\n    repo: http://alice:{PAT}@127.0.0.1:9/x.git\n    poll: 1s\n");
    let server = Server::start_with_config(&config, &[]);
    // A build asks git, which fails: its error names the URL.
    let out = server.cli(&["build", "start", "p"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!said.contains(PAT), "{said}");
    wait_until(Duration::from_secs(20), "a poll error", || {
        server.get("/api/v1/projects/p").ok()?["polling"]["last_error"]
            .as_str()
            .map(|_| ())
    });
    for path in [
        "/api/v1/projects",
        "/api/v1/projects/p",
        "/projects",
        "/projects/p",
        "/",
    ] {
        let text = server.get_text(path).unwrap();
        assert!(!text.contains(PAT), "{path}: {text}");
    }
    let project = server.get("/api/v1/projects/p").unwrap();
    assert!(
        project["repo"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1:9/x.git"),
        "{project}"
    );
    let log = server.log();
    assert!(log.contains("127.0.0.1:9"), "the poll failure is logged");
    assert!(!log.contains(PAT), "{log}");
}

#[test]
fn try_builds_have_limits() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(
        root.path(),
        "p",
        &[(
            "herd.yml",
            b"builders:\n  a:\n    steps: [{run: echo a}]\n" as &[u8],
        )],
    );
    let config = format!(
        "limits:\n  try_builds_per_hour: 2\n  max_builders_per_build: 5\nprojects:\n  p:\n    repo: {}\n    poll: off\n  inline:\n    pipeline: |\n      builders:\n        a:\n          steps: [{{run: echo a}}]\n",
        repo.display()
    );
    let server = Server::start_with_config(&config, &[]);
    let _w = server.worker("w", 1, &[]);
    let token = |user: &str| {
        let out = server.cli(&["token", "create", "--try", "--user", user]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let mallory = token("mallory");
    let base = String::from_utf8(run_git(&repo, &["rev-parse", "main"]).stdout).unwrap();
    let patch_of = |builders: usize| {
        let mut yml = String::from("builders:\n");
        for i in 0..builders {
            yml.push_str(&format!("  b{i}:\n    steps: [{{run: echo {i}}}]\n"));
        }
        std::fs::write(repo.join("herd.yml"), yml).unwrap();
        let patch = String::from_utf8(run_git(&repo, &["diff"]).stdout).unwrap();
        run_git(&repo, &["checkout", "--", "herd.yml"]);
        json!({"project": "p", "base": base.trim(), "patch": patch})
    };

    // A patch with more builders than a build may have: a failed build
    // that says why, no jobs.
    let (status, answer) = server.post("/api/v1/try", patch_of(50), Some(&mallory));
    assert_eq!(status, 201, "{answer}");
    let b = server.wait_build(answer["id"].as_i64().unwrap(), Duration::from_secs(20));
    assert_eq!(b["state"], "error", "{b:#}");
    assert!(
        b["error"]
            .as_str()
            .unwrap()
            .contains("max_builders_per_build"),
        "{b:#}"
    );
    assert_eq!(b["jobs"], json!([]));

    // Per token and hour: the second goes, the third waits.
    let (status, _) = server.post("/api/v1/try", patch_of(2), Some(&mallory));
    assert_eq!(status, 201);
    let (status, answer) = server.post("/api/v1/try", patch_of(2), Some(&mallory));
    assert_eq!(status, 429, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("try_builds_per_hour"),
        "{answer}"
    );
    // Another token has its own count.
    let (status, _) = server.post("/api/v1/try", patch_of(1), Some(&token("alice")));
    assert_eq!(status, 201);

    // A project without a repository has nothing to apply a patch to.
    let mut body = patch_of(1);
    body["project"] = json!("inline");
    let (status, answer) = server.post("/api/v1/try", body, Some(&token("bob")));
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("has no repository"),
        "{answer}"
    );
}

#[test]
fn a_build_cannot_write_control_characters_to_a_terminal() {
    let root = tempfile::tempdir().unwrap();
    // A step name that sets the title and clears the screen: refused by
    // `herd check`, with the place.
    let yml = root.path().join("herd.yml");
    std::fs::write(
        &yml,
        "builders:\n  a:\n    steps:\n      - name: \"ok\\e]0;owned\\a\\e[2J\"\n        run: x\n",
    )
    .unwrap();
    let out = std::process::Command::new(HERD)
        .args(["check"])
        .arg(&yml)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("herd.yml:4:15"), "{err}");
    assert!(err.contains("control character"), "{err}");
    assert!(!err.contains('\u{1b}'), "{err}");

    // What the repository still says (a commit message, output) reaches
    // the terminal as escapes, and the JSON stays JSON.
    let repo = git_repo(
        root.path(),
        "p",
        &[(
            "herd.yml",
            b"builders:\n  a:\n    steps:\n      - run: printf 'colour \\033[31mred\\033[0m title \\033]0;owned\\007\\n'\n" as &[u8],
        )],
    );
    commit(
        &repo,
        &[("x", b"x")],
        "innocent\u{1b}]0;owned\u{7}\u{1b}[2J\u{202e}",
    );
    let server = Server::start_with_config(
        &format!(
            "projects:\n  p:\n    repo: {}\n    poll: off\n",
            repo.display()
        ),
        &[],
    );
    let _w = server.worker("w", 1, &[]);
    let id = server.start_build("p", &[]);
    let b = server.wait_build(id, Duration::from_secs(30));
    assert_eq!(b["state"], "success", "{b:#}");
    assert!(
        b["message"].as_str().unwrap().contains('\u{1b}'),
        "the API keeps it"
    );
    let shown = server.cli(&["build", "show", &id.to_string()]);
    let text = String::from_utf8(shown.stdout).unwrap();
    assert!(!text.chars().any(is_terminal_control), "{text:?}");
    assert!(
        text.contains("innocent\\x1b]0;owned\\x07\\x1b[2J\\u{202e}"),
        "{text}"
    );
    let json = server.cli(&["build", "show", &id.to_string(), "--output", "json"]);
    let text = String::from_utf8(json.stdout).unwrap();
    assert!(!text.chars().any(is_terminal_control), "{text:?}");
    let back: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(back["message"], b["message"], "the same value");

    // A log to a pipe is exact; to a terminal it keeps colours only.
    assert!(server
        .step_log(id, "a", "1")
        .starts_with(b"colour \x1b[31mred"));
    let on_terminal = in_a_terminal(&server, &["build", "log", &id.to_string(), "--step", "1"]);
    assert!(
        on_terminal.contains("colour \x1b[31mred\x1b[0m"),
        "{on_terminal:?}"
    );
    assert!(
        on_terminal.contains("title \\x1b]0;owned\\x07"),
        "{on_terminal:?}"
    );
}

/// What a terminal would act on (newline, tab and carriage return aside).
fn is_terminal_control(c: char) -> bool {
    !matches!(c, '\n' | '\t' | '\r') && herd_core::pipeline::is_hidden_char(c)
}

/// Runs the CLI with its standard output on a pseudo-terminal (`script`)
/// and returns what it wrote there.
fn in_a_terminal(server: &Server, args: &[&str]) -> String {
    let command = std::iter::once(HERD)
        .chain(args.iter().copied())
        .map(shell_quote)
        .collect::<Vec<_>>()
        .join(" ");
    let out = std::process::Command::new("script")
        .args(["-qefc", &command, "/dev/null"])
        .env("HERD_SERVER", &server.url)
        .env("HERD_TOKEN", &server.token)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}
