//! Post-copy on the source: the container dumped lazily, its memory kept
//! where it is (in its frozen processes) behind a CRIU page server that
//! the target's runtime pulls from, over TLS with the hosts' certificates.
//!
//! The shim's checkpoint call lasts as long as the page server: it returns
//! Ok once the target has every page (CRIU then kills the source's
//! processes), an error if the transfer broke (CRIU leaves them as they
//! were: frozen, their memory whole, ready to run on here). runc's status
//! FIFO says when the images are complete and the restore may begin.

use std::net::{IpAddr, TcpListener};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::agent::context::TlsFiles;
use crate::host::shim::Shim;

/// How long the dump of everything but memory may take.
const READY_DEADLINE: Duration = Duration::from_secs(120);

/// This runtime's checkpoint options for a lazy dump (the shim's
/// checkpoint.rs decodes them).
#[derive(Serialize)]
struct LazyDump<'a> {
    image_path: &'a Path,
    work_path: &'a Path,
    tcp_established: bool,
    file_locks: bool,
    lazy_pages: bool,
    page_server: &'a str,
    page_server_tls: &'a TlsFiles,
    status_fifo: &'a Path,
}

/// A lazy dump serving its pages.
pub struct PageServer {
    /// HOST:PORT the target pulls from.
    pub address: String,
    dump: JoinHandle<Result<()>>,
    /// CRIU's work directory: its log there names the CRIU process.
    work: PathBuf,
}

impl PageServer {
    /// Dumps container `id` lazily into `images` with a page server on
    /// `host`, and returns once the images are complete.
    pub async fn start(
        shim: Shim,
        id: &str,
        host: IpAddr,
        tls: &TlsFiles,
        images: &Path,
        work: &Path,
    ) -> Result<PageServer> {
        let address = format!("{}:{}", host_text(host), free_port(host)?);
        // Beside the work directory, which the shim empties first.
        let fifo = work.with_file_name("lazy-ready");
        let _ = std::fs::remove_file(&fifo);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR)
            .with_context(|| format!("make the FIFO {}", fifo.display()))?;
        // Open for reading before the shim opens it for writing, which it
        // refuses to do blindly.
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .with_context(|| format!("open {}", fifo.display()))?;
        let options = LazyDump {
            image_path: images,
            work_path: work,
            tcp_established: true,
            file_locks: true,
            lazy_pages: true,
            page_server: &address,
            page_server_tls: tls,
            status_fifo: &fifo,
        };
        let options = serde_json::to_vec(&options).context("encode the checkpoint options")?;
        let container = id.to_string();
        let ended = Arc::new(AtomicBool::new(false));
        let dump = {
            let ended = ended.clone();
            tokio::task::spawn_blocking(move || {
                let dumped = shim.checkpoint_with(&container, options);
                ended.store(true, Ordering::SeqCst);
                dumped
            })
        };
        let server = PageServer { address, dump, work: work.to_path_buf() };
        match tokio::task::spawn_blocking(move || wait_ready(reader, &ended)).await? {
            Ok(()) => Ok(server),
            Err(waited) => {
                // The dump's own error says more than the FIFO's silence.
                let ended = server.stop_now().await;
                Err(ended.err().unwrap_or(waited))
            }
        }
    }

    /// Whether the transfer is over (either way).
    pub fn is_finished(&self) -> bool {
        self.dump.is_finished()
    }

    /// Waits until the target has every page (Ok) or the transfer broke.
    pub async fn wait(self) -> Result<()> {
        self.dump.await.map_err(|e| anyhow!("the lazy dump panicked: {e}"))?
    }

    /// Ends the page server now unless the transfer is over; returns how
    /// the dump ended: Ok if the target had every page.
    pub async fn stop_now(self) -> Result<()> {
        if !self.dump.is_finished() {
            let pids = processes_writing(&self.work.join("dump.log"));
            log::warn!("stopping the page server (CRIU pids {pids:?}) before the target had every page");
            for pid in pids {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
        self.wait().await
    }
}

/// Waits for runc's zero byte; no writer (any more) once the dump has
/// `ended` is a failed dump.
fn wait_ready(mut reader: std::fs::File, ended: &AtomicBool) -> Result<()> {
    use std::io::Read;
    let started = Instant::now();
    let mut byte = [0u8; 1];
    loop {
        // Read before the read: a dump that wrote and ended is seen ready.
        let over = ended.load(Ordering::SeqCst);
        match reader.read(&mut byte) {
            Ok(1) => return Ok(()),
            // No writer: not yet, or no more.
            Ok(_) if over => bail!("the dump ended before its page server was up"),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e).context("read the dump's status FIFO"),
        }
        if started.elapsed() > READY_DEADLINE {
            bail!("the dump's page server was not up within {READY_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A port free on `host` now (the page server binds it a moment later).
fn free_port(host: IpAddr) -> Result<u16> {
    let listener = TcpListener::bind((host, 0)).with_context(|| format!("find a free port on {host}"))?;
    Ok(listener.local_addr()?.port())
}

fn host_text(host: IpAddr) -> String {
    match host {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// The processes that have `log` open: CRIU writes its log there for as
/// long as it runs.
fn processes_writing(log: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .map(|fds| fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == log)))
                .unwrap_or(false)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_fifo_tells_ready_from_failed() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("f");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR).unwrap();
        let open = || std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap();

        let ended = AtomicBool::new(false);
        let reader = open();
        let writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        std::io::Write::write_all(&mut &writer, &[0]).unwrap();
        drop(writer);
        ended.store(true, Ordering::SeqCst);
        wait_ready(reader, &ended).unwrap();

        // The writer came and went without a word, and the dump ended.
        let reader = open();
        drop(std::fs::OpenOptions::new().write(true).open(&fifo).unwrap());
        let e = wait_ready(reader, &ended).unwrap_err().to_string();
        assert!(e.contains("ended before its page server was up"), "{e}");
    }
}
