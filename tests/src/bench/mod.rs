//! The benchmark program's parts: a session (private containerd, private
//! copies of the binaries, a work dir), statistics, reports and plots, the
//! machine description, and one module per benchmark.
//!
//! Figures come from structured data only: checkpoint manifests' timings,
//! `migratectl ... --json`, memtick's `key=value` lines, /proc, and the
//! shim's `ticker-version key=value ...` log line.

pub mod bandwidth;
pub mod checkpoint;
pub mod control_plane;
pub mod control_plane_daemons;
pub mod control_plane_fleet;
pub mod control_plane_report;
pub mod ha;
pub mod ha_report;
pub mod ha_trial;
pub mod http_probe;
pub mod interrupt;
pub mod link;
pub mod load;
pub mod machine;
pub mod memtick_workload;
pub mod migrate;
pub mod migrate_report;
pub mod migrate_run;
pub mod plot;
pub mod report;
pub mod session;
pub mod shim;
pub mod startup;
pub mod stats;
pub mod ticker;
pub mod ticker_log;
pub mod wire;
pub mod workloads;

use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use clap::Args;

/// Options every benchmark takes.
#[derive(Args, Clone, Debug)]
pub struct Common {
    /// Where the JSON results go [default: <repo>/target/bench/<benchmark>.json];
    /// the PNG plots go beside it.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Name of the private containerd (hack/containerd.sh), destroyed at the end
    /// [default: bench-<benchmark>].
    #[arg(long)]
    pub instance: Option<String>,
    /// Where the work dir (image directories, checkpoint stores) goes: disk, not tmpfs.
    #[arg(long, default_value = "/var/tmp")]
    pub work_base: PathBuf,
    /// Use target/release's shim and migratectl as they are (no cargo build).
    #[arg(long)]
    pub skip_build: bool,
}

/// Milliseconds since `t0`, to the microsecond.
pub fn ms_since(t0: Instant) -> f64 {
    stats::round(t0.elapsed().as_secs_f64() * 1000.0, 3)
}

/// Wall clock milliseconds since the epoch (memtick stamps its ticks so).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `cargo build --release --workspace --all-targets`, the build of
/// hack/test.sh (so a no-op after it: with `-p` or without the test
/// targets Cargo unifies features differently and builds the workspace's
/// crates again). On failure the binaries already in target/release are
/// used, and the returned note says so: the tree is shared, and someone's
/// half-done change must not stop a benchmark.
pub fn build_workspace() -> Option<String> {
    say("building the workspace (cargo build --release --workspace --all-targets)");
    let mut cmd = std::process::Command::new("cargo");
    cmd.current_dir(containerd_migrate_tests::fixture::repo_root())
        .args([
            "build",
            "--quiet",
            "--release",
            "--workspace",
            "--all-targets",
        ]);
    match containerd_migrate_tests::process::run_within(cmd, std::time::Duration::from_secs(3600)) {
        Ok(out) if out.success() => None,
        other => {
            let note = "cargo build failed; the existing binaries were used".to_string();
            say(format!("WARNING: {note}\n{other:?}"));
            Some(note)
        }
    }
}

/// Progress for the person watching, on stderr (stdout has the tables).
pub fn say(msg: impl std::fmt::Display) {
    eprintln!("==> {msg}");
}
