//! Planning a build: from a pipeline and what is known of the change, the
//! jobs to create. Pure: the server resolves the revision, reads herd.yml,
//! calls [`plan`], and stores what it returns.
//!
//! A builder's job becomes one [`PlannedJob`]; a job with a `split:` step
//! becomes one job per shard. Each job's steps start with a `checkout` step
//! when the project has a repository. Secrets named in a step's `env` are
//! checked against the server's rules here, and the labels they need join
//! the job's requirements; their values join only at assignment.

use crate::change::{builder_skips, ChangeFacts};
use crate::pipeline::{Builder, Pipeline, Step};
use crate::requirement::Requirement;
use herd_proto::{StepAction, StepSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a job runs, as it is stored with it and handed to the scheduler.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub requires: Vec<Requirement>,
    pub steps: Vec<StepSpec>,
    /// The builder's `max_concurrent`.
    #[serde(default)]
    pub cap: Option<u32>,
    /// Set on the shards of a job with a split step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
    /// A try build: the build's patch joins the checkout step when the job
    /// is assigned.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub patched: bool,
    /// Secrets the steps' env refers to; their values join at assignment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Secrets the steps refer to but may not have here: they are empty in
    /// the env, and the build says why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub withheld: Vec<Withheld>,
    /// Requirements met only by labels the server gave the worker (an
    /// enrollment token, `herd workers label`), never by labels a worker
    /// states itself: those of the secrets the job gets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_requires: Vec<Requirement>,
    /// The jobs of the build it waits for (`builder/job`, a split's shards
    /// each).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    /// When it runs once they have ended.
    #[serde(default, skip_serializing_if = "crate::needs::RunIf::is_success")]
    pub run_if: crate::needs::RunIf,
}

/// A secret a job refers to and does not get, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Withheld {
    pub secret: String,
    pub reason: String,
}

/// One shard of a split job: which split it serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// The job as named in herd.yml.
    pub job: String,
    /// 1-based.
    pub index: u32,
    pub of: u32,
    /// Index of the split step among the job's steps (checkout included).
    pub step: u32,
    pub step_name: String,
    pub flaky_fails: bool,
}

impl Shard {
    /// Shards with the same key never share a worker.
    pub fn spread_key(&self, build_id: i64, builder: &str) -> String {
        format!("{build_id}/{builder}/{}", self.job)
    }
}

/// `tests#2`: the second shard of job `tests`.
pub fn shard_job_name(job: &str, index: u32) -> String {
    format!("{job}#{index}")
}

/// Who may use a secret: the server config's `secrets:` without values.
/// What the repository writes (builder names, herd.yml) cannot meet it
/// alone: projects, refs and try builds are the server's facts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretRule {
    /// `BUILDER` or `PROJECT/BUILDER`; empty: any builder.
    pub builders: Vec<String>,
    /// Only workers with all these labels, set by the server, run a job
    /// that uses it.
    pub labels: BTreeMap<String, String>,
    /// Projects that may use it; empty: any.
    pub projects: Vec<String>,
    /// Branches or tags (globs) of the builds that get it; empty: any.
    pub refs: Vec<String>,
    /// Try builds get it only when this says so.
    pub try_builds: bool,
}

/// Where workers check the revision out from.
#[derive(Debug, Clone, Copy)]
pub struct Checkout<'a> {
    pub repo: &'a str,
    pub revision: &'a str,
    /// The workers fetch from the server's mirror (the default), not from
    /// `repo` (`checkout: direct`).
    pub served: bool,
}

/// Everything a plan depends on.
#[derive(Debug, Clone, Copy)]
pub struct PlanRequest<'a> {
    pub project: &'a str,
    pub pipeline: &'a Pipeline,
    /// None: the project has no repository (no checkout step).
    pub checkout: Option<Checkout<'a>>,
    /// Only this builder (a build started by hand may name one).
    pub builder: Option<&'a str>,
    /// Only these jobs, `(builder, job)` as a build named them (a retry of
    /// the failed ones): a split job's shard stands for its whole job.
    pub only: Option<&'a [(String, String)]>,
    /// The build's parameters (`params:`, resolved): every step gets
    /// `HERD_PARAM_NAME`.
    pub params: Option<&'a BTreeMap<String, String>>,
    /// For a change: what the builders' `branches:`/`paths:` look at.
    /// None: every builder (a build started by hand, a try build).
    pub change: Option<&'a ChangeFacts>,
    /// A try build: its patch joins the checkout step at assignment.
    pub patched: bool,
    /// The branch or tag the build is of (a change's branch, the ref a
    /// build by hand names); None for a try build or a bare commit.
    pub ref_name: Option<&'a str>,
    /// The tag built (a new tag, or a build by hand of one): every step
    /// gets `HERD_TAG`, and `${{ tag }}` in its commands and env.
    pub tag: Option<&'a str>,
    /// A pull request: its number (`HERD_PULL_REQUEST`) and whether its
    /// code is trusted.
    pub pull_request: Option<PullRequestTrust<'a>>,
    pub secrets: &'a BTreeMap<String, SecretRule>,
    pub limits: PlanLimits,
}

/// What a pull request's build may reach.
#[derive(Debug, Clone, Copy)]
pub struct PullRequestTrust<'a> {
    pub number: u64,
    /// From a fork or an author the project has not approved: no secret
    /// at all, and only workers with all of `untrusted_labels` (labels
    /// the server gave) run its jobs.
    pub untrusted: bool,
    pub untrusted_labels: &'a BTreeMap<String, String>,
}

/// How big one build may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanLimits {
    pub max_builders: u32,
    pub max_jobs: u32,
}

impl Default for PlanLimits {
    fn default() -> Self {
        PlanLimits {
            max_builders: 200,
            max_jobs: 1_000,
        }
    }
}

/// A job to create.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedJob {
    pub builder: String,
    pub name: String,
    pub spec: JobSpec,
}

/// What a plan comes to.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    Jobs(Vec<PlannedJob>),
    /// No builder takes this change; why, per builder.
    NothingToBuild(String),
}

/// Why no plan could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The request names a builder the pipeline does not have: the caller
    /// asked for something that is not there (nothing is recorded).
    #[error("no builder `{builder}` in the herd.yml of project `{project}`; builders: {}", known.join(", "))]
    UnknownBuilder {
        project: String,
        builder: String,
        known: Vec<String>,
    },
    /// The pipeline refers to a secret the server does not have: the build
    /// is recorded as failed with this reason, so that whoever pushed sees
    /// why.
    #[error("{0}")]
    Secret(String),
    /// The build would be larger than the server takes.
    #[error("this build would have {count} {what}, more than the {limit} the server takes (`limits: {{{setting}: N}}` in its config)")]
    TooBig {
        what: &'static str,
        /// The setting of the server config that says how many.
        setting: &'static str,
        count: usize,
        limit: u32,
    },
}

impl PlanError {
    /// Whether the request is refused (nothing recorded) rather than
    /// recorded as a failed build.
    pub fn is_refusal(&self) -> bool {
        matches!(self, PlanError::UnknownBuilder { .. })
    }
}

/// Plans a build: the jobs to create, in pipeline order.
pub fn plan(req: &PlanRequest<'_>) -> Result<Plan, PlanError> {
    let builders = match select_builders(req)? {
        Ok(b) => b,
        Err(why) => return Ok(Plan::NothingToBuild(why)),
    };
    if builders.len() > req.limits.max_builders as usize {
        return Err(PlanError::TooBig {
            what: "builders",
            setting: "max_builders_per_build",
            count: builders.len(),
            limit: req.limits.max_builders,
        });
    }
    let asked = asked_jobs(req);
    let mut jobs = Vec::new();
    for b in builders {
        plan_builder(req, asked.as_ref(), b, &mut jobs)?;
        if jobs.len() > req.limits.max_jobs as usize {
            return Err(PlanError::TooBig {
                what: "jobs or more",
                setting: "max_jobs_per_build",
                count: jobs.len(),
                limit: req.limits.max_jobs,
            });
        }
    }
    link_needs(&mut jobs);
    Ok(Plan::Jobs(jobs))
}

/// Each job's needs as the names of this build's jobs: a split job's
/// shards each; a job the build does not have (filtered out by
/// `branches:`/`paths:`, not retried) is not waited for.
fn link_needs(jobs: &mut [PlannedJob]) {
    let names: Vec<String> = jobs
        .iter()
        .map(|j| format!("{}/{}", j.builder, j.name))
        .collect();
    for j in jobs.iter_mut() {
        let mut linked = Vec::new();
        for n in &j.spec.needs {
            let shard_prefix = format!("{n}#");
            linked.extend(
                names
                    .iter()
                    .filter(|m| *m == n || m.starts_with(&shard_prefix))
                    .cloned(),
            );
        }
        j.spec.needs = linked;
    }
}

/// For a retry (`only`): the jobs it names (a shard stands for its split
/// job) and every job that needs one of them, directly or not, as
/// `builder/job` of herd.yml. None: every job.
fn asked_jobs(req: &PlanRequest<'_>) -> Option<std::collections::HashSet<String>> {
    let only = req.only?;
    let mut asked = std::collections::HashSet::new();
    for b in &req.pipeline.builders {
        for j in &b.jobs {
            let shards = j
                .steps
                .iter()
                .find_map(|s| s.split.as_ref())
                .map_or(0, |d| d.workers);
            if only.iter().any(|(ob, name)| {
                *ob == b.name
                    && (*name == j.name
                        || (1..=shards).any(|i| *name == shard_job_name(&j.name, i)))
            }) {
                asked.insert(format!("{}/{}", b.name, j.name));
            }
        }
    }
    // What depends on them runs again too (bounded: each pass adds a job).
    loop {
        let before = asked.len();
        for b in &req.pipeline.builders {
            for j in &b.jobs {
                if j.needs.iter().any(|n| asked.contains(n)) {
                    asked.insert(format!("{}/{}", b.name, j.name));
                }
            }
        }
        if asked.len() == before {
            return Some(asked);
        }
    }
}

/// The builders that take part; the inner Err says why none does.
fn select_builders<'p>(
    req: &PlanRequest<'p>,
) -> Result<Result<Vec<&'p Builder>, String>, PlanError> {
    let pipeline = req.pipeline;
    if let Some(name) = req.builder {
        return match pipeline.builder(name) {
            Some(b) => Ok(Ok(vec![b])),
            None => Err(PlanError::UnknownBuilder {
                project: req.project.to_string(),
                builder: name.to_string(),
                known: pipeline.builders.iter().map(|b| b.name.clone()).collect(),
            }),
        };
    }
    if let Some(asked) = asked_jobs(req) {
        let taken: Vec<&Builder> = pipeline
            .builders
            .iter()
            .filter(|b| {
                asked
                    .iter()
                    .any(|n| n.split('/').next() == Some(b.name.as_str()))
            })
            .collect();
        if taken.is_empty() {
            return Ok(Err(
                "none of the jobs to run again is in the pipeline any more".into(),
            ));
        }
        return Ok(Ok(taken));
    }
    let Some(change) = req.change else {
        return Ok(Ok(pipeline.builders.iter().collect()));
    };
    let mut why = Vec::new();
    let taken: Vec<&Builder> = pipeline
        .builders
        .iter()
        .filter(
            |b| match builder_skips(&b.branches, &b.paths, b.tags, change) {
                None => true,
                Some(reason) => {
                    why.push(format!("{}: {reason}", b.name));
                    false
                }
            },
        )
        .collect();
    if taken.is_empty() {
        return Ok(Err(format!(
            "no builder takes this change ({})",
            why.join("; ")
        )));
    }
    Ok(Ok(taken))
}

fn plan_builder(
    req: &PlanRequest<'_>,
    asked: Option<&std::collections::HashSet<String>>,
    b: &Builder,
    jobs: &mut Vec<PlannedJob>,
) -> Result<(), PlanError> {
    let is_asked = |j: &&crate::pipeline::JobDef| {
        asked.is_none_or(|a| a.contains(&format!("{}/{}", b.name, j.name)))
    };
    for j in b.jobs.iter().filter(is_asked) {
        let mut steps = Vec::with_capacity(j.steps.len() + 1);
        if let Some(c) = req.checkout {
            steps.push(checkout_step(req.project, c));
        }
        if !j.artifacts_from.is_empty() {
            steps.push(StepSpec {
                name: FETCH_STEP.into(),
                // The files join at assignment, once the jobs have made them.
                action: StepAction::Fetch {
                    from: j.artifacts_from.clone(),
                    files: Vec::new(),
                },
                timeout_secs: None,
                env: Default::default(),
                always: false,
            });
        }
        let offset = steps.len();
        steps.extend(j.steps.iter().map(step_spec));
        for s in steps.iter_mut().skip(offset) {
            for (k, v) in req.params.into_iter().flatten() {
                s.env
                    .insert(crate::pipeline::params::env_name(k), v.clone());
            }
            if let Some(tag) = req.tag {
                s.env.insert("HERD_TAG".into(), tag.to_string());
            }
            if let Some(pr) = req.pull_request {
                s.env
                    .insert("HERD_PULL_REQUEST".into(), pr.number.to_string());
            }
            substitute_tag(s, req.tag.unwrap_or(""));
        }
        if let Some(a) = &j.artifacts {
            steps.push(StepSpec {
                name: UPLOAD_STEP.into(),
                action: StepAction::Upload {
                    paths: a.paths.clone(),
                },
                timeout_secs: None,
                env: Default::default(),
                always: a.always,
            });
        }
        let mut granted = secrets_of_job(req, &b.name, &steps)?;
        if let Some(pr) = req.pull_request.filter(|p| p.untrusted) {
            for r in label_requirements(pr.untrusted_labels).map_err(PlanError::Secret)? {
                if !granted.trusted_requires.contains(&r) {
                    granted.trusted_requires.push(r);
                }
            }
        }
        let spec = JobSpec {
            requires: j.requires.clone(),
            steps,
            cap: b.max_concurrent,
            shard: None,
            patched: req.patched,
            secrets: granted.names,
            withheld: granted.withheld,
            trusted_requires: granted.trusted_requires,
            needs: j.needs.clone(),
            run_if: j.run_if,
        };
        let split = j
            .steps
            .iter()
            .enumerate()
            .find_map(|(i, s)| s.split.as_ref().map(|d| (i, s, d)));
        match split {
            None => jobs.push(PlannedJob {
                builder: b.name.clone(),
                name: j.name.clone(),
                spec,
            }),
            // One job per shard: each runs the steps before the split,
            // then batches of the suite, then its `always` steps.
            Some((i, step, def)) => {
                for index in 1..=def.workers {
                    let mut spec = spec.clone();
                    spec.shard = Some(Shard {
                        job: j.name.clone(),
                        index,
                        of: def.workers,
                        step: (offset + i) as u32,
                        step_name: step.name.clone(),
                        flaky_fails: def.flaky_fails,
                    });
                    jobs.push(PlannedJob {
                        builder: b.name.clone(),
                        name: shard_job_name(&j.name, index),
                        spec,
                    });
                }
            }
        }
    }
    Ok(())
}

/// `${{ tag }}` in a step's command and env values: the tag built, or
/// nothing when the build is not of a tag.
fn substitute_tag(s: &mut StepSpec, tag: &str) {
    const WORD: [&str; 2] = ["${{ tag }}", "${{tag}}"];
    let replace = |text: &mut String| {
        for w in WORD {
            if text.contains(w) {
                *text = text.replace(w, tag);
            }
        }
    };
    match &mut s.action {
        StepAction::Shell { run, .. } => replace(run),
        StepAction::Split { list, run, .. } => {
            replace(list);
            replace(run);
        }
        _ => {}
    }
    for v in s.env.values_mut() {
        replace(v);
    }
}

/// `key == value` requirements that only labels the server gave meet.
fn label_requirements(labels: &BTreeMap<String, String>) -> Result<Vec<Requirement>, String> {
    labels
        .iter()
        .map(|(key, value)| {
            Requirement::parse(&format!("{key} == {value}"))
                .map_err(|e| format!("label `{key}={value}` is not a valid requirement: {e}"))
        })
        .collect()
}

/// The step that puts the needed jobs' artifacts into the workspace.
pub const FETCH_STEP: &str = "fetch artifacts";
/// The step that uploads a job's artifacts, after its own.
pub const UPLOAD_STEP: &str = "upload artifacts";

fn checkout_step(project: &str, c: Checkout<'_>) -> StepSpec {
    StepSpec {
        name: "checkout".into(),
        action: StepAction::Checkout {
            // Served: the workers never need the URL's credentials.
            repo: if c.served {
                crate::redact::redact_url(c.repo)
            } else {
                c.repo.to_string()
            },
            revision: c.revision.to_string(),
            // Joins at assignment (a try build's patch is stored once per build).
            patch: None,
            served: c
                .served
                .then(|| herd_proto::source_path(project, c.revision)),
        },
        timeout_secs: None,
        env: Default::default(),
        always: false,
    }
}

fn step_spec(s: &Step) -> StepSpec {
    let action = match &s.split {
        Some(d) => StepAction::Split {
            list: d.list.clone(),
            run: d.run.clone(),
            junit: d.junit.clone(),
            format: d.format,
            pattern: d.pattern.clone(),
        },
        None => StepAction::Shell {
            run: s.run.clone(),
            results: s.results.clone(),
        },
    };
    StepSpec {
        name: s.name.clone(),
        action,
        timeout_secs: s.timeout.map(|t| t.as_secs()),
        env: s.env.clone(),
        always: s.always,
    }
}

/// What a job gets of the secrets its steps refer to.
struct Granted {
    names: Vec<String>,
    withheld: Vec<Withheld>,
    /// The label requirements of the granted secrets (server labels only).
    trusted_requires: Vec<Requirement>,
}

/// The secrets a job's steps refer to, checked against the server's rules:
/// granted (their labels become requirements only server-given labels
/// meet) or withheld with the reason. A name the server does not have is
/// an error.
fn secrets_of_job(
    req: &PlanRequest<'_>,
    builder: &str,
    steps: &[StepSpec],
) -> Result<Granted, PlanError> {
    let mut names: Vec<String> = Vec::new();
    for step in steps {
        for value in step.env.values() {
            for name in crate::secret_ref::secret_refs(value) {
                if !names.iter().any(|n| n == name) {
                    names.push(name.to_string());
                }
            }
        }
    }
    let mut granted = Granted {
        names: Vec::new(),
        withheld: Vec::new(),
        trusted_requires: Vec::new(),
    };
    for name in names {
        let Some(rule) = req.secrets.get(&name) else {
            let known: Vec<&str> = req.secrets.keys().map(String::as_str).collect();
            return Err(PlanError::Secret(format!(
                "builder `{builder}` refers to secret `{name}`, which the server does not have (it has: {}); add it under `secrets:` in the server config",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            )));
        };
        if let Some(reason) = withholding(rule, req, builder) {
            granted.withheld.push(Withheld {
                secret: name,
                reason,
            });
            continue;
        }
        for (key, value) in &rule.labels {
            let text = format!("{key} == {value}");
            let r = Requirement::parse(&text).map_err(|e| {
                PlanError::Secret(format!(
                    "secret `{name}` needs label `{key}={value}`, which is not a valid requirement: {e}"
                ))
            })?;
            if !granted.trusted_requires.contains(&r) {
                granted.trusted_requires.push(r);
            }
        }
        granted.names.push(name);
    }
    Ok(granted)
}

/// Why a build of this request does not get a secret, if it does not.
fn withholding(rule: &SecretRule, req: &PlanRequest<'_>, builder: &str) -> Option<String> {
    if req.pull_request.is_some_and(|p| p.untrusted) {
        return Some(
            "a pull request from a fork or an author the project has not approved never gets a secret"
                .into(),
        );
    }
    if req.patched && !rule.try_builds {
        return Some(
            "try builds do not get it (unless the server's config says `try: true`)".into(),
        );
    }
    if !rule.projects.is_empty() && !rule.projects.iter().any(|p| p == req.project) {
        return Some(format!(
            "project `{}` is not among its projects ({})",
            req.project,
            rule.projects.join(", ")
        ));
    }
    if !rule.refs.is_empty() {
        match req.ref_name {
            Some(r) if crate::change::globs_select(&rule.refs, r) => {}
            Some(r) => {
                return Some(format!(
                    "`{r}` is not among its branches and tags ({})",
                    rule.refs.join(", ")
                ))
            }
            None => {
                return Some(format!(
                    "the build is of no branch or tag, and it goes only to {}",
                    rule.refs.join(", ")
                ))
            }
        }
    }
    let allowed = rule.builders.is_empty()
        || rule
            .builders
            .iter()
            .any(|b| b == builder || *b == format!("{}/{builder}", req.project));
    if !allowed {
        return Some(format!(
            "builder `{builder}` is not among its builders ({})",
            rule.builders.join(", ")
        ));
    }
    None
}

#[cfg(test)]
mod tests;
