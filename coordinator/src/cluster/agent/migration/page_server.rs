//! A CRIU page server on the target: the source's dump connects to it over
//! TLS (both sides with certificates of the cluster's CA) and sends the
//! container's memory, which it writes as images into the migration's
//! directory. It serves one dump and exits.

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::agent::context::CriuTlsFiles;

/// How long CRIU may take to listen.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct PageServer {
    child: Child,
    /// "IP:PORT", for the source's dump.
    pub address: String,
}

impl PageServer {
    /// Starts `criu page-server` writing into `images`, listening on `ip`,
    /// and returns once it accepts connections (CRIU's `--status-fd`).
    pub fn start(images: &Path, work: &Path, ip: &str, tls: &CriuTlsFiles) -> Result<PageServer> {
        let port = free_port(ip)?;
        std::fs::create_dir_all(images).with_context(|| format!("create {}", images.display()))?;
        std::fs::create_dir_all(work).with_context(|| format!("create {}", work.display()))?;
        let (ready_r, ready_w) = nix::unistd::pipe().context("a pipe for CRIU's status")?;
        let mut cmd = Command::new("criu");
        cmd.arg("page-server")
            .arg("--images-dir")
            .arg(images)
            .arg("--work-dir")
            .arg(work)
            .args(["--address", ip, "--port", &port.to_string()])
            .arg("--tls")
            .arg("--tls-cacert")
            .arg(&tls.cacert)
            .arg("--tls-cert")
            .arg(&tls.cert)
            .arg("--tls-key")
            .arg(&tls.key)
            // CRIU checks the peer's certificate for the name it has in
            // --address on both sides: right for the dumping side, which
            // dials the target's IP (in its certificate), but here that is
            // the server's own address, which no client certificate names.
            // The client is still checked against the cluster's CA.
            .arg("--tls-no-cn-verify")
            .args(["--status-fd", "3", "-v4", "--log-file", "page-server.log"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let status_fd = ready_w.as_raw_fd();
        // SAFETY: between fork and exec only dup2, which is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(status_fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().context("start `criu page-server` (is CRIU installed?)")?;
        drop(ready_w);
        let mut server = PageServer { child, address: format!("{ip}:{port}") };
        if let Err(e) = wait_ready(ready_r) {
            server.stop();
            let log = std::fs::read_to_string(work.join("page-server.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            bail!("CRIU's page server did not start: {e}; its log ends:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        Ok(server)
    }

    /// Waits until the page server has exited after serving the dump.
    pub fn finish(mut self, work: &Path) -> Result<()> {
        let status = self.child.wait().context("wait for CRIU's page server")?;
        if !status.success() {
            let log = std::fs::read_to_string(work.join("page-server.log")).unwrap_or_default();
            let errors: Vec<&str> = log.lines().filter(|l| l.contains("Error")).take(5).collect();
            bail!("CRIU's page server failed ({status}): {}", errors.join("; "));
        }
        Ok(())
    }

    /// Kills it, if it still runs.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free on `ip` now (the kernel's pick; CRIU binds it a moment later).
fn free_port(ip: &str) -> Result<u16> {
    let ip: Ipv4Addr = ip.parse().with_context(|| format!("{ip} is not an IPv4 address"))?;
    let listener = TcpListener::bind((ip, 0)).with_context(|| format!("find a free port on {ip}"))?;
    Ok(listener.local_addr()?.port())
}

/// CRIU writes one byte to its status fd once it listens, and closes it.
fn wait_ready(fd: OwnedFd) -> Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut file = std::fs::File::from(fd);
        let mut byte = [0u8; 1];
        let _ = tx.send(file.read(&mut byte));
    });
    match rx.recv_timeout(READY_TIMEOUT) {
        Ok(Ok(1)) => Ok(()),
        Ok(Ok(_)) => bail!("it exited before listening"),
        Ok(Err(e)) => bail!("reading its status: {e}"),
        Err(_) => bail!("it did not listen within {READY_TIMEOUT:?}"),
    }
}
