//! The OCI annotations this runtime understands. Each parser names the
//! annotation and the form it accepts when a value is wrong, since the
//! person who wrote the value reads the error in `ctr` or a pod's events.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// Checkpoint once the container accepts TCP connections: "tcp:PORT".
pub const CHECKPOINT_WHEN_READY: &str = "io.containerd.migrate.checkpoint-when-ready";
/// Start the container by restoring this checkpoint: "file:///abs/path/to/checkpoint-dir".
pub const RESTORE_FROM: &str = "io.containerd.migrate.restore-from";
/// The store checkpoints go to: "file:///abs/path"; the default store otherwise.
pub const CHECKPOINT_STORE: &str = "io.containerd.migrate.checkpoint.store";

/// How to tell that a container is ready to be checkpointed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyProbe {
    /// A TCP connect to this port in the container's network namespace succeeds.
    Tcp(u16),
}

pub fn ready_probe(value: &str) -> Result<ReadyProbe> {
    const EXPECTED: &str = "tcp:PORT with PORT in 1-65535";
    value
        .strip_prefix("tcp:")
        // u16 parsing alone would accept "+80"; a port is plain digits.
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|&p| p != 0)
        .map(ReadyProbe::Tcp)
        .ok_or_else(|| bad(CHECKPOINT_WHEN_READY, value, EXPECTED))
}

pub fn restore_from(value: &str) -> Result<PathBuf> {
    file_url(RESTORE_FROM, value, "file:///ABSOLUTE/PATH/TO/CHECKPOINT-DIR (a file URL of a checkpoint directory)")
}

pub fn store_root(value: &str) -> Result<PathBuf> {
    file_url(CHECKPOINT_STORE, value, "file:///ABSOLUTE/PATH (a file URL of a checkpoint store directory)")
}

/// The path of a `file://` URL with an empty host. Percent-encoding is not
/// decoded: a `%` in the value is refused rather than guessed at.
fn file_url(name: &'static str, value: &str, expected: &'static str) -> Result<PathBuf> {
    let path = value
        .strip_prefix("file://")
        .filter(|p| p.starts_with('/') && !p.contains(['%', '?', '#']))
        .map(Path::new)
        .filter(|p| p.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_))))
        .filter(|p| p.components().count() > 1);
    path.map(Path::to_path_buf).ok_or_else(|| bad(name, value, expected))
}

fn bad(name: &'static str, value: &str, expected: &'static str) -> Error {
    Error::BadAnnotation { name, value: value.to_owned(), expected }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_probes() {
        assert_eq!(ready_probe("tcp:8080").unwrap(), ReadyProbe::Tcp(8080));
        assert_eq!(ready_probe("tcp:65535").unwrap(), ReadyProbe::Tcp(65535));
        for bad in ["tcp:abc", "tcp:0", "tcp:65536", "tcp:", "tcp:+80", "http:80", "8080", ""] {
            assert!(ready_probe(bad).is_err(), "{bad}");
        }
        assert_eq!(
            ready_probe("tcp:abc").unwrap_err().to_string(),
            r#"io.containerd.migrate.checkpoint-when-ready="tcp:abc" is not valid: expected tcp:PORT with PORT in 1-65535"#
        );
    }

    #[test]
    fn file_urls() {
        assert_eq!(restore_from("file:///var/lib/cp/web-1").unwrap(), PathBuf::from("/var/lib/cp/web-1"));
        assert_eq!(store_root("file:///srv/checkpoints/").unwrap(), PathBuf::from("/srv/checkpoints/"));
        for bad in
            ["/var/lib/cp", "file://host/x", "file://relative", "file:///", "file:///a/../b", "file:///a%20b", ""]
        {
            let err = restore_from(bad).unwrap_err();
            assert!(matches!(&err, Error::BadAnnotation { name: RESTORE_FROM, .. }), "{bad}: {err}");
        }
        let msg = store_root("s3://bucket").unwrap_err().to_string();
        assert!(
            msg.starts_with(r#"io.containerd.migrate.checkpoint.store="s3://bucket" is not valid: expected file:///"#),
            "{msg}"
        );
    }
}
