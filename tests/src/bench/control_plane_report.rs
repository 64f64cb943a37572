//! `bench control-plane`'s figures: per store and step, the beats' rate,
//! latency, lateness and failures and the daemons' CPU and memory; the
//! fail-over; the goals; the JSON, the plots and every beat as CSV.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::control_plane::{Options, StoreRun};
use super::control_plane_fleet::{Beat, Lapse, Outcome};
use super::plot::{self, Labels, Series};
use super::report::{Goal, Table};
use super::stats::{percentile, round};

pub use super::report::num;

/// What [`summarize`] hands back.
pub struct Summary {
    pub text: String,
    pub steps: Value,
    pub failover: Value,
    pub goals: Value,
    pub runs: Value,
}

/// The figures of one window of beats.
#[derive(Debug, Default, Clone)]
struct Beats {
    ok: usize,
    p50: Option<f64>,
    p90: Option<f64>,
    p99: Option<f64>,
    p999: Option<f64>,
    max: Option<f64>,
    late_period: usize,
    late_lease: usize,
    timeouts: usize,
    errors: usize,
    refused: usize,
    passed_on: usize,
}

impl Beats {
    /// A beat's latency is from its first call's sending to its answer
    /// (through the next replica when the first did not answer); a call
    /// that failed and was passed on is counted apart, not as failed.
    fn of<'a>(beats: impl Iterator<Item = &'a Beat>) -> Beats {
        let mut b = Beats::default();
        let mut latencies = Vec::new();
        for beat in beats {
            match beat.outcome {
                Outcome::Ok => {
                    let total = beat.sent_ms + beat.latency_ms - beat.beat_sent_ms;
                    b.ok += 1;
                    latencies.push(Some(total));
                    if total > beat.period_ms {
                        b.late_period += 1;
                    }
                    if total > beat.lease_ms {
                        b.late_lease += 1;
                    }
                }
                _ if beat.passed_on => b.passed_on += 1,
                Outcome::Timeout => b.timeouts += 1,
                Outcome::Error => b.errors += 1,
                Outcome::Refused => b.refused += 1,
            }
        }
        let q = |q: f64| percentile(latencies.iter().copied(), q).map(|v| round(v, 2));
        b.p50 = q(0.5);
        b.p90 = q(0.9);
        b.p99 = q(0.99);
        b.p999 = q(0.999);
        b.max = q(1.0);
        b
    }

    fn failed(&self) -> usize {
        self.timeouts + self.errors + self.refused
    }

    fn json(&self) -> Value {
        json!({
            "answered": self.ok, "latency_ms": { "p50": self.p50, "p90": self.p90, "p99": self.p99, "p999": self.p999, "max": self.max },
            "late_period": self.late_period, "late_lease": self.late_lease,
            "timeouts": self.timeouts, "errors": self.errors, "refused": self.refused, "passed_on": self.passed_on,
        })
    }
}

fn in_window(b: &Beat, (from, to): (f64, f64)) -> bool {
    b.beat_sent_ms >= from && b.beat_sent_ms < to
}

/// Lapses overlapping a window, recorded or still open at its end; the
/// hosts and the longest.
fn lapses_in(
    run: &StoreRun,
    (from, to): (f64, f64),
    open: &[Lapse],
) -> (Vec<Lapse>, usize, Option<f64>) {
    let mut all: Vec<Lapse> = run
        .rec
        .lapses
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.from_ms < to && l.to_ms > from)
        .copied()
        .collect();
    all.extend(open.iter().filter(|l| l.from_ms < to).copied());
    let mut hosts: Vec<u32> = all.iter().map(|l| l.host).collect();
    hosts.sort_unstable();
    hosts.dedup();
    let longest = all
        .iter()
        .map(|l| l.to_ms - l.from_ms)
        .max_by(f64::total_cmp)
        .map(|v| round(v, 1));
    (all, hosts.len(), longest)
}

/// The coordinators' decisions that a host is down, from their logs
/// (`... WARN host NAME is down: ...`): when (ms of the run's recorder)
/// and which host.
fn down_lines(run: &StoreRun) -> Vec<(f64, String)> {
    let mut out = Vec::new();
    for log in run
        .logs
        .iter()
        .filter(|p| p.to_string_lossy().contains("coordinator-"))
    {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text.lines() {
            let Some((ts, rest)) = line.split_once(' ') else {
                continue;
            };
            let Some(rest) = rest.strip_prefix("WARN host ") else {
                continue;
            };
            let Some((name, _)) = rest.split_once(" is down: ") else {
                continue;
            };
            let Ok(t) =
                time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
            else {
                continue;
            };
            let unix_ms = (t.unix_timestamp_nanos() / 1_000_000) as f64;
            out.push((unix_ms - run.rec.t0_unix_ms as f64, name.to_string()));
        }
    }
    out
}

/// The most hosts `migratectl hosts` showed down at once within a window
/// (and the second after it, for a poll to see the last declaration).
fn polled_down(run: &StoreRun, (from, to): (f64, f64)) -> usize {
    run.polls
        .iter()
        .filter(|p| p.at_ms >= from && p.at_ms <= to + 1000.0)
        .map(|p| p.down)
        .max()
        .unwrap_or(0)
}

/// The hosts declared down within a window, each once.
fn declared_down(downs: &[(f64, String)], (from, to): (f64, f64)) -> Vec<String> {
    let mut names: Vec<String> = downs
        .iter()
        .filter(|(t, _)| *t >= from && *t < to)
        .map(|(_, n)| n.clone())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// CPU % of one core between two samples.
fn cpu_pct(a: Option<f64>, b: Option<f64>, seconds: f64) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if seconds > 0.0 => Some(round((b - a) / seconds * 100.0, 1)),
        _ => None,
    }
}

fn sum(v: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = v.into_iter().flatten().collect();
    (!v.is_empty()).then(|| round(v.iter().sum(), 1))
}

fn mib(kib: Option<u64>) -> Option<f64> {
    kib.map(|k| round(k as f64 / 1024.0, 1))
}

fn host_name(host: u32) -> String {
    format!("s{:04}", host + 1)
}

pub fn summarize(runs: &[StoreRun], opts: &Options) -> Summary {
    let mut text = String::new();
    let mut table = Table::new(&[
        "store",
        "hosts",
        "containers",
        "reg s",
        "beats/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "late>period",
        "late>lease",
        "failed",
        "lapsed",
        "down",
        "coord CPU%",
        "coord RSS",
        "etcd CPU%",
        "etcd RSS",
        "bench CPU%",
    ])
    .left(1);
    let mut steps_json = Vec::new();
    let mut runs_json = Vec::new();
    let mut goals: Vec<(String, Goal)> = Vec::new();
    let mut failover_json = Value::Null;
    let mut failover_text = String::new();
    let top = opts.hosts.last().copied().unwrap_or(0);
    for run in runs {
        let beats = run.rec.beats.lock().unwrap();
        let store = run.store.name();
        let downs = down_lines(run);
        let mut top_beats = None;
        for step in &run.steps {
            let window = step.window_ms;
            let seconds = (window.1 - window.0) / 1000.0;
            let b = Beats::of(beats.iter().filter(|b| in_window(b, window)));
            let (lapses, lapsed_hosts, lapse_max) = lapses_in(run, window, &step.open_lapses);
            let regs: Vec<_> = run
                .rec
                .registrations
                .lock()
                .unwrap()
                .iter()
                .filter(|r| r.sent_ms >= step.registration_from_ms && r.sent_ms < window.0)
                .cloned()
                .collect();
            let reg_ok: Vec<Option<f64>> = regs
                .iter()
                .filter(|r| r.error.is_none())
                .map(|r| Some(r.latency_ms))
                .collect();
            let polled_down = polled_down(run, window);
            let declared = declared_down(&downs, window);
            let down = step.down_at_end.len().max(polled_down).max(declared.len());
            let coord_cpu_each: Vec<Option<f64>> = step
                .cpu_start
                .coordinators
                .iter()
                .zip(&step.cpu_end.coordinators)
                .map(|(a, b)| cpu_pct(*a, *b, seconds))
                .collect();
            let coord_cpu = sum(coord_cpu_each.iter().copied());
            let etcd_cpu = sum(step
                .cpu_start
                .etcd
                .iter()
                .zip(&step.cpu_end.etcd)
                .map(|(a, b)| cpu_pct(*a, *b, seconds)));
            let bench_cpu = cpu_pct(step.cpu_start.bench, step.cpu_end.bench, seconds);
            let coord_rss = step.coordinator_rss_kib.iter().filter_map(|r| r.0).max();
            let etcd_rss: Option<u64> = {
                let v: Vec<u64> = step.etcd_rss_kib.iter().filter_map(|r| r.0).collect();
                (!v.is_empty()).then(|| v.iter().sum())
            };
            let beats_per_s = round(b.ok as f64 / seconds, 1);
            table.row(vec![
                store.into(),
                step.hosts.to_string(),
                (step.hosts * opts.containers as usize).to_string(),
                format!("{:.1}", step.registration_s),
                format!("{beats_per_s:.0}"),
                num(b.p50, 1),
                num(b.p99, 1),
                num(b.max, 0),
                b.late_period.to_string(),
                b.late_lease.to_string(),
                b.failed().to_string(),
                lapsed_hosts.to_string(),
                down.to_string(),
                num(coord_cpu, 0),
                super::report::mib(coord_rss.map(|k| k as f64 * 1024.0)),
                num(etcd_cpu, 0),
                super::report::mib(etcd_rss.map(|k| k as f64 * 1024.0)),
                num(bench_cpu, 0),
            ]);
            steps_json.push(json!({
                "store": store, "hosts": step.hosts, "containers": step.hosts * opts.containers as usize,
                "window_s": round(seconds, 2), "beats_per_s": beats_per_s, "beats": b.json(),
                "registration": {
                    "s": round(step.registration_s, 2), "count": regs.len(),
                    "failed": regs.iter().filter(|r| r.error.is_some()).count(),
                    "again": regs.iter().filter(|r| r.again).count(),
                    "p50_ms": percentile(reg_ok.iter().copied(), 0.5).map(|v| round(v, 1)),
                    "p99_ms": percentile(reg_ok.iter().copied(), 0.99).map(|v| round(v, 1)),
                    "max_ms": percentile(reg_ok.iter().copied(), 1.0).map(|v| round(v, 1)),
                },
                "lapses": { "hosts": lapsed_hosts, "longest_ms": lapse_max, "list": lapses.iter().take(200).map(|l| json!({"host": host_name(l.host), "from_ms": round(l.from_ms, 1), "to_ms": round(l.to_ms, 1)})).collect::<Vec<_>>() },
                "down": { "declared": declared.len(), "declared_list": declared.iter().take(50).collect::<Vec<_>>(), "at_end": step.down_at_end.len(), "max_polled": polled_down, "at_end_list": step.down_at_end.iter().take(50).collect::<Vec<_>>(), "ready_at_end": step.ready_at_end },
                "cpu_pct": { "coordinators": coord_cpu, "each_coordinator": coord_cpu_each, "etcd": etcd_cpu, "bench": bench_cpu },
                "rss_mib": {
                    "coordinators": step.coordinator_rss_kib.iter().map(|r| mib(r.0)).collect::<Vec<_>>(),
                    "coordinators_peak": step.coordinator_rss_kib.iter().map(|r| mib(r.1)).collect::<Vec<_>>(),
                    "etcd": step.etcd_rss_kib.iter().map(|r| mib(r.0)).collect::<Vec<_>>(),
                    "bench": mib(step.bench_rss_kib.0),
                },
                "window_ms": [round(window.0, 1), round(window.1, 1)],
            }));
            if step.hosts == top {
                top_beats = Some((b.clone(), lapsed_hosts, down));
            }
        }
        if let Some((b, lapsed, down)) = top_beats {
            let bad = b.late_period + b.failed() + lapsed + down;
            goals.push((
                format!("{store}: every beat at {top} hosts in time"),
                Goal {
                    value: json!(bad),
                    goal:
                        "0 beats answered after their period or failed, 0 leases out, 0 hosts down"
                            .into(),
                    met: bad == 0,
                },
            ));
        }
        if let Some(f) = &run.failover {
            let (fj, ft, fgoals) = failover(run, f, &beats);
            failover_json = fj;
            failover_text = ft;
            goals.extend(fgoals);
        }
        runs_json.push(run_json(run, &beats));
    }
    let _ = writeln!(
        text,
        "\ncontrol plane: simulated hosts beating through migrate-coordinator (period 1 s jittered, lease 2.5 s, grace 3 s), {} s per step",
        opts.duration
    );
    text.push_str(&table.render());
    let _ = writeln!(
        text,
        "(late>period: answered after the next beat was due; late>lease: after 2.5 s; failed: no answer, an error, \
         or refused (the host was declared down); lapsed: hosts whose lease ran out; down: hosts the coordinator \
         declared down (its log, ListHosts); CPU % of one core of 2)"
    );
    text.push_str(&failover_text);
    let mut g = Table::new(&["goal", "value", "target", "verdict"]).left(1);
    for (name, goal) in &goals {
        g.row(vec![
            name.clone(),
            goal.value.to_string(),
            goal.goal.clone(),
            goal.verdict().into(),
        ]);
    }
    let _ = writeln!(text, "\ngoals");
    text.push_str(&g.render());
    let goals_json: Value = goals
        .iter()
        .map(|(n, g)| (n.clone(), serde_json::to_value(g).unwrap()))
        .collect::<serde_json::Map<_, _>>()
        .into();
    Summary {
        text,
        steps: steps_json.into(),
        failover: failover_json,
        goals: goals_json,
        runs: runs_json.into(),
    }
}

/// The fail-over's figures, text and goals.
fn failover(
    run: &StoreRun,
    f: &super::control_plane::Failover,
    beats: &[Beat],
) -> (Value, String, Vec<(String, Goal)>) {
    let window = (f.kill_ms, f.watch_end_ms);
    let killed = run
        .coordinator_names
        .iter()
        .position(|n| *n == f.killed)
        .unwrap_or(usize::MAX) as u8;
    let b = Beats::of(beats.iter().filter(|b| in_window(b, window)));
    let (lapses, lapsed_hosts, lapse_max) = lapses_in(run, window, &f.open_lapses);
    // Per host: its acknowledgements' times, to find the first on another
    // replica after the kill and the longest time without one across it.
    let mut acks: BTreeMap<u32, Vec<(f64, u8)>> = BTreeMap::new();
    for beat in beats.iter().filter(|b| b.outcome == Outcome::Ok) {
        acks.entry(beat.host)
            .or_default()
            .push((beat.sent_ms + beat.latency_ms, beat.replica));
    }
    let mut moved = Vec::new();
    let mut gaps = Vec::new();
    let hosts = acks.len();
    for list in acks.values_mut() {
        list.sort_by(|a, b| a.0.total_cmp(&b.0));
        if let Some(first) = list.iter().find(|(t, r)| *t > f.kill_ms && *r != killed) {
            moved.push(Some(first.0 - f.kill_ms));
        }
        let before = list
            .iter()
            .rev()
            .find(|(t, _)| *t <= f.kill_ms)
            .map(|a| a.0);
        let after = list.iter().find(|(t, _)| *t > f.kill_ms).map(|a| a.0);
        if let (Some(a), Some(b)) = (before, after) {
            gaps.push(Some(b - a));
        }
    }
    let polled_down = polled_down(run, window);
    let downs = down_lines(run);
    let declared = declared_down(&downs, window);
    let down = f.down_at_end.len().max(polled_down).max(declared.len());
    let q = |v: &[Option<f64>], q: f64| percentile(v.iter().copied(), q).map(|x| round(x, 1));
    let errors = run.rec.errors.lock().unwrap().clone();
    let secs = (f.cpu_after_kill.at_ms - f.cpu_at_kill.at_ms) / 1000.0;
    let pair = |a: &[Option<f64>], b: &[Option<f64>]| {
        sum(a.iter().zip(b).map(|(x, y)| cpu_pct(*x, *y, secs)))
    };
    let cpu_coord = pair(&f.cpu_at_kill.coordinators, &f.cpu_after_kill.coordinators);
    let cpu_etcd = pair(&f.cpu_at_kill.etcd, &f.cpu_after_kill.etcd);
    let cpu_bench = cpu_pct(f.cpu_at_kill.bench, f.cpu_after_kill.bench, secs);
    let value = json!({
        "killed": f.killed, "agents_beat_through": f.agents_beat_through,
        "kill_unix_ms": f.kill_unix_ms, "watch_s": round((f.watch_end_ms - f.kill_ms) / 1000.0, 1),
        "named_ms": f.named_ms.map(|v| round(v, 1)), "new_leader": f.new_leader,
        "leading_ms": f.leading_ms.map(|v| round(v, 1)), "leader_since_unix_ms": f.leader_since_unix_ms,
        "leader_won_after_kill_ms": f.leader_since_unix_ms.map(|s| s as i64 - f.kill_unix_ms as i64),
        "hosts": hosts, "hosts_moved": moved.len(),
        "moved_ms": { "p50": q(&moved, 0.5), "p99": q(&moved, 0.99), "max": q(&moved, 1.0) },
        "without_ack_ms": { "p50": q(&gaps, 0.5), "p99": q(&gaps, 0.99), "max": q(&gaps, 1.0) },
        "beats": b.json(),
        "lapses": { "hosts": lapsed_hosts, "longest_ms": lapse_max, "list": lapses.iter().take(200).map(|l| json!({"host": host_name(l.host), "from_ms": round(l.from_ms, 1), "to_ms": round(l.to_ms, 1)})).collect::<Vec<_>>() },
        "down": { "declared": declared.len(), "declared_list": declared.iter().take(50).collect::<Vec<_>>(), "at_end": f.down_at_end.len(), "max_polled": polled_down, "list": f.down_at_end.iter().take(50).collect::<Vec<_>>(), "ready_at_end": f.ready_at_end },
        "errors_whole_run": errors,
        "cpu_pct_after_kill": { "seconds": round(secs, 2), "coordinators": cpu_coord, "etcd": cpu_etcd, "bench": cpu_bench },
    });
    let mut t = Table::new(&["fail-over (etcd, SIGKILL of the leader)", "value"]).left(1);
    t.row(vec![
        "killed; the agents beat through".into(),
        format!("{}; {}", f.killed, f.agents_beat_through),
    ]);
    t.row(vec![
        "another leader named (ListCoordinators), ms".into(),
        num(f.named_ms, 0),
    ]);
    t.row(vec![
        format!(
            "{} reports itself leader, ms",
            f.new_leader.as_deref().unwrap_or("a survivor")
        ),
        num(f.leading_ms, 0),
    ]);
    t.row(vec![
        "hosts beating through a survivor / all".into(),
        format!("{} / {}", moved.len(), hosts),
    ]);
    t.row(vec![
        "  moved after the kill: p50 / max ms".into(),
        format!("{} / {}", num(q(&moved, 0.5), 0), num(q(&moved, 1.0), 0)),
    ]);
    t.row(vec![
        "time without an acknowledged beat: p50 / max ms".into(),
        format!("{} / {}", num(q(&gaps, 0.5), 0), num(q(&gaps, 1.0), 0)),
    ]);
    t.row(vec![
        format!(
            "beats in {:.0} s: answered, late>period, late>lease, unanswered",
            (f.watch_end_ms - f.kill_ms) / 1000.0
        ),
        format!(
            "{}, {}, {}, {}",
            b.ok,
            b.late_period,
            b.late_lease,
            b.failed()
        ),
    ]);
    t.row(vec![
        "calls that failed and were passed on to the next replica".into(),
        b.passed_on.to_string(),
    ]);
    t.row(vec![
        "latency p50 / p99 / max ms".into(),
        format!("{} / {} / {}", num(b.p50, 1), num(b.p99, 1), num(b.max, 0)),
    ]);
    t.row(vec![
        format!("CPU % in the {secs:.1} s after the kill: survivors, etcd, bench"),
        format!(
            "{}, {}, {}",
            num(cpu_coord, 0),
            num(cpu_etcd, 0),
            num(cpu_bench, 0)
        ),
    ]);
    t.row(vec![
        "hosts whose lease ran out".into(),
        lapsed_hosts.to_string(),
    ]);
    t.row(vec!["hosts declared down".into(), down.to_string()]);
    let text = format!("\n{}", t.render());
    let fo = f.leading_ms.map(|ms| round(ms / 1000.0, 2));
    let goals = vec![
        (
            "leader fail-over (kill to a survivor leading), s".to_string(),
            Goal::number(fo, "<= 5", |v| v <= 5.0),
        ),
        (
            "fail-over: hosts lapsed or declared down".to_string(),
            Goal {
                value: json!(lapsed_hosts + down),
                goal: "0".into(),
                met: lapsed_hosts + down == 0 && f.leading_ms.is_some(),
            },
        ),
    ];
    (value, text, goals)
}

/// A store's run for the JSON: per-second series, ListHosts polls,
/// failures, registrations, and the late and failed beats themselves.
fn run_json(run: &StoreRun, beats: &[Beat]) -> Value {
    let seconds = timeline(beats, 1000.0);
    let late: Vec<Value> = beats
        .iter()
        .filter(|b| b.outcome != Outcome::Ok || b.sent_ms + b.latency_ms - b.beat_sent_ms > b.period_ms)
        .take(2000)
        .map(|b| {
            json!({"host": host_name(b.host), "beat_sent_ms": round(b.beat_sent_ms, 1), "sent_ms": round(b.sent_ms, 1), "passed_on": b.passed_on, "latency_ms": round(b.latency_ms, 1),
                   "period_ms": round(b.period_ms, 0), "replica": run.coordinator_names.get(b.replica as usize), "outcome": b.outcome.name()})
        })
        .collect();
    let regs = run.rec.registrations.lock().unwrap();
    let failed_regs: Vec<Value> = regs
        .iter()
        .filter(|r| r.error.is_some())
        .take(200)
        .map(|r| json!({"host": host_name(r.host), "sent_ms": round(r.sent_ms, 1), "error": r.error}))
        .collect();
    json!({
        "store": run.store.name(),
        "t0_unix_ms": run.rec.t0_unix_ms,
        "end_ms": round(run.end_ms, 1),
        "coordinators": run.coordinator_names, "endpoints": run.endpoints,
        "logs": super::control_plane::log_names(run),
        "steps": run.steps,
        "failover": run.failover,
        "per_second": seconds.iter().map(|s| json!({"t_s": s.0, "answered": s.1, "p50_ms": s.2, "p99_ms": s.3, "max_ms": s.4, "failed": s.5})).collect::<Vec<_>>(),
        "host_polls": run.polls,
        "errors": *run.rec.errors.lock().unwrap(),
        "registrations": { "count": regs.len(), "again": regs.iter().filter(|r| r.again).count(), "failed": failed_regs },
        "late_or_failed_beats": late,
        "beats_recorded": beats.len(),
    })
}

/// Beats by the bin of their sending: (bin start s, answered, p50, p99, max, failed).
fn timeline(
    beats: &[Beat],
    bin_ms: f64,
) -> Vec<(f64, usize, Option<f64>, Option<f64>, Option<f64>, usize)> {
    let mut bins: BTreeMap<i64, (Vec<Option<f64>>, usize)> = BTreeMap::new();
    for b in beats {
        let e = bins.entry((b.sent_ms / bin_ms).floor() as i64).or_default();
        if b.outcome == Outcome::Ok {
            e.0.push(Some(b.latency_ms));
        } else {
            e.1 += 1;
        }
    }
    bins.into_iter()
        .map(|(k, (l, failed))| {
            let q = |q: f64| percentile(l.iter().copied(), q).map(|v| round(v, 2));
            (
                round(k as f64 * bin_ms / 1000.0, 3),
                l.len(),
                q(0.5),
                q(0.99),
                q(1.0),
                failed,
            )
        })
        .collect()
}

/// The PNG plots beside the JSON: latency percentiles against hosts per
/// store; p99 per second over each store's run; beats answered around the
/// leader's kill.
pub fn plots(out: &Path, runs: &[StoreRun], _opts: &Options) -> Result<()> {
    let stem = out
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("control-plane")
        .to_string();
    let mut series = Vec::new();
    for run in runs {
        let beats = run.rec.beats.lock().unwrap();
        let mut p50 = Vec::new();
        let mut p99 = Vec::new();
        for step in &run.steps {
            let b = Beats::of(beats.iter().filter(|b| in_window(b, step.window_ms)));
            if let (Some(a), Some(c)) = (b.p50, b.p99) {
                p50.push((step.hosts as f64, a));
                p99.push((step.hosts as f64, c));
            }
        }
        series.push(Series {
            name: format!("{} p50", run.store.name()),
            points: p50,
        });
        series.push(Series {
            name: format!("{} p99", run.store.name()),
            points: p99,
        });
    }
    plot::lines(
        &out.with_file_name(format!("{stem}-latency.png")),
        &Labels {
            title: "Heartbeat latency against simulated hosts",
            x: "hosts",
            y: "latency, ms",
        },
        &series,
    )?;
    let mut series = Vec::new();
    for run in runs {
        let beats = run.rec.beats.lock().unwrap();
        let points = timeline(&beats, 1000.0)
            .into_iter()
            .filter_map(|(t, _, _, p99, _, _)| p99.map(|p| (t, p)))
            .collect();
        series.push(Series {
            name: format!("{} p99 per second", run.store.name()),
            points,
        });
    }
    plot::lines(
        &out.with_file_name(format!("{stem}-timeline.png")),
        &Labels {
            title: "Heartbeat latency over the ramp (p99 of each second)",
            x: "s since the store's start",
            y: "latency, ms",
        },
        &series,
    )?;
    for run in runs {
        let Some(f) = &run.failover else { continue };
        let beats = run.rec.beats.lock().unwrap();
        let from = f.kill_ms - 3000.0;
        let near: Vec<Beat> = beats
            .iter()
            .filter(|b| b.sent_ms >= from && b.sent_ms < f.watch_end_ms)
            .copied()
            .collect();
        let bins = timeline(&near, 100.0);
        let answered = bins
            .iter()
            .map(|b| (round(b.0 - f.kill_ms / 1000.0, 2), b.1 as f64))
            .collect();
        let failed = bins
            .iter()
            .map(|b| (round(b.0 - f.kill_ms / 1000.0, 2), b.5 as f64))
            .collect();
        plot::lines(
            &out.with_file_name(format!("{stem}-failover.png")),
            &Labels {
                title: &format!(
                    "Beats around the leader's SIGKILL ({} hosts, etcd)",
                    run.steps.last().map_or(0, |s| s.hosts)
                ),
                x: "s since the kill",
                y: "beats sent per 100 ms",
            },
            &[
                Series {
                    name: "answered".into(),
                    points: answered,
                },
                Series {
                    name: "failed".into(),
                    points: failed,
                },
            ],
        )?;
    }
    Ok(())
}

/// Every beat of every store, one CSV per store in the logs' directory.
pub fn write_csv(dir: &Path, runs: &[StoreRun]) -> Result<()> {
    for run in runs {
        let path = dir.join(format!("beats-{}.csv", run.store.name()));
        let beats = run.rec.beats.lock().unwrap();
        let mut out = String::with_capacity(beats.len() * 48);
        let _ = writeln!(
            out,
            "host,beat_sent_ms,sent_ms,latency_ms,period_ms,lease_ms,replica,outcome,passed_on"
        );
        for b in beats.iter() {
            let _ = writeln!(
                out,
                "{},{:.3},{:.3},{:.3},{:.0},{:.0},{},{},{}",
                host_name(b.host),
                b.beat_sent_ms,
                b.sent_ms,
                b.latency_ms,
                b.period_ms,
                b.lease_ms,
                run.coordinator_names
                    .get(b.replica as usize)
                    .map_or("?", |s| s.as_str()),
                b.outcome.name(),
                b.passed_on
            );
        }
        std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
