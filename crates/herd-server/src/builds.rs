//! Starting a build: resolve the revision, read the pipeline of that
//! revision, turn its builders into jobs, store them and queue them.

use crate::api::ApiError;
use crate::store::{BuildKind, JobSpec, NewBuild, NewJob, Shard};
use crate::App;
use herd_core::change::{builder_skips, ChangeFacts};
use herd_core::pipeline::{Pipeline, Step};
use herd_proto::{StepAction, StepSpec};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartBuild {
    pub project: String,
    #[serde(default)]
    pub builder: Option<String>,
    #[serde(default)]
    pub rev: Option<String>,
    #[serde(default)]
    pub priority: i64,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Where a build comes from, beyond what was asked.
#[derive(Debug, Clone)]
pub struct Origin {
    pub kind: BuildKind,
    pub branch: Option<String>,
    /// Who sent a try build.
    pub sender: Option<String>,
    /// For a change: what the builders' `branches:`/`paths:` look at.
    pub change: Option<ChangeFacts>,
    /// For a try build: the patch applied on top of the revision.
    pub patch: Option<String>,
}

impl Origin {
    pub fn manual() -> Self {
        Origin {
            kind: BuildKind::Manual,
            branch: None,
            sender: None,
            change: None,
            patch: None,
        }
    }
}

/// What became of a request to build.
#[derive(Debug)]
pub enum Started {
    Build(i64),
    /// No builder takes this change; why, per builder.
    NothingToBuild(String),
}

/// A build started by hand (or by the API): every builder, no filters.
pub async fn start_build(app: &App, req: StartBuild) -> Result<i64, ApiError> {
    match start(app, req, Origin::manual()).await? {
        Started::Build(id) => Ok(id),
        Started::NothingToBuild(why) => Err(ApiError::bad_request(why)),
    }
}

pub async fn start(app: &App, req: StartBuild, origin: Origin) -> Result<Started, ApiError> {
    let store = &app.hub.store;
    let Some(project) = store.project(&req.project).await? else {
        let known: Vec<String> = store
            .projects()
            .await?
            .into_iter()
            .map(|p| p.name)
            .collect();
        return Err(ApiError::not_found(format!(
            "unknown project `{}`; known projects: {}",
            req.project,
            if known.is_empty() {
                "none (add one with --project NAME=REPO or in the config)".to_string()
            } else {
                known.join(", ")
            }
        )));
    };
    let reason = req
        .reason
        .clone()
        .unwrap_or_else(|| "started by hand".into());
    let mut commit: (Option<String>, Option<String>) = (None, None);
    let (revision, text, file) = match (&project.repo, &project.pipeline) {
        (Some(repo), _) => {
            let resolved = match &origin.patch {
                Some(patch) => {
                    app.mirrors
                        .resolve_patched(&project.name, repo, req.rev.as_deref(), patch)
                        .await
                }
                None => {
                    app.mirrors
                        .resolve(&project.name, repo, req.rev.as_deref())
                        .await
                }
            };
            match resolved {
                Ok(r) => {
                    commit = (Some(r.author), Some(r.message));
                    (Some(r.revision), r.pipeline_text, "herd.yml".to_string())
                }
                Err(crate::git::GitError::UnknownRevision(rev)) => {
                    return Err(ApiError::bad_request(format!(
                        "no revision `{rev}` in the repository of project `{}`",
                        project.name
                    )))
                }
                Err(e @ crate::git::GitError::PatchDoesNotApply(_)) => {
                    return Err(ApiError::bad_request(e.to_string()))
                }
                Err(e) => {
                    // Broken herd.yml or no herd.yml at that revision: a failed
                    // build that shows why, not a silent refusal.
                    return record_error_build(app, &req, &origin, None, &reason, e.to_string())
                        .await;
                }
            }
        }
        (None, Some(text)) => (
            None,
            text.clone(),
            format!("pipeline of project {}", project.name),
        ),
        (None, None) => {
            return Err(ApiError::bad_request(format!(
                "project `{}` has neither a repository nor a pipeline",
                project.name
            )))
        }
    };
    let pipeline = match Pipeline::parse(&file, &text) {
        Ok(p) => p,
        Err(e) => {
            return record_error_build(app, &req, &origin, revision, &reason, e.to_string()).await
        }
    };
    // Before the jobs are queued, so that no job is matched against a worker
    // that was never asked about what the job needs.
    app.hub
        .want_probes(herd_core::probe::probes_for(&pipeline).into_values())
        .await?;
    let builders: Vec<_> = match &req.builder {
        None => match &origin.change {
            None => pipeline.builders.iter().collect(),
            Some(change) => {
                let mut why = Vec::new();
                let taken: Vec<_> = pipeline
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
                    return Ok(Started::NothingToBuild(format!(
                        "no builder takes this change ({})",
                        why.join("; ")
                    )));
                }
                taken
            }
        },
        Some(b) => match pipeline.builder(b) {
            Some(found) => vec![found],
            None => {
                let names: Vec<&str> = pipeline.builders.iter().map(|b| b.name.as_str()).collect();
                return Err(ApiError::bad_request(format!(
                    "no builder `{b}` in the herd.yml of project `{}`; builders: {}",
                    project.name,
                    names.join(", ")
                )));
            }
        },
    };
    let mut jobs = Vec::new();
    for b in builders {
        for j in &b.jobs {
            let mut steps = Vec::with_capacity(j.steps.len() + 1);
            if let (Some(repo), Some(rev)) = (&project.repo, &revision) {
                steps.push(StepSpec {
                    name: "checkout".into(),
                    action: StepAction::Checkout {
                        repo: repo.clone(),
                        revision: rev.clone(),
                        // Joins at assignment, from `build_patches`.
                        patch: None,
                    },
                    timeout_secs: None,
                    env: Default::default(),
                    always: false,
                });
            }
            let offset = steps.len();
            steps.extend(j.steps.iter().map(step_spec));
            let split = j
                .steps
                .iter()
                .enumerate()
                .find_map(|(i, s)| s.split.as_ref().map(|d| (i, s, d)));
            let (secrets, secret_requires) =
                match secrets_of_job(&app.hub.settings.secrets, &project.name, &b.name, &steps) {
                    Ok(found) => found,
                    Err(e) => {
                        return record_error_build(app, &req, &origin, revision, &reason, e).await
                    }
                };
            let mut requires = j.requires.clone();
            requires.extend(secret_requires);
            let spec = JobSpec {
                requires,
                steps,
                cap: b.max_concurrent,
                shard: None,
                patched: origin.patch.is_some(),
                secrets,
            };
            match split {
                None => jobs.push(NewJob {
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
                        jobs.push(NewJob {
                            builder: b.name.clone(),
                            name: shard_job_name(&j.name, index),
                            spec,
                        });
                    }
                }
            }
        }
    }
    let new = NewBuild {
        project: project.name.clone(),
        ref_name: req.rev.clone(),
        revision,
        priority: req.priority,
        reason,
        error: None,
        jobs: jobs.clone(),
        author: commit.0,
        message: commit.1,
        report: app.reports_for(&project.name) && origin.kind != BuildKind::Try,
        patch: origin.patch.clone(),
        branch: origin.branch.clone(),
        kind: origin.kind,
        sender: origin.sender.clone(),
    };
    let (build_id, job_ids) = store.create_build(&new).await?;
    let queued = job_ids
        .into_iter()
        .zip(jobs)
        .map(|(job_id, j)| crate::store::QueuedJobInfo {
            job_id,
            build_id,
            project: new.project.clone(),
            builder: j.builder,
            job: j.name,
            revision: new.revision.clone(),
            priority: new.priority,
            spec: j.spec,
        })
        .collect();
    app.hub.enqueue(queued);
    app.reporter.wake();
    Ok(Started::Build(build_id))
}

async fn record_error_build(
    app: &App,
    req: &StartBuild,
    origin: &Origin,
    revision: Option<String>,
    reason: &str,
    error: String,
) -> Result<Started, ApiError> {
    let (id, _) = app
        .hub
        .store
        .create_build(&NewBuild {
            project: req.project.clone(),
            ref_name: req.rev.clone(),
            priority: req.priority,
            reason: reason.to_string(),
            error: Some(error),
            jobs: vec![],
            author: None,
            message: None,
            report: revision.is_some()
                && app.reports_for(&req.project)
                && origin.kind != BuildKind::Try,
            revision,
            branch: origin.branch.clone(),
            kind: origin.kind,
            sender: origin.sender.clone(),
            patch: None,
        })
        .await?;
    app.hub.changed();
    app.reporter.wake();
    Ok(Started::Build(id))
}

/// The secrets a job's steps refer to, checked against the server's
/// `secrets:` (the builder must be allowed), and the label requirements
/// they bring (only a worker with those labels gets the job).
fn secrets_of_job(
    configured: &std::collections::BTreeMap<String, crate::config::SecretConfig>,
    project: &str,
    builder: &str,
    steps: &[StepSpec],
) -> Result<(Vec<String>, Vec<herd_core::requirement::Requirement>), String> {
    let mut names: Vec<String> = Vec::new();
    for step in steps {
        for value in step.env.values() {
            for name in herd_core::secret_ref::secret_refs(value) {
                if !names.iter().any(|n| n == name) {
                    names.push(name.to_string());
                }
            }
        }
    }
    let mut requires = Vec::new();
    for name in &names {
        let Some(secret) = configured.get(name) else {
            let known: Vec<&str> = configured.keys().map(String::as_str).collect();
            return Err(format!(
                "builder `{builder}` refers to secret `{name}`, which the server does not have (it has: {}); add it under `secrets:` in the server config",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            ));
        };
        let allowed = secret.builders.is_empty()
            || secret
                .builders
                .iter()
                .any(|b| b == builder || *b == format!("{project}/{builder}"));
        if !allowed {
            return Err(format!(
                "builder `{builder}` of project `{project}` may not use secret `{name}` (allowed: {}); change `builders:` of the secret in the server config",
                secret.builders.join(", ")
            ));
        }
        for (key, value) in &secret.labels {
            let text = format!("{key} == {value}");
            let r = herd_core::requirement::Requirement::parse(&text).map_err(|e| {
                format!("secret `{name}` needs label `{key}={value}`, which is not a valid requirement: {e}")
            })?;
            if !requires.contains(&r) {
                requires.push(r);
            }
        }
    }
    Ok((names, requires))
}

/// `tests#2`: the second shard of job `tests`.
pub fn shard_job_name(job: &str, index: u32) -> String {
    format!("{job}#{index}")
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
