//! The cluster's lease on this host, as a file the shims read.
//!
//! A host agent of containerd-migrate's cluster may run its containers only
//! while the coordinator acknowledges its heartbeats: each acknowledged
//! beat grants a lease, which ends before the coordinator may declare the
//! host down and restore its containers elsewhere. The agent stops its own
//! containers when the lease ends; if the agent process is gone (killed,
//! hung), nobody would, and two copies would run. So the agent also writes
//! the lease's end here, and the shim of every container with a restore
//! policy stops it when that time has passed (see the shim's `fence`).
//!
//! The file holds one decimal number: the lease's end on `CLOCK_MONOTONIC`,
//! in milliseconds, a clock every process of the host shares and that no
//! one can set.

use std::io::{ErrorKind, Write};
use std::path::Path;

/// Where the agent writes the lease and the shims read it.
pub const LEASE_FILE: &str = "/run/containerd-migrate/agent/lease";

/// Now, on `CLOCK_MONOTONIC`, in milliseconds.
pub fn now_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we own; CLOCK_MONOTONIC
    // always exists on Linux, so it cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1000 + u64::try_from(ts.tv_nsec).unwrap_or(0) / 1_000_000
}

/// Records that the lease ends at `end_ms` (see [`now_ms`]), replacing the
/// file in one rename so that a reader never sees half a number.
pub fn write(path: &Path, end_ms: u64) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".lease-{}", std::process::id()));
    let mut file = std::fs::File::create(&tmp)?;
    writeln!(file, "{end_ms}")?;
    std::fs::rename(&tmp, path)
}

/// When the lease ends; None if no agent has written one (not a cluster
/// host, or an agent that has not registered yet).
pub fn read(path: &Path) -> std::io::Result<Option<u64>> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| std::io::Error::new(ErrorKind::InvalidData, format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent/lease");
        assert_eq!(read(&path).unwrap(), None, "no agent, no lease");
        let end = now_ms() + 2500;
        write(&path, end).unwrap();
        assert_eq!(read(&path).unwrap(), Some(end));
        write(&path, end + 1000).unwrap();
        assert_eq!(read(&path).unwrap(), Some(end + 1000));
        std::fs::write(&path, "soon").unwrap();
        assert_eq!(read(&path).unwrap_err().kind(), ErrorKind::InvalidData);
        assert!(now_ms() > 0);
    }
}
