//! Lowering a builder's or job's matrix: one [`JobDef`] per cell, with the
//! cell's values put in everywhere the job may name them.

use super::matrix::{self, Cell, RawMatrix};
use super::{JobDef, Lower, RawArtifacts, RawSplit, RawStep, Scalar, MAIN_JOB};
use crate::config_error::ConfigError;
use serde_saphyr::Spanned;

impl Lower<'_> {
    /// The cells of a `matrix:` (one empty cell when there is none).
    pub(super) fn matrix_cells(
        &self,
        raw: Option<&Spanned<RawMatrix>>,
        name: Option<&Spanned<String>>,
    ) -> Result<Vec<Cell>, ConfigError> {
        let Some(m) = raw else {
            if let Some(n) = name {
                return Err(self
                    .err(
                        &n.referenced,
                        "`name:` names the jobs of a matrix, and there is no `matrix:` here",
                    )
                    .with_help(
                        "remove `name:`, or add `matrix:` with the axes the jobs vary over",
                    ));
            }
            return Ok(vec![Cell::new()]);
        };
        matrix::cells(&m.value).map_err(|(axis, message)| {
            let at = axis
                .and_then(|i| m.value.axes.get(i))
                .map_or(&m.referenced, |(k, _)| &k.referenced);
            self.err(at, message).with_help(
                "a matrix maps each axis to a list of values, e.g.\nmatrix:\n  python: [\"3.12\", \"3.13\"]\n  exclude:\n    - {python: \"3.12\"}",
            )
        })
    }

    /// The name of the job of `cell`: `base` alone without a matrix; else
    /// the `name:` template, or `base-VALUES` (`VALUES` alone for a builder's
    /// single job).
    pub(super) fn cell_name(
        &self,
        at: &Spanned<String>,
        template: Option<&Spanned<String>>,
        base: &str,
        cell: &Cell,
    ) -> Result<Spanned<String>, ConfigError> {
        let value = match template {
            _ if cell.is_empty() => base.to_string(),
            Some(t) => self.subst(t, cell)?.value,
            None if base == MAIN_JOB => matrix::default_name(cell),
            None => format!("{base}-{}", matrix::default_name(cell)),
        };
        let named = Spanned {
            value,
            referenced: template.map_or(at.referenced, |t| t.referenced),
            defined: at.defined,
        };
        self.check_name(&named, "job")?;
        Ok(named)
    }

    /// The job of one cell: the builder's and the job's requirements and
    /// the steps, each with the cell's values put in.
    pub(super) fn cell_job(
        &self,
        at: &Spanned<String>,
        cell: &Cell,
        builder_requires: &[Spanned<String>],
        job_requires: &[Spanned<String>],
        steps: &[RawStep],
    ) -> Result<JobDef, ConfigError> {
        let builder_requires = self.requirements(&self.subst_all(builder_requires, cell)?)?;
        let own = self.requirements(&self.subst_all(job_requires, cell)?)?;
        let steps = steps
            .iter()
            .map(|s| self.cell_step(at, s, cell))
            .collect::<Result<Vec<_>, _>>()?;
        self.job(at, at.value.clone(), &builder_requires, own, steps)
    }

    fn cell_step(
        &self,
        at: &Spanned<String>,
        raw: &RawStep,
        cell: &Cell,
    ) -> Result<RawStep, ConfigError> {
        let opt = |s: &Option<Spanned<String>>| s.as_ref().map(|s| self.subst(s, cell)).transpose();
        let split = match &raw.split {
            None => None,
            Some(sp) => Some(Spanned {
                value: RawSplit {
                    list: self.subst(&sp.value.list, cell)?,
                    run: self.subst(&sp.value.run, cell)?,
                    junit: opt(&sp.value.junit)?,
                    tap: opt(&sp.value.tap)?,
                    subunit: opt(&sp.value.subunit)?,
                    results: sp.value.results.clone(),
                    workers: sp.value.workers.clone(),
                    flaky: sp.value.flaky.clone(),
                },
                referenced: sp.referenced,
                defined: sp.defined,
            }),
        };
        let mut env = indexmap::IndexMap::new();
        for (k, v) in &raw.env {
            let text = v.clone().into_text();
            let value = matrix::substitute(&text, cell).map_err(|m| {
                self.err(
                    &at.referenced,
                    format!("in env `{k}` of `{}`: {m}", at.value),
                )
            })?;
            env.insert(k.clone(), Scalar::Text(value));
        }
        Ok(RawStep {
            name: opt(&raw.name)?,
            run: opt(&raw.run)?,
            split,
            timeout: opt(&raw.timeout)?,
            env,
            always: raw.always,
            results: raw.results.clone(),
            artifacts: match &raw.artifacts {
                None => None,
                Some(a) => Some(Spanned {
                    value: match &a.value {
                        RawArtifacts::Paths(p) => {
                            RawArtifacts::Paths(self.subst_paths(a, p, cell)?)
                        }
                        RawArtifacts::With { paths, when } => RawArtifacts::With {
                            paths: self.subst_paths(a, paths, cell)?,
                            when: when.clone(),
                        },
                    },
                    referenced: a.referenced,
                    defined: a.defined,
                }),
            },
        })
    }

    fn subst_paths<T>(
        &self,
        at: &Spanned<T>,
        paths: &[String],
        cell: &Cell,
    ) -> Result<Vec<String>, ConfigError> {
        paths
            .iter()
            .map(|p| matrix::substitute(p, cell).map_err(|m| self.err(&at.referenced, m)))
            .collect()
    }

    fn subst(&self, s: &Spanned<String>, cell: &Cell) -> Result<Spanned<String>, ConfigError> {
        match matrix::substitute(&s.value, cell) {
            Ok(value) => Ok(Spanned {
                value,
                referenced: s.referenced,
                defined: s.defined,
            }),
            Err(m) => Err(self.err(&s.referenced, m)),
        }
    }

    fn subst_all(
        &self,
        list: &[Spanned<String>],
        cell: &Cell,
    ) -> Result<Vec<Spanned<String>>, ConfigError> {
        list.iter().map(|s| self.subst(s, cell)).collect()
    }
}
