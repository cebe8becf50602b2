use super::*;

/// The example of the walking-skeleton issue, accepted as written.
const ISSUE_EXAMPLE: &str = r#"builders:
  osx:                          # one column of the web page
    requires: [os == macos]     # matched in the capabilities issue; parsed and kept now
    steps:                      # one job: steps run in order, on one worker, in one workspace
      - name: compile
        run: python3 setup.py build_ext -i
        timeout: 20m
      - name: test default reactor
        run: python3 -m twisted.trial twisted
        env: {PYTHONDONTWRITEBYTECODE: "1"}
      - name: cleanup
        run: git clean -fdx
        always: true            # runs even after an earlier step failed
  linux:
    jobs:                       # several independent jobs ("test batteries"): each may run on a different worker, at the same time
      default-reactor:
        steps:
          - run: python3 -m twisted.trial twisted
      poll-reactor:
        requires: [python3 >= 3.10]
        steps:
          - run: python3 -m twisted.trial --reactor=poll twisted
"#;

fn err(text: &str) -> ConfigError {
    Pipeline::parse("herd.yml", text).expect_err("should fail")
}

#[test]
fn issue_example_is_accepted() {
    let p = Pipeline::parse("herd.yml", ISSUE_EXAMPLE).unwrap();
    assert_eq!(p.builders.len(), 2);
    let osx = &p.builders[0];
    assert_eq!(osx.name, "osx");
    assert_eq!(osx.jobs.len(), 1);
    assert_eq!(osx.jobs[0].name, MAIN_JOB);
    assert_eq!(osx.jobs[0].requires[0].to_string(), "os == macos");
    let steps = &osx.jobs[0].steps;
    assert_eq!(steps[0].timeout, Some(Duration::from_secs(1200)));
    assert_eq!(steps[1].env["PYTHONDONTWRITEBYTECODE"], "1");
    assert!(steps[2].always && !steps[1].always);
    let linux = &p.builders[1];
    assert_eq!(
        linux
            .jobs
            .iter()
            .map(|j| j.name.as_str())
            .collect::<Vec<_>>(),
        ["default-reactor", "poll-reactor"]
    );
    assert_eq!(linux.jobs[1].requires[0].to_string(), "python3 >= 3.10");
    assert_eq!(
        linux.jobs[0].steps[0].name,
        "python3 -m twisted.trial twisted"
    );
}

#[test]
fn misspelt_key_names_place_and_suggests() {
    let e = err("builders:\n  a:\n    steps:\n      - run: x\n        alwys: true\n");
    assert_eq!((e.line, e.column), (5, 9));
    assert_eq!(e.message, "unknown key `alwys`");
    assert!(
        e.help.as_deref().unwrap().contains("did you mean `always`"),
        "{e}"
    );
    let e = err("builders:\n  a:\n    setps:\n      - run: x\n");
    assert_eq!((e.line, e.column), (3, 5));
    assert!(e.help.as_deref().unwrap().contains("`steps`"), "{e}");
    let shown = e.to_string();
    assert!(
        shown.starts_with("herd.yml:3:5: unknown key `setps`"),
        "{shown}"
    );
    assert!(shown.contains("    setps:"), "{shown}");
}

#[test]
fn wrong_type_names_place() {
    let e = err("builders:\n  a:\n    steps:\n      - run: [1, 2]\n");
    assert_eq!((e.line, e.column), (4, 14));
    let e = err("builders:\n  a:\n    steps:\n      - run: x\n        always: maybe\n");
    assert_eq!((e.line, e.column), (5, 17));
    assert!(e.message.contains("boolean"), "{e}");
    let e = err("builders:\n  a:\n    steps: nope\n");
    assert_eq!(e.line, 3);
}

#[test]
fn duplicates_are_errors() {
    let e = err("builders:\n  a:\n    steps: [{run: x}]\n  a:\n    steps: [{run: y}]\n");
    assert_eq!((e.line, e.column), (4, 3));
    assert_eq!(e.message, "duplicate name `a`");
    let e =
        err("builders:\n  a:\n    steps:\n      - {name: t, run: x}\n      - {name: t, run: y}\n");
    assert_eq!(e.line, 5);
    assert!(e.message.contains("duplicate step name `t`"), "{e}");
}

#[test]
fn unnamed_steps_with_the_same_command_get_distinct_names() {
    let p = Pipeline::parse(
        "f",
        "builders:\n  a:\n    steps:\n      - run: make\n      - run: make\n",
    )
    .unwrap();
    let names: Vec<_> = p.builders[0].jobs[0]
        .steps
        .iter()
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(names, ["make", "make (2)"]);
}

#[test]
fn empty_things_are_errors() {
    let e = err("builders:\n  a: {}\n");
    assert_eq!((e.line, e.column), (2, 3));
    assert!(e.message.contains("builder `a` is empty"), "{e}");
    let e = err("builders:\n  a:\n    steps: []\n");
    assert!(e.message.contains("empty list of steps"), "{e}");
    let e = err("builders:\n  a:\n    jobs: {}\n");
    assert!(e.message.contains("no jobs"), "{e}");
    let e = err("builders: {}\n");
    assert!(e.message.contains("empty"), "{e}");
    let e = err("builders:\n  a:\n    steps: [{run: x}]\nprobes:\n  wx: wx-config --version\n");
    assert_eq!(e.line, 5, "{e}");
    assert!(
        e.message
            .contains("`probes:` cannot be defined in herd.yml"),
        "{e}"
    );
    assert!(e.help.as_deref().unwrap().contains("server config"), "{e}");
    let e = err("builders:\n  a:\n    steps:\n      - run: x\n    jobs:\n      j:\n        steps: [{run: y}]\n");
    assert!(e.message.contains("both"), "{e}");
}

#[test]
fn bad_requirement_points_inside_it() {
    let e = err("builders:\n  a:\n    requires: [python3 >=]\n    steps: [{run: x}]\n");
    assert_eq!(e.line, 3);
    assert_eq!(e.column, 16 + 10);
    assert!(e.message.contains("invalid requirement"), "{e}");
}

#[test]
fn bad_timeout_and_names() {
    let e = err("builders:\n  a:\n    steps:\n      - run: x\n        timeout: 20 parsecs\n");
    assert_eq!((e.line, e.column), (5, 18));
    let e = err("builders:\n  \"a b\":\n    steps: [{run: x}]\n");
    assert!(e.message.contains("invalid builder name"), "{e}");
}

#[test]
fn env_scalars_become_text() {
    let p = Pipeline::parse(
        "f",
        "builders:\n  a:\n    steps:\n      - run: x\n        env: {A: 1, B: true, C: x}\n",
    )
    .unwrap();
    let env = &p.builders[0].jobs[0].steps[0].env;
    assert_eq!(
        (env["A"].as_str(), env["B"].as_str(), env["C"].as_str()),
        ("1", "true", "x")
    );
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    for text in [
        "",
        "[",
        "builders",
        "builders: [1, 2]",
        "\u{0}\u{1}",
        "builders:\n  a:\n    steps:\n      - run: x\n   bad indent: 1\n",
    ] {
        assert!(Pipeline::parse("f", text).is_err(), "{text:?}");
    }
}

proptest::proptest! {
    #[test]
    fn parser_never_panics(text in "\\PC{0,200}") {
        let _ = Pipeline::parse("f", &text);
    }
}

#[test]
fn max_concurrent_is_kept_and_checked() {
    let p = Pipeline::parse(
        "f",
        "builders:\n  a:\n    max_concurrent: 2\n    steps: [{run: x}]\n",
    )
    .unwrap();
    assert_eq!(p.builders[0].max_concurrent, Some(2));
    let e = err("builders:\n  a:\n    max_concurrent: 0\n    steps: [{run: x}]\n");
    assert_eq!((e.line, e.column), (3, 21));
    let e = err("builders:\n  a:\n    max_concurrent: lots\n    steps: [{run: x}]\n");
    assert_eq!(e.line, 3);
}

/// The example of the splitting issue, accepted as written.
const SPLIT_EXAMPLE: &str = r#"builders:
  linux:
    steps:
      - run: python3 setup.py build_ext -i
      - name: tests
        split:
          list: python3 -m twisted.trial -n --reporter=bwverbose twisted | sed -n 's/ \.\.\. .*//p'
          run: python3 -m twisted.trial {tests}
          workers: 4
      - name: cleanup
        run: git clean -fdx
        always: true
  pytest:
    steps:
      - name: tests
        split:
          list: python3 -m pytest --collect-only -q | grep '::'
          run: python3 -m pytest --junitxml={junit} @$HERD_TESTS_FILE
          junit: reports/junit.xml    # optional: where run writes a JUnit report; gives per-test results and timings
          workers: 8
"#;

#[test]
fn split_example_is_accepted() {
    let p = Pipeline::parse("herd.yml", SPLIT_EXAMPLE).unwrap();
    let linux = &p.builders[0].jobs[0];
    let split = linux.steps[1].split.as_ref().expect("a split step");
    assert_eq!(split.workers, 4);
    assert_eq!(split.junit, None);
    assert!(!split.flaky_fails);
    assert!(linux.steps[2].always);
    let py = p.builders[1].jobs[0].steps[0].split.as_ref().unwrap();
    assert_eq!(py.junit.as_deref(), Some("reports/junit.xml"));
    assert_eq!(py.workers, 8);
}

#[test]
fn split_mistakes_are_errors_with_places() {
    let head = "builders:\n  a:\n    steps:\n      - split:\n          list: ls\n";
    let e = err(&format!(
        "{head}          run: t {{tests}}\n      - run: make docs\n"
    ));
    assert_eq!(e.line, 7);
    assert!(e.message.contains("is not `always: true`"), "{e}");
    assert!(e.help.as_deref().unwrap().contains("another job"), "{e}");
    let e = err(&format!("{head}          run: t\n"));
    assert_eq!(e.line, 6);
    assert!(e.message.contains("names no tests"), "{e}");
    let e = err(&format!(
        "{head}          run: t {{tests}}\n          workers: 0\n"
    ));
    assert_eq!((e.line, e.column), (7, 20));
    let e = err(&format!(
        "{head}          run: t {{tests}}\n          flaky: maybe\n"
    ));
    assert!(e.message.contains("flaky: maybe"), "{e}");
    let e = err(&format!("{head}          run: t {{tests}} {{junit}}\n"));
    assert!(e.message.contains("no `junit:`"), "{e}");
    let e = err(&format!(
        "{head}          run: t {{tests}}\n          junit: ../x.xml\n"
    ));
    assert!(e.message.contains("invalid `junit:`"), "{e}");
    let e = err(&format!(
        "{head}          run: t {{tests}}\n        run: y\n"
    ));
    assert!(e.message.contains("both `run:` and `split:`"), "{e}");
    let e = err("builders:\n  a:\n    steps:\n      - name: x\n");
    assert!(e.message.contains("neither `run:` nor `split:`"), "{e}");
    let e = err(&format!(
        "{head}          run: t {{tests}}\n          wrokers: 2\n"
    ));
    assert!(e.help.as_deref().unwrap().contains("`workers`"), "{e}");
}

#[test]
fn branch_and_path_filters_are_kept_and_checked() {
    let p = Pipeline::parse(
        "f",
        "builders:\n  docs:\n    branches: [main, 'release/*']\n    paths: ['docs/**', '!docs/draft/**']\n    steps: [{run: x}]\n",
    )
    .unwrap();
    assert_eq!(p.builders[0].branches, vec!["main", "release/*"]);
    assert_eq!(p.builders[0].paths, vec!["docs/**", "!docs/draft/**"]);
    let e = err("builders:\n  a:\n    paths: ['src/[']\n    steps: [{run: x}]\n");
    assert_eq!((e.line, e.column), (3, 13));
    assert!(e.message.contains("src/["), "{}", e.message);
}

#[test]
fn step_names_that_a_terminal_would_act_on_are_refused() {
    // The attack of issue 17: a title change, a screen clear, a bell.
    let e = err(
        "builders:\n  a:\n    steps:\n      - name: \"ok\\e]0;owned\\a\\e[2J\"\n        run: x\n",
    );
    assert_eq!((e.line, e.column), (4, 15), "{e}");
    assert!(e.message.contains("control character \\u{1b}"), "{e}");
    let e = err("builders:\n  a:\n    steps:\n      - name: \"abc\\u202Eevil\"\n        run: x\n");
    assert!(e.message.contains("\\u{202e}"), "{e}");
    let long = "n".repeat(MAX_STEP_NAME + 1);
    let e = err(&format!(
        "builders:\n  a:\n    steps:\n      - name: {long}\n        run: x\n"
    ));
    assert!(e.message.contains("at most 200"), "{e}");
}

#[test]
fn a_name_taken_from_a_command_has_its_control_characters_made_spaces() {
    let p = Pipeline::parse(
        "f",
        "builders:\n  a:\n    steps:\n      - run: \"printf '\\e[2J'\\tdone\\u0085\"\n",
    )
    .unwrap();
    let name = &p.builders[0].jobs[0].steps[0].name;
    assert_eq!(name, "printf ' [2J' done");
    assert!(!name.chars().any(is_hidden_char));
}

const MATRIX: &str = r#"builders:
  linux:
    requires: [os == linux, "python3 == ${{ matrix.python }}"]
    matrix:
      python: [3.10, "3.12", 3.13]
      reactor: [default, poll, asyncio]
      exclude:
        - {python: 3.10, reactor: asyncio}
      include:
        - {python: "3.14", reactor: default}
    name: py${{ matrix.python }}-${{ matrix.reactor }}
    steps:
      - name: trial (${{ matrix.reactor }})
        run: python3 -m twisted.trial --reactor=${{ matrix.reactor }} twisted
        env: {REACTOR: "${{ matrix.reactor }}", TOKEN: "${{ secrets.pypi }}"}
  docs:
    jobs:
      build:
        matrix:
          format: [html, pdf]
        steps:
          - run: make ${{ matrix.format }}
"#;

#[test]
fn a_matrix_makes_a_job_per_cell_with_its_values_put_in() {
    let p = Pipeline::parse("herd.yml", MATRIX).unwrap();
    let linux = &p.builders[0];
    let names: Vec<&str> = linux.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "py3.10-default",
            "py3.10-poll",
            "py3.12-default",
            "py3.12-poll",
            "py3.12-asyncio",
            "py3.13-default",
            "py3.13-poll",
            "py3.13-asyncio",
            "py3.14-default"
        ]
    );
    // The builder's own requirements are those every cell shares.
    assert_eq!(linux.requires.len(), 1);
    let poll = &linux.jobs[3];
    let reqs: Vec<String> = poll.requires.iter().map(|r| r.to_string()).collect();
    assert_eq!(reqs, ["os == linux", "python3 == 3.12"]);
    let step = &poll.steps[0];
    assert_eq!(step.name, "trial (poll)");
    assert_eq!(step.run, "python3 -m twisted.trial --reactor=poll twisted");
    assert_eq!(step.env["REACTOR"], "poll");
    assert_eq!(
        step.env["TOKEN"], "${{ secrets.pypi }}",
        "secrets stay references"
    );
    let docs: Vec<&str> = p.builders[1].jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(docs, ["build-html", "build-pdf"]);
    assert_eq!(p.builders[1].jobs[1].steps[0].run, "make pdf");
    assert!(p.impossible_jobs().is_empty());
}

#[test]
fn matrix_mistakes_are_named_where_they_are() {
    let e = err("builders:\n  a:\n    matrix: {py: [\"3.12\"]}\n    steps:\n      - run: echo ${{ matrix.python }}\n");
    assert_eq!(e.line, 5, "{e}");
    assert!(e.message.contains("names no axis"), "{e}");
    let e = err("builders:\n  a:\n    steps:\n      - run: echo ${{ matrix.python }}\n");
    assert!(e.message.contains("no `matrix:`"), "{e}");
    let e = err("builders:\n  a:\n    name: x\n    steps: [{run: x}]\n");
    assert!(e.message.contains("no `matrix:` here"), "{e}");
    let e = err("builders:\n  a:\n    matrix:\n      py: [\"3.12\", \"3.13\"]\n    name: same\n    steps: [{run: x}]\n");
    assert!(e.message.contains("two jobs named `same`"), "{e}");
    let e = err("builders:\n  a:\n    matrix:\n      py: []\n    steps: [{run: x}]\n");
    assert_eq!(e.line, 4, "{e}");
    assert!(e.message.contains("no values"), "{e}");
    let e = err("builders:\n  a:\n    matrix: [1, 2]\n    steps: [{run: x}]\n");
    assert_eq!(e.line, 3, "{e}");
}

#[test]
fn a_cell_whose_requirements_contradict_is_found() {
    let p = Pipeline::parse(
        "herd.yml",
        "builders:\n  new:\n    requires: [python3 >= 3.12, \"python3 == ${{ matrix.py }}\"]\n    matrix: {py: [\"3.10\", \"3.12\"]}\n    steps: [{run: x}]\n",
    )
    .unwrap();
    let impossible = p.impossible_jobs();
    assert_eq!(impossible.len(), 1, "{impossible:?}");
    assert_eq!(impossible[0].0, "new/3.10");
    assert!(
        impossible[0].1.contains("python3 >= 3.12"),
        "{impossible:?}"
    );
}

#[test]
fn concurrency_defaults_to_the_branch_and_names_a_bad_word() {
    let p = Pipeline::parse(
        "herd.yml",
        "concurrency: {}\nbuilders:\n  a:\n    steps: [{run: x}]\n",
    )
    .unwrap();
    let c = p.concurrency.unwrap();
    assert_eq!(
        (c.group.as_str(), c.cancel_superseded),
        ("${{ branch }}", true)
    );
    assert!(
        Pipeline::parse("herd.yml", "builders:\n  a:\n    steps: [{run: x}]\n")
            .unwrap()
            .concurrency
            .is_none()
    );
    let e = err("concurrency:\n  group: ${{ sha }}\nbuilders:\n  a:\n    steps: [{run: x}]\n");
    assert_eq!(e.line, 2, "{e}");
    assert!(e.message.contains("`sha`"), "{e}");
}

const DAG: &str = r#"builders:
  wheels:
    matrix: {os: [linux, mac, windows]}
    steps: [{run: make wheel}]
  docs:
    jobs:
      html: {steps: [{run: make html}]}
      check:
        needs: [html]
        steps: [{run: linkcheck}]
  publish:
    needs: [wheels, docs/html]
    steps: [{run: upload}]
  notify:
    needs: [publish]
    if: always
    steps: [{run: mail}]
"#;

#[test]
fn needs_resolve_to_jobs_and_if_is_kept() {
    let p = Pipeline::parse("herd.yml", DAG).unwrap();
    let job = |b: &str| p.builder(b).unwrap();
    assert_eq!(
        job("publish").jobs[0].needs,
        ["wheels/linux", "wheels/mac", "wheels/windows", "docs/html"]
    );
    assert_eq!(job("docs").jobs[1].needs, ["docs/html"]);
    assert_eq!(job("notify").jobs[0].run_if, RunIf::Always);
    assert_eq!(job("wheels").jobs[0].family, MAIN_JOB);
}

#[test]
fn bad_needs_are_named_where_they_are() {
    let e = err("builders:\n  a:\n    needs: [nope]\n    steps: [{run: x}]\n");
    assert_eq!(e.line, 3, "{e}");
    assert!(e.message.contains("no builder `nope`"), "{e}");
    let e = err(
        "builders:\n  a:\n    steps: [{run: x}]\n  b:\n    needs: [a/zz]\n    steps: [{run: x}]\n",
    );
    assert!(e.message.contains("has no job `zz`"), "{e}");
    let e = err("builders:\n  a:\n    needs: [a]\n    steps: [{run: x}]\n");
    assert!(e.message.contains("needs itself"), "{e}");
    let e = err("builders:\n  a:\n    needs: [b]\n    steps: [{run: x}]\n  b:\n    needs: [c]\n    steps: [{run: x}]\n  c:\n    needs: [a]\n    steps: [{run: x}]\n");
    assert!(
        e.message
            .contains("cycle: a/main → b/main → c/main → a/main"),
        "{e}"
    );
    assert_eq!(e.line, 3, "{e}");
    let e = err("builders:\n  a:\n    if: sometimes\n    steps: [{run: x}]\n");
    assert!(e.message.contains("`if: sometimes`"), "{e}");
}

#[test]
fn params_are_declared_with_defaults_and_choices() {
    let p = Pipeline::parse(
        "herd.yml",
        "params:\n  python: {choices: [3.12, 3.13]}\n  deploy: {default: no}\nbuilders:\n  a:\n    steps: [{run: x}]\n",
    )
    .unwrap();
    assert_eq!(p.params[0].default, "3.12", "the first choice");
    assert_eq!(p.params[1].default, "no");
    let e = err(
        "params:\n  py: {default: 2.7, choices: [3.12]}\nbuilders:\n  a:\n    steps: [{run: x}]\n",
    );
    assert_eq!(e.line, 2, "{e}");
    assert!(e.message.contains("not one of its choices"), "{e}");
    let e = err("params:\n  \"bad name\": {}\nbuilders:\n  a:\n    steps: [{run: x}]\n");
    assert!(e.message.contains("invalid parameter name"), "{e}");
}

#[test]
fn a_results_pattern_is_checked_where_it_is_written() {
    let split = |results: &str| {
        format!("builders:\n  a:\n    steps:\n      - split:\n          list: ls\n          run: r {{tests}}\n          {results}\n")
    };
    let p = Pipeline::parse(
        "herd.yml",
        &split("results: {pattern: '(?P<id>\\S+) (?P<outcome>ok|FAIL)'}"),
    )
    .unwrap();
    assert!(p.builders[0].jobs[0].steps[0]
        .split
        .as_ref()
        .unwrap()
        .pattern
        .is_some());
    let e = err(&split("results: {pattern: '(?P<id>\\S+)'}"));
    assert_eq!(e.line, 7, "{e}");
    assert!(e.message.contains("`outcome`"), "{e}");
    let e = err(&split("results: {pattern: '('}"));
    assert!(e.message.contains("invalid pattern"), "{e}");
}

const ARTIFACTS: &str = r#"builders:
  wheels:
    matrix:
      os: [linux, macos]
    requires: ['os == ${{ matrix.os }}']
    steps:
      - run: make wheel
        artifacts: ['dist/${{ matrix.os }}/*.whl']
      - run: make report
    artifacts:
      paths: [reports/**, '!reports/tmp/**']
      when: always
  publish:
    needs:
      - {job: wheels, artifacts: true}
      - docs
    steps:
      - run: twine upload dist/*/*.whl
  docs:
    steps:
      - run: make docs
"#;

#[test]
fn artifacts_of_steps_and_jobs_merge_and_needs_may_bring_them() {
    let p = Pipeline::parse("herd.yml", ARTIFACTS).unwrap();
    let wheels = p.builder("wheels").unwrap();
    let linux = wheels.jobs.iter().find(|j| j.name == "linux").unwrap();
    let a = linux.artifacts.as_ref().unwrap();
    assert_eq!(
        a.paths,
        ["dist/linux/*.whl", "reports/**", "!reports/tmp/**"]
    );
    assert!(a.always, "one `when: always` uploads whatever the result");
    let publish = &p.builder("publish").unwrap().jobs[0];
    assert_eq!(publish.needs, ["wheels/linux", "wheels/macos", "docs/main"]);
    assert_eq!(publish.artifacts_from, ["wheels/linux", "wheels/macos"]);
    assert!(publish.artifacts.is_none());
}

#[test]
fn bad_artifacts_are_refused_where_they_are_written() {
    let e = err("builders:\n  a:\n    steps:\n      - run: x\n    artifacts: [../secret]\n");
    assert!(e.to_string().contains("outside the workspace"), "{e}");
    assert_eq!(e.line, 5);
    let e = err(
        "builders:\n  a:\n    steps:\n      - run: x\n    artifacts: {paths: [a], when: later}\n",
    );
    assert!(e.to_string().contains("when: later"), "{e}");
    let e = err("builders:\n  a:\n    steps:\n      - run: x\n        artifacts: []\n");
    assert!(e.to_string().contains("lists no paths"), "{e}");
    let e = err("builders:\n  a:\n    steps:\n      - run: x\n    artifacts: ['dist/[']\n");
    assert!(e.to_string().contains("invalid pattern"), "{e}");
    let e = err("builders:\n  a:\n    steps:\n      - run: x\n  b:\n    needs: [{job: a, artifact: true}]\n    steps:\n      - run: y\n");
    assert_eq!(e.line, 6, "{e}");
    assert!(e.to_string().contains("artifacts: true"), "{e}");
    let e = err("builders:\n  a:\n    steps:\n      - run: x\n    artifacts: {path: [a]}\n");
    assert!(e.to_string().contains("when: always"), "{e}");
}

#[test]
fn a_run_step_names_one_report_or_one_pattern() {
    let p = Pipeline::parse(
        "herd.yml",
        "builders:\n  a:\n    steps:\n      - run: make test\n        results: {subunit: out/r.subunit}\n",
    )
    .unwrap();
    let r = p.builders[0].jobs[0].steps[0].results.clone().unwrap();
    assert_eq!(r.format, herd_proto::ReportFormat::Subunit);
    assert_eq!(r.path.as_deref(), Some("out/r.subunit"));
    let e =
        err("builders:\n  a:\n    steps:\n      - run: x\n        results: {tap: a, junit: b}\n");
    assert!(e.to_string().contains("one report or one pattern"), "{e}");
    let e = err("builders:\n  a:\n    steps:\n      - run: x\n        results: {}\n");
    assert!(e.to_string().contains("names no report"), "{e}");
    let e =
        err("builders:\n  a:\n    steps:\n      - run: x\n        results: {junit: ../x.xml}\n");
    assert!(e.to_string().contains("invalid `junit:` path"), "{e}");
    let e = err(
        "builders:\n  a:\n    steps:\n      - run: x\n        results: {pattern: '(?P<id>x)'}\n",
    );
    assert!(e.to_string().contains("outcome"), "{e}");
    let e = err("builders:\n  a:\n    steps:\n      - split: {list: ls, run: 'r {tests}'}\n        results: {tap: a}\n");
    assert!(e.to_string().contains("under `split:`"), "{e}");
}
