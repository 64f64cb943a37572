//! Migration benchmark (issue 14): a memtick container moved between the two
//! hosts of a local cluster (hack/cluster.sh) whose link is limited to
//! 1 Gbit/s, by the stock path against `migratectl migrate`, in one run.
//!
//! For each size (64, 256, 1024 MiB of touched memory by default), `--runs`
//! times, with a fresh container per measurement and the two paths in
//! alternating order, it migrates memtick from h1 to h2 (see
//! [`super::migrate_run`] for both paths) and measures
//! - downtime: the largest gap between memtick's clock ticks across the
//!   migration, as the process lived it (includes up to one 10 ms interval);
//! - total: from the first command of the migration until the counter ticks
//!   on the target;
//! - bytes on the wire: what both hosts sent on their links (tx counters);
//! - for migratectl also its own `downtimeMs` and the memory and filesystem
//!   bytes it moved.
//!
//! Goals (medians): migratectl's downtime at most
//! 1.3 × (memory + filesystem delta) / link bandwidth + 0.3 s at every size
//! (the physical limit of stop-and-copy plus set-up), and at most 0.5 × the
//! stock path's downtime at 1 GiB.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use containerd_migrate_tests::cluster::{self, Cluster};
use containerd_migrate_tests::fixture::{self, IMAGE};
use containerd_migrate_tests::{host, process};
use serde::Serialize;
use serde_json::{Value, json};

use super::link;
use super::migrate_run::{INTERVAL_MS, Rig, Route, Sample};
use super::plot::{self, Labels, Series};
use super::report::{self, Goal, Table};
use super::session::{hack, sha256};
use super::stats::{Stats, median, ratio};
use super::{machine, memtick_workload, say};

const GOAL_MIB: u64 = 1024;
/// Downtime goal: this factor on the time the payload needs on the link...
const GOAL_LINK_FACTOR: f64 = 1.3;
/// ...plus this much set-up.
const GOAL_SETUP_MS: f64 = 300.0;
/// migratectl's downtime over the stock path's at [`GOAL_MIB`].
const GOAL_STOCK_RATIO: f64 = 0.5;

#[derive(Args, Debug)]
pub struct Options {
    /// Migrations per size and path.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub runs: u64,
    /// memtick sizes in MiB (`64,256,1024` or `64 256 1024`).
    #[arg(long, num_args = 1.., value_delimiter = ',', default_values_t = [64, 256, 1024])]
    pub sizes: Vec<u64>,
    /// The paths to measure.
    #[arg(long, num_args = 1.., value_delimiter = ',', default_values_t = [Route::Stock, Route::Migratectl])]
    pub paths: Vec<Route>,
    /// The link's limit in Mbit/s, each direction (tc tbf on every host).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate_mbit: u64,
    /// Ticks memtick must have made before a migration.
    #[arg(long, default_value_t = 50)]
    pub warm_ticks: u64,
    /// Seconds any one command may take.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// The local cluster's name (CLUSTER_NAME of hack/cluster.sh), brought
    /// up at the start and taken down at the end.
    #[arg(long, default_value = "bench")]
    pub cluster: String,
    /// Where the JSON results go [default: <repo>/target/bench/migrate.json];
    /// the PNG plots go beside it.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// Use target/release's binaries as they are (no cargo build).
    #[arg(long)]
    pub skip_build: bool,
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

pub fn run(opts: Options) -> Result<()> {
    if opts.sizes.contains(&0) {
        bail!("--sizes must be MiB numbers above 0");
    }
    check_prerequisites()?;
    let build_note = if opts.skip_build { None } else { build() };
    let bench_bin = std::env::current_exe().context("finding this program's own path")?;
    if !fixture::repo_root()
        .join("target/images/testbox.tar")
        .is_file()
    {
        say("building the test image");
        let out = process::run_within(hack("images.sh", &["build"]), Duration::from_secs(600))
            .map_err(anyhow::Error::msg)?;
        if !out.success() {
            bail!("building the test image failed\n{out}");
        }
    }

    say(format!("bringing up cluster {} with 2 hosts", opts.cluster));
    super::interrupt::guard_cluster(&opts.cluster);
    let cluster = Cluster::up(&opts.cluster, 2).map_err(anyhow::Error::msg);
    let result = cluster.and_then(|c| {
        let r = measure_all(&opts, &c, bench_bin, build_note);
        say(format!("taking cluster {} down", opts.cluster));
        drop(c);
        r
    });
    super::interrupt::release();
    result
}

/// What the benchmark needs besides what a cluster needs.
fn check_prerequisites() -> Result<()> {
    if !host::is_root() {
        bail!("run as root");
    }
    let mut missing = cluster::missing_prerequisites();
    missing.extend(
        ["tc", "ip"]
            .into_iter()
            .filter(|t| host::which(t).is_none())
            .map(|t| format!("`{t}` on PATH (iproute2)")),
    );
    if !missing.is_empty() {
        bail!("missing: {} (hack/setup.sh)", missing.join(", "));
    }
    Ok(())
}

/// `cargo build --release --workspace`: every host runs the workspace's
/// daemons from target/release. On failure the binaries already there are
/// used and a note says so.
fn build() -> Option<String> {
    say("building the workspace (cargo build --release --workspace)");
    let mut cmd = std::process::Command::new("cargo");
    cmd.current_dir(fixture::repo_root())
        .args(["build", "--quiet", "--release", "--workspace"]);
    let out = process::run_within(cmd, Duration::from_secs(3600));
    match out {
        Ok(out) if out.success() => None,
        other => {
            let note = "cargo build failed; the existing binaries were used".to_string();
            say(format!("WARNING: {note}\n{other:?}"));
            Some(note)
        }
    }
}

fn measure_all(
    opts: &Options,
    cluster: &Cluster,
    bench_bin: std::path::PathBuf,
    build_note: Option<String>,
) -> Result<()> {
    let (h1, h2) = (cluster.host("h1"), cluster.host("h2"));
    for h in [h1, h2] {
        let out = process::run_within(
            hack("images.sh", &["import", h.ctr().address()]),
            Duration::from_secs(300),
        )
        .map_err(anyhow::Error::msg)?;
        if !out.success() {
            bail!("importing the test image into {} failed\n{out}", h.name);
        }
        link::shape(cluster.name(), &h.name, &format!("{}mbit", opts.rate_mbit))?;
    }
    let qdiscs: BTreeMap<String, String> = [h1, h2]
        .iter()
        .map(|h| (h.name.clone(), link::qdisc(cluster.name(), &h.name)))
        .collect();
    for (h, q) in &qdiscs {
        say(format!("{h} eth0: {q}"));
    }
    let rig = Rig::new(
        cluster,
        h1,
        h2,
        bench_bin,
        Duration::from_secs(opts.timeout),
        opts.warm_ticks,
    );
    let load_before = machine::loadavg();
    let started = machine::now_utc();
    say(format!(
        "sizes {:?} MiB, {} runs each, paths {:?} (alternating order), link {} Mbit/s",
        opts.sizes, opts.runs, opts.paths, opts.rate_mbit
    ));

    let mut samples = Vec::new();
    for &mib in &opts.sizes {
        for run in 0..opts.runs {
            let mut order = opts.paths.clone();
            if run % 2 == 1 {
                order.reverse();
            }
            for (k, &route) in order.iter().enumerate() {
                memtick_workload::wait_for_memory(3 * mib + 1024);
                let mut s = Sample {
                    mib,
                    run,
                    order: k,
                    path: route.name(),
                    id: Rig::id(route, mib, run),
                    loadavg_1m: machine::loadavg_1m(),
                    ..Sample::default()
                };
                match rig.measure(route, &mut s) {
                    Ok(()) => {
                        s.ok = true;
                        eprintln!(
                            "    {mib:>5} MiB run {run} {:<10} total {:>9} ms  downtime {:>7} ms  wire {}",
                            route.name(),
                            report::num(s.total_ms, 1),
                            report::num(s.downtime_ms, 0),
                            report::mib(s.wire_bytes),
                        );
                    }
                    Err(e) => {
                        eprintln!(
                            "    {mib:>5} MiB run {run} {:<10} FAILED: {e}",
                            route.name()
                        );
                        s.error = Some(e);
                    }
                }
                rig.clear(&s.id);
                samples.push(s);
            }
        }
    }
    let load_after = machine::loadavg();

    let results = summarize(opts, &samples);
    let mut machine_doc = machine::describe(machine::CODE_PATHS);
    machine_doc["loadavg_before"] = load_before.clone().into();
    machine_doc["loadavg_after"] = load_after.clone().into();
    machine_doc["build_note"] = build_note.into();
    machine_doc["binaries"] = binaries();
    let doc = json!({
        "summary": results.summary,
        "goals": results.goals,
        "config": {
            "runs": opts.runs, "sizes_mib": opts.sizes, "paths": opts.paths,
            "interval_ms": INTERVAL_MS, "warm_ticks": opts.warm_ticks,
            "rate_mbit": opts.rate_mbit, "qdiscs": qdiscs,
            "cluster": cluster.name(), "image": IMAGE,
            "hosts": { "source": h1.name, "target": h2.name },
            "paths_described": {
                "stock": "runc.v2 on both hosts: ctr c checkpoint --task --rw ID REF; ctr t delete --force ID (the source stops); ctr images export --skip-manifest-json /var/tmp/ID.tar REF; the archive sent over TCP from source to target (bench wire-send / wire-receive, run inside the hosts); ctr images import; ctr c restore --live --rw ID REF",
                "migratectl": "migratectl run --host h1 IMAGE ID -- memtick ...; migratectl migrate --to h2 --json ID"
            },
            "downtime": "memtick's max_wall_gap_ms (CLOCK_REALTIME; the hosts share the machine's clock) read from the restored process, when it grew across the migration; includes up to one tick interval. Not max_gap_ms: CRIU restores CLOCK_MONOTONIC in a time namespace continued from the dump, which hides the move",
            "total": "from the first command of the migration until the counter ticks on the target, timed by the benchmark",
            "wire_bytes": "tx bytes of both hosts' eth0 (ip -s link, in each host's network namespace) over the migration; includes the cluster's heartbeats",
            "payload_bytes": "stock: the exported archive; migratectl: memoryBytes + filesystemBytes of its JSON",
            "goal_downtime_limit": format!("{GOAL_LINK_FACTOR} x payload / ({} Mbit/s) + {GOAL_SETUP_MS} ms, with migratectl's payload", opts.rate_mbit),
        },
        "machine": machine_doc,
        "started": started, "finished": machine::now_utc(),
        "samples": samples,
    });
    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| report::default_out("migrate"));
    report::write_json(&out, &doc)?;

    print!("{}", results.table.render());
    println!(
        "(medians of up to {} runs per size and path; link {} Mbit/s each way; downtime includes the {INTERVAL_MS} ms tick interval; load {load_before} -> {load_after})\n",
        opts.runs, opts.rate_mbit
    );
    let g = &results.goals;
    println!("goals:");
    for (mib, goal) in &g.downtime_within_link_limit {
        println!(
            "  {:<52} {} (goal {})  {}",
            format!("migratectl downtime ms at {mib} MiB"),
            value(goal),
            goal.goal,
            goal.verdict()
        );
    }
    println!(
        "  {:<52} {} (goal {})  {}",
        format!("migratectl / stock downtime at {GOAL_MIB} MiB"),
        value(&g.downtime_over_stock),
        g.downtime_over_stock.goal,
        g.downtime_over_stock.verdict()
    );
    println!(
        "  {:<52} {}  {}",
        "state continuity after every migration",
        value(&g.state_continuity),
        g.state_continuity.verdict()
    );
    let failed: Vec<&Sample> = samples.iter().filter(|s| !s.ok).collect();
    if !failed.is_empty() {
        say(format!("{} sample(s) failed:", failed.len()));
        for s in failed {
            eprintln!(
                "    {} MiB run {} {}: {}",
                s.mib,
                s.run,
                s.path,
                s.error.as_deref().unwrap_or("")
            );
        }
    }
    plot_medians(&out, opts.rate_mbit, &results.summary)?;
    Ok(())
}

fn value(g: &Goal) -> String {
    if g.value.is_null() {
        "not measured".to_string()
    } else {
        g.value.to_string()
    }
}

/// The sha256 of the binaries the hosts ran (target/release, SHIM_DIR).
fn binaries() -> Value {
    let dir = fixture::shim_dir();
    let names = [
        fixture::MIGRATE_SHIM_BINARY,
        "migratectl",
        "migrate-agent",
        "migrate-coordinator",
        "containerd-snapshotter-migrate",
    ];
    names
        .iter()
        .map(|n| (n.to_string(), Value::from(sha256(&dir.join(n)))))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Per size and path: medians and counts.
#[derive(Debug, Serialize)]
struct PathSummary {
    ok: usize,
    failed: usize,
    total_ms: Option<Stats>,
    downtime_ms: Option<Stats>,
    reported_downtime_ms: Option<Stats>,
    wire_bytes: Option<Stats>,
    payload_bytes: Option<Stats>,
    steps_ms: BTreeMap<String, Stats>,
    continuity: Option<bool>,
}

#[derive(Debug, Serialize)]
struct Goals {
    /// Per size: migratectl's median downtime against the link limit of its
    /// median payload.
    downtime_within_link_limit: BTreeMap<u64, Goal>,
    downtime_over_stock: Goal,
    state_continuity: Goal,
}

struct Results {
    summary: BTreeMap<u64, BTreeMap<&'static str, PathSummary>>,
    goals: Goals,
    table: Table,
}

/// The downtime limit of the goal for `payload_bytes` over a link of
/// `rate_mbit`: 1.3 × the time on the link + 0.3 s, in ms.
pub fn downtime_limit_ms(payload_bytes: f64, rate_mbit: u64) -> f64 {
    let link_ms = payload_bytes * 8.0 / (rate_mbit as f64 * 1e6) * 1000.0;
    GOAL_LINK_FACTOR * link_ms + GOAL_SETUP_MS
}

fn summarize(opts: &Options, samples: &[Sample]) -> Results {
    let ok = |p: &'static str, mib: u64| {
        samples
            .iter()
            .filter(move |s| s.path == p && s.mib == mib && s.ok)
    };
    let stat =
        |p: &'static str, mib: u64, f: fn(&Sample) -> Option<f64>| Stats::of(ok(p, mib).map(f));
    let mut sizes: Vec<u64> = samples.iter().map(|s| s.mib).collect();
    sizes.sort_unstable();
    sizes.dedup();

    let mut summary = BTreeMap::new();
    let mut link_goals = BTreeMap::new();
    let mut table = Table::new(&[
        "MiB",
        "path",
        "n",
        "total ms",
        "downtime ms",
        "reported ms",
        "wire",
        "payload",
        "limit ms",
        "goal",
    ])
    .left(2);
    for &mib in &sizes {
        let mut per_path = BTreeMap::new();
        for route in [Route::Stock, Route::Migratectl] {
            let p = route.name();
            let all = samples
                .iter()
                .filter(|s| s.path == p && s.mib == mib)
                .count();
            if all == 0 {
                continue;
            }
            let mut step_names: Vec<&String> = ok(p, mib).flat_map(|s| s.steps.keys()).collect();
            step_names.sort();
            step_names.dedup();
            let steps_ms = step_names
                .into_iter()
                .filter_map(|n| {
                    Stats::of(ok(p, mib).map(|s| s.steps.get(n).copied())).map(|st| (n.clone(), st))
                })
                .collect();
            let conts: Vec<bool> = ok(p, mib).filter_map(|s| s.continuity).collect();
            let sum = PathSummary {
                ok: ok(p, mib).count(),
                failed: all - ok(p, mib).count(),
                total_ms: stat(p, mib, |s| s.total_ms),
                downtime_ms: stat(p, mib, |s| s.downtime_ms),
                reported_downtime_ms: stat(p, mib, |s| s.reported_downtime_ms),
                wire_bytes: stat(p, mib, |s| s.wire_bytes),
                payload_bytes: stat(p, mib, |s| s.payload_bytes),
                steps_ms,
                continuity: (!conts.is_empty()).then(|| conts.iter().all(|c| *c)),
            };
            let limit = median(&sum.payload_bytes).map(|b| downtime_limit_ms(b, opts.rate_mbit));
            let verdict = if route == Route::Migratectl {
                let goal = Goal::number(
                    median(&sum.downtime_ms),
                    format!("<= {}", report::num(limit, 0)),
                    |d| limit.is_some_and(|l| d <= l),
                );
                let v = goal.verdict().to_string();
                link_goals.insert(mib, goal);
                v
            } else {
                String::new()
            };
            table.row(vec![
                mib.to_string(),
                p.into(),
                format!("{}/{}", sum.ok, all),
                report::num(median(&sum.total_ms), 1),
                report::num(median(&sum.downtime_ms), 0),
                report::num(median(&sum.reported_downtime_ms), 0),
                report::mib(median(&sum.wire_bytes)),
                report::mib(median(&sum.payload_bytes)),
                report::num(limit, 0),
                verdict,
            ]);
            per_path.insert(p, sum);
        }
        summary.insert(mib, per_path);
    }

    let downtime_at = |p: &str| {
        summary
            .get(&GOAL_MIB)
            .and_then(|per: &BTreeMap<&str, PathSummary>| per.get(p))
            .and_then(|s| median(&s.downtime_ms))
    };
    let continuity: Vec<bool> = samples.iter().filter_map(|s| s.continuity).collect();
    let goals = Goals {
        downtime_within_link_limit: link_goals,
        downtime_over_stock: Goal::number(
            ratio(
                downtime_at(Route::Migratectl.name()),
                downtime_at(Route::Stock.name()),
            ),
            format!("<= {GOAL_STOCK_RATIO}"),
            |v| v <= GOAL_STOCK_RATIO,
        ),
        state_continuity: Goal {
            value: if continuity.is_empty() {
                Value::Null
            } else {
                Value::from(continuity.iter().all(|c| *c))
            },
            goal: "every migrated counter carries on".into(),
            met: !continuity.is_empty() && continuity.iter().all(|c| *c),
        },
    };
    Results {
        summary,
        goals,
        table,
    }
}

/// Downtime and total time per size, one line per path (medians), beside
/// the JSON.
fn plot_medians(
    out: &std::path::Path,
    rate_mbit: u64,
    summary: &BTreeMap<u64, BTreeMap<&'static str, PathSummary>>,
) -> Result<()> {
    let series = |f: fn(&PathSummary) -> Option<f64>| -> Vec<Series> {
        [Route::Stock, Route::Migratectl]
            .iter()
            .map(|r| Series {
                name: r.name().to_string(),
                points: summary
                    .iter()
                    .filter_map(|(mib, per)| Some((*mib as f64, f(per.get(r.name())?)?)))
                    .collect(),
            })
            .collect()
    };
    plot::lines(
        &out.with_file_name("migrate-downtime.png"),
        &Labels {
            title: &format!("Downtime of a migration over a {rate_mbit} Mbit/s link (median)"),
            x: "memory (MiB)",
            y: "downtime (ms)",
        },
        &series(|s| median(&s.downtime_ms)),
    )?;
    plot::lines(
        &out.with_file_name("migrate-total.png"),
        &Labels {
            title: "Total time of a migration (median)",
            x: "memory (MiB)",
            y: "total (ms)",
        },
        &series(|s| median(&s.total_ms)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_limit() {
        // 1 GiB over 1 Gbit/s: 8.59 s on the link, x1.3, + 0.3 s.
        let l = downtime_limit_ms(1024.0 * 1_048_576.0, 1000);
        assert!((l - 11_466.1).abs() < 1.0, "{l}");
        assert_eq!(downtime_limit_ms(0.0, 1000), 300.0);
    }
}
