//! Pipelines a real project needs: a matrix whose cells the capability
//! matcher places on the workers that can run them, and `herd check`
//! finding cells that can never run.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::collections::BTreeMap;
use std::time::Duration;

const MATRIX: &str = r#"builders:
  linux:
    requires: ["python3 == ${{ matrix.python }}"]
    matrix:
      python: [3.10, 3.12, 3.13]
      reactor: [default, poll, asyncio]
      exclude:
        - {python: 3.10, reactor: asyncio}
    name: py${{ matrix.python }}-${{ matrix.reactor }}
    steps:
      - name: trial ${{ matrix.reactor }}
        run: echo "$HERD_WORKER python ${{ matrix.python }} reactor $REACTOR"
        env: {REACTOR: "${{ matrix.reactor }}"}
"#;

#[test]
fn a_matrix_runs_each_cell_on_a_worker_with_that_python() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start_with_pipelines(&[("p", MATRIX)], &[]);
    let mut workers = Vec::new();
    for v in ["3.10", "3.12", "3.13"] {
        let path = fake_tools(&root.path().join(v), v, &[]);
        let name = format!("py{}", v.replace('.', ""));
        workers.push(server.worker_with_env(&name, 2, &[], &[("PATH", path)]));
    }
    let id = server.start_build("p", &[]);
    let b = server.wait_build(id, Duration::from_secs(60));
    assert_eq!(b["state"], "success", "{b:#}");
    let mut ran: BTreeMap<String, String> = BTreeMap::new();
    for j in b["jobs"].as_array().unwrap() {
        assert_eq!(j["builder"], "linux");
        let attempt = &j["attempts"][0];
        ran.insert(
            j["name"].as_str().unwrap().to_string(),
            attempt["worker"].as_str().unwrap().to_string(),
        );
    }
    let expected: BTreeMap<String, String> = [
        ("py3.10-default", "py310"),
        ("py3.10-poll", "py310"),
        ("py3.12-default", "py312"),
        ("py3.12-poll", "py312"),
        ("py3.12-asyncio", "py312"),
        ("py3.13-default", "py313"),
        ("py3.13-poll", "py313"),
        ("py3.13-asyncio", "py313"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(ran, expected, "each cell on the worker with its python");
    let log = String::from_utf8(server.step_log(id, "linux/py3.12-poll", "0")).unwrap();
    assert_eq!(log.trim(), "py312 python 3.12 reactor poll");

    // `herd build show` lists the cells by name.
    let show = server.cli(&["build", "show", &id.to_string()]);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(text.contains("linux/py3.13-asyncio"), "{text}");
}

#[test]
fn herd_check_expands_the_matrix_and_names_cells_that_can_never_run() {
    let root = tempfile::tempdir().unwrap();
    let check = |text: &str| {
        let file = root.path().join("herd.yml");
        std::fs::write(&file, text).unwrap();
        let out = std::process::Command::new(HERD)
            .arg("check")
            .arg(&file)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, text) = check(MATRIX);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("ok (1 builders, 8 jobs)"), "{text}");
    assert!(
        text.contains("py3.10-default, py3.10-poll, py3.12-default"),
        "{text}"
    );

    let strict = MATRIX.replace(
        "requires: [\"python3 == ${{ matrix.python }}\"]",
        "requires: [\"python3 == ${{ matrix.python }}\", python3 >= 3.12]",
    );
    let (code, text) = check(&strict);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("job linux/py3.10-default can never run: `python3 == 3.10` and `python3 >= 3.12` can never all hold"),
        "{text}"
    );
    assert!(
        text.contains("exclude:"),
        "the help says what to do: {text}"
    );

    let typo = MATRIX.replace("${{ matrix.reactor }}\"}", "${{ matrix.reactr }}\"}");
    let (code, text) = check(&typo);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("`${{ matrix.reactr }}` names no axis"),
        "{text}"
    );
}

#[test]
fn retry_runs_the_failed_jobs_again_as_one_build_of_the_same_revision() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().display();
    let pipeline = format!(
        "builders:\n  good:\n    steps:\n      - run: echo fine\n  flaky:\n    jobs:\n      once:\n        steps:\n          - run: if [ -e {dir}/ran ]; then echo second time; else touch {dir}/ran; exit 1; fi\n      steady:\n        steps:\n          - run: echo steady\n"
    );
    let server = Server::start_with_pipelines(&[("p", &pipeline)], &[]);
    let _w = server.worker("w", 2, &[]);
    let first = server.start_build("p", &[]);
    let b = server.wait_build(first, Duration::from_secs(60));
    assert_eq!(b["state"], "failure", "{b:#}");

    let out = server.cli(&["build", "retry", &first.to_string(), "--failed", "--wait"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let second: i64 = stdout.lines().next().unwrap().trim().parse().unwrap();
    let b = server.build(second);
    assert_eq!(b["state"], "success");
    let jobs: Vec<String> = b["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            format!(
                "{}/{}",
                j["builder"].as_str().unwrap(),
                j["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(jobs, ["flaky/once"], "only the failed job runs again");
    assert_eq!(
        b["reason"],
        format!("retry of the failed jobs of build {first}")
    );
    let log = String::from_utf8(server.step_log(second, "flaky/once", "0")).unwrap();
    assert_eq!(log.trim(), "second time");

    // Nothing failed: nothing to run again, and it says so.
    let out = server.cli(&["build", "retry", &second.to_string(), "--failed"]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("no failed jobs"), "{said}");
    // Every job again, through the API.
    let (status, again) = server.post(
        &format!("/api/v1/builds/{first}/retry"),
        serde_json::json!({}),
        Some(&server.token),
    );
    assert_eq!(status, 201, "{again}");
    assert_eq!(again["jobs"].as_array().unwrap().len(), 3, "{again}");
    let (status, _) = server.post(
        "/api/v1/builds/999999/retry",
        serde_json::json!({}),
        Some(&server.token),
    );
    assert_eq!(status, 404);
}

#[test]
fn needs_fan_in_wait_and_skip_by_their_if_and_a_retry_reruns_what_depends() {
    let root = tempfile::tempdir().unwrap();
    let d = root.path().display();
    let pipeline = format!(
        r#"builders:
  wheels:
    matrix: {{os: [linux, mac, windows]}}
    steps:
      - run: sleep 0.3; touch {d}/wheel-${{{{ matrix.os }}}}
  publish:
    needs: [wheels]
    steps:
      - run: ls {d}/wheel-linux {d}/wheel-mac {d}/wheel-windows
  test:
    steps:
      - run: if [ -e {d}/fixed ]; then echo fixed; else exit 1; fi
  deploy:
    needs: [test, publish]
    steps:
      - run: echo deployed
  report:
    needs: [test]
    if: failure
    steps:
      - run: echo test failed
  cleanup:
    needs: [deploy]
    if: always
    steps:
      - run: echo cleaned
"#
    );
    let server = Server::start_with_pipelines(&[("p", &pipeline)], &[]);
    let _a = server.worker("a", 2, &[]);
    let _b = server.worker("b", 2, &[]);
    let id = server.start_build("p", &[]);
    let b = server.wait_build(id, Duration::from_secs(60));
    assert_eq!(b["state"], "failure", "{b:#}");
    let job = |name: &str| server.job(&b, name, "main").clone();
    let state = |name: &str| job(name)["state"].as_str().unwrap().to_string();
    // Fan-in: publish ran after every wheel, and saw all three.
    assert_eq!(state("publish"), "success");
    let publish_start = job("publish")["started_at"].as_i64().unwrap();
    for os in ["linux", "mac", "windows"] {
        let w = server.job(&b, "wheels", os);
        assert_eq!(w["state"], "success");
        assert!(w["finished_at"].as_i64().unwrap() <= publish_start);
    }
    assert_eq!(
        job("publish")["needs"],
        serde_json::json!(["wheels/linux", "wheels/mac", "wheels/windows"])
    );
    // test failed: deploy is skipped and says why; report (if: failure)
    // and cleanup (if: always, after the skipped deploy) run.
    assert_eq!(state("test"), "failure");
    assert_eq!(state("deploy"), "skipped");
    let why = job("deploy")["error"].as_str().unwrap().to_string();
    assert!(
        why.contains("test/main") && why.contains("failure"),
        "{why}"
    );
    assert!(job("deploy")["attempts"].as_array().unwrap().is_empty());
    assert_eq!(state("report"), "success");
    assert_eq!(state("cleanup"), "success");
    let show = server.cli(&["build", "show", &id.to_string()]);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(text.contains("needs: test/main, publish/main"), "{text}");

    // Fixed: retrying the failed jobs runs test and what depends on it.
    std::fs::write(root.path().join("fixed"), "").unwrap();
    let out = server.cli(&["build", "retry", &id.to_string(), "--failed", "--wait"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let again: i64 = stdout.lines().next().unwrap().trim().parse().unwrap();
    let b = server.build(again);
    let mut ran: Vec<String> = b["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            format!(
                "{} {}",
                j["builder"].as_str().unwrap(),
                j["state"].as_str().unwrap()
            )
        })
        .collect();
    ran.sort();
    assert_eq!(
        ran,
        [
            "cleanup success",
            "deploy success",
            "report skipped",
            "test success"
        ],
        "{b:#}"
    );
}

#[test]
fn params_reach_the_steps_are_checked_and_kept_by_a_retry() {
    let pipeline = "params:\n  python: {default: 3.12, choices: [3.12, 3.13], description: the interpreter}\n  note: {}\nbuilders:\n  show:\n    steps:\n      - run: echo \"$HERD_PARAM_PYTHON $HERD_PARAM_NOTE\"\n";
    let server = Server::start_with_pipelines(&[("p", pipeline)], &[]);
    let _w = server.worker("w", 1, &[]);
    let start = |args: &[&str]| {
        let mut all = vec!["build", "start", "p", "--wait"];
        all.extend_from_slice(args);
        server.cli(&all)
    };
    let out = start(&["--param", "python=3.13", "--param", "note=hi there"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let id: i64 = stdout.lines().next().unwrap().trim().parse().unwrap();
    let log = String::from_utf8(server.step_log(id, "show", "0")).unwrap();
    assert_eq!(log.trim(), "3.13 hi there");
    assert!(
        stdout.contains("params: note=hi there python=3.13"),
        "{stdout}"
    );
    let b = server.build(id);
    assert_eq!(
        b["params"],
        serde_json::json!({"python": "3.13", "note": "hi there"})
    );
    let page = server.get_text(&format!("/builds/{id}")).unwrap();
    assert!(
        page.contains("note=hi there python=3.13"),
        "the build page shows them"
    );

    // Defaults; refusals that say what is allowed.
    let out = start(&[]);
    let first = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_string();
    let log = String::from_utf8(server.step_log(first.parse().unwrap(), "show", "0")).unwrap();
    assert_eq!(log.trim(), "3.12");
    let out = start(&["--param", "python=2.7"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("one of 3.12, 3.13"));
    let out = start(&["--param", "pyhton=3.12"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("declares: python, note"));
    let out = start(&["--param", "python"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");

    // A retry runs with the same values.
    let out = server.cli(&["build", "retry", &id.to_string(), "--wait"]);
    let again: i64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let log = String::from_utf8(server.step_log(again, "show", "0")).unwrap();
    assert_eq!(log.trim(), "3.13 hi there");
}

#[test]
fn a_run_steps_own_results_are_read_from_its_report_or_its_output() {
    let pipeline = r#"builders:
  tap:
    steps:
      - name: suite
        run: |
          mkdir -p out
          printf 'TAP version 13\n1..3\nok 1 - t/a.t\nnot ok 2 - t/b.t\nok 3 - t/c.t # SKIP no db\n' > out/report.tap
          exit 1
        results: {tap: out/report.tap}
  trial:
    steps:
      - run: |
          echo "test_one ... [OK]"
          echo "test_two ... [FAIL]"
          echo "test_three ... [OK]"
        results: {pattern: '^(?P<id>\S+) \.\.\. \[(?P<outcome>OK|FAIL)\]'}
"#;
    let server = Server::start_with_pipelines(&[("p", pipeline)], &[]);
    let _w = server.worker("w", 2, &[]);
    let id = server.start_build("p", &[]);
    let b = server.wait_build(id, Duration::from_secs(60));
    // The exit code decides each step; the results are what they say.
    assert_eq!(server.job(&b, "tap", "main")["state"], "failure");
    assert_eq!(server.job(&b, "trial", "main")["state"], "success");
    let tests = server.get(&format!("/api/v1/builds/{id}/tests")).unwrap();
    let mut got: BTreeMap<String, String> = BTreeMap::new();
    for s in tests["splits"].as_array().unwrap() {
        for t in s["tests"].as_array().unwrap() {
            got.insert(
                format!(
                    "{}:{}",
                    s["builder"].as_str().unwrap(),
                    t["id"].as_str().unwrap()
                ),
                t["outcome"].as_str().unwrap().to_string(),
            );
        }
    }
    let want: BTreeMap<String, String> = [
        ("tap:t/a.t", "passed"),
        ("tap:t/b.t", "failed"),
        ("tap:t/c.t", "skipped"),
        ("trial:test_one", "passed"),
        ("trial:test_two", "failed"),
        ("trial:test_three", "passed"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(got, want, "{tests:#}");
    let log = String::from_utf8(server.step_log(id, "trial/main", "0")).unwrap();
    assert!(
        log.contains("test_two ... [FAIL]"),
        "the output is still the log: {log}"
    );
}

#[test]
fn badges_show_the_last_ended_builds_state_per_project_and_builder() {
    let pipeline = "builders:\n  ok:\n    steps:\n      - run: 'true'\n  bad:\n    steps:\n      - run: 'false'\n";
    let server = Server::start_with_pipelines(&[("p", pipeline)], &[]);
    let _w = server.worker("w", 2, &[]);
    let unknown = server.get_text("/badge/p.svg").unwrap();
    assert!(
        unknown.contains("p: unknown"),
        "before any build: {unknown}"
    );
    let id = server.start_build("p", &[]);
    server.wait_build(id, Duration::from_secs(30));
    let svg = |path: &str| server.get_text(path).unwrap();
    assert!(svg("/badge/p.svg").contains("p: failure"));
    assert!(svg("/badge/p/ok.svg").contains("ok: success"));
    assert!(svg("/badge/p/bad.svg").contains("bad: failure"));
    assert!(svg("/badge/p/nope.svg").contains("nope: unknown"));
    assert!(svg("/badge/p.svg?branch=elsewhere").contains("p: unknown"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let res = rt
        .block_on(http_get(format!("{}/badge/p.svg", server.url)))
        .unwrap();
    assert_eq!(
        res.headers()["content-type"],
        "image/svg+xml; charset=utf-8"
    );
    assert_eq!(res.headers()["cache-control"], "public, max-age=60");
    let res = rt
        .block_on(http_get(format!("{}/badge/p.png", server.url)))
        .unwrap();
    assert_eq!(res.status(), 404);
}
