//! One migration of a workload's container from a source host to a target
//! host of the local cluster, in one mode, measured as the `migrate`
//! benchmark reports it:
//!
//! - **stock**: runc.v2 and plain `ctr` on each host: `ctr c checkpoint
//!   --task --rw`, the source killed, `ctr image export --skip-manifest-json`,
//!   the archive sent over the network by the bench binary itself
//!   ([`super::wire`]), `ctr image import`, `ctr c restore --live --rw`;
//! - **a migratectl mode** (stop-and-copy, post-copy, pre-copy, auto):
//!   `migratectl run --host SOURCE`, then `migratectl migrate --to TARGET
//!   --mode MODE --json`.
//!
//! Downtime as the process lived it is memtick's own: the largest gap
//! between its clock ticks on the wall clock (`max_wall_gap_ms`; the hosts
//! share the machine's clock) read from the restored process; the
//! migration's gap is that maximum when it grew across the migration. Not
//! the monotonic `max_gap_ms`: CRIU restores a process in a time namespace
//! that continues CLOCK_MONOTONIC from the dump, so a restored memtick sees
//! only a few hundred ms there however long the move took.
//!
//! Downtime as the clients saw it comes from a client on the machine
//! ([`super::load`]) that loads the container's service through the
//! migration; only the migratectl modes have one: `ctr run` gives a stock
//! container no network another host reaches (no CNI), and `ctr c restore`
//! calls none, so a stock container has no clients to see anything.
//! Bytes on the wire are both hosts' link counters (tx) over the migration,
//! sampled every ~50 ms for the bandwidth plot ([`super::bandwidth`]); the
//! clients' traffic is in them too (their answers leave through the hosts'
//! links).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use containerd_migrate_tests::cluster::{Cluster, Host};
use containerd_migrate_tests::ctr;
use containerd_migrate_tests::memtick::TickLine;
use containerd_migrate_tests::process::{self, Output};
use serde::Serialize;
use serde_json::Value;

use super::bandwidth::{self, Sampler};
use super::link::Counters;
use super::load::{self, Load, Seen};
use super::memtick_workload::logged_ticks;
use super::unix_ms;
use super::workloads::{INTERVAL_MS, Spec, TICK_FILE, TICK_LOG, Workload};

mod migratectl;
mod stock;

/// Where the stock path's archive goes on both hosts (their private disk).
const ARCHIVE_DIR: &str = "/var/tmp";
/// Where hack/containerd.sh keeps an instance's state, inside each host.
const CONTAINERD_RUN_BASE: &str = "/run/containerd-migrate";
/// The first port the archive receiver listens on; each copy takes the next,
/// so a receiver left by a failed copy never blocks a later one.
const WIRE_PORT_BASE: u16 = 7460;
/// How often the link counters are sampled during a migration.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// Answers the client must have had before a migration starts, and again
/// after it, before the client stops (the gap is then closed on both sides).
const CLIENT_WARM_ANSWERS: u64 = 20;
/// How long the bandwidth and latency plots reach before the migration.
const LEAD_IN: Duration = Duration::from_millis(500);

/// How a container moves: the stock path or a mode of `migratectl migrate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// runc.v2 and ctr: checkpoint, export, copy, import, restore.
    Stock,
    /// `migratectl migrate --mode stop-and-copy`.
    StopAndCopy,
    /// `migratectl migrate --mode post-copy`.
    PostCopy,
    /// `migratectl migrate --mode pre-copy` (needs soft-dirty tracking).
    PreCopy,
    /// `migratectl migrate --mode auto`.
    Auto,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Stock => "stock",
            Mode::StopAndCopy => "stop-and-copy",
            Mode::PostCopy => "post-copy",
            Mode::PreCopy => "pre-copy",
            Mode::Auto => "auto",
        }
    }

    /// The `--mode` of `migratectl migrate`; none for the stock path.
    pub fn migratectl(self) -> Option<&'static str> {
        (self != Mode::Stock).then(|| self.name())
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One pre-copy iteration as migratectl reports it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Iteration {
    pub bytes: Option<f64>,
    pub ms: Option<f64>,
}

/// The figures of `migratectl migrate --json` beyond the time and bytes
/// every mode reports (issue 15's; absent = not reported by this migratectl).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LiveStats {
    pub mode_reason: Option<String>,
    pub iterations: Option<Vec<Iteration>>,
    pub bytes_before_freeze: Option<f64>,
    pub bytes_during_freeze: Option<f64>,
    pub bytes_after_freeze: Option<f64>,
    pub pages_faulted: Option<f64>,
    pub all_pages_ms: Option<f64>,
}

/// What one migration measured; the JSON file has every sample.
#[derive(Debug, Default, Serialize)]
pub struct Sample {
    pub workload: Option<Workload>,
    pub mib: u64,
    pub run: u64,
    pub order: usize,
    pub mode: Option<Mode>,
    pub id: String,
    pub ok: bool,
    pub error: Option<String>,
    pub loadavg_1m: Option<f64>,
    /// Seconds the whole measurement took, set-up and clean-up included
    /// (what the run's estimate is made of).
    pub elapsed_s: Option<f64>,
    /// From the first command of the migration to the restored counter
    /// ticking on the target.
    pub total_ms: Option<f64>,
    /// The largest gap between memtick's ticks across the migration.
    pub downtime_ms: Option<f64>,
    /// migratectl's own `downtimeMs` (freeze to running on the target).
    pub reported_downtime_ms: Option<f64>,
    /// migratectl's own `totalMs`.
    pub reported_total_ms: Option<f64>,
    /// Bytes both hosts sent on their links during the migration.
    pub wire_bytes: Option<f64>,
    pub source_tx_bytes: Option<u64>,
    pub target_tx_bytes: Option<u64>,
    /// What had to cross: the stock path's archive; migratectl's memory
    /// plus filesystem bytes.
    pub payload_bytes: Option<f64>,
    /// migratectl's `memoryBytes` (the stock path: none).
    pub memory_bytes: Option<f64>,
    pub tick_before: Option<u64>,
    /// memtick's largest wall-clock gap before the migration.
    pub max_wall_gap_before_ms: Option<u64>,
    pub tick_after: Option<u64>,
    pub max_wall_gap_after_ms: Option<u64>,
    /// The monotonic maxima, for the record (they miss the move, see above).
    pub max_gap_before_ms: Option<u64>,
    pub max_gap_after_ms: Option<u64>,
    /// The restored counter carried on from the tick read before.
    pub continuity: Option<bool>,
    /// What the clients saw, from the migration's start until they had
    /// answers again (none: no client).
    pub client: Option<Seen>,
    /// Per step, ms (stock: timed here; migratectl: its `steps`).
    pub steps: BTreeMap<String, f64>,
    pub live: LiveStats,
    /// Mbit/s both hosts sent, by seconds since the migration started.
    pub bandwidth: Vec<(f64, f64)>,
    /// Each answer's latency (ms) by the seconds since the migration
    /// started at which it ended.
    pub latency: Vec<(f64, f64)>,
    /// migratectl's whole JSON answer.
    pub detail: Value,
}

/// The two hosts and how long anything may take.
pub struct Rig<'a> {
    pub cluster: &'a Cluster,
    pub source: &'a Host,
    pub target: &'a Host,
    /// This program, run inside the hosts to send and receive the archive.
    pub bench_bin: PathBuf,
    pub timeout: Duration,
    pub warm_ticks: u64,
    wire_port: std::cell::Cell<u16>,
}

/// What runs during a migration besides it: the clients and the sampler.
struct Watch {
    load: Option<Load>,
    sampler: Sampler,
    t0_ms: u64,
}

impl<'a> Rig<'a> {
    pub fn new(
        cluster: &'a Cluster,
        source: &'a Host,
        target: &'a Host,
        bench_bin: PathBuf,
        timeout: Duration,
        warm_ticks: u64,
    ) -> Rig<'a> {
        Rig {
            cluster,
            source,
            target,
            bench_bin,
            timeout,
            warm_ticks,
            wire_port: std::cell::Cell::new(WIRE_PORT_BASE),
        }
    }

    /// The container id of a sample.
    pub fn id(workload: Workload, mode: Mode, mib: u64, run: u64) -> String {
        format!("mig-{workload}-{}-{mib}-{run}", mode.name())
    }

    /// The checkpoint image of the stock path.
    fn reference(id: &str) -> String {
        format!("localhost/bench-migrate/{id}:1")
    }

    /// Migrates a fresh container of `spec` by `mode`; fills `s`.
    pub fn measure(&self, mode: Mode, spec: &Spec, s: &mut Sample) -> Result<(), String> {
        // The stock path holds its checkpoint in the source's content store
        // and, at once, the target's archive and content and the restore's
        // unpacked copy: wait for the space (the machine is shared, and
        // containerd frees content a moment after it is removed), and
        // refuse rather than fill the machine's disk.
        let need_mib = 3 * s.mib + 1024;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match free_mib(&self.source.disk()) {
                Some(free) if free < need_mib => {
                    if Instant::now() >= deadline {
                        return Err(format!(
                            "only {free} MiB free on the hosts' disk ({}) after waiting 120 s, {need_mib} MiB needed",
                            self.source.disk().display()
                        ));
                    }
                    std::thread::sleep(Duration::from_secs(2));
                }
                _ => break,
            }
        }
        match mode.migratectl() {
            None => self.stock(spec, s),
            Some(m) => self.migratectl(m, spec, s),
        }
    }

    /// Runs the workload's fill in container `id` on the source.
    fn fill(&self, spec: &Spec, id: &str) -> Result<(), String> {
        let Some(fill) = &spec.fill else {
            return Ok(());
        };
        let exec_id = format!("fill-{id}");
        let mut argv = vec!["ctr", "tasks", "exec", "--exec-id", &exec_id, id];
        argv.extend(fill.iter().map(String::as_str));
        self.on(self.source, &argv, "filling the workload's memory")
            .map(|_| ())
    }

    /// Starts the clients (when `ip` is known and the workload has a
    /// service) and the sampler, and waits until the clients have answers.
    fn watch(&self, spec: &Spec, ip: Option<&str>) -> Result<Watch, String> {
        let load = match (&spec.client, ip) {
            (Some(c), Some(ip)) => {
                let to: SocketAddr = format!("{ip}:{}", c.port)
                    .parse()
                    .map_err(|e| format!("the container's address {ip}: {e}"))?;
                let load = Load::start(c.protocol.clone(), to, c.pause);
                if let Err(e) = load.wait_answered(CLIENT_WARM_ANSWERS, Duration::from_secs(60)) {
                    let events = load.stop();
                    let why = events.iter().rev().find_map(|e| e.error.clone());
                    return Err(format!("{e}; last error: {}", why.unwrap_or_default()));
                }
                Some(load)
            }
            _ => None,
        };
        let sampler = Sampler::start(
            self.cluster.name(),
            &self.source.name,
            &self.target.name,
            SAMPLE_EVERY,
        )
        .map_err(|e| format!("{e:#}"))?;
        // A little of the link and the clients before the migration, for
        // the plots' lead-in.
        std::thread::sleep(LEAD_IN);
        Ok(Watch {
            load,
            sampler,
            t0_ms: unix_ms(),
        })
    }

    /// Stops the sampler, and the clients once they had answers after
    /// `end_ms` again; records what they saw in `s`.
    fn unwatch(&self, w: Watch, s: &mut Sample, end_ms: u64) {
        // The sampler first: the plot ends with the migration, not after a
        // client stuck in a lost request (up to its 60 s timeout).
        let points = w.sampler.stop();
        s.bandwidth = bandwidth::rates(&points, w.t0_ms);
        if let Some(load) = w.load {
            // Answers after the end close the gap; a service that never
            // answers again shows as an unknown gap and failed requests.
            let more = load.answered() + CLIENT_WARM_ANSWERS;
            let _ = load.wait_answered(more, Duration::from_secs(30));
            let events = load.stop();
            let t0 = w.t0_ms as f64;
            s.latency = events
                .iter()
                .filter(|e| e.outcome == load::Outcome::Ok)
                .map(|e| ((e.end_ms as f64 - t0) / 1000.0, e.latency_ms))
                .collect();
            s.client = Some(load::seen(&events, w.t0_ms, end_ms));
        }
    }

    /// Runs `argv` on `host` within the timeout; a failure says `what`.
    fn on(&self, host: &Host, argv: &[&str], what: &str) -> Result<Output, String> {
        let out = process::run_within(host.command(argv), self.timeout)?;
        if !out.success() {
            return Err(format!(
                "{what} on {} failed: {}",
                host.name,
                last_lines(&format!("{}{}", out.stdout_str(), out.stderr_str()), 4)
            ));
        }
        Ok(out)
    }

    /// Waits until container `id` runs on `host` and memtick has ticked
    /// `warm_ticks` times; returns its tick line.
    fn warm(&self, host: &Host, id: &str) -> Result<TickLine, String> {
        self.tick_until(host, id, |t| t.tick >= self.warm_ticks)
    }

    /// After a fill (which may have starved memtick): waits for ticks on
    /// past `before`, so the largest gap before the migration includes the
    /// fill's.
    fn warm_again(&self, host: &Host, id: &str, before: TickLine) -> Result<TickLine, String> {
        self.tick_until(host, id, |t| t.tick >= before.tick + self.warm_ticks)
    }

    /// The workload `id` on `host` warmed up, filled (if its spec says
    /// how) and warmed again after the fill; its last tick, also recorded
    /// in `s`.
    fn ready(
        &self,
        s: &mut Sample,
        spec: &Spec,
        host: &Host,
        id: &str,
    ) -> Result<TickLine, String> {
        let before = self.warm(host, id)?;
        self.fill(spec, id)?;
        let before = if spec.fill.is_some() {
            self.warm_again(host, id, before)?
        } else {
            before
        };
        record_before(s, &before);
        Ok(before)
    }

    fn tick_until(
        &self,
        host: &Host,
        id: &str,
        done: impl Fn(&TickLine) -> bool,
    ) -> Result<TickLine, String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last = String::new();
        while Instant::now() < deadline {
            match tick_of(host, id) {
                Ok(t) if done(&t) => return Ok(t),
                Ok(t) => last = format!("tick={}", t.tick),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "memtick in {id} on {} did not tick enough within 120 s: {last}",
            host.name
        ))
    }

    /// Waits until container `id` on `host` has a tick stamped at or after
    /// `since_ms`, then lets it tick on for a moment (a counter that stops
    /// right after its restore is no success); returns that later tick.
    fn ticking_after(&self, host: &Host, id: &str, since_ms: u64) -> Result<TickLine, String> {
        let deadline = Instant::now() + self.timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            match tick_of(host, id) {
                Ok(t) if t.unix_ms >= since_ms => {
                    let later = t.unix_ms + 10 * INTERVAL_MS;
                    let settle = Instant::now() + Duration::from_secs(10);
                    while Instant::now() < settle {
                        if let Ok(n) = tick_of(host, id)
                            && n.unix_ms >= later
                        {
                            return Ok(n);
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    return Err(format!(
                        "memtick in {id} on {} ticked once after the migration, then stopped",
                        host.name
                    ));
                }
                Ok(t) => last = format!("last tick at unix_ms={}", t.unix_ms),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Err(format!(
            "memtick in {id} did not tick on {} after the migration: {last}",
            host.name
        ))
    }

    fn counters(&self) -> Result<(Counters, Counters), String> {
        let read =
            |h: &Host| Counters::read(self.cluster.name(), &h.name).map_err(|e| format!("{e:#}"));
        Ok((read(self.source)?, read(self.target)?))
    }

    fn count_wire(&self, s: &mut Sample, before: (Counters, Counters)) -> Result<(), String> {
        let (src, dst) = self.counters()?;
        let (src, dst) = (src.since(before.0), dst.since(before.1));
        s.source_tx_bytes = Some(src.tx);
        s.target_tx_bytes = Some(dst.tx);
        s.wire_bytes = Some((src.tx + dst.tx) as f64);
        Ok(())
    }

    /// The migration's gap: the largest between the ticks memtick logged
    /// from `from_ms` to `to_ms` in container `id` on the target, or, when
    /// the log cannot be read, from its tick lines before and after.
    fn downtime(
        &self,
        s: &mut Sample,
        id: &str,
        (before, after): (&TickLine, &TickLine),
        (from_ms, to_ms): (u64, u64),
    ) {
        s.tick_after = Some(after.tick);
        s.max_gap_after_ms = Some(after.max_gap_ms);
        s.max_wall_gap_after_ms = after.max_wall_gap_ms;
        let logged = task_pid(self.target, id).ok().and_then(|pid| {
            let log = format!("/proc/{pid}/root{TICK_LOG}");
            wall_gap_within(&logged_ticks(Path::new(&log)), from_ms, to_ms)
        });
        s.downtime_ms = logged
            .or_else(|| migration_gap(before, after))
            .map(|g| g as f64);
        s.continuity = Some(after.tick >= before.tick);
    }

    /// Removes what a sample left on both hosts: tasks, containers, the
    /// checkpoint image, archives and containerd's unpacked checkpoints.
    pub fn clear(&self, id: &str) {
        let reference = Self::reference(id);
        for h in [self.source, self.target] {
            let quiet = |args: &[&str]| {
                let _ = process::run_quietly(h.ctr().command(args), Duration::from_secs(30));
            };
            quiet(&["tasks", "kill", "--signal", "SIGKILL", id]);
            quiet(&["tasks", "delete", "--force", id]);
            quiet(&["containers", "rm", id]);
            quiet(&["images", "rm", "--sync", &reference]);
            let _ = std::fs::remove_file(h.on_disk(&format!("{ARCHIVE_DIR}/{id}.tar")));
            // `ctr c restore` unpacks into a ctrd-checkpoint* directory of
            // containerd's XDG_RUNTIME_DIR and leaves it (containerd 2.1.9);
            // hack/containerd.sh puts that in the instance's state/tmp.
            let instance = format!("cluster-{}-{}", self.cluster.name(), h.name);
            let tmp = Path::new(CONTAINERD_RUN_BASE)
                .join(instance)
                .join("state/tmp");
            remove_matching(&h.on_disk(&tmp.display().to_string()), "ctrd-checkpoint");
        }
        unsafe { libc::sync() };
    }
}

/// Free MiB for root on the file system of `path`.
fn free_mib(path: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64 / 1_048_576)
}

/// The pid of container `id`'s init on `host`.
fn task_pid(host: &Host, id: &str) -> Result<u32, String> {
    let out = host
        .ctr()
        .run_within(&["tasks", "ls"], Duration::from_secs(10))?;
    ctr::parse_task_list(&out.stdout_str())?
        .into_iter()
        .find(|t| t.id == id)
        .map(|t| t.pid)
        .ok_or_else(|| format!("no task {id} on {}", host.name))
}

/// Container `id`'s tick line on `host`, read through its init's /proc root
/// (the init's mount namespace is its memtick's too).
fn tick_of(host: &Host, id: &str) -> Result<TickLine, String> {
    let pid = task_pid(host, id)?;
    TickLine::read(Path::new(&format!("/proc/{pid}/root{TICK_FILE}")))
}

/// The largest wall-clock gap between consecutive ticks of which the later
/// is at or after `from_ms` and the earlier at or before `to_ms`: the gaps
/// that overlap the window. `None` without such a pair.
pub fn wall_gap_within(ticks: &[TickLine], from_ms: u64, to_ms: u64) -> Option<u64> {
    ticks
        .windows(2)
        .filter(|w| w[1].unix_ms >= from_ms && w[0].unix_ms <= to_ms)
        .map(|w| w[1].unix_ms.saturating_sub(w[0].unix_ms))
        .max()
}

fn record_before(s: &mut Sample, before: &TickLine) {
    s.tick_before = Some(before.tick);
    s.max_gap_before_ms = Some(before.max_gap_ms);
    s.max_wall_gap_before_ms = before.max_wall_gap_ms;
}

/// The gap memtick lived across a migration: its largest wall-clock gap
/// after, when that grew (the move made a new maximum). When it did not,
/// the move was shorter than an earlier gap and cannot be told from the
/// tick lines; a memtick without wall-clock fields tells nothing either.
pub fn migration_gap(before: &TickLine, after: &TickLine) -> Option<u64> {
    let (b, a) = (before.max_wall_gap_ms?, after.max_wall_gap_ms?);
    (a > b).then_some(a)
}

/// The figures of `migratectl migrate --json` into `s`; those of issue 15
/// only when this migratectl reports them.
fn read_migration_json(s: &mut Sample, json: &Value) {
    s.reported_downtime_ms = json["downtimeMs"].as_f64();
    s.reported_total_ms = json["totalMs"].as_f64();
    s.live = live_stats(json);
    let memory = json["memoryBytes"].as_f64();
    s.memory_bytes = memory;
    let filesystem = json["filesystemBytes"].as_f64();
    s.payload_bytes = match (memory, filesystem) {
        (Some(m), Some(f)) => Some(m + f),
        (m, f) => m.or(f),
    };
    if let Some(steps) = json["steps"].as_array() {
        for step in steps {
            if let (Some(name), Some(ms)) = (step["step"].as_str(), step["ms"].as_f64()) {
                s.steps.insert(name.to_string(), ms);
            }
        }
    }
}

fn live_stats(json: &Value) -> LiveStats {
    LiveStats {
        mode_reason: json["modeReason"].as_str().map(String::from),
        iterations: json["iterations"].as_array().map(|its| {
            its.iter()
                .map(|i| Iteration {
                    bytes: i["bytes"].as_f64(),
                    ms: i["ms"].as_f64(),
                })
                .collect()
        }),
        bytes_before_freeze: json["bytesBeforeFreeze"].as_f64(),
        bytes_during_freeze: json["bytesDuringFreeze"].as_f64(),
        bytes_after_freeze: json["bytesAfterFreeze"].as_f64(),
        pages_faulted: json["pagesFaulted"].as_f64(),
        all_pages_ms: json["allPagesMs"].as_f64(),
    }
}

/// Removes the entries of `dir` whose names start with `prefix`.
fn remove_matching(dir: &Path, prefix: &str) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(prefix) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(tick: u64, max_wall_gap_ms: Option<u64>) -> TickLine {
        TickLine {
            tick,
            gap_ms: 10,
            max_gap_ms: 40,
            unix_ms: 0,
            max_wall_gap_ms,
        }
    }

    #[test]
    fn logged_gap_overlaps_the_window() {
        let t = |unix_ms| TickLine {
            unix_ms,
            ..line(0, None)
        };
        let ticks = [t(100), t(110), t(900), t(910), t(2000)];
        assert_eq!(wall_gap_within(&ticks, 200, 905), Some(790));
        assert_eq!(wall_gap_within(&ticks, 105, 105), Some(10));
        assert_eq!(wall_gap_within(&ticks, 3000, 4000), None);
    }

    #[test]
    fn gap_counts_only_when_the_wall_clock_maximum_grew() {
        assert_eq!(
            migration_gap(&line(50, Some(40)), &line(70, Some(2300))),
            Some(2300)
        );
        assert_eq!(
            migration_gap(&line(50, Some(900)), &line(70, Some(900))),
            None
        );
        assert_eq!(migration_gap(&line(50, None), &line(70, None)), None);
    }

    #[test]
    fn migration_json() {
        let json = serde_json::json!({
            "mode": "stop-and-copy", "source": "h1", "target": "h2",
            "totalMs": 2100.5, "downtimeMs": 800.25,
            "memoryBytes": 1000, "filesystemBytes": 24,
            "steps": [{"step": "dump", "ms": 300.0}, {"step": "restore", "ms": 200.0}]
        });
        let mut s = Sample::default();
        read_migration_json(&mut s, &json);
        assert_eq!(s.reported_downtime_ms, Some(800.25));
        assert_eq!(s.payload_bytes, Some(1024.0));
        assert_eq!(s.steps.get("dump"), Some(&300.0));
        assert_eq!(s.steps.len(), 2);
        assert_eq!(
            s.live,
            LiveStats::default(),
            "issue 15's figures are optional"
        );
    }

    #[test]
    fn migration_json_of_issue_15() {
        let json = serde_json::json!({
            "mode": "post-copy", "modeReason": "no soft-dirty tracking",
            "totalMs": 900.0, "downtimeMs": 80.0, "memoryBytes": 1000, "filesystemBytes": 0,
            "iterations": [{"bytes": 500, "ms": 4.5}],
            "bytesBeforeFreeze": 0, "bytesDuringFreeze": 100, "bytesAfterFreeze": 900,
            "pagesFaulted": 12, "allPagesMs": 700.5, "steps": []
        });
        let mut s = Sample::default();
        read_migration_json(&mut s, &json);
        assert_eq!(
            s.live.mode_reason.as_deref(),
            Some("no soft-dirty tracking")
        );
        assert_eq!(
            s.live.iterations,
            Some(vec![Iteration {
                bytes: Some(500.0),
                ms: Some(4.5)
            }])
        );
        assert_eq!(s.live.bytes_after_freeze, Some(900.0));
        assert_eq!(s.live.pages_faulted, Some(12.0));
        assert_eq!(s.live.all_pages_ms, Some(700.5));
        assert_eq!(s.memory_bytes, Some(1000.0));
    }
}
