//! memtick as a benchmark workload: started in a container of the session,
//! its counter read from the host side of the rootfs (polled every few ms)
//! or with `ctr t exec`, and the largest tick gap in its output within a
//! wall-clock window.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use containerd_migrate_tests::fixture::IMAGE;
use containerd_migrate_tests::memtick::TickLine;

use super::session::Session;

/// memtick's `--out` file inside the container.
pub const TICK_FILE: &str = "/tmp/tick";

/// How memtick runs: its memory, tick interval and dirty rate.
pub struct Workload<'a> {
    pub runtime: &'a str,
    pub mib: u64,
    pub interval_ms: u64,
    /// `--dirty-percent`, when the workload dirties pages per tick.
    pub dirty_percent: Option<String>,
    /// Extra `ctr run` options (annotations).
    pub run_opts: Vec<String>,
}

/// Where the container's output goes (`--log-uri file://...`).
pub fn log_path(session: &Session, id: &str) -> std::path::PathBuf {
    session.work.join("logs").join(format!("{id}.log"))
}

/// Starts memtick in container `id` and waits until it has ticked `warm`
/// times (120 s at most).
pub fn start(session: &Session, id: &str, w: &Workload, warm: u64) -> Result<(), String> {
    let log = log_path(session, id);
    std::fs::create_dir_all(log.parent().expect("logs dir")).map_err(|e| e.to_string())?;
    let log_uri = format!("file://{}", log.display());
    let mib = w.mib.to_string();
    let interval = w.interval_ms.to_string();
    let mut args: Vec<&str> = vec!["run", "-d", "--runtime", w.runtime, "--log-uri", &log_uri];
    args.extend(w.run_opts.iter().map(String::as_str));
    args.extend([
        IMAGE,
        id,
        "/usr/local/bin/memtick",
        "--mib",
        &mib,
        "--interval-ms",
        &interval,
    ]);
    if let Some(p) = &w.dirty_percent {
        args.extend(["--dirty-percent", p]);
    }
    args.extend(["--out", TICK_FILE]);
    let out = session.run_ctr(&args, Duration::from_secs(180))?;
    if !out.success() {
        return Err(format!(
            "memtick did not start: {}",
            out.stderr_str().trim()
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if host_tick(session, id).is_ok_and(|t| t.tick >= warm) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!(
        "memtick did not tick {warm} times within 120 s: {}",
        tail(&log, 3)
    ))
}

/// The counter line, read from the host through the container's rootfs.
pub fn host_tick(session: &Session, id: &str) -> Result<TickLine, String> {
    TickLine::read(&session.rootfs_file(id, TICK_FILE))
}

/// The counter line, read inside the container with `ctr t exec`.
pub fn exec_tick(session: &Session, id: &str) -> Result<TickLine, String> {
    static EXECS: AtomicUsize = AtomicUsize::new(0);
    let exec_id = format!("peek-{}", EXECS.fetch_add(1, Ordering::Relaxed));
    let out = session.run_ctr(
        &["tasks", "exec", "--exec-id", &exec_id, id, "cat", TICK_FILE],
        Duration::from_secs(60),
    )?;
    TickLine::parse(&out.stdout_str())
        .ok_or_else(|| format!("could not read {TICK_FILE} with ctr t exec: {out}"))
}

/// Polls until container `id`'s counter shows a tick written at or after
/// wall-clock `since_ms`, or `limit` passes.
pub fn wait_tick_after(
    session: &Session,
    id: &str,
    since_ms: u64,
    limit: Duration,
) -> Option<TickLine> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(t) = host_tick(session, id)
            && t.unix_ms >= since_ms
        {
            return Some(t);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// Every tick line memtick printed to its output so far.
pub fn logged_ticks(log: &Path) -> Vec<TickLine> {
    std::fs::read_to_string(log)
        .map(|t| t.lines().filter_map(TickLine::parse).collect())
        .unwrap_or_default()
}

/// The largest gap of a tick stamped within [from_ms, to_ms], or 0.
pub fn window_gap(ticks: &[TickLine], from_ms: u64, to_ms: u64) -> u64 {
    ticks
        .iter()
        .filter(|t| t.unix_ms >= from_ms && t.unix_ms <= to_ms)
        .map(|t| t.gap_ms)
        .max()
        .unwrap_or(0)
}

/// The last `n` lines of a file, joined, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" ")
}

/// Waits (2 minutes at most) until MemAvailable holds `need_mib`; measures
/// anyway after that, with a warning.
pub fn wait_for_memory(need_mib: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let avail = super::machine::mem_available_kib().unwrap_or(u64::MAX) / 1024;
        if avail >= need_mib {
            return;
        }
        if Instant::now() >= deadline {
            super::say(format!(
                "WARNING: only {avail} MiB available, {need_mib} MiB wanted; measuring anyway"
            ));
            return;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_in_window() {
        let t = |unix_ms, gap_ms| TickLine {
            tick: 0,
            gap_ms,
            max_gap_ms: 0,
            unix_ms,
            max_wall_gap_ms: None,
        };
        let ticks = [t(100, 10), t(200, 300), t(300, 50), t(400, 900)];
        assert_eq!(window_gap(&ticks, 150, 350), 300);
        assert_eq!(window_gap(&ticks, 500, 600), 0);
    }
}
