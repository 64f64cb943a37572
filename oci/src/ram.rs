//! RAM-backed scratch space: where a dump waits before it is committed (the
//! container is frozen only while CRIU copies its memory into RAM), and
//! where a version is rebuilt before a restore.

use std::path::{Path, PathBuf};

use nix::sys::statfs::{FsType, TMPFS_MAGIC, statfs};

/// linux/magic.h; nix names TMPFS_MAGIC but not this one.
const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);

/// The staging root in /dev/shm, a tmpfs almost everywhere.
pub const SHM_STAGING_ROOT: &str = "/dev/shm/containerd-migrate-staging";

/// Staging roots, each with the file system it lives on: /run is a tmpfs
/// on most hosts but not on all (not on this project's test machines);
/// /dev/shm is one almost everywhere.
const CANDIDATES: [(&str, &str); 2] = [("/run/containerd-migrate/staging", "/run"), (SHM_STAGING_ROOT, "/dev/shm")];

/// The first staging root on a RAM-backed file system, not created; None
/// if neither is in RAM.
pub fn staging_root() -> Option<PathBuf> {
    CANDIDATES.into_iter().find(|(_, fs)| is_ram_backed(Path::new(fs)).unwrap_or(false)).map(|(dir, _)| dir.into())
}

/// Whether `path` lives on tmpfs or ramfs.
pub fn is_ram_backed(path: &Path) -> std::io::Result<bool> {
    let fs = statfs(path)?.filesystem_type();
    Ok(fs == TMPFS_MAGIC || fs == RAMFS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_shm_is_ram_and_proc_is_not() {
        // /dev/shm is a tmpfs on every Linux that has it.
        if Path::new("/dev/shm").is_dir() {
            assert!(is_ram_backed(Path::new("/dev/shm")).unwrap());
            assert!(staging_root().is_some());
        }
        assert!(!is_ram_backed(Path::new("/proc")).unwrap());
    }
}
