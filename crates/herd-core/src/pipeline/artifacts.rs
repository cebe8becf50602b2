//! `artifacts:` of a job, a builder with `steps:` or a step: the files a
//! job keeps when it ends, merged into [`JobDef::artifacts`].

use super::matrix::{self, Cell};
use super::{Artifacts, JobDef, Lower, RawArtifacts};
use crate::config_error::ConfigError;
use serde_saphyr::Spanned;

/// Most patterns one job may declare.
pub const MAX_ARTIFACT_PATTERNS: usize = 64;

impl Lower<'_> {
    /// Adds `raw` (with the cell's values put in) to the job's artifacts.
    pub(super) fn add_artifacts(
        &self,
        job: &mut JobDef,
        raw: Option<&Spanned<RawArtifacts>>,
        cell: &Cell,
    ) -> Result<(), ConfigError> {
        let Some(raw) = raw else { return Ok(()) };
        let (paths, when) = match &raw.value {
            RawArtifacts::Paths(p) => (p, None),
            RawArtifacts::With { paths, when } => (paths, when.as_deref()),
        };
        let always = match when.map(str::trim) {
            None | Some("on_success") => false,
            Some("always") => true,
            Some(other) => {
                return Err(self
                    .err(&raw.referenced, format!("`when: {other}` is not a time herd uploads artifacts"))
                    .with_help("write `when: always` (whatever the job's result) or leave it out (only when every step succeeded)"))
            }
        };
        if paths.is_empty() {
            return Err(self
                .err(&raw.referenced, "`artifacts:` lists no paths")
                .with_help("list the files to keep, e.g. `artifacts: [dist/*.whl]`"));
        }
        let into = job.artifacts.get_or_insert_with(|| Artifacts {
            paths: Vec::new(),
            always: false,
        });
        into.always |= always;
        for p in paths {
            let p = matrix::substitute(p, cell).map_err(|m| self.err(&raw.referenced, m))?;
            if let Err(e) = crate::change::compile_glob(&p) {
                return Err(self
                    .err(&raw.referenced, format!("invalid pattern `{p}` in `artifacts:`: {e}"))
                    .with_help("a path relative to the workspace; `*` matches within a directory, `**` across, `!` excludes"));
            }
            if p.trim_start_matches('!').starts_with('/') || p.split('/').any(|s| s == "..") {
                return Err(self
                    .err(&raw.referenced, format!("`{p}` in `artifacts:` is outside the workspace"))
                    .with_help("artifacts are files of the job's workspace: write a relative path such as `dist/*.whl`"));
            }
            if !into.paths.contains(&p) {
                into.paths.push(p);
            }
        }
        if into.paths.len() > MAX_ARTIFACT_PATTERNS {
            return Err(self
                .err(
                    &raw.referenced,
                    format!("a job may declare at most {MAX_ARTIFACT_PATTERNS} artifact patterns"),
                )
                .with_help("use `**` to take a whole directory"));
        }
        Ok(())
    }
}
