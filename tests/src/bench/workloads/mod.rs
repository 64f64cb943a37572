//! The five workloads of issue 15's migration benchmark (seed 002's): what
//! runs in the container at a given memory size, which image it needs, and
//! how its clients load it. Every workload has a clock, memtick writing its
//! ticks to /tmp/tick, so the downtime "as the process lived it" is read the
//! same way for all: the largest gap between ticks on the wall clock.
//!
//! - [`idle`]: memtick with its memory touched once, and echo-server;
//! - [`httpd`]: busybox httpd serving a static file, memtick as ballast;
//! - [`redis`]: Debian's redis-server filled to the size, a small memtick;
//! - [`cpu`]: a sha256 loop, memtick as ballast, and echo-server;
//! - [`dirty`]: memtick rewriting a share of its memory every second, and
//!   echo-server.

pub mod cpu;
pub mod dirty;
pub mod httpd;
pub mod idle;
pub mod redis;

use std::time::Duration;

use serde::Serialize;

use super::load::Protocol;

/// memtick's tick interval in every workload: the resolution of the
/// downtime as the process lived it.
pub const INTERVAL_MS: u64 = 10;
/// memtick's `--out` file inside the container.
pub const TICK_FILE: &str = "/tmp/tick";
/// Where memtick's stdout goes, a line per tick: the ticks of a window, for
/// the largest gap within it (the tick file holds only the last, and
/// memtick's own maximum only says something when the migration made a new
/// one). It grows by about 6 KiB a second in the container's writable
/// layer, which a migration carries too.
pub const TICK_LOG: &str = "/tmp/ticks.log";
/// The port echo-server listens on where a workload has one.
pub const ECHO_PORT: u16 = 7;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    Idle,
    Httpd,
    Redis,
    Cpu,
    Dirty,
}

/// The workloads in the order of the issue.
pub const ALL: [Workload; 5] = [
    Workload::Idle,
    Workload::Httpd,
    Workload::Redis,
    Workload::Cpu,
    Workload::Dirty,
];

/// An image a workload runs, and the script that builds and imports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Image {
    pub name: &'static str,
    /// Under hack/: `SCRIPT build` makes the archive (cached), `SCRIPT
    /// import ADDRESS` imports it.
    pub script: &'static str,
}

/// The busybox test image (hack/images.sh): memtick, echo-server, httpd.
pub const TESTBOX: Image = Image {
    name: containerd_migrate_tests::fixture::IMAGE,
    script: "images.sh",
};

/// What a workload's container runs and how it is loaded.
#[derive(Clone, Debug, Serialize)]
pub struct Spec {
    #[serde(skip)]
    pub image: Image,
    /// The container's command.
    pub argv: Vec<String>,
    /// Run in the container (`ctr t exec`) once memtick ticks, before any
    /// client: fills the service's memory.
    pub fill: Option<Vec<String>>,
    /// The service clients load, where there is one.
    pub client: Option<ClientSpec>,
    /// One line for the results file.
    pub described: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ClientSpec {
    pub protocol: Protocol,
    pub port: u16,
    /// The pause after each answer.
    pub pause: Duration,
}

/// Knobs of the workloads the command line sets.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// `dirty`: the share of its memory rewritten per second, in per cent.
    pub dirty_percent_per_sec: f64,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Idle => "idle",
            Workload::Httpd => "httpd",
            Workload::Redis => "redis",
            Workload::Cpu => "cpu",
            Workload::Dirty => "dirty",
        }
    }

    /// Its container at `mib` MiB.
    pub fn spec(self, mib: u64, tuning: Tuning) -> Spec {
        match self {
            Workload::Idle => idle::spec(mib),
            Workload::Httpd => httpd::spec(mib),
            Workload::Redis => redis::spec(mib),
            Workload::Cpu => cpu::spec(mib),
            Workload::Dirty => dirty::spec(mib, tuning.dirty_percent_per_sec),
        }
    }

    /// Whether its downtime counts for the post-copy goal (≤ 100 ms):
    /// workloads 1-4 of the issue; one dirtying its memory fast is exempt.
    pub fn has_downtime_goal(self) -> bool {
        self != Workload::Dirty
    }
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// memtick's command in a workload's shell script: `mib` MiB, ticking every
/// [`INTERVAL_MS`] into [`TICK_FILE`], every tick line also appended to
/// [`TICK_LOG`], rewriting `dirty_percent` of its pages per tick.
pub fn memtick(mib: u64, dirty_percent: Option<f64>) -> String {
    let dirty = dirty_percent.map_or(String::new(), |p| format!(" --dirty-percent {p}"));
    format!(
        "/usr/local/bin/memtick --mib {mib} --interval-ms {INTERVAL_MS}{dirty} --out {TICK_FILE} >>{TICK_LOG}"
    )
}

/// `sh -c SCRIPT`: several processes in one container.
pub fn shell(script: String) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script]
}

/// The pinging client of the workloads whose only service is echo-server.
pub fn echo_client() -> ClientSpec {
    ClientSpec {
        protocol: Protocol::Echo,
        port: ECHO_PORT,
        pause: Duration::from_millis(10),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_workload_ticks() {
        let tuning = Tuning {
            dirty_percent_per_sec: 50.0,
        };
        for w in ALL {
            let spec = w.spec(64, tuning);
            let cmd = spec.argv.join(" ");
            assert!(cmd.contains("memtick"), "{w}: {cmd}");
            assert!(cmd.contains(TICK_FILE), "{w}: {cmd}");
        }
        let dirty = Workload::Dirty.spec(64, tuning).argv.join(" ");
        // 50 %/s at 100 ticks/s.
        assert!(dirty.contains("--dirty-percent 0.5"), "{dirty}");
    }
}
