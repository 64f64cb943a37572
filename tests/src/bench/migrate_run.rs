//! One migration of a memtick container from a source host to a target
//! host of the local cluster, by one of two paths, measured as the
//! `migrate` benchmark reports it:
//!
//! - **stock**: runc.v2 and plain `ctr` on each host: `ctr c checkpoint
//!   --task --rw`, the source killed, `ctr image export --skip-manifest-json`, the archive sent
//!   over the network by the bench binary itself ([`super::wire`]), `ctr
//!   image import`, `ctr c restore --live --rw`;
//! - **migratectl**: `migratectl run --host SOURCE`, then `migratectl
//!   migrate --to TARGET --json`.
//!
//! Downtime is memtick's own: the largest gap between its clock ticks on
//! the wall clock (`max_wall_gap_ms`; the hosts share the machine's clock)
//! read from the restored process; the migration's gap is that maximum when
//! it grew across the migration. Not the monotonic `max_gap_ms`: CRIU
//! restores a process in a time namespace that continues CLOCK_MONOTONIC
//! from the dump, so a restored memtick sees only a few hundred ms there
//! however long the move took (measured: 591 ms after minutes).
//! Bytes on the wire are both hosts' link counters (tx) over the migration.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use containerd_migrate_tests::cluster::{Cluster, Host};
use containerd_migrate_tests::ctr;
use containerd_migrate_tests::fixture::{IMAGE, RUNC_V2};
use containerd_migrate_tests::memtick::TickLine;
use containerd_migrate_tests::process::{self, Background, Output};
use serde::Serialize;
use serde_json::Value;

use super::link::Counters;
use super::{ms_since, unix_ms};

/// memtick's tick interval: the resolution of the downtime.
pub const INTERVAL_MS: u64 = 10;
/// memtick's `--out` file inside the container.
const TICK_FILE: &str = "/tmp/tick";
/// Where the stock path's archive goes on both hosts (their private disk).
const ARCHIVE_DIR: &str = "/var/tmp";
/// Where hack/containerd.sh keeps an instance's state, inside each host.
const CONTAINERD_RUN_BASE: &str = "/run/containerd-migrate";
/// The first port the archive receiver listens on; each copy takes the next,
/// so a receiver left by a failed copy never blocks a later one.
const WIRE_PORT_BASE: u16 = 7460;

/// The migration paths compared (a route, not to be confused with file paths).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Route {
    /// runc.v2 and ctr: checkpoint, export, copy, import, restore.
    Stock,
    /// io.containerd.migrate.v1 through the cluster: `migratectl migrate`.
    Migratectl,
}

impl Route {
    pub fn name(self) -> &'static str {
        match self {
            Route::Stock => "stock",
            Route::Migratectl => "migratectl",
        }
    }
}

/// What one migration measured; the JSON file has every sample.
#[derive(Debug, Default, Serialize)]
pub struct Sample {
    pub mib: u64,
    pub run: u64,
    pub order: usize,
    pub path: &'static str,
    pub id: String,
    pub ok: bool,
    pub error: Option<String>,
    pub loadavg_1m: Option<f64>,
    /// From the first command of the migration to the restored counter
    /// ticking on the target.
    pub total_ms: Option<f64>,
    /// The largest gap between memtick's ticks across the migration.
    pub downtime_ms: Option<f64>,
    /// migratectl's own `downtimeMs` (freeze to running on the target).
    pub reported_downtime_ms: Option<f64>,
    /// Bytes both hosts sent on their links during the migration.
    pub wire_bytes: Option<f64>,
    pub source_tx_bytes: Option<u64>,
    pub target_tx_bytes: Option<u64>,
    /// What had to cross: the stock path's archive; migratectl's memory
    /// plus filesystem bytes.
    pub payload_bytes: Option<f64>,
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
    /// Per step, ms (stock: timed here; migratectl: its `steps`).
    pub steps: BTreeMap<String, f64>,
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
    pub fn id(path: Route, mib: u64, run: u64) -> String {
        format!("mig-{}-{mib}-{run}", path.name())
    }

    /// The checkpoint image of the stock path.
    fn reference(id: &str) -> String {
        format!("localhost/bench-migrate/{id}:1")
    }

    /// Migrates a fresh memtick of `s.mib` MiB by `path`; fills `s`.
    pub fn measure(&self, path: Route, s: &mut Sample) -> Result<(), String> {
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
        match path {
            Route::Stock => self.stock(s),
            Route::Migratectl => self.migratectl(s),
        }
    }

    fn stock(&self, s: &mut Sample) -> Result<(), String> {
        let (src, dst) = (self.source, self.target);
        let id = s.id.clone();
        let reference = Self::reference(&id);
        let archive = format!("{ARCHIVE_DIR}/{id}.tar");
        let mut run = vec!["ctr", "run", "-d", "--runtime", RUNC_V2, IMAGE, &id];
        let mib = s.mib.to_string();
        let argv = memtick_argv(&mib);
        run.extend(argv.iter().map(String::as_str));
        self.on(src, &run, "starting memtick under runc.v2")?;
        let before = self.warm(src, &id)?;
        record_before(s, &before);

        let counters = self.counters()?;
        let t0 = Instant::now();
        let mut step = |name: &str, host: &Host, argv: &[&str]| -> Result<Output, String> {
            let t = Instant::now();
            let out = self.on(host, argv, name)?;
            s.steps.insert(name.to_string(), ms_since(t));
            Ok(out)
        };
        step(
            "checkpoint",
            src,
            &[
                "ctr",
                "containers",
                "checkpoint",
                "--task",
                "--rw",
                &id,
                &reference,
            ],
        )?;
        step(
            "stop-source",
            src,
            &["ctr", "tasks", "delete", "--force", &id],
        )?;
        // Without --skip-manifest-json, ctr 2.1.9 fails on a checkpoint image
        // ("unable to create manifests file": its Docker manifest.json writer
        // reads the checkpoint's layers as JSON).
        step(
            "export",
            src,
            &[
                "ctr",
                "images",
                "export",
                "--skip-manifest-json",
                &archive,
                &reference,
            ],
        )?;
        s.payload_bytes = std::fs::metadata(src.on_disk(&archive))
            .ok()
            .map(|m| m.len() as f64);
        let t = Instant::now();
        self.copy(&archive)?;
        // Each archive goes once used (a few ms, within the step): a 1 GiB
        // migration then needs 3 GiB of disk at most, not 5.
        let _ = std::fs::remove_file(src.on_disk(&archive));
        s.steps.insert("copy".into(), ms_since(t));
        let restore_started = unix_ms();
        let mut step = |name: &str, argv: &[&str]| -> Result<Output, String> {
            let t = Instant::now();
            let out = self.on(dst, argv, name)?;
            s.steps.insert(name.to_string(), ms_since(t));
            Ok(out)
        };
        step("import", &["ctr", "images", "import", &archive])?;
        let _ = std::fs::remove_file(dst.on_disk(&archive));
        step(
            "restore",
            &[
                "ctr",
                "containers",
                "restore",
                "--live",
                "--rw",
                &id,
                &reference,
            ],
        )?;
        let t = Instant::now();
        let after = self.ticking_after(dst, &id, restore_started)?;
        s.steps.insert("until-ticking".into(), ms_since(t));
        s.total_ms = Some(ms_since(t0));
        self.count_wire(s, counters)?;
        self.downtime(s, &before, &after);
        Ok(())
    }

    fn migratectl(&self, s: &mut Sample) -> Result<(), String> {
        let (src, dst) = (self.source, self.target);
        let id = s.id.clone();
        let mib = s.mib.to_string();
        let mut run = vec![
            "migratectl",
            "run",
            "--host",
            src.name.as_str(),
            IMAGE,
            &id,
            "--",
        ];
        let argv = memtick_argv(&mib);
        run.extend(argv.iter().map(String::as_str));
        self.on(src, &run, "starting memtick with migratectl run")?;
        let before = self.warm(src, &id)?;
        record_before(s, &before);

        let counters = self.counters()?;
        let started = unix_ms();
        let t0 = Instant::now();
        let out = self.on(
            src,
            &[
                "migratectl",
                "migrate",
                "--to",
                dst.name.as_str(),
                "--json",
                &id,
            ],
            "migratectl migrate",
        )?;
        s.steps.insert("migratectl-migrate".into(), ms_since(t0));
        let t = Instant::now();
        let after = self.ticking_after(dst, &id, started)?;
        s.steps.insert("until-ticking".into(), ms_since(t));
        s.total_ms = Some(ms_since(t0));
        self.count_wire(s, counters)?;
        let json: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "migratectl migrate --json printed no JSON ({e}): {}",
                out.stdout_str()
            )
        })?;
        read_migration_json(s, &json);
        s.detail = json;
        self.downtime(s, &before, &after);
        Ok(())
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
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last = String::new();
        while Instant::now() < deadline {
            match tick_of(host, id) {
                Ok(t) if t.tick >= self.warm_ticks => return Ok(t),
                Ok(t) => last = format!("tick={}", t.tick),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "memtick {id} on {} did not tick {} times within 120 s: {last}",
            host.name, self.warm_ticks
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
                        "memtick {id} on {} ticked once after the migration, then stopped",
                        host.name
                    ));
                }
                Ok(t) => last = format!("last tick at unix_ms={}", t.unix_ms),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Err(format!(
            "memtick {id} did not tick on {} after the migration: {last}",
            host.name
        ))
    }

    /// Sends the stock path's archive from the source to the target over
    /// the cluster network.
    fn copy(&self, archive: &str) -> Result<(), String> {
        let port = self.wire_port.get();
        self.wire_port.set(port.wrapping_add(1).max(WIRE_PORT_BASE));
        let address = format!("{}:{port}", self.target.ip);
        let bin = self.bench_bin.display().to_string();
        let mut receiver = Background::spawn(
            self.target
                .command(&[&bin, "wire-receive", "--listen", &address, archive]),
            None,
        );
        let sent = process::run_within(
            self.source
                .command(&[&bin, "wire-send", "--to", &address, archive]),
            self.timeout,
        )?;
        if !sent.success() {
            return Err(format!(
                "sending the archive to {} failed: {} / receiver: {}",
                self.target.name,
                last_lines(&sent.stderr_str(), 3),
                last_lines(&String::from_utf8_lossy(&receiver.stderr_so_far()), 3)
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = receiver.try_status() {
                if status.success() {
                    return Ok(());
                }
                return Err(format!(
                    "receiving the archive on {} failed: {}",
                    self.target.name,
                    last_lines(&String::from_utf8_lossy(&receiver.stderr_so_far()), 3)
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(format!(
            "the receiver on {} did not end within 10 s of the sender",
            self.target.name
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

    /// The migration's gap from the tick lines before and after it.
    fn downtime(&self, s: &mut Sample, before: &TickLine, after: &TickLine) {
        s.tick_after = Some(after.tick);
        s.max_gap_after_ms = Some(after.max_gap_ms);
        s.max_wall_gap_after_ms = after.max_wall_gap_ms;
        s.downtime_ms = migration_gap(before, after).map(|g| g as f64);
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

/// memtick's command line in the container.
fn memtick_argv(mib: &str) -> Vec<String> {
    [
        "/usr/local/bin/memtick",
        "--mib",
        mib,
        "--interval-ms",
        &INTERVAL_MS.to_string(),
        "--out",
        TICK_FILE,
    ]
    .map(String::from)
    .to_vec()
}

/// Container `id`'s tick line on `host`, read through its init's /proc root.
fn tick_of(host: &Host, id: &str) -> Result<TickLine, String> {
    let out = host
        .ctr()
        .run_within(&["tasks", "ls"], Duration::from_secs(10))?;
    let task = ctr::parse_task_list(&out.stdout_str())?
        .into_iter()
        .find(|t| t.id == id)
        .ok_or_else(|| format!("no task {id} on {}", host.name))?;
    TickLine::read(Path::new(&format!("/proc/{}/root{TICK_FILE}", task.pid)))
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

/// The figures of `migratectl migrate --json` into `s`.
fn read_migration_json(s: &mut Sample, json: &Value) {
    s.reported_downtime_ms = json["downtimeMs"].as_f64();
    let memory = json["memoryBytes"].as_f64();
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
    }
}
