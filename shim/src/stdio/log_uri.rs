//! Output sent somewhere other than a fifo, named by a URI in the stdout
//! field, as containerd allows: `file:///path` appends both streams to a
//! file; `binary:///path?arg=value` hands them to a logging program (this is
//! how nerdctl keeps the logs of detached containers).
//!
//! The logging program gets the read ends of the stdout and stderr pipes as
//! fds 3 and 4 and a pipe on fd 5 that it closes (or writes to) once it is
//! ready, plus CONTAINER_ID and CONTAINER_NAMESPACE in its environment: the
//! contract containerd's own shims keep.

use std::{
    fs::{File, OpenOptions},
    io::Read,
    os::{
        fd::{AsRawFd, OwnedFd, RawFd},
        unix::{fs::OpenOptionsExt, process::CommandExt},
    },
    path::PathBuf,
    process::{Command, Stdio as ChildStdio},
};

use nix::{fcntl::OFlag, unistd::pipe2};

use crate::{
    error::{Error, Result},
    runc::Stdio3,
};

#[derive(Debug, PartialEq, Eq)]
pub enum LogTarget {
    File(PathBuf),
    Binary { path: PathBuf, args: Vec<String> },
}

impl LogTarget {
    /// `None` for a plain fifo path.
    pub fn parse(uri: &str) -> Result<Option<Self>> {
        let Some((scheme, rest)) = uri.split_once("://") else { return Ok(None) };
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if path.is_empty() || !path.starts_with('/') {
            return Err(Error::InvalidArgument(format!("log URI {uri} must name an absolute path")));
        }
        match scheme {
            "file" => Ok(Some(LogTarget::File(PathBuf::from(percent_decode(path))))),
            "binary" => {
                // Each query pair becomes "key value" arguments, in order.
                let mut args = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    args.push(percent_decode(k));
                    if !v.is_empty() {
                        args.push(percent_decode(v));
                    }
                }
                Ok(Some(LogTarget::Binary { path: PathBuf::from(percent_decode(path)), args }))
            }
            other => Err(Error::Unsupported(format!("log URI scheme {other}:// ({uri})"))),
        }
    }

    /// Opens the target and returns the stdio to give runc (`stdin`, and
    /// the output) and, for a file, the copies that fill it.
    pub fn open(&self, container_id: &str, namespace: &str, stdin: ChildStdio) -> Result<(Stdio3, Option<FileCopy>)> {
        match self {
            LogTarget::File(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(Error::io(format!("create {}", dir.display())))?;
                }
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o640)
                    .open(path)
                    .map_err(Error::io(format!("open the log file {}", path.display())))?;
                // The process gets pipes, never the file: CRIU cannot dump a
                // descriptor of a file outside the container's mounts, and
                // pipes are what it knows to reconnect on restore.
                let (out_r, out_w) = pipe()?;
                let (err_r, err_w) = pipe()?;
                let copy = FileCopy::start([out_r, err_r], &file)?;
                Ok((Stdio3::Given { stdin, stdout: out_w.into(), stderr: err_w.into() }, Some(copy)))
            }
            LogTarget::Binary { path, args } => {
                let (out_r, out_w) = pipe()?;
                let (err_r, err_w) = pipe()?;
                let (ready_r, ready_w) = pipe()?;
                let mut cmd = Command::new(path);
                cmd.args(args)
                    .env("CONTAINER_ID", container_id)
                    .env("CONTAINER_NAMESPACE", namespace)
                    .stdin(ChildStdio::null())
                    .stdout(ChildStdio::null())
                    .stderr(ChildStdio::null());
                let fds = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
                // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
                unsafe { cmd.pre_exec(move || place_fds(fds)) };
                // The logger is reaped by the shim's reaper like every child; it
                // ends by itself when the container's output pipes close.
                cmd.spawn().map_err(Error::io(format!("start the logging binary {}", path.display())))?;
                drop((out_r, err_r, ready_w));
                wait_ready(ready_r, path)?;
                Ok((Stdio3::Given { stdin, stdout: out_w.into(), stderr: err_w.into() }, None))
            }
        }
    }
}

/// Copies the process's output pipes into a log file until they close.
pub struct FileCopy(Vec<tokio::task::JoinHandle<()>>);

/// As long as containerd's own shim lets output drain after the process.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl FileCopy {
    fn start(pipes: [OwnedFd; 2], file: &File) -> Result<FileCopy> {
        let mut copies = Vec::new();
        for pipe in pipes {
            let mut from =
                tokio::net::unix::pipe::Receiver::from_owned_fd(pipe).map_err(Error::io("set up an output pipe"))?;
            let mut to = tokio::fs::File::from_std(file.try_clone().map_err(Error::io("duplicate the log file"))?);
            copies.push(tokio::spawn(async move {
                if let Err(e) = tokio::io::copy(&mut from, &mut to).await {
                    log::warn!("copying output to the log file failed: {e}");
                }
            }));
        }
        Ok(FileCopy(copies))
    }

    /// Lets the copies deliver what is buffered, then stops them.
    pub async fn finish(self) {
        for copy in self.0 {
            let abort = copy.abort_handle();
            if tokio::time::timeout(DRAIN_TIMEOUT, copy).await.is_err() {
                abort.abort();
            }
        }
    }

    pub fn abort(self) {
        for copy in self.0 {
            copy.abort();
        }
    }
}

/// Moves the three fds to 3, 4 and 5 in the child, via fresh copies so that
/// none is overwritten before it is moved.
fn place_fds(fds: [RawFd; 3]) -> std::io::Result<()> {
    let mut copies = [0; 3];
    for (copy, fd) in copies.iter_mut().zip(fds) {
        // SAFETY: plain fcntl on a descriptor we own.
        *copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
        if *copy < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    for (target, copy) in (3..).zip(copies) {
        // SAFETY: dup2 onto a fixed slot; the result has no CLOEXEC.
        if unsafe { libc::dup2(copy, target) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn wait_ready(ready: OwnedFd, path: &std::path::Path) -> Result<()> {
    // Ready is a byte written or the pipe closed (end of file): either will do.
    let mut ready = File::from(ready);
    loop {
        match ready.read(&mut [0; 1]) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::io(format!("wait for the logging binary {} to be ready", path.display()))(e));
            }
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::io("create a pipe")(e.into()))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' => match (bytes.get(i + 1).and_then(|&b| hex(b)), bytes.get(i + 2).and_then(|&b| hex(b))) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_are_not_uris() {
        assert_eq!(LogTarget::parse("/run/containerd/fifo/1/c-stdout").unwrap(), None);
        assert_eq!(LogTarget::parse("").unwrap(), None);
    }

    #[test]
    fn binary_uri_becomes_program_and_args() {
        let t = LogTarget::parse("binary:///usr/local/bin/nerdctl?_NERDCTL_INTERNAL_LOGGING=%2Fvar%2Flib%2Fnerdctl")
            .unwrap();
        assert_eq!(
            t,
            Some(LogTarget::Binary {
                path: "/usr/local/bin/nerdctl".into(),
                args: vec!["_NERDCTL_INTERNAL_LOGGING".into(), "/var/lib/nerdctl".into()],
            })
        );
    }

    #[test]
    fn file_uri_and_bad_uris() {
        assert_eq!(LogTarget::parse("file:///var/log/c.log").unwrap(), Some(LogTarget::File("/var/log/c.log".into())));
        assert!(LogTarget::parse("file://relative").unwrap_err().to_string().contains("absolute path"));
        assert!(LogTarget::parse("fluentd:///x").unwrap_err().to_string().contains("not supported"));
    }
}
