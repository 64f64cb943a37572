//! The `ha` benchmark's results: per count and policy, the RTO and the
//! state lost over every container of every run, issue 16's goals, where
//! the time went, one trial's timeline, and the plots.
//!
//! Goals (checkpoint policy; each on the median over runs of the trial's
//! worst container, the last to answer or the oldest version restored):
//! - RTO at most the grace (3 s) + 1 s with one container on the lost host,
//!   at most the grace + 5 s with 30;
//! - RPO (the restored version's age at the lost host's last heartbeat) at
//!   most one ticker interval, at every count;
//! - every container back, from a version;
//! - with `--fail leader`: another replica leads within 5 s of the failure
//!   (median of runs).
//! Every figure is per scenario (STORE/FAILURE: embedded/host, etcd/host,
//! etcd/leader), count and policy.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;
use serde_json::Value;

use super::ha_trial::{Policy, Sample, Trial};
use super::plot::{self, Labels, Series};
use super::report::{self, Goal, Table};
use super::stats::{Stats, median};

/// RTO goals: (containers on the lost host, ms allowed beyond the grace).
pub const RTO_GOALS: [(usize, f64); 2] = [(1, 1000.0), (30, 5000.0)];
/// The grace when the coordinator's log does not say (its default).
pub const DEFAULT_GRACE_MS: f64 = 3000.0;
/// The leader's fail-over goal (`--fail leader`), ms.
pub const FAILOVER_GOAL_MS: f64 = 5000.0;

#[derive(Debug, Serialize)]
pub struct Summary {
    pub trials: usize,
    pub containers: usize,
    pub back: usize,
    /// Came back from a version (checkpoint) / started afresh.
    pub from_version: usize,
    pub cold: usize,
    /// Over every container of every run.
    pub rto_ms: Option<Stats>,
    /// Per run, the last container's RTO (every container back).
    pub last_rto_ms: Option<Stats>,
    pub rpo_ms: Option<Stats>,
    /// Per run, the oldest version restored.
    pub worst_rpo_ms: Option<Stats>,
    pub age_at_failure_ms: Option<Stats>,
    pub lost_ms: Option<Stats>,
    pub detect_ms: Option<Stats>,
    pub place_ms: Option<Stats>,
    pub restore_ms: Option<Stats>,
    pub answer_ms: Option<Stats>,
    /// The tickers' ticks on the lost host before it failed.
    pub tick_total_ms: Option<Stats>,
    pub tick_later_total_ms: Option<Stats>,
    pub tick_frozen_ms: Option<Stats>,
    pub failed_ticks: usize,
    pub failed_attempts: usize,
    /// Per trial, the failure until another replica led (etcd/leader).
    pub failover_ms: Option<Stats>,
}

#[derive(Debug, Serialize)]
pub struct GoalRow {
    pub scenario: String,
    pub count: usize,
    pub policy: Policy,
    pub what: String,
    pub goal: Goal,
}

/// scenario -> count -> policy -> summary.
pub type Summaries = BTreeMap<String, BTreeMap<usize, BTreeMap<Policy, Summary>>>;

pub struct Report {
    pub summary: Summaries,
    pub goals: Vec<GoalRow>,
    pub grace_ms: f64,
    pub interval_ms: f64,
}

fn summarize_one(trials: &[&Trial], samples: &[&Sample]) -> Summary {
    let stat = |f: &dyn Fn(&Sample) -> Option<f64>| Stats::of(samples.iter().map(|s| f(s)));
    let per_trial = |f: &dyn Fn(&Sample) -> Option<f64>| {
        Stats::of(trials.iter().map(|t| {
            let of: Vec<Option<f64>> = samples
                .iter()
                .filter(|s| s.run == t.run)
                .map(|s| f(s))
                .collect();
            // A container missing makes the trial's worst unknown.
            if of.len() != t.count || of.iter().any(Option::is_none) {
                return None;
            }
            of.into_iter().flatten().max_by(f64::total_cmp)
        }))
    };
    let back: Vec<&&Sample> = samples.iter().filter(|s| s.ok).collect();
    Summary {
        trials: trials.len(),
        containers: samples.len(),
        back: back.len(),
        from_version: back.iter().filter(|s| s.version.is_some()).count(),
        cold: back.iter().filter(|s| s.version.is_none()).count(),
        rto_ms: stat(&|s| s.rto_ms),
        last_rto_ms: per_trial(&|s| s.rto_ms),
        rpo_ms: stat(&|s| s.rpo_ms),
        worst_rpo_ms: per_trial(&|s| s.rpo_ms),
        age_at_failure_ms: stat(&|s| s.age_at_failure_ms),
        lost_ms: stat(&|s| s.lost_ms),
        detect_ms: stat(&|s| s.detect_ms),
        place_ms: stat(&|s| s.place_ms),
        restore_ms: stat(&|s| s.restore_ms),
        answer_ms: stat(&|s| s.answer_ms),
        tick_total_ms: Stats::of(
            trials
                .iter()
                .map(|t| t.ticker.total_ms.as_ref().map(|s| s.median)),
        ),
        tick_later_total_ms: Stats::of(
            trials
                .iter()
                .map(|t| t.ticker.later_total_ms.as_ref().map(|s| s.max)),
        ),
        tick_frozen_ms: Stats::of(
            trials
                .iter()
                .map(|t| t.ticker.frozen_ms.as_ref().map(|s| s.median)),
        ),
        failed_ticks: trials.iter().map(|t| t.ticker.failed_ticks).sum(),
        failed_attempts: samples.iter().map(|s| s.failed_attempts).sum(),
        failover_ms: Stats::of(trials.iter().map(|t| t.failover_ms)),
    }
}

pub fn summarize(trials: &[Trial], samples: &[Sample], interval_ms: f64) -> Report {
    let mut keys: Vec<(String, usize, Policy)> = trials
        .iter()
        .filter_map(|t| Some((t.scenario.clone(), t.count, t.policy?)))
        .collect();
    keys.sort();
    keys.dedup();
    let mut summary: Summaries = BTreeMap::new();
    for (scenario, count, policy) in keys {
        let ts: Vec<&Trial> = trials
            .iter()
            .filter(|t| t.scenario == scenario && t.count == count && t.policy == Some(policy))
            .collect();
        let ss: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.scenario == scenario && s.count == count && s.policy == Some(policy))
            .collect();
        summary
            .entry(scenario)
            .or_default()
            .entry(count)
            .or_default()
            .insert(policy, summarize_one(&ts, &ss));
    }
    let graces: Vec<Option<f64>> = trials
        .iter()
        .map(|t| t.grace_ms.map(|g| g as f64))
        .collect();
    let grace_ms = super::stats::percentile(graces, 0.5).unwrap_or(DEFAULT_GRACE_MS);
    let goals = goals(&summary, grace_ms, interval_ms);
    Report {
        summary,
        goals,
        grace_ms,
        interval_ms,
    }
}

fn goals(summary: &Summaries, grace_ms: f64, interval_ms: f64) -> Vec<GoalRow> {
    let mut rows = Vec::new();
    for (scenario, counts) in summary {
        for (&count, policies) in counts {
            let Some(s) = policies.get(&Policy::Checkpoint) else {
                continue;
            };
            let mut add = |what: String, goal| {
                rows.push(GoalRow {
                    scenario: scenario.clone(),
                    count,
                    policy: Policy::Checkpoint,
                    what,
                    goal,
                })
            };
            if let Some((_, beyond)) = RTO_GOALS.iter().find(|(n, _)| *n == count) {
                let limit = grace_ms + beyond;
                add(
                    "RTO ms, last container (median of runs)".into(),
                    Goal::number(median(&s.last_rto_ms), format!("<= {limit:.0}"), |v| {
                        v <= limit
                    }),
                );
            }
            add(
                "RPO ms, oldest version (median of runs)".into(),
                Goal::number(
                    median(&s.worst_rpo_ms),
                    format!("<= {interval_ms:.0}"),
                    |v| v <= interval_ms,
                ),
            );
            add(
                "containers back from a version".into(),
                Goal {
                    value: Value::from(format!("{}/{}", s.from_version, s.containers)),
                    goal: format!("{0}/{0}", s.containers),
                    met: s.containers > 0 && s.from_version == s.containers,
                },
            );
            if scenario.ends_with("/leader") {
                add(
                    "leader fail-over ms (median of runs)".into(),
                    Goal::number(
                        median(&s.failover_ms),
                        format!("<= {FAILOVER_GOAL_MS:.0}"),
                        |v| v <= FAILOVER_GOAL_MS,
                    ),
                );
            }
        }
    }
    rows
}

/// "1,234 / 5,678": a median and a maximum, ms.
fn median_max(s: &Option<Stats>) -> String {
    match s {
        Some(s) => format!("{:.0} / {:.0}", s.median, s.max),
        None => "-".into(),
    }
}

impl Report {
    pub fn print(&self, runs: u64, load_before: &str, load_after: &str) {
        let mut t = Table::new(&[
            "store",
            "fail",
            "count",
            "policy",
            "back",
            "RTO med / max",
            "RTO p90",
            "last back (med)",
            "RPO med / max",
            "worst RPO (med)",
            "lost by ticks med / max",
            "fail-over med / max",
            "goals",
        ])
        .left(4);
        for (scenario, count, policy, s) in self.rows() {
            let verdicts: Vec<String> = self
                .goals
                .iter()
                .filter(|g| g.scenario == *scenario && g.count == *count && g.policy == *policy)
                .map(|g| format!("{} {}", short(&g.what), g.goal.verdict()))
                .collect();
            let (store, fail) = scenario.split_once('/').unwrap_or((scenario, "-"));
            t.row(vec![
                store.to_string(),
                fail.to_string(),
                count.to_string(),
                policy.to_string(),
                format!("{}/{}", s.back, s.containers),
                median_max(&s.rto_ms),
                report::num(s.rto_ms.as_ref().map(|s| s.p90), 0),
                report::num(median(&s.last_rto_ms), 0),
                median_max(&s.rpo_ms),
                report::num(median(&s.worst_rpo_ms), 0),
                median_max(&s.lost_ms),
                median_max(&s.failover_ms),
                if verdicts.is_empty() {
                    "-".into()
                } else {
                    verdicts.join(", ")
                },
            ]);
        }
        print!("{}", t.render());
        println!(
            "(ms, over every container of up to {runs} runs; RTO: the lost host (h1 with embedded; see trials[].lost_host) lost (its link cut) -> the container's first tick on its new host; \
             last back: the run's last container; RPO: the restored version's age at its last heartbeat (restart: all the \
             counter's state); lost by ticks: memtick's ticks from the restored one to the last before the failure; fail-over \
             (etcd/leader): the failure -> a surviving host's migratectl coordinator --json names another leader; grace \
             {:.0} ms, ticker interval {:.0} ms; load {load_before} -> {load_after})\n",
            self.grace_ms, self.interval_ms
        );

        let mut b = Table::new(&[
            "store",
            "fail",
            "count",
            "policy",
            "detection",
            "placement",
            "restore",
            "first tick",
            "failed attempts",
            "ticks on the lost host: median / worst total",
            "frozen",
            "failed ticks",
        ])
        .left(4);
        for (scenario, count, policy, s) in self.rows() {
            let ticker = *policy == Policy::Checkpoint;
            let (store, fail) = scenario.split_once('/').unwrap_or((scenario, "-"));
            b.row(vec![
                store.to_string(),
                fail.to_string(),
                count.to_string(),
                policy.to_string(),
                median_max(&s.detect_ms),
                median_max(&s.place_ms),
                median_max(&s.restore_ms),
                median_max(&s.answer_ms),
                s.failed_attempts.to_string(),
                if ticker {
                    format!(
                        "{} / {}",
                        report::num(median(&s.tick_total_ms), 0),
                        report::num(s.tick_later_total_ms.as_ref().map(|s| s.max), 0)
                    )
                } else {
                    "-".into()
                },
                if ticker {
                    report::num(median(&s.tick_frozen_ms), 0)
                } else {
                    "-".into()
                },
                if ticker {
                    s.failed_ticks.to_string()
                } else {
                    "-".into()
                },
            ]);
        }
        print!("{}", b.render());
        println!(
            "(where the RTO goes, median / max ms over containers: detection = the lost host declared down - failure (with etcd/leader, by the new leader); placement = \
             the coordinator asks the new host's agent - declared down; restore = the agent reports it running - asked \
             (the version rebuilt from the store, CRIU's restore; a cold start for restart); first tick = its first tick - \
             running (below 0: it ticked before the agent's restore call returned). Ticks on the lost host: each run's median tick (dump to version stored), and the longest tick after a \
             container's first, ms)\n"
        );

        let missed = self.goals.iter().filter(|g| !g.goal.met).count();
        println!(
            "goals: {} of {} met",
            self.goals.len() - missed,
            self.goals.len()
        );
        for g in &self.goals {
            let value = match &g.goal.value {
                Value::Null => "not measured".to_string(),
                Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            println!(
                "  {:<70} {value} (goal {})  {}",
                format!("{} {} x {}: {}", g.scenario, g.count, g.policy, g.what),
                g.goal.goal,
                g.goal.verdict()
            );
        }
    }
}

impl Report {
    /// Every summary with its scenario, count and policy, in order.
    fn rows(&self) -> Vec<(&String, &usize, &Policy, &Summary)> {
        self.summary
            .iter()
            .flat_map(|(sc, counts)| {
                counts
                    .iter()
                    .flat_map(move |(c, policies)| policies.iter().map(move |(p, s)| (sc, c, p, s)))
            })
            .collect()
    }
}

/// A goal's name in the table's last column.
fn short(what: &str) -> &'static str {
    if what.starts_with("RTO") {
        "RTO"
    } else if what.starts_with("RPO") {
        "RPO"
    } else if what.starts_with("leader") {
        "fail-over"
    } else {
        "versions"
    }
}

/// The timeline of one trial, from its samples and the coordinator's log:
/// where the time went, for the reader.
pub fn timeline(trial: &Trial, samples: &[Sample]) -> String {
    let Some(fail) = trial.fail_unix_ms else {
        return String::new();
    };
    let at = |t: u64| format!("{:+8.2} s", (t as f64 - fail as f64) / 1000.0);
    let of: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.count == trial.count
                && s.policy == trial.policy
                && s.run == trial.run
                && s.scenario == trial.scenario
        })
        .collect();
    let lost = &trial.lost_host;
    let mut lines = vec![format!(
        "{} {} x {}, run {} (t = 0: {lost}'s link cut by `hack/cluster.sh fail {lost}`, {} ms after the command started; \
         the failure fell {} ms after every container was ready):",
        trial.scenario,
        trial.count,
        trial.policy.map_or("?", Policy::name),
        trial.run,
        report::num(
            trial
                .fail_unix_ms
                .zip(trial.fail_command_unix_ms)
                .map(|(f, c)| f as f64 - c as f64),
            0
        ),
        report::num(trial.offset_ms, 0),
    )];
    if let Some(h) = trial.last_heartbeat_unix_ms {
        lines.push(format!("  {}  {lost}'s last heartbeat", at(h)));
    }
    if let (Some(new), Some(f)) = (&trial.new_leader, trial.failover_ms) {
        let t = |ms: f64| format!("{:+8.2} s", ms / 1000.0);
        if let Some(l) = trial.leads_logged_ms {
            lines.push(format!("  {}  {new} logs that it leads", t(l)));
        }
        lines.push(format!(
            "  {}  {new} named leader by migratectl coordinator (a call of {} ms)",
            t(f),
            report::num(trial.failover_poll_ms, 0)
        ));
    }
    if let Some(d) = trial.down_unix_ms {
        lines.push(format!(
            "  {}  {lost} declared down (grace {} ms)",
            at(d),
            report::num(trial.grace_ms.map(|g| g as f64), 0)
        ));
    }
    let times = |f: &dyn Fn(&Sample) -> Option<f64>| -> Vec<(f64, &str)> {
        let mut v: Vec<(f64, &str)> = of
            .iter()
            .filter_map(|s| Some((f(s)?, s.id.as_str())))
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    };
    let step = |what: &str, v: Vec<(f64, &str)>, lines: &mut Vec<String>| {
        let (Some(first), Some(last)) = (v.first(), v.last()) else {
            return;
        };
        let t = |ms: f64| format!("{:+8.2} s", ms / 1000.0);
        if v.len() == 1 {
            lines.push(format!("  {}  {what} ({})", t(first.0), first.1));
        } else {
            lines.push(format!("  {}  first {what} ({})", t(first.0), first.1));
            lines.push(format!(
                "  {}  last {what} ({}; {} containers)",
                t(last.0),
                last.1,
                v.len()
            ));
        }
    };
    let sum = |parts: &[Option<f64>]| -> Option<f64> { parts.iter().copied().sum() };
    step(
        "asked to come back",
        times(&|s| sum(&[s.detect_ms, s.place_ms])),
        &mut lines,
    );
    step(
        "running again",
        times(&|s| sum(&[s.detect_ms, s.place_ms, s.restore_ms])),
        &mut lines,
    );
    step("ticking again", times(&|s| s.rto_ms), &mut lines);
    let spread: Vec<String> = trial
        .spread
        .iter()
        .map(|(h, n)| format!("{n} on {h}"))
        .collect();
    let versions: Vec<String> = {
        let mut v: Vec<u64> = of.iter().filter_map(|s| s.version).collect();
        v.sort_unstable();
        v.dedup();
        v.iter().map(|v| v.to_string()).collect()
    };
    lines.push(format!(
        "  spread: {}; versions restored: {}",
        if spread.is_empty() {
            "-".into()
        } else {
            spread.join(", ")
        },
        if versions.is_empty() {
            "none".into()
        } else {
            versions.join(", ")
        }
    ));
    lines.join("\n")
}

/// CDFs of the RTO per container (`ha-rto.png`) and of the state lost
/// (`ha-rpo.png`), per count and policy, beside `out`.
pub fn plot(out: &Path, samples: &[Sample]) -> Result<()> {
    let mut groups: BTreeMap<(String, usize, Policy), Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        if let Some(p) = s.policy {
            groups
                .entry((s.scenario.clone(), s.count, p))
                .or_default()
                .push(s);
        }
    }
    let cdf = |values: Vec<f64>| -> Vec<(f64, f64)> {
        let mut v = values;
        v.sort_by(f64::total_cmp);
        let n = v.len() as f64;
        v.into_iter()
            .enumerate()
            .map(|(i, x)| (x / 1000.0, (i + 1) as f64 / n))
            .collect()
    };
    let rto: Vec<Series> = groups
        .iter()
        .map(|((sc, n, p), of)| Series {
            name: format!("{sc} {n} x {p}"),
            points: cdf(of.iter().filter_map(|s| s.rto_ms).collect()),
        })
        .collect();
    plot::lines(
        &out.with_file_name("ha-rto.png"),
        &Labels {
            title: "RTO per container: its host lost -> first tick on its new host (CDF)",
            x: "seconds after the failure",
            y: "fraction of containers back",
        },
        &rto,
    )?;
    let mut rpo = Vec::new();
    for ((sc, n, p), of) in &groups {
        if *p == Policy::Checkpoint {
            rpo.push(Series {
                name: format!("{sc} {n} x {p}: version age"),
                points: cdf(of.iter().filter_map(|s| s.rpo_ms).collect()),
            });
            rpo.push(Series {
                name: format!("{sc} {n} x {p}: lost by ticks"),
                points: cdf(of.iter().filter_map(|s| s.lost_ms).collect()),
            });
        }
    }
    plot::lines(
        &out.with_file_name("ha-rpo.png"),
        &Labels {
            title: "State lost per restored container (CDF)",
            x: "seconds of state lost",
            y: "fraction of containers",
        },
        &rpo,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(count: usize, run: u64, rto: f64, rpo: Option<f64>) -> Sample {
        Sample {
            count,
            policy: Some(Policy::Checkpoint),
            run,
            scenario: "embedded/host".into(),
            ok: true,
            rto_ms: Some(rto),
            rpo_ms: rpo,
            version: rpo.map(|_| 3),
            ..Sample::default()
        }
    }

    fn trial(count: usize, run: u64) -> Trial {
        Trial {
            count,
            run,
            policy: Some(Policy::Checkpoint),
            scenario: "embedded/host".into(),
            grace_ms: Some(3000),
            ..Trial::default()
        }
    }

    #[test]
    fn goals_of_issue_16() {
        let trials = [trial(1, 0), trial(1, 1), trial(2, 0)];
        let samples = [
            sample(1, 0, 3900.0, Some(5000.0)),
            sample(1, 1, 4500.0, Some(9000.0)),
            sample(2, 0, 4000.0, Some(1000.0)),
            sample(2, 0, 9000.0, None),
        ];
        let r = summarize(&trials, &samples, 10_000.0);
        let goal = |count, what: &str| {
            r.goals
                .iter()
                .find(|g| g.count == count && g.what.starts_with(what))
                .map(|g| g.goal.met)
        };
        // Median of 3900 and 4500: 4200 > 4000.
        assert_eq!(goal(1, "RTO"), Some(false));
        assert_eq!(goal(1, "RPO"), Some(true));
        assert_eq!(goal(1, "containers"), Some(true));
        // No RTO goal for 2; one container came back cold.
        assert_eq!(goal(2, "RTO"), None);
        assert_eq!(goal(2, "containers"), Some(false));
        // Its worst RPO is unknown (one container has none).
        assert_eq!(goal(2, "RPO"), Some(false));
        let s = &r.summary["embedded/host"][&2][&Policy::Checkpoint];
        assert_eq!(median(&s.last_rto_ms), Some(9000.0));
        assert!(timeline(&trials[0], &samples).is_empty());
    }
}
