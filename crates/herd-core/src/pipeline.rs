//! herd.yml: the pipeline model (builders, jobs, steps) and its parser.
//!
//! A builder is one column of the web page. It has either `steps:` (one job,
//! named [`MAIN_JOB`]) or `jobs:` (several independent jobs that may run on
//! different workers at once). A job's steps run in order, on one worker, in
//! one workspace.

use crate::config_error::ConfigError;
use crate::duration::parse_duration;
pub use crate::needs::RunIf;
use crate::requirement::Requirement;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;
use std::collections::BTreeMap;
use std::time::Duration;

/// The name of the single job of a builder that has `steps:`.
pub const MAIN_JOB: &str = "main";
/// Largest herd.yml accepted, so that a hostile file cannot exhaust memory.
pub const MAX_PIPELINE_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pipeline {
    pub builders: Vec<Builder>,
    /// Builds of changes in one group supersede each other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
    /// Inputs a build by hand may set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<Param>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Builder {
    pub name: String,
    pub requires: Vec<Requirement>,
    pub jobs: Vec<JobDef>,
    /// At most this many of the builder's jobs run at once (all builds).
    pub max_concurrent: Option<u32>,
    /// Changes on these branches only (globs; empty: every watched branch).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub branches: Vec<String>,
    /// Changes touching these files only (globs, `!` excludes; empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Whether it builds new tags: also (default), only, never.
    #[serde(default, skip_serializing_if = "crate::change::TagRule::is_also")]
    pub tags: crate::change::TagRule,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobDef {
    pub name: String,
    /// The builder's requirements followed by the job's own.
    pub requires: Vec<Requirement>,
    pub steps: Vec<Step>,
    /// The jobs it waits for, `builder/job` (a matrix's every cell, a
    /// builder's every job, resolved).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    /// When it runs once they have ended.
    #[serde(default, skip_serializing_if = "RunIf::is_success")]
    pub run_if: RunIf,
    /// The job as written in herd.yml (`jobs:` key, or `main`): a matrix
    /// cell's name differs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub family: String,
    /// What it uploads when it ends (its own `artifacts:` and its steps').
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<Artifacts>,
    /// The needed jobs whose artifacts it gets before its first step
    /// (`needs: [{job: J, artifacts: true}]`), `builder/job`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts_from: Vec<String>,
}

/// `artifacts:` of a job or step: the files it keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifacts {
    /// Globs relative to the workspace (`*` within a directory, `**`
    /// across, `!` excludes).
    pub paths: Vec<String>,
    /// Uploaded whatever the job's result (`when: always`); else only
    /// after every step succeeded.
    #[serde(default)]
    pub always: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    /// The command; for a split step, its `split.run`.
    pub run: String,
    /// Set on a step that splits a test suite over several workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitDef>,
    /// Where a `run:` step's per-test results are (`results:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<herd_proto::StepResults>,
    pub timeout: Option<Duration>,
    pub env: BTreeMap<String, String>,
    pub always: bool,
}

/// `split:` on a step: one test suite spread over several workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitDef {
    /// Prints one test id per line.
    pub list: String,
    /// Runs a subset: `{tests}`, `{junit}` and `$HERD_TESTS_FILE`.
    pub run: String,
    /// Where `run` writes its report (JUnit, TAP or subunit v2, by
    /// `format`), relative to the workspace.
    pub junit: Option<String>,
    #[serde(default, skip_serializing_if = "herd_proto::ReportFormat::is_junit")]
    pub format: herd_proto::ReportFormat,
    /// `results: {pattern}`: a regex over each batch's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// At most this many workers run the suite at once.
    pub workers: u32,
    /// Whether a test that failed then passed fails the build.
    pub flaky_fails: bool,
}

/// Where custom probes are defined instead of herd.yml.
pub const PROBES_HELP: &str = "a probe's command runs on every worker, so it comes from whoever runs them: the server's admin (`probes:` in the server config) or a worker's owner (`herd worker --probe NAME=COMMAND`); herd.yml names a probe in `requires:`, e.g. `requires: [wx >= 3.2]`";

/// Most workers one split step may use.
pub const MAX_SPLIT_WORKERS: u32 = 64;

// ---- the file as written -------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    /// Refused with a word on where probes are defined.
    probes: Option<Spanned<serde::de::IgnoredAny>>,
    builders: Option<IndexMap<Spanned<String>, RawBuilder>>,
    concurrency: Option<Spanned<RawConcurrency>>,
    #[serde(default)]
    params: IndexMap<Spanned<String>, Spanned<params::RawParam>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConcurrency {
    group: Option<Spanned<String>>,
    cancel_superseded: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuilder {
    #[serde(default)]
    requires: Vec<Spanned<String>>,
    steps: Option<Vec<RawStep>>,
    jobs: Option<IndexMap<Spanned<String>, RawJob>>,
    matrix: Option<Spanned<matrix::RawMatrix>>,
    /// The name of each matrix job, with `${{ matrix.AXIS }}`.
    name: Option<Spanned<String>>,
    #[serde(default)]
    needs: Vec<Spanned<RawNeed>>,
    #[serde(rename = "if")]
    run_if: Option<Spanned<String>>,
    artifacts: Option<Spanned<RawArtifacts>>,
    max_concurrent: Option<Spanned<u32>>,
    #[serde(default)]
    branches: Vec<Spanned<String>>,
    #[serde(default)]
    paths: Vec<Spanned<String>>,
    #[serde(default)]
    tags: crate::change::TagRule,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    #[serde(default)]
    requires: Vec<Spanned<String>>,
    steps: Option<Vec<RawStep>>,
    matrix: Option<Spanned<matrix::RawMatrix>>,
    name: Option<Spanned<String>>,
    #[serde(default)]
    needs: Vec<Spanned<RawNeed>>,
    #[serde(rename = "if")]
    run_if: Option<Spanned<String>>,
    artifacts: Option<Spanned<RawArtifacts>>,
}

/// One of `needs:`: a name, or `{job: NAME, artifacts: true}`.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum RawNeed {
    Name(String),
    With(RawNeedWith),
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawNeedWith {
    job: String,
    #[serde(default)]
    artifacts: bool,
}

/// `artifacts:` as a list of globs, or `{paths: [...], when: always}`.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
#[serde(deny_unknown_fields)]
enum RawArtifacts {
    Paths(Vec<String>),
    With {
        paths: Vec<String>,
        when: Option<String>,
    },
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: Option<Spanned<String>>,
    run: Option<Spanned<String>>,
    split: Option<Spanned<RawSplit>>,
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    env: IndexMap<String, Scalar>,
    #[serde(default)]
    always: bool,
    artifacts: Option<Spanned<RawArtifacts>>,
    results: Option<Spanned<RawStepResults>>,
}

/// `results:` of a `run:` step: one report file, or a pattern.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawStepResults {
    junit: Option<Spanned<String>>,
    tap: Option<Spanned<String>>,
    subunit: Option<Spanned<String>>,
    pattern: Option<Spanned<String>>,
}

/// `results: {pattern: REGEX}` of a split.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawResults {
    pattern: Spanned<String>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawSplit {
    list: Spanned<String>,
    run: Spanned<String>,
    junit: Option<Spanned<String>>,
    tap: Option<Spanned<String>>,
    subunit: Option<Spanned<String>>,
    results: Option<Spanned<RawResults>>,
    workers: Option<Spanned<u32>>,
    flaky: Option<Spanned<String>>,
}

/// An env value: YAML lets people write `FOO: 1` or `FOO: true`; all are text.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn into_text(self) -> String {
        match self {
            Scalar::Text(s) => s,
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

impl Pipeline {
    /// Parses and validates a herd.yml. `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Pipeline, ConfigError> {
        if text.len() > MAX_PIPELINE_BYTES {
            return Err(ConfigError::at(
                file,
                text,
                0,
                0,
                format!(
                    "the file is {} bytes, more than the limit of {MAX_PIPELINE_BYTES}",
                    text.len()
                ),
            ));
        }
        let raw: RawPipeline =
            serde_saphyr::from_str(text).map_err(|e| ConfigError::from_yaml(file, text, &e))?;
        Lower { file, text }.pipeline(raw)
    }

    pub fn builder(&self, name: &str) -> Option<&Builder> {
        self.builders.iter().find(|b| b.name == name)
    }

    /// Jobs that no worker could ever run (`BUILDER/JOB`, and why): their
    /// requirements contradict each other, as a matrix cell's may
    /// (`python3 == 3.10` from the cell, `python3 >= 3.12` from the builder).
    pub fn impossible_jobs(&self) -> Vec<(String, String)> {
        self.builders
            .iter()
            .flat_map(|b| {
                b.jobs.iter().filter_map(move |j| {
                    crate::requirement::contradiction(&j.requires)
                        .map(|why| (format!("{}/{}", b.name, j.name), why))
                })
            })
            .collect()
    }
}

/// A job's `needs:` as written (its builder's and its own).
type RawNeeds = Vec<Spanned<RawNeed>>;

struct Lower<'a> {
    file: &'a str,
    text: &'a str,
}

impl Lower<'_> {
    fn err(&self, loc: &serde_saphyr::Location, msg: impl Into<String>) -> ConfigError {
        ConfigError::at_location(self.file, self.text, loc, msg)
    }

    fn pipeline(&self, raw: RawPipeline) -> Result<Pipeline, ConfigError> {
        if let Some(p) = &raw.probes {
            // A probe's command runs on every connected worker: code from
            // whoever can push must not get there.
            return Err(self
                .err(&p.referenced, "`probes:` cannot be defined in herd.yml")
                .with_help(PROBES_HELP));
        }
        let Some(raw_builders) = raw.builders else {
            return Err(ConfigError::at(
                self.file,
                self.text,
                1,
                1,
                "no `builders:`: a herd.yml declares at least one builder",
            )
            .with_help("start with:\nbuilders:\n  linux:\n    steps:\n      - run: make test"));
        };
        if raw_builders.is_empty() {
            return Err(
                ConfigError::at(self.file, self.text, 1, 1, "`builders:` is empty")
                    .with_help("declare at least one builder with `steps:` or `jobs:`"),
            );
        }
        let mut builders = Vec::new();
        let mut raw_needs = Vec::new();
        for (name, b) in raw_builders {
            let (builder, needs) = self.builder(name, b)?;
            builders.push(builder);
            raw_needs.push(needs);
        }
        self.resolve_needs(&mut builders, &raw_needs)?;
        let concurrency = match raw.concurrency {
            None => None,
            Some(c) => {
                let group = match c.value.group {
                    None => "${{ branch }}".to_string(),
                    Some(g) => {
                        if let Some(word) = concurrency::unknown_word(&g.value) {
                            return Err(self
                                .err(&g.referenced, format!("`{word}` is not something a group can be made of"))
                                .with_help("a group uses ${{ branch }}, ${{ ref }} and ${{ project }}, e.g. `group: ${{ branch }}`"));
                        }
                        g.value
                    }
                };
                Some(Concurrency {
                    group,
                    cancel_superseded: c.value.cancel_superseded.unwrap_or(true),
                })
            }
        };
        let params = self.params(raw.params)?;
        Ok(Pipeline {
            builders,
            concurrency,
            params,
        })
    }

    /// A builder, and per job the `needs:` as written (resolved once every
    /// builder is known).
    fn builder(
        &self,
        name: Spanned<String>,
        raw: RawBuilder,
    ) -> Result<(Builder, Vec<RawNeeds>), ConfigError> {
        self.check_name(&name, "builder")?;
        let builder_if = self.run_if(raw.run_if.as_ref())?;
        let mut job_needs: Vec<RawNeeds> = Vec::new();
        let builder_cells = self.matrix_cells(raw.matrix.as_ref(), raw.name.as_ref())?;
        // The builder's own requirements: those every cell shares.
        let shared: Vec<Spanned<String>> = raw
            .requires
            .iter()
            .filter(|r| !matrix::mentions_matrix(&r.value))
            .cloned()
            .collect();
        let requires = self.requirements(&shared)?;
        let jobs = match (raw.steps, raw.jobs) {
            (Some(_), Some(_)) => {
                return Err(self
                    .err(
                        &name.referenced,
                        format!("builder `{}` has both `steps:` and `jobs:`", name.value),
                    )
                    .with_help(
                        "use `steps:` for one job, or move the steps into a job under `jobs:`",
                    ))
            }
            (None, None) => {
                return Err(self
                    .err(
                        &name.referenced,
                        format!("builder `{}` is empty", name.value),
                    )
                    .with_help("give it `steps:` (one job) or `jobs:` (several jobs)"))
            }
            (Some(steps), None) => {
                let mut jobs = Vec::new();
                for cell in &builder_cells {
                    let at = self.cell_name(&name, raw.name.as_ref(), MAIN_JOB, cell)?;
                    let mut job = self.cell_job(&at, cell, &raw.requires, &[], &steps)?;
                    job.family = MAIN_JOB.to_string();
                    job.run_if = builder_if.unwrap_or_default();
                    self.add_artifacts(&mut job, raw.artifacts.as_ref(), cell)?;
                    jobs.push(job);
                    job_needs.push(raw.needs.clone());
                }
                jobs
            }
            (None, Some(raw_jobs)) => {
                if raw_jobs.is_empty() {
                    return Err(self
                        .err(
                            &name.referenced,
                            format!("builder `{}` has no jobs", name.value),
                        )
                        .with_help("add a job under `jobs:`"));
                }
                let mut jobs = Vec::new();
                for (job_name, job) in raw_jobs {
                    self.check_name(&job_name, "job")?;
                    let Some(steps) = job.steps else {
                        return Err(self
                            .err(
                                &job_name.referenced,
                                format!("job `{}` is empty", job_name.value),
                            )
                            .with_help("give it `steps:`"));
                    };
                    let job_cells = matrix::product(
                        &builder_cells,
                        &self.matrix_cells(job.matrix.as_ref(), job.name.as_ref())?,
                    );
                    let run_if = self.run_if(job.run_if.as_ref())?.or(builder_if);
                    for cell in &job_cells {
                        let at =
                            self.cell_name(&job_name, job.name.as_ref(), &job_name.value, cell)?;
                        let mut def =
                            self.cell_job(&at, cell, &raw.requires, &job.requires, &steps)?;
                        def.family = job_name.value.clone();
                        def.run_if = run_if.unwrap_or_default();
                        self.add_artifacts(&mut def, raw.artifacts.as_ref(), cell)?;
                        self.add_artifacts(&mut def, job.artifacts.as_ref(), cell)?;
                        jobs.push(def);
                        job_needs.push(raw.needs.iter().chain(&job.needs).cloned().collect());
                    }
                }
                jobs
            }
        };
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = jobs.iter().find(|j| !seen.insert(j.name.as_str())) {
            return Err(self
                .err(
                    &name.referenced,
                    format!("builder `{}` has two jobs named `{}`", name.value, dup.name),
                )
                .with_help(
                    "give the matrix a `name:` that tells its cells apart, or rename a job",
                ));
        }
        if let Some(m) = &raw.max_concurrent {
            if m.value == 0 {
                return Err(self
                    .err(&m.referenced, "`max_concurrent` must be at least 1")
                    .with_help("leave it out for no limit"));
            }
        }
        let builder = Builder {
            name: name.value,
            requires,
            jobs,
            max_concurrent: raw.max_concurrent.map(|m| m.value),
            branches: self.globs(&raw.branches, "branches")?,
            paths: self.globs(&raw.paths, "paths")?,
            tags: raw.tags,
        };
        Ok((builder, job_needs))
    }

    fn globs(&self, raw: &[Spanned<String>], key: &str) -> Result<Vec<String>, ConfigError> {
        raw.iter()
            .map(|g| match crate::change::compile_glob(&g.value) {
                Ok(_) => Ok(g.value.clone()),
                Err(e) => Err(self
                    .err(
                        &g.referenced,
                        format!("invalid pattern `{}` in `{key}:`: {e}", g.value),
                    )
                    .with_help(
                        "`*` matches within one path segment, `**` across segments, `!` excludes",
                    )),
            })
            .collect()
    }

    fn job(
        &self,
        at: &Spanned<String>,
        name: String,
        builder_requires: &[Requirement],
        own_requires: Vec<Requirement>,
        raw_steps: Vec<RawStep>,
    ) -> Result<JobDef, ConfigError> {
        if raw_steps.is_empty() {
            return Err(self
                .err(
                    &at.referenced,
                    format!("`{}` has an empty list of steps", at.value),
                )
                .with_help("add a step such as `- run: make test`"));
        }
        let mut steps: Vec<Step> = Vec::new();
        // Where the split step is, once seen: only `always` steps may follow.
        let mut split_at: Option<String> = None;
        let step_artifacts: Vec<_> = raw_steps
            .iter()
            .filter_map(|r| r.artifacts.clone())
            .collect();
        for raw in raw_steps {
            let (run, split) = self.step_action(at, &raw)?;
            let results = self.step_results(&raw)?;
            let explicit = raw.name.is_some();
            let mut step_name = match &raw.name {
                Some(n) => {
                    if n.value.trim().is_empty() {
                        return Err(self.err(&n.referenced, "a step name cannot be empty"));
                    }
                    if let Some(c) = n.value.chars().find(|c| is_hidden_char(*c)) {
                        return Err(self
                            .err(
                                &n.referenced,
                                format!("step name contains the control character {}", c.escape_unicode()),
                            )
                            .with_help("a step name is shown on pages and terminals: use printable text on one line"));
                    }
                    if n.value.chars().count() > MAX_STEP_NAME {
                        return Err(self
                            .err(
                                &n.referenced,
                                format!("a step name has at most {MAX_STEP_NAME} characters"),
                            )
                            .with_help("shorten the name; the command can say the rest"));
                    }
                    n.value.clone()
                }
                None if split.is_some() => "tests".to_string(),
                None => default_step_name(&run),
            };
            if steps.iter().any(|s| s.name == step_name) {
                if let (true, Some(n)) = (explicit, &raw.name) {
                    return Err(self
                        .err(&n.referenced, format!("duplicate step name `{step_name}`"))
                        .with_help("every step of a job needs its own name"));
                }
                let base = step_name.clone();
                let mut i = 2;
                while steps.iter().any(|s| s.name == step_name) {
                    step_name = format!("{base} ({i})");
                    i += 1;
                }
            }
            let loc = raw
                .run
                .as_ref()
                .map(|r| r.referenced)
                .or(raw.split.as_ref().map(|s| s.referenced))
                .unwrap_or(at.referenced);
            if let Some(first) = &split_at {
                if split.is_some() {
                    return Err(self
                        .err(&loc, format!("`{}` has a second `split:` step", at.value))
                        .with_help(
                            "a job splits one suite; put the other suite in a job of its own",
                        ));
                }
                if !raw.always {
                    return Err(self
                        .err(
                            &loc,
                            format!(
                                "step `{step_name}` follows the split step `{first}` but is not `always: true`"
                            ),
                        )
                        .with_help("only cleanup steps (`always: true`) may follow a split step; make another job for the rest"));
                }
            }
            if split.is_some() {
                split_at = Some(step_name.clone());
            }
            let timeout = match &raw.timeout {
                None => None,
                Some(t) => Some(parse_duration(&t.value).map_err(|e| {
                    self.err(&t.referenced, format!("invalid timeout `{}`: {e}", t.value))
                        .with_help("write a duration such as 90s, 20m, 1h or 1h30m")
                })?),
            };
            steps.push(Step {
                name: step_name,
                run,
                split,
                results,
                timeout,
                env: raw
                    .env
                    .into_iter()
                    .map(|(k, v)| (k, v.into_text()))
                    .collect(),
                always: raw.always,
            });
        }
        let mut requires = builder_requires.to_vec();
        requires.extend(own_requires);
        let mut job = JobDef {
            family: name.clone(),
            name,
            requires,
            steps,
            needs: Vec::new(),
            run_if: RunIf::Success,
            artifacts: None,
            artifacts_from: Vec::new(),
        };
        for raw in &step_artifacts {
            self.add_artifacts(&mut job, Some(raw), &matrix::Cell::new())?;
        }
        Ok(job)
    }

    fn requirements(&self, raw: &[Spanned<String>]) -> Result<Vec<Requirement>, ConfigError> {
        raw.iter()
            .map(|r| {
                Requirement::parse(&r.value).map_err(|e| {
                    let loc = &r.referenced;
                    // Point inside the requirement when it is written plainly on one line.
                    let col = if self.plain_at(loc, &r.value) {
                        loc.column() + e.offset as u64
                    } else {
                        loc.column()
                    };
                    ConfigError::at(
                        self.file,
                        self.text,
                        loc.line(),
                        col,
                        format!("invalid requirement `{}`: {}", r.value, e.message),
                    )
                    .with_help("examples: `python3`, `!gtk`, `python3 >= 3.10`, `os == linux | os == freebsd`")
                })
            })
            .collect()
    }

    /// Whether `value` stands unquoted at `loc`, so that offsets map to columns.
    fn plain_at(&self, loc: &serde_saphyr::Location, value: &str) -> bool {
        let Some(line) = self.text.lines().nth(loc.line().saturating_sub(1) as usize) else {
            return false;
        };
        let start = loc.column().saturating_sub(1) as usize;
        line.chars()
            .skip(start)
            .collect::<String>()
            .starts_with(value)
    }

    fn check_name(&self, name: &Spanned<String>, what: &str) -> Result<(), ConfigError> {
        let n = &name.value;
        let ok = !n.is_empty()
            && n.len() <= 100
            && n.chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if ok {
            Ok(())
        } else {
            Err(self
                .err(&name.referenced, format!("invalid {what} name `{n}`"))
                .with_help("names use letters, digits, `-`, `_` and `.`, at most 100 characters"))
        }
    }
}

/// Longest step name, in characters.
pub const MAX_STEP_NAME: usize = 200;

/// Characters that a terminal or a page would act on instead of show: C0
/// and C1 controls, DEL, and the bidirectional overrides that reorder text
/// ("Trojan Source").
pub fn is_hidden_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A step without a name is named after the first line of its command,
/// with anything a terminal would act on made a space.
fn default_step_name(run: &str) -> String {
    let first: String = run
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .chars()
        .map(|c| if is_hidden_char(c) { ' ' } else { c })
        .collect();
    let first = first.trim();
    if first.chars().count() > 60 {
        format!("{}…", first.chars().take(59).collect::<String>())
    } else {
        first.to_string()
    }
}

mod artifacts;
mod cells;
pub mod concurrency;
mod dag;
pub mod params;
mod steps;
pub use params::Param;
mod matrix;
pub use concurrency::Concurrency;
pub use matrix::MAX_CELLS;

#[cfg(test)]
mod tests;
