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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretRule {
    /// `BUILDER` or `PROJECT/BUILDER`; empty: any builder.
    pub builders: Vec<String>,
    /// Only workers with all these labels run a job that uses it.
    pub labels: BTreeMap<String, String>,
}

/// Where workers check the revision out from.
#[derive(Debug, Clone, Copy)]
pub struct Checkout<'a> {
    pub repo: &'a str,
    pub revision: &'a str,
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
    /// For a change: what the builders' `branches:`/`paths:` look at.
    /// None: every builder (a build started by hand, a try build).
    pub change: Option<&'a ChangeFacts>,
    /// A try build: its patch joins the checkout step at assignment.
    pub patched: bool,
    pub secrets: &'a BTreeMap<String, SecretRule>,
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
    /// The pipeline uses a secret it may not have: the build is recorded
    /// as failed with this reason, so that whoever pushed sees why.
    #[error("{0}")]
    Secret(String),
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
    let mut jobs = Vec::new();
    for b in builders {
        plan_builder(req, b, &mut jobs)?;
    }
    Ok(Plan::Jobs(jobs))
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
    let Some(change) = req.change else {
        return Ok(Ok(pipeline.builders.iter().collect()));
    };
    let mut why = Vec::new();
    let taken: Vec<&Builder> = pipeline
        .builders
        .iter()
        .filter(|b| match builder_skips(&b.branches, &b.paths, change) {
            None => true,
            Some(reason) => {
                why.push(format!("{}: {reason}", b.name));
                false
            }
        })
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
    b: &Builder,
    jobs: &mut Vec<PlannedJob>,
) -> Result<(), PlanError> {
    for j in &b.jobs {
        let mut steps = Vec::with_capacity(j.steps.len() + 1);
        if let Some(c) = req.checkout {
            steps.push(checkout_step(c));
        }
        let offset = steps.len();
        steps.extend(j.steps.iter().map(step_spec));
        let (secrets, secret_requires) = secrets_of_job(req.secrets, req.project, &b.name, &steps)?;
        let mut requires = j.requires.clone();
        for r in secret_requires {
            if !requires.contains(&r) {
                requires.push(r);
            }
        }
        let spec = JobSpec {
            requires,
            steps,
            cap: b.max_concurrent,
            shard: None,
            patched: req.patched,
            secrets,
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

fn checkout_step(c: Checkout<'_>) -> StepSpec {
    StepSpec {
        name: "checkout".into(),
        action: StepAction::Checkout {
            repo: c.repo.to_string(),
            revision: c.revision.to_string(),
            // Joins at assignment (a try build's patch is stored once per build).
            patch: None,
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
        },
        None => StepAction::Shell { run: s.run.clone() },
    };
    StepSpec {
        name: s.name.clone(),
        action,
        timeout_secs: s.timeout.map(|t| t.as_secs()),
        env: s.env.clone(),
        always: s.always,
    }
}

/// The secrets a job's steps refer to, checked against the rules (the
/// builder must be allowed), and the label requirements they bring.
fn secrets_of_job(
    rules: &BTreeMap<String, SecretRule>,
    project: &str,
    builder: &str,
    steps: &[StepSpec],
) -> Result<(Vec<String>, Vec<Requirement>), PlanError> {
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
    let mut requires = Vec::new();
    for name in &names {
        let Some(rule) = rules.get(name) else {
            let known: Vec<&str> = rules.keys().map(String::as_str).collect();
            return Err(PlanError::Secret(format!(
                "builder `{builder}` refers to secret `{name}`, which the server does not have (it has: {}); add it under `secrets:` in the server config",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            )));
        };
        let allowed = rule.builders.is_empty()
            || rule
                .builders
                .iter()
                .any(|b| b == builder || *b == format!("{project}/{builder}"));
        if !allowed {
            return Err(PlanError::Secret(format!(
                "builder `{builder}` of project `{project}` may not use secret `{name}` (allowed: {}); change `builders:` of the secret in the server config",
                rule.builders.join(", ")
            )));
        }
        for (key, value) in &rule.labels {
            let text = format!("{key} == {value}");
            let r = Requirement::parse(&text).map_err(|e| {
                PlanError::Secret(format!(
                    "secret `{name}` needs label `{key}={value}`, which is not a valid requirement: {e}"
                ))
            })?;
            if !requires.contains(&r) {
                requires.push(r);
            }
        }
    }
    Ok((names, requires))
}

#[cfg(test)]
mod tests;
