//! One trial of the `ha` benchmark: a fresh local cluster, N memtick
//! counters on h1 with one restore policy, h1 lost at a random point of the
//! checkpoint tickers' cycle, and each counter timed until it ticks on its
//! new host.
//!
//! Everything is read from files the machine sees, so that nothing polls
//! through `migratectl` while the cluster recovers (each call is a process,
//! TLS and a gRPC round trip, which on 2 cores would slow what it times):
//! - each container's output, which the agent writes to
//!   `logs/ID.log` on its host's disk ([`Host::container_log`]): memtick
//!   prints every tick with its wall-clock time, so the first line on the
//!   new host is the exact moment the container ran again, and the old
//!   host's log (its disk outlives it) has every tick up to the failure;
//! - h1's containerd log, for the tickers' `ticker-version` lines (a version
//!   stored; how long the tick took);
//! - the coordinator's log (h1 declared down, with its last heartbeat and
//!   the grace; each container being brought back, and where) and the
//!   surviving agents' logs (each restore done).
//!
//! `migratectl ps --json` is asked once, after every container is back, for
//! the records' `recovery` (version, its age, when the host was declared
//! down, when the container ran), and `migratectl checkpoint ls` once per
//! container before the failure, to confirm the versions the ticker logged.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use containerd_migrate_tests::cluster::{Cluster, Host};
use containerd_migrate_tests::fixture::IMAGE;
use containerd_migrate_tests::memtick::TickLine;
use containerd_migrate_tests::process::{self, Output};
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::ha::{Failure, StateStore};
use super::session::hack;
use super::stats::{Stats, round};
use super::{say, ticker_log, unix_ms};

/// memtick's tick interval.
pub const TICK_MS: u64 = 20;
/// memtick's `--out` file inside the container.
const TICK_FILE: &str = "/tmp/tick";
/// The host that fails with the embedded store (with etcd: a host that does
/// not lead, or the leader's, as `--fail` says).
pub const LOST: &str = "h1";
/// How long the replicas may take to elect a leader (after `up`, or after
/// the leader's host is lost).
const ELECTION_LIMIT: Duration = Duration::from_secs(30);
/// How often `migratectl coordinator --json` is asked for the leader while
/// it fails over.
const LEADER_POLL: Duration = Duration::from_millis(100);
/// How often the surviving hosts' container logs are read during the
/// recovery (the time itself comes from memtick's stamps, not from this).
const POLL: Duration = Duration::from_millis(50);
/// Ticks a container must have made on its new host to count as back
/// (running and making progress); the first one's stamp is its time.
const TICKS_TO_COUNT: usize = 2;
/// How long one command on a host may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// A container's restore policy (`migratectl run --restore-policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Restored from the newest version its checkpoint ticker stored.
    Checkpoint,
    /// Started afresh on another host (Swarm's and Kubernetes' way); no ticker.
    Restart,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::Checkpoint => "checkpoint",
            Policy::Restart => "restart",
        }
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a trial is: its count, policy and run, and the set-up it shares
/// with every other trial.
pub struct Setup<'a> {
    pub cluster: &'a str,
    pub hosts: usize,
    pub count: usize,
    pub policy: Policy,
    pub run: u64,
    pub mib: u64,
    pub interval: Duration,
    /// How long to wait once the counters are ready (every container has
    /// its versions), so the failure falls at a random point of the
    /// tickers' cycle.
    pub offset: Duration,
    /// How long the lost containers may take to come back.
    pub timeout: Duration,
    /// Versions each container must have before the random wait (with
    /// checkpoint).
    pub min_versions: usize,
    /// The coordinator's store, and what fails.
    pub store: StateStore,
    pub fail: Failure,
}

/// The tickers on h1 before the failure.
#[derive(Debug, Default, Serialize)]
pub struct TickerSeen {
    pub versions: usize,
    pub failed_ticks: usize,
    /// Each tick's duration, dump to version stored, ms.
    pub total_ms: Option<Stats>,
    pub frozen_ms: Option<Stats>,
    /// Only the ticks after each container's first (a first version uploads
    /// all of the memory; the later ones only the chunks the store lacks).
    pub later_total_ms: Option<Stats>,
    /// Every version stored before the failure.
    pub ticks: Vec<TickRecord>,
}

/// One version a ticker stored.
#[derive(Debug, Serialize)]
pub struct TickRecord {
    pub container: String,
    pub version: u64,
    /// When the shim logged it stored, ms since the epoch.
    pub log_ms: u64,
    pub total_ms: f64,
    pub frozen_ms: Option<f64>,
    pub bytes_new: u64,
}

/// One trial, as the JSON file has it.
#[derive(Debug, Default, Serialize)]
pub struct Trial {
    pub count: usize,
    pub policy: Option<Policy>,
    pub run: u64,
    /// "STORE/FAILURE" (`etcd/leader`), and its parts.
    pub scenario: String,
    pub store: StateStore,
    pub fail: Failure,
    /// The host lost, where the containers ran.
    pub lost_host: String,
    /// With etcd: the replica leading before the failure, the one leading
    /// after it (`--fail leader`), when a surviving host's `migratectl
    /// coordinator --json` first named it (polled every 100 ms from the
    /// failure on), ms after the failure, and how long that call took (the
    /// new leader was there by its end, perhaps since its start).
    pub leader_before: Option<String>,
    pub new_leader: Option<String>,
    pub failover_ms: Option<f64>,
    pub failover_poll_ms: Option<f64>,
    /// The new leader's "leads the cluster" log line, ms after the failure.
    pub leads_logged_ms: Option<f64>,
    pub ok: bool,
    pub error: Option<String>,
    /// `hack/cluster.sh up`, importing the test image on every host,
    /// starting the containers, waiting until they were ready (a version
    /// each, or a tick), the random wait, and `down`: ms.
    pub up_ms: Option<f64>,
    pub import_ms: Option<f64>,
    pub start_ms: Option<f64>,
    pub ready_ms: Option<f64>,
    pub offset_ms: Option<f64>,
    pub down_ms: Option<f64>,
    pub elapsed_s: Option<f64>,
    /// The failure, t = 0: when h1's link (the machine's end of its veth)
    /// went, which `hack/cluster.sh fail h1` does first, before it kills
    /// every process of the host; ms since the epoch.
    pub fail_unix_ms: Option<u64>,
    /// When the command started (it may wait for the script's lock, which
    /// every cluster on the machine shares), and how long it took.
    pub fail_command_unix_ms: Option<u64>,
    pub fail_command_ms: Option<f64>,
    /// From the failure until the last container ticked on its new host.
    pub all_back_ms: Option<f64>,
    /// From the coordinator's log: h1's last heartbeat, when it was declared
    /// down, and the grace (its --heartbeat-timeout-ms).
    pub last_heartbeat_unix_ms: Option<u64>,
    pub down_unix_ms: Option<u64>,
    pub grace_ms: Option<u64>,
    /// Where the containers went: host -> how many.
    pub spread: BTreeMap<String, usize>,
    pub ticker: TickerSeen,
    /// The coordinator's and the surviving agents' log lines from the
    /// failure on.
    pub coordinator_log: Vec<String>,
    pub agent_logs: BTreeMap<String, Vec<String>>,
}

/// One container of a trial.
#[derive(Debug, Default, Serialize)]
pub struct Sample {
    pub count: usize,
    pub policy: Option<Policy>,
    pub run: u64,
    pub scenario: String,
    pub id: String,
    pub ok: bool,
    pub error: Option<String>,
    pub new_host: Option<String>,
    /// RTO: from the failure until the container's first tick on its new
    /// host, ms.
    pub rto_ms: Option<f64>,
    /// Valid versions in the store before the failure (`checkpoint ls`).
    pub versions_before: Option<usize>,
    /// The version it came back from; none: started afresh.
    pub version: Option<u64>,
    /// `recovery.versionAgeMs` as migratectl reports it.
    pub version_age_ms: Option<f64>,
    /// What that age is counted to, as the coordinator's log says:
    /// "last heartbeat" or "declared down".
    pub version_age_to: Option<String>,
    /// When the version was taken (from the age and its reference).
    pub version_created_unix_ms: Option<u64>,
    /// RPO: the version's age at h1's last heartbeat, ms (the product's
    /// definition, whatever this build's versionAgeMs counts to).
    pub rpo_ms: Option<f64>,
    /// The version's age at the failure itself.
    pub age_at_failure_ms: Option<f64>,
    /// The state lost, from memtick's own ticks: the time between the tick
    /// the restored counter went on from and the last tick before the
    /// failure (a cold start: everything since the counter started).
    pub lost_ms: Option<f64>,
    pub ticks_lost: Option<i64>,
    pub tick_at_failure: Option<u64>,
    pub first_tick: Option<u64>,
    pub cold_reason: Option<String>,
    pub skipped_versions: usize,
    /// Failed attempts the coordinator logged (it retries 2 s later).
    pub failed_attempts: usize,
    /// Where the time went, ms: failure -> h1 declared down -> the
    /// coordinator asks the new host -> the agent reports it running ->
    /// its first tick.
    pub detect_ms: Option<f64>,
    pub place_ms: Option<f64>,
    pub restore_ms: Option<f64>,
    pub answer_ms: Option<f64>,
}

/// Runs one trial on a fresh cluster; the cluster is down again after it,
/// whatever happened.
pub fn run(s: &Setup) -> (Trial, Vec<Sample>) {
    let t0 = Instant::now();
    let scenario = super::ha::scenario(s.store, s.fail);
    let mut trial = Trial {
        count: s.count,
        policy: Some(s.policy),
        run: s.run,
        scenario: scenario.clone(),
        store: s.store,
        fail: s.fail,
        lost_host: LOST.to_string(),
        ..Trial::default()
    };
    let ids: Vec<String> = (0..s.count)
        .map(|i| id(s.policy, s.count, s.run, i))
        .collect();
    let mut samples: Vec<Sample> = ids
        .iter()
        .map(|id| Sample {
            count: s.count,
            policy: Some(s.policy),
            run: s.run,
            scenario: scenario.clone(),
            id: id.clone(),
            ..Sample::default()
        })
        .collect();
    let up = Instant::now();
    let flags: &[&str] = match s.store {
        StateStore::Embedded => &[],
        StateStore::Etcd => &["--etcd"],
    };
    let cluster = match Cluster::up_with(s.cluster, s.hosts, flags) {
        Ok(c) => c,
        Err(e) => {
            trial.error = Some(e);
            return (trial, samples);
        }
    };
    trial.up_ms = Some(ms(up));
    let r = measure(s, &cluster, &ids, &mut trial, &mut samples);
    let down = Instant::now();
    let out = cluster.down();
    trial.down_ms = Some(ms(down));
    if !out.success() {
        say(format!(
            "WARNING: taking cluster {} down failed\n{out}",
            s.cluster
        ));
    }
    if let Err(e) = r {
        trial.error = Some(e);
    }
    for sample in &mut samples {
        sample.ok = sample.rto_ms.is_some() && sample.error.is_none();
        if sample.rto_ms.is_none() && sample.error.is_none() {
            sample.error = Some(
                trial
                    .error
                    .clone()
                    .unwrap_or_else(|| "not back on another host".into()),
            );
        }
    }
    trial.ok = trial.error.is_none() && samples.iter().all(|s| s.ok);
    trial.elapsed_s = Some(round(t0.elapsed().as_secs_f64(), 1));
    (trial, samples)
}

/// A container's id: policy, count, run and index (`c30-2-07`).
pub fn id(policy: Policy, count: usize, run: u64, i: usize) -> String {
    let p = match policy {
        Policy::Checkpoint => 'c',
        Policy::Restart => 'r',
    };
    format!("{p}{count}-{run}-{i:02}")
}

fn ms(since: Instant) -> f64 {
    round(since.elapsed().as_secs_f64() * 1000.0, 1)
}

fn measure(
    s: &Setup,
    cluster: &Cluster,
    ids: &[String],
    trial: &mut Trial,
    samples: &mut [Sample],
) -> Result<(), String> {
    let hosts: Vec<&Host> = (1..=s.hosts)
        .map(|i| cluster.host(&format!("h{i}")))
        .collect();
    let mut replica_urls: BTreeMap<String, String> = BTreeMap::new();
    // With etcd, the host to lose is the leader's or another's: ask a host
    // that will not be lost either way (the last) which replica leads.
    if s.store == StateStore::Etcd {
        let asked = hosts.last().ok_or("no hosts")?;
        let (leader, _, _, listed) = wait_leader(asked, None, None, ELECTION_LIMIT)?;
        replica_urls = listed["replicas"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| {
                        Some((
                            r["name"].as_str()?.to_string(),
                            r["url"].as_str()?.to_string(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        trial.lost_host = match s.fail {
            Failure::Leader => leader.clone(),
            Failure::Host => hosts
                .iter()
                .find(|h| h.name != leader)
                .ok_or("no host but the leader's")?
                .name
                .clone(),
        };
        trial.leader_before = Some(leader);
    } else if s.fail == Failure::Leader {
        return Err("--fail leader needs --store etcd".into());
    }
    let lost_name = trial.lost_host.clone();
    let lost: &str = &lost_name;
    let h1 = cluster.host(lost);
    let survivors: Vec<&Host> = hosts.iter().copied().filter(|h| h.name != lost).collect();
    // Asked for the leader while it fails over: a host that survives.
    let witness = *survivors.last().ok_or("no host survives")?;
    // Its own replica, asked directly: given every replica's URL,
    // migratectl would try the lost host's first, and connect to the leader
    // it is told of (the old one, until the new one leads), 5 s each.
    let witness_url = replica_urls.get(&witness.name).cloned();
    let import = Instant::now();
    for h in &hosts {
        let out = process::run_within(
            hack("images.sh", &["import", h.ctr().address()]),
            COMMAND_TIMEOUT,
        )?;
        if !out.success() {
            return Err(format!(
                "importing the test image into {} failed\n{out}",
                h.name
            ));
        }
    }
    trial.import_ms = Some(ms(import));
    let store = cluster.store();

    // The counters, spread over one interval when they have tickers, so
    // that their ticks are too (as containers started at different times
    // would be), rather than all at once.
    let start = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        if s.policy == Policy::Checkpoint {
            let at = s.interval.mul_f64(i as f64 / ids.len() as f64);
            if let Some(wait) = at.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        run_counter(h1, id, s, &store)?;
    }
    trial.start_ms = Some(ms(start));

    let ready = Instant::now();
    match s.policy {
        Policy::Checkpoint => {
            wait_for_versions(h1, ids, s.interval, s.min_versions)?;
            for (sample, id) in samples.iter_mut().zip(ids) {
                sample.versions_before = Some(h1.versions(&store, id)?.len());
            }
        }
        Policy::Restart => wait_for_ticks(h1, ids, lost)?,
    }
    trial.ready_ms = Some(ms(ready));
    let offset = s.offset;
    std::thread::sleep(offset);
    trial.offset_ms = Some(round(offset.as_secs_f64() * 1000.0, 1));

    // t = 0 is when h1's link goes (the script cuts it first, then kills
    // every process): `fail` may first wait for hack/cluster.sh's lock,
    // which any cluster's `up` or `down` on this machine holds for seconds.
    let watch = LinkWatch::start(cluster.link_of(lost));
    let command_ms = unix_ms();
    let fail = Instant::now();
    let (out, cut, back, failover) = std::thread::scope(|scope| {
        // The leader's fail-over, polled from a surviving host from the
        // command's start (the old leader answers until its host goes).
        let watcher = trial
            .leader_before
            .clone()
            .filter(|_| s.fail == Failure::Leader)
            .map(|old| {
                let url = witness_url.as_deref();
                scope.spawn(move || wait_leader(witness, Some(&old), url, ELECTION_LIMIT))
            });
        let out = process::run_within(fail_command(cluster, lost), COMMAND_TIMEOUT);
        let fail_command_ms = ms(fail);
        let cut = watch.stop();
        let back = match &out {
            Ok(o) if o.success() => wait_back(&survivors, ids, s.timeout),
            _ => BTreeMap::new(),
        };
        let failover = watcher.map(|w| {
            w.join()
                .unwrap_or_else(|_| Err("the leader watch panicked".into()))
        });
        ((out, fail_command_ms), cut, back, failover)
    });
    let (out, fail_command_ms) = out;
    trial.fail_command_ms = Some(fail_command_ms);
    let out = out?;
    if !out.success() {
        return Err(format!("hack/cluster.sh fail {lost} failed\n{out}"));
    }
    let fail_ms = cut.unwrap_or_else(|| {
        say(format!(
            "WARNING: {lost}'s link was not seen going; t = 0 is the start of `fail`"
        ));
        command_ms
    });
    trial.fail_command_unix_ms = Some(command_ms);
    trial.fail_unix_ms = Some(fail_ms);
    let failover_error = match failover {
        Some(Ok((leader, answered_ms, poll_ms, _))) => {
            trial.new_leader = Some(leader);
            trial.failover_ms = Some(answered_ms as f64 - fail_ms as f64);
            trial.failover_poll_ms = Some(poll_ms);
            None
        }
        Some(Err(e)) => Some(format!("no other replica led: {e}")),
        None => None,
    };
    trial.all_back_ms = (back.len() == ids.len())
        .then(|| back.values().map(|(_, t)| t.unix_ms).max())
        .flatten()
        .map(|last| last as f64 - fail_ms as f64);

    // The records, the logs, and what each container lost.
    let ps = survivors
        .first()
        .ok_or("no host survives")
        .map_err(String::from)
        .and_then(|h| json(h, &["migratectl", "ps", "--json"]));
    // The coordinator's log; with etcd, every replica's, merged in time
    // (the leader's says what the coordinator did; the lost host's ends
    // at the failure).
    let since = fail_ms.saturating_sub(5_000);
    let coordinator: Vec<(u64, String, String)> = match s.store {
        StateStore::Embedded => read_lines_since(&cluster.coordinator_log(), since)
            .into_iter()
            .map(|(t, l)| (t, String::new(), l))
            .collect(),
        StateStore::Etcd => {
            let mut all: Vec<(u64, String, String)> = hosts
                .iter()
                .flat_map(|h| {
                    read_lines_since(&h.coordinator_log(), since)
                        .into_iter()
                        .map(|(t, l)| (t, format!("{}: ", h.name), l))
                })
                .collect();
            all.sort_by_key(|(t, _, _)| *t);
            all
        }
    };
    let lines: Vec<(u64, String)> = coordinator
        .iter()
        .map(|(t, _, l)| (*t, l.clone()))
        .collect();
    let events = CoordinatorEvents::parse(&lines, lost);
    trial.coordinator_log = coordinator
        .iter()
        .filter(|(t, _, _)| *t >= fail_ms)
        .map(|(_, h, l)| format!("{h}{l}"))
        .collect();
    if let Some(new) = &trial.new_leader {
        let mark = format!("{new} leads the cluster");
        trial.leads_logged_ms = lines
            .iter()
            .find(|(t, l)| *t >= fail_ms && l.contains(&mark))
            .map(|(t, _)| *t as f64 - fail_ms as f64);
    }
    let mut agent_done: BTreeMap<String, u64> = BTreeMap::new();
    for h in &survivors {
        let lines = read_lines_since(&h.agent_log(), fail_ms);
        for (t, line) in &lines {
            if let Some(id) = restored_here(line) {
                agent_done.insert(id.to_string(), *t);
            }
        }
        trial
            .agent_logs
            .insert(h.name.clone(), lines.into_iter().map(|(_, l)| l).collect());
    }
    trial.last_heartbeat_unix_ms = events.last_heartbeat;
    trial.down_unix_ms = events.down;
    trial.grace_ms = events.grace;
    trial.ticker = ticker_seen(h1, ids, fail_ms);

    let ps = ps.unwrap_or_else(|e| {
        say(format!("WARNING: migratectl ps --json: {e}"));
        Value::Null
    });
    for sample in samples.iter_mut() {
        let record = ps
            .as_array()
            .and_then(|a| a.iter().find(|c| c["id"] == sample.id.as_str()));
        let old_ticks = ticks_in(&h1.container_log(&sample.id));
        let first = back.get(&sample.id);
        if let Some((host, _)) = first {
            *trial.spread.entry(host.clone()).or_default() += 1;
        }
        fill(
            sample,
            fail_ms,
            record,
            first,
            &old_ticks,
            &events,
            agent_done.get(&sample.id).copied(),
        );
    }
    match failover_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Watches, every millisecond, for a link of the machine to go.
struct LinkWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Option<u64>>,
}

impl LinkWatch {
    fn start(link: String) -> LinkWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let path = std::path::PathBuf::from(format!("/sys/class/net/{link}"));
        let thread = std::thread::spawn(move || {
            loop {
                if !path.exists() {
                    return Some(unix_ms());
                }
                if stopping.load(Ordering::SeqCst) {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        LinkWatch { stop, thread }
    }

    /// When the link went, if it did.
    fn stop(self) -> Option<u64> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().ok().flatten()
    }
}

/// Asks `h` (`migratectl coordinator --json`, of the replica at `url` if
/// given, every [`LEADER_POLL`]) until a replica other than `old` reports
/// that it leads, or `limit` passes: its name, when the answer came (ms
/// since the epoch), how long that call took, ms, and the answer.
fn wait_leader(
    h: &Host,
    old: Option<&str>,
    url: Option<&str>,
    limit: Duration,
) -> Result<(String, u64, f64, Value), String> {
    let deadline = Instant::now() + limit;
    let mut argv = vec!["migratectl", "coordinator", "--json"];
    if let Some(u) = url {
        argv.extend(["--coordinator", u]);
    }
    loop {
        let asked = Instant::now();
        let out = process::run_within(h.command(&argv), Duration::from_secs(10));
        let answered = unix_ms();
        let took = ms(asked);
        let last = match out {
            Ok(o) if o.success() => {
                let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
                let leader = v["replicas"].as_array().and_then(|a| {
                    a.iter()
                        .find(|r| r["leader"] == true)
                        .and_then(|r| r["name"].as_str())
                });
                match leader {
                    Some(l) if Some(l) != old => {
                        return Ok((l.to_string(), answered, took, v.clone()));
                    }
                    _ => o.stdout_str(),
                }
            }
            Ok(o) => o.to_string(),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "within {limit:?}, asked on {}; the last answer:\n{last}",
                h.name
            ));
        }
        std::thread::sleep(LEADER_POLL.saturating_sub(asked.elapsed()));
    }
}

/// `hack/cluster.sh fail HOST` (as [`Cluster::fail`], with a deadline that is
/// an error rather than a panic).
fn fail_command(cluster: &Cluster, lost: &str) -> std::process::Command {
    let mut cmd = hack("cluster.sh", &["fail", lost]);
    cmd.env("CLUSTER_NAME", cluster.name())
        .env("SHIM_DIR", containerd_migrate_tests::fixture::shim_dir());
    cmd
}

/// `migratectl run` of a memtick counter on `h`, with restore policy
/// `s.policy`; a checkpoint ticker into `store` every interval for the
/// checkpoint policy (none for restart: the baseline has no versions).
fn run_counter(h: &Host, id: &str, s: &Setup, store: &str) -> Result<(), String> {
    let interval = format!(
        "io.containerd.migrate.checkpoint.interval={}ms",
        s.interval.as_millis()
    );
    let store = format!("io.containerd.migrate.checkpoint.store={store}");
    let (mib, tick) = (s.mib.to_string(), TICK_MS.to_string());
    let mut argv = vec![
        "migratectl",
        "run",
        "--json",
        "--host",
        &h.name,
        "--restore-policy",
        s.policy.name(),
    ];
    if s.policy == Policy::Checkpoint {
        argv.extend(["--annotation", &interval, "--annotation", &store]);
    }
    argv.extend([
        IMAGE,
        id,
        "memtick",
        "--mib",
        &mib,
        "--interval-ms",
        &tick,
        "--out",
        TICK_FILE,
    ]);
    checked(h, &argv).map(|_| ())
}

/// Runs `argv` on `h`; its output if it succeeded.
fn checked(h: &Host, argv: &[&str]) -> Result<Output, String> {
    let out = process::run_within(h.command(argv), COMMAND_TIMEOUT)?;
    if out.success() {
        Ok(out)
    } else {
        Err(format!("`{}` on {} failed\n{out}", argv.join(" "), h.name))
    }
}

fn json(h: &Host, argv: &[&str]) -> Result<Value, String> {
    let out = checked(h, argv)?;
    serde_json::from_slice(&out.stdout).map_err(|e| format!("{}: {e}\n{out}", argv.join(" ")))
}

/// Waits until h1's shims logged `min` stored versions of every container.
fn wait_for_versions(
    h1: &Host,
    ids: &[String],
    interval: Duration,
    min: usize,
) -> Result<(), String> {
    // The first version comes one interval after the start and uploads the
    // whole memory; many at once on 2 cores take a while.
    let limit = interval * (min as u32 + 2) + Duration::from_secs(180);
    let deadline = Instant::now() + limit;
    loop {
        let log = std::fs::read_to_string(h1.containerd_log()).unwrap_or_default();
        let versioned: Vec<String> = log
            .lines()
            .filter_map(ticker_log::parse)
            .map(|v| v.container)
            .collect();
        let missing: Vec<&String> = ids
            .iter()
            .filter(|id| versioned.iter().filter(|v| v == id).count() < min)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "fewer than {min} versions of {} containers within {limit:?} ({} failed ticks logged)",
                missing.len(),
                missing
                    .iter()
                    .map(|id| ticker_log::failures_of(&log, id))
                    .sum::<usize>()
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits until every container ticked on h1 (`lost`).
fn wait_for_ticks(h1: &Host, ids: &[String], lost: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let missing = ids
            .iter()
            .filter(|id| ticks_in(&h1.container_log(id)).is_empty())
            .count();
        if missing == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("{missing} containers never ticked on {lost}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every tick line of a container's output.
pub fn ticks_in(log: &std::path::Path) -> Vec<TickLine> {
    std::fs::read_to_string(log)
        .map(|t| t.lines().filter_map(TickLine::parse).collect())
        .unwrap_or_default()
}

/// Reads the surviving hosts' container logs until every container ticked
/// [`TICKS_TO_COUNT`] times on one of them, or `limit` passes: id -> (host,
/// its first tick there).
fn wait_back(
    survivors: &[&Host],
    ids: &[String],
    limit: Duration,
) -> BTreeMap<String, (String, TickLine)> {
    let deadline = Instant::now() + limit;
    let mut back = BTreeMap::new();
    while back.len() < ids.len() && Instant::now() < deadline {
        let waiting: Vec<&String> = ids.iter().filter(|id| !back.contains_key(*id)).collect();
        for id in waiting {
            for h in survivors {
                let ticks = ticks_in(&h.container_log(id));
                if ticks.len() >= TICKS_TO_COUNT {
                    back.insert(id.clone(), (h.name.clone(), ticks[0]));
                    break;
                }
            }
        }
        std::thread::sleep(POLL);
    }
    back
}

/// What the tickers on h1 did before the failure.
fn ticker_seen(h1: &Host, ids: &[String], fail_ms: u64) -> TickerSeen {
    let log = std::fs::read_to_string(h1.containerd_log()).unwrap_or_default();
    let versions: Vec<ticker_log::TickerVersion> = log
        .lines()
        .filter_map(ticker_log::parse)
        .filter(|v| ids.contains(&v.container) && v.log_ms <= fail_ms)
        .collect();
    let firsts: BTreeMap<&str, u64> = ids
        .iter()
        .filter_map(|id| {
            versions
                .iter()
                .filter(|v| v.container == *id)
                .map(|v| v.version)
                .min()
                .map(|m| (id.as_str(), m))
        })
        .collect();
    TickerSeen {
        versions: versions.len(),
        failed_ticks: ids.iter().map(|id| ticker_log::failures_of(&log, id)).sum(),
        total_ms: Stats::of(versions.iter().map(|v| Some(v.total_ms))),
        frozen_ms: Stats::of(versions.iter().map(|v| v.frozen_ms)),
        later_total_ms: Stats::of(
            versions
                .iter()
                .filter(|v| firsts.get(v.container.as_str()) != Some(&v.version))
                .map(|v| Some(v.total_ms)),
        ),
        ticks: versions
            .iter()
            .map(|v| TickRecord {
                container: v.container.clone(),
                version: v.version,
                log_ms: v.log_ms,
                total_ms: v.total_ms,
                frozen_ms: v.frozen_ms,
                bytes_new: v.bytes_new,
            })
            .collect(),
    }
}

/// The lines of a daemon's log (`RFC3339 LEVEL message`) stamped at or
/// after `since_ms`, with their stamps.
fn read_lines_since(path: &std::path::Path, since_ms: u64) -> Vec<(u64, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| Some((stamp(l)?, l.to_string())))
        .filter(|(t, _)| *t >= since_ms)
        .collect()
}

/// The leading RFC 3339 time stamp of a log line, ms since the epoch.
pub fn stamp(line: &str) -> Option<u64> {
    let word = line.split_whitespace().next()?;
    let t = OffsetDateTime::parse(word, &Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// The agent's "recovery of ID: restored version V here" line: ID.
fn restored_here(line: &str) -> Option<&str> {
    let rest = line.split_once("recovery of ")?.1;
    let (id, what) = rest.split_once(": ")?;
    what.starts_with("restored version").then_some(id)
}

/// What the coordinator's log says of the loss of h1 and of each container.
#[derive(Debug, Default)]
pub struct CoordinatorEvents {
    pub down: Option<u64>,
    pub last_heartbeat: Option<u64>,
    pub grace: Option<u64>,
    /// id -> when the coordinator first asked an agent to bring it back.
    pub bringing: BTreeMap<String, u64>,
    /// id -> what the "restored from version" line counts the age to.
    pub age_to: BTreeMap<String, String>,
    /// id -> failed attempts.
    pub failed: BTreeMap<String, usize>,
}

impl CoordinatorEvents {
    pub fn parse(lines: &[(u64, String)], lost_host: &str) -> CoordinatorEvents {
        let mut e = CoordinatorEvents::default();
        let down_mark = format!("host {lost_host} is down: ");
        let lost = format!(" of lost host {lost_host} ");
        for (t, line) in lines {
            if let Some(rest) = line.split_once(&down_mark).map(|(_, r)| r) {
                e.down.get_or_insert(*t);
                e.last_heartbeat = number_after(rest, "the last at ").or(e.last_heartbeat);
                e.grace = number_after(rest, "the grace is ").or(e.grace);
            } else if let Some((head, tail)) = line.split_once(&lost) {
                let Some(id) = head.split_whitespace().last() else {
                    continue;
                };
                if head.ends_with(&format!("bringing {id}")) {
                    e.bringing.entry(id.to_string()).or_insert(*t);
                } else if tail.contains("restored from version") {
                    let to = if tail.contains("last heartbeat") {
                        "last heartbeat"
                    } else if tail.contains("declared down") {
                        "declared down"
                    } else {
                        "unknown"
                    };
                    e.age_to.insert(id.to_string(), to.to_string());
                }
            } else if let Some(rest) = line.split_once("bringing ").map(|(_, r)| r)
                && rest.contains(" failed")
                && let Some(id) = rest.split_whitespace().next()
            {
                *e.failed.entry(id.to_string()).or_default() += 1;
            }
        }
        e
    }
}

/// The number right after `key` in `text` (`the last at 1796673595027,`).
fn number_after(text: &str, key: &str) -> Option<u64> {
    let rest = text.split_once(key)?.1;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// One container's figures, from its record, its first tick on the new
/// host, its ticks on h1, and the logs.
#[allow(clippy::too_many_arguments)]
pub fn fill(
    s: &mut Sample,
    fail_ms: u64,
    record: Option<&Value>,
    first: Option<&(String, TickLine)>,
    old_ticks: &[TickLine],
    events: &CoordinatorEvents,
    agent_done: Option<u64>,
) {
    let recovery = record.map(|r| &r["recovery"]).filter(|r| r.is_object());
    if let Some(r) = record {
        let host = r["host"].as_str().map(String::from);
        if let (Some(h), Some((seen, _))) = (&host, first)
            && h != seen
        {
            s.error = Some(format!("its record says {h}, but it ticked on {seen}"));
        }
        s.new_host = host;
    }
    let Some((host, first)) = first else {
        return;
    };
    s.new_host.get_or_insert_with(|| host.clone());
    s.rto_ms = Some(first.unix_ms as f64 - fail_ms as f64);
    s.first_tick = Some(first.tick);
    s.failed_attempts = events.failed.get(&s.id).copied().unwrap_or(0);

    // The state at the failure: the last tick h1 logged before it.
    let at_failure = old_ticks
        .iter()
        .rev()
        .find(|t| t.unix_ms <= fail_ms)
        .or(old_ticks.last());
    s.tick_at_failure = at_failure.map(|t| t.tick);
    let period = tick_period(old_ticks);
    if let Some(f) = at_failure {
        let went_on_from = first.tick.saturating_sub(1);
        match old_ticks.iter().find(|t| t.tick == went_on_from) {
            Some(from) if went_on_from > 0 => {
                s.ticks_lost = Some(f.tick as i64 - went_on_from as i64);
                s.lost_ms = Some(f.unix_ms as f64 - from.unix_ms as f64);
            }
            _ if went_on_from > 0 => {
                s.ticks_lost = Some(f.tick as i64 - went_on_from as i64);
                s.lost_ms = period.map(|p| (f.tick as f64 - went_on_from as f64) * p);
            }
            // Started afresh: all of it, since the counter began.
            _ => {
                s.ticks_lost = Some(f.tick as i64);
                s.lost_ms = old_ticks
                    .first()
                    .map(|o| (f.unix_ms - o.unix_ms) as f64 + period.unwrap_or(TICK_MS as f64));
            }
        }
    }

    let Some(r) = recovery else {
        return;
    };
    s.version = r["version"].as_u64();
    s.version_age_ms = r["versionAgeMs"].as_f64();
    s.cold_reason = r["coldReason"]
        .as_str()
        .filter(|c| !c.is_empty())
        .map(String::from);
    s.skipped_versions = r["skipped"].as_array().map_or(0, Vec::len);
    let down = r["downUnixMs"].as_u64().or(events.down);
    let last_heartbeat = r["lastHeartbeatUnixMs"]
        .as_u64()
        .filter(|t| *t > 0)
        .or(events.last_heartbeat);
    let running = r["runningUnixMs"].as_u64().or(agent_done);
    // What this build counts the age to: its log says; a record with the
    // last heartbeat in it counts to that (the README's definition).
    let age_to = events.age_to.get(&s.id).cloned().unwrap_or_else(|| {
        if r["lastHeartbeatUnixMs"].as_u64().is_some() {
            "last heartbeat".into()
        } else {
            "declared down".into()
        }
    });
    if let (Some(age), Some(_)) = (s.version_age_ms, s.version) {
        let reference = if age_to == "declared down" {
            down
        } else {
            last_heartbeat
        };
        s.version_created_unix_ms = reference.map(|t| t.saturating_sub(age as u64));
        s.version_age_to = Some(age_to);
    }
    if let Some(created) = s.version_created_unix_ms {
        s.rpo_ms = last_heartbeat.map(|h| h as f64 - created as f64);
        s.age_at_failure_ms = Some(fail_ms as f64 - created as f64);
    }
    if s.version.is_none() {
        // Nothing restored (restart, or no version would): the RPO is
        // everything, as the ticks say.
        s.rpo_ms = s.lost_ms;
    }
    let bringing = events.bringing.get(&s.id).copied();
    s.detect_ms = down.map(|d| d as f64 - fail_ms as f64);
    s.place_ms = diff(bringing, down);
    s.restore_ms = diff(running, bringing);
    s.answer_ms = diff(Some(first.unix_ms), running);
}

fn diff(later: Option<u64>, earlier: Option<u64>) -> Option<f64> {
    Some(later? as f64 - earlier? as f64)
}

/// memtick's actual period on h1 (its interval plus its work): the median
/// wall-clock gap between its logged ticks.
fn tick_period(ticks: &[TickLine]) -> Option<f64> {
    let gaps = ticks
        .windows(2)
        .map(|w| Some(w[1].unix_ms.saturating_sub(w[0].unix_ms) as f64));
    super::stats::percentile(gaps, 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(tick: u64, unix_ms: u64) -> TickLine {
        TickLine {
            tick,
            gap_ms: 20,
            max_gap_ms: 20,
            unix_ms,
            max_wall_gap_ms: None,
        }
    }

    const LOG: &str = "\
2026-12-07T19:59:58.079Z WARN host h1 is down: no heartbeat for 3051 ms (the last at 1796673595027, the grace is 3000 ms)
2026-12-07T19:59:58.334Z INFO bringing s3 of lost host h1 back on h2 (restore policy checkpoint)
2026-12-07T19:59:58.336Z INFO bringing s1 of lost host h1 back on h2 (restore policy checkpoint)
2026-12-07T19:59:59.899Z INFO s1 of lost host h1 runs on h2, restored from version 9 (taken 9481 ms before the host was declared down)
2026-12-07T20:00:00.084Z INFO s3 of lost host h1 runs on h2, restored from version 9 (taken 9227 ms before the host's last heartbeat)
2026-12-07T20:00:01.000Z WARN bringing r1 back on h3 failed (it is tried again): boom";

    fn lines() -> Vec<(u64, String)> {
        LOG.lines()
            .map(|l| (stamp(l).unwrap(), l.to_string()))
            .collect()
    }

    #[test]
    fn coordinator_log() {
        let e = CoordinatorEvents::parse(&lines(), LOST);
        assert_eq!(e.down, Some(1_796_673_598_079));
        assert_eq!(e.last_heartbeat, Some(1_796_673_595_027));
        assert_eq!(e.grace, Some(3000));
        assert_eq!(e.bringing.get("s1"), Some(&1_796_673_598_336));
        assert_eq!(
            e.age_to.get("s1").map(String::as_str),
            Some("declared down")
        );
        assert_eq!(
            e.age_to.get("s3").map(String::as_str),
            Some("last heartbeat")
        );
        assert_eq!(e.failed.get("r1"), Some(&1));
        assert_eq!(
            restored_here(
                "2026-12-07T20:00:00.070Z INFO recovery of s3: restored version 9 here, pid 1800"
            ),
            Some("s3")
        );
    }

    #[test]
    fn a_restored_container() {
        let e = CoordinatorEvents::parse(&lines(), LOST);
        let record = serde_json::json!({
            "id": "s1", "host": "h2",
            "recovery": {"fromHost": "h1", "version": 9, "versionAgeMs": 9481, "skipped": [],
                         "downUnixMs": 1_796_673_598_079u64, "runningUnixMs": 1_796_673_599_899u64}
        });
        let fail = 1_796_673_595_400;
        // On h1: tick 100 at fail - 7000 (the version's state), 449 at fail - 10.
        let old: Vec<TickLine> = (1..=449)
            .map(|t| tick(t, fail - 10 - (449 - t) * 20))
            .collect();
        let first = ("h2".to_string(), tick(101, 1_796_673_600_000));
        let mut s = Sample {
            id: "s1".into(),
            ..Sample::default()
        };
        fill(&mut s, fail, Some(&record), Some(&first), &old, &e, None);
        assert_eq!(s.error, None);
        assert_eq!(s.rto_ms, Some(4600.0));
        assert_eq!(s.ticks_lost, Some(349));
        assert_eq!(s.lost_ms, Some(349.0 * 20.0));
        assert_eq!(s.version_age_to.as_deref(), Some("declared down"));
        // Created at down - 9481; the RPO counts to the last heartbeat.
        assert_eq!(s.rpo_ms, Some(9481.0 - 3052.0));
        assert_eq!(s.detect_ms, Some(2679.0));
        assert_eq!(s.place_ms, Some(257.0));
        assert_eq!(s.restore_ms, Some(1563.0));
        assert_eq!(s.answer_ms, Some(101.0));
    }

    #[test]
    fn a_restarted_container_lost_everything() {
        let record = serde_json::json!({
            "id": "r1", "host": "h3",
            "recovery": {"fromHost": "h1", "version": null, "skipped": [],
                         "coldReason": "its restore policy is restart",
                         "downUnixMs": 2_000u64, "runningUnixMs": 3_000u64}
        });
        let old: Vec<TickLine> = (1..=50).map(|t| tick(t, t * 20)).collect();
        let first = ("h3".to_string(), tick(1, 3_100));
        let mut s = Sample::default();
        let e = CoordinatorEvents::default();
        fill(&mut s, 1_000, Some(&record), Some(&first), &old, &e, None);
        assert_eq!(s.rto_ms, Some(2100.0));
        assert_eq!(s.ticks_lost, Some(50));
        assert_eq!(s.lost_ms, Some(1000.0));
        assert_eq!(s.rpo_ms, Some(1000.0));
        assert_eq!(s.version, None);
        assert!(s.cold_reason.unwrap().contains("restart"));
    }

    #[test]
    fn ids() {
        assert_eq!(id(Policy::Checkpoint, 30, 2, 7), "c30-2-07");
        assert_eq!(id(Policy::Restart, 1, 0, 0), "r1-0-00");
    }
}
