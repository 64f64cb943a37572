//! Running one runc command to completion.
//!
//! The shim is a subreaper and containerd-shim's SIGCHLD loop reaps every
//! child with `waitpid(-1)`, so nobody else may wait for a child: we learn
//! runc's exit status from the shim's exit monitor instead, subscribing
//! *before* the spawn so that a runc that exits at once is never missed.

use std::{
    ffi::OsString,
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Stdio,
};

use containerd_shim::monitor::{ExitEvent, Subject, Topic, monitor_subscribe, monitor_unsubscribe};
use tokio::{io::AsyncReadExt, io::AsyncWriteExt, process::Command};

use super::Error;

/// What runc's own stdio is connected to. For `create` and `exec` this is the
/// container process's stdio, which runc hands down; otherwise the shim
/// captures it to report errors and read results.
pub enum Stdio3 {
    Captured,
    Given { stdin: Stdio, stdout: Stdio, stderr: Stdio },
}

pub struct Output {
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// The file runc gets as its descriptor [`STATUS_FD`] (`--status-fd`).
pub const STATUS_FD: i32 = 3;

pub async fn run(
    binary: &Path,
    args: Vec<OsString>,
    stdio: Stdio3,
    input: Option<&[u8]>,
    env: &[(&str, PathBuf)],
    status: Option<&File>,
) -> Result<Output, Error> {
    let mut cmd = Command::new(binary);
    cmd.args(&args);
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    if let Some(status) = status {
        let fd = status.as_raw_fd();
        // SAFETY: between fork and exec only async-signal-safe calls
        // (dup2, fcntl) run.
        unsafe {
            cmd.pre_exec(move || {
                if fd == STATUS_FD {
                    // dup2 onto itself would keep close-on-exec set.
                    if nix::libc::fcntl(fd, nix::libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if nix::libc::dup2(fd, STATUS_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let captured = matches!(stdio, Stdio3::Captured);
    match stdio {
        Stdio3::Captured => {
            let stdin = if input.is_some() { Stdio::piped() } else { Stdio::null() };
            cmd.stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        Stdio3::Given { stdin, stdout, stderr } => {
            cmd.stdin(stdin).stdout(stdout).stderr(stderr);
        }
    }

    let subscription = monitor_subscribe(Topic::Pid).await.map_err(|source| Error::Monitor { source })?;
    let spawned = cmd.spawn();
    // The Command still holds the parent's copies of the container's pipe
    // ends; they must be closed now, or the container's stdout would never
    // reach EOF while the shim lives.
    drop(cmd);
    let mut child = match spawned {
        Ok(child) => child,
        Err(source) => {
            let _ = monitor_unsubscribe(subscription.id).await;
            return Err(Error::Spawn { binary: binary.to_path_buf(), source });
        }
    };
    let pid = child.id().unwrap_or_default() as i32;

    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    if captured {
        let mut out = child.stdout.take();
        let mut err = child.stderr.take();
        let mut inp = child.stdin.take();
        let write_input = async {
            if let (Some(w), Some(data)) = (inp.as_mut(), input) {
                // runc reads until EOF; a write error shows up as its failure.
                let _ = w.write_all(data).await;
            }
            drop(inp.take());
        };
        let read_out = async {
            if let Some(r) = out.as_mut() {
                let _ = r.read_to_end(&mut stdout).await;
            }
        };
        let read_err = async {
            if let Some(r) = err.as_mut() {
                let _ = r.read_to_end(&mut stderr).await;
            }
        };
        tokio::join!(write_input, read_out, read_err);
    }

    let mut rx = subscription.rx;
    let status = loop {
        match rx.recv().await {
            Some(ExitEvent { subject: Subject::Pid(p), exit_code }) if p == pid => break exit_code,
            Some(_) => continue,
            None => break -1,
        }
    };
    let _ = monitor_unsubscribe(subscription.id).await;
    // Only now may tokio forget the child: it was reaped by the monitor.
    drop(child);
    Ok(Output { status, stdout, stderr })
}
