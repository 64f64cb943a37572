//! Post-copy on the target: the runtime (the shim's lazy-pages daemon)
//! pulls the container's memory from the source's page server while the
//! container runs here. This side names the page server to the runtime,
//! watches the pages arrive, and ends a transfer that stopped moving: the
//! runtime then kills the container, which never runs on memory that did
//! not arrive, and the source runs it on.
//!
//! The files are the shim's (`shim/src/lazy_pages.rs`): the page source
//! is named in `migrate-page-source.json` beside the images, the outcome
//! reported in `migrate-lazy-pages.json` there.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tonic::Status;

use super::features;
use crate::agent::context::TlsFiles;
use crate::proto::PagesProgress;

const PAGE_SOURCE_FILE: &str = "migrate-page-source.json";
const OUTCOME_FILE: &str = "migrate-lazy-pages.json";
/// How often the progress is reported.
const REPORT_EVERY: Duration = Duration::from_millis(250);
/// A transfer that moved no byte for this long is given up: the source or
/// the link is gone (a cut link breaks no connection by itself).
const STALL: Duration = Duration::from_secs(5);
/// How long the runtime may take to report after its daemon ended.
const OUTCOME_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Serialize)]
struct PageSource<'a> {
    address: &'a str,
    tls: &'a TlsFiles,
}

/// The shim's report (shim/src/lazy_pages.rs `Outcome`).
#[derive(Deserialize)]
struct Outcome {
    complete: bool,
    ms: f64,
    faults: u64,
    #[serde(default)]
    bytes: u64,
    #[serde(default)]
    error: Option<String>,
}

/// Names the source's page server to the runtime that restores `images`.
pub fn name_source(images: &Path, address: &str, tls: &TlsFiles) -> Result<()> {
    let path = images.join(PAGE_SOURCE_FILE);
    let json = serde_json::to_vec(&PageSource { address, tls }).context("encode the page source")?;
    std::fs::write(&path, json).with_context(|| format!("write {}", path.display()))
}

/// Publishes on `tx` how the memory of the container restored from
/// `images` arrives, until the runtime says it is all there or it failed;
/// the last report has `done`. Returns whether every page arrived. It
/// goes on whether anyone listens or not: a target cut off from everyone
/// must still end a stalled transfer.
pub async fn watch(images: PathBuf, pid: u32, tx: watch::Sender<PagesProgress>) -> Watched {
    let started = Instant::now();
    let mut last_report = Instant::now();
    // What the container holds grows as its pages arrive.
    let at_start = features::memory_bytes(pid).unwrap_or(0);
    let mut moved = (0u64, Instant::now());
    let mut stopped = false;
    loop {
        if let Some(outcome) = read_outcome(&images) {
            let progress = PagesProgress {
                // The runtime's count; the container's growth is only seen
                // from when this watch began.
                bytes: outcome.bytes.max(moved.0),
                ms: outcome.ms,
                done: true,
                complete: outcome.complete,
                faults: outcome.faults,
                error: outcome.error.unwrap_or_default(),
            };
            let watched = if progress.complete { Watched::Complete } else { Watched::Failed };
            tx.send_replace(progress);
            return watched;
        }
        if let Some(bytes) = features::memory_bytes(pid).map(|b| b.saturating_sub(at_start))
            && bytes != moved.0
        {
            moved = (bytes, Instant::now());
        }
        if !stopped && moved.1.elapsed() > STALL {
            log::warn!("no page arrived for {STALL:?} from the source: ending the transfer");
            if let Some(pid) = daemon_of(&images) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
            stopped = true;
            moved.1 = Instant::now();
        } else if stopped && moved.1.elapsed() > OUTCOME_DEADLINE {
            tx.send_replace(PagesProgress {
                bytes: moved.0,
                ms: started.elapsed().as_secs_f64() * 1000.0,
                done: true,
                error: format!(
                    "the runtime did not report how the transfer of {} ended within {OUTCOME_DEADLINE:?}",
                    images.display()
                ),
                ..Default::default()
            });
            return Watched::Unknown;
        }
        if last_report.elapsed() >= REPORT_EVERY {
            last_report = Instant::now();
            tx.send_replace(PagesProgress {
                bytes: moved.0,
                ms: started.elapsed().as_secs_f64() * 1000.0,
                ..Default::default()
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How a transfer ended, as far as this host can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watched {
    /// Every page arrived.
    Complete,
    /// The runtime gave up and killed the container.
    Failed,
    /// The runtime said nothing: only the source can tell.
    Unknown,
}

/// Ends the transfer of `images`, if one runs (an abort).
pub fn stop(images: &Path) {
    if let Some(pid) = daemon_of(images) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

fn read_outcome(images: &Path) -> Option<Outcome> {
    let bytes = std::fs::read(images.join(OUTCOME_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The lazy-pages daemon restoring from `images`: the one CRIU process
/// whose command line names that directory.
fn daemon_of(images: &Path) -> Option<i32> {
    let needle = images.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let mut args = cmdline.split(|b| *b == 0);
        let is_daemon = args.next().is_some_and(|a| a.ends_with(b"criu"))
            && cmdline.split(|b| *b == 0).any(|a| a == b"lazy-pages")
            && cmdline.split(|b| *b == 0).any(|a| a == needle);
        is_daemon.then_some(pid)
    })
}

/// Forwards `rx`'s reports to a listener on `tx` until the last one.
pub async fn forward(mut rx: watch::Receiver<PagesProgress>, tx: mpsc::Sender<Result<PagesProgress, Status>>) {
    loop {
        let progress = rx.borrow_and_update().clone();
        let done = progress.done;
        if tx.send(Ok(progress)).await.is_err() || done {
            return;
        }
        if rx.changed().await.is_err() {
            let _ = tx.send(Err(Status::internal("the transfer's watch ended without a last report"))).await;
            return;
        }
    }
}
