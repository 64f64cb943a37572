//! The app's own signal: systemd's notify protocol (sd_notify(3)). The
//! shim binds a datagram socket in the container's root directory before
//! the container is created and names it in the process's NOTIFY_SOCKET;
//! an app that speaks the protocol sends `READY=1` there once it is ready,
//! as it would to systemd.
//!
//! The socket is a file of the container's root file system rather than a
//! bind mount: CRIU dumps mounts, and a clone restored without the same
//! mount in its spec could not be restored. The file is removed before the
//! ready point is dumped, so neither the checkpoint nor its clones hold
//! any of it; a later sd_notify in a clone fails with ENOENT, which apps
//! ignore, as they do outside systemd.

use std::{
    io::ErrorKind,
    os::{
        fd::AsRawFd,
        unix::{fs::PermissionsExt, net::UnixDatagram},
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::watch::{Fired, Outcome, init_alive};

/// The socket's file, in the container's root directory, which no mount
/// of the spec can hide (a tmpfs on /run would).
const SOCKET_NAME: &str = "containerd-migrate-notify.sock";
/// How often the wait looks at whether the container still runs.
const LIVENESS_PERIOD: Duration = Duration::from_millis(100);
/// A notify message is a few assignments; systemd reads at most this much.
const MAX_MESSAGE: usize = 4096;

/// The bound socket; its file goes when this does.
#[derive(Debug)]
pub struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    /// NOTIFY_SOCKET's value: the socket's path inside the container.
    pub fn container_path() -> String {
        format!("/{SOCKET_NAME}")
    }

    /// Binds the socket in `rootfs`, the container's root directory as the
    /// shim sees it.
    pub fn bind(rootfs: &Path) -> std::io::Result<NotifySocket> {
        let path = rootfs.join(SOCKET_NAME);
        // Left behind by a shim that died; nothing else names a file so.
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        // A socket's path must fit in 108 bytes, which a bundle's path
        // with a long container id does not leave: bound through the
        // directory's descriptor instead.
        let dir = std::fs::File::open(rootfs)?;
        let socket = UnixDatagram::bind(format!("/proc/self/fd/{}/{SOCKET_NAME}", dir.as_raw_fd()))?;
        // Sending needs write permission, whichever user the app runs as.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))?;
        socket.set_read_timeout(Some(LIVENESS_PERIOD))?;
        Ok(NotifySocket { socket, path })
    }

    /// Waits for READY=1 from the container whose init is `pid`, started
    /// at `start`, until `give_up` after it.
    pub fn wait(&self, pid: u32, start: Instant, give_up: Duration) -> std::io::Result<Outcome> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut last = String::from("no message was received");
        loop {
            if !init_alive(pid) {
                return Ok(Outcome::Stopped);
            }
            match self.socket.recv(&mut buf) {
                Ok(n) => {
                    let message = String::from_utf8_lossy(&buf[..n]);
                    if says_ready(&message) {
                        return Ok(Outcome::Ready(Fired {
                            after: start.elapsed(),
                            attempts: 0,
                            last_failure: None,
                            warm_up: None,
                            left_open: false,
                        }));
                    }
                    last = format!("the last message did not say READY=1: {:?}", message.trim_end());
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(e),
            }
            if start.elapsed() >= give_up {
                return Ok(Outcome::GaveUp { last_failure: last });
            }
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Sets NOTIFY_SOCKET in the environment of the process of the spec in
/// `bundle`, replacing a value the spec had: the app is to tell the shim,
/// whatever else it was told. The spec is edited as JSON, not through a
/// typed spec, which would drop what its types do not know.
pub fn name_in_spec(bundle: &Path) -> std::io::Result<()> {
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    let process = spec
        .get_mut("process")
        .and_then(serde_json::Value::as_object_mut)
        .ok_or_else(|| std::io::Error::other("the spec has no process"))?;
    let env = process.entry("env").or_insert_with(|| serde_json::Value::Array(Vec::new()));
    let env = env.as_array_mut().ok_or_else(|| std::io::Error::other("the spec's process.env is not a list"))?;
    env.retain(|v| !v.as_str().is_some_and(|e| e.starts_with(ENV_PREFIX)));
    env.push(format!("{ENV_PREFIX}{}", NotifySocket::container_path()).into());
    let tmp = bundle.join(".config.json.notify");
    std::fs::write(&tmp, serde_json::to_vec(&spec)?)?;
    std::fs::rename(&tmp, &path)
}

const ENV_PREFIX: &str = "NOTIFY_SOCKET=";

/// Whether a notify message (newline-separated assignments) says READY=1.
fn says_ready(message: &str) -> bool {
    message.lines().any(|line| line == "READY=1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_is_one_assignment_among_others() {
        assert!(says_ready("READY=1"));
        assert!(says_ready("STATUS=Accepting connections\nREADY=1\n"));
        assert!(!says_ready("STATUS=Loading\n"));
        assert!(!says_ready("READY=0"));
        assert!(!says_ready("XREADY=1"));
    }

    #[test]
    fn the_spec_names_the_socket() {
        let bundle = tempfile::tempdir().unwrap();
        let config = bundle.path().join("config.json");
        std::fs::write(
            &config,
            r#"{"ociVersion":"1.2.0","process":{"args":["sh"],"env":["PATH=/bin","NOTIFY_SOCKET=/run/systemd/notify"]},"x-unknown":1}"#,
        )
        .unwrap();
        name_in_spec(bundle.path()).unwrap();
        let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
        assert_eq!(
            spec["process"]["env"],
            serde_json::json!(["PATH=/bin", "NOTIFY_SOCKET=/containerd-migrate-notify.sock"])
        );
        assert_eq!(spec["x-unknown"], 1, "what the spec types do not know is kept");
        std::fs::write(&config, r#"{"process":{"args":["sh"]}}"#).unwrap();
        name_in_spec(bundle.path()).unwrap();
        let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
        assert_eq!(spec["process"]["env"], serde_json::json!(["NOTIFY_SOCKET=/containerd-migrate-notify.sock"]));
    }

    #[test]
    fn fires_at_ready_and_removes_its_file() {
        let root = tempfile::tempdir().unwrap();
        let notify = NotifySocket::bind(root.path()).unwrap();
        let path = root.path().join("containerd-migrate-notify.sock");
        let app = UnixDatagram::unbound().unwrap();
        app.send_to(b"STATUS=starting", &path).unwrap();
        app.send_to(b"STATUS=up\nREADY=1\n", &path).unwrap();
        let outcome = notify.wait(std::process::id(), Instant::now(), Duration::from_secs(10)).unwrap();
        assert!(matches!(outcome, Outcome::Ready(Fired { attempts: 0, .. })), "{outcome:?}");
        drop(notify);
        assert!(!path.exists());
    }

    #[test]
    fn gives_up_naming_the_last_message() {
        let root = tempfile::tempdir().unwrap();
        let notify = NotifySocket::bind(root.path()).unwrap();
        let app = UnixDatagram::unbound().unwrap();
        app.send_to(b"STATUS=loading", root.path().join("containerd-migrate-notify.sock")).unwrap();
        match notify.wait(std::process::id(), Instant::now(), Duration::from_millis(50)).unwrap() {
            Outcome::GaveUp { last_failure } => assert!(last_failure.contains("STATUS=loading"), "{last_failure}"),
            other => panic!("{other:?}"),
        }
    }
}
