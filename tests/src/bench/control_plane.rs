//! The control plane's scale test (issue 16): simulated hosts heartbeating
//! through the real `migrate-coordinator` and its store, and the leader's
//! fail-over with replicas on etcd.
//!
//! - The coordinators are `target/release/migrate-coordinator` processes on
//!   127.0.0.1 (a copy, so a rebuild during the run changes nothing): one
//!   on redb (`--store redb --state`), or three replicas (`--store etcd`)
//!   on a three-member etcd started here (Debian's etcd 3.4), each with
//!   its defaults (1 s heartbeats, 3 s grace, 2.5 s leases, 2 s leader TTL).
//! - The hosts are simulated in this process ([`super::control_plane_fleet`]):
//!   `s0001`..`s1000`, each with a certificate of its own (made by the
//!   product's `migrate_cluster::certs`), its own Agent server on 127.0.0.1
//!   (the coordinator calls Info back at every registration) and its own
//!   connection to the coordinator; they register and beat as
//!   `migrate-agent` does. Each reports 10 containers (`HostInfo` and
//!   `HeartbeatRequest.containers`), which is how the coordinator counts a
//!   host's containers: 1,000 hosts are 10,000 containers. No container
//!   record is written (those are written only by `migratectl run`).
//! - Ramp: the hosts are added in steps (100, 300, 1,000), each step held
//!   `--duration` seconds once its hosts registered, for each store. Per
//!   beat: latency (sent to answered), late (answered after the next beat
//!   was due, one period after it was sent; and after the lease), failed;
//!   per host, whether its lease ran out (no acknowledgement before the
//!   last one's lease ended). The daemons' CPU and RSS from /proc.
//! - Fail-over (etcd, at the last step): the agents beat through the first
//!   replica, which is started first and leads; it is SIGKILLed. Fail-over
//!   time: from the kill until a surviving replica reports itself leader
//!   (ListCoordinators: the leader's record carries the time it won). The
//!   agents pass on to the next replica as `migrate-agent` does; leases
//!   that ran out and hosts the coordinator declared down are counted.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use migrate_cluster::tls::Tls;
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;

use super::control_plane_daemons::{self as daemons, Coordinator, Etcd, StateArg};
use super::control_plane_fleet::{Fleet, Lapse, Recorder, SimHost};
use super::control_plane_report as report;
use super::{machine, say};

/// The coordinator's state store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Store {
    /// One coordinator, its state in one redb file.
    Redb,
    /// Three replicas on a three-member etcd.
    Etcd,
}

impl std::fmt::Display for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Store {
    pub fn name(self) -> &'static str {
        match self {
            Store::Redb => "redb",
            Store::Etcd => "etcd",
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct Options {
    /// The ramp: simulated hosts at each step (`100,300,1000`).
    #[arg(long, num_args = 1.., value_delimiter = ',', default_values_t = [100, 300, 1000])]
    pub hosts: Vec<usize>,
    /// Seconds each step is measured, once its hosts registered.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub duration: u64,
    /// Containers each host reports.
    #[arg(long, default_value_t = 10)]
    pub containers: u32,
    /// The stores to measure, in this order.
    #[arg(long, num_args = 1.., value_delimiter = ',', default_values_t = [Store::Redb, Store::Etcd])]
    pub stores: Vec<Store>,
    /// Seconds the beats are watched after the leader is killed (etcd).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub failover_watch: u64,
    /// No fail-over (etcd).
    #[arg(long)]
    pub no_failover: bool,
    /// Which replica (1-3) the agents try first (etcd). c1 starts first and
    /// leads, so 1 (the default) loses the leader and the agents' replica
    /// at once; 2 loses only the leader (the agents beat on through c2).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=3))]
    pub agents_through: u64,
    /// Registrations under way at once (each a TLS connection to the
    /// coordinator and one back to the host).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..))]
    pub register_concurrency: u64,
    /// Seconds of beats after a step's hosts registered before its
    /// measurement begins.
    #[arg(long, default_value_t = 3)]
    pub settle: u64,
    /// Where the JSON results go [default: <repo>/target/bench/control-plane.json];
    /// the PNG plots go beside it, the daemons' logs and every beat (CSV)
    /// into control-plane/ beside it.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Where the work dir (certificates, redb file, etcd data) goes: disk.
    #[arg(long, default_value = "/var/tmp")]
    pub work_base: PathBuf,
    /// Use target/release/migrate-coordinator as it is (no cargo build).
    #[arg(long)]
    pub skip_build: bool,
}

/// How long after the leader's kill the CPU is sampled again.
pub const CPU_AFTER_KILL: Duration = Duration::from_secs(3);

/// The daemons' CPU seconds at one moment.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Cpu {
    pub at_ms: f64,
    pub coordinators: Vec<Option<f64>>,
    pub etcd: Vec<Option<f64>>,
    pub bench: Option<f64>,
}

/// One step as measured (the beats are in the store run's recorder).
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub hosts: usize,
    /// Hosts that had registered when the measurement began.
    pub registered: usize,
    /// From the first new host's start to the last one's registration.
    pub registration_from_ms: f64,
    pub registration_s: f64,
    pub window_ms: (f64, f64),
    pub cpu_start: Cpu,
    pub cpu_end: Cpu,
    /// VmRSS and VmHWM per coordinator, per etcd member, KiB.
    pub coordinator_rss_kib: Vec<(Option<u64>, Option<u64>)>,
    pub etcd_rss_kib: Vec<(Option<u64>, Option<u64>)>,
    pub bench_rss_kib: (Option<u64>, Option<u64>),
    /// ListHosts at the window's end: ready, and the down ones with why.
    pub ready_at_end: Option<usize>,
    pub down_at_end: Vec<(String, String)>,
    /// Leases that had run out, unrenewed, at the window's end.
    pub open_lapses: Vec<Lapse>,
}

/// The leader's loss.
#[derive(Clone, Debug, Serialize)]
pub struct Failover {
    pub killed: String,
    /// The replica the agents beat through (the first URL).
    pub agents_beat_through: String,
    pub kill_ms: f64,
    pub kill_unix_ms: u64,
    pub watch_end_ms: f64,
    /// The daemons' and the benchmark's CPU at the kill and
    /// [`CPU_AFTER_KILL`] later (or when the new leader was found, if later).
    pub cpu_at_kill: Cpu,
    pub cpu_after_kill: Cpu,
    /// From the kill until a survivor's ListCoordinators named another
    /// leader (etcd's election key passed on), and until the new leader
    /// had won (its record says when: after the kill).
    pub named_ms: Option<f64>,
    pub new_leader: Option<String>,
    pub leading_ms: Option<f64>,
    pub leader_since_unix_ms: Option<u64>,
    pub ready_at_end: Option<usize>,
    pub down_at_end: Vec<(String, String)>,
    pub open_lapses: Vec<Lapse>,
}

/// A ListHosts taken every few seconds during a store's run.
#[derive(Clone, Debug, Serialize)]
pub struct Poll {
    pub at_ms: f64,
    pub ready: usize,
    pub down: usize,
    pub down_names: Vec<String>,
}

/// Everything one store's run measured.
pub struct StoreRun {
    pub store: Store,
    pub rec: Arc<Recorder>,
    pub steps: Vec<Step>,
    pub failover: Option<Failover>,
    pub polls: Vec<Poll>,
    pub coordinator_names: Vec<String>,
    pub endpoints: Vec<String>,
    pub logs: Vec<PathBuf>,
    pub end_ms: f64,
}

/// Paths and things every store's run shares.
struct Setup {
    opts: Options,
    binary: PathBuf,
    tls_dir: PathBuf,
    work: PathBuf,
    logs: PathBuf,
    bench_tls: Tls,
    hosts: Vec<Arc<SimHost>>,
}

pub fn run(mut opts: Options) -> Result<()> {
    opts.hosts.sort_unstable();
    opts.hosts.dedup();
    if opts.hosts.first() == Some(&0) || opts.hosts.last().is_some_and(|&n| n > 9999) {
        bail!("--hosts: each step has 1 to 9999 hosts");
    }
    opts.stores.dedup();
    if Command::new("etcd").arg("--version").output().is_err() && opts.stores.contains(&Store::Etcd)
    {
        bail!("--stores etcd needs etcd (Debian's etcd-server; hack/setup.sh installs it)");
    }
    let (nofile_before, nofile) = daemons::raise_nofile();
    let estimate = estimate_s(&opts);
    say(format!(
        "control plane: {:?} hosts x {} s per step, stores {:?}; estimated {:.0} min",
        opts.hosts,
        opts.duration,
        opts.stores.iter().map(|s| s.name()).collect::<Vec<_>>(),
        estimate / 60.0
    ));
    let build_note = if opts.skip_build {
        None
    } else {
        super::build_workspace()
    };
    let built =
        containerd_migrate_tests::fixture::repo_root().join("target/release/migrate-coordinator");
    if !built.exists() {
        bail!(
            "{} is missing (cargo build --release -p containerd-migrate-coordinator)",
            built.display()
        );
    }
    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| super::report::default_out("control-plane"));
    let logs = out.with_file_name("control-plane");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let work = opts
        .work_base
        .join(format!("bench-control-plane-{}", std::process::id()));
    std::fs::create_dir_all(work.join("bin"))?;
    let binary = work.join("bin/migrate-coordinator");
    std::fs::copy(&built, &binary).with_context(|| format!("copying {}", built.display()))?;
    let load_before = machine::loadavg();
    let started = machine::now_utc();
    let t0 = std::time::Instant::now();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(measure(opts.clone(), binary, work.clone(), logs.clone()));
    let _ = std::fs::remove_dir_all(&work);
    let runs = result?;
    let elapsed_s = t0.elapsed().as_secs_f64();

    let summary = report::summarize(&runs, &opts);
    print!("{}", summary.text);
    let mut machine_doc = machine::describe(machine::CODE_PATHS);
    machine_doc["loadavg_before"] = load_before.into();
    machine_doc["loadavg_after"] = machine::loadavg().into();
    machine_doc["build_note"] = build_note.into();
    machine_doc["coordinator_binary_modified"] = std::fs::metadata(&built)
        .and_then(|m| m.modified())
        .ok()
        .map(|t| time::OffsetDateTime::from(t).to_string())
        .into();
    let doc = json!({
        "summary": summary.steps,
        "failover": summary.failover,
        "goals": summary.goals,
        "config": {
            "hosts": opts.hosts, "duration_s": opts.duration, "containers_per_host": opts.containers,
            "stores": opts.stores, "failover_watch_s": opts.failover_watch, "no_failover": opts.no_failover,
            "register_concurrency": opts.register_concurrency, "agents_through": opts.agents_through, "settle_s": opts.settle,
            "estimated_s": estimate, "elapsed_s": super::stats::round(elapsed_s, 1),
            "rlimit_nofile": { "before": nofile_before, "after": nofile },
            "coordinators": "target/release/migrate-coordinator (a copy) on 127.0.0.1 with its defaults: heartbeat period 1000 ms (jittered down by up to 10 %), grace 3000 ms, lease 2500 ms, leader TTL 2 s; redb: one, --state on disk (/var/tmp); etcd: three replicas c1..c3 on a three-member etcd 3.4 (127.0.0.1, data on disk), c1 started first (so it leads) and the agents' first URL",
            "hosts_simulated": "in the benchmark's process (tokio, 2 worker threads on this 2-core machine, shared with the daemons): s0001.. each with its own certificate (migrate_cluster::certs), its own Agent server on 127.0.0.1 (Info; the rest UNIMPLEMENTED) and its own TLS connection to the coordinator; they register (HostInfo.containers = containers_per_host, no images) and beat like coordinator/src/cluster/agent/heartbeat.rs (sleep the answered period, send; with replicas, a replica without an answer within a period is passed over for the next URL)",
            "containers": "counted as the coordinator counts them, per host (HostInfo / HeartbeatRequest.containers): no container records are written",
            "latency": "sent to answered, on the agent's side, in the benchmark's process (its scheduling delays included)",
            "late_period": "an acknowledged beat answered more than its period after it was sent (the next beat was due)",
            "late_lease": "answered more than its lease (2.5 s) after it was sent",
            "failed": "no answer within the agent's patience (5 s alone, a period with replicas), or an error",
            "lapse": "a host's lease (from the sending of its last acknowledged beat) ran out before the next acknowledgement",
            "cpu": "utime + stime from /proc/PID/stat over the window, % of one core (the machine has 2); coordinators summed over the replicas, etcd over its members",
            "failover": "SIGKILL of the leading replica (ListCoordinators) at the last step; named: a survivor's ListCoordinators names another leader; leading: the new leader's record says it won after the kill (polled every 20 ms)",
        },
        "machine": machine_doc,
        "started": started, "finished": machine::now_utc(),
        "stores": summary.runs,
        "logs": logs.display().to_string(),
    });
    super::report::write_json(&out, &doc)?;
    report::plots(&out, &runs, &opts)?;
    report::write_csv(&logs, &runs)?;
    say(format!(
        "done in {:.1} min; the daemons' logs and every beat are in {}",
        elapsed_s / 60.0,
        logs.display()
    ));
    Ok(())
}

/// A rough duration of the whole run, seconds.
fn estimate_s(opts: &Options) -> f64 {
    let max = opts.hosts.last().copied().unwrap_or(0) as f64;
    let per_store =
        opts.hosts.len() as f64 * (opts.duration + opts.settle) as f64 + max / 50.0 + 10.0;
    let failover = if opts.stores.contains(&Store::Etcd) && !opts.no_failover {
        opts.failover_watch as f64 + 5.0
    } else {
        0.0
    };
    max / 100.0 + opts.stores.len() as f64 * per_store + failover
}

async fn measure(
    opts: Options,
    binary: PathBuf,
    work: PathBuf,
    logs: PathBuf,
) -> Result<Vec<StoreRun>> {
    let max = opts.hosts.last().copied().unwrap_or(0);
    let names: Vec<String> = (1..=max).map(|i| format!("s{i:04}")).collect();
    let tls_dir = work.join("tls");
    let t = Instant::now();
    daemons::make_certificates(&tls_dir, &names)?;
    say(format!(
        "a CA and {} certificates in {:.1} s",
        names.len() + 2,
        t.elapsed().as_secs_f64()
    ));
    let bench_tls = Tls::load(&tls_dir, daemons::BENCH_CERT)?;
    let t = Instant::now();
    let hosts = super::control_plane_fleet::serve(&tls_dir, &names, opts.containers).await?;
    say(format!(
        "{} simulated hosts' Agent servers up in {:.1} s",
        hosts.len(),
        t.elapsed().as_secs_f64()
    ));
    let setup = Setup {
        opts: opts.clone(),
        binary,
        tls_dir,
        work,
        logs,
        bench_tls,
        hosts,
    };
    let mut runs = Vec::new();
    for &store in &opts.stores {
        runs.push(run_store(&setup, store).await?);
    }
    Ok(runs)
}

/// The control plane of one store, started.
struct ControlPlane {
    coordinators: Vec<Coordinator>,
    etcd: Option<Etcd>,
}

impl ControlPlane {
    async fn start(setup: &Setup, store: Store) -> Result<ControlPlane> {
        let tls = &setup.bench_tls;
        let ready = Duration::from_secs(20);
        match store {
            Store::Redb => {
                let state = setup.work.join("redb/state.redb");
                let mut c = Coordinator::spawn(
                    &setup.binary,
                    "c1",
                    &setup.tls_dir,
                    StateArg::Redb(&state),
                    &setup.logs,
                )?;
                c.wait_ready(tls, ready).await?;
                Ok(ControlPlane {
                    coordinators: vec![c],
                    etcd: None,
                })
            }
            Store::Etcd => {
                let etcd = Etcd::start(&setup.work.join("etcd"), &setup.logs).await?;
                say(format!(
                    "etcd: three members at {}",
                    etcd.endpoints.join(",")
                ));
                let mut coordinators = Vec::new();
                for name in ["c1", "c2", "c3"] {
                    let state = StateArg::Etcd(&etcd.endpoints);
                    let mut c = Coordinator::spawn(
                        &setup.binary,
                        name,
                        &setup.tls_dir,
                        state,
                        &setup.logs,
                    )?;
                    c.wait_ready(tls, ready).await?;
                    if name == "c1" {
                        // The first leads: the agents' first URL is the leader's.
                        wait_leader(tls, &c.url, "c1", ready).await?;
                    }
                    coordinators.push(c);
                }
                Ok(ControlPlane {
                    coordinators,
                    etcd: Some(etcd),
                })
            }
        }
    }

    fn cpu(&self, at_ms: f64) -> Cpu {
        Cpu {
            at_ms,
            coordinators: self
                .coordinators
                .iter()
                .map(|c| daemons::cpu_seconds(c.daemon.pid()))
                .collect(),
            etcd: self
                .etcd
                .iter()
                .flat_map(|e| &e.members)
                .map(|m| daemons::cpu_seconds(m.pid()))
                .collect(),
            bench: daemons::cpu_seconds(std::process::id() as i32),
        }
    }

    fn stop(&mut self) {
        for c in &mut self.coordinators {
            c.daemon.stop(Duration::from_secs(5));
        }
        if let Some(e) = &mut self.etcd {
            e.stop();
        }
    }

    fn logs(&self) -> Vec<PathBuf> {
        let mut logs: Vec<PathBuf> = self
            .coordinators
            .iter()
            .map(|c| c.daemon.log.clone())
            .collect();
        logs.extend(
            self.etcd
                .iter()
                .flat_map(|e| &e.members)
                .map(|m| m.log.clone()),
        );
        logs
    }
}

async fn wait_leader(tls: &Tls, url: &str, name: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(l) = daemons::list_coordinators(tls, url).await
            && l.replicas.iter().any(|r| r.leader && r.name == name)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{name} does not lead after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run_store(setup: &Setup, store: Store) -> Result<StoreRun> {
    let opts = &setup.opts;
    say(format!("{}: starting the control plane", store.name()));
    let mut plane = ControlPlane::start(setup, store).await?;
    // The agents' order of URLs: from the one --agents-through names.
    let first = (setup.opts.agents_through as usize - 1) % plane.coordinators.len();
    plane.coordinators.rotate_left(first);
    let endpoints: Vec<String> = plane.coordinators.iter().map(|c| c.url.clone()).collect();
    let names: Vec<String> = plane.coordinators.iter().map(|c| c.name.clone()).collect();
    let mut fleet = Fleet::new(
        setup.hosts.clone(),
        endpoints.clone(),
        opts.containers,
        opts.register_concurrency as usize,
    );
    let rec = fleet.rec.clone();
    let polls = Arc::new(Mutex::new(Vec::new()));
    let poller = tokio::spawn(poll_hosts(
        setup.bench_tls.clone(),
        endpoints.clone(),
        rec.clone(),
        polls.clone(),
    ));
    let mut steps = Vec::new();
    let measured = async {
        for &n in &opts.hosts {
            steps.push(step(setup, &plane, &mut fleet, n).await?);
        }
        let failover = if store == Store::Etcd && !opts.no_failover {
            Some(failover(setup, &mut plane, &rec).await?)
        } else {
            None
        };
        Ok::<_, anyhow::Error>(failover)
    }
    .await;
    let end_ms = rec.now_ms();
    fleet.stop();
    poller.abort();
    plane.stop();
    let failover = measured?;
    let polls = polls.lock().unwrap().clone();
    Ok(StoreRun {
        store,
        rec,
        steps,
        failover,
        polls,
        coordinator_names: names,
        endpoints,
        logs: plane.logs(),
        end_ms,
    })
}

async fn step(setup: &Setup, plane: &ControlPlane, fleet: &mut Fleet, n: usize) -> Result<Step> {
    let rec = fleet.rec.clone();
    let from = fleet.running();
    say(format!(
        "{} hosts: registering {} more",
        n,
        n.saturating_sub(from)
    ));
    let t = Instant::now();
    let registration_from_ms = rec.ms(t);
    fleet.grow(n);
    let deadline = t + Duration::from_secs(60 + n as u64 / 5);
    while rec.registered.load(std::sync::atomic::Ordering::Relaxed) < n {
        if Instant::now() > deadline {
            // Measured as it is: that the coordinator cannot take them
            // all is a result too.
            say(format!(
                "WARNING: only {} of {n} hosts registered within {:?}; failures so far: {:?}",
                rec.registered.load(std::sync::atomic::Ordering::Relaxed),
                deadline - t,
                rec.errors.lock().unwrap()
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let registration_s = t.elapsed().as_secs_f64();
    let registered = rec.registered.load(std::sync::atomic::Ordering::Relaxed);
    say(format!(
        "{registered} of {n} hosts registered ({:.1} s); measuring {} s",
        registration_s, setup.opts.duration
    ));
    tokio::time::sleep(Duration::from_secs(setup.opts.settle)).await;
    let start = rec.now_ms();
    let cpu_start = plane.cpu(start);
    tokio::time::sleep(Duration::from_secs(setup.opts.duration)).await;
    let end = rec.now_ms();
    let open_lapses = rec.open_lapses(end);
    let cpu_end = plane.cpu(end);
    let leader = &plane.coordinators[0].url;
    let states = daemons::host_states(&setup.bench_tls, leader).await;
    let (ready_at_end, down_at_end) = match states {
        Ok((ready, down)) => (Some(ready), down),
        Err(e) => {
            say(format!(
                "WARNING: ListHosts at the end of the {n} hosts step failed: {e:#}"
            ));
            (None, Vec::new())
        }
    };
    Ok(Step {
        hosts: n,
        registered,
        registration_from_ms,
        registration_s,
        window_ms: (start, end),
        cpu_start,
        cpu_end,
        coordinator_rss_kib: plane
            .coordinators
            .iter()
            .map(|c| daemons::rss_kib(c.daemon.pid()))
            .collect(),
        etcd_rss_kib: plane
            .etcd
            .iter()
            .flat_map(|e| &e.members)
            .map(|m| daemons::rss_kib(m.pid()))
            .collect(),
        bench_rss_kib: daemons::rss_kib(std::process::id() as i32),
        ready_at_end,
        down_at_end,
        open_lapses,
    })
}

/// ListHosts every 5 s, through the first replica that answers.
async fn poll_hosts(
    tls: Tls,
    endpoints: Vec<String>,
    rec: Arc<Recorder>,
    polls: Arc<Mutex<Vec<Poll>>>,
) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        for url in &endpoints {
            if let Ok((ready, down)) = daemons::host_states(&tls, url).await {
                polls.lock().unwrap().push(Poll {
                    at_ms: rec.now_ms(),
                    ready,
                    down: down.len(),
                    down_names: down.into_iter().take(20).map(|(n, _)| n).collect(),
                });
                break;
            }
        }
    }
}

async fn failover(setup: &Setup, plane: &mut ControlPlane, rec: &Recorder) -> Result<Failover> {
    let tls = &setup.bench_tls;
    let listed = daemons::list_coordinators(tls, &plane.coordinators[0].url).await?;
    let Some(leader) = listed.replicas.iter().find(|r| r.leader) else {
        bail!("no replica leads before the fail-over: {listed:?}");
    };
    let Some(k) = plane
        .coordinators
        .iter()
        .position(|c| c.name == leader.name)
    else {
        bail!(
            "the leader {} is none of the benchmark's replicas",
            leader.name
        );
    };
    let killed = leader.name.clone();
    let survivors: Vec<String> = plane
        .coordinators
        .iter()
        .filter(|c| c.name != killed)
        .map(|c| c.url.clone())
        .collect();
    say(format!(
        "fail-over: SIGKILL of the leader {killed} (the agents beat through {})",
        plane.coordinators[0].name
    ));
    let kill = Instant::now();
    let kill_ms = rec.ms(kill);
    let kill_unix_ms = super::unix_ms();
    let cpu_at_kill = plane.cpu(kill_ms);
    plane.coordinators[k].daemon.kill();
    let (mut named_ms, mut leading_ms, mut new_leader, mut since) = (None, None, None, None);
    let poll_until = kill + Duration::from_secs(30);
    let mut i = 0;
    while Instant::now() < poll_until && leading_ms.is_none() {
        let url = &survivors[i % survivors.len()];
        i += 1;
        if let Ok(l) = daemons::list_coordinators(tls, url).await
            && let Some(r) = l.replicas.iter().find(|r| r.leader && r.name != killed)
        {
            let at = kill.elapsed().as_secs_f64() * 1000.0;
            named_ms.get_or_insert(at);
            if r.leader_since_unix_ms >= kill_unix_ms {
                leading_ms = Some(at);
                new_leader = Some(r.name.clone());
                since = Some(r.leader_since_unix_ms);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    say(format!(
        "fail-over: another leader named after {} ms, {} leads after {} ms",
        report::num(named_ms, 0),
        new_leader.as_deref().unwrap_or("none"),
        report::num(leading_ms, 0)
    ));
    // The CPU the move takes (the agents' reconnections, the election).
    tokio::time::sleep_until(kill + CPU_AFTER_KILL).await;
    let cpu_after_kill = plane.cpu(rec.now_ms());
    let watch_end = kill + Duration::from_secs(setup.opts.failover_watch);
    tokio::time::sleep_until(watch_end).await;
    let watch_end_ms = rec.now_ms();
    let open_lapses = rec.open_lapses(watch_end_ms);
    let ask = new_leader
        .as_ref()
        .and_then(|n| plane.coordinators.iter().find(|c| &c.name == n))
        .map_or_else(|| survivors[0].clone(), |c| c.url.clone());
    let (ready_at_end, down_at_end) = match daemons::host_states(tls, &ask).await {
        Ok((ready, down)) => (Some(ready), down),
        Err(_) => (None, Vec::new()),
    };
    Ok(Failover {
        killed,
        agents_beat_through: plane.coordinators[0].name.clone(),
        kill_ms,
        kill_unix_ms,
        watch_end_ms,
        cpu_at_kill,
        cpu_after_kill,
        named_ms,
        new_leader,
        leading_ms,
        leader_since_unix_ms: since,
        ready_at_end,
        down_at_end,
        open_lapses,
    })
}

/// Paths of a run's logs, for the report.
pub fn log_names(run: &StoreRun) -> Vec<String> {
    run.logs.iter().map(|p| p.display().to_string()).collect()
}
