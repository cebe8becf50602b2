//! A step's action as written: `run:`, or `split:` with its report.

use super::{Lower, RawStep, SplitDef, MAX_SPLIT_WORKERS};
use crate::config_error::ConfigError;
use herd_proto::{ReportFormat, StepResults};
use serde_saphyr::Spanned;

impl Lower<'_> {
    /// A step's command, or its split: exactly one of `run:` and `split:`.
    pub(super) fn step_action(
        &self,
        at: &Spanned<String>,
        raw: &RawStep,
    ) -> Result<(String, Option<SplitDef>), ConfigError> {
        let nonempty = |s: &Spanned<String>, what: &str| {
            if s.value.trim().is_empty() {
                Err(self.err(
                    &s.referenced,
                    format!("`{what}` is empty: give the command to run"),
                ))
            } else {
                Ok(s.value.clone())
            }
        };
        match (&raw.run, &raw.split) {
            (Some(run), None) => Ok((nonempty(run, "run:")?, None)),
            (None, Some(split)) => {
                let sp = &split.value;
                let list = nonempty(&sp.list, "list:")?;
                let run = nonempty(&sp.run, "run:")?;
                if !run.contains("{tests}") && !run.contains("HERD_TESTS_FILE") {
                    return Err(self
                        .err(&sp.run.referenced, "the split's `run:` names no tests")
                        .with_help("put `{tests}` (the ids, shell-quoted) or `@$HERD_TESTS_FILE` (a file with one id per line) in the command"));
                }
                use herd_proto::ReportFormat;
                let reports: Vec<(ReportFormat, &Spanned<String>)> = [
                    (ReportFormat::Junit, &sp.junit),
                    (ReportFormat::Tap, &sp.tap),
                    (ReportFormat::Subunit, &sp.subunit),
                ]
                .into_iter()
                .filter_map(|(f, p)| p.as_ref().map(|p| (f, p)))
                .collect();
                let pattern = match &sp.results {
                    None => None,
                    Some(r) => {
                        if let Some((f, _)) = reports.first() {
                            return Err(self
                                .err(&r.referenced, format!("a split reads its results from `{}:` or from `results:`, not both", f.key()))
                                .with_help("keep the report file when the runner writes one"));
                        }
                        crate::results::compile_pattern(&r.value.pattern.value).map_err(|e| {
                            self.err(&r.value.pattern.referenced, e).with_help(
                                "e.g. `pattern: '^(?P<id>\\S+) \\.\\.\\. (?P<outcome>ok|FAIL|ERROR|skipped)'`",
                            )
                        })?;
                        Some(r.value.pattern.value.clone())
                    }
                };
                if let [_, (second, at), ..] = reports.as_slice() {
                    return Err(self
                        .err(
                            &at.referenced,
                            format!(
                                "a split has one report, and this one has `{}:` too",
                                second.key()
                            ),
                        )
                        .with_help(
                            "keep the one the runner writes: `junit:`, `tap:` or `subunit:`",
                        ));
                }
                let format = reports.first().map_or(ReportFormat::Junit, |(f, _)| *f);
                for f in [
                    ReportFormat::Junit,
                    ReportFormat::Tap,
                    ReportFormat::Subunit,
                ] {
                    let placeholder = format!("{{{}}}", f.key());
                    if run.contains(&placeholder) && (reports.is_empty() || format != f) {
                        return Err(self
                            .err(
                                &sp.run.referenced,
                                format!(
                                    "`run:` uses `{placeholder}` but the split has no `{}:`",
                                    f.key()
                                ),
                            )
                            .with_help(format!(
                                "add `{}: reports/results` (where the runner writes its report)",
                                f.key()
                            )));
                    }
                }
                let junit = match reports.first().map(|(_, p)| *p) {
                    None => None,
                    Some(j) => {
                        let p = j.value.trim();
                        if p.is_empty() || p.starts_with('/') || p.split('/').any(|c| c == "..") {
                            return Err(self
                                .err(
                                    &j.referenced,
                                    format!("invalid `{}:` path `{}`", format.key(), j.value),
                                )
                                .with_help(
                                    "give a path inside the workspace, such as reports/junit.xml",
                                ));
                        }
                        Some(p.to_string())
                    }
                };
                let workers = match &sp.workers {
                    None => 2,
                    Some(w) if w.value == 0 || w.value > MAX_SPLIT_WORKERS => {
                        return Err(self
                            .err(
                                &w.referenced,
                                format!("`workers: {}` is out of range", w.value),
                            )
                            .with_help(format!("give a number from 1 to {MAX_SPLIT_WORKERS}")))
                    }
                    Some(w) => w.value,
                };
                let flaky_fails = match &sp.flaky {
                    None => false,
                    Some(f) => match f.value.as_str() {
                        "pass" => false,
                        "fail" => true,
                        other => {
                            return Err(self
                                .err(&f.referenced, format!("invalid `flaky: {other}`"))
                                .with_help("`flaky: pass` (the default: a test that failed then passed does not fail the build) or `flaky: fail`"))
                        }
                    },
                };
                Ok((
                    run.clone(),
                    Some(SplitDef {
                        list,
                        run,
                        junit,
                        format,
                        pattern,
                        workers,
                        flaky_fails,
                    }),
                ))
            }
            (Some(run), Some(_)) => Err(self
                .err(&run.referenced, "a step has both `run:` and `split:`")
                .with_help(
                    "a split step runs `split.run`; make the other command a step of its own",
                )),
            (None, None) => Err(self
                .err(
                    &at.referenced,
                    format!("a step of `{}` has neither `run:` nor `split:`", at.value),
                )
                .with_help("give the step a command: `- run: make test`")),
        }
    }

    /// A `run:` step's `results:`: one of `junit:`, `tap:`, `subunit:`
    /// (a file the command writes) or `pattern:` (over its output).
    pub(super) fn step_results(&self, raw: &RawStep) -> Result<Option<StepResults>, ConfigError> {
        let Some(r) = &raw.results else {
            return Ok(None);
        };
        if raw.split.is_some() {
            return Err(self
                .err(&r.referenced, "a split step reads its results under `split:`")
                .with_help("move them into `split:` (`junit:`, `tap:`, `subunit:` or `results: {pattern}`)"));
        }
        let given: Vec<(Option<ReportFormat>, &Spanned<String>)> = [
            (Some(ReportFormat::Junit), &r.value.junit),
            (Some(ReportFormat::Tap), &r.value.tap),
            (Some(ReportFormat::Subunit), &r.value.subunit),
            (None, &r.value.pattern),
        ]
        .into_iter()
        .filter_map(|(f, v)| v.as_ref().map(|v| (f, v)))
        .collect();
        let help = "give one of `junit: PATH`, `tap: PATH`, `subunit: PATH` (a report the command writes) or `pattern: REGEX` (with groups `id` and `outcome`, over the output)";
        let (format, value) = match given.as_slice() {
            [one] => *one,
            [] => {
                return Err(self
                    .err(&r.referenced, "`results:` names no report")
                    .with_help(help))
            }
            [_, (_, second), ..] => {
                return Err(self
                    .err(
                        &second.referenced,
                        "`results:` has one report or one pattern",
                    )
                    .with_help(help))
            }
        };
        match format {
            None => {
                crate::results::compile_pattern(&value.value)
                    .map_err(|e| self.err(&value.referenced, e).with_help(help))?;
                Ok(Some(StepResults {
                    format: ReportFormat::Junit,
                    path: None,
                    pattern: Some(value.value.clone()),
                }))
            }
            Some(format) => {
                let p = value.value.trim();
                if p.is_empty() || p.starts_with('/') || p.split('/').any(|c| c == "..") {
                    return Err(self
                        .err(
                            &value.referenced,
                            format!("invalid `{}:` path `{}`", format.key(), value.value),
                        )
                        .with_help("give a path inside the workspace, such as reports/junit.xml"));
                }
                Ok(Some(StepResults {
                    format,
                    path: Some(p.to_string()),
                    pattern: None,
                }))
            }
        }
    }
}
