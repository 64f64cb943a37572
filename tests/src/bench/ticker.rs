//! Checkpoint ticker benchmark (issue 4):
//! a container with `--mib` (1 GiB) of touched memory that dirties 1 %, 10 %
//! and 50 % of its pages per ticker interval, `--ticks` (10) versions each,
//! into the file:// and the oci:// version store, against a full
//! leave-running checkpoint per tick measured in the same run.
//!
//! Per dirty level X and store:
//! - ticker: `ctr run --runtime io.containerd.migrate.v1` of `memtick --mib
//!   MIB --interval-ms MEMTICK_MS --dirty-percent P --out /tmp/tick` with the
//!   annotations `io.containerd.migrate.checkpoint.{interval,version-group,
//!   keep-groups,store}`; P = X * MEMTICK_MS / interval, so X % per ticker
//!   interval. Once version TICKS-1 is stored the container is killed. Per
//!   version, from the shim's `ticker-version` log line: frozen (the pause
//!   the checkpoint recorded), dump and total time (upload = total - dump);
//!   from `migratectl checkpoint ls --store URL --container ID --json`: bytes
//!   new and total, created stamps; from memtick's output: the largest tick
//!   gap in the dump window (the tick that ended the freeze), and so the pages
//!   dirtied between two freezes (ticks between them x pages per tick,
//!   capped at MIB; else created-stamp difference x memtick's measured rate).
//!   Then `--runs` restores of the newest version (`migratectl restore --store
//!   URL --container ID --version V --image IMAGE --as NEW --detach --json`),
//!   each checked to carry the counter on, alternating with as many restores
//!   of the level's full checkpoint.
//! - full: once per level, the same memtick without a ticker, `--runs` times
//!   `migratectl checkpoint create --root DIR --json ID` one interval apart;
//!   the last is kept for the restores (`migratectl restore --root DIR
//!   --checkpoint CP --as NEW --detach --json`).
//!
//! Stores: file:// is a directory per level in the work dir; oci:// is a
//! Debian docker-registry per level on loopback, its storage in the work dir.
//!
//! Goals (per store and level): bytes per incremental version at most 1.5 x
//! dirtied + 1 MiB, every one; median freeze per tick at most 1.05 x a full
//! checkpoint's; restore of the newest version at most 2 x a full
//! checkpoint's (median migratectl totalMs); every restored counter carries on.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use containerd_migrate_tests::fixture::{IMAGE, MIGRATE_V1};
use containerd_migrate_tests::host;
use containerd_migrate_tests::memtick::TickLine;
use containerd_migrate_tests::registry::{self, Registry};
use serde::Serialize;
use serde_json::{Value, json};

use super::memtick_workload::{self as memtick, Workload};
use super::plot::{self, Labels, Series};
use super::report::{self, Goal, Table};
use super::session::{Needs, RESTORE_LOG_DIR, Session, du_bytes};
use super::stats::{self, Stats, median, ratio};
use super::ticker_log::{self, TickerVersion};
use super::{Common, machine, ms_since, say, unix_ms};

const ANNOTATION: &str = "io.containerd.migrate.checkpoint";
const PAGE: u64 = 4096;
const MIB: f64 = 1_048_576.0;
const GOAL_BYTES_FACTOR: f64 = 1.5;
const GOAL_BYTES_SLACK: f64 = MIB;
const GOAL_FREEZE_RATIO: f64 = 1.05;
const GOAL_RESTORE_RATIO: f64 = 2.0;
const DEFAULT_DIRTY: [f64; 3] = [1.0, 10.0, 50.0];

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Store {
    File,
    Oci,
}

impl Store {
    fn as_str(self) -> &'static str {
        match self {
            Store::File => "file",
            Store::Oci => "oci",
        }
    }
}

#[derive(Args, Debug)]
pub struct Options {
    /// Per cent of the pages dirtied per ticker interval, one level each.
    #[arg(long, num_args = 1.., value_delimiter = ' ', default_values_t = DEFAULT_DIRTY)]
    pub dirty: Vec<f64>,
    /// Version stores.
    #[arg(long, value_enum, num_args = 1.., value_delimiter = ' ', default_values_t = [Store::File, Store::Oci])]
    pub stores: Vec<Store>,
    /// Versions per container (version 0 is the full base).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..))]
    pub ticks: u64,
    /// memtick's memory.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub mib: u64,
    /// Ticker interval into file://, seconds: one for all levels or one per level
    /// [default: 15 15 30 with the default levels, else 15].
    #[arg(long, num_args = 1.., value_delimiter = ' ')]
    pub interval: Option<Vec<u64>>,
    /// The same into oci:// [default: 20 20 30 with the default levels, else 20]:
    /// the registry store uploads a 1 GiB base in about 8 s here.
    #[arg(long, num_args = 1.., value_delimiter = ' ')]
    pub oci_interval: Option<Vec<u64>>,
    /// Full checkpoints per level, and restores of each kind.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub runs: u64,
    /// memtick's tick interval.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub memtick_ms: u64,
    #[arg(long, default_value_t = 10)]
    pub version_group: u64,
    #[arg(long, default_value_t = 10)]
    pub keep_groups: u64,
    /// Seconds any one command may take.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Keep the work dir (logs) instead of removing it.
    #[arg(long)]
    pub keep_work: bool,
    #[command(flatten)]
    pub common: Common,
}

impl Options {
    fn intervals(&self, store: Store) -> Vec<u64> {
        let given = match store {
            Store::File => &self.interval,
            Store::Oci => &self.oci_interval,
        };
        // A tick dumps all of MIB and writes what changed: at 50 % the ticks
        // take about twice as long as at 1 %, so the default levels get
        // their own intervals.
        let default_levels = self.dirty == DEFAULT_DIRTY;
        given
            .clone()
            .unwrap_or_else(|| match (store, default_levels) {
                (Store::File, true) => vec![15, 15, 30],
                (Store::File, false) => vec![15],
                (Store::Oci, true) => vec![20, 20, 30],
                (Store::Oci, false) => vec![20],
            })
    }

    /// The ticker interval of `store` at level index `level`.
    fn interval_of(&self, store: Store, level: usize) -> u64 {
        let list = self.intervals(store);
        if list.len() == 1 {
            list[0]
        } else {
            list[level]
        }
    }

    fn pages(&self) -> u64 {
        self.mib * 256
    }

    /// memtick's `--dirty-percent` for X % per interval.
    fn per_tick_percent(&self, x: f64, interval_s: u64) -> f64 {
        x * self.memtick_ms as f64 / (interval_s as f64 * 1000.0)
    }

    /// The pages memtick dirties per tick at `pct` per cent (rounded up, as
    /// memtick's pages_for_percent does).
    fn pages_per_tick(&self, pct: f64) -> u64 {
        ((self.pages() as f64 * pct / 100.0).ceil() as u64).min(self.pages())
    }
}

/// `%.6g`-like: the shortest form memtick parses back to the same rate.
fn percent_arg(p: f64) -> String {
    let s = format!("{p:.6}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[derive(Debug, Serialize)]
struct FullCheckpoint {
    run: u64,
    id: String,
    ok: bool,
    error: Option<String>,
    wall_ms: Option<f64>,
    frozen_ms: Option<f64>,
    dump_ms: Option<f64>,
    persist_ms: Option<f64>,
    total_ms: Option<f64>,
    size_bytes: Option<f64>,
    memtick_gap_ms: Option<f64>,
    tick_before: u64,
    detail: Value,
}

#[derive(Debug, Serialize)]
struct FullLevel {
    dirty_percent: f64,
    interval_s: u64,
    memtick_dirty_percent_per_tick: f64,
    memtick_pages_per_tick: u64,
    checkpoints: Vec<FullCheckpoint>,
    kept_for_restores: Option<(String, u64)>,
}

#[derive(Debug, Serialize)]
struct Restore {
    run: u64,
    kind: &'static str,
    id: String,
    ok: bool,
    error: Option<String>,
    wall_ms: f64,
    total_ms: Option<f64>,
    check_ms: Option<f64>,
    container_ms: Option<f64>,
    version: Value,
    skipped: Value,
    ticking_ms: Option<f64>,
    tick_before: u64,
    first_tick: Option<u64>,
    continuity: Option<bool>,
}

/// One stored version: the ticker's line joined with the store's listing
/// and memtick's view.
#[derive(Debug, Serialize)]
struct Version {
    version: u64,
    group: u64,
    log_ms: u64,
    frozen_ms: Option<f64>,
    dump_ms: f64,
    total_ms: f64,
    upload_ms: f64,
    chunks_new: u64,
    chunks_total: u64,
    retained: Option<u64>,
    created: Value,
    created_ms: Option<u64>,
    bytes_new: Option<f64>,
    bytes_total: Option<f64>,
    listed_chunks_new: Value,
    mode: Value,
    valid: Value,
    freeze_tick: Option<u64>,
    memtick_gap_ms: Option<f64>,
    dirtied_bytes: Option<f64>,
    dirtied_source: Option<&'static str>,
    dirtied_bytes_by_ticks: Option<f64>,
    dirtied_bytes_by_created: Option<f64>,
    since_previous_ms: Option<f64>,
    bound_bytes: Option<f64>,
    bytes_over_bound: Option<f64>,
}

#[derive(Debug, Serialize)]
struct TickerLevel {
    store: Store,
    dirty_percent: f64,
    interval_s: u64,
    url: String,
    memtick: Value,
    error: Option<String>,
    started_ms: u64,
    killed_ms: u64,
    versions: Vec<Version>,
    stored_bytes: Option<f64>,
    store_du_bytes: Option<u64>,
    /// Ticks that stored nothing (the shim's `ticker-failed` lines).
    failed_ticks: usize,
    restores: Vec<Restore>,
    full_restores: Vec<Restore>,
}

struct Bench<'a> {
    opts: &'a Options,
    session: &'a Session,
    timeout: Duration,
    full_dir: PathBuf,
}

pub fn run(opts: Options) -> Result<()> {
    if opts.dirty.iter().any(|x| !(*x > 0.0 && *x <= 100.0)) {
        bail!("--dirty takes per cents in (0, 100]");
    }
    for store in [Store::File, Store::Oci] {
        let n = opts.intervals(store).len();
        if n != 1 && n != opts.dirty.len() {
            bail!("--interval and --oci-interval take one number or one per --dirty level");
        }
        if opts.intervals(store).contains(&0) {
            bail!("intervals are whole seconds above 0");
        }
    }
    if opts.stores.contains(&Store::Oci) && host::which(registry::BINARY).is_none() {
        bail!(
            "{} not found (hack/setup.sh installs it), or run with --stores file",
            registry::BINARY
        );
    }
    // Room: the ticker's store holds a base plus TICKS-1 increments; a full
    // checkpoint and a rebuilt version need MIB each, the container MIB more.
    let max_dirty = opts.dirty.iter().copied().fold(0.0, f64::max);
    let need_mib = (opts.mib as f64 * (1.0 + max_dirty / 100.0 * (opts.ticks - 1) as f64) * 1.15)
        as u64
        + 2 * opts.mib
        + 1024;
    std::fs::create_dir_all(&opts.common.work_base)?;
    let have_mib = free_mib(&opts.common.work_base).unwrap_or(u64::MAX);
    if have_mib < need_mib {
        bail!(
            "{} has {have_mib} MiB free, the benchmark needs about {need_mib} MiB",
            opts.common.work_base.display()
        );
    }
    let mut session = Session::start(
        &opts.common,
        Needs {
            name: "ticker",
            migratectl: true,
            private_runtime_dir: false,
        },
    )?;
    if opts.keep_work {
        session.keep_work();
    }
    let full_dir = session.work.join("full");
    for d in ["full", "out", "logs"] {
        std::fs::create_dir_all(session.work.join(d))?;
    }
    let bench = Bench {
        opts: &opts,
        session: &session,
        timeout: Duration::from_secs(opts.timeout),
        full_dir,
    };
    bench.measure_all()
}

/// Free space of the file system holding `path`, MiB (statvfs).
fn free_mib(path: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64 / (1 << 20))
}

impl Bench<'_> {
    fn measure_all(&self) -> Result<()> {
        let (opts, session) = (self.opts, self.session);
        let load_before = machine::loadavg();
        let started = machine::now_utc();
        let staging = format!(
            "/run is {}, /dev/shm is {} (the ticker commits dumps, and migratectl stages them and rebuilds versions, in RAM when /run/containerd-migrate or /dev/shm is a tmpfs)",
            machine::fs_type(Path::new("/run")),
            machine::fs_type(Path::new("/dev/shm"))
        );
        say(format!(
            "dirty {:?} % per tick, stores {:?}, {} ticks of {} MiB (intervals: file {:?} s, oci {:?} s), {} full checkpoints and restores",
            opts.dirty,
            opts.stores.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            opts.ticks,
            opts.mib,
            opts.intervals(Store::File),
            opts.intervals(Store::Oci),
            opts.runs
        ));
        say(format!(
            "work dir {} ({}); {staging}",
            session.work.display(),
            machine::fs_type(&session.work)
        ));
        let mut fulls = Vec::new();
        let mut tickers = Vec::new();
        for (level, &x) in opts.dirty.iter().enumerate() {
            // The baseline's workload dirties at the rate of the first store's ticker.
            let full = self.full_level(x, opts.interval_of(opts.stores[0], level))?;
            for &store in &opts.stores {
                tickers.push(self.ticker_level(store, x, opts.interval_of(store, level), &full)?);
            }
            if let Some((cp, _)) = &full.kept_for_restores {
                let _ = std::fs::remove_dir_all(self.full_dir.join(cp));
            }
            fulls.push(full);
        }
        let load_after = machine::loadavg();
        self.report(
            &fulls,
            &tickers,
            &started,
            &load_before,
            &load_after,
            &staging,
        )
    }

    fn workload(&self, pct: f64, run_opts: Vec<String>) -> Workload<'static> {
        Workload {
            runtime: MIGRATE_V1,
            mib: self.opts.mib,
            interval_ms: self.opts.memtick_ms,
            dirty_percent: Some(percent_arg(pct)),
            run_opts,
        }
    }

    /// `--runs` full leave-running checkpoints of a ticker-less memtick, one
    /// interval apart; the last is kept for the restores.
    fn full_level(&self, x: f64, interval: u64) -> Result<FullLevel> {
        let (opts, session) = (self.opts, self.session);
        let id = format!("full-{x}");
        let pct = opts.per_tick_percent(x, interval);
        say(format!(
            "full checkpoints, {x} % per {interval} s: memtick --dirty-percent {}",
            percent_arg(pct)
        ));
        memtick::wait_for_memory(3 * opts.mib + 1024);
        memtick::start(session, &id, &self.workload(pct, Vec::new()), 10)
            .map_err(|e| anyhow::anyhow!("memtick {id} did not start: {e}"))?;
        // Run the workload for one interval first, as the ticker's container
        // does before its first tick.
        std::thread::sleep(Duration::from_secs(interval));
        let full_dir = self.full_dir.display().to_string();
        let mut checkpoints = Vec::new();
        let mut kept: Option<(String, u64)> = None;
        for run in 0..opts.runs {
            let cp_id = format!("{id}-cp{run}");
            let start = Instant::now();
            let tick_before = memtick::host_tick(session, &id)
                .map(|t| t.tick)
                .unwrap_or(0);
            let t0_ms = unix_ms();
            let t0 = Instant::now();
            let out = session.migratectl(
                &[
                    "checkpoint",
                    "create",
                    "--root",
                    &full_dir,
                    "--id",
                    &cp_id,
                    "--json",
                    &id,
                ],
                self.timeout,
            );
            let wall_ms = ms_since(t0);
            let cp = match out {
                Ok(out) if out.success() => {
                    let t1_ms = unix_ms();
                    let d: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
                    // memtick's view: the largest gap of a tick in the command's window.
                    let until = t1_ms + 2 * opts.memtick_ms;
                    memtick::wait_tick_after(session, &id, until, Duration::from_secs(30));
                    // The shim copies memtick's output to the log asynchronously.
                    std::thread::sleep(Duration::from_millis(200));
                    let ticks = memtick::logged_ticks(&memtick::log_path(session, &id));
                    let gap = memtick::window_gap(&ticks, t0_ms, until);
                    let num = |k: &str| d.get(k).and_then(Value::as_f64);
                    eprintln!(
                        "    full {run}: frozen {} ms, memtick gap {gap} ms, total {} ms, {} bytes",
                        report::num(num("frozenMs"), 1),
                        report::num(num("totalMs"), 1),
                        report::num(num("sizeBytes"), 0)
                    );
                    // Keep only the newest (for the restores): MIB each.
                    if let Some((prev, _)) = kept.replace((cp_id.clone(), tick_before)) {
                        let _ = std::fs::remove_dir_all(self.full_dir.join(prev));
                    }
                    FullCheckpoint {
                        run,
                        id: cp_id,
                        ok: true,
                        error: None,
                        wall_ms: Some(wall_ms),
                        frozen_ms: num("frozenMs"),
                        dump_ms: num("dumpMs"),
                        persist_ms: num("persistMs"),
                        total_ms: num("totalMs"),
                        size_bytes: num("sizeBytes"),
                        memtick_gap_ms: Some(gap as f64),
                        tick_before,
                        detail: d,
                    }
                }
                other => {
                    let error = match other {
                        Ok(out) => out.stderr_str().lines().last().unwrap_or("").to_string(),
                        Err(e) => e,
                    };
                    eprintln!("    full {run} FAILED: {error}");
                    FullCheckpoint {
                        run,
                        id: cp_id,
                        ok: false,
                        error: Some(error),
                        wall_ms: None,
                        frozen_ms: None,
                        dump_ms: None,
                        persist_ms: None,
                        total_ms: None,
                        size_bytes: None,
                        memtick_gap_ms: None,
                        tick_before,
                        detail: Value::Null,
                    }
                }
            };
            checkpoints.push(cp);
            unsafe { libc::sync() };
            // One ticker interval apart, start to start.
            let left = Duration::from_secs(interval).saturating_sub(start.elapsed());
            if run + 1 < opts.runs {
                std::thread::sleep(left);
            }
        }
        session.remove(&[&id]);
        Ok(FullLevel {
            dirty_percent: x,
            interval_s: interval,
            memtick_dirty_percent_per_tick: pct,
            memtick_pages_per_tick: opts.pages_per_tick(pct),
            checkpoints,
            kept_for_restores: kept,
        })
    }

    /// The ticker's versions of container `id` logged so far.
    fn logged_versions(&self, id: &str) -> Vec<TickerVersion> {
        let log =
            std::fs::read_to_string(self.session.instance.containerd_log()).unwrap_or_default();
        ticker_log::versions_of(&log, id)
    }

    /// How many ticks of container `id` failed so far.
    fn logged_failures(&self, id: &str) -> usize {
        let log =
            std::fs::read_to_string(self.session.instance.containerd_log()).unwrap_or_default();
        ticker_log::failures_of(&log, id)
    }

    /// TICKS versions of memtick into a fresh store, then `--runs` restores of
    /// the newest, alternating with restores of the level's full checkpoint.
    fn ticker_level(
        &self,
        store: Store,
        x: f64,
        interval: u64,
        full: &FullLevel,
    ) -> Result<TickerLevel> {
        let (opts, session) = (self.opts, self.session);
        let id = format!("tk-{}-{x}", store.as_str());
        let registry;
        let (url, storage_dir) = match store {
            Store::File => {
                let dir = session.work.join(format!("store-{x}"));
                std::fs::create_dir_all(&dir)?;
                (format!("file://{}", dir.display()), dir)
            }
            Store::Oci => {
                let binary = host::which(registry::BINARY).context("docker-registry")?;
                registry = Registry::start_in(&binary, &session.work.join(format!("registry-{x}")))
                    .map_err(anyhow::Error::msg)?;
                (registry.url("bench-ticker"), registry.data_dir())
            }
        };
        let pct = opts.per_tick_percent(x, interval);
        say(format!(
            "ticker into {} ({url}), {x} % per {interval} s: memtick --dirty-percent {}, {} versions",
            store.as_str(),
            percent_arg(pct),
            opts.ticks
        ));
        memtick::wait_for_memory(3 * opts.mib + 1024);
        let started_ms = unix_ms();
        let annotations = [
            format!("{ANNOTATION}.interval={interval}s"),
            format!("{ANNOTATION}.version-group={}", opts.version_group),
            format!("{ANNOTATION}.keep-groups={}", opts.keep_groups),
            format!("{ANNOTATION}.store={url}"),
        ];
        let run_opts = annotations
            .iter()
            .flat_map(|a| ["--annotation".to_string(), a.clone()])
            .collect();
        memtick::start(session, &id, &self.workload(pct, run_opts), 10)
            .map_err(|e| anyhow::anyhow!("memtick {id} did not start: {e}"))?;
        // Until version TICKS-1 is stored; a stall (no new version for a long
        // while) ends the level.
        let stall = Duration::from_secs(3 * interval + 600);
        let mut deadline = Instant::now() + stall;
        let mut last: Option<u64> = None;
        let mut tick_before = 0;
        let mut error = None;
        loop {
            let versions = self.logged_versions(&id);
            let newest = versions.iter().map(|v| v.version).max();
            if newest > last {
                if let Some(v) = versions.iter().rev().find(|v| Some(v.version) == newest) {
                    eprintln!(
                        "    version {} (group {}): frozen {} ms, dump {} ms, total {} ms, {:.1} MiB new of {:.1} MiB",
                        v.version,
                        v.group,
                        report::num(v.frozen_ms, 1),
                        v.dump_ms,
                        v.total_ms,
                        v.bytes_new as f64 / MIB,
                        v.bytes_total as f64 / MIB
                    );
                }
                last = newest;
                deadline = Instant::now() + stall;
                // The counter before the newest version's dump: read when the
                // one before it is stored (ticks never overlap).
                if last == Some(opts.ticks - 2)
                    && let Ok(t) = memtick::host_tick(session, &id)
                {
                    tick_before = t.tick;
                }
            }
            if last >= Some(opts.ticks - 1) {
                break;
            }
            // A ticker that keeps failing would otherwise run into the stall.
            let failed = self.logged_failures(&id);
            if failed as u64 > opts.ticks {
                error = Some(format!(
                    "{failed} ticks failed (the shim's warnings in {} say why)",
                    session.instance.containerd_log().display()
                ));
                break;
            }
            if Instant::now() >= deadline {
                error = Some(format!(
                    "no new version for {} s (newest {last:?}, task {})",
                    stall.as_secs(),
                    session.status_word(&id)
                ));
                break;
            }
            // PAUSED: a tick holds it frozen across its dump and rootfs diff.
            let status = session.task_status(&id);
            if !matches!(status.as_deref(), Some("RUNNING" | "PAUSED")) {
                error = Some(format!(
                    "the container stopped (task {}): {}",
                    status.unwrap_or_else(|| "gone".into()),
                    memtick::tail(&memtick::log_path(session, &id), 2)
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let killed_ms = unix_ms();
        session.remove(&[&id]);
        if let Some(e) = &error {
            say(format!("WARNING: {id}: {e}"));
        }
        std::thread::sleep(Duration::from_millis(300));
        // Everything the versions are measured with, before the restores
        // (whose containers carry the ticker annotations too, and would tick
        // after an interval).
        let listing: Vec<Value> = match session.migratectl(
            &[
                "checkpoint",
                "ls",
                "--store",
                &url,
                "--container",
                &id,
                "--json",
            ],
            self.timeout,
        ) {
            Ok(out) if out.success() => serde_json::from_slice(&out.stdout).unwrap_or_default(),
            Ok(out) => {
                say(format!(
                    "WARNING: checkpoint ls --store failed: {}",
                    out.stderr_str().trim()
                ));
                Vec::new()
            }
            Err(e) => {
                say(format!("WARNING: checkpoint ls --store failed: {e}"));
                Vec::new()
            }
        };
        let store_du_bytes = du_bytes(&storage_dir);
        let failed_ticks = self.logged_failures(&id);
        let lines = self.logged_versions(&id);
        let ticks = memtick::logged_ticks(&memtick::log_path(session, &id));
        let versions = join_versions(opts, pct, &lines, &listing, &ticks);
        // The counter before the newest version's dump, more exactly: the
        // tick before the one that ended its freeze.
        if let Some(t) = versions
            .iter()
            .find(|v| Some(v.version) == last)
            .and_then(|v| v.freeze_tick)
        {
            tick_before = t.saturating_sub(1);
        }

        say(format!(
            "restores of version {} of {id}, alternating with the full checkpoint {}",
            last.map_or("(none)".to_string(), |v| v.to_string()),
            full.kept_for_restores
                .as_ref()
                .map_or("(none)", |(cp, _)| cp.as_str())
        ));
        let full_root = self.full_dir.display().to_string();
        let mut restores = Vec::new();
        let mut full_restores = Vec::new();
        for run in 0..opts.runs {
            let full_restore = |full_restores: &mut Vec<Restore>| {
                if let Some((cp, tb)) = &full.kept_for_restores {
                    full_restores.push(self.restore_one(
                        *tb,
                        &format!("{id}-f{run}"),
                        run,
                        "full",
                        &["restore", "--root", &full_root, "--checkpoint", cp],
                    ));
                }
            };
            if run % 2 == 1 {
                full_restore(&mut full_restores);
            }
            if let Some(v) = last {
                let v = v.to_string();
                restores.push(self.restore_one(
                    tick_before,
                    &format!("{id}-r{run}"),
                    run,
                    "chain",
                    &[
                        "restore",
                        "--store",
                        &url,
                        "--container",
                        &id,
                        "--version",
                        &v,
                        "--image",
                        IMAGE,
                    ],
                ));
            }
            if run % 2 == 0 {
                full_restore(&mut full_restores);
            }
        }
        let stored: Vec<f64> = versions.iter().filter_map(|v| v.bytes_new).collect();
        let period = memtick_period(&ticks);
        Ok(TickerLevel {
            store,
            dirty_percent: x,
            interval_s: interval,
            url,
            memtick: json!({
                "interval_ms": opts.memtick_ms, "dirty_percent_per_tick": pct,
                "pages_per_tick": opts.pages_per_tick(pct), "pages": opts.pages(),
                "measured_ms_per_tick": period.map(|p| stats::round(p, 2)), "ticks_logged": ticks.len(),
            }),
            error,
            started_ms,
            killed_ms,
            versions,
            stored_bytes: (!stored.is_empty()).then(|| stored.iter().sum()),
            store_du_bytes,
            failed_ticks,
            restores,
            full_restores,
        })
    }

    /// One `migratectl ARGS --as NEW_ID --detach --json`, checked to tick on
    /// from at least `tick_before`, then removed.
    fn restore_one(
        &self,
        tick_before: u64,
        new_id: &str,
        run: u64,
        kind: &'static str,
        args: &[&str],
    ) -> Restore {
        let session = self.session;
        memtick::wait_for_memory(3 * self.opts.mib + 1024);
        unsafe { libc::sync() };
        let mut args = args.to_vec();
        args.extend(["--as", new_id, "--detach", "--json"]);
        let t0_ms = unix_ms();
        let t0 = Instant::now();
        let out = session.migratectl(&args, self.timeout);
        let wall_ms = ms_since(t0);
        let detail: Value = out
            .as_ref()
            .ok()
            .and_then(|o| serde_json::from_slice(&o.stdout).ok())
            .unwrap_or(Value::Null);
        let mut r = Restore {
            run,
            kind,
            id: new_id.to_string(),
            ok: true,
            error: None,
            wall_ms,
            total_ms: detail.get("totalMs").and_then(Value::as_f64),
            check_ms: detail.get("checkMs").and_then(Value::as_f64),
            container_ms: detail.pointer("/containers/0/ms").and_then(Value::as_f64),
            version: detail.get("version").cloned().unwrap_or(Value::Null),
            skipped: detail.get("skipped").cloned().unwrap_or_else(|| json!([])),
            ticking_ms: None,
            tick_before,
            first_tick: None,
            continuity: None,
        };
        let failure = match &out {
            Err(e) => Some(e.clone()),
            Ok(o) if !o.success() => Some(format!(
                "migratectl restore failed: {}",
                o.stderr_str().trim()
            )),
            Ok(_) => None,
        };
        if let Some(e) = failure {
            r.ok = false;
            r.error = Some(e);
        } else if let Some(first) =
            memtick::wait_tick_after(session, new_id, t0_ms, Duration::from_secs(60))
        {
            r.ticking_ms = Some(ms_since(t0));
            r.first_tick = Some(first.tick);
            r.continuity = Some(first.tick >= tick_before);
            // And it keeps running (memtick exits 3 on a corrupt page).
            let later = unix_ms() + 10 * self.opts.memtick_ms;
            if memtick::wait_tick_after(session, new_id, later, Duration::from_secs(15)).is_none()
                || !matches!(
                    session.task_status(new_id).as_deref(),
                    Some("RUNNING" | "PAUSED")
                )
            {
                let log = std::fs::read_to_string(
                    Path::new(RESTORE_LOG_DIR).join(format!("{new_id}.log")),
                )
                .unwrap_or_default();
                r.ok = false;
                r.continuity = Some(false);
                r.error = Some(format!(
                    "the restored counter stopped (task {}): {}",
                    session.status_word(new_id),
                    log.lines().find(|l| l.contains("CORRUPT")).unwrap_or("")
                ));
            }
        } else {
            r.ok = false;
            r.error = Some(format!(
                "the restored counter did not tick within 60 s (task {})",
                session.status_word(new_id)
            ));
        }
        match &r.error {
            None => eprintln!(
                "      restore {run} {kind:<5}: total {} ms (check {} ms), ticking after {} ms, tick {} >= {tick_before}",
                report::num(r.total_ms, 1),
                report::num(r.check_ms, 1),
                report::num(r.ticking_ms, 1),
                r.first_tick.unwrap_or(0)
            ),
            Some(e) => eprintln!("      restore {run} {kind:<5} FAILED: {e}"),
        }
        session.remove(&[new_id]);
        r
    }
}

/// memtick's measured ms per tick over the whole run.
fn memtick_period(ticks: &[TickLine]) -> Option<f64> {
    let (first, last) = (ticks.first()?, ticks.last()?);
    (last.tick > first.tick)
        .then(|| (last.unix_ms - first.unix_ms) as f64 / (last.tick - first.tick) as f64)
}

/// Per version: the ticker's line joined with the listing, the memtick tick
/// that ended its freeze (the largest gap in the dump window) and the pages
/// dirtied since the version before.
fn join_versions(
    opts: &Options,
    pct: f64,
    lines: &[TickerVersion],
    listing: &[Value],
    ticks: &[TickLine],
) -> Vec<Version> {
    let pages_per_tick = opts.pages_per_tick(pct);
    let pages = opts.pages();
    let period = memtick_period(ticks);
    let mut lines: Vec<&TickerVersion> = lines.iter().collect();
    lines.sort_by_key(|l| l.version);
    lines.dedup_by_key(|l| l.version);
    let mut out: Vec<Version> = Vec::new();
    for l in lines {
        let listed = listing
            .iter()
            .find(|v| v["version"].as_u64() == Some(l.version))
            .cloned()
            .unwrap_or(Value::Null);
        let began = l.log_ms.saturating_sub(l.total_ms as u64);
        let window_end = began + l.dump_ms as u64 + 2 * opts.memtick_ms + 300;
        let freeze = ticks
            .iter()
            .filter(|t| t.unix_ms >= began && t.unix_ms <= window_end)
            .max_by_key(|t| t.gap_ms);
        let created = listed.get("created").cloned().unwrap_or(Value::Null);
        let created_ms = created.as_str().and_then(|c| {
            let t = time::OffsetDateTime::parse(c, &time::format_description::well_known::Rfc3339)
                .ok()?;
            u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
        });
        let mut v = Version {
            version: l.version,
            group: l.group,
            log_ms: l.log_ms,
            frozen_ms: l.frozen_ms,
            dump_ms: l.dump_ms,
            total_ms: l.total_ms,
            upload_ms: stats::round(l.total_ms - l.dump_ms, 3),
            chunks_new: l.chunks_new,
            chunks_total: l.chunks_total,
            retained: l.retained,
            created,
            created_ms,
            bytes_new: listed
                .get("bytesNew")
                .and_then(Value::as_f64)
                .or(Some(l.bytes_new as f64)),
            bytes_total: listed
                .get("bytesTotal")
                .and_then(Value::as_f64)
                .or(Some(l.bytes_total as f64)),
            listed_chunks_new: listed.get("chunksNew").cloned().unwrap_or(Value::Null),
            mode: listed.get("mode").cloned().unwrap_or(Value::Null),
            valid: listed.get("valid").cloned().unwrap_or(Value::Null),
            freeze_tick: freeze.map(|t| t.tick),
            memtick_gap_ms: freeze.map(|t| t.gap_ms as f64),
            dirtied_bytes: None,
            dirtied_source: Some("base"),
            dirtied_bytes_by_ticks: None,
            dirtied_bytes_by_created: None,
            since_previous_ms: None,
            bound_bytes: None,
            bytes_over_bound: None,
        };
        if let Some(p) = out.last() {
            let by_time = match (v.created_ms, p.created_ms, period) {
                (Some(c), Some(pc), Some(period)) if period > 0.0 => {
                    let n = ((c.saturating_sub(pc)) as f64 / period * pages_per_tick as f64).floor()
                        as u64;
                    Some((n.min(pages) * PAGE) as f64)
                }
                _ => None,
            };
            let by_ticks = match (v.freeze_tick, p.freeze_tick) {
                (Some(f), Some(pf)) if v.version == p.version + 1 => {
                    Some(((f.saturating_sub(pf) * pages_per_tick).min(pages) * PAGE) as f64)
                }
                _ => None,
            };
            v.dirtied_bytes = by_ticks.or(by_time);
            v.dirtied_source = if by_ticks.is_some() {
                Some("memtick ticks between the freezes")
            } else if by_time.is_some() {
                Some("created stamps x memtick rate")
            } else {
                None
            };
            v.dirtied_bytes_by_ticks = by_ticks;
            v.dirtied_bytes_by_created = by_time;
            v.since_previous_ms = match (v.created_ms, p.created_ms) {
                (Some(c), Some(pc)) => Some(c as f64 - pc as f64),
                _ => None,
            };
            if let (Some(d), Some(b)) = (v.dirtied_bytes, v.bytes_new) {
                let bound = d * GOAL_BYTES_FACTOR + GOAL_BYTES_SLACK;
                v.bound_bytes = Some(bound);
                v.bytes_over_bound = Some(stats::round(b / bound, 3));
            }
        } else {
            v.dirtied_source = Some("base");
        }
        out.push(v);
    }
    out
}

/// The full checkpoints' figures of a level, and restores of its kept one.
#[derive(Debug, Serialize)]
struct FullSummary {
    frozen_ms: Option<Stats>,
    persist_ms: Option<Stats>,
    memtick_gap_ms: Option<Stats>,
    total_ms: Option<Stats>,
    size_bytes: Option<Stats>,
    restore_total_ms: Option<Stats>,
    restore_check_ms: Option<Stats>,
    restore_ticking_ms: Option<Stats>,
    continuity: Option<bool>,
    failed: usize,
}

fn all_continue(restores: &[Restore]) -> Option<bool> {
    (!restores.is_empty()).then(|| restores.iter().all(|r| r.continuity == Some(true)))
}

fn restore_stats(restores: &[Restore], f: fn(&Restore) -> Option<f64>) -> Option<Stats> {
    Stats::of(restores.iter().filter(|r| r.ok).map(f))
}

fn full_summary(full: Option<&FullLevel>, restores: &[Restore]) -> FullSummary {
    let cps: Vec<&FullCheckpoint> = full
        .map(|f| f.checkpoints.iter().filter(|c| c.ok).collect())
        .unwrap_or_default();
    let st = |f: fn(&FullCheckpoint) -> Option<f64>| Stats::of(cps.iter().map(|c| f(c)));
    FullSummary {
        frozen_ms: st(|c| c.frozen_ms),
        persist_ms: st(|c| c.persist_ms),
        memtick_gap_ms: st(|c| c.memtick_gap_ms),
        total_ms: st(|c| c.total_ms),
        size_bytes: st(|c| c.size_bytes),
        restore_total_ms: restore_stats(restores, |r| r.total_ms),
        restore_check_ms: restore_stats(restores, |r| r.check_ms),
        restore_ticking_ms: restore_stats(restores, |r| r.ticking_ms),
        continuity: all_continue(restores),
        failed: full.map_or(0, |f| f.checkpoints.iter().filter(|c| !c.ok).count())
            + restores.iter().filter(|r| !r.ok).count(),
    }
}

impl Bench<'_> {
    fn report(
        &self,
        fulls: &[FullLevel],
        tickers: &[TickerLevel],
        started: &str,
        load_before: &str,
        load_after: &str,
        staging: &str,
    ) -> Result<()> {
        let (opts, session) = (self.opts, self.session);
        let mut summaries = Vec::new();
        let mut out = String::new();
        let mut missed = 0;
        for k in tickers {
            let full = fulls.iter().find(|f| f.dirty_percent == k.dirty_percent);
            let fs = full_summary(full, &k.full_restores);
            let inc: Vec<&Version> = k.versions.iter().filter(|v| v.version >= 1).collect();
            let all = |f: fn(&Version) -> Option<f64>| Stats::of(k.versions.iter().map(f));
            let incs = |f: fn(&Version) -> Option<f64>| Stats::of(inc.iter().map(|v| f(v)));
            let base = k.versions.iter().find(|v| v.version == 0);
            let page_bytes = (opts.pages() * PAGE) as f64;
            let over: Vec<f64> = inc.iter().filter_map(|v| v.bytes_over_bound).collect();
            let over_max = over.iter().copied().reduce(f64::max);
            let over_median =
                stats::percentile(over.iter().map(|v| Some(*v)), 0.5).map(|m| stats::round(m, 3));
            let ticker = json!({
                "frozen_ms": all(|v| v.frozen_ms),
                "memtick_gap_ms": all(|v| v.memtick_gap_ms),
                "dump_ms": all(|v| Some(v.dump_ms)),
                "upload_ms": all(|v| Some(v.upload_ms)),
                "incremental_upload_ms": incs(|v| Some(v.upload_ms)),
                "base_upload_ms": base.map(|v| v.upload_ms),
                "since_previous_ms": incs(|v| v.since_previous_ms),
                "bytes_new": incs(|v| v.bytes_new),
                "dirtied_bytes": incs(|v| v.dirtied_bytes),
                "dirtied_percent": Stats::of(inc.iter().map(|v| v.dirtied_bytes.map(|d| d / page_bytes * 100.0))),
                "bound_bytes": incs(|v| v.bound_bytes),
                "bytes_over_bound": { "median": over_median, "max": over_max },
                "base_bytes": base.and_then(|v| v.bytes_new),
                "bytes_total": all(|v| v.bytes_total),
                "stored_bytes": k.stored_bytes, "store_du_bytes": k.store_du_bytes,
                "failed_ticks": k.failed_ticks,
                "restore_total_ms": restore_stats(&k.restores, |r| r.total_ms),
                "restore_check_ms": restore_stats(&k.restores, |r| r.check_ms),
                "restore_ticking_ms": restore_stats(&k.restores, |r| r.ticking_ms),
                "restored_version": k.restores.first().map(|r| r.version.clone()),
                "continuity": all_continue(&k.restores),
            });
            let frozen = median(&Stats::of(k.versions.iter().map(|v| v.frozen_ms)));
            let gap = median(&Stats::of(k.versions.iter().map(|v| v.memtick_gap_ms)));
            let restore = median(&restore_stats(&k.restores, |r| r.total_ms));
            let ticking = median(&restore_stats(&k.restores, |r| r.ticking_ms));
            let full_times_versions = median(&fs.size_bytes).map(|s| s * k.versions.len() as f64);
            let paired = stats::paired_median((0..opts.runs).map(|i| {
                let at = |rs: &[Restore]| {
                    rs.iter()
                        .find(|r| r.run == i && r.ok)
                        .and_then(|r| r.total_ms)
                };
                (at(&k.restores), at(&k.full_restores))
            }));
            let ratios = json!({
                "freeze": ratio(frozen, median(&fs.frozen_ms)),
                "memtick_gap": ratio(gap, median(&fs.memtick_gap_ms)),
                "stored_over_full": ratio(k.stored_bytes, full_times_versions),
                "restore": ratio(restore, median(&fs.restore_total_ms)),
                "restore_paired_median": paired,
                "restore_ticking": ratio(ticking, median(&fs.restore_ticking_ms)),
            });
            let continuity: Vec<bool> = [all_continue(&k.restores), fs.continuity]
                .into_iter()
                .flatten()
                .collect();
            let goals = [
                (
                    "bytes_per_version",
                    Goal {
                        value: over_max.map_or(Value::Null, Value::from),
                        goal: format!(
                            "every incremental version: bytes new <= {GOAL_BYTES_FACTOR} x dirtied + 1 MiB (value: the largest bytes/bound)"
                        ),
                        met: over_max.is_some_and(|v| v <= 1.0)
                            && inc.len() as u64 >= opts.ticks - 1,
                    },
                ),
                (
                    "freeze",
                    Goal::number(
                        ratio(frozen, median(&fs.frozen_ms)),
                        format!(
                            "median ticker freeze / median full checkpoint freeze (CRIU frozen) <= {GOAL_FREEZE_RATIO}"
                        ),
                        |v| v <= GOAL_FREEZE_RATIO,
                    ),
                ),
                (
                    "restore",
                    Goal::number(
                        ratio(restore, median(&fs.restore_total_ms)),
                        format!(
                            "median restore of the newest of {} versions / of a full checkpoint (migratectl totalMs) <= {GOAL_RESTORE_RATIO}",
                            opts.ticks
                        ),
                        |v| v <= GOAL_RESTORE_RATIO,
                    ),
                ),
                (
                    "continuity",
                    Goal {
                        value: if continuity.is_empty() {
                            Value::Null
                        } else {
                            continuity.iter().all(|c| *c).into()
                        },
                        goal: "every restored counter carries on".into(),
                        met: !continuity.is_empty() && continuity.iter().all(|c| *c),
                    },
                ),
            ];
            missed += goals.iter().filter(|(_, g)| !g.met).count();
            let goal = |name: &str| {
                &goals
                    .iter()
                    .find(|(n, _)| *n == name)
                    .expect("named goal")
                    .1
            };
            // The table of this store and level.
            let r = &ratios;
            let f1 = |v: Option<f64>| report::num(v, 1);
            let mb = |v: Option<f64>| report::num(v.map(|b| b / MIB), 1);
            let s1 = |v: Option<f64>| report::num(v.map(|ms| ms / 1000.0), 1);
            let t_med = |key: &str| ticker[key]["median"].as_f64();
            let mut t = Table::new(&["metric", "ticker", "full ckpt", "ratio", "goal", ""]);
            let mut row =
                |a: &str, b: String, c: String, d: Option<f64>, e: String, g: Option<&Goal>| {
                    t.row(vec![
                        format!("  {a}"),
                        b,
                        c,
                        d.map_or(String::new(), |d| format!("{d:.3}")),
                        e,
                        g.map_or(String::new(), |g| g.verdict().to_string()),
                    ]);
                };
            row(
                "freeze per tick, median ms",
                f1(frozen),
                f1(median(&fs.frozen_ms)),
                r["freeze"].as_f64(),
                format!("<= {GOAL_FREEZE_RATIO}"),
                Some(goal("freeze")),
            );
            row(
                "freeze per tick, p90 ms",
                f1(ticker["frozen_ms"]["p90"].as_f64()),
                f1(fs.frozen_ms.as_ref().map(|s| s.p90)),
                None,
                String::new(),
                None,
            );
            row(
                "memtick gap per tick, median ms",
                f1(gap),
                f1(median(&fs.memtick_gap_ms)),
                r["memtick_gap"].as_f64(),
                String::new(),
                None,
            );
            row(
                "dump, median ms",
                f1(t_med("dump_ms")),
                String::new(),
                None,
                String::new(),
                None,
            );
            row(
                "tick to tick, median s",
                s1(t_med("since_previous_ms")),
                String::new(),
                None,
                format!("interval {} s", k.interval_s),
                None,
            );
            row(
                "write after the dump, median ms",
                f1(t_med("incremental_upload_ms")),
                f1(median(&fs.persist_ms)),
                None,
                "upload / persist".into(),
                None,
            );
            row(
                "upload of version 0 (base), ms",
                f1(base.map(|v| v.upload_ms)),
                String::new(),
                None,
                String::new(),
                None,
            );
            row(
                "new per incr. version, median MiB",
                mb(t_med("bytes_new")),
                mb(median(&fs.size_bytes)),
                None,
                String::new(),
                None,
            );
            row(
                "dirtied per version, median MiB",
                mb(t_med("dirtied_bytes")),
                String::new(),
                None,
                format!("{} % of memory", f1(t_med("dirtied_percent"))),
                None,
            );
            row(
                "new / (1.5 x dirtied + 1 MiB)",
                format!("med {}", report::num(over_median, 3)),
                format!("max {}", report::num(over_max, 3)),
                None,
                "max <= 1".into(),
                Some(goal("bytes_per_version")),
            );
            row(
                &format!("stored after {} versions, MiB", k.versions.len()),
                mb(k.stored_bytes),
                mb(full_times_versions),
                r["stored_over_full"].as_f64(),
                String::new(),
                None,
            );
            row(
                "  (du of the store, MiB)",
                mb(k.store_du_bytes.map(|b| b as f64)),
                String::new(),
                None,
                String::new(),
                None,
            );
            row(
                "restore newest / full, median ms",
                f1(restore),
                f1(median(&fs.restore_total_ms)),
                r["restore"].as_f64(),
                format!("<= {GOAL_RESTORE_RATIO}"),
                Some(goal("restore")),
            );
            row(
                "  paired (run by run), median",
                String::new(),
                String::new(),
                paired,
                String::new(),
                None,
            );
            row(
                "  rebuild+check / check, ms",
                f1(t_med("restore_check_ms")),
                f1(median(&fs.restore_check_ms)),
                None,
                String::new(),
                None,
            );
            row(
                "  until ticking, median ms",
                f1(ticking),
                f1(median(&fs.restore_ticking_ms)),
                r["restore_ticking"].as_f64(),
                String::new(),
                None,
            );
            let word = |c: Option<bool>| c.map_or("null".to_string(), |c| c.to_string());
            row(
                "  counter carries on",
                word(all_continue(&k.restores)),
                word(fs.continuity),
                None,
                String::new(),
                Some(goal("continuity")),
            );
            out.push_str(&format!(
                "{} store, {} % dirtied per {} s tick, {} versions{}\n",
                k.store.as_str(),
                k.dirty_percent,
                k.interval_s,
                k.versions.len(),
                k.error.as_ref().map_or(String::new(), |e| format!("; {e}"))
            ));
            out.push_str(&t.render());
            out.push('\n');
            let goals_json: serde_json::Map<String, Value> = goals
                .iter()
                .map(|(n, g)| {
                    (
                        n.to_string(),
                        serde_json::to_value(g).unwrap_or(Value::Null),
                    )
                })
                .collect();
            summaries.push(json!({
                "store": k.store, "dirty_percent": k.dirty_percent, "interval_s": k.interval_s,
                "versions": k.versions.len(), "error": k.error,
                "ticker": ticker, "full": fs, "full_times_versions_bytes": full_times_versions,
                "ratios": ratios, "goals": goals_json,
            }));
        }
        let doc = json!({
            "summary": summaries,
            "config": {
                "ticks": opts.ticks, "mib": opts.mib, "runs": opts.runs, "memtick_interval_ms": opts.memtick_ms,
                "interval_s": { "file": opts.intervals(Store::File), "oci": opts.intervals(Store::Oci),
                    "per_level": "one for all levels, or one per --dirty level in order" },
                "version_group": opts.version_group, "keep_groups": opts.keep_groups, "image": IMAGE,
                "work_dir": session.work, "work_dir_fs": machine::fs_type(&session.work), "staging": staging,
                "ticker": "ctr run --runtime io.containerd.migrate.v1 with io.containerd.migrate.checkpoint.{interval,version-group,keep-groups,store}; memtick --mib MIB --interval-ms MEMTICK_MS --dirty-percent X*MEMTICK_MS/INTERVAL",
                "full": "migratectl checkpoint create --root DIR --json ID of the same workload without a ticker, one interval apart (dirty rate of the first store's interval); restore: migratectl restore --root DIR --checkpoint CP --as NEW --detach",
                "chain_restore": "migratectl restore --store URL --container ID --version TICKS-1 --image IMAGE --as NEW --detach (checkMs = rebuild from chunks + size check)",
                "stores": "one per level: file:// a directory in the work dir; oci:// a docker-registry on 127.0.0.1 with its storage in the work dir, removed after the level",
                "freeze": "frozen_ms is the frozen time the checkpoint records, from the shim's `ticker-version` log line / migratectl frozenMs; memtick_gap_ms is memtick's largest tick gap around the dump and includes up to one memtick interval",
                "dirtied": "pages memtick dirtied between two versions' freezes: memtick ticks between the ticks that ended the freezes x pages per tick, capped at MIB; else created-stamp difference x measured tick rate",
                "stored_bytes": "sum of the versions' bytesNew (each distinct chunk counted once, plaintext); store_du_bytes: apparent size of the store's files (manifests, file system or registry overhead)",
            },
            "machine": session.machine(machine::CODE_PATHS, load_before, load_after),
            "started": started, "finished": machine::now_utc(),
            "samples": { "ticker": tickers, "full": fulls },
        });
        report::write_json(&session.out, &doc)?;
        print!("{out}");
        println!(
            "(medians; {} ticks of {} MiB; {} full checkpoints per level; {} restores of each kind, alternating; load {load_before} -> {load_after})",
            opts.ticks, opts.mib, opts.runs, opts.runs
        );
        if missed == 0 {
            say("all goals met");
        } else {
            say(format!("{missed} goal(s) MISSED"));
        }
        let series = |f: fn(&Version) -> Option<f64>| -> Vec<Series> {
            tickers
                .iter()
                .map(|k| Series {
                    name: format!("{} {} %", k.store.as_str(), k.dirty_percent),
                    points: k
                        .versions
                        .iter()
                        .filter_map(|v| Some((v.version as f64, f(v)?)))
                        .collect(),
                })
                .collect()
        };
        plot::lines(
            &session.plot_path("frozen"),
            &Labels {
                title: "Checkpoint ticker: frozen time per version",
                x: "version",
                y: "frozen (ms)",
            },
            &series(|v| v.frozen_ms),
        )?;
        plot::lines(
            &session.plot_path("bytes"),
            &Labels {
                title: "Checkpoint ticker: new bytes stored per version",
                x: "version",
                y: "new (MiB)",
            },
            &series(|v| v.bytes_new.map(|b| b / MIB)),
        )?;
        Ok(())
    }
}
