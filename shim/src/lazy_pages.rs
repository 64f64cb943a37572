//! Post-copy on the restoring side: CRIU's lazy-pages daemon, which pulls a
//! lazy dump's memory from the source's page server, the pages the
//! restored processes fault on first and the rest in the background.
//!
//! The shim owns the daemon because only the runtime can keep the promise
//! post-copy needs: a restored process never runs on memory that did not
//! arrive. Should the daemon fail (source gone, link cut), a fault it no
//! longer serves would be filled with zeroes by the kernel, so the shim
//! kills the container at once; the source, which kept every page until
//! the daemon had them all, runs it on (the caller's side of the bargain).
//!
//! The caller names the page source in [`PAGE_SOURCE_FILE`] beside the
//! images; the shim reports the outcome in [`OUTCOME_FILE`] there, written
//! whole with one rename, when the daemon has ended.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use containerd_shim::monitor::{ExitEvent, Subject, Topic, monitor_subscribe, monitor_unsubscribe};
use log::{error, info, warn};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::error::TryRecvError;

use crate::{
    error::{Error, Result},
    runc::{CriuTls, criu_errors},
};

/// Where the caller names the page server a lazy dump's memory is pulled
/// from (JSON, [`PageSource`]).
pub const PAGE_SOURCE_FILE: &str = "migrate-page-source.json";
/// Where the shim reports how the transfer ended (JSON, [`Outcome`]).
pub const OUTCOME_FILE: &str = "migrate-lazy-pages.json";
/// The daemon's log, in the restore's work directory.
const LOG: &str = "lazy-pages.log";
/// The socket the daemon listens on for the restore, in the work directory.
const SOCKET: &str = "lazy-pages.socket";
/// How long the daemon may take to connect to the source and listen.
const START_DEADLINE: Duration = Duration::from_secs(20);

/// The page server of the source (a CRIU lazy dump), and TLS to it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageSource {
    /// HOST:PORT.
    pub address: String,
    #[serde(default)]
    pub tls: Option<CriuTls>,
}

impl PageSource {
    /// The page source the caller named beside `images`.
    pub fn read(images: &Path) -> Result<PageSource> {
        let path = images.join(PAGE_SOURCE_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::InvalidArgument(format!(
                    "the checkpoint at {} was dumped for post-copy: its memory stays with the source's page \
                     server, and no {PAGE_SOURCE_FILE} beside it names that server",
                    images.display()
                )));
            }
            Err(e) => return Err(Error::io(format!("read {}", path.display()))(e)),
        };
        let source: PageSource = serde_json::from_slice(&bytes)
            .map_err(|e| Error::InvalidArgument(format!("{} is not valid: {e}", path.display())))?;
        source.split()?;
        Ok(source)
    }

    fn split(&self) -> Result<(&str, &str)> {
        self.address
            .rsplit_once(':')
            .filter(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
            .ok_or_else(|| Error::InvalidArgument(format!("page source address {:?} is not HOST:PORT", self.address)))
    }
}

/// How the transfer ended, as the shim reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Outcome {
    /// Every page arrived; the source may let its copy go.
    pub complete: bool,
    /// From the daemon's start to its end.
    pub ms: f64,
    /// Faults the restored processes took on pages not yet there, each
    /// served from the source on demand (the rest came in the background).
    pub faults: u64,
    /// Bytes of memory that came from the source.
    #[serde(default)]
    pub bytes: u64,
    /// Why it failed; the container was killed then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A running lazy-pages daemon.
pub struct Daemon {
    pid: i32,
    /// Held, never waited for, until its exit is seen: tokio reaps a child
    /// it forgets, and the shim's reaper would then never report it.
    _child: tokio::process::Child,
    subscription: containerd_shim::monitor::Subscription,
    started: Instant,
    work: PathBuf,
}

impl Daemon {
    /// Starts the daemon for the images in `images`, working in `work`
    /// (where the restore, which must use the same work directory, finds
    /// its socket), and waits until it listens.
    pub async fn start(images: &Path, work: &Path, source: &PageSource) -> Result<Daemon> {
        let (host, port) = source.split()?;
        let mut cmd = tokio::process::Command::new("criu");
        cmd.arg("lazy-pages")
            .args(["--page-server", "--address", host, "--port", port])
            .arg("--images-dir")
            .arg(images)
            .arg("--work-dir")
            .arg(work)
            .args(["--log-file", LOG, "-v4"]);
        if let Some(tls) = &source.tls {
            cmd.arg("--tls")
                .arg("--tls-cacert")
                .arg(&tls.cacert)
                .arg("--tls-cert")
                .arg(&tls.cert)
                .arg("--tls-key")
                .arg(&tls.key);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        // Subscribed before the spawn: the shim's reaper takes every
        // child's exit, and a daemon that fails at once must not be missed.
        let mut subscription =
            monitor_subscribe(Topic::Pid).await.map_err(Error::shim("watch the lazy-pages daemon"))?;
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                let _ = monitor_unsubscribe(subscription.id).await;
                return Err(Error::io("start criu lazy-pages")(e));
            }
        };
        let pid = child.id().unwrap_or_default() as i32;
        let started = Instant::now();
        let socket = work.join(SOCKET);
        loop {
            match subscription.rx.try_recv() {
                Ok(ExitEvent { subject: Subject::Pid(p), exit_code }) if p == pid => {
                    let _ = monitor_unsubscribe(subscription.id).await;
                    drop(child);
                    return Err(Error::InvalidArgument(format!(
                        "criu lazy-pages ended before it listened (exit status {exit_code}): {}",
                        log_cause(work)
                    )));
                }
                Ok(_) | Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => break,
            }
            if socket.exists() {
                info!("lazy-pages daemon (pid {pid}) pulls from {} in {:?}", source.address, started.elapsed());
                return Ok(Daemon { pid, _child: child, subscription, started, work: work.to_path_buf() });
            }
            if started.elapsed() > START_DEADLINE {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let daemon = Daemon { pid, _child: child, subscription, started, work: work.to_path_buf() };
        let cause = log_cause(work);
        daemon.kill().await;
        Err(Error::InvalidArgument(format!(
            "criu lazy-pages did not listen within {START_DEADLINE:?} (pulling from {}): {cause}",
            source.address
        )))
    }

    /// Ends the daemon (the restore it served failed).
    pub async fn kill(mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), nix::sys::signal::Signal::SIGKILL);
        let _ = self.exit().await;
    }

    /// Waits for the daemon in the background; when it ends, reports the
    /// [`Outcome`] into `images` and, if pages are missing, calls `kill`
    /// first, so that nothing runs on memory that never arrived.
    pub fn watch<F>(mut self, images: PathBuf, kill: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        tokio::spawn(async move {
            let started = self.started;
            let work = self.work.clone();
            let status = self.exit().await;
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            let log = std::fs::read_to_string(work.join(LOG)).unwrap_or_default();
            let (faults, bytes) = (count_faults(&log), transferred_bytes(&log));
            let outcome = if status == 0 {
                info!("lazy pages: every page arrived in {ms:.0} ms ({faults} faults served on demand)");
                Outcome { complete: true, ms, faults, bytes, error: None }
            } else {
                let cause = log_cause(&work);
                error!("lazy pages failed (exit status {status}): {cause}; killing the container");
                kill.await;
                Outcome { complete: false, ms, faults, bytes, error: Some(format!("exit status {status}: {cause}")) }
            };
            if let Err(e) = write_outcome(&images, &outcome) {
                warn!("reporting the lazy pages' outcome: {e}");
            }
        });
    }

    /// The daemon's exit status.
    async fn exit(&mut self) -> i32 {
        let status = loop {
            match self.subscription.rx.recv().await {
                Some(ExitEvent { subject: Subject::Pid(p), exit_code }) if p == self.pid => break exit_code,
                Some(_) => continue,
                None => break -1,
            }
        };
        let _ = monitor_unsubscribe(self.subscription.id).await;
        status
    }
}

/// Writes `outcome` whole: a reader sees it complete or not at all.
fn write_outcome(images: &Path, outcome: &Outcome) -> std::io::Result<()> {
    let json = serde_json::to_vec(outcome).expect("plain struct serialises");
    let tmp = images.join(format!(".{OUTCOME_FILE}.tmp"));
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, images.join(OUTCOME_FILE))
}

/// CRIU's first error in the daemon's log, or where to look.
fn log_cause(work: &Path) -> String {
    let log = work.join(LOG);
    match std::fs::read_to_string(&log) {
        Ok(text) => match criu_errors(&text).into_iter().next() {
            Some(line) => format!("{line} (log: {})", log.display()),
            None => format!("see {}", log.display()),
        },
        Err(_) => format!("no log at {}", log.display()),
    }
}

/// The memory the daemon moved: its last "UFFD transferred pages: (N/M)"
/// line (one per process) says N pages of each.
fn transferred_bytes(log: &str) -> u64 {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096) as u64;
    let mut last = std::collections::BTreeMap::new();
    for line in log.lines().filter(|l| l.contains("UFFD transferred pages: (")) {
        let who = line.split("uffd: ").nth(1).and_then(|r| r.split(':').next()).unwrap_or("");
        let pages = line.rsplit('(').next().and_then(|r| r.split('/').next()).and_then(|n| n.parse::<u64>().ok());
        if let Some(pages) = pages {
            last.insert(who.to_string(), pages);
        }
    }
    last.values().sum::<u64>() * page
}

/// The page faults the daemon served, as its log counts them: one `#PF`
/// line per fault at debug level.
fn count_faults(log: &str) -> u64 {
    log.lines().filter(|l| l.contains("#PF")).count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_source_needs_host_and_port() {
        let dir = tempfile::tempdir().unwrap();
        let e = PageSource::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("dumped for post-copy") && e.contains(PAGE_SOURCE_FILE), "{e}");
        std::fs::write(dir.path().join(PAGE_SOURCE_FILE), br#"{"address":"10.1.0.2"}"#).unwrap();
        let e = PageSource::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("is not HOST:PORT"), "{e}");
        std::fs::write(
            dir.path().join(PAGE_SOURCE_FILE),
            br#"{"address":"10.1.0.2:27000","tls":{"cacert":"/c","cert":"/h","key":"/k"}}"#,
        )
        .unwrap();
        let source = PageSource::read(dir.path()).unwrap();
        assert_eq!(source.split().unwrap(), ("10.1.0.2", "27000"));
        assert!(source.tls.is_some());
    }

    #[test]
    fn transferred_pages_are_each_processes_last_count() {
        let log = "(00.5) uffd: 1-12: UFFD transferred pages: (10/20)\n\
                   (00.6) uffd: 7-13: UFFD transferred pages: (5/5)\n\
                   (00.8) uffd: 1-12: UFFD transferred pages: (20/20)\n";
        assert_eq!(transferred_bytes(log), 25 * 4096);
        assert_eq!(count_faults("(0.1) uffd: 1-12: #PF at 0x7f\n(0.2) nothing\n"), 1);
    }

    #[test]
    fn outcome_is_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let outcome = Outcome { complete: true, ms: 12.5, faults: 3, bytes: 4096, error: None };
        write_outcome(dir.path(), &outcome).unwrap();
        let read: Outcome = serde_json::from_slice(&std::fs::read(dir.path().join(OUTCOME_FILE)).unwrap()).unwrap();
        assert_eq!(read, outcome);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file is left");
    }
}
