//! `herd check [FILE]`: validate a herd.yml without a server.

use herd_core::Pipeline;
use miette::{miette, Result};
use std::path::PathBuf;
use std::process::ExitCode;

pub fn run(file: Option<PathBuf>) -> Result<ExitCode> {
    let path = file.unwrap_or_else(|| PathBuf::from("herd.yml"));
    let text = std::fs::read_to_string(&path)
        .map_err(|e| miette!("cannot read {}: {e}", path.display()))?;
    match Pipeline::parse(&path.display().to_string(), &text) {
        Ok(p) => {
            let jobs: usize = p.builders.iter().map(|b| b.jobs.len()).sum();
            let impossible = p.impossible_jobs();
            crate::outln!(
                "{}: {} ({} builders, {} jobs)",
                path.display(),
                if impossible.is_empty() {
                    "ok"
                } else {
                    "not ok"
                },
                p.builders.len(),
                jobs
            );
            for b in &p.builders {
                let names: Vec<&str> = b.jobs.iter().map(|j| j.name.as_str()).collect();
                crate::outln!("  {}: {}", b.name, names.join(", "));
            }
            for (job, why) in &impossible {
                crate::errln!("error: job {job} can never run: {why}");
            }
            if impossible.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                crate::errln!("help: exclude those cells of the matrix (`exclude:`), or loosen the requirements");
                Ok(ExitCode::from(crate::exit_codes::FAILED))
            }
        }
        Err(e) => {
            crate::errln!("error: {e}");
            Ok(ExitCode::from(crate::exit_codes::FAILED))
        }
    }
}
