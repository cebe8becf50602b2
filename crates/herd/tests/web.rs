//! The web page in a real headless Chromium (Debian's chromium and
//! chromium-driver, driven with fantoccini) against a real server and
//! workers. Screenshots of the main pages go to docs/screenshots/.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts chromedriver on a free port of 127.0.0.1.
fn chromedriver() -> Driver {
    for _ in 0..20 {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver) is needed");
        let mut d = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return d;
            }
            if let Ok(Some(_)) = d.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = d.child.kill();
    }
    panic!("chromedriver did not start");
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900"]
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

/// Waits (bounded) until the page has an element matching `css`.
async fn wait_for(c: &Client, css: &str, limit: Duration) -> fantoccini::elements::Element {
    let start = Instant::now();
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            return e;
        }
        assert!(
            start.elapsed() < limit,
            "no `{css}` on {} within {limit:?}:\n{}",
            c.current_url()
                .await
                .map(|u| u.to_string())
                .unwrap_or_default(),
            c.source().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The text of the first element matching `css`, read in one step (a live
/// page may swap elements between a find and a read).
async fn text(c: &Client, css: &str) -> String {
    let v = c
        .execute(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
            vec![serde_json::json!(css)],
        )
        .await
        .unwrap();
    v.as_str()
        .unwrap_or_else(|| panic!("no `{css}` on the page"))
        .to_string()
}

/// Clicks `css`; a live page may swap the element meanwhile: find it again.
async fn click(c: &Client, css: &str) {
    let start = Instant::now();
    loop {
        let e = wait_for(c, css, Duration::from_secs(10)).await;
        match e.click().await {
            Ok(()) => return,
            Err(err) if start.elapsed() < Duration::from_secs(10) => {
                let _ = err;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("cannot click {css}: {err}"),
        }
    }
}

async fn screenshot(c: &Client, name: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = c.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// Runs a blocking harness call (it has a runtime of its own) off the
/// browser's runtime thread.
fn off<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().unwrap())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_grid_shows_a_new_build_without_reload_and_a_script_in_a_commit_message_is_text() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(
        root.path(),
        "app",
        &[(
            "herd.yml",
            b"builders:\n  linux:\n    steps:\n      - run: echo built\n  docs:\n    steps:\n      - run: echo docs; exit 3\n",
        )],
    );
    commit(
        &repo,
        &[("README", b"x")],
        "<script>alert(1)</script> & <b>bold</b>",
    );
    let server = Server::start(&["--project", &format!("app={}", repo.display())]);
    let _w = server.worker("grid-worker", 2, &[]);
    server.wait_online("grid-worker");
    let driver = chromedriver();
    runtime().block_on(async {
        let c = browser(&driver).await;
        c.goto(&format!("{}/", server.url)).await.unwrap();
        wait_for(&c, "p.empty", Duration::from_secs(10)).await;
        // A build started elsewhere appears without a reload.
        let id = off(|| server.start_build("app", &[]));
        let row = wait_for(
            &c,
            &format!("a[href='/builds/{id}']"),
            Duration::from_secs(15),
        )
        .await;
        assert_eq!(row.text().await.unwrap(), format!("#{id}"));
        off(|| server.wait_build(id, Duration::from_secs(30)));
        // Its cells end green and red, live: a glyph and a colour each.
        let start = Instant::now();
        loop {
            let texts = c
                .execute(
                    &format!("return [...document.querySelectorAll(\"tr[data-b='{id}'] td\")].map(td => td.textContent)"),
                    vec![],
                )
                .await
                .unwrap();
            if texts == serde_json::json!(["✓", "✗"]) {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(15), "cells: {texts:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let colours = c
            .execute(
                &format!("return [...document.querySelectorAll(\"tr[data-b='{id}'] td\")].map(td => getComputedStyle(td).backgroundColor)"),
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(colours, serde_json::json!(["rgb(46, 139, 71)", "rgb(192, 57, 43)"]));
        assert_eq!(
            text(&c, "span.msg").await,
            "<script>alert(1)</script> & <b>bold</b>",
            "shown as text"
        );
        assert!(c.get_alert_text().await.is_err(), "no script ran");
        assert!(
            c.find(Locator::Css("span.msg b")).await.is_err(),
            "no markup made"
        );
        assert!(text(&c, "th.builder").await.contains("1 capable"));
        // A rebuild of one builder of the same change stacks in its row:
        // one row, the newest build's docs cell, linux still from the first.
        let again = off(|| server.start_build("app", &["--builder", "docs"]));
        off(|| server.wait_build(again, Duration::from_secs(30)));
        let start = Instant::now();
        loop {
            let seen = c
                .execute(
                    "return [document.querySelectorAll('table.grid tbody tr').length, document.querySelector('table.grid tbody tr').dataset.b, [...document.querySelectorAll('table.grid tbody tr td')].map(td => td.dataset.b || ''), (document.querySelector('span.earlier') || {}).textContent || '']",
                    vec![],
                )
                .await
                .unwrap();
            let want = serde_json::json!([1, again.to_string(), [id.to_string(), ""], format!(" · earlier: #{id}")]);
            if seen == want {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(15), "grid: {seen} (want {want})");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Hovering a cell names the worker that ran its job and the time.
        c.execute(
            "document.querySelector('table.grid tbody td').dispatchEvent(new MouseEvent('mouseover', {bubbles: true}))",
            vec![],
        )
        .await
        .unwrap();
        let start = Instant::now();
        loop {
            let title = c
                .execute("return document.querySelector('table.grid tbody td').title", vec![])
                .await
                .unwrap();
            let t = title.as_str().unwrap_or("").to_string();
            if !t.is_empty() {
                assert!(t.contains(&format!("build #{id}")) && t.contains("linux/main: success on grid-worker in "), "{t}");
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no title on hover");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        screenshot(&c, "grid").await;
        // The column's workers: who can run the builder, and why others cannot.
        c.goto(&format!("{}/builders/app/linux", server.url)).await.unwrap();
        wait_for(&c, "h1", Duration::from_secs(5)).await;
        let page = c.source().await.unwrap();
        assert!(page.contains("grid-worker") && page.contains("Workers that can run it"), "{page}");
        c.goto(&format!("{}/builds/{id}", server.url))
            .await
            .unwrap();
        wait_for(&c, ".timeline svg rect", Duration::from_secs(5)).await;
        assert!(c.get_alert_text().await.is_err());
        screenshot(&c, "build").await;
        c.goto(&format!("{}/workers/grid-worker", server.url))
            .await
            .unwrap();
        wait_for(&c, "table.probes", Duration::from_secs(5)).await;
        let page = c.source().await.unwrap();
        assert!(page.contains("Recent jobs") && page.contains("linux/main"), "{page}");
        screenshot(&c, "worker").await;
        c.close().await.unwrap();
    });
}

#[test]
fn the_log_view_follows_a_running_step() {
    let pipeline = "builders:\n  slow:\n    steps:\n      - run: for i in $(seq 1 40); do printf '\\033[32mline\\033[0m %s\\n' $i; sleep 0.1; done\n";
    let server = Server::start_with_pipelines(&[("p", pipeline)], &[]);
    let _w = server.worker("log-worker", 1, &[]);
    server.wait_online("log-worker");
    let id = server.start_build("p", &[]);
    let attempt = wait_until(Duration::from_secs(20), "the step to run", || {
        let b = server.build(id);
        let a = &b["jobs"][0]["attempts"][0];
        (a["steps"][0]["state"] == "running" && a["steps"][0]["log_size"].as_u64() > Some(0))
            .then(|| a["id"].as_i64().unwrap())
    });
    let driver = chromedriver();
    runtime().block_on(async {
        let c = browser(&driver).await;
        c.goto(&format!("{}/attempts/{attempt}/steps/0", server.url))
            .await
            .unwrap();
        wait_for(&c, "#following", Duration::from_secs(5)).await;
        // Lines written after the page loaded arrive, coloured, with anchors.
        wait_for(&c, "#L40", Duration::from_secs(20)).await;
        assert!(text(&c, "#L40").await.contains("line 40"));
        assert_eq!(text(&c, "#L40 span.c2").await, "line");
        let start = Instant::now();
        while !text(&c, "#following").await.contains("ended") {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the follower notices the end"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        screenshot(&c, "log").await;
        c.close().await.unwrap();
    });
}

#[test]
fn actions_need_sign_in_and_cancel_works() {
    let pipeline = "builders:\n  long:\n    steps:\n      - run: sleep 60\n";
    let server = Server::start_with_pipelines(&[("p", pipeline)], &[]);
    let _w = server.worker("cancel-worker", 1, &[]);
    server.wait_online("cancel-worker");
    let id = server.start_build("p", &[]);
    wait_until(Duration::from_secs(20), "the step to run", || {
        (server.build(id)["jobs"][0]["attempts"][0]["steps"][0]["state"] == "running").then_some(())
    });
    // A form post without a session changes nothing.
    let rt = runtime();
    let status = rt.block_on(async {
        http()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
            .post(format!("{}/builds/{id}/cancel", server.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("csrf=guess")
            .send()
            .await
            .unwrap()
            .status()
    });
    assert!(status.is_redirection(), "{status}");
    assert_eq!(server.build(id)["state"], "running");
    let driver = chromedriver();
    rt.block_on(async {
        let c = browser(&driver).await;
        c.goto(&format!("{}/builds/{id}", server.url))
            .await
            .unwrap();
        // Not signed in: no action buttons, a way to sign in instead.
        assert!(
            c.find(Locator::Css("#cancel")).await.is_err(),
            "no cancel button for a visitor"
        );
        click(&c, "#sign-in-to-act").await;
        wait_for(&c, "#sign-in", Duration::from_secs(5)).await;
        assert_eq!(off(|| server.build(id))["state"], "running");
        c.find(Locator::Css("#token"))
            .await
            .unwrap()
            .send_keys("herd_admin_0_wrong")
            .await
            .unwrap();
        c.find(Locator::Css("#sign-in"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_for(&c, "p.error", Duration::from_secs(5)).await;
        assert!(text(&c, "p.error").await.contains("not the admin token"));
        screenshot(&c, "sign-in").await;
        c.find(Locator::Css("#token"))
            .await
            .unwrap()
            .send_keys(&server.token)
            .await
            .unwrap();
        c.find(Locator::Css("#sign-in"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        // Back on the build page, signed in: cancel works.
        click(&c, "#cancel").await;
        let b = off(|| server.wait_build(id, Duration::from_secs(20)));
        assert_eq!(b["state"], "cancelled", "{b:#}");
        wait_for(&c, "h1 .st-cancelled", Duration::from_secs(10)).await;
        // Add a worker: a one-line install command with a fresh token.
        c.goto(&format!("{}/workers/add", server.url))
            .await
            .unwrap();
        click(&c, "#make-token").await;
        let line = wait_for(&c, "#oneliner", Duration::from_secs(5)).await;
        let text = line.text().await.unwrap();
        assert!(
            text.starts_with(&format!(
                "curl -fsSL '{}/install.sh?token=herd_enroll_",
                server.url
            )),
            "{text}"
        );
        // And the same line for root where there is no sudo.
        let root = text.strip_suffix(" | sudo sh").unwrap();
        let root_line = crate::text(&c, "#oneliner-root").await;
        assert_eq!(root_line, format!("{root} | sh"));
        screenshot(&c, "add-worker").await;
        c.close().await.unwrap();
    });
}

#[test]
fn a_pushed_commit_appears_on_the_grid_by_itself_and_on_its_project_page() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(
        root.path(),
        "app",
        &[(
            "herd.yml",
            b"builders:\n  linux:\n    steps:\n      - run: echo built\n",
        )],
    );
    let server = Server::start_with_config(
        &format!(
            "projects:\n  app:\n    repo: {}\n    poll: 300ms\n",
            repo.display()
        ),
        &[],
    );
    let _w = server.worker("poll-worker", 1, &[]);
    // The first poll takes the branch as it is.
    wait_until(Duration::from_secs(30), "the first poll", || {
        server.get("/api/v1/projects/app").ok()?["polling"]["last_success_at"].as_i64()
    });
    let driver = chromedriver();
    runtime().block_on(async {
        let c = browser(&driver).await;
        c.goto(&format!("{}/", server.url)).await.unwrap();
        wait_for(&c, "p.empty", Duration::from_secs(10)).await;
        let sha = off(|| commit(&repo, &[("src/main.c", b"int main;")], "Teach it to count"));
        // Nobody starts it: the poll finds the commit, the grid shows it.
        let origin = wait_for(&c, "tr[data-b] span.origin", Duration::from_secs(20)).await;
        assert_eq!(origin.text().await.unwrap(), "main");
        assert_eq!(text(&c, "tr[data-b] span.msg").await, "Teach it to count");
        c.goto(&format!("{}/projects/app", server.url))
            .await
            .unwrap();
        wait_for(&c, "td.rev", Duration::from_secs(5)).await;
        assert_eq!(text(&c, "td.rev").await, sha[..10]);
        let link = wait_for(&c, "a[href^='/builds/']", Duration::from_secs(5)).await;
        assert_eq!(link.text().await.unwrap(), "#1");
        screenshot(&c, "project").await;
        c.close().await.unwrap();
    });
}

#[test]
fn a_build_with_params_is_started_from_the_project_page_and_shows_its_matrix_and_needs() {
    let pipeline = "params:\n  python: {default: \"3.12\", choices: [\"3.12\", \"3.13\"]}\nbuilders:\n  test:\n    matrix: {reactor: [default, poll]}\n    steps:\n      - run: echo $HERD_PARAM_PYTHON ${{ matrix.reactor }} | tee out-${{ matrix.reactor }}.txt\n    artifacts: [out-*.txt]\n  publish:\n    needs: [{job: test, artifacts: true}]\n    steps:\n      - run: cat out-*.txt\n";
    let server = Server::start_with_pipelines(&[("p", pipeline)], &[]);
    let _w = server.worker("form-worker", 2, &[]);
    let driver = chromedriver();
    runtime().block_on(async {
        let c = browser(&driver).await;
        c.goto(&format!("{}/login?next=/projects/p", server.url))
            .await
            .unwrap();
        c.find(Locator::Css("#token"))
            .await
            .unwrap()
            .send_keys(&server.token)
            .await
            .unwrap();
        click(&c, "#sign-in").await;
        let select = wait_for(&c, "#param-python", Duration::from_secs(5)).await;
        select.select_by_value("3.13").await.unwrap();
        click(&c, "#start-build").await;
        // The build page: its parameters, each matrix cell, the needs.
        wait_for(&c, "h1 .st-success", Duration::from_secs(30)).await;
        assert_eq!(text(&c, "p.params").await, "Parameters: python=3.13");
        let page = c.source().await.unwrap();
        assert!(
            page.contains("default") && page.contains("poll"),
            "the cells"
        );
        assert_eq!(text(&c, "p.needs").await, "Needs test/default, test/poll");
        // The timeline draws publish's wait for both cells.
        let arrows = c
            .find_all(Locator::Css(".timeline path.need"))
            .await
            .unwrap();
        assert_eq!(arrows.len(), 2, "one arrow per need");
        // The files the cells kept, with sizes and links.
        let table = text(&c, "table.artifacts").await;
        assert!(
            table.contains("test/poll") && table.contains("out-poll.txt") && table.contains("13 B"),
            "{table}"
        );
        let link = c
            .find(Locator::Css("table.artifacts a"))
            .await
            .unwrap()
            .attr("href")
            .await
            .unwrap()
            .unwrap();
        assert!(link.contains("/artifacts/"), "{link}");
        screenshot(&c, "build-artifacts").await;
        c.close().await.unwrap();
    });
    let id = server.get("/api/v1/builds").unwrap()["builds"][0]["id"]
        .as_i64()
        .unwrap();
    let log = String::from_utf8(server.step_log(id, "test/poll", "0")).unwrap();
    assert_eq!(log.trim(), "3.13 poll");
    // Publish got both cells' files before its step.
    let log = String::from_utf8(server.step_log(id, "publish/main", "1")).unwrap();
    assert_eq!(log, "3.13 default\n3.13 poll\n");
}

#[test]
fn the_log_page_names_its_job_and_attempt_as_the_build_page_does() {
    let pipeline = "builders:\n  first:\n    steps:\n      - run: echo one\n  second:\n    steps:\n      - name: compile\n        run: echo compiled\n      - name: test\n        run: echo tested; exit 3\n";
    let server = Server::start_with_pipelines(&[("p", pipeline)], &[]);
    let _w = server.worker("log-worker", 1, &[]);
    let id = server.start_build("p", &[]);
    let b = server.wait_build(id, Duration::from_secs(30));
    let second = server.job(&b, "second", "main");
    let attempt = second["attempts"][0]["id"].as_i64().unwrap();
    assert_ne!(attempt, 1, "the attempt's id is not its number");
    let driver = chromedriver();
    runtime().block_on(async {
        let c = browser(&driver).await;
        c.goto(&format!("{}/builds/{id}", server.url))
            .await
            .unwrap();
        let section = format!("#job-{}", second["id"].as_i64().unwrap());
        let on_build = text(&c, &format!("{section} .attempt p")).await;
        assert!(
            on_build.starts_with("Attempt 1 on log-worker"),
            "{on_build}"
        );
        // The build's total duration, a legend under the timeline, and a
        // step's log opened in place.
        assert!(text(&c, "span.duration").await.starts_with("took "));
        assert!(text(&c, "#timeline-legend").await.contains("split batch"));
        click(
            &c,
            &format!("{section} button.show-log[data-key='{attempt}-1']"),
        )
        .await;
        let inline = wait_for(&c, "tr.inline-log pre.log .ln", Duration::from_secs(5)).await;
        assert_eq!(inline.text().await.unwrap().trim(), "tested");
        click(&c, &format!("{section} table.steps a")).await;
        wait_for(&c, "#next-step", Duration::from_secs(5)).await;
        let summary = text(&c, "p.summary").await;
        assert!(summary.contains("job second/main"), "{summary}");
        assert!(summary.contains("attempt 1 on log-worker"), "{summary}");
        assert!(
            !summary.contains(&format!("attempt {attempt} ")),
            "{summary}"
        );
        click(&c, "#next-step").await;
        wait_for(&c, "#prev-step", Duration::from_secs(5)).await;
        let summary = text(&c, "p.summary").await;
        assert!(summary.contains("exit code 3"), "{summary}");
        assert_eq!(text(&c, "h1").await.split(" (").next().unwrap(), "test");
        c.close().await.unwrap();
    });
}

#[test]
fn the_capability_matrix_shows_who_can_run_what_and_why_not() {
    let root = tempfile::tempdir().unwrap();
    let pipeline = "builders:\n  modern:\n    requires: [python3 >= 3.12]\n    steps:\n      - run: python3 --version\n  any:\n    steps:\n      - run: echo hi\n";
    let server = Server::start_with_pipelines(&[("p", pipeline)], &[]);
    let old = fake_tools(&root.path().join("old"), "3.10.4", &[]);
    let new = fake_tools(&root.path().join("new"), "3.12.3", &[]);
    let _old = server.worker_with_env("py310", 1, &[], &[("PATH", old)]);
    let _new = server.worker_with_env("py312", 1, &[], &[("PATH", new)]);
    let id = server.start_build("p", &[]);
    let b = server.wait_build(id, Duration::from_secs(30));
    assert_eq!(b["state"], "success", "{b:#}");
    let driver = chromedriver();
    runtime().block_on(async {
        let c = browser(&driver).await;
        c.goto(&format!("{}/workers", server.url)).await.unwrap();
        let found = text(&c, "table.workers").await;
        assert!(
            found.contains("python3 3.12.3") && found.contains("python3 3.10.4"),
            "{found}"
        );
        click(&c, "a[href='/workers/matrix']").await;
        let table = wait_for(&c, "table.matrix", Duration::from_secs(5)).await;
        let rows = table.find_all(Locator::Css("tbody tr")).await.unwrap();
        assert_eq!(rows.len(), 2);
        let mut seen = Vec::new();
        for r in rows {
            let cells: Vec<String> = {
                let mut v = Vec::new();
                for td in r.find_all(Locator::Css("td")).await.unwrap() {
                    v.push(td.text().await.unwrap());
                }
                v
            };
            seen.push(cells);
        }
        // Columns: project, builder / job, requires, py310, py312.
        let modern = seen.iter().find(|r| r[1].starts_with("modern")).unwrap();
        assert!(
            modern[3].starts_with('✗') && modern[3].contains("3.10.4"),
            "{modern:?}"
        );
        assert!(modern[4].starts_with('✓'), "{modern:?}");
        let any = seen.iter().find(|r| r[1].starts_with("any")).unwrap();
        assert!(
            any[3].starts_with('✓') && any[4].starts_with('✓'),
            "{any:?}"
        );
        screenshot(&c, "capability-matrix").await;
        c.close().await.unwrap();
    });
}
