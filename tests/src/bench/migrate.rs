//! Migration benchmark (issues 14 and 15): seed 002's five workloads
//! ([`super::workloads`]) moved between the two hosts of a local cluster
//! (hack/cluster.sh) whose link is limited to 1 Gbit/s, by the stock path
//! and by `migratectl migrate` in each of its modes, in one run.
//!
//! For each workload, size (64, 256, 1024 MiB by default) and `--runs`
//! times, with a fresh container per measurement and the modes in an order
//! that rotates from run to run (so drift spreads evenly), it migrates the
//! container from h1 to h2 (see [`super::migrate_run`]) and measures
//! - total: from the first command of the migration until the workload's
//!   clock ticks on the target;
//! - downtime as the process lived it: the largest gap between memtick's
//!   ticks on the wall clock across the migration (includes up to one
//!   10 ms interval);
//! - downtime as the clients saw it: the largest gap between answers to a
//!   client loading the container's service from the machine, and the
//!   requests that failed or whose connection was reset (migratectl modes
//!   only: a stock container has no network another host reaches);
//! - bytes on the wire and bandwidth over time: both hosts' tx counters;
//! - migratectl's own figures (downtime, memory and filesystem bytes, and
//!   issue 15's mode reason, iterations, bytes before, during and after the
//!   freeze, pages faulted, time until every page was there, when reported).
//!
//! Each workload gets a cluster of its own: the coordinator keeps a
//! container's record and address after its task is gone (there is no
//! `migratectl rm`), and its 150 addresses would not last a full run.
//! [`super::migrate_report`] makes the tables, goals and plots.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use containerd_migrate_tests::cluster::{self, Cluster};
use containerd_migrate_tests::{host, process};
use serde_json::{Value, json};

use super::migrate_run::{Mode, Rig, Sample};
use super::session::{hack, sha256};
use super::workloads::{self, Image, Tuning, Workload};
use super::{link, machine, memtick_workload, migrate_report, say};

#[derive(Args, Debug)]
pub struct Options {
    /// Migrations per workload, size and mode (medians are reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub runs: u64,
    /// Memory sizes in MiB (`64,256,1024` or `64 256 1024`).
    #[arg(long, num_args = 1.., value_delimiter = ',', default_values_t = [64, 256, 1024])]
    pub sizes: Vec<u64>,
    /// The workloads to measure.
    #[arg(long, num_args = 1.., value_delimiter = ',', default_values_t = workloads::ALL)]
    pub workloads: Vec<Workload>,
    /// The modes to measure: stock is the stock ctr path, the others are
    /// `migratectl migrate --mode MODE`.
    #[arg(long, num_args = 1.., value_delimiter = ',', default_values_t = [Mode::Stock, Mode::StopAndCopy, Mode::PostCopy, Mode::Auto])]
    pub modes: Vec<Mode>,
    /// Sizes 64 only, one run: a check that every workload and mode works
    /// (overrides --sizes and --runs).
    #[arg(long)]
    pub quick: bool,
    /// The link's limit in Mbit/s, each direction (tc tbf on every host).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate_mbit: u64,
    /// The share of its memory the `dirty` workload rewrites per second, %.
    #[arg(long, default_value_t = 50.0)]
    pub dirty_percent_per_sec: f64,
    /// Ticks memtick must have made before a migration.
    #[arg(long, default_value_t = 50)]
    pub warm_ticks: u64,
    /// Seconds any one command may take.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// The local cluster's name (CLUSTER_NAME of hack/cluster.sh), brought
    /// up for each workload and taken down after it.
    #[arg(long, default_value = "bench")]
    pub cluster: String,
    /// Where the JSON results go [default: <repo>/target/bench/migrate.json];
    /// the PNG plots go beside it.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// Use target/release's binaries as they are (no cargo build).
    #[arg(long)]
    pub skip_build: bool,
    /// Use target/images' archives as they are (no image builds): where
    /// nothing can build them, as in the VM of hack/softdirty-vm.sh.
    #[arg(long)]
    pub skip_images: bool,
}

pub fn run(mut opts: Options) -> Result<()> {
    if opts.quick {
        opts.sizes = vec![64];
        opts.runs = 1;
    }
    if opts.sizes.contains(&0) {
        bail!("--sizes must be MiB numbers above 0");
    }
    if !(0.0..=10_000.0).contains(&opts.dirty_percent_per_sec) {
        bail!("--dirty-percent-per-sec must be within 0..=10000");
    }
    opts.workloads.dedup();
    opts.modes.dedup();
    check_prerequisites()?;
    let estimate = estimate_secs(&opts);
    say(format!(
        "{} migrations ({} workloads x {} sizes x {} modes x {} runs); estimated {} min on this machine kind",
        opts.workloads.len() * opts.sizes.len() * opts.modes.len() * opts.runs as usize,
        opts.workloads.len(),
        opts.sizes.len(),
        opts.modes.len(),
        opts.runs,
        (estimate / 60.0).ceil()
    ));
    let build_note = if opts.skip_build {
        None
    } else {
        super::build_workspace()
    };
    let bench_bin = std::env::current_exe().context("finding this program's own path")?;
    let mut images: Vec<Image> = opts
        .workloads
        .iter()
        .map(|w| w.spec(64, tuning(&opts)).image)
        .collect();
    // The test image first: the Redis image takes its memtick from that build.
    images.sort_by_key(|i| (i.script != workloads::TESTBOX.script, i.script));
    images.dedup();
    if opts.skip_images {
        images.clear();
    }
    for image in &images {
        say(format!(
            "building {} (hack/{} build, cached)",
            image.name, image.script
        ));
        let out = process::run_within(hack(image.script, &["build"]), Duration::from_secs(1200))
            .map_err(anyhow::Error::msg)?;
        if !out.success() {
            bail!("building {} failed\n{out}", image.name);
        }
    }

    let load_before = machine::loadavg();
    let started = machine::now_utc();
    super::interrupt::guard_cluster(&opts.cluster);
    let mut samples = Vec::new();
    let mut qdiscs = BTreeMap::new();
    let mut result = Ok(());
    for &w in &opts.workloads {
        say(format!(
            "{w}: bringing up cluster {} with 2 hosts",
            opts.cluster
        ));
        let cluster = match Cluster::up(&opts.cluster, 2) {
            Ok(c) => c,
            Err(e) => {
                result = Err(anyhow::Error::msg(e));
                break;
            }
        };
        let r = measure_workload(&opts, &cluster, w, &bench_bin, &mut samples);
        say(format!("{w}: taking cluster {} down", opts.cluster));
        match r {
            Ok(q) => qdiscs = q,
            Err(e) => {
                result = Err(e.context(format!("workload {w}")));
                break;
            }
        }
        drop(cluster);
    }
    super::interrupt::release();
    let load_after = machine::loadavg();
    // What was measured is written even when a workload's set-up failed.
    let report = migrate_report::summarize(&samples, opts.rate_mbit);
    let mut machine_doc = machine::describe(machine::CODE_PATHS);
    machine_doc["loadavg_before"] = load_before.clone().into();
    machine_doc["loadavg_after"] = load_after.clone().into();
    machine_doc["build_note"] = build_note.into();
    machine_doc["binaries"] = binaries();
    let described: BTreeMap<&str, String> = opts
        .workloads
        .iter()
        .map(|w| (w.name(), w.spec(64, tuning(&opts)).described))
        .collect();
    let doc = json!({
        "summary": report.summary,
        "goals": report.goals,
        "config": {
            "runs": opts.runs, "sizes_mib": opts.sizes, "workloads": opts.workloads,
            "modes": opts.modes, "interval_ms": workloads::INTERVAL_MS,
            "warm_ticks": opts.warm_ticks, "rate_mbit": opts.rate_mbit, "qdiscs": qdiscs,
            "dirty_percent_per_sec": opts.dirty_percent_per_sec,
            "cluster": opts.cluster, "hosts": { "source": "h1", "target": "h2" },
            "estimated_s": estimate,
            "workloads_described": described,
            "modes_described": {
                "stock": "runc.v2 on both hosts: ctr c checkpoint --task --rw ID REF; ctr t delete --force ID (the source stops); ctr images export --skip-manifest-json /var/tmp/ID.tar REF; the archive sent over TCP from source to target (bench wire-send / wire-receive, run inside the hosts); ctr images import; ctr c restore --live --rw ID REF. No clients: ctr gives the container no network another host reaches",
                "others": "migratectl run --json --host h1 IMAGE ID -- CMD; migratectl migrate --to h2 --mode MODE --json ID"
            },
            "clients": "one thread of the bench program in the machine's network namespace, which reaches the containers through the cluster's bridge (as another host would); requests back to back with a pause of a few ms, every answer checked",
            "downtime": "the largest wall-clock gap between memtick's ticks (its stdout, logged in the container) overlapping the migration, from its start until the clock ticked on the target; includes up to one tick interval. Not the monotonic gap: CRIU restores CLOCK_MONOTONIC in a time namespace continued from the dump, which hides the move",
            "client_gap": "the largest gap between two answers to the client that overlaps the migration (from the last answer before it to the first after it)",
            "total": "from the first command of the migration until the clock ticks on the target, timed by the benchmark",
            "wire_bytes": "tx bytes of both hosts' eth0 over the migration (the peers' rx counters on the machine's bridge); includes the cluster's heartbeats and the clients' answers",
            "payload_bytes": "stock: the exported archive; migratectl: memoryBytes + filesystemBytes of its JSON",
            "goal_total_limit": format!("{} x memoryBytes / ({} Mbit/s)", migrate_report::GOAL_LINK_FACTOR, opts.rate_mbit),
        },
        "machine": machine_doc,
        "started": started, "finished": machine::now_utc(),
        "samples": samples,
    });
    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| super::report::default_out("migrate"));
    super::report::write_json(&out, &doc)?;
    report.print(&opts.rate_mbit, &load_before, &load_after, opts.runs);
    let failed: Vec<&Sample> = samples.iter().filter(|s| !s.ok).collect();
    if !failed.is_empty() {
        say(format!("{} migration(s) failed:", failed.len()));
        for s in failed {
            eprintln!(
                "    {} {} MiB run {} {}: {}",
                s.workload.map_or("?", Workload::name),
                s.mib,
                s.run,
                s.mode.map_or("?", Mode::name),
                s.error.as_deref().unwrap_or("")
            );
        }
    }
    migrate_report::plot(&out, opts.rate_mbit, &samples, &report)?;
    result
}

fn tuning(opts: &Options) -> Tuning {
    Tuning {
        dirty_percent_per_sec: opts.dirty_percent_per_sec,
    }
}

/// Seconds the run should take on this machine kind (2 cores, 1 Gbit/s):
/// per workload its cluster and images (about 25 s); per migration a fixed
/// part (start, warm-up, clients, clean-up: measured 6-9 s stock, 4-5 s
/// migratectl at 64 MiB, 10 s for redis's image and fill) and a part per
/// MiB (stock: checkpoint, export, copy, import and restore of an archive
/// at about 35 ms a MiB; migratectl: the link's 8.4 ms a MiB plus dumping
/// and restoring, issue 14's figures).
fn estimate_secs(opts: &Options) -> f64 {
    let per = |mode: Mode, mib: u64| -> f64 {
        match mode {
            Mode::Stock => 6.0 + 0.035 * mib as f64,
            _ => 4.0 + 0.014 * mib as f64,
        }
    };
    let migrations: f64 = opts
        .sizes
        .iter()
        .flat_map(|&mib| opts.modes.iter().map(move |&m| per(m, mib)))
        .sum();
    let per_workload = 25.0 + migrations * opts.runs as f64;
    // Redis also fills its memory before each migration and restores more
    // slowly (1 GiB: 39 s a migratectl migration, not 18).
    let redis_extra: f64 = if opts.workloads.contains(&Workload::Redis) {
        let per_mib = 0.02 * opts.sizes.iter().sum::<u64>() as f64;
        per_mib * opts.modes.len() as f64 * opts.runs as f64
    } else {
        0.0
    };
    per_workload * opts.workloads.len() as f64 + redis_extra
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

/// Every size, run and mode of workload `w` on `cluster`; returns the
/// hosts' qdiscs, for the record.
fn measure_workload(
    opts: &Options,
    cluster: &Cluster,
    w: Workload,
    bench_bin: &std::path::Path,
    samples: &mut Vec<Sample>,
) -> Result<BTreeMap<String, String>> {
    let (h1, h2) = (cluster.host("h1"), cluster.host("h2"));
    let image = w.spec(64, tuning(opts)).image;
    for h in [h1, h2] {
        let out = process::run_within(
            hack(image.script, &["import", h.ctr().address()]),
            Duration::from_secs(300),
        )
        .map_err(anyhow::Error::msg)?;
        if !out.success() {
            bail!("importing {} into {} failed\n{out}", image.name, h.name);
        }
        link::shape(cluster.name(), &h.name, &format!("{}mbit", opts.rate_mbit))?;
    }
    let qdiscs: BTreeMap<String, String> = [h1, h2]
        .iter()
        .map(|h| (h.name.clone(), link::qdisc(cluster.name(), &h.name)))
        .collect();
    let rig = Rig::new(
        cluster,
        h1,
        h2,
        bench_bin.to_path_buf(),
        Duration::from_secs(opts.timeout),
        opts.warm_ticks,
    );
    for &mib in &opts.sizes {
        let spec = w.spec(mib, tuning(opts));
        for run in 0..opts.runs {
            // Rotate the order, so each mode goes first as often as any.
            let mut order = opts.modes.clone();
            let n = order.len().max(1);
            order.rotate_left(run as usize % n);
            for (k, &mode) in order.iter().enumerate() {
                memtick_workload::wait_for_memory(3 * mib + 1024);
                let mut s = Sample {
                    workload: Some(w),
                    mib,
                    run,
                    order: k,
                    mode: Some(mode),
                    id: Rig::id(w, mode, mib, run),
                    loadavg_1m: machine::loadavg_1m(),
                    ..Sample::default()
                };
                let t = std::time::Instant::now();
                match rig.measure(mode, &spec, &mut s) {
                    Ok(()) => {
                        s.ok = true;
                        let client = s.client.as_ref().map_or("-".to_string(), |c| {
                            format!(
                                "gap {} ms, {} failed, {} reset",
                                super::report::num(c.max_gap_ms, 0),
                                c.failed,
                                c.resets
                            )
                        });
                        eprintln!(
                            "    {w:<6} {mib:>5} MiB run {run} {:<13} total {:>9} ms  downtime {:>7} ms  clients {client}  wire {}",
                            mode.name(),
                            super::report::num(s.total_ms, 1),
                            super::report::num(s.downtime_ms, 0),
                            super::report::mib(s.wire_bytes),
                        );
                    }
                    Err(e) => {
                        eprintln!(
                            "    {w:<6} {mib:>5} MiB run {run} {:<13} FAILED: {e}",
                            mode.name()
                        );
                        s.error = Some(e);
                    }
                }
                rig.clear(&s.id);
                s.elapsed_s = Some(super::stats::round(t.elapsed().as_secs_f64(), 1));
                samples.push(s);
            }
        }
    }
    Ok(qdiscs)
}

/// The sha256 of the binaries the hosts ran (target/release, SHIM_DIR).
fn binaries() -> Value {
    let dir = containerd_migrate_tests::fixture::shim_dir();
    let names = [
        containerd_migrate_tests::fixture::MIGRATE_SHIM_BINARY,
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        opts: Options,
    }

    #[test]
    fn defaults_and_estimate() {
        let cli = Cli::parse_from(["bench"]);
        let o = cli.opts;
        assert_eq!(o.workloads, workloads::ALL.to_vec());
        assert_eq!(
            o.modes,
            vec![Mode::Stock, Mode::StopAndCopy, Mode::PostCopy, Mode::Auto]
        );
        assert_eq!(o.sizes, vec![64, 256, 1024]);
        // The whole default run stays within an afternoon.
        let secs = estimate_secs(&o);
        assert!((1200.0..7200.0).contains(&secs), "{secs}");
        let cli = Cli::parse_from([
            "bench",
            "--modes",
            "stock,stop-and-copy",
            "--workloads",
            "redis",
        ]);
        assert_eq!(cli.opts.modes, vec![Mode::Stock, Mode::StopAndCopy]);
        assert_eq!(cli.opts.workloads, vec![Workload::Redis]);
    }
}
