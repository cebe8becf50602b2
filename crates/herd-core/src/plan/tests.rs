use super::*;
use proptest::prelude::*;

fn pipeline(text: &str) -> Pipeline {
    Pipeline::parse("herd.yml", text).expect("a valid pipeline")
}

fn request<'a>(p: &'a Pipeline, secrets: &'a BTreeMap<String, SecretRule>) -> PlanRequest<'a> {
    PlanRequest {
        project: "proj",
        pipeline: p,
        checkout: Some(Checkout {
            served: false,
            repo: "/srv/repo.git",
            revision: "abc123",
        }),
        builder: None,
        only: None,
        params: None,
        change: None,
        patched: false,
        ref_name: Some("main"),
        tag: None,
        pull_request: None,
        secrets,
        limits: PlanLimits::default(),
    }
}

fn jobs(plan: Result<Plan, PlanError>) -> Vec<PlannedJob> {
    match plan.expect("a plan") {
        Plan::Jobs(j) => j,
        Plan::NothingToBuild(why) => panic!("nothing to build: {why}"),
    }
}

const TWO_BUILDERS: &str = r#"builders:
  docs:
    branches: [main]
    paths: ['docs/**']
    requires: [sphinx]
    max_concurrent: 1
    steps:
      - run: make docs
  linux:
    jobs:
      unit:
        requires: [python3 >= 3.10]
        steps:
          - run: make unit
      suite:
        steps:
          - run: make
          - name: tests
            split: {list: ls tests, run: 'run {tests}', workers: 3}
          - run: rm -rf out
            always: true
"#;

#[test]
fn every_job_gets_a_checkout_and_a_split_becomes_shards() {
    let p = pipeline(TWO_BUILDERS);
    let rules = BTreeMap::new();
    let jobs = jobs(plan(&request(&p, &rules)));
    let names: Vec<String> = jobs
        .iter()
        .map(|j| format!("{}/{}", j.builder, j.name))
        .collect();
    assert_eq!(
        names,
        [
            "docs/main",
            "linux/unit",
            "linux/suite#1",
            "linux/suite#2",
            "linux/suite#3"
        ]
    );
    for j in &jobs {
        assert!(
            matches!(&j.spec.steps[0].action, StepAction::Checkout { revision, patch: None, .. } if revision == "abc123"),
            "{j:?}"
        );
    }
    assert_eq!(jobs[0].spec.cap, Some(1));
    assert_eq!(jobs[0].spec.requires[0].to_string(), "sphinx");
    assert_eq!(jobs[1].spec.requires[0].to_string(), "python3 >= 3.10");
    let shard = jobs[3].spec.shard.as_ref().expect("a shard");
    assert_eq!((shard.index, shard.of), (2, 3));
    assert_eq!(shard.job, "suite");
    // checkout, make, tests: the split step is the third.
    assert_eq!(shard.step, 2);
    assert_eq!(shard.step_name, "tests");
    assert_eq!(
        shard.spread_key(7, "linux"),
        jobs[2].spec.shard.as_ref().unwrap().spread_key(7, "linux")
    );
}

#[test]
fn without_a_repository_there_is_no_checkout() {
    let p = pipeline("builders:\n  a:\n    steps: [{run: x}]\n");
    let rules = BTreeMap::new();
    let mut req = request(&p, &rules);
    req.checkout = None;
    let jobs = jobs(plan(&req));
    assert_eq!(jobs[0].spec.steps.len(), 1);
    assert_eq!(jobs[0].spec.steps[0].name, "x");
}

#[test]
fn a_served_checkout_names_the_servers_path_and_no_credentials() {
    let p = pipeline("builders:\n  a:\n    steps: [{run: x}]\n");
    let rules = BTreeMap::new();
    let mut req = request(&p, &rules);
    req.checkout = Some(Checkout {
        repo: "https://u:s3cret@forge.example/x.git",
        revision: "abc123",
        served: true,
    });
    let served_jobs = jobs(plan(&req));
    let StepAction::Checkout { repo, served, .. } = &served_jobs[0].spec.steps[0].action else {
        panic!("{:?}", served_jobs[0].spec.steps[0]);
    };
    assert_eq!(served.as_deref(), Some("/git/proj/abc123"));
    assert!(!repo.contains("s3cret"), "{repo}");
    // Direct: the workers need the URL as configured.
    req.checkout = Some(Checkout {
        repo: "/srv/repo.git",
        revision: "abc123",
        served: false,
    });
    let jobs = jobs(plan(&req));
    let StepAction::Checkout { repo, served, .. } = &jobs[0].spec.steps[0].action else {
        panic!("{:?}", jobs[0].spec.steps[0]);
    };
    assert_eq!((repo.as_str(), served), ("/srv/repo.git", &None::<String>));
}

#[test]
fn a_retry_plans_only_the_jobs_it_names_and_a_shard_brings_its_whole_split() {
    let p = pipeline(
        "builders:\n  a:\n    jobs:\n      x: {steps: [{run: x}]}\n      y: {steps: [{run: y}]}\n  b:\n    steps:\n      - split: {list: ls, run: 'r {tests}', workers: 3}\n  c:\n    steps: [{run: c}]\n",
    );
    let rules = BTreeMap::new();
    let mut req = request(&p, &rules);
    let only = vec![
        ("a".to_string(), "y".to_string()),
        (
            "b".to_string(),
            shard_job_name(crate::pipeline::MAIN_JOB, 2),
        ),
    ];
    req.only = Some(&only);
    let names: Vec<String> = jobs(plan(&req))
        .iter()
        .map(|j| format!("{}/{}", j.builder, j.name))
        .collect();
    let shards: Vec<String> = (1..=3)
        .map(|i| format!("b/{}", shard_job_name(crate::pipeline::MAIN_JOB, i)))
        .collect();
    let mut expected = vec!["a/y".to_string()];
    expected.extend(shards);
    assert_eq!(names, expected);
    let gone = vec![("zz".to_string(), "main".to_string())];
    req.only = Some(&gone);
    assert!(matches!(plan(&req), Ok(Plan::NothingToBuild(_))));
}

#[test]
fn needs_name_the_builds_jobs_and_a_retry_brings_what_depends_on_it() {
    let p = pipeline(
        "builders:\n  t:\n    steps:\n      - split: {list: ls, run: 'r {tests}', workers: 2}\n  pub:\n    needs: [t]\n    steps: [{run: up}]\n  mail:\n    needs: [pub]\n    if: always\n    steps: [{run: m}]\n  other:\n    steps: [{run: o}]\n",
    );
    let rules = BTreeMap::new();
    let mut req = request(&p, &rules);
    let planned = jobs(plan(&req));
    let publish = planned.iter().find(|j| j.builder == "pub").unwrap();
    assert_eq!(
        publish.spec.needs,
        ["t/main#1", "t/main#2"],
        "a split's shards each"
    );
    let mail = planned.iter().find(|j| j.builder == "mail").unwrap();
    assert_eq!(mail.spec.run_if, crate::needs::RunIf::Always);
    // Retrying the failed shard runs the split again and what depends on it.
    let only = vec![("t".to_string(), "main#2".to_string())];
    req.only = Some(&only);
    let names: Vec<String> = jobs(plan(&req))
        .iter()
        .map(|j| format!("{}/{}", j.builder, j.name))
        .collect();
    assert_eq!(names, ["t/main#1", "t/main#2", "pub/main", "mail/main"]);
    // A retry of `pub` alone: its need is not in the build, so not waited for.
    let only = vec![("pub".to_string(), "main".to_string())];
    req.only = Some(&only);
    let planned = jobs(plan(&req));
    assert_eq!(planned[0].spec.needs, Vec::<String>::new());
    assert_eq!(planned[1].spec.needs, ["pub/main"]);
}

#[test]
fn a_named_builder_alone_and_an_unknown_one_is_refused() {
    let p = pipeline(TWO_BUILDERS);
    let rules = BTreeMap::new();
    let mut req = request(&p, &rules);
    req.builder = Some("docs");
    assert_eq!(jobs(plan(&req)).len(), 1);
    req.builder = Some("nope");
    let e = plan(&req).expect_err("refused");
    assert!(e.is_refusal());
    assert_eq!(
        e.to_string(),
        "no builder `nope` in the herd.yml of project `proj`; builders: docs, linux"
    );
}

#[test]
fn a_change_takes_only_the_builders_its_filters_let_in() {
    let p = pipeline(TWO_BUILDERS);
    let rules = BTreeMap::new();
    let mut req = request(&p, &rules);
    let change = ChangeFacts {
        branch: Some("main".into()),
        files: Some(vec!["src/lib.rs".into()]),
        tag: None,
    };
    req.change = Some(&change);
    let names: Vec<String> = jobs(plan(&req)).into_iter().map(|j| j.builder).collect();
    assert!(names.iter().all(|b| b == "linux"), "{names:?}");

    let only_docs = pipeline("builders:\n  docs:\n    paths: ['docs/**']\n    steps: [{run: x}]\n");
    req.pipeline = &only_docs;
    match plan(&req).expect("a plan") {
        Plan::NothingToBuild(why) => {
            assert!(why.contains("docs: none of the 1 changed file(s)"), "{why}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_try_build_marks_its_jobs_patched() {
    let p = pipeline("builders:\n  a:\n    steps: [{run: x}]\n");
    let rules = BTreeMap::new();
    let mut req = request(&p, &rules);
    req.patched = true;
    assert!(jobs(plan(&req))[0].spec.patched);
}

#[test]
fn secrets_are_granted_with_their_labels_as_trusted_requirements() {
    let p = pipeline(
        "builders:\n  release:\n    steps:\n      - run: upload\n        env: {KEY: '${{ secrets.key }}', B: '${{ secrets.key }} ${{ secrets.other }}'}\n",
    );
    let mut rules = BTreeMap::new();
    rules.insert(
        "key".to_string(),
        SecretRule {
            builders: vec!["proj/release".into()],
            labels: [("trusted".to_string(), "yes".to_string())].into(),
            ..SecretRule::default()
        },
    );
    let e = plan(&request(&p, &rules)).expect_err("other is unknown");
    assert!(!e.is_refusal());
    assert!(
        e.to_string()
            .contains("secret `other`, which the server does not have (it has: key)"),
        "{e}"
    );
    rules.insert("other".to_string(), SecretRule::default());
    let jobs = jobs(plan(&request(&p, &rules)));
    assert_eq!(jobs[0].spec.secrets, ["key", "other"]);
    assert!(jobs[0].spec.withheld.is_empty());
    // Only labels the server gave a worker meet these.
    assert!(jobs[0].spec.requires.is_empty());
    assert_eq!(
        jobs[0]
            .spec
            .trusted_requires
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>(),
        ["trusted == yes"]
    );
    // The env keeps the reference; values join at assignment.
    assert_eq!(jobs[0].spec.steps[1].env["KEY"], "${{ secrets.key }}");
}

#[test]
fn what_the_repository_chooses_never_meets_a_secret_alone() {
    let p = pipeline(
        "builders:\n  release:\n    steps:\n      - run: upload\n        env: {KEY: '${{ secrets.key }}'}\n",
    );
    let rule = SecretRule {
        builders: vec!["release".into()],
        projects: vec!["proj".into()],
        refs: vec!["main".into(), "v*".into()],
        ..SecretRule::default()
    };
    let rules = BTreeMap::from([("key".to_string(), rule.clone())]);
    let withheld = |req: &PlanRequest<'_>| -> Vec<String> {
        jobs(plan(req))[0]
            .spec
            .withheld
            .iter()
            .map(|w| w.reason.clone())
            .collect()
    };
    let mut req = request(&p, &rules);
    assert!(withheld(&req).is_empty(), "main of proj gets it");
    req.ref_name = Some("v1.2");
    assert!(withheld(&req).is_empty(), "a tag that matches gets it");
    // A builder named `release` on another branch does not.
    req.ref_name = Some("feature/x");
    let why = withheld(&req);
    assert!(
        why[0].contains("`feature/x` is not among its branches and tags (main, v*)"),
        "{why:?}"
    );
    assert!(jobs(plan(&req))[0].spec.secrets.is_empty());
    req.ref_name = None;
    assert!(withheld(&req)[0].contains("no branch or tag"));
    // Another project with a builder of the same name does not.
    req.ref_name = Some("main");
    req.project = "other";
    assert!(withheld(&req)[0].contains("project `other`"));
    // A try build does not, unless the rule says so.
    req.project = "proj";
    req.patched = true;
    assert!(withheld(&req)[0].contains("try builds"));
    let mut tryable = rule;
    tryable.try_builds = true;
    let rules = BTreeMap::from([("key".to_string(), tryable)]);
    let mut req = request(&p, &rules);
    req.patched = true;
    assert!(withheld(&req).is_empty());
}

#[test]
fn a_build_larger_than_the_limits_is_refused_whole() {
    let text: String = std::iter::once("builders:\n".to_string())
        .chain((0..12).map(|i| format!("  b{i}:\n    steps: [{{run: x}}]\n")))
        .collect();
    let p = pipeline(&text);
    let rules = BTreeMap::new();
    let mut req = request(&p, &rules);
    req.limits = PlanLimits {
        max_builders: 10,
        max_jobs: 100,
    };
    let e = plan(&req).expect_err("too many builders");
    assert!(!e.is_refusal());
    assert!(
        e.to_string().contains("12 builders, more than the 10"),
        "{e}"
    );
    req.limits = PlanLimits {
        max_builders: 100,
        max_jobs: 5,
    };
    assert!(plan(&req)
        .expect_err("too many jobs")
        .to_string()
        .contains("jobs"));
}

/// A pipeline made of `builders`, each a list of jobs, each job a number
/// of steps and maybe a split over some workers.
fn pipeline_text(builders: &[Vec<(usize, Option<u32>)>]) -> String {
    let mut t = String::from("builders:\n");
    for (b, jobs) in builders.iter().enumerate() {
        t.push_str(&format!("  b{b}:\n    jobs:\n"));
        for (j, (steps, split)) in jobs.iter().enumerate() {
            t.push_str(&format!("      j{j}:\n        steps:\n"));
            for s in 0..*steps {
                t.push_str(&format!("          - run: echo {s}\n"));
            }
            if let Some(w) = split {
                t.push_str(&format!(
                    "          - split: {{list: ls, run: 'r {{tests}}', workers: {w}}}\n"
                ));
            }
        }
    }
    t
}

fn arb_builders() -> impl Strategy<Value = Vec<Vec<(usize, Option<u32>)>>> {
    prop::collection::vec(
        prop::collection::vec((1usize..4, prop::option::of(1u32..6)), 1..4),
        1..5,
    )
}

proptest! {
    #[test]
    fn plans_have_one_job_per_job_or_shard(builders in arb_builders(), with_repo: bool, patched: bool) {
        let p = pipeline(&pipeline_text(&builders));
        let rules = BTreeMap::new();
        let mut req = request(&p, &rules);
        req.patched = patched;
        if !with_repo {
            req.checkout = None;
        }
        let jobs = jobs(plan(&req));
        let expected: usize = builders.iter().flatten().map(|(_, split)| split.unwrap_or(1) as usize).sum();
        prop_assert_eq!(jobs.len(), expected);
        let mut seen = std::collections::HashSet::new();
        for j in &jobs {
            prop_assert!(seen.insert((j.builder.clone(), j.name.clone())), "job names are unique in a build");
            let checks_out = matches!(j.spec.steps[0].action, StepAction::Checkout { .. });
            prop_assert_eq!(checks_out, with_repo);
            prop_assert_eq!(j.spec.patched, patched);
            if let Some(s) = &j.spec.shard {
                prop_assert!(s.index >= 1 && s.index <= s.of);
                let is_split = matches!(j.spec.steps[s.step as usize].action, StepAction::Split { .. });
                prop_assert!(is_split, "the shard's step is the split");
                prop_assert_eq!(&j.name, &shard_job_name(&s.job, s.index));
            }
        }
    }

    #[test]
    fn a_named_builder_plans_exactly_its_jobs(builders in arb_builders(), pick in 0usize..8) {
        let p = pipeline(&pipeline_text(&builders));
        let rules = BTreeMap::new();
        let mut req = request(&p, &rules);
        let name = format!("b{pick}");
        req.builder = Some(&name);
        match plan(&req) {
            Ok(Plan::Jobs(jobs)) => {
                prop_assert!(pick < builders.len());
                prop_assert!(jobs.iter().all(|j| j.builder == name));
            }
            Err(e) => prop_assert!(pick >= builders.len() && e.is_refusal()),
            Ok(Plan::NothingToBuild(_)) => prop_assert!(false, "a named builder is never filtered"),
        }
    }

    #[test]
    fn a_change_plans_the_builders_whose_filters_take_it(
        branch in "(main|dev|release/1)",
        file in "(src/a.rs|docs/b.md)",
        filters in prop::collection::vec((prop::option::of("(main|release/\\*)"), prop::option::of("(src/\\*\\*|docs/\\*\\*)")), 1..5),
    ) {
        let mut text = String::from("builders:\n");
        for (i, (b, p)) in filters.iter().enumerate() {
            text.push_str(&format!("  b{i}:\n"));
            if let Some(b) = b { text.push_str(&format!("    branches: ['{b}']\n")); }
            if let Some(p) = p { text.push_str(&format!("    paths: ['{p}']\n")); }
            text.push_str("    steps: [{run: x}]\n");
        }
        let p = pipeline(&text);
        let rules = BTreeMap::new();
        let mut req = request(&p, &rules);
        let change = ChangeFacts { branch: Some(branch), files: Some(vec![file]), tag: None };
        req.change = Some(&change);
        let wanted: Vec<&str> = p.builders.iter().filter(|b| builder_skips(&b.branches, &b.paths, b.tags, &change).is_none()).map(|b| b.name.as_str()).collect();
        match plan(&req).expect("no refusal") {
            Plan::Jobs(jobs) => {
                let got: Vec<&str> = jobs.iter().map(|j| j.builder.as_str()).collect();
                prop_assert_eq!(got, wanted);
            }
            Plan::NothingToBuild(_) => prop_assert!(wanted.is_empty()),
        }
    }
}

#[test]
fn a_job_fetches_what_it_needs_after_checkout_and_uploads_after_its_steps() {
    let p = pipeline(
        r#"builders:
  build:
    steps:
      - run: make
    artifacts: [dist/*]
  suite:
    needs: [{job: build, artifacts: true}]
    steps:
      - run: make
      - split: {list: ls, run: 'run {tests}', workers: 2}
"#,
    );
    let secrets = BTreeMap::new();
    let planned = jobs(plan(&request(&p, &secrets)));
    let build = planned.iter().find(|j| j.builder == "build").unwrap();
    let names: Vec<&str> = build.spec.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["checkout", "make", UPLOAD_STEP]);
    assert_eq!(
        build.spec.steps[2].action,
        StepAction::Upload {
            paths: vec!["dist/*".into()]
        }
    );
    assert!(!build.spec.steps[2].always);
    let shards: Vec<&PlannedJob> = planned.iter().filter(|j| j.builder == "suite").collect();
    assert_eq!(shards.len(), 2);
    for s in shards {
        assert_eq!(s.spec.steps[1].name, FETCH_STEP);
        assert!(
            matches!(&s.spec.steps[1].action, StepAction::Fetch { from, files } if from == &["build/main"] && files.is_empty())
        );
        // The split step's index counts the fetch step.
        let shard = s.spec.shard.as_ref().unwrap();
        assert!(matches!(
            s.spec.steps[shard.step as usize].action,
            StepAction::Split { .. }
        ));
    }
}

#[test]
fn a_tag_build_sets_herd_tag_and_only_its_builders_take_it() {
    let p = pipeline(
        "builders:\n  test:\n    tags: never\n    steps:\n      - run: make test\n  release:\n    tags: only\n    steps:\n      - run: make dist VERSION=${{ tag }}\n        env: {NAME: 'herd-${{tag}}'}\n",
    );
    let rules = BTreeMap::new();
    let mut req = request(&p, &rules);
    let tag = ChangeFacts {
        tag: Some("v1.2".into()),
        ..Default::default()
    };
    req.change = Some(&tag);
    req.tag = Some("v1.2");
    let planned = jobs(plan(&req));
    assert_eq!(
        planned
            .iter()
            .map(|j| j.builder.as_str())
            .collect::<Vec<_>>(),
        ["release"]
    );
    let step = &planned[0].spec.steps[1];
    assert_eq!(step.env["HERD_TAG"], "v1.2");
    assert_eq!(step.env["NAME"], "herd-v1.2");
    assert!(
        matches!(&step.action, herd_proto::StepAction::Shell { run, .. } if run == "make dist VERSION=v1.2")
    );
    // A push: the release builder waits for a tag, `${{ tag }}` is empty.
    let push = ChangeFacts {
        branch: Some("main".into()),
        ..Default::default()
    };
    req.change = Some(&push);
    req.tag = None;
    let planned = jobs(plan(&req));
    assert_eq!(
        planned
            .iter()
            .map(|j| j.builder.as_str())
            .collect::<Vec<_>>(),
        ["test"]
    );
    assert!(!planned[0].spec.steps[1].env.contains_key("HERD_TAG"));
}

#[test]
fn an_untrusted_pull_request_gets_no_secret_and_only_workers_labelled_for_it() {
    let p = pipeline(
        "builders:\n  test:\n    steps:\n      - run: make test\n        env: {KEY: '${{ secrets.key }}'}\n",
    );
    let mut rules = BTreeMap::new();
    rules.insert("key".to_string(), SecretRule::default());
    let labels: BTreeMap<String, String> = [("untrusted".to_string(), "ok".to_string())].into();
    let mut req = request(&p, &rules);
    req.ref_name = None;
    req.pull_request = Some(PullRequestTrust {
        number: 12,
        untrusted: true,
        untrusted_labels: &labels,
    });
    let planned = jobs(plan(&req));
    let spec = &planned[0].spec;
    assert!(spec.secrets.is_empty());
    assert_eq!(spec.withheld.len(), 1);
    assert!(spec.withheld[0].reason.contains("never gets a secret"));
    assert_eq!(
        spec.trusted_requires
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>(),
        ["untrusted == ok"]
    );
    assert_eq!(spec.steps[1].env["HERD_PULL_REQUEST"], "12");
    // Trusted (same repository, approved author): the secret, any worker.
    req.pull_request = Some(PullRequestTrust {
        number: 12,
        untrusted: false,
        untrusted_labels: &labels,
    });
    let planned = jobs(plan(&req));
    assert_eq!(planned[0].spec.secrets, ["key"]);
    assert!(planned[0].spec.trusted_requires.is_empty());
}
