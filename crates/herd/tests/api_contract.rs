//! The API keeps the word of its OpenAPI document: schemathesis (from
//! PyPI, installed by the test command) generates requests from the
//! document the server serves, with all its checks (no 5xx, statuses,
//! content types, headers and bodies as documented, schema-valid bodies
//! taken and schema-violating ones refused, auth not ignored), against a
//! real server with a worker and a finished build.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

/// Examples per operation; `HERD_API_EXAMPLES` raises it for a longer run.
fn examples() -> String {
    std::env::var("HERD_API_EXAMPLES").unwrap_or_else(|_| "40".into())
}

/// A fixed seed keeps CI reproducible; `HERD_API_SEED` tries another.
fn seed() -> String {
    std::env::var("HERD_API_SEED").unwrap_or_else(|_| "20261130".into())
}

#[test]
fn schemathesis_finds_no_disagreement_with_the_document() {
    let version = Command::new("python3")
        .args(["-m", "schemathesis.cli", "--version"])
        .output()
        .expect("python3 runs");
    assert!(
        version.status.success(),
        "schemathesis is not installed: run ./scripts/test (it installs it), or `python3 -m pip install --user schemathesis`: {}",
        String::from_utf8_lossy(&version.stderr)
    );
    // The worker and the project share the name, so that one fixed value
    // of `name` reaches a real project and a real worker.
    let server = Server::start_with_pipelines(
        &[(
            "p",
            "builders:\n  b:\n    steps:\n      - run: echo hello\n",
        )],
        &[],
    );
    let _worker = server.worker("p", 1, &[]);
    let id = server.start_build("p", &[]);
    server.wait_build(id, Duration::from_secs(60));

    let dir = server.dir.path();
    let config = dir.join("schemathesis.toml");
    // 413 is a fair answer to any body over the server's limit, and 429 to
    // an enrollment over the per-address limit.
    std::fs::write(
        &config,
        r#"
[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 409, 413, 415, 422, 429]

[checks.positive_data_acceptance]
expected-statuses = ["2XX", 401, 403, 404, 409, 413, 429]

[parameters]
name = "p"
project = "p"
forge = "generic"
"#,
    )
    .expect("write config");
    let out = Command::new("python3")
        .current_dir(dir)
        .args(["-m", "schemathesis.cli", "--config-file"])
        .arg(&config)
        .args(["run", &format!("{}/api/v1/openapi.json", server.url)])
        .args([
            "--checks",
            "all",
            "--max-examples",
            &examples(),
            "--seed",
            &seed(),
        ])
        .args(["--generation-with-security-parameters", "false"])
        .args([
            "--request-timeout",
            "40",
            "--no-color",
            "--output-truncate",
            "true",
        ])
        .args(["-H", &format!("Authorization: Bearer {}", server.token)])
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found disagreements (seed {}):\n{}\n{}",
        seed(),
        stdout
            .lines()
            .map(|l| l.chars().take(400).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    // Every operation schemathesis read from the document was tested.
    let number_after = |label: &str| {
        stdout
            .split(label)
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse::<usize>().ok())
    };
    let operations = number_after("Selected: ").unwrap_or(0);
    assert!(operations >= 28, "{operations} operations:\n{stdout}");
    let tested = number_after("Tested: ");
    assert_eq!(
        tested,
        Some(operations),
        "every operation was tested:\n{stdout}"
    );
}
