//! The console socket through which runc hands over a terminal's master side.

use std::{
    fs::File,
    io::IoSliceMut,
    os::fd::{AsRawFd, FromRawFd, RawFd},
    path::{Path, PathBuf},
    time::Duration,
};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use tokio::{io::Interest, net::UnixListener};

use crate::error::{Error, Result};

/// runc connects as soon as `runc create`/`runc exec` has set the terminal
/// up, before it exits; a master that has not arrived by then never will.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ConsoleSocket {
    // A short private directory: socket paths are limited to 108 bytes, which
    // a bundle path under containerd's state directory can exceed.
    _dir: tempfile::TempDir,
    path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    pub fn new() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("migrate-pty")
            .tempdir()
            .map_err(Error::io("create a directory for the console socket"))?;
        let path = dir.path().join("pty.sock");
        let listener =
            UnixListener::bind(&path).map_err(Error::io(format!("listen on console socket {}", path.display())))?;
        Ok(Self { _dir: dir, path, listener })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The terminal master runc sent.
    pub async fn receive(self) -> Result<File> {
        let receive = async {
            let (stream, _) = self.listener.accept().await.map_err(Error::io("accept runc on the console socket"))?;
            loop {
                stream.readable().await.map_err(Error::io("wait for the terminal from runc"))?;
                match stream.try_io(Interest::READABLE, || recv_fd(stream.as_raw_fd())) {
                    Ok(file) => return Ok(file),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(Error::io("receive the terminal from runc")(e)),
                }
            }
        };
        tokio::time::timeout(RECEIVE_TIMEOUT, receive).await.map_err(|_| {
            Error::io("receive the terminal from runc")(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "runc sent no terminal on the console socket",
            ))
        })?
    }
}

fn recv_fd(socket: RawFd) -> std::io::Result<File> {
    // runc sends the terminal's name as the payload; only the fd matters.
    let mut buf = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(socket, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg
            && let Some(&fd) = fds.first()
        {
            // SAFETY: the kernel just installed this descriptor for us.
            return Ok(unsafe { File::from_raw_fd(fd) });
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "no file descriptor in runc's console message"))
}
