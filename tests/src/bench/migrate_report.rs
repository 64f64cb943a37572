//! The `migrate` benchmark's results: medians per workload, size and mode,
//! issue 15's goals, the tables printed, and the PNG plots.
//!
//! Goals (medians):
//! - post-copy downtime (as the process lived it) at most 100 ms at every
//!   size, for workloads 1-4 (all but `dirty`);
//! - total time of every migratectl mode at most 1.3 × its memory over the
//!   link's bandwidth;
//! - downtime at 1 GiB at least 20 × smaller than the stock path's, for
//!   every migratectl mode;
//! - no failed client request and no reset connection in any migration.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;
use serde_json::Value;

use super::migrate_run::{Mode, Sample};
use super::plot::{self, Labels, Series};
use super::report::{self, Goal, Table};
use super::stats::{Stats, median, ratio};
use super::workloads::{INTERVAL_MS, Workload};

/// Total time: this factor on the time the memory needs on the link.
pub const GOAL_LINK_FACTOR: f64 = 1.3;
/// Post-copy downtime, ms.
pub const GOAL_POST_COPY_MS: f64 = 100.0;
/// The stock path's downtime over a migratectl mode's, at [`GOAL_MIB`].
pub const GOAL_STOCK_FACTOR: f64 = 20.0;
pub const GOAL_MIB: u64 = 1024;

/// Medians and counts of one workload, size and mode.
#[derive(Debug, Serialize)]
pub struct ModeSummary {
    pub ok: usize,
    pub failed: usize,
    pub total_ms: Option<Stats>,
    pub downtime_ms: Option<Stats>,
    pub client_gap_ms: Option<Stats>,
    /// Over all runs: requests that failed, connections reset, and runs
    /// whose clients never had an answer again.
    pub client_failed: u64,
    pub client_resets: u64,
    pub client_unanswered_runs: usize,
    pub reported_downtime_ms: Option<Stats>,
    pub wire_bytes: Option<Stats>,
    pub payload_bytes: Option<Stats>,
    pub memory_bytes: Option<Stats>,
    pub bytes_before_freeze: Option<Stats>,
    pub bytes_during_freeze: Option<Stats>,
    pub bytes_after_freeze: Option<Stats>,
    pub pages_faulted: Option<Stats>,
    pub all_pages_ms: Option<Stats>,
    pub iterations: Option<Stats>,
    pub mode_reasons: Vec<String>,
    pub steps_ms: BTreeMap<String, Stats>,
    pub continuity: Option<bool>,
    /// The total-time limit of the goal, ms (migratectl modes).
    pub total_limit_ms: Option<f64>,
    pub has_client: bool,
}

/// One goal of one workload, size and mode.
#[derive(Debug, Serialize)]
pub struct GoalRow {
    pub workload: Workload,
    pub mib: u64,
    pub mode: Mode,
    pub what: &'static str,
    pub goal: Goal,
}

type Key = (Workload, u64, Mode);

pub struct Report {
    /// workload -> MiB -> mode -> medians.
    pub summary: BTreeMap<Workload, BTreeMap<u64, BTreeMap<Mode, ModeSummary>>>,
    pub goals: Vec<GoalRow>,
}

/// The time `bytes` take on a link of `rate_mbit`, ms.
pub fn link_ms(bytes: f64, rate_mbit: u64) -> f64 {
    bytes * 8.0 / (rate_mbit as f64 * 1e6) * 1000.0
}

fn summarize_one(of: &[&Sample], rate_mbit: u64, mib: u64, mode: Mode) -> ModeSummary {
    let ok: Vec<&&Sample> = of.iter().filter(|s| s.ok).collect();
    let stat = |f: &dyn Fn(&Sample) -> Option<f64>| Stats::of(ok.iter().map(|s| f(s)));
    let mut step_names: Vec<&String> = ok.iter().flat_map(|s| s.steps.keys()).collect();
    step_names.sort();
    step_names.dedup();
    let steps_ms = step_names
        .into_iter()
        .filter_map(|n| {
            Stats::of(ok.iter().map(|s| s.steps.get(n).copied())).map(|st| (n.clone(), st))
        })
        .collect();
    let conts: Vec<bool> = ok.iter().filter_map(|s| s.continuity).collect();
    let mut reasons: Vec<String> = ok
        .iter()
        .filter_map(|s| s.live.mode_reason.clone())
        .collect();
    reasons.sort();
    reasons.dedup();
    let clients: Vec<_> = ok.iter().filter_map(|s| s.client.as_ref()).collect();
    let memory_bytes = stat(&|s| s.memory_bytes);
    // The memory the goal's limit is of: what migratectl moved, or the
    // workload's size when it does not say.
    let memory = median(&memory_bytes).unwrap_or(mib as f64 * 1_048_576.0);
    ModeSummary {
        ok: ok.len(),
        failed: of.len() - ok.len(),
        total_ms: stat(&|s| s.total_ms),
        downtime_ms: stat(&|s| s.downtime_ms),
        client_gap_ms: stat(&|s| s.client.as_ref()?.max_gap_ms),
        client_failed: clients.iter().map(|c| c.failed).sum(),
        client_resets: clients.iter().map(|c| c.resets).sum(),
        client_unanswered_runs: clients.iter().filter(|c| c.max_gap_ms.is_none()).count(),
        reported_downtime_ms: stat(&|s| s.reported_downtime_ms),
        wire_bytes: stat(&|s| s.wire_bytes),
        payload_bytes: stat(&|s| s.payload_bytes),
        memory_bytes,
        bytes_before_freeze: stat(&|s| s.live.bytes_before_freeze),
        bytes_during_freeze: stat(&|s| s.live.bytes_during_freeze),
        bytes_after_freeze: stat(&|s| s.live.bytes_after_freeze),
        pages_faulted: stat(&|s| s.live.pages_faulted),
        all_pages_ms: stat(&|s| s.live.all_pages_ms),
        iterations: stat(&|s| s.live.iterations.as_ref().map(|i| i.len() as f64)),
        mode_reasons: reasons,
        steps_ms,
        continuity: (!conts.is_empty()).then(|| conts.iter().all(|c| *c)),
        total_limit_ms: (mode != Mode::Stock)
            .then(|| GOAL_LINK_FACTOR * link_ms(memory, rate_mbit)),
        has_client: !clients.is_empty(),
    }
}

pub fn summarize(samples: &[Sample], rate_mbit: u64) -> Report {
    let mut groups: BTreeMap<Key, Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        if let (Some(w), Some(m)) = (s.workload, s.mode) {
            groups.entry((w, s.mib, m)).or_default().push(s);
        }
    }
    let mut summary: BTreeMap<Workload, BTreeMap<u64, BTreeMap<Mode, ModeSummary>>> =
        BTreeMap::new();
    for ((w, mib, mode), of) in &groups {
        summary
            .entry(*w)
            .or_default()
            .entry(*mib)
            .or_default()
            .insert(*mode, summarize_one(of, rate_mbit, *mib, *mode));
    }
    let goals = goals(&summary);
    Report { summary, goals }
}

fn goals(summary: &BTreeMap<Workload, BTreeMap<u64, BTreeMap<Mode, ModeSummary>>>) -> Vec<GoalRow> {
    let mut rows = Vec::new();
    for (&workload, sizes) in summary {
        for (&mib, modes) in sizes {
            for (&mode, m) in modes {
                let mut add = |what, goal| {
                    rows.push(GoalRow {
                        workload,
                        mib,
                        mode,
                        what,
                        goal,
                    })
                };
                if mode == Mode::Stock {
                    continue;
                }
                if mode == Mode::PostCopy && workload.has_downtime_goal() {
                    add(
                        "downtime ms",
                        Goal::number(
                            median(&m.downtime_ms),
                            format!("<= {GOAL_POST_COPY_MS}"),
                            |d| d <= GOAL_POST_COPY_MS,
                        ),
                    );
                }
                let limit = m.total_limit_ms;
                add(
                    "total ms",
                    Goal::number(
                        median(&m.total_ms),
                        format!("<= {}", report::num(limit, 0)),
                        |t| limit.is_some_and(|l| t <= l),
                    ),
                );
                if mib == GOAL_MIB {
                    let stock = modes.get(&Mode::Stock).and_then(|s| median(&s.downtime_ms));
                    add(
                        "stock downtime / this",
                        Goal::number(
                            ratio(stock, median(&m.downtime_ms)),
                            format!(">= {GOAL_STOCK_FACTOR}"),
                            |r| r >= GOAL_STOCK_FACTOR,
                        ),
                    );
                }
                if m.has_client {
                    let bad = m.client_failed + m.client_resets + m.client_unanswered_runs as u64;
                    add(
                        "failed + reset requests",
                        Goal {
                            value: Value::from(bad),
                            goal: "0".into(),
                            met: bad == 0,
                        },
                    );
                }
            }
        }
    }
    rows
}

impl Report {
    /// The main table, the table of issue 15's figures (when any mode
    /// reported them), and the goals.
    pub fn print(&self, rate_mbit: &u64, load_before: &str, load_after: &str, runs: u64) {
        let mut t = Table::new(&[
            "workload",
            "MiB",
            "mode",
            "n",
            "total ms",
            "limit ms",
            "downtime ms",
            "client gap ms",
            "failed",
            "resets",
            "reported ms",
            "wire",
            "payload",
            "goals",
        ])
        .left(1);
        let mut live = Table::new(&[
            "workload",
            "MiB",
            "mode",
            "reason",
            "iterations",
            "before freeze",
            "during freeze",
            "after freeze",
            "pages faulted",
            "all pages ms",
        ])
        .left(1);
        let mut any_live = false;
        for (w, sizes) in &self.summary {
            for (mib, modes) in sizes {
                for (mode, m) in modes {
                    let verdicts: Vec<String> = self
                        .goals
                        .iter()
                        .filter(|g| g.workload == *w && g.mib == *mib && g.mode == *mode)
                        .map(|g| format!("{} {}", short(g.what), g.goal.verdict()))
                        .collect();
                    let client = |v: String| if m.has_client { v } else { "-".into() };
                    t.row(vec![
                        w.to_string(),
                        mib.to_string(),
                        mode.to_string(),
                        format!("{}/{}", m.ok, m.ok + m.failed),
                        report::num(median(&m.total_ms), 0),
                        report::num(m.total_limit_ms, 0),
                        report::num(median(&m.downtime_ms), 0),
                        client(report::num(median(&m.client_gap_ms), 0)),
                        client(m.client_failed.to_string()),
                        client(m.client_resets.to_string()),
                        report::num(median(&m.reported_downtime_ms), 0),
                        report::mib(median(&m.wire_bytes)),
                        report::mib(median(&m.payload_bytes)),
                        verdicts.join(", "),
                    ]);
                    let reported = [
                        &m.iterations,
                        &m.bytes_before_freeze,
                        &m.bytes_during_freeze,
                        &m.bytes_after_freeze,
                        &m.pages_faulted,
                        &m.all_pages_ms,
                    ]
                    .iter()
                    .any(|s| s.is_some())
                        || !m.mode_reasons.is_empty();
                    if reported {
                        any_live = true;
                        live.row(vec![
                            w.to_string(),
                            mib.to_string(),
                            mode.to_string(),
                            if m.mode_reasons.is_empty() {
                                "-".into()
                            } else {
                                m.mode_reasons.join(" | ")
                            },
                            report::num(median(&m.iterations), 0),
                            report::mib(median(&m.bytes_before_freeze)),
                            report::mib(median(&m.bytes_during_freeze)),
                            report::mib(median(&m.bytes_after_freeze)),
                            report::num(median(&m.pages_faulted), 0),
                            report::num(median(&m.all_pages_ms), 0),
                        ]);
                    }
                }
            }
        }
        print!("{}", t.render());
        println!(
            "(medians of up to {runs} runs; link {rate_mbit} Mbit/s each way; downtime: the process's largest tick gap, including the {INTERVAL_MS} ms interval; client gap, failed, resets: the clients' view, none for stock; limit: {GOAL_LINK_FACTOR} x memory / link; load {load_before} -> {load_after})\n"
        );
        if any_live {
            print!("{}", live.render());
            println!("(migratectl's own figures, medians; - where it reported none)\n");
        }
        let missed = self.goals.iter().filter(|g| !g.goal.met).count();
        println!(
            "goals: {} of {} met",
            self.goals.len() - missed,
            self.goals.len()
        );
        for g in &self.goals {
            let value = if g.goal.value.is_null() {
                "not measured".to_string()
            } else {
                g.goal.value.to_string()
            };
            println!(
                "  {:<58} {value} (goal {})  {}",
                format!("{} {} MiB {}: {}", g.workload, g.mib, g.mode, g.what),
                g.goal.goal,
                g.goal.verdict()
            );
        }
    }
}

/// A goal's name in the table's last column.
fn short(what: &str) -> &'static str {
    match what {
        "downtime ms" => "dt<=100",
        "total ms" => "total",
        "stock downtime / this" => "x20",
        _ => "clients",
    }
}

/// The sample of a group to draw: the one whose total is the group's
/// median (the middle one of those that worked).
fn typical<'a>(of: &[&'a Sample]) -> Option<&'a Sample> {
    let mut ok: Vec<&Sample> = of.iter().copied().filter(|s| s.ok).collect();
    ok.sort_by(|a, b| {
        a.total_ms
            .unwrap_or(f64::MAX)
            .total_cmp(&b.total_ms.unwrap_or(f64::MAX))
    });
    ok.get(ok.len().saturating_sub(1) / 2).copied()
}

/// Per workload and size, the bandwidth and the client latency of each
/// mode's typical run (`migrate-<workload>-<MiB>-bandwidth.png`,
/// `-latency.png`), and the medians of downtime and total time by size
/// (`migrate-downtime.png`, `migrate-total.png`), beside `out`.
pub fn plot(out: &Path, rate_mbit: u64, samples: &[Sample], report: &Report) -> Result<()> {
    let mut groups: BTreeMap<(Workload, u64), BTreeMap<Mode, Vec<&Sample>>> = BTreeMap::new();
    for s in samples {
        if let (Some(w), Some(m)) = (s.workload, s.mode) {
            groups
                .entry((w, s.mib))
                .or_default()
                .entry(m)
                .or_default()
                .push(s);
        }
    }
    for ((w, mib), modes) in &groups {
        let series = |f: fn(&Sample) -> &Vec<(f64, f64)>| -> Vec<Series> {
            modes
                .iter()
                .filter_map(|(m, of)| {
                    Some(Series {
                        name: m.to_string(),
                        points: f(typical(of)?).clone(),
                    })
                })
                .collect()
        };
        plot::lines(
            &out.with_file_name(format!("migrate-{w}-{mib}-bandwidth.png")),
            &Labels {
                title: &format!(
                    "{w}, {mib} MiB: both hosts' tx over a {rate_mbit} Mbit/s link (typical run)"
                ),
                x: "seconds since the migration started",
                y: "Mbit/s",
            },
            &series(|s| &s.bandwidth),
        )?;
        plot::points(
            &out.with_file_name(format!("migrate-{w}-{mib}-latency.png")),
            &Labels {
                title: &format!(
                    "{w}, {mib} MiB: client latency around the migration (typical run)"
                ),
                x: "seconds since the migration started (when the answer came)",
                y: "latency (ms)",
            },
            &series(|s| &s.latency),
        )?;
    }
    let by_size = |f: fn(&ModeSummary) -> Option<f64>| -> Vec<Series> {
        let mut lines: BTreeMap<(Workload, Mode), Vec<(f64, f64)>> = BTreeMap::new();
        for (w, sizes) in &report.summary {
            for (mib, modes) in sizes {
                for (m, sum) in modes {
                    if let Some(v) = f(sum) {
                        lines.entry((*w, *m)).or_default().push((*mib as f64, v));
                    }
                }
            }
        }
        lines
            .into_iter()
            .map(|((w, m), points)| Series {
                name: format!("{w} {m}"),
                points,
            })
            .collect()
    };
    plot::lines(
        &out.with_file_name("migrate-downtime.png"),
        &Labels {
            title: &format!("Downtime as the process lived it, {rate_mbit} Mbit/s link (median)"),
            x: "memory (MiB)",
            y: "downtime (ms)",
        },
        &by_size(|s| median(&s.downtime_ms)),
    )?;
    plot::lines(
        &out.with_file_name("migrate-total.png"),
        &Labels {
            title: "Total time of a migration (median)",
            x: "memory (MiB)",
            y: "total (ms)",
        },
        &by_size(|s| median(&s.total_ms)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::load::Seen;

    fn sample(w: Workload, mib: u64, mode: Mode, downtime: f64, total: f64) -> Sample {
        Sample {
            workload: Some(w),
            mib,
            mode: Some(mode),
            ok: true,
            downtime_ms: Some(downtime),
            total_ms: Some(total),
            memory_bytes: (mode != Mode::Stock).then_some(mib as f64 * 1_048_576.0),
            client: (mode != Mode::Stock).then(|| Seen {
                max_gap_ms: Some(50.0),
                ..Seen::default()
            }),
            ..Sample::default()
        }
    }

    #[test]
    fn goals_of_issue_15() {
        let samples = [
            sample(Workload::Idle, 1024, Mode::Stock, 20_000.0, 40_000.0),
            sample(Workload::Idle, 1024, Mode::PostCopy, 90.0, 11_000.0),
            sample(Workload::Dirty, 1024, Mode::PostCopy, 300.0, 12_000.0),
        ];
        let r = summarize(&samples, 1000);
        let goal = |w, what| {
            r.goals
                .iter()
                .find(|g| g.workload == w && g.what == what)
                .map(|g| g.goal.met)
        };
        assert_eq!(goal(Workload::Idle, "downtime ms"), Some(true));
        // 1 GiB over 1 Gbit/s is 8.59 s; x1.3 = 11.17 s.
        assert_eq!(goal(Workload::Idle, "total ms"), Some(true));
        assert_eq!(goal(Workload::Dirty, "total ms"), Some(false));
        assert_eq!(goal(Workload::Idle, "stock downtime / this"), Some(true));
        assert_eq!(goal(Workload::Idle, "failed + reset requests"), Some(true));
        // The dirtying workload has no post-copy downtime goal.
        assert_eq!(goal(Workload::Dirty, "downtime ms"), None);
        // Nor does the stock path have goals of its own.
        assert!(r.goals.iter().all(|g| g.mode != Mode::Stock));
        let l = link_ms(1024.0 * 1_048_576.0, 1000);
        assert!((l - 8589.9).abs() < 1.0, "{l}");
    }
}
