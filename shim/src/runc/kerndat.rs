//! CRIU's cache of kernel facts, on hosts whose /run is not a tmpfs.
//!
//! Every CRIU run first probes the kernel ("kerndat", about 25 ms here,
//! three `iptables` processes among it) unless it finds the facts of an
//! earlier run in `/run/criu.kdat`. CRIU writes that file only where /run is
//! a tmpfs, so that a reboot, maybe into another kernel, drops it; where
//! /run is on disk (as on this project's VMs) it never does, and every dump
//! and every restore pays the probe. The shim then makes the cache itself,
//! once per boot: CRIU, run in a private mount namespace with a tmpfs over
//! /run, writes it there, and the shim copies it out, after a stamp with
//! the boot id. A cache without the stamp of the running boot is removed
//! before CRIU could read it. A cache of another CRIU build CRIU discards
//! by itself (its second magic number is the build time).

use std::{
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use log::{info, warn};
use nix::sys::statfs::{TMPFS_MAGIC, statfs};
use tokio::sync::OnceCell;

use super::command::{Stdio3, run};

const RUN: &str = "/run";
const CACHE: &str = "/run/criu.kdat";
const STAMP: &str = "/run/containerd-migrate/criu-kdat.boot-id";
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

static ENSURED: OnceCell<()> = OnceCell::const_new();

/// Makes sure CRIU finds a cache of this boot's kernel facts; once per
/// shim process. Failures only cost CRIU its probe, so they are logged.
pub async fn ensure_cache() {
    ENSURED.get_or_init(ensure).await;
}

async fn ensure() {
    match statfs(RUN) {
        Ok(fs) if fs.filesystem_type() == TMPFS_MAGIC => return, // CRIU keeps its own cache
        Ok(_) => {}
        Err(e) => {
            warn!("cannot tell what file system {RUN} is ({e}); CRIU probes the kernel on every run");
            return;
        }
    }
    let Ok(boot) = std::fs::read_to_string(BOOT_ID) else { return };
    let paths = Paths { cache: CACHE.into(), stamp: STAMP.into() };
    if paths.is_current(&boot) {
        return;
    }
    paths.discard();
    match made_by_criu().await {
        Ok(bytes) => match paths.install(&boot, &bytes) {
            Ok(()) => info!("made CRIU's kernel facts cache {CACHE} for this boot ({RUN} is not a tmpfs)"),
            Err(e) => warn!("cannot install CRIU's kernel facts cache {CACHE}: {e}"),
        },
        Err(why) => warn!("cannot make CRIU's kernel facts cache: {why}; CRIU probes the kernel on every run"),
    }
}

struct Paths {
    cache: PathBuf,
    stamp: PathBuf,
}

impl Paths {
    fn is_current(&self, boot: &str) -> bool {
        self.cache.is_file() && std::fs::read_to_string(&self.stamp).is_ok_and(|s| s == boot)
    }

    /// Removes a cache that may be of another kernel.
    fn discard(&self) {
        for path in [&self.cache, &self.stamp] {
            if let Err(e) = std::fs::remove_file(path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                warn!("cannot remove {}: {e}", path.display());
            }
        }
    }

    /// The stamp first: a cache never exists without it, whatever the
    /// moment the shim is stopped at. Both appear whole (renamed into place).
    fn install(&self, boot: &str, cache: &[u8]) -> std::io::Result<()> {
        write_renamed(&self.stamp, boot.as_bytes())?;
        write_renamed(&self.cache, cache)
    }
}

pub(super) fn write_renamed(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    // Root's only, as CRIU keeps its own cache.
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(bytes)?;
    drop(file);
    std::fs::rename(&tmp, path)
}

/// Runs `criu check` where /run is a fresh tmpfs and returns the cache it
/// wrote there.
async fn made_by_criu() -> Result<Vec<u8>, String> {
    let script = format!(
        "mount -t tmpfs -o size=1m,mode=0755 criu-kdat {RUN} && {{ criu check >/dev/null 2>&1; exec cat {CACHE}; }}"
    );
    let args = ["--mount", "--propagation", "private", "sh", "-c", &script].map(Into::into).to_vec();
    let out = run(Path::new("unshare"), args, Stdio3::Captured, None, &[], None).await.map_err(|e| e.to_string())?;
    if out.status != 0 || out.stdout.is_empty() {
        return Err(format!(
            "`unshare --mount sh -c '{script}'` exited with status {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_cache_counts_only_with_the_stamp_of_this_boot() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths { cache: dir.path().join("criu.kdat"), stamp: dir.path().join("m/criu-kdat.boot-id") };
        assert!(!paths.is_current("boot-1\n"));
        paths.install("boot-1\n", b"facts").unwrap();
        assert!(paths.is_current("boot-1\n"));
        assert_eq!(std::fs::metadata(&paths.cache).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!paths.is_current("boot-2\n"), "a cache of another boot");
        std::fs::remove_file(&paths.stamp).unwrap();
        assert!(!paths.is_current("boot-1\n"), "a cache nobody vouches for");
        paths.discard();
        assert!(!paths.cache.exists());
        paths.discard(); // nothing there: no complaint
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("m")).unwrap().collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
