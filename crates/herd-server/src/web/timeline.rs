//! The build page's timeline: an SVG with one lane per worker, a bar per
//! attempt and, on top, a bar per split batch; arrows show which job
//! waited for which (`needs:`).

use super::view::{esc, fmt_ms};
use crate::store::SplitRow;
use std::collections::HashMap;
use std::fmt::Write as _;

/// One lane per worker; a bar per attempt, and per split batch.
pub(super) fn timeline_svg(d: &crate::store::BuildDetail, splits: &[SplitRow]) -> String {
    struct Bar {
        lane: String,
        /// The attempt the bar is (or, for a batch, runs in).
        attempt: i64,
        start: i64,
        end: i64,
        class: String,
        label: String,
        href: String,
    }
    let now = crate::store::now_ms();
    let mut bars: Vec<Bar> = Vec::new();
    for a in &d.attempts {
        let job = d.jobs.iter().find(|j| j.id == a.job_id);
        let start = d
            .steps
            .iter()
            .filter(|s| s.attempt_id == a.id)
            .filter_map(|s| s.started_at)
            .min()
            .unwrap_or(a.created_at);
        bars.push(Bar {
            lane: a.worker.clone(),
            attempt: a.id,
            start,
            end: a.finished_at.unwrap_or(now),
            class: format!("st-{}", a.state),
            label: job
                .map(|j| format!("{}/{} attempt {}: {}", j.builder, j.name, a.number, a.state))
                .unwrap_or_default(),
            href: format!("#job-{}", a.job_id),
        });
    }
    for s in splits {
        for b in &s.data.batches {
            bars.push(Bar {
                lane: b.worker.clone(),
                attempt: b.attempt,
                start: b.started_ms,
                end: b.finished_ms.unwrap_or(now),
                class: format!(
                    "batch bs-{}",
                    match b.state {
                        herd_core::split::BatchState::Running => "running",
                        herd_core::split::BatchState::Done => "done",
                        herd_core::split::BatchState::Lost => "lost",
                    }
                ),
                label: format!(
                    "batch {} ({} tests){}",
                    b.batch.id,
                    b.batch.tests.len(),
                    if b.state == herd_core::split::BatchState::Lost {
                        ": lost"
                    } else {
                        ""
                    }
                ),
                href: format!("#job-{}", b.job),
            });
        }
    }
    if bars.is_empty() {
        return String::new();
    }
    let t0 = bars.iter().map(|b| b.start).min().unwrap_or(0);
    let t1 = bars
        .iter()
        .map(|b| b.end)
        .max()
        .unwrap_or(t0 + 1)
        .max(t0 + 1);
    // A worker with several slots runs attempts side by side: each attempt
    // gets the first row of its worker's lane that is free at its start;
    // batches go in their attempt's row.
    let mut workers: Vec<String> = bars.iter().map(|b| b.lane.clone()).collect();
    workers.sort();
    workers.dedup();
    let mut row_of: HashMap<i64, usize> = HashMap::new();
    let mut lanes: Vec<String> = Vec::new();
    for w in &workers {
        let mut attempts: Vec<&Bar> = bars
            .iter()
            .filter(|b| &b.lane == w && !b.class.starts_with("batch"))
            .collect();
        attempts.sort_by_key(|b| b.start);
        let mut ends: Vec<i64> = Vec::new();
        for b in attempts {
            let slot = match ends.iter().position(|e| *e <= b.start) {
                Some(i) => i,
                None => {
                    ends.push(0);
                    ends.len() - 1
                }
            };
            ends[slot] = b.end;
            row_of.insert(b.attempt, lanes.len() + slot);
        }
        for i in 0..ends.len().max(1) {
            lanes.push(if i == 0 { w.clone() } else { String::new() });
        }
    }
    let (label_w, width, lane_h) = (140.0, 860.0, 22.0);
    let height = lane_h * lanes.len() as f64 + 24.0;
    let x = |t: i64| label_w + (t - t0) as f64 / (t1 - t0) as f64 * (width - label_w - 10.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"timeline: which worker ran what, when, and which job waited for which\">\
         <defs><marker id=\"arrow\" viewBox=\"0 0 6 6\" refX=\"6\" refY=\"3\" markerWidth=\"6\" markerHeight=\"6\" orient=\"auto\"><path d=\"M0,0 L6,3 L0,6 z\" class=\"need-head\"/></marker></defs>"
    );
    for (i, lane) in lanes.iter().enumerate().filter(|(_, l)| !l.is_empty()) {
        let y = i as f64 * lane_h;
        let _ = write!(
            svg,
            "<text x=\"4\" y=\"{:.1}\" class=\"lane\">{}</text>",
            y + 15.0,
            esc(lane)
        );
    }
    // Attempts first (under), batches on top.
    for b in &bars {
        let Some(&i) = row_of.get(&b.attempt) else {
            continue;
        };
        let batch = b.class.starts_with("batch");
        let y = i as f64 * lane_h + if batch { 5.0 } else { 2.0 };
        let h = if batch { lane_h - 10.0 } else { lane_h - 4.0 };
        let (x0, x1) = (x(b.start), x(b.end.max(b.start)));
        let _ = write!(
            svg,
            "<a href=\"{}\"><rect x=\"{x0:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{h:.1}\" class=\"{}\"><title>{} ({})</title></rect></a>",
            esc(&b.href),
            (x1 - x0).max(2.0),
            esc(&b.class),
            esc(&b.label),
            fmt_ms(b.end - b.start)
        );
    }
    // The needs: an arrow from the end of each needed job's last attempt
    // to the start of the last attempt of the job that waited for it.
    let last_bar = |job_id: i64| {
        d.attempts
            .iter()
            .filter(|a| a.job_id == job_id)
            .max_by_key(|a| a.number)
            .and_then(|a| {
                let bar = bars
                    .iter()
                    .find(|b| b.attempt == a.id && !b.class.starts_with("batch"))?;
                Some((*row_of.get(&a.id)?, bar.start, bar.end))
            })
    };
    for j in &d.jobs {
        let Some((row, start, _)) = last_bar(j.id) else {
            continue;
        };
        for need in &j.spec.needs {
            let Some(dep) = d
                .jobs
                .iter()
                .find(|o| format!("{}/{}", o.builder, o.name) == *need)
            else {
                continue;
            };
            let Some((dep_row, _, dep_end)) = last_bar(dep.id) else {
                continue;
            };
            let (x0, y0) = (x(dep_end), dep_row as f64 * lane_h + lane_h / 2.0);
            let (x1, y1) = (x(start).max(x0), row as f64 * lane_h + lane_h / 2.0);
            let _ = write!(
                svg,
                "<path class=\"need\" d=\"M{x0:.1},{y0:.1} C{:.1},{y0:.1} {:.1},{y1:.1} {x1:.1},{y1:.1}\" marker-end=\"url(#arrow)\"><title>{} needs {}</title></path>",
                x0 + 12.0,
                x1 - 12.0,
                esc(&format!("{}/{}", j.builder, j.name)),
                esc(need)
            );
        }
    }
    let _ = write!(
        svg,
        "<text x=\"{label_w}\" y=\"{:.1}\" class=\"axis\">0</text><text x=\"{:.1}\" y=\"{:.1}\" class=\"axis\" text-anchor=\"end\">{}</text></svg>",
        height - 4.0,
        width - 10.0,
        height - 4.0,
        fmt_ms(t1 - t0)
    );
    svg
}
