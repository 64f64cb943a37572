//! Checkpoint benchmark: how long a running container is frozen by a
//! checkpoint, how long the checkpoint command takes and how long a restore
//! takes, for io.containerd.migrate.v1 against io.containerd.runc.v2, in one
//! run.
//!
//! The workload is `memtick --mib S --interval-ms 10 --out /tmp/tick`. For
//! each size, `--runs` times, with a fresh container per measurement and the
//! methods in rotating order (interleaved, so machine noise hits all alike;
//! sync(1) between measurements, so one method's dirty pages are not written
//! back during the next), it checkpoints with:
//!
//! | method            | runtime    | command |
//! |-------------------|------------|---------|
//! | migratectl        | migrate.v1 | `migratectl checkpoint create --root DIR --id CP --json ID` |
//! | migrate-task      | migrate.v1 | `ctr t checkpoint --image-path DIR --work-path W ID` |
//! | runc-task         | runc.v2    | `ctr t checkpoint --image-path DIR --work-path W ID` |
//! | runc-container    | runc.v2    | `ctr c checkpoint --task --rw ID REF` |
//! | migrate-container | migrate.v1 | `ctr c checkpoint --task --rw ID REF` |
//!
//! and measures
//! - total: wall time of the checkpoint command;
//! - frozen: how long memtick stopped, as it experienced it: its
//!   `max_gap_ms`, read with `ctr t exec` before and after the checkpoint;
//!   when it grew, the new maximum is the gap spanning the checkpoint, else
//!   the largest `gap_ms` memtick logged during the checkpoint. Either
//!   includes up to one 10 ms tick interval;
//! - restore (the *-container methods and migratectl): kill the source,
//!   then `ctr c restore --live --rw ID REF` / `migratectl restore
//!   --checkpoint CP --as NEW -d --json`; time until the command returns and
//!   until the restored counter ticks (its /tmp/tick, read on the host side
//!   of the rootfs, carries a time after the restore began). Continuity: the
//!   restored counter carries on from at least the tick read before the
//!   checkpoint, and keeps ticking.
//!
//! Goals, at 1 GiB (medians): migratectl frozen at most 1 s; migratectl
//! create at least 3x faster than runc.v2 `ctr c checkpoint`; `ctr t
//! checkpoint` with migrate.v1 no slower than with runc.v2 (ratio at most
//! 1.05); every restored counter carries on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;
use containerd_migrate_tests::fixture::{MIGRATE_V1, RUNC_V2};
use serde::Serialize;
use serde_json::{Value, json};

use super::memtick_workload::{self as memtick, Workload};
use super::plot::{self, Labels, Series};
use super::report::{self, Goal, Table};
use super::session::{Needs, Session, du_bytes};
use super::stats::{self, Stats, median, ratio};
use super::{Common, machine, ms_since, say, unix_ms};

const INTERVAL_MS: u64 = 10;
const GOAL_MIB: u64 = 1024;
const GOAL_FROZEN_MS: f64 = 1000.0;
const GOAL_SPEEDUP: f64 = 3.0;
const GOAL_TASK_RATIO: f64 = 1.05;

#[derive(Args, Debug)]
pub struct Options {
    /// Measurements per size and method.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub runs: u64,
    /// memtick sizes in MiB.
    #[arg(long, num_args = 1.., value_delimiter = ' ', default_values_t = [64, 256, 1024])]
    pub sizes: Vec<u64>,
    /// Ticks memtick must have made before a checkpoint.
    #[arg(long, default_value_t = 50)]
    pub warm_ticks: u64,
    /// Seconds any one command may take.
    #[arg(long, default_value_t = 180)]
    pub timeout: u64,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Method {
    Migratectl,
    MigrateTask,
    RuncTask,
    RuncContainer,
    MigrateContainer,
}

/// The rotation order of the methods.
const METHODS: [Method; 5] = [
    Method::Migratectl,
    Method::MigrateTask,
    Method::RuncTask,
    Method::RuncContainer,
    Method::MigrateContainer,
];

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Migratectl => "migratectl",
            Method::MigrateTask => "migrate-task",
            Method::RuncTask => "runc-task",
            Method::RuncContainer => "runc-container",
            Method::MigrateContainer => "migrate-container",
        }
    }

    fn runtime(self) -> &'static str {
        match self {
            Method::Migratectl | Method::MigrateTask | Method::MigrateContainer => MIGRATE_V1,
            Method::RuncTask | Method::RuncContainer => RUNC_V2,
        }
    }

    fn restores(self) -> bool {
        matches!(
            self,
            Method::Migratectl | Method::RuncContainer | Method::MigrateContainer
        )
    }
}

/// One measurement; the JSON keys are the bash script's.
#[derive(Debug, Default, Serialize)]
struct Sample {
    mib: u64,
    run: u64,
    order: usize,
    method: &'static str,
    runtime: &'static str,
    ok: bool,
    error: Option<String>,
    loadavg_1m: Option<f64>,
    total_ms: Option<f64>,
    frozen_ms: Option<f64>,
    frozen_source: Option<&'static str>,
    max_gap_before_ms: Option<u64>,
    max_gap_after_ms: Option<u64>,
    log_window_gap_ms: Option<u64>,
    tick_before: Option<u64>,
    tick_after: Option<u64>,
    checkpoint_bytes: Option<f64>,
    detail: Value,
    restore_return_ms: Option<f64>,
    restore_ticking_ms: Option<f64>,
    restored_first_tick: Option<u64>,
    continuity: Option<bool>,
    restore_detail: Value,
}

struct Bench<'a> {
    session: &'a Session,
    store: PathBuf,
    timeout: Duration,
    warm_ticks: u64,
    ctrd_tmp: PathBuf,
}

pub fn run(opts: Options) -> Result<()> {
    if opts.sizes.contains(&0) {
        bail!("--sizes must be MiB numbers above 0");
    }
    // containerd unpacks a checkpoint it restores from (`ctr c restore`) into
    // a temporary directory under $XDG_RUNTIME_DIR (else /tmp) and never
    // removes it (containerd 2.1.9, any runtime): a private one keeps those
    // copies out of /tmp, and each sample's clean-up empties it.
    let session = Session::start(
        &opts.common,
        Needs {
            name: "checkpoint",
            migratectl: true,
            private_runtime_dir: true,
        },
    )?;
    let ctrd_tmp = session.runtime_dir();
    measure_all(&opts, &session, &ctrd_tmp)
}

fn measure_all(opts: &Options, session: &Session, ctrd_tmp: &Path) -> Result<()> {
    let store = session.work.join("store");
    for d in ["img", "work", "out", "logs"] {
        std::fs::create_dir_all(session.work.join(d))?;
    }
    std::fs::create_dir_all(&store)?;
    let bench = Bench {
        session,
        store,
        timeout: Duration::from_secs(opts.timeout),
        warm_ticks: opts.warm_ticks,
        ctrd_tmp: ctrd_tmp.to_path_buf(),
    };
    let load_before = machine::loadavg();
    let started = machine::now_utc();
    let staging = format!(
        "/run/containerd-migrate/staging is {}, /dev/shm is {}",
        machine::fs_type(Path::new("/run")),
        machine::fs_type(Path::new("/dev/shm"))
    );
    say(format!(
        "sizes {:?} MiB, {} runs each, methods {:?} (rotating order)",
        opts.sizes,
        opts.runs,
        METHODS.map(Method::name)
    ));
    say(format!(
        "work dir {} ({}); {staging}",
        session.work.display(),
        machine::fs_type(&session.work)
    ));

    let mut samples = Vec::new();
    let n = METHODS.len() as u64;
    for &mib in &opts.sizes {
        for run in 0..opts.runs {
            for k in 0..n {
                // Rotated each run, and backwards on odd runs, so that no
                // method always follows the same other one.
                let j = if run % 2 == 0 {
                    (k + run) % n
                } else {
                    (n - 1 - k + run) % n
                };
                let method = METHODS[j as usize];
                memtick::wait_for_memory(3 * mib + 1024);
                let mut s = Sample {
                    mib,
                    run,
                    order: k as usize,
                    method: method.name(),
                    runtime: method.runtime(),
                    loadavg_1m: machine::loadavg_1m(),
                    ..Sample::default()
                };
                match bench.measure(method, &mut s) {
                    Ok(()) => {
                        s.ok = true;
                        eprintln!(
                            "    {mib:>5} MiB run {run} {:<18} total {:>9} ms  frozen {:>5} ms  restored+ticking {} ms",
                            method.name(),
                            report::num(s.total_ms, 3),
                            report::num(s.frozen_ms, 0),
                            report::num(s.restore_ticking_ms, 3)
                        );
                    }
                    Err(e) => {
                        eprintln!(
                            "    {mib:>5} MiB run {run} {:<18} FAILED: {e}",
                            method.name()
                        );
                        s.error = Some(e);
                    }
                }
                bench.clear(method, mib, run);
                samples.push(s);
            }
        }
    }
    let load_after = machine::loadavg();

    let results = summarize(opts, &samples);
    let doc = json!({
        "summary": results.summary,
        "ratios": results.ratios,
        "goals": results.goals,
        "config": {
            "runs": opts.runs, "sizes_mib": opts.sizes, "interval_ms": INTERVAL_MS, "warm_ticks": opts.warm_ticks,
            "image": containerd_migrate_tests::IMAGE,
            "methods": {
                "migratectl": "migrate.v1: migratectl checkpoint create --root DIR ID (restore: migratectl restore --checkpoint CP --as NEWID -d)",
                "migrate-task": "migrate.v1: ctr t checkpoint --image-path DIR --work-path W ID",
                "runc-task": "runc.v2: ctr t checkpoint --image-path DIR --work-path W ID",
                "runc-container": "runc.v2: ctr c checkpoint --task --rw ID REF (restore: ctr c restore --live --rw ID REF)",
                "migrate-container": "migrate.v1: ctr c checkpoint --task --rw ID REF (restore: ctr c restore --live --rw ID REF)"
            },
            "frozen": "memtick max_gap_ms after the checkpoint when it increased across it (the gap spanning the checkpoint, includes up to one tick interval); when it did not, the largest gap logged during the checkpoint (frozen_source)",
            "restore_ticking": "from the restore command starting until /tmp/tick (read on the host side of the rootfs) was written after that start",
            "order": "per size and run, a fresh container per method; the method order rotates each run and runs backwards on odd runs; sync(1) after each sample",
            "notes": [
                "ctr t checkpoint: containerd's client skips the rw-layer diff and the checkpoint image only for io.containerd.runc.v2 (isCheckpointPathExist); for migrate.v1 it also diffs the rw layer and creates an image containerd.io/checkpoint/ID:DATE while the task is still paused, so migrate-task carries that work in its total and frozen times. The benchmark removes those images.",
                "migratectl restore checks that the checkpoint has all its files with their sizes (restore_detail.checkMs); the shim verifies every digest when the container is created.",
                "containerd (2.1.9) unpacks the checkpoint of `ctr c restore` into a temporary directory ctrd-checkpoint* under XDG_RUNTIME_DIR or /tmp and never removes it; this benchmark gives its containerd a private XDG_RUNTIME_DIR and empties it after each sample."
            ],
            "work_dir": session.work, "work_dir_fs": machine::fs_type(&session.work), "staging": staging,
        },
        "machine": session.machine(machine::CODE_PATHS, &load_before, &load_after),
        "started": started, "finished": machine::now_utc(),
        "samples": samples,
    });
    report::write_json(&session.out, &doc)?;

    print!("{}", results.table.render());
    println!(
        "(medians of {} runs per size and method; frozen includes the {INTERVAL_MS} ms tick interval; load {load_before} -> {load_after})\n",
        opts.runs
    );
    let g = &results.goals;
    let paired = results
        .ratios
        .get(&GOAL_MIB)
        .and_then(|r| r.migrate_task_over_runc_task_total_paired_median);
    let value = |g: &Goal| {
        if g.value.is_null() {
            "not measured".to_string()
        } else {
            g.value.to_string()
        }
    };
    let line = |label: &str, g: &Goal, extra: &str| {
        println!(
            "  {label:<45} {} (goal {}{extra})  {}",
            value(g),
            g.goal,
            g.verdict()
        );
    };
    println!("goals at {GOAL_MIB} MiB:");
    line("migratectl frozen ms", &g.migratectl_frozen_ms, "");
    line(
        "runc.v2 ctr c checkpoint / migratectl create",
        &g.migratectl_speedup_over_runc_container_checkpoint,
        "",
    );
    line(
        "ctr t checkpoint migrate.v1 / runc.v2",
        &g.task_checkpoint_migrate_over_runc,
        &format!(
            "; paired median {}; run-to-run noise here is often 10-30 %",
            report::num(paired, 3)
        ),
    );
    let s = &g.state_continuity;
    println!(
        "  {:<45} {}  {}",
        "state continuity after every restore",
        value(s),
        s.verdict()
    );

    let failed: Vec<&Sample> = samples.iter().filter(|s| !s.ok).collect();
    if !failed.is_empty() {
        say(format!("{} sample(s) failed:", failed.len()));
        for s in failed {
            eprintln!(
                "    {} MiB run {} {}: {}",
                s.mib,
                s.run,
                s.method,
                s.error.as_deref().unwrap_or("")
            );
        }
    }
    plot_frozen(session, &results.summary)?;
    Ok(())
}

impl Bench<'_> {
    fn id(method: Method, mib: u64, run: u64) -> String {
        format!("ck-{}-{mib}-{run}", method.name())
    }

    /// One checkpoint (and restore) of a fresh memtick; fills `s`.
    fn measure(&self, method: Method, s: &mut Sample) -> Result<(), String> {
        let session = self.session;
        let id = Self::id(method, s.mib, s.run);
        let reference = format!("localhost/bench-checkpoint/{id}:1");
        let cp_id = format!("{id}-cp");
        let img = session.work.join("img").join(&id);
        let work = session.work.join("work").join(&id);
        let workload = Workload {
            runtime: method.runtime(),
            mib: s.mib,
            interval_ms: INTERVAL_MS,
            dirty_percent: None,
            run_opts: Vec::new(),
        };
        memtick::start(session, &id, &workload, self.warm_ticks)?;
        let before = memtick::exec_tick(session, &id)?;
        s.tick_before = Some(before.tick);
        s.max_gap_before_ms = Some(before.max_gap_ms);

        let t0_ms = unix_ms();
        let t0 = Instant::now();
        let store = self.store.display().to_string();
        let (img_s, work_s) = (img.display().to_string(), work.display().to_string());
        let out = match method {
            Method::Migratectl => session.migratectl(
                &[
                    "checkpoint",
                    "create",
                    "--root",
                    &store,
                    "--id",
                    &cp_id,
                    "--json",
                    &id,
                ],
                self.timeout,
            ),
            Method::MigrateTask | Method::RuncTask => session.run_ctr(
                &[
                    "tasks",
                    "checkpoint",
                    "--image-path",
                    &img_s,
                    "--work-path",
                    &work_s,
                    &id,
                ],
                self.timeout,
            ),
            Method::RuncContainer | Method::MigrateContainer => session.run_ctr(
                &[
                    "containers",
                    "checkpoint",
                    "--task",
                    "--rw",
                    &id,
                    &reference,
                ],
                self.timeout,
            ),
        }?;
        s.total_ms = Some(ms_since(t0));
        if !out.success() {
            return Err(format!(
                "checkpoint failed: {}",
                last_lines(&out.stderr_str(), 3)
            ));
        }
        let t1_ms = unix_ms();

        // A few ticks past the end of the command, then the counter again.
        if memtick::wait_tick_after(
            session,
            &id,
            t1_ms + 3 * INTERVAL_MS,
            Duration::from_secs(30),
        )
        .is_none()
        {
            return Err(format!(
                "memtick did not tick on after the checkpoint (task {})",
                session.status_word(&id)
            ));
        }
        // The shim copies memtick's output to the log asynchronously.
        std::thread::sleep(Duration::from_millis(50));
        let after = memtick::exec_tick(session, &id)?;
        s.tick_after = Some(after.tick);
        s.max_gap_after_ms = Some(after.max_gap_ms);
        let logged = memtick::logged_ticks(&memtick::log_path(session, &id));
        let window = memtick::window_gap(&logged, t0_ms, after.unix_ms);
        s.log_window_gap_ms = Some(window);
        // max_gap_ms grew: the new maximum is the gap that spans the checkpoint.
        if after.max_gap_ms > before.max_gap_ms {
            s.frozen_ms = Some(after.max_gap_ms as f64);
            s.frozen_source = Some("max_gap_ms");
        } else {
            s.frozen_ms = Some(window as f64);
            s.frozen_source = Some("log_window");
        }

        match method {
            Method::Migratectl => {
                s.detail = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
                s.checkpoint_bytes = s.detail.get("sizeBytes").and_then(Value::as_f64);
            }
            Method::MigrateTask | Method::RuncTask => {
                s.checkpoint_bytes = du_bytes(&img).map(|b| b as f64);
                s.detail = criu_dump_seconds(&work.join("dump.log"))
                    .map_or(Value::Null, |secs| json!({ "criu_dump_s": secs }));
            }
            Method::RuncContainer | Method::MigrateContainer => {
                s.checkpoint_bytes = self.image_bytes(&reference);
            }
        }
        if method.restores() {
            self.restore(method, &id, &cp_id, &reference, s)?;
        }
        Ok(())
    }

    fn restore(
        &self,
        method: Method,
        id: &str,
        cp_id: &str,
        reference: &str,
        s: &mut Sample,
    ) -> Result<(), String> {
        let session = self.session;
        session.remove(&[id]);
        let rt0_ms = unix_ms();
        let rt0 = Instant::now();
        let restored_id = if method == Method::Migratectl {
            format!("{id}-r")
        } else {
            id.to_string()
        };
        let store = self.store.display().to_string();
        let out = if method == Method::Migratectl {
            session.migratectl(
                &[
                    "restore",
                    "--root",
                    &store,
                    "--checkpoint",
                    cp_id,
                    "--as",
                    &restored_id,
                    "-d",
                    "--json",
                ],
                self.timeout,
            )
        } else {
            // ctr hands the restored task its own stdio; memtick ignores the
            // broken pipe once ctr is gone.
            session.run_ctr(
                &["containers", "restore", "--live", "--rw", id, reference],
                self.timeout,
            )
        }?;
        let returned = ms_since(rt0);
        if !out.success() {
            return Err(format!(
                "restore failed: {}",
                last_lines(&out.stderr_str(), 3)
            ));
        }
        s.restore_return_ms = Some(returned);
        let Some(first) =
            memtick::wait_tick_after(session, &restored_id, rt0_ms, Duration::from_secs(60))
        else {
            return Err(format!(
                "the restored counter did not tick within 60 s (task {})",
                session.status_word(&restored_id)
            ));
        };
        s.restore_ticking_ms = Some(ms_since(rt0));
        s.restored_first_tick = Some(first.tick);
        // Continuity: the restored memory carries the count on from the
        // checkpoint, which was taken after the tick read before it.
        s.continuity = Some(first.tick >= s.tick_before.unwrap_or(0));
        if method == Method::Migratectl {
            s.restore_detail = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        }
        // And it keeps running (memtick exits 3 if it finds a corrupt page).
        let later = unix_ms() + 20 * INTERVAL_MS;
        if memtick::wait_tick_after(session, &restored_id, later, Duration::from_secs(10)).is_none()
            || session.task_status(&restored_id).as_deref() != Some("RUNNING")
        {
            s.continuity = Some(false);
            let log = std::fs::read_to_string(memtick::log_path(session, &restored_id))
                .unwrap_or_default();
            let corrupt = log.lines().find(|l| l.contains("CORRUPT")).unwrap_or("");
            return Err(format!(
                "the restored counter stopped (task {}): {corrupt}",
                session.status_word(&restored_id)
            ));
        }
        Ok(())
    }

    /// Bytes of the content behind image `reference`: the checkpoint and
    /// layer blobs its index points to.
    fn image_bytes(&self, reference: &str) -> Option<f64> {
        let ls = self
            .session
            .run_ctr(&["images", "ls"], Duration::from_secs(30))
            .ok()?;
        let digest = ls.stdout_str().lines().find_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.first() == Some(&reference)).then(|| cols.get(2).map(|d| d.to_string()))?
        })?;
        let content = self
            .session
            .run_ctr(&["content", "get", &digest], Duration::from_secs(30))
            .ok()?;
        let index: Value = serde_json::from_slice(&content.stdout).ok()?;
        let sizes: Vec<f64> = index["manifests"]
            .as_array()?
            .iter()
            .filter(|m| {
                m["mediaType"]
                    .as_str()
                    .is_some_and(|t| t.contains("checkpoint") || t.contains("layer"))
            })
            .filter_map(|m| m["size"].as_f64())
            .collect();
        (!sizes.is_empty()).then(|| sizes.iter().sum())
    }

    /// Removes what one sample left: containers, images, checkpoints, directories.
    fn clear(&self, method: Method, mib: u64, run: u64) {
        let session = self.session;
        let id = Self::id(method, mib, run);
        session.remove(&[&id, &format!("{id}-r")]);
        let cp_id = format!("{id}-cp");
        let store = self.store.display().to_string();
        let _ = session.migratectl(
            &["checkpoint", "rm", "--root", &store, &cp_id],
            Duration::from_secs(60),
        );
        let _ = std::fs::remove_dir_all(self.store.join(&cp_id));
        let _ = std::fs::remove_dir_all(session.work.join("img").join(&id));
        let _ = std::fs::remove_dir_all(session.work.join("work").join(&id));
        if let Ok(entries) = std::fs::read_dir(&self.ctrd_tmp) {
            for e in entries.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with("ctrd-checkpoint")
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        // `ctr t checkpoint` with a runtime other than runc.v2 also makes an
        // image (containerd's client skips that only for runc.v2); remove those too.
        if let Ok(out) = session.run_ctr(&["images", "ls", "-q"], Duration::from_secs(30)) {
            let refs: Vec<String> = out
                .stdout_str()
                .lines()
                .filter(|r| {
                    r.starts_with("localhost/bench-checkpoint/")
                        || r.starts_with("containerd.io/checkpoint/")
                })
                .map(String::from)
                .collect();
            if !refs.is_empty() {
                let mut args = vec!["images", "rm", "--sync"];
                args.extend(refs.iter().map(String::as_str));
                let _ = session.run_ctr(&args, Duration::from_secs(60));
            }
        }
        // `ctr t checkpoint` leaves its images as dirty pages (nothing fsyncs
        // them): write them back now, not during the next method's measurement.
        unsafe { libc::sync() };
    }
}

/// CRIU's own run time, from the timestamp of "Dumping finished
/// successfully" in its dump.log.
fn criu_dump_seconds(dump_log: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(dump_log).ok()?;
    text.lines()
        .filter(|l| l.contains("Dumping finished successfully"))
        .find_map(criu_log_seconds)
}

/// The `(seconds)` stamp CRIU puts at the start of each log line.
pub fn criu_log_seconds(line: &str) -> Option<f64> {
    line.strip_prefix('(')?
        .split_once(')')?
        .0
        .trim()
        .parse()
        .ok()
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" ")
}

/// Per size and method: medians and counts.
#[derive(Debug, Serialize)]
struct MethodSummary {
    runtime: &'static str,
    ok: usize,
    failed: usize,
    total_ms: Option<Stats>,
    frozen_ms: Option<Stats>,
    restore_return_ms: Option<Stats>,
    restore_ticking_ms: Option<Stats>,
    checkpoint_bytes: Option<Stats>,
    continuity: Option<bool>,
}

#[derive(Debug, Serialize)]
struct Ratios {
    runc_container_over_migratectl_total: Option<f64>,
    migrate_task_over_runc_task_total: Option<f64>,
    migrate_task_over_runc_task_total_paired_median: Option<f64>,
    migrate_container_over_runc_container_total: Option<f64>,
    runc_container_frozen_over_migratectl_frozen: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Goals {
    size_mib: u64,
    migratectl_frozen_ms: Goal,
    migratectl_speedup_over_runc_container_checkpoint: Goal,
    task_checkpoint_migrate_over_runc: Goal,
    state_continuity: Goal,
}

struct Results {
    summary: BTreeMap<u64, BTreeMap<&'static str, MethodSummary>>,
    ratios: BTreeMap<u64, Ratios>,
    goals: Goals,
    table: Table,
}

fn summarize(opts: &Options, samples: &[Sample]) -> Results {
    let ok = |m: Method, mib: u64| {
        samples
            .iter()
            .filter(move |s| s.method == m.name() && s.mib == mib && s.ok)
    };
    let stat = |m: Method, mib: u64, f: fn(&Sample) -> Option<f64>| Stats::of(ok(m, mib).map(f));
    let med = |m: Method, mib: u64, f: fn(&Sample) -> Option<f64>| median(&stat(m, mib, f));
    let total = |s: &Sample| s.total_ms;
    let frozen = |s: &Sample| s.frozen_ms;

    let mut summary = BTreeMap::new();
    let mut ratios = BTreeMap::new();
    let mut table = Table::new(&[
        "MiB",
        "method",
        "runtime",
        "n",
        "total ms",
        "frozen ms",
        "restore ret",
        "restore tick",
        "size",
        "continuity",
    ])
    .left(4);
    let mut sizes: Vec<u64> = samples.iter().map(|s| s.mib).collect();
    sizes.sort_unstable();
    sizes.dedup();
    for &mib in &sizes {
        let mut per_method = BTreeMap::new();
        for m in METHODS {
            let all = samples
                .iter()
                .filter(|s| s.method == m.name() && s.mib == mib)
                .count();
            if all == 0 {
                continue;
            }
            let conts: Vec<bool> = ok(m, mib).filter_map(|s| s.continuity).collect();
            let sum = MethodSummary {
                runtime: m.runtime(),
                ok: ok(m, mib).count(),
                failed: all - ok(m, mib).count(),
                total_ms: stat(m, mib, total),
                frozen_ms: stat(m, mib, frozen),
                restore_return_ms: stat(m, mib, |s| s.restore_return_ms),
                restore_ticking_ms: stat(m, mib, |s| s.restore_ticking_ms),
                checkpoint_bytes: stat(m, mib, |s| s.checkpoint_bytes),
                continuity: (!conts.is_empty()).then(|| conts.iter().all(|c| *c)),
            };
            table.row(vec![
                mib.to_string(),
                m.name().into(),
                m.runtime().trim_start_matches("io.containerd.").into(),
                format!("{}/{}", sum.ok, all),
                report::num(median(&sum.total_ms), 1),
                report::num(median(&sum.frozen_ms), 1),
                report::num(median(&sum.restore_return_ms), 1),
                report::num(median(&sum.restore_ticking_ms), 1),
                report::mib(median(&sum.checkpoint_bytes)),
                match sum.continuity {
                    None => String::new(),
                    Some(true) => "ok".into(),
                    Some(false) => "BROKEN".into(),
                },
            ]);
            per_method.insert(m.name(), sum);
        }
        summary.insert(mib, per_method);
        let run_total = |m: Method, r: u64| {
            samples
                .iter()
                .find(|s| s.mib == mib && s.run == r && s.ok && s.method == m.name())
                .and_then(|s| s.total_ms)
        };
        ratios.insert(
            mib,
            Ratios {
                runc_container_over_migratectl_total: ratio(
                    med(Method::RuncContainer, mib, total),
                    med(Method::Migratectl, mib, total),
                ),
                migrate_task_over_runc_task_total: ratio(
                    med(Method::MigrateTask, mib, total),
                    med(Method::RuncTask, mib, total),
                ),
                migrate_task_over_runc_task_total_paired_median: stats::paired_median(
                    (0..opts.runs).map(|r| {
                        (
                            run_total(Method::MigrateTask, r),
                            run_total(Method::RuncTask, r),
                        )
                    }),
                ),
                migrate_container_over_runc_container_total: ratio(
                    med(Method::MigrateContainer, mib, total),
                    med(Method::RuncContainer, mib, total),
                ),
                runc_container_frozen_over_migratectl_frozen: ratio(
                    med(Method::RuncContainer, mib, frozen),
                    med(Method::Migratectl, mib, frozen),
                ),
            },
        );
    }

    let continuity: Vec<bool> = samples.iter().filter_map(|s| s.continuity).collect();
    let goals = Goals {
        size_mib: GOAL_MIB,
        migratectl_frozen_ms: Goal::number(
            med(Method::Migratectl, GOAL_MIB, frozen),
            format!("<= {GOAL_FROZEN_MS}"),
            |v| v <= GOAL_FROZEN_MS,
        ),
        migratectl_speedup_over_runc_container_checkpoint: Goal::number(
            ratio(
                med(Method::RuncContainer, GOAL_MIB, total),
                med(Method::Migratectl, GOAL_MIB, total),
            ),
            format!(">= {GOAL_SPEEDUP}"),
            |v| v >= GOAL_SPEEDUP,
        ),
        task_checkpoint_migrate_over_runc: Goal::number(
            ratio(
                med(Method::MigrateTask, GOAL_MIB, total),
                med(Method::RuncTask, GOAL_MIB, total),
            ),
            format!("<= {GOAL_TASK_RATIO}"),
            |v| v <= GOAL_TASK_RATIO,
        ),
        state_continuity: Goal {
            value: if continuity.is_empty() {
                Value::Null
            } else {
                Value::from(continuity.iter().all(|c| *c))
            },
            goal: "every restored counter carries on".into(),
            met: !continuity.is_empty() && continuity.iter().all(|c| *c),
        },
    };
    Results {
        summary,
        ratios,
        goals,
        table,
    }
}

/// Frozen time per size, one line per method (medians).
fn plot_frozen(
    session: &Session,
    summary: &BTreeMap<u64, BTreeMap<&'static str, MethodSummary>>,
) -> Result<()> {
    let series: Vec<Series> = METHODS
        .iter()
        .map(|m| Series {
            name: m.name().to_string(),
            points: summary
                .iter()
                .filter_map(|(mib, per)| {
                    Some((*mib as f64, median(&per.get(m.name())?.frozen_ms)?))
                })
                .collect(),
        })
        .collect();
    plot::lines(
        &session.plot_path("frozen"),
        &Labels {
            title: "Frozen time of a checkpoint (median)",
            x: "memory (MiB)",
            y: "frozen (ms)",
        },
        &series,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criu_stamps() {
        assert_eq!(
            criu_log_seconds("(00.512345) Dumping finished successfully"),
            Some(0.512345)
        );
        assert_eq!(criu_log_seconds("Dumping finished"), None);
    }
}
