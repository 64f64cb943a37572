//! What both start-up apps do with their containers: the image from its
//! hack/bench script, `ctr run -d` under this runtime with the output in a
//! log file, a ready-point container waited for until its checkpoint is
//! committed, and the facts a start leaves (CRIU's restore log, the
//! checkpoint's manifest, the shim's CPU time).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use containerd_migrate_tests::fixture::MIGRATE_V1;
use containerd_migrate_tests::{host, process};
use serde_json::{Value, json};

use super::super::checkpoint::criu_log_seconds;
use super::super::session::{Session, du_bytes, hack};
use super::super::{ms_since, stats};

const ANNOTATION: &str = "io.containerd.migrate";

/// `--annotation io.containerd.migrate.NAME=VALUE`, as `ctr run` takes it.
pub fn annotation(name: &str, value: impl std::fmt::Display) -> [String; 2] {
    [
        "--annotation".into(),
        format!("{ANNOTATION}.{name}={value}"),
    ]
}

/// The options of a start from the checkpoint in `dir`.
pub fn restore_from(dir: &Path) -> Vec<String> {
    annotation("restore-from", format!("file://{}", dir.display())).to_vec()
}

/// An app's image and the command its containers run.
pub struct Image {
    pub name: String,
    pub command: Vec<String>,
}

impl Image {
    /// Builds (or finds cached) the image of hack/bench/`script` and imports
    /// it into the session's containerd.
    pub fn prepare(script: &str, session: &Session) -> Result<Image> {
        let run = |args: &[&str]| -> Result<String> {
            let out = process::run(
                hack(&format!("bench/{script}"), args),
                None,
                Duration::from_secs(900),
            );
            if !out.success() {
                bail!("hack/bench/{script} {} failed\n{out}", args.join(" "));
            }
            Ok(out.stdout_str())
        };
        run(&["build"]).with_context(|| format!("building the image of hack/bench/{script}"))?;
        let image = Image {
            name: run(&["name"])?.trim().to_string(),
            command: run(&["command"])?.lines().map(String::from).collect(),
        };
        run(&["import", session.ctr.address()])?;
        Ok(image)
    }
}

/// A ready-point checkpoint once committed, and what it took.
pub struct ReadyPoint {
    pub dir: PathBuf,
    /// From just before `ctr run` until its manifest.json was there.
    pub after_ms: f64,
    /// The CPU the container's shim had used by then (its probe's share).
    pub shim_cpu_s: Option<f64>,
    /// [`manifest_summary`] of the checkpoint.
    pub manifest: Value,
    pub dir_bytes: Option<u64>,
}

/// Starts containers of one image in the session's containerd.
pub struct Launcher<'a> {
    pub session: &'a Session,
    pub image: Image,
    /// How long a start, or a ready point, may take.
    pub timeout: Duration,
}

impl Launcher<'_> {
    /// Container `id`'s output (stdout and stderr).
    pub fn log(&self, id: &str) -> PathBuf {
        self.session.work.join("logs").join(format!("{id}.log"))
    }

    /// `ctr run -d` of the image's command in container `id`, with `opts`
    /// (annotations) and the output in [`Launcher::log`].
    pub fn start(&self, id: &str, opts: &[String]) -> Result<(), String> {
        let log_uri = format!("file://{}", self.log(id).display());
        let mut args: Vec<&str> = vec!["run", "-d", "--runtime", MIGRATE_V1, "--log-uri", &log_uri];
        args.extend(opts.iter().map(String::as_str));
        args.extend([self.image.name.as_str(), id]);
        args.extend(self.image.command.iter().map(String::as_str));
        let out = self.session.run_ctr(&args, self.timeout)?;
        if out.success() {
            Ok(())
        } else {
            Err(format!("ctr run failed: {}", out.stderr_str().trim()))
        }
    }

    /// Starts container `id` with the ready-point annotations `probe`
    /// (`checkpoint-when-ready` and its settings) into `store`, and waits,
    /// without touching the app, until its checkpoint is committed there.
    /// Fails early when the shim logs that the probe gave up or the
    /// checkpoint failed, or when the container stops.
    pub fn ready_point(
        &self,
        id: &str,
        probe: &[String],
        store: &Path,
    ) -> Result<ReadyPoint, String> {
        let dir = store.join(format!("{id}-ready"));
        let mut opts = probe.to_vec();
        opts.extend(annotation(
            "checkpoint-when-ready.store",
            format!("file://{}", store.display()),
        ));
        let t0 = Instant::now();
        self.start(id, &opts)?;
        let manifest = dir.join("manifest.json");
        let mut checked = Instant::now();
        while !manifest.is_file() {
            // Once a second, what the shim said and whether the container
            // still runs. Not "!= RUNNING": while it waits for its probe, the
            // shim can be too busy to answer containerd's State in time (ctr
            // then shows UNKNOWN).
            if checked.elapsed() >= Duration::from_secs(1) {
                checked = Instant::now();
                if let Some(warning) = self.shim_warning(id) {
                    return Err(format!("no ready point: {warning}"));
                }
                if self.session.task_status(id).as_deref() == Some("STOPPED") {
                    return Err(format!(
                        "no ready point: {id} stopped; {}",
                        self.shim_lines(id)
                    ));
                }
            }
            if t0.elapsed() >= self.timeout {
                return Err(format!(
                    "no ready-point checkpoint in {} after {:.0} s (task {}); {}",
                    dir.display(),
                    t0.elapsed().as_secs_f64(),
                    self.session.status_word(id),
                    self.shim_lines(id)
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let after_ms = ms_since(t0);
        Ok(ReadyPoint {
            shim_cpu_s: shim_cpu_seconds(id, self.session.ctr.address()),
            manifest: manifest_summary(&manifest).map_err(|e| format!("{e:#}"))?,
            dir_bytes: du_bytes(&dir),
            after_ms,
            dir,
        })
    }

    /// The shim's warning that container `id` gets no ready point, from
    /// containerd's log ("…: ready-point checkpoint failed, …" or "…: probe
    /// … did not succeed …").
    fn shim_warning(&self, id: &str) -> Option<String> {
        let log = std::fs::read_to_string(self.session.instance.containerd_log()).ok()?;
        log.lines()
            .filter(|l| l.contains("level=warn"))
            .find(|l| {
                l.contains(&format!("{id}: ready-point checkpoint failed"))
                    || l.contains(&format!("{id}: probe "))
                    || l.contains(&format!("{id}: cannot run probe"))
            })
            .map(String::from)
    }

    /// The last lines of containerd's log that name container `id`.
    fn shim_lines(&self, id: &str) -> String {
        let log =
            std::fs::read_to_string(self.session.instance.containerd_log()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(id)).collect();
        format!(
            "containerd's log about it:\n{}",
            lines[lines.len().saturating_sub(10)..].join("\n")
        )
    }

    /// What CRIU's restore.log of container `id` (restored from a
    /// checkpoint) says of the restore.
    pub fn criu_restore(&self, id: &str) -> Option<CriuRestore> {
        let log = self
            .session
            .instance
            .task_state_dir()
            .join(id)
            .join("criu-restore-work/restore.log");
        parse_restore_log(&std::fs::read_to_string(log).ok()?)
    }
}

/// A restore as CRIU logged it, in seconds.
#[derive(Debug, PartialEq)]
pub struct CriuRestore {
    /// The time stamp of the log's last line.
    pub total_s: f64,
    /// In the restorer's preadv calls, which read the memory pages into
    /// place (page faults on fresh memory, and the image file's reads).
    pub pages_s: f64,
}

fn parse_restore_log(text: &str) -> Option<CriuRestore> {
    // "(00.028656) pie: 1: Preadv 0xf0000000:11141120... (158 iovs)", then,
    // from the same process, "(00.226386) pie: 1: `- returned 108150784".
    let mut reading: std::collections::HashMap<&str, f64> = Default::default();
    let mut pages_s = 0.0;
    let mut total_s = None;
    for line in text.lines() {
        let Some(t) = criu_log_seconds(line) else {
            continue;
        };
        total_s = Some(t);
        let Some((pid, what)) = line
            .split_once(") pie: ")
            .and_then(|(_, rest)| rest.split_once(": "))
        else {
            continue;
        };
        if what.starts_with("Preadv ") {
            reading.insert(pid, t);
        } else if what.starts_with("`- returned")
            && let Some(from) = reading.remove(pid)
        {
            pages_s += t - from;
        }
    }
    Some(CriuRestore {
        total_s: total_s?,
        pages_s: stats::round(pages_s, 6),
    })
}

/// CPU seconds (user + system) the shim serving container `id` of the
/// containerd at `address` has used.
fn shim_cpu_seconds(id: &str, address: &str) -> Option<f64> {
    let pid = host::all_pids().into_iter().find(|p| {
        host::cmdline(*p).is_some_and(|args| {
            args.first()
                .is_some_and(|a| a.ends_with("containerd-shim-migrate-v1"))
                && args.windows(2).any(|w| w[0] == "-id" && w[1] == id)
                && args
                    .windows(2)
                    .any(|w| w[0] == "-address" && w[1] == address)
        })
    })?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(stats::round(ticks / hz, 2))
}

/// A ready-point checkpoint's manifest, summarized:
/// {id, memoryBytes, threads, files (count), bytes (sum), timings, ready,
/// created, host}; threads counts CRIU's core-TID.img files, one a thread.
fn manifest_summary(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let m: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let files = m["files"].as_array().map(Vec::as_slice).unwrap_or_default();
    Ok(json!({
        "id": m["id"], "memoryBytes": m["memoryBytes"], "files": files.len(),
        "threads": files.iter().filter_map(|f| f["path"].as_str()).filter(|p| p.starts_with("criu/core-")).count(),
        "bytes": files.iter().filter_map(|f| f["size"].as_u64()).sum::<u64>(),
        "timings": m["timings"], "ready": m["ready"], "created": m["created"], "host": m["host"],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_log_times() {
        let log = "(00.000000) CRIU run id = x\n\
                   (00.028656) pie: 1: Preadv 0xf0000000:11141120... (158 iovs)\n\
                   (00.030000) pie: 9: Preadv 0x1000:4096... (1 iovs)\n\
                   (00.031000) pie: 9: `- returned 4096\n\
                   (00.226386) pie: 1: `- returned 108150784\n\
                   (00.238011) \tRPC\n";
        let r = parse_restore_log(log).unwrap();
        assert_eq!(r.total_s, 0.238011);
        assert_eq!(r.pages_s, 0.19873);
        assert_eq!(parse_restore_log("no stamps"), None);
    }
}
