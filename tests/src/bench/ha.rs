//! High-availability benchmark (issue 16): how long the containers of a
//! lost host take to answer again on other hosts (RTO), and how much state
//! they lose (RPO), with restore policy `checkpoint` against `restart`
//! (the cold restart of Swarm and Kubernetes), for 1, 10 and 30 memtick
//! counters of 64 MiB on the lost host.
//!
//! Each trial has a fresh local cluster of three hosts (hack/cluster.sh;
//! a failed host cannot come back, and `down` then `up` takes about 4 s),
//! the coordinator with its defaults (1 s heartbeats, 3 s grace, its
//! embedded redb store) and the cluster's registry as the version store.
//! See [`super::ha_trial`] for a trial:
//! 1. N counters on h1 (`memtick --mib 64 --interval-ms 20`), started by
//!    `migratectl run --restore-policy P`; with `checkpoint`, each with a
//!    ticker every `--interval` into the store, their starts spread over
//!    one interval (so are their ticks, as containers started at different
//!    times would be);
//! 2. ready: every counter has a version (checkpoint; `--min-versions`) or
//!    ticked (restart); then a random fraction of an interval, so the
//!    failure falls at a random point of the tickers' cycle (restart: of
//!    10 s at most);
//! 3. `hack/cluster.sh fail h1` (power off: link cut, every process
//!    killed); t = 0 is when the link went (the command may first wait for
//!    the script's lock, which every cluster on the machine shares);
//! 4. RTO per container: until its first tick on its new host, from
//!    memtick's stamp in the container's output there; RPO: the restored
//!    version's age at h1's last heartbeat (`migratectl ps --json`'s
//!    recovery), cross-checked with the ticks lost (the tick the restored
//!    counter went on from against the last tick h1 logged before the
//!    failure).
//!
//! Runs, counts and policies are interleaved (each run goes through every
//! count; the policies' order alternates), so drift spreads evenly.
//! [`super::ha_report`] makes the tables, goals and plots.
//!
//! The coordinator's store and what fails (each STORE/FAILURE a scenario,
//! a column of the tables):
//! - `embedded/host`: the above (hack/cluster.sh up 3; the coordinator on
//!   the machine, its state in redb; h1 lost);
//! - `etcd/host`: `hack/cluster.sh up 4 --etcd` (etcd on h1-h3, a
//!   coordinator replica on every host); the containers run on, and the
//!   host lost is, the first host whose replica does not lead (asked on h4
//!   once the cluster is up), so the leader stays;
//! - `etcd/leader`: the same cluster, the containers on the leader's host,
//!   and that host lost: the RTO includes the fail-over, which is timed too
//!   (the failure until a surviving host's `migratectl coordinator --json`,
//!   asked every 100 ms, names another leader).
//! `embedded/leader` is not a scenario (the one coordinator is not on a
//! host).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use containerd_migrate_tests::{cluster, host};
use serde::Serialize;
use serde_json::json;

use super::ha_report;
use super::ha_trial::{self, Policy, Sample, Setup, Trial};
use super::{machine, memtick_workload, say};

/// The coordinator's state store.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum StateStore {
    /// redb in the coordinator's process (hack/cluster.sh's default).
    #[default]
    Embedded,
    /// etcd on h1-h3, a coordinator replica on every host (`up 4 --etcd`).
    Etcd,
}

/// What fails.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Failure {
    /// A host with the containers (embedded: h1; etcd: one whose replica
    /// does not lead).
    #[default]
    Host,
    /// The leading coordinator replica's host, with the containers (etcd).
    Leader,
}

impl StateStore {
    pub fn name(self) -> &'static str {
        match self {
            StateStore::Embedded => "embedded",
            StateStore::Etcd => "etcd",
        }
    }
}

impl Failure {
    pub fn name(self) -> &'static str {
        match self {
            Failure::Host => "host",
            Failure::Leader => "leader",
        }
    }
}

/// A scenario's name, "STORE/FAILURE" (`etcd/leader`).
pub fn scenario(store: StateStore, fail: Failure) -> String {
    format!("{}/{}", store.name(), fail.name())
}

/// Hosts of a cluster with etcd (`up 4 --etcd`: etcd on three of them).
const ETCD_HOSTS: u64 = 4;

#[derive(Args, Debug)]
pub struct Options {
    /// Trials per count and policy (medians are reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub runs: u64,
    /// Containers on the lost host (`1,10,30` or `1 10 30`).
    #[arg(long, num_args = 1.., value_delimiter = ',', default_values_t = [1, 10, 30])]
    pub counts: Vec<usize>,
    /// Restore policies to measure.
    #[arg(long, num_args = 1.., value_delimiter = ',', default_values_t = [Policy::Checkpoint, Policy::Restart])]
    pub policies: Vec<Policy>,
    /// The checkpoint tickers' interval, seconds (the RPO goal is one
    /// interval). A version of a 64 MiB memtick costs about 1.3 s of CPU
    /// (0.65 s on its host, 0.65 s in the registry), so 30 of them every
    /// 40 s take half of this 2-core machine; every 20 s they take all of it
    /// and the ticks overrun (25-45 s each).
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u64).range(1..))]
    pub interval: u64,
    /// Versions every container must have stored before the failure's
    /// random wait begins (checkpoint). The first version uploads all of the
    /// memory; 2 measures only tickers past it, at the price of an interval
    /// per trial.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub min_versions: u64,
    /// Memory of each counter, MiB.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub mib: u64,
    /// Hosts in the cluster; h1 fails, the others take its containers
    /// (with etcd: at least 4).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(2..=9))]
    pub hosts: u64,
    /// The coordinator's state stores to measure (`embedded,etcd`).
    #[arg(long, value_enum, num_args = 1.., value_delimiter = ',', default_values_t = [StateStore::Embedded])]
    pub store: Vec<StateStore>,
    /// What fails (`host,leader`; leader needs etcd, and embedded/leader
    /// is left out).
    #[arg(long, value_enum, num_args = 1.., value_delimiter = ',', default_values_t = [Failure::Host])]
    pub fail: Vec<Failure>,
    /// Seconds the lost containers may take to come back.
    #[arg(long, default_value_t = 180)]
    pub timeout: u64,
    /// Seed of the random failure points [default: from the clock].
    #[arg(long)]
    pub seed: Option<u64>,
    /// The local cluster's name (CLUSTER_NAME of hack/cluster.sh), brought
    /// up for each trial and taken down after it.
    #[arg(long, default_value = "bha")]
    pub cluster: String,
    /// Where the JSON results go [default: <repo>/target/bench/ha.json];
    /// the PNG plots go beside it.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// Use target/release's binaries as they are (no cargo build).
    #[arg(long)]
    pub skip_build: bool,
}

/// The cluster's container addresses (.100 to .249): at most this many
/// containers in one cluster.
const MAX_COUNT: usize = 150;
/// The longest random wait before the failure with restart, seconds.
const RESTART_WAIT_MAX_S: u64 = 10;

/// The scenarios `opts` asks for: every store with every failure, but
/// embedded/leader.
pub fn scenarios(opts: &Options) -> Vec<(StateStore, Failure)> {
    let mut v: Vec<(StateStore, Failure)> = opts
        .store
        .iter()
        .flat_map(|&st| opts.fail.iter().map(move |&f| (st, f)))
        .filter(|&(st, f)| !(st == StateStore::Embedded && f == Failure::Leader))
        .collect();
    v.sort();
    v.dedup();
    v
}

pub fn run(mut opts: Options) -> Result<()> {
    let scenarios = scenarios(&opts);
    if scenarios.is_empty() {
        bail!(
            "--fail leader needs --store etcd (the embedded store has one coordinator, not on a host)"
        );
    }
    if opts.store.contains(&StateStore::Embedded) && opts.fail.contains(&Failure::Leader) {
        say(
            "embedded/leader left out: the embedded store has one coordinator, not on a host"
                .to_string(),
        );
    }
    opts.counts.sort_unstable();
    opts.counts.dedup();
    opts.policies.dedup();
    if opts.counts.iter().any(|&n| n == 0 || n > MAX_COUNT) {
        bail!("--counts must be within 1..={MAX_COUNT} (the cluster's container addresses)");
    }
    check_prerequisites()?;
    let seed = opts.seed.unwrap_or_else(clock_seed);
    let mut rng = Rng::new(seed);
    let estimate = estimate_secs(&opts);
    say(format!(
        "{} trials ({} scenarios x {} counts x {} policies x {} runs), interval {} s, seed {seed}; estimated {} min",
        scenarios.len() * opts.counts.len() * opts.policies.len() * opts.runs as usize,
        scenarios.len(),
        opts.counts.len(),
        opts.policies.len(),
        opts.runs,
        opts.interval,
        (estimate / 60.0).ceil()
    ));
    let build_note = if opts.skip_build {
        None
    } else {
        super::build_workspace()
    };
    let bins = PrivateBinaries::copy()?;
    // SAFETY: no other thread reads the environment: the only other one,
    // interrupt's, waits for signals (and runs hack/cluster.sh down, which
    // takes no binary from SHIM_DIR).
    unsafe { std::env::set_var("SHIM_DIR", &bins.dir) };
    let load_before = machine::loadavg();
    let started = machine::now_utc();
    let t0 = std::time::Instant::now();
    super::interrupt::guard_cluster(&opts.cluster);
    let (mut trials, mut samples): (Vec<Trial>, Vec<Sample>) = (Vec::new(), Vec::new());
    for run in 0..opts.runs {
        for &count in &opts.counts {
            for &(store, fail) in &scenarios {
                let mut order = opts.policies.clone();
                let n = order.len().max(1);
                order.rotate_left((run as usize + count) % n);
                for policy in order {
                    memtick_workload::wait_for_memory(3 * opts.mib * count as u64 + 1024);
                    let fraction = rng.unit();
                    // Restart has no ticker: its wait only ages the state it
                    // loses (all of it), so it need not be an interval long.
                    let span = match policy {
                        Policy::Checkpoint => opts.interval,
                        Policy::Restart => opts.interval.min(RESTART_WAIT_MAX_S),
                    };
                    let hosts = match store {
                        StateStore::Embedded => opts.hosts,
                        StateStore::Etcd => opts.hosts.max(ETCD_HOSTS),
                    };
                    let setup = Setup {
                        cluster: &opts.cluster,
                        hosts: hosts as usize,
                        store,
                        fail,
                        count,
                        policy,
                        run,
                        mib: opts.mib,
                        interval: Duration::from_secs(opts.interval),
                        offset: Duration::from_secs(span).mul_f64(fraction),
                        timeout: Duration::from_secs(opts.timeout),
                        min_versions: opts.min_versions as usize,
                    };
                    say(format!(
                        "run {run}, {}: {count} x {policy} (the failure {:.1} s after they are ready)",
                        scenario(store, fail),
                        span as f64 * fraction
                    ));
                    let (trial, of) = ha_trial::run(&setup);
                    report_trial(&trial, &of);
                    trials.push(trial);
                    samples.extend(of);
                }
            }
        }
    }
    super::interrupt::release();
    let load_after = machine::loadavg();
    let interval_ms = opts.interval as f64 * 1000.0;
    let report = ha_report::summarize(&trials, &samples, interval_ms);
    let mut machine_doc = machine::describe(machine::CODE_PATHS);
    machine_doc["loadavg_before"] = load_before.clone().into();
    machine_doc["loadavg_after"] = load_after.clone().into();
    machine_doc["build_note"] = build_note.into();
    machine_doc["binaries"] = bins.sha256.clone();
    machine_doc["binaries_from"] = "private copies of target/release's, made at the start".into();
    let doc = json!({
        "summary": report.summary,
        "goals": report.goals,
        "config": {
            "runs": opts.runs, "counts": opts.counts, "policies": opts.policies,
            "interval_s": opts.interval, "mib": opts.mib, "tick_ms": ha_trial::TICK_MS,
            "hosts": opts.hosts, "etcd_hosts": opts.hosts.max(ETCD_HOSTS),
            "lost_host": "embedded: h1; etcd/host: the first host whose replica does not lead; etcd/leader: the leader's (trials[].lost_host)",
            "store": opts.store, "fail": opts.fail,
            "scenarios": scenarios.iter().map(|&(st, f)| scenario(st, f)).collect::<Vec<_>>(),
            "failover": "etcd/leader: the failure (t = 0) until a surviving host's migratectl coordinator --json, asked every 100 ms from the fail command's start, names another replica as leader (the time its answer came; trials[].failover_poll_ms is how long that call took); trials[].leads_logged_ms: the new leader's 'leads the cluster' log line",
            "coordinator_log": "embedded: RUN_BASE/CLUSTER/coordinator.log; etcd: every host's RUN_BASE/CLUSTER/HOST/coordinator.log, merged by time stamp (trials[].coordinator_log lines prefixed HOST:)",
            "timeout_s": opts.timeout, "seed": seed, "cluster": opts.cluster,
            "estimated_s": estimate, "elapsed_s": super::stats::round(t0.elapsed().as_secs_f64(), 1),
            "grace_ms": report.grace_ms,
            "heartbeat": "migrate-coordinator's defaults as hack/cluster.sh starts it: a beat a second, a host down after 3 s without one (the grace, read from the coordinator's log)",
            "workload": format!("memtick --mib {} --interval-ms {} --out /tmp/tick, by migratectl run --host h1 --restore-policy POLICY; checkpoint: --annotation io.containerd.migrate.checkpoint.interval={}s and .store=the cluster's registry (hack/cluster.sh store), the containers' starts spread over one interval; restart: no ticker", opts.mib, ha_trial::TICK_MS, opts.interval),
            "min_versions": opts.min_versions,
            "failure": "after every container has min_versions versions (ticker-version in h1's containerd log, confirmed by migratectl checkpoint ls) or ticked (restart), a random fraction of an interval (restart: of at most 10 s), then hack/cluster.sh fail h1; t = 0 is when h1's link (the machine's end of its veth, which the script deletes first, before it kills every process of the host) was seen gone, polled every ms (the command may first wait for the script's lock, shared by every cluster on the machine)",
            "rto": "t = 0 to the container's first tick on its new host: the unix_ms memtick stamps on the first tick line of its output there (logs/ID.log on the host's disk), counted once two tick lines are there",
            "rpo": "the restored version's age at h1's last heartbeat: recovery.versionAgeMs of migratectl ps --json, brought to the last heartbeat when this build counts it to the down time (its log line says which; the last heartbeat from the coordinator's down line); a cold start: all of the counter's state",
            "lost_by_ticks": "in h1's output: the stamp of the last tick before t = 0 minus that of the tick the restored counter went on from (its first tick on the new host - 1)",
            "breakdown": "detection: downUnixMs - t = 0; placement: the coordinator's 'bringing ID of lost host h1 back on HOST' line - down; restore: runningUnixMs - that; first tick: the RTO's end - runningUnixMs",
        },
        "machine": machine_doc,
        "started": started, "finished": machine::now_utc(),
        "trials": trials,
        "samples": samples,
    });
    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| super::report::default_out("ha"));
    super::report::write_json(&out, &doc)?;
    report.print(opts.runs, &load_before, &load_after);
    // Where the time goes, for one trial: the last run's largest count with
    // checkpoint (else whatever ran last).
    let shown = trials
        .iter()
        .filter(|t| t.policy == Some(Policy::Checkpoint) && t.fail_unix_ms.is_some())
        .max_by_key(|t| (t.count, t.run, t.store, t.fail))
        .or_else(|| trials.iter().rfind(|t| t.fail_unix_ms.is_some()));
    if let Some(t) = shown {
        println!(
            "\nwhere the time goes, one trial: {}",
            ha_report::timeline(t, &samples)
        );
    }
    let failed: Vec<&Trial> = trials.iter().filter(|t| !t.ok).collect();
    if !failed.is_empty() {
        say(format!("{} trial(s) not fully measured:", failed.len()));
        for t in &failed {
            let why = t.error.clone().unwrap_or_else(|| {
                samples
                    .iter()
                    .filter(|s| {
                        s.count == t.count
                            && s.policy == t.policy
                            && s.run == t.run
                            && s.scenario == t.scenario
                    })
                    .find_map(|s| s.error.clone().map(|e| format!("{}: {e}", s.id)))
                    .unwrap_or_default()
            });
            eprintln!(
                "    {} {} x {} run {}: {why}",
                t.scenario,
                t.count,
                t.policy.map_or("?", Policy::name),
                t.run
            );
        }
    }
    ha_report::plot(&out, &samples)?;
    say(format!(
        "done in {:.1} min",
        t0.elapsed().as_secs_f64() / 60.0
    ));
    Ok(())
}

/// One line per trial as it ends, for the person watching.
fn report_trial(t: &Trial, of: &[Sample]) {
    let stat = |f: fn(&Sample) -> Option<f64>| {
        super::stats::Stats::of(of.iter().map(f))
            .map_or("-".to_string(), |s| format!("{:.0}/{:.0}", s.median, s.max))
    };
    let failover = match (&t.leader_before, &t.new_leader) {
        (Some(old), Some(new)) => format!(
            "  {old} lost, {new} leads after {} ms (log: {} ms)",
            super::report::num(t.failover_ms, 0),
            super::report::num(t.leads_logged_ms, 0)
        ),
        (Some(l), None) => format!("  leader {l}, {} lost", t.lost_host),
        _ => String::new(),
    };
    eprintln!(
        "    back {}/{}  RTO med/max {} ms  RPO med/max {} ms  lost by ticks {} ms{failover}  (up {} ms, ready after {} s, down {} ms, trial {} s){}",
        of.iter().filter(|s| s.ok).count(),
        of.len(),
        stat(|s| s.rto_ms),
        stat(|s| s.rpo_ms),
        stat(|s| s.lost_ms),
        super::report::num(t.up_ms, 0),
        super::report::num(t.ready_ms.map(|m| m / 1000.0), 1),
        super::report::num(t.down_ms, 0),
        super::report::num(t.elapsed_s, 0),
        t.error
            .as_ref()
            .map_or(String::new(), |e| format!("\n    ERROR: {e}")),
    );
}

/// Seconds the run should take on this machine (2 cores), per trial
/// (measured): the cluster up and down and the image (about 6 s);
/// checkpoint: the starts spread over an interval, `--min-versions`
/// intervals until the versions are there (the first ones upload all of
/// the memory: about 0.5 s each when many), half an interval on average
/// before the failure, the recovery (the grace and about 0.35 s per
/// container: the restores share the 2 cores); restart: the starts (0.2 s
/// each), half an interval, the recovery (the grace and a cold start).
pub fn estimate_secs(opts: &Options) -> f64 {
    let interval = opts.interval as f64;
    let per = |count: usize, policy: Policy| -> f64 {
        let n = count as f64;
        match policy {
            Policy::Checkpoint => {
                let spread = if count > 1 { interval } else { 0.0 };
                6.0 + spread
                    + interval * opts.min_versions as f64
                    + 0.5 * n
                    + interval / 2.0
                    + 4.0
                    + 0.35 * n
            }
            Policy::Restart => {
                6.0 + 0.2 * n + interval.min(RESTART_WAIT_MAX_S as f64) / 2.0 + 4.0 + 0.05 * n
            }
        }
    };
    let one_run: f64 = opts
        .counts
        .iter()
        .flat_map(|&c| opts.policies.iter().map(move |&p| per(c, p)))
        .sum();
    // With etcd, `up` starts etcd and a replica per host, and the leader
    // is asked for: about 10 s more per trial.
    let trials = (opts.counts.len() * opts.policies.len()) as f64;
    let extra: f64 = scenarios(opts)
        .iter()
        .map(|&(st, _)| {
            if st == StateStore::Etcd {
                10.0 * trials
            } else {
                0.0
            }
        })
        .sum();
    (one_run * scenarios(opts).len() as f64 + extra) * opts.runs as f64
}

/// What the benchmark needs: root and a local cluster's prerequisites.
fn check_prerequisites() -> Result<()> {
    if !host::is_root() {
        bail!("run as root");
    }
    let missing = cluster::missing_prerequisites();
    if !missing.is_empty() {
        bail!("missing: {} (hack/setup.sh)", missing.join(", "));
    }
    if !containerd_migrate_tests::fixture::repo_root()
        .join("target/images/testbox.tar")
        .is_file()
    {
        bail!("no test image: hack/images.sh build");
    }
    Ok(())
}

/// The binaries every host runs, as hack/cluster.sh finds them in SHIM_DIR.
const BINARIES: [&str; 5] = [
    containerd_migrate_tests::fixture::MIGRATE_SHIM_BINARY,
    "migratectl",
    "migrate-agent",
    "migrate-coordinator",
    "containerd-snapshotter-migrate",
];

/// Private copies of the binaries the clusters run, made at the start and
/// removed at the end: the tree is shared, and a rebuild of target/release
/// during the run would give later trials other binaries. They go under
/// target/ (which the hosts see, read-only), not /var/tmp or /tmp (each
/// host has its own).
struct PrivateBinaries {
    dir: std::path::PathBuf,
    sha256: serde_json::Value,
}

impl PrivateBinaries {
    fn copy() -> Result<PrivateBinaries> {
        let from = containerd_migrate_tests::fixture::shim_dir();
        let dir = containerd_migrate_tests::fixture::repo_root()
            .join("target/bench")
            .join(format!("ha-bin.{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut sha = serde_json::Map::new();
        for name in BINARIES {
            let (src, dst) = (from.join(name), dir.join(name));
            std::fs::copy(&src, &dst).with_context(|| {
                format!(
                    "copying {} (cargo build --release --workspace)",
                    src.display()
                )
            })?;
            sha.insert(name.to_string(), super::session::sha256(&dst).into());
        }
        Ok(PrivateBinaries {
            dir,
            sha256: sha.into(),
        })
    }
}

impl Drop for PrivateBinaries {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn clock_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ u64::from(std::process::id()).rotate_left(32)
}

/// xorshift64*: the random failure points, reproducible from `--seed`.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// A number in [0, 1).
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
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
        let o = Cli::parse_from(["bench"]).opts;
        assert_eq!(o.counts, vec![1, 10, 30]);
        assert_eq!(o.policies, vec![Policy::Checkpoint, Policy::Restart]);
        assert_eq!((o.runs, o.interval, o.mib, o.hosts), (3, 40, 64, 3));
        // A full default run stays under about 25 minutes.
        let secs = estimate_secs(&o);
        assert!((600.0..1400.0).contains(&secs), "{secs}");
        let o = Cli::parse_from(["bench", "--counts", "1,10", "--policies", "restart"]).opts;
        assert_eq!(o.counts, vec![1, 10]);
        assert_eq!(o.policies, vec![Policy::Restart]);
    }

    #[test]
    fn scenarios_of_the_options() {
        let o = Cli::parse_from(["bench", "--fail", "leader"]).opts;
        assert!(scenarios(&o).is_empty());
        assert!(run(o).unwrap_err().to_string().contains("--store etcd"));
        let o =
            Cli::parse_from(["bench", "--store", "embedded,etcd", "--fail", "host,leader"]).opts;
        let names: Vec<String> = scenarios(&o).iter().map(|&(s, f)| scenario(s, f)).collect();
        assert_eq!(names, ["embedded/host", "etcd/host", "etcd/leader"]);
        let o = Cli::parse_from(["bench", "--store", "etcd"]).opts;
        assert_eq!(scenarios(&o), [(StateStore::Etcd, Failure::Host)]);
    }

    #[test]
    fn random_points_are_in_the_unit_interval() {
        let mut r = Rng::new(42);
        let v: Vec<f64> = (0..1000).map(|_| r.unit()).collect();
        assert!(v.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        assert!((0.4..0.6).contains(&mean), "{mean}");
        assert_eq!(Rng::new(7).unit(), Rng::new(7).unit());
    }
}
