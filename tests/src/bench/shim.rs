//! Shim benchmark: io.containerd.migrate.v1 against io.containerd.runc.v2,
//! `ctr run --rm /bin/true` latency (interleaved runs) and the resident
//! memory of one shim per running container.
//!
//! 1. latency: `--warmup` discarded runs, then `--runs` timed runs per
//!    runtime, in the order runc, migrate, runc, migrate, ... so machine
//!    noise hits both alike; p10/p50/p90/mean and the migrate/runc ratio of
//!    the medians (and the median of the per-pair ratios).
//! 2. memory: `--shims` `sleep 100000` containers per runtime (started
//!    interleaved); each container's shim is its task's parent (the shim is
//!    the subreaper); the median VmRSS (/proc/PID/status) and Pss
//!    (/proc/PID/smaps_rollup).
//!
//! Goals of the shim foundation issue (migrate / runc): latency p50 <= 1.05,
//! shim RSS p50 <= 0.50.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;
use containerd_migrate_tests::fixture::{IMAGE, MIGRATE_V1, RUNC_V2};
use serde::Serialize;
use serde_json::json;

use super::report::{self, Goal, Table};
use super::session::{Needs, Session};
use super::stats::{self, Stats, median, ratio};
use super::{Common, machine, ms_since, say};

const LATENCY_GOAL: f64 = 1.05;
const RSS_GOAL: f64 = 0.50;
const RUNTIMES: [&str; 2] = [RUNC_V2, MIGRATE_V1];

#[derive(Args, Debug)]
pub struct Options {
    /// Timed runs per runtime (at least 20 for the numbers).
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u64).range(1..))]
    pub runs: u64,
    /// Discarded runs per runtime before them.
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
    /// Long-running containers (= shims) per runtime.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub shims: u64,
    /// Seconds to let the shims settle before reading their memory.
    #[arg(long, default_value_t = 2)]
    pub settle: u64,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Serialize)]
struct Latency {
    runtime: &'static str,
    i: u64,
    warmup: bool,
    ms: f64,
}

/// Memory figures of one shim, KiB.
#[derive(Debug, Serialize)]
struct Memory {
    runtime: &'static str,
    id: String,
    pid: u32,
    exe: String,
    vmrss_kib: Option<f64>,
    rss_anon_kib: Option<f64>,
    rss_file_kib: Option<f64>,
    threads: Option<f64>,
    pss_kib: Option<f64>,
    pss_anon_kib: Option<f64>,
    pss_file_kib: Option<f64>,
}

fn short(runtime: &str) -> String {
    runtime
        .trim_start_matches("io.containerd.")
        .replace('.', "-")
}

pub fn run(opts: Options) -> Result<()> {
    if opts.runs < 20 {
        say(format!(
            "note: --runs {}; the issue asks for at least 20 runs per runtime",
            opts.runs
        ));
    }
    let session = Session::start(
        &opts.common,
        Needs {
            name: "shim",
            migratectl: false,
            private_runtime_dir: false,
        },
    )?;
    let load_before = machine::loadavg();
    let started = machine::now_utc();

    say(format!(
        "latency: {} warm-up + {} timed runs per runtime, interleaved",
        opts.warmup, opts.runs
    ));
    let mut latency = Vec::new();
    for i in 0..opts.warmup + opts.runs {
        for runtime in RUNTIMES {
            let id = format!("bench-{}-{i}", short(runtime));
            let t0 = Instant::now();
            let out = session
                .run_ctr(
                    &["run", "--rm", "--runtime", runtime, IMAGE, &id, "/bin/true"],
                    Duration::from_secs(120),
                )
                .map_err(anyhow::Error::msg)?;
            let ms = ms_since(t0);
            if !out.success() {
                bail!("ctr run --runtime {runtime} {id} failed\n{out}");
            }
            latency.push(Latency {
                runtime,
                i,
                warmup: i < opts.warmup,
                ms,
            });
        }
        eprint!("\r    {}/{}", i + 1, opts.warmup + opts.runs);
    }
    eprintln!();

    say(format!(
        "memory: {} long-running containers per runtime",
        opts.shims
    ));
    let mut long_ids = Vec::new();
    let result = (|| -> Result<Vec<Memory>> {
        for i in 0..opts.shims {
            for runtime in RUNTIMES {
                let id = format!("bench-sleep-{}-{i}", short(runtime));
                long_ids.push(id.clone());
                let out = session
                    .run_ctr(
                        &[
                            "run",
                            "-d",
                            "--runtime",
                            runtime,
                            IMAGE,
                            &id,
                            "sleep",
                            "100000",
                        ],
                        Duration::from_secs(120),
                    )
                    .map_err(anyhow::Error::msg)?;
                if !out.success() {
                    bail!("ctr run -d --runtime {runtime} {id} failed\n{out}");
                }
            }
        }
        std::thread::sleep(Duration::from_secs(opts.settle));
        let mut memory = Vec::new();
        for i in 0..opts.shims {
            for runtime in RUNTIMES {
                let id = format!("bench-sleep-{}-{i}", short(runtime));
                let pid = shim_pid(&session, &id)?;
                memory.push(memory_of(runtime, &id, pid)?);
            }
        }
        Ok(memory)
    })();
    let load_after = machine::loadavg();
    say("removing the long-running containers");
    session.remove(&long_ids.iter().map(String::as_str).collect::<Vec<_>>());
    let memory = result?;
    // One shim per container, or the per-shim figure would be meaningless.
    let mut pids: Vec<u32> = memory.iter().map(|m| m.pid).collect();
    pids.sort_unstable();
    pids.dedup();
    if pids.len() as u64 != 2 * opts.shims {
        bail!(
            "expected {} distinct shims, found {}",
            2 * opts.shims,
            pids.len()
        );
    }
    let shim_copy = session
        .bins
        .dir
        .join(containerd_migrate_tests::fixture::MIGRATE_SHIM_BINARY);
    if let Some(m) = memory
        .iter()
        .find(|m| m.runtime == MIGRATE_V1 && m.exe != shim_copy.display().to_string())
    {
        bail!(
            "the migrate shims do not run {}: {}",
            shim_copy.display(),
            m.exe
        );
    }

    // ------------------------------------------------------------ results
    let lat = |rt: &str| {
        Stats::of(
            latency
                .iter()
                .filter(|l| l.runtime == rt && !l.warmup)
                .map(|l| Some(l.ms)),
        )
    };
    let mem = |rt: &str, f: fn(&Memory) -> Option<f64>| {
        Stats::of(
            memory
                .iter()
                .filter(|m| m.runtime == rt)
                .map(|m| f(m).map(|k| k / 1024.0)),
        )
    };
    let (lat_runc, lat_migrate) = (lat(RUNC_V2), lat(MIGRATE_V1));
    let (rss_runc, rss_migrate) = (
        mem(RUNC_V2, |m| m.vmrss_kib),
        mem(MIGRATE_V1, |m| m.vmrss_kib),
    );
    let (pss_runc, pss_migrate) = (mem(RUNC_V2, |m| m.pss_kib), mem(MIGRATE_V1, |m| m.pss_kib));
    let mean = |s: &Option<Stats>| s.as_ref().map(|s| s.mean);
    // Median of migrate/runc within each interleaved pair: robust to slow
    // drift in machine load.
    let paired = stats::paired_median((opts.warmup..opts.warmup + opts.runs).map(|i| {
        let at = |rt: &str| {
            latency
                .iter()
                .find(|l| l.i == i && l.runtime == rt)
                .map(|l| l.ms)
        };
        (at(MIGRATE_V1), at(RUNC_V2))
    }));
    let latency_p50 = ratio(median(&lat_migrate), median(&lat_runc));
    let rss_p50 = ratio(median(&rss_migrate), median(&rss_runc));
    let latency_goal = Goal::number(latency_p50, format!("<= {LATENCY_GOAL}"), |v| {
        v <= LATENCY_GOAL
    });
    let rss_goal = Goal::number(rss_p50, format!("<= {RSS_GOAL}"), |v| v <= RSS_GOAL);
    let summary = json!({
        "latency_ms": { RUNC_V2: lat_runc, MIGRATE_V1: lat_migrate },
        "shim_rss_mib": { RUNC_V2: rss_runc, MIGRATE_V1: rss_migrate },
        "shim_pss_mib": { RUNC_V2: pss_runc, MIGRATE_V1: pss_migrate },
        "ratios": {
            "latency_p50": latency_p50,
            "latency_mean": ratio(mean(&lat_migrate), mean(&lat_runc)),
            "latency_paired_p50": paired,
            "shim_rss_p50": rss_p50,
            "shim_pss_p50": ratio(median(&pss_migrate), median(&pss_runc)),
        },
        "goals": {
            "latency_p50_max": LATENCY_GOAL, "shim_rss_p50_max": RSS_GOAL,
            "latency": latency_goal, "rss": rss_goal,
            "latency_met": latency_goal.met, "rss_met": rss_goal.met,
        },
    });
    let mut machine_json = session.machine(
        &["shim", "Cargo.toml", "Cargo.lock"],
        &load_before,
        &load_after,
    );
    machine_json["runc_v2_shim"] = containerd_migrate_tests::host::which("containerd-shim-runc-v2")
        .map(|p| p.display().to_string())
        .into();
    let doc = json!({
        "summary": summary,
        "config": {
            "runs": opts.runs, "warmup": opts.warmup, "shims": opts.shims, "settle_s": opts.settle, "image": IMAGE,
            "latency_command": "ctr run --rm --runtime R IMAGE ID /bin/true",
            "order": "interleaved: runc.v2, migrate.v1, runc.v2, ...; warm-up samples are marked and not in the summary",
        },
        "machine": machine_json,
        "started": started, "finished": machine::now_utc(),
        "samples": { "latency_ms": latency, "memory": memory },
    });
    report::write_json(&session.out, &doc)?;

    let mut t = Table::new(&["metric", "runc.v2", "migrate.v1", "ratio", "goal", ""]);
    let row = |t: &mut Table, name: String, a: Option<f64>, b: Option<f64>, goal: Option<&Goal>| {
        t.row(vec![
            name,
            report::num(a, 1),
            report::num(b, 1),
            report::num(ratio(b, a), 2),
            goal.map_or(String::new(), |g| g.goal.clone()),
            goal.map_or(String::new(), |g| g.verdict().to_string()),
        ]);
    };
    let pick = |s: &Option<Stats>, f: fn(&Stats) -> f64| s.as_ref().map(f);
    row(
        &mut t,
        "ctr run --rm /bin/true p50 ms".into(),
        median(&lat_runc),
        median(&lat_migrate),
        Some(&latency_goal),
    );
    row(
        &mut t,
        "ctr run --rm /bin/true p10 ms".into(),
        pick(&lat_runc, |s| s.p10),
        pick(&lat_migrate, |s| s.p10),
        None,
    );
    row(
        &mut t,
        "ctr run --rm /bin/true p90 ms".into(),
        pick(&lat_runc, |s| s.p90),
        pick(&lat_migrate, |s| s.p90),
        None,
    );
    row(
        &mut t,
        "ctr run --rm /bin/true mean ms".into(),
        mean(&lat_runc),
        mean(&lat_migrate),
        None,
    );
    row(
        &mut t,
        format!("shim RSS MiB (median of {})", opts.shims),
        median(&rss_runc),
        median(&rss_migrate),
        Some(&rss_goal),
    );
    row(
        &mut t,
        format!("shim Pss MiB (median of {})", opts.shims),
        median(&pss_runc),
        median(&pss_migrate),
        None,
    );
    print!("{}", t.render());
    println!(
        "({} timed + {} warm-up runs per runtime, interleaved; paired p50 ratio {}; load {load_before} -> {load_after})",
        opts.runs,
        opts.warmup,
        report::num(paired, 3)
    );
    if super::session::sha256(&session.bins.shim_built_as) != session.bins.shim_sha256 {
        say(format!(
            "note: {} changed during the run (rebuilt by someone?); the run used the copy taken at the start",
            session.bins.shim_built_as.display()
        ));
    }
    Ok(())
}

/// The shim of running container `id`: the parent of its task, checked to
/// be that container's shim and not, say, init.
fn shim_pid(session: &Session, id: &str) -> Result<u32> {
    let task = session
        .ctr
        .tasks()
        .into_iter()
        .find(|t| t.id == id && t.status == "RUNNING")
        .ok_or_else(|| anyhow::anyhow!("container {id} has no running task"))?;
    let status = std::fs::read_to_string(format!("/proc/{}/status", task.pid))?;
    let ppid: u32 = proc_field(&status, "PPid")
        .ok_or_else(|| anyhow::anyhow!("no PPid for task {}", task.pid))?
        as u32;
    let args = containerd_migrate_tests::host::cmdline(ppid).unwrap_or_default();
    if !args.windows(2).any(|w| w[0] == "-id" && w[1] == id) {
        bail!(
            "parent {ppid} of task {} ({id}) is not its shim: {}",
            task.pid,
            args.join(" ")
        );
    }
    Ok(ppid)
}

fn memory_of(runtime: &'static str, id: &str, pid: u32) -> Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    Ok(Memory {
        runtime,
        id: id.to_string(),
        pid,
        exe,
        vmrss_kib: proc_field(&status, "VmRSS"),
        rss_anon_kib: proc_field(&status, "RssAnon"),
        rss_file_kib: proc_field(&status, "RssFile"),
        threads: proc_field(&status, "Threads"),
        pss_kib: proc_field(&rollup, "Pss"),
        pss_anon_kib: proc_field(&rollup, "Pss_Anon"),
        pss_file_kib: proc_field(&rollup, "Pss_File"),
    })
}

/// A `Name:  N [kB]` field of a /proc file.
fn proc_field(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields() {
        let status = "Name:\tshim\nVmRSS:\t   5120 kB\nThreads:\t4\n";
        assert_eq!(proc_field(status, "VmRSS"), Some(5120.0));
        assert_eq!(proc_field(status, "Threads"), Some(4.0));
        assert_eq!(
            proc_field("Pss_Anon:  12 kB\nPss:  30 kB\n", "Pss"),
            Some(30.0)
        );
    }
}
