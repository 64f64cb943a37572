//! Pre-copy on the target: a CRIU page server per round that takes the
//! memory the source's CRIU sends (a pre-dump while the container runs, or
//! the final dump's last changes), over TLS with the hosts' certificates.
//! Each round's directory has the one before as its parent
//! (`--prev-images-dir`), so a round holds only what changed and the final
//! images restore with every page of the chain.
//!
//! The directories are [`super::round_dir`]'s, the same on both hosts.

use std::io::Read;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use tokio::process::{Child, Command};

use super::page_server::{free_port, host_text};
use crate::agent::context::TlsFiles;

/// How long the page server may take to listen.
const LISTEN_DEADLINE: Duration = Duration::from_secs(30);
/// How long a round may take once the source's CRIU is done: the page
/// server only writes what already arrived.
const CLOSE_DEADLINE: Duration = Duration::from_secs(60);

/// A page server taking one round.
pub struct PageReceiver {
    pub round: u32,
    pub address: String,
    dir: PathBuf,
    log: PathBuf,
    /// Killed when dropped: an aborted migration leaves no CRIU behind.
    child: Child,
}

impl PageReceiver {
    /// Starts a page server for round `round` into `dir` (on top of
    /// `parent`, relative to it) on `host`; returns once it listens.
    pub async fn open(
        host: IpAddr,
        tls: &TlsFiles,
        round: u32,
        dir: &Path,
        parent: Option<&Path>,
    ) -> Result<PageReceiver> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let address = format!("{}:{}", host_text(host), free_port(host)?);
        let port = address.rsplit(':').next().expect("HOST:PORT").to_string();
        // Beside the images: the restore must not find it among them.
        let log = dir.with_file_name(format!("page-server-{round}.log"));
        let (status_read, status_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("make a pipe")?;
        let mut cmd = Command::new("criu");
        cmd.arg("page-server")
            .arg("-D")
            .arg(dir)
            .args(["--address", &host.to_string(), "--port", &port])
            .args(["--status-fd", "3", "-v2", "-o"])
            .arg(&log)
            .arg("--tls")
            // As a server CRIU checks the client's certificate against its
            // own --address, which no other host's certificate names: the
            // cluster's CA vouches for the client, the name cannot.
            .arg("--tls-no-cn-verify")
            .arg("--tls-cacert")
            .arg(&tls.cacert)
            .arg("--tls-cert")
            .arg(&tls.cert)
            .arg("--tls-key")
            .arg(&tls.key)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(parent) = parent {
            cmd.arg("--prev-images-dir").arg(parent);
        }
        let write_fd = status_write.as_raw_fd();
        // SAFETY: dup2 is async-signal-safe; the child only gets fd 3.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(write_fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().context("start criu page-server")?;
        drop(status_write);
        let mut receiver = PageReceiver { round, address, dir: dir.to_path_buf(), log, child };
        let listening = tokio::time::timeout(LISTEN_DEADLINE, tokio::task::spawn_blocking(move || ready(status_read)));
        match listening.await {
            Ok(Ok(Ok(()))) => Ok(receiver),
            Ok(Ok(Err(e))) => {
                let _ = receiver.child.wait().await;
                Err(e.context(receiver.said()))
            }
            Ok(Err(panicked)) => bail!("waiting for the page server panicked: {panicked}"),
            Err(_) => {
                let _ = receiver.child.kill().await;
                bail!("criu page-server did not listen within {LISTEN_DEADLINE:?}; {}", receiver.said())
            }
        }
    }

    /// Waits until the round is in (the source's CRIU closed the
    /// connection) and returns the bytes of memory it brought.
    pub async fn close(mut self) -> Result<u64> {
        let status = match tokio::time::timeout(CLOSE_DEADLINE, self.child.wait()).await {
            Ok(status) => status.context("wait for criu page-server")?,
            Err(_) => {
                let _ = self.child.kill().await;
                bail!("round {} did not end within {CLOSE_DEADLINE:?}; {}", self.round, self.said())
            }
        };
        if !status.success() {
            bail!("criu page-server of round {} failed ({status}); {}", self.round, self.said());
        }
        memory_bytes(&self.dir)
    }

    /// CRIU's last error, for a message.
    pub fn said(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        match text.lines().rfind(|l| l.contains("Error")) {
            Some(line) => format!("criu says: {} (log {})", line.trim(), self.log.display()),
            None => format!("see {}", self.log.display()),
        }
    }
}

/// CRIU's zero byte on the status pipe once it listens; end of file if it
/// failed first.
fn ready(status: OwnedFd) -> Result<()> {
    let mut file = std::fs::File::from(status);
    let mut byte = [0u8; 1];
    match file.read(&mut byte).context("read criu's status pipe")? {
        1 => Ok(()),
        _ => bail!("criu page-server ended before it listened"),
    }
}

/// The memory images' bytes in `dir`.
fn memory_bytes(dir: &Path) -> Result<u64> {
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("pages-") && name.ends_with(".img") {
            bytes += entry.metadata()?.len();
        }
    }
    Ok(bytes)
}
