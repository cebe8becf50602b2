//! The CLI as a Unix tool: exit codes by kind of failure, a closed pipe,
//! shell completions, and `--output json` read back as the API's types.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

const PIPELINES: &[(&str, &str)] = &[
    (
        "ok",
        "builders:\n  b:\n    steps:\n      - run: echo fine\n",
    ),
    ("bad", "builders:\n  b:\n    steps:\n      - run: exit 3\n"),
];

fn code(out: &std::process::Output) -> Option<i32> {
    out.status.code()
}

#[test]
fn exit_codes_say_what_kind_of_thing_went_wrong() {
    let server = Server::start_with_pipelines(PIPELINES, &[]);
    let _w = server.worker("w", 1, &[]);

    // 0 and 1: a build waited for that succeeds, and one that fails.
    let out = server.cli(&["build", "start", "ok", "--wait"]);
    assert_eq!(
        code(&out),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = server.cli(&["build", "start", "bad", "--wait"]);
    assert_eq!(
        code(&out),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let failed: i64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap();

    // 2: a usage error.
    let out = server.cli(&["build", "start"]);
    assert_eq!(code(&out), Some(2));

    // 3: nothing listens there.
    let out = server.cli(&["workers", "--server", "http://127.0.0.1:9"]);
    assert_eq!(code(&out), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));

    // 4: a token of the wrong kind, and one that is not valid.
    let read = server.cli(&["token", "create", "--read"]);
    let read = String::from_utf8_lossy(&read.stdout).trim().to_string();
    let out = server.cli(&["build", "cancel", &failed.to_string(), "--token", &read]);
    assert_eq!(
        code(&out),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = server.cli(&["workers", "--token", "herd_admin_0000_1111"]);
    assert_eq!(code(&out), Some(4));

    // 5: no such build, worker, project.
    for args in [
        &["build", "show", "424242"][..],
        &["workers", "show", "nobody"],
        &["project", "show", "nothing"],
    ] {
        let out = server.cli(args);
        assert_eq!(code(&out), Some(5), "{args:?}");
    }

    // 6: the server could not do it: the build has already ended.
    let out = server.cli(&["build", "cancel", &failed.to_string()]);
    assert_eq!(
        code(&out),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("already ended"));

    // 1 for a herd.yml with mistakes; 7 for a file that is not there.
    let file = server.dir.path().join("broken.yml");
    std::fs::write(&file, "builders:\n  b:\n    stepz: []\n").unwrap();
    let out = server.cli(&["check", &file.display().to_string()]);
    assert_eq!(code(&out), Some(1));
    let out = server.cli(&["check", "/nonexistent/herd.yml"]);
    assert_eq!(code(&out), Some(7));
}

#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    let server = Server::start_with_pipelines(PIPELINES, &[]);
    let _w = server.worker("w", 1, &[]);
    let id = server.start_build("ok", &[]);
    server.wait_build(id, Duration::from_secs(30));
    for args in [
        vec!["build".to_string(), "show".into(), id.to_string()],
        vec!["build".into(), "log".into(), id.to_string()],
        vec!["completions".into(), "bash".into()],
    ] {
        let mut child = Command::new(HERD)
            .args(&args)
            .env("HERD_SERVER", &server.url)
            .env("HERD_TOKEN", &server.token)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before herd writes a byte.
        drop(child.stdout.take());
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let status = child.wait().unwrap();
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(status.code(), Some(0), "{args:?}: {err}");
    }
}

#[test]
fn completions_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef herd"),
        ("fish", "complete -c herd"),
    ] {
        let out = Command::new(HERD)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(marker), "{shell}: {text}");
        assert!(text.contains("build"), "{shell} completes the subcommands");
    }
}

#[test]
fn read_commands_print_the_api_types_as_json() {
    let server = Server::start_with_pipelines(PIPELINES, &[]);
    let _w = server.worker("w", 2, &["zone=a"]);
    let id = server.start_build("ok", &[]);
    server.wait_build(id, Duration::from_secs(30));
    let json = |args: &[&str]| {
        let mut args = args.to_vec();
        args.extend(["--output", "json"]);
        let out = server.cli(&args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let b: herd_api::builds::Build =
        serde_json::from_slice(&json(&["build", "show", &id.to_string()])).unwrap();
    assert_eq!((b.id, b.state), (id, herd_api::RunState::Success));
    assert_eq!(b.jobs[0].attempts[0].worker, "w");
    let w: herd_api::workers::WorkerList = serde_json::from_slice(&json(&["workers"])).unwrap();
    assert_eq!(w.workers[0].labels["zone"], "a");
    let w: herd_api::workers::Worker =
        serde_json::from_slice(&json(&["workers", "show", "w"])).unwrap();
    assert_eq!(w.slots, 2);
    let p: herd_api::projects::ProjectList =
        serde_json::from_slice(&json(&["project", "list"])).unwrap();
    assert_eq!(p.projects.len(), 2);
    let p: herd_api::projects::ProjectDetail =
        serde_json::from_slice(&json(&["project", "show", "ok"])).unwrap();
    assert_eq!(p.project.name, "ok");
    let t: herd_api::tokens::TokenList = serde_json::from_slice(&json(&["token", "list"])).unwrap();
    assert!(t
        .tokens
        .iter()
        .any(|t| t.kind == herd_api::tokens::TokenKind::Worker));
}

#[test]
fn rough_edges_token_kinds_and_an_address_without_a_scheme() {
    let server = Server::start(&[]);
    // No kind: the error lists the kinds; two kinds: refused.
    let out = server.cli(&["token", "create"]);
    assert_eq!(code(&out), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    for kind in ["--worker", "--enroll", "--try", "--read"] {
        assert!(said.contains(kind), "{said}");
    }
    let out = server.cli(&["token", "create", "--worker", "w", "--read"]);
    assert_eq!(code(&out), Some(2));
    // `host:port` is taken as http; another scheme gets a clear error.
    let bare = server.url.trim_start_matches("http://").to_string();
    let out = server.cli(&["workers", "--server", &bare]);
    assert_eq!(
        code(&out),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = server.cli(&["workers", "--server", "ftp://127.0.0.1:9"]);
    assert_ne!(code(&out), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a herd server's address"));

    // `token list` says how many uses an enrollment token has left.
    let once = server.cli(&["token", "create", "--enroll", "--uses", "1"]);
    let once = String::from_utf8_lossy(&once.stdout)
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_string();
    server.cli(&["token", "create", "--enroll"]);
    let (status, _) = server.post(
        "/api/v1/enroll",
        serde_json::json!({"token": once, "name": "enrolled"}),
        None,
    );
    assert_eq!(status, 201);
    let out = server.cli(&["token", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().next().unwrap().contains("USES LEFT"), "{text}");
    assert!(
        text.contains("0 (used)") && text.contains("unlimited"),
        "{text}"
    );
}

#[test]
fn build_show_lines_up_its_columns_whatever_the_step_names() {
    let pipeline = "builders:\n  a:\n    steps:\n      - name: a step with a rather long name that goes on and on\n        run: 'true'\n      - name: short\n        run: 'true'\n  b:\n    steps:\n      - name: x\n        run: 'false'\n";
    let server = Server::start_with_pipelines(&[("p", pipeline)], &[]);
    let _w = server.worker("w", 2, &[]);
    let id = server.start_build("p", &[]);
    server.wait_build(id, Duration::from_secs(30));
    let out = server.cli(&["build", "show", &id.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // The state column starts at the same place on every step line.
    let starts: Vec<usize> = text
        .lines()
        .filter(|l| l.contains(" success ") || l.contains(" failure "))
        .filter(|l| !l.trim_start().starts_with("job") && !l.trim_start().starts_with("attempt"))
        .map(|l| l.find(" success ").or_else(|| l.find(" failure ")).unwrap())
        .collect();
    assert_eq!(starts.len(), 3, "{text}");
    assert!(starts.windows(2).all(|w| w[0] == w[1]), "{text}");
}
