//! Starting a build: the orchestrator around the pure planner
//! (`herd_core::plan`). It finds the project, resolves the revision and
//! reads the herd.yml of that revision, asks the planner for the jobs,
//! stores them and queues them. Every way a build starts (by hand, a
//! change, a try, a rebuild) comes through [`start`].

use crate::store::{BuildKind, NewBuild, NewJob, QueuedJobInfo, StoreError};
use crate::App;
use herd_core::change::ChangeFacts;
use herd_core::pipeline::Pipeline;
use herd_core::plan::{plan, Checkout, Plan, PlanError, PlanLimits, PlanRequest, SecretRule};
use herd_core::state::RunState;
use std::collections::BTreeMap;

/// What is asked to be built.
#[derive(Debug, Clone, Default)]
pub struct BuildRequest {
    pub project: String,
    /// Only this builder.
    pub builder: Option<String>,
    /// Branch, tag or commit; None: the repository's HEAD.
    pub rev: Option<String>,
    pub priority: i64,
    /// Shown with the build; default "started by hand".
    pub reason: Option<String>,
    /// Only these jobs, `(builder, job)` (a retry).
    pub only: Option<Vec<(String, String)>>,
    /// The branch or tag the revision was built as (a retry keeps its
    /// build's, so that secrets bound to refs follow it).
    pub ref_name: Option<String>,
    /// Values for herd.yml's `params:` (the rest take their defaults).
    pub params: BTreeMap<String, String>,
    /// Where the commit statuses go when not to `rev`: a pull request's
    /// head when its merge with the base is built.
    pub status_revision: Option<String>,
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
    /// For a tag's build: the tag (`HERD_TAG`, `${{ tag }}`).
    pub tag: Option<String>,
    /// For a pull request's build.
    pub pull_request: Option<PullOrigin>,
}

/// The pull request a build is of, and whether its code is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullOrigin {
    pub number: i64,
    pub untrusted: bool,
}

impl Origin {
    pub fn manual() -> Self {
        Origin {
            kind: BuildKind::Manual,
            branch: None,
            sender: None,
            change: None,
            patch: None,
            tag: None,
            pull_request: None,
        }
    }
}

/// What became of a request to build.
#[derive(Debug, PartialEq, Eq)]
pub enum Started {
    Build(i64),
    /// No builder takes this change; why, per builder.
    NothingToBuild(String),
}

/// Why a build was not started. A broken herd.yml or a secret the
/// pipeline may not use is not one of these: such a build is recorded,
/// failed, with the reason (whoever pushed sees it).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("unknown project `{name}`; known projects: {}", if known.is_empty() { "none (add one with --project NAME=REPO or in the config)".to_string() } else { known.join(", ") })]
    UnknownProject { name: String, known: Vec<String> },
    #[error("project `{0}` has neither a repository nor a pipeline")]
    NoSource(String),
    /// A try patch for a project whose pipeline is in the server config:
    /// there is nothing to apply it to.
    #[error("project `{0}` has no repository, so a try patch has nothing to apply to: try a project that builds from a repository")]
    NoRepository(String),
    #[error("no revision `{rev}` in the repository of project `{project}`")]
    UnknownRevision { project: String, rev: String },
    #[error("{0}")]
    PatchDoesNotApply(String),
    /// The request names something the pipeline does not have.
    #[error(transparent)]
    Refused(PlanError),
    /// A build started by hand whose builders all skip it.
    #[error("{0}")]
    NothingToBuild(String),
    #[error("no build {0}")]
    UnknownBuild(i64),
    /// A parameter herd.yml does not declare, or a value it does not allow.
    #[error("{0}")]
    BadParams(String),
    /// A retry of the failed jobs of a build that is still running.
    #[error(
        "build {0} is still running: retry its failed jobs once it has ended (or cancel it first)"
    )]
    NotFinished(i64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A build started by hand (or by the API): every builder, no filters.
pub async fn start_build(app: &App, req: BuildRequest) -> Result<i64, StartError> {
    match start(app, req, Origin::manual()).await? {
        Started::Build(id) => Ok(id),
        Started::NothingToBuild(why) => Err(StartError::NothingToBuild(why)),
    }
}

/// Starts a build that runs a build's jobs again: the same
/// revision, project and origin (the branch or tag, a try's patch and
/// sender), so it gets exactly the secrets the first one got. All its
/// jobs, or with `failed_only` those that failed, erred or were cancelled
/// (a split job runs again whole).
pub async fn retry(app: &App, id: i64, failed_only: bool) -> Result<i64, StartError> {
    let store = &app.hub.store;
    let d = store
        .build_detail(id)
        .await?
        .ok_or(StartError::UnknownBuild(id))?;
    if failed_only && !d.build.state.is_finished() {
        return Err(StartError::NotFinished(id));
    }
    let only = if failed_only {
        let failed: Vec<(String, String)> = d
            .jobs
            .iter()
            .filter(|j| {
                matches!(
                    j.state,
                    RunState::Failure | RunState::Error | RunState::Cancelled
                )
            })
            .map(|j| (j.builder.clone(), j.name.clone()))
            .collect();
        if failed.is_empty() {
            return Err(StartError::NothingToBuild(format!(
                "build {id} has no failed jobs to run again"
            )));
        }
        Some(failed)
    } else {
        None
    };
    let patch = match d.build.kind {
        BuildKind::Try => store.build_patch(id).await?,
        _ => None,
    };
    let req = BuildRequest {
        project: d.build.project.clone(),
        builder: None,
        rev: d.build.revision.clone(),
        priority: d.build.priority,
        reason: Some(if failed_only {
            format!("retry of the failed jobs of build {id}")
        } else {
            format!("retry of build {id}")
        }),
        only,
        ref_name: d.build.ref_name.clone(),
        params: d.build.params.clone(),
        status_revision: d.build.status_revision.clone(),
    };
    let pull_request = match (d.build.kind, d.build.pull_request) {
        (BuildKind::PullRequest, Some(number)) => Some(PullOrigin {
            number,
            untrusted: is_untrusted(app, &d.build.project, number).await?,
        }),
        _ => None,
    };
    let origin = Origin {
        kind: d.build.kind,
        branch: d.build.branch.clone(),
        sender: d.build.sender.clone(),
        change: None,
        patch,
        tag: (d.build.kind == BuildKind::Tag)
            .then(|| d.build.ref_name.clone())
            .flatten(),
        pull_request,
    };
    match start(app, req, origin).await? {
        Started::Build(new) => Ok(new),
        Started::NothingToBuild(why) => Err(StartError::NothingToBuild(why)),
    }
}

/// Whether a pull request's code counts as untrusted (for a retry of its
/// build, which someone signed in asked for).
async fn is_untrusted(app: &App, project: &str, number: i64) -> Result<bool, StoreError> {
    let facts = app.hub.store.pull_request(project, number).await?;
    let policy = app
        .live()
        .projects
        .get(project)
        .and_then(|p| p.pull_requests.clone())
        .unwrap_or_default();
    Ok(matches!(
        herd_core::change::pull_request_verdict(
            policy.approval,
            &policy.authors,
            herd_core::change::PullRequestFacts {
                fork: facts.as_ref().and_then(|f| f.fork),
                author: facts.as_ref().map(|f| f.author.as_str()),
                approved_by: Some("retry"),
            },
        ),
        herd_core::change::PullRequestVerdict::Build { untrusted: true }
    ))
}

/// The revision and pipeline text a build reads, with the commit's author
/// and subject; Err(text) when the build is to be recorded as failed.
struct Source {
    revision: Option<String>,
    /// The branch or tag, when the revision was asked by one.
    ref_name: Option<String>,
    /// `ref_name` is a tag.
    is_tag: bool,
    pipeline_text: String,
    file: String,
    author: Option<String>,
    message: Option<String>,
}

pub async fn start(app: &App, req: BuildRequest, origin: Origin) -> Result<Started, StartError> {
    let store = &app.hub.store;
    let Some(project) = store.project(&req.project).await? else {
        let known = store
            .projects()
            .await?
            .into_iter()
            .map(|p| p.name)
            .collect();
        return Err(StartError::UnknownProject {
            name: req.project,
            known,
        });
    };
    let reason = req
        .reason
        .clone()
        .unwrap_or_else(|| "started by hand".into());
    let recorder = ErrorBuild {
        app,
        req: &req,
        origin: &origin,
        reason: &reason,
    };
    let source = match resolve(app, &project, &req, &origin).await? {
        Ok(s) => s,
        Err(error) => return recorder.record(None, error).await,
    };
    let pipeline = match Pipeline::parse(&source.file, &source.pipeline_text) {
        Ok(p) => p,
        Err(e) => return recorder.record(source.revision, e.to_string()).await,
    };
    let params = herd_core::pipeline::params::resolve(&pipeline.params, &req.params)
        .map_err(StartError::BadParams)?;
    // Before the jobs are queued, so that no job is matched against a worker
    // that was never asked about what the job needs.
    let settings = &app.hub.settings;
    app.hub
        .want_probes(
            herd_core::probe::probes_for(&pipeline, &settings.probe_commands).into_values(),
        )
        .await?;
    let rules = secret_rules(&settings.secrets.load());
    // A change is of its branch; a build by hand of the ref it names.
    let ref_name = match origin.kind {
        BuildKind::Change | BuildKind::Schedule => origin.branch.clone(),
        BuildKind::Tag => origin.tag.clone(),
        BuildKind::Manual => req.ref_name.clone().or(source.ref_name.clone()),
        BuildKind::Try | BuildKind::PullRequest => None,
    };
    // A build by hand of a tag is of that tag too.
    let tag = match origin.kind {
        BuildKind::Tag => origin.tag.clone(),
        BuildKind::Manual if source.is_tag => source.ref_name.clone(),
        _ => None,
    };
    let no_labels = BTreeMap::new();
    let live = app.live();
    let untrusted_labels = live
        .projects
        .get(&project.name)
        .and_then(|p| p.pull_requests.as_ref())
        .map_or(&no_labels, |p| &p.workers);
    let planned = plan(&PlanRequest {
        project: &project.name,
        pipeline: &pipeline,
        checkout: project.repo.as_deref().zip(source.revision.as_deref()).map(
            |(repo, revision)| Checkout {
                repo,
                revision,
                served: app
                    .live()
                    .projects
                    .get(&project.name)
                    .map_or(crate::config::CheckoutFrom::Server, |p| p.checkout)
                    == crate::config::CheckoutFrom::Server,
            },
        ),
        builder: req.builder.as_deref(),
        only: req.only.as_deref(),
        params: Some(&params),
        change: origin.change.as_ref(),
        patched: origin.patch.is_some(),
        ref_name: ref_name.as_deref(),
        tag: tag.as_deref(),
        pull_request: origin
            .pull_request
            .map(|p| herd_core::plan::PullRequestTrust {
                number: p.number.max(0) as u64,
                untrusted: p.untrusted,
                untrusted_labels,
            }),
        secrets: &rules,
        limits: PlanLimits {
            max_builders: settings.limits.max_builders_per_build,
            max_jobs: settings.limits.max_jobs_per_build,
        },
    });
    let jobs = match planned {
        Ok(Plan::Jobs(jobs)) => jobs,
        Ok(Plan::NothingToBuild(why)) => return Ok(Started::NothingToBuild(why)),
        Err(e) if e.is_refusal() => return Err(StartError::Refused(e)),
        Err(e) => return recorder.record(source.revision, e.to_string()).await,
    };
    let jobs: Vec<NewJob> = jobs
        .into_iter()
        .map(|j| NewJob {
            builder: j.builder,
            name: j.name,
            spec: j.spec,
        })
        .collect();
    let new = NewBuild {
        project: project.name.clone(),
        ref_name: req.ref_name.clone().or(req.rev.clone()),
        revision: source.revision,
        priority: req.priority,
        reason,
        error: None,
        jobs: jobs.clone(),
        author: source.author,
        message: source.message,
        report: app.reports_for(&project.name) && origin.kind != BuildKind::Try,
        patch: origin.patch.clone(),
        branch: origin.branch.clone(),
        kind: origin.kind,
        sender: origin.sender.clone(),
        params,
        // Only a change's build supersedes and is superseded: a build by
        // hand or a try was asked for on purpose. A pull request's newer
        // head always supersedes its older one.
        concurrency_group: match origin.pull_request {
            Some(p) => Some(format!("pull request #{}", p.number)),
            None => pipeline
                .concurrency
                .as_ref()
                .filter(|c| c.cancel_superseded && origin.kind == BuildKind::Change)
                .and_then(|c| c.group_of(&project.name, origin.branch.as_deref())),
        },
        pull_request: origin.pull_request.map(|p| p.number),
        status_revision: req.status_revision.clone(),
    };
    let (build_id, job_ids) = store.create_build(&new).await?;
    tracing::info!(
        build = build_id,
        project = %new.project,
        revision = new.revision.as_deref().unwrap_or(""),
        jobs = job_ids.len(),
        "build {build_id} queued: {}",
        new.reason
    );
    let queued = job_ids
        .into_iter()
        .zip(jobs)
        .map(|(job_id, j)| QueuedJobInfo {
            job_id,
            build_id,
            project: new.project.clone(),
            builder: j.builder,
            job: j.name,
            revision: new.revision.clone(),
            priority: new.priority,
            queued_at: crate::store::now_ms(),
            spec: j.spec,
        })
        .collect();
    app.hub.enqueue(queued);
    if let Some(group) = &new.concurrency_group {
        supersede(app, &new.project, group, build_id).await?;
    }
    app.reporter.wake();
    Ok(Started::Build(build_id))
}

/// Cancels the older builds of `group` that are still queued or running:
/// build `newer` supersedes them.
async fn supersede(app: &App, project: &str, group: &str, newer: i64) -> Result<(), StoreError> {
    for old in app.hub.store.superseded_by(project, group, newer).await? {
        tracing::info!("build {newer} supersedes build {old} (concurrency group `{group}`)");
        app.hub
            .store
            .note_build_error(old, &format!("superseded by build {newer}"))
            .await?;
        app.hub.cancel_build(old).await?;
    }
    Ok(())
}

/// Resolves the revision and reads its herd.yml (for a try, the patched
/// one). The inner Err is a reason to record a failed build: no herd.yml
/// at that revision, git failing.
async fn resolve(
    app: &App,
    project: &crate::store::ProjectRow,
    req: &BuildRequest,
    origin: &Origin,
) -> Result<Result<Source, String>, StartError> {
    match (&project.repo, &project.pipeline) {
        (Some(repo), _) => {
            let rev = req.rev.as_deref();
            let resolved = match &origin.patch {
                Some(patch) => {
                    app.mirrors
                        .resolve_patched(&project.name, repo, rev, patch)
                        .await
                }
                None => app.mirrors.resolve(&project.name, repo, rev).await,
            };
            match resolved {
                Ok(r) => Ok(Ok(Source {
                    revision: Some(r.revision),
                    ref_name: r.ref_name,
                    is_tag: r.is_tag,
                    pipeline_text: r.pipeline_text,
                    file: "herd.yml".into(),
                    author: Some(r.author),
                    message: Some(r.message),
                })),
                Err(crate::git::GitError::UnknownRevision(rev)) => {
                    Err(StartError::UnknownRevision {
                        project: project.name.clone(),
                        rev,
                    })
                }
                Err(e @ crate::git::GitError::PatchDoesNotApply(_)) => {
                    Err(StartError::PatchDoesNotApply(e.to_string()))
                }
                // Broken herd.yml or no herd.yml at that revision: a failed
                // build that shows why, not a silent refusal.
                Err(e) => Ok(Err(e.to_string())),
            }
        }
        (None, Some(_)) if origin.patch.is_some() => {
            Err(StartError::NoRepository(project.name.clone()))
        }
        (None, Some(text)) => Ok(Ok(Source {
            revision: None,
            ref_name: None,
            is_tag: false,
            pipeline_text: text.clone(),
            file: format!("pipeline of project {}", project.name),
            author: None,
            message: None,
        })),
        (None, None) => Err(StartError::NoSource(project.name.clone())),
    }
}

/// The server's secrets as the planner sees them: who may use each.
fn secret_rules(
    secrets: &BTreeMap<String, crate::config::SecretConfig>,
) -> BTreeMap<String, SecretRule> {
    secrets
        .iter()
        .map(|(name, s)| {
            (
                name.clone(),
                SecretRule {
                    builders: s.builders.clone(),
                    labels: s.labels.clone(),
                    projects: s.projects.clone(),
                    refs: s.refs.clone(),
                    try_builds: s.try_builds,
                },
            )
        })
        .collect()
}

/// Records a build that cannot run, with the reason it cannot.
struct ErrorBuild<'a> {
    app: &'a App,
    req: &'a BuildRequest,
    origin: &'a Origin,
    reason: &'a str,
}

impl ErrorBuild<'_> {
    async fn record(&self, revision: Option<String>, error: String) -> Result<Started, StartError> {
        let app = self.app;
        let why = error.clone();
        let (id, _) = app
            .hub
            .store
            .create_build(&NewBuild {
                project: self.req.project.clone(),
                ref_name: self.req.rev.clone(),
                priority: self.req.priority,
                reason: self.reason.to_string(),
                error: Some(error),
                jobs: vec![],
                author: None,
                message: None,
                report: revision.is_some()
                    && app.reports_for(&self.req.project)
                    && self.origin.kind != BuildKind::Try,
                revision,
                branch: self.origin.branch.clone(),
                kind: self.origin.kind,
                sender: self.origin.sender.clone(),
                patch: None,
                concurrency_group: None,
                params: BTreeMap::new(),
                pull_request: self.origin.pull_request.map(|p| p.number),
                status_revision: self.req.status_revision.clone(),
            })
            .await?;
        tracing::warn!(
            build = id,
            project = %self.req.project,
            "build {id} could not start: {why}"
        );
        app.hub.changed();
        app.reporter.wake();
        Ok(Started::Build(id))
    }
}
