//! `needs:` resolved to jobs, and `if:`: the jobs of a build as a graph
//! without cycles.
//!
//! A need names `builder` (all its jobs), `builder/job` (that job, or every
//! cell of a matrix job written as `job`), or `job` (a job of the same
//! builder).

use super::{Builder, Lower, RawNeed, RunIf};
use crate::config_error::{closest, ConfigError};
use serde_saphyr::Spanned;
use std::collections::{HashMap, HashSet};

/// A need's name where it is written, and whether it brings the needed
/// jobs' artifacts.
type NamedNeed = (Spanned<String>, bool);

impl Lower<'_> {
    pub(super) fn run_if(
        &self,
        raw: Option<&Spanned<String>>,
    ) -> Result<Option<RunIf>, ConfigError> {
        let Some(r) = raw else { return Ok(None) };
        RunIf::parse(r.value.trim()).map(Some).ok_or_else(|| {
            self.err(&r.referenced, format!("`if: {}` is not a condition herd knows", r.value))
                .with_help("write `if: success` (the default: every job it needs succeeded), `if: failure` or `if: always`")
        })
    }

    /// Puts each job's `needs:` (as written, per builder per job) in
    /// [`super::JobDef::needs`] as `builder/job` names; refuses unknown
    /// names, a job needing itself and cycles.
    pub(super) fn resolve_needs(
        &self,
        builders: &mut [Builder],
        raw: &[Vec<Vec<Spanned<RawNeed>>>],
    ) -> Result<(), ConfigError> {
        // Each need as its name, where it is written, and whether it
        // brings the needed jobs' artifacts.
        let raw: Vec<Vec<Vec<NamedNeed>>> = raw
            .iter()
            .map(|b| {
                b.iter()
                    .map(|j| {
                        j.iter()
                            .map(|n| {
                                let (name, artifacts) = match &n.value {
                                    RawNeed::Name(s) => (s.clone(), false),
                                    RawNeed::With(w) => (w.job.clone(), w.artifacts),
                                };
                                let spanned = Spanned {
                                    value: name,
                                    referenced: n.referenced,
                                    defined: n.defined,
                                };
                                (spanned, artifacts)
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect();
        let builder_names: Vec<String> = builders.iter().map(|b| b.name.clone()).collect();
        // Where each job's first need is written, for the cycle error.
        let mut first_need: HashMap<String, &Spanned<String>> = HashMap::new();
        let mut resolved: Vec<Vec<(Vec<String>, Vec<String>)>> = Vec::new();
        for (bi, b) in builders.iter().enumerate() {
            let mut per_job = Vec::new();
            for (ji, job) in b.jobs.iter().enumerate() {
                let me = format!("{}/{}", b.name, job.name);
                let mut needs: Vec<String> = Vec::new();
                let mut artifacts_from: Vec<String> = Vec::new();
                for (n, with_artifacts) in raw.get(bi).and_then(|r| r.get(ji)).into_iter().flatten()
                {
                    first_need.entry(me.clone()).or_insert(n);
                    let found = self.need_targets(builders, &b.name, n, &builder_names)?;
                    if found.contains(&me) {
                        return Err(self
                            .err(
                                &n.referenced,
                                format!("job {me} needs itself (through `{}`)", n.value),
                            )
                            .with_help("a job needs other jobs: name another builder or job"));
                    }
                    for f in found {
                        if *with_artifacts && !artifacts_from.contains(&f) {
                            artifacts_from.push(f.clone());
                        }
                        if !needs.contains(&f) {
                            needs.push(f);
                        }
                    }
                }
                per_job.push((needs, artifacts_from));
            }
            resolved.push(per_job);
        }
        for (b, needs) in builders.iter_mut().zip(resolved) {
            for (j, (n, a)) in b.jobs.iter_mut().zip(needs) {
                j.needs = n;
                j.artifacts_from = a;
            }
        }
        if let Some(cycle) = find_cycle(builders) {
            let msg = format!("`needs:` make a cycle: {}", cycle.join(" → "));
            let e = match first_need.get(&cycle[0]) {
                Some(n) => self.err(&n.referenced, msg),
                None => ConfigError::at(self.file, self.text, 1, 1, msg),
            };
            return Err(e.with_help("a job can only need jobs that do not need it back"));
        }
        Ok(())
    }

    fn need_targets(
        &self,
        builders: &[Builder],
        own: &str,
        n: &Spanned<String>,
        builder_names: &[String],
    ) -> Result<Vec<String>, ConfigError> {
        let text = n.value.trim();
        let of = |b: &Builder, job: Option<&str>| -> Vec<String> {
            b.jobs
                .iter()
                .filter(|j| job.is_none_or(|name| j.name == name || j.family == name))
                .map(|j| format!("{}/{}", b.name, j.name))
                .collect()
        };
        let builder = |name: &str| builders.iter().find(|b| b.name == name);
        let (found, what) = match text.split_once('/') {
            Some((b, j)) => match builder(b) {
                Some(bd) => (of(bd, Some(j)), format!("builder `{b}` has no job `{j}`")),
                None => (Vec::new(), format!("there is no builder `{b}`")),
            },
            None => match builder(text) {
                Some(bd) => (of(bd, None), String::new()),
                None => match builder(own) {
                    Some(bd) => (
                        of(bd, Some(text)),
                        format!(
                            "there is no builder `{text}`, nor a job `{text}` in builder `{own}`"
                        ),
                    ),
                    None => (Vec::new(), format!("there is no builder `{text}`")),
                },
            },
        };
        if found.is_empty() {
            let mut e = self.err(&n.referenced, format!("`needs: {text}`: {what}"));
            let base = text.split('/').next().unwrap_or(text);
            if let Some(near) = closest(base, builder_names) {
                e = e.with_help(format!("did you mean `{near}`? A need is `builder`, `builder/job` or a job of the same builder"));
            } else {
                e = e.with_help("a need is `builder` (all its jobs), `builder/job`, or a job of the same builder");
            }
            return Err(e);
        }
        Ok(found)
    }
}

/// A cycle of `needs:` (its jobs, the first repeated at the end), if any.
fn find_cycle(builders: &[Builder]) -> Option<Vec<String>> {
    let edges: HashMap<String, &Vec<String>> = builders
        .iter()
        .flat_map(|b| {
            b.jobs
                .iter()
                .map(move |j| (format!("{}/{}", b.name, j.name), &j.needs))
        })
        .collect();
    let mut done: HashSet<&str> = HashSet::new();
    let mut names: Vec<&String> = edges.keys().collect();
    names.sort();
    for start in names {
        // Depth first, iteratively: the path so far and each node's next edge.
        let mut path: Vec<(&str, usize)> = vec![(start.as_str(), 0)];
        let mut on_path: HashSet<&str> = HashSet::from([start.as_str()]);
        while let Some((node, next)) = path.last_mut() {
            let node_name: &str = node;
            let targets = edges.get(node_name).map(|v| v.as_slice()).unwrap_or(&[]);
            if done.contains(node_name) || *next >= targets.len() {
                done.insert(node_name);
                on_path.remove(node_name);
                path.pop();
                continue;
            }
            let t = targets[*next].as_str();
            *next += 1;
            if on_path.contains(t) {
                let from = path.iter().position(|(n, _)| *n == t).unwrap_or(0);
                let mut cycle: Vec<String> =
                    path[from..].iter().map(|(n, _)| n.to_string()).collect();
                cycle.push(t.to_string());
                return Some(cycle);
            }
            if !done.contains(t) {
                on_path.insert(t);
                path.push((t, 0));
            }
        }
    }
    None
}
