//! Connecting a process's stdio to the fifos containerd made for it.
//!
//! Without a terminal the process gets pipes whose other ends the shim
//! copies to and from the fifos; with one, runc hands the terminal's master
//! over the console socket and the shim copies through that. The copying
//! itself is containerd-shim's `IoTasks`, which already keeps the fifos open
//! across a containerd restart.

use std::{
    fs::{File, OpenOptions},
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::OpenOptionsExt,
    },
    process::Stdio as ChildStdio,
};

use containerd_shim::asynchronous::io::{IoTasks, Pty, Stdio};
use nix::{fcntl::OFlag, unistd::pipe2};
use tokio::net::unix::pipe;

mod log_uri;

use crate::{
    console::ConsoleSocket,
    error::{Error, Result},
    runc::Stdio3,
};

/// The shim's side of a running process's stdio.
pub struct ProcessIo {
    tasks: IoTasks,
    pty: Option<Pty>,
    log_file: Option<log_uri::FileCopy>,
    /// The shim's own writer on each output fifo, kept until the process is
    /// deleted. containerd's clients open a fifo's read end in the
    /// background, which waits for a writer: without this one, a client
    /// attaching after the process exited (and its copy closed the fifo)
    /// would wait forever and lose what the process wrote.
    _writer_holds: Vec<File>,
}

/// Stdio that runc is about to use; `finish` once runc has run.
pub enum PendingIo {
    Pipes(IoTasks, Vec<File>),
    /// Output to a `file://` or `binary://` log URI.
    Logged(Option<log_uri::FileCopy>),
    Console {
        socket: ConsoleSocket,
        stdio: Stdio,
    },
}

/// What a logging binary (`binary://` stdout) is told about its container.
pub struct LoggerEnv<'a> {
    pub container_id: &'a str,
    pub namespace: &'a str,
}

/// Who owns the pipes handed to the process, from the runtime options.
#[derive(Debug, Clone, Copy, Default)]
pub struct IoOwner {
    pub uid: u32,
    pub gid: u32,
}

impl PendingIo {
    /// Prepares `stdio` and returns what to give runc.
    pub fn prepare(stdio: &Stdio, owner: IoOwner, logger: &LoggerEnv<'_>) -> Result<(Self, Stdio3)> {
        if let Some(target) = log_uri::LogTarget::parse(&stdio.stdout)? {
            let (runc, copy) = target.open(logger.container_id, logger.namespace, closed_stdin(owner)?)?;
            return Ok((PendingIo::Logged(copy), runc));
        }
        if stdio.terminal {
            let socket = ConsoleSocket::new()?;
            let null = || ChildStdio::null();
            let runc = Stdio3::Given { stdin: null(), stdout: null(), stderr: null() };
            return Ok((PendingIo::Console { socket, stdio: stdio.clone() }, runc));
        }

        let tasks = IoTasks::default();
        let mut holds = Vec::new();
        let result = Self::pipes(stdio, owner, &tasks, &mut holds);
        match result {
            Ok(runc) => Ok((PendingIo::Pipes(tasks, holds), runc)),
            Err(e) => {
                // Nothing was started yet; cancel copies already wired up.
                tokio::spawn(async move { tasks.abort().await });
                Err(e)
            }
        }
    }

    fn pipes(stdio: &Stdio, owner: IoOwner, tasks: &IoTasks, holds: &mut Vec<File>) -> Result<Stdio3> {
        let stdin = if stdio.stdin.is_empty() {
            closed_stdin(owner)?
        } else {
            let (child, ours) = pipe_pair(owner)?;
            let writer = pipe::Sender::from_owned_fd(ours).map_err(Error::io("set up the stdin pipe"))?;
            tasks.copy_from_fifo(&stdio.stdin, writer).map_err(Error::shim("copy stdin"))?;
            child.into()
        };
        let stdout = output(&stdio.stdout, owner, tasks, holds)?;
        let stderr = output(&stdio.stderr, owner, tasks, holds)?;
        Ok(Stdio3::Given { stdin, stdout, stderr })
    }

    /// Completes the stdio once runc created the process.
    pub async fn finish(self) -> Result<ProcessIo> {
        match self {
            PendingIo::Pipes(tasks, holds) => Ok(ProcessIo { tasks, pty: None, log_file: None, _writer_holds: holds }),
            PendingIo::Logged(log_file) => {
                Ok(ProcessIo { tasks: IoTasks::default(), pty: None, log_file, _writer_holds: Vec::new() })
            }
            PendingIo::Console { socket, stdio } => {
                let master = socket.receive().await?;
                let pty = Pty::new(master).map_err(Error::shim("set up the terminal"))?;
                let tasks = IoTasks::default();
                if !stdio.stdin.is_empty() {
                    tasks.copy_from_fifo(&stdio.stdin, pty.clone()).map_err(Error::shim("copy stdin"))?;
                }
                if !stdio.stdout.is_empty() {
                    tasks.copy_to_fifo(pty.clone(), &stdio.stdout).map_err(Error::shim("copy stdout"))?;
                }
                Ok(ProcessIo { tasks, pty: Some(pty), log_file: None, _writer_holds: Vec::new() })
            }
        }
    }

    /// The console socket runc must send the terminal to, if any.
    pub fn console_socket(&self) -> Option<&std::path::Path> {
        match self {
            PendingIo::Pipes(..) | PendingIo::Logged(_) => None,
            PendingIo::Console { socket, .. } => Some(socket.path()),
        }
    }

    /// Releases everything when runc failed.
    pub async fn abort(self) {
        match self {
            PendingIo::Pipes(tasks, _) => tasks.abort().await,
            PendingIo::Logged(copy) => copy.into_iter().for_each(log_uri::FileCopy::abort),
            PendingIo::Console { .. } => {}
        }
    }
}

impl ProcessIo {
    pub fn close_stdin(&self) {
        self.tasks.close_input();
    }

    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        let Some(pty) = &self.pty else {
            return Err(Error::InvalidArgument("the process has no terminal to resize".into()));
        };
        let size = libc::winsize {
            ws_row: height.min(u16::MAX as u32) as u16,
            ws_col: width.min(u16::MAX as u32) as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer we pass.
        let rc = unsafe { libc::ioctl(std::os::fd::AsFd::as_fd(pty).as_raw_fd(), libc::TIOCSWINSZ, &size) };
        if rc < 0 {
            return Err(Error::io("resize the terminal")(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Drains buffered output to containerd, then closes the copies and,
    /// with `self`, the writer holds: readers then see the end of the file.
    pub async fn shutdown(self) {
        self.tasks.shutdown().await;
        if let Some(copy) = self.log_file {
            copy.finish().await;
        }
    }
}

fn output(path: &str, owner: IoOwner, tasks: &IoTasks, holds: &mut Vec<File>) -> Result<ChildStdio> {
    if path.is_empty() {
        return Ok(ChildStdio::null());
    }
    let (ours, child) = pipe_pair(owner)?;
    let reader = pipe::Receiver::from_owned_fd(ours).map_err(Error::io("set up an output pipe"))?;
    tasks.copy_to_fifo(reader, path).map_err(Error::shim(format!("copy output to {path}")))?;
    // Cannot block: the copy above holds the fifo's read end open.
    let hold = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(Error::io(format!("hold {path} open")))?;
    holds.push(hold);
    Ok(child.into())
}

/// What a process without stdin reads: a pipe whose write end is closed,
/// so a read ends at once, as on /dev/null. Not /dev/null itself: the
/// shim's /dev/null is a file of the host's /dev, a mount CRIU cannot find
/// in the container's mount namespace ("Can't lookup mount"), so a process
/// holding it could never be dumped. A container restored without stdin
/// (`migratectl restore -d`) then could not be checkpointed again.
fn closed_stdin(owner: IoOwner) -> Result<ChildStdio> {
    let (read, _write) = pipe_pair(owner)?;
    Ok(read.into())
}

/// A pipe as (read end, write end); both ends are given to `owner` so a
/// process running as another user can use its end.
fn pipe_pair(owner: IoOwner) -> Result<(OwnedFd, OwnedFd)> {
    let (r, w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::io("create a pipe")(e.into()))?;
    if owner.uid != 0 || owner.gid != 0 {
        for fd in [&r, &w] {
            nix::unistd::fchown(fd, Some(owner.uid.into()), Some(owner.gid.into()))
                .map_err(|e| Error::io("hand a stdio pipe to the container's user")(e.into()))?;
        }
    }
    Ok((r, w))
}
