//! What CRIU can do on this host, for the choices that depend on it.
//!
//! - Memory tracking: the soft-dirty bits of the kernel
//!   (`CONFIG_MEM_SOFT_DIRTY`) that pre-dumps and dumps against parent
//!   images rely on. Most x86_64 distribution kernels have them; some
//!   kernels (and arm64 before 6.x) do not, and there `runc checkpoint
//!   --pre-dump` fails with "CRIU is missing features" while `criu
//!   pre-dump` hits a BUG. Callers then fall back to full dumps whose
//!   increments are found by the storage layer.
//! - Locking the network with nftables: CRIU does it in-process through
//!   libnftables, where its default, iptables, runs `iptables-restore`
//!   several times per dump and per restore (about 60 ms of frozen time
//!   with the nft-based iptables of current distributions). It needs a
//!   CRIU built with libnftables and a kernel with set concatenations.
//!
//! CRIU's own check is the authority: it knows what its version needs of
//! the kernel. The answers cannot change while the host runs, so each is
//! asked once per process, of the `criu` runc runs (the first on PATH).

use std::path::Path;

use tokio::sync::OnceCell;

use super::command::{Stdio3, run};

/// What `criu check --feature NAME` says about this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feature {
    Supported,
    /// `reason` is CRIU's own words, or why it could not be asked.
    Unsupported {
        reason: String,
    },
}

impl Feature {
    /// Reads CRIU's answer: it exits 0 only when the feature works, and
    /// otherwise says why (e.g. "Warn (criu/cr-check.c:824): Dirty tracking
    /// is OFF. Memory snapshot will not work.") on stderr.
    fn from_check(feature: &str, status: i32, stdout: &[u8], stderr: &[u8]) -> Feature {
        if status == 0 {
            return Feature::Supported;
        }
        let said = |bytes: &[u8]| {
            String::from_utf8_lossy(bytes).lines().map(str::trim).rfind(|l| !l.is_empty()).map(str::to_string)
        };
        let reason = said(stderr)
            .or_else(|| said(stdout))
            .unwrap_or_else(|| format!("`criu check --feature {feature}` exited with status {status}"));
        Feature::Unsupported { reason }
    }
}

static MEMORY_TRACKING: OnceCell<Feature> = OnceCell::const_new();
static NFTABLES_LOCK: OnceCell<Feature> = OnceCell::const_new();

/// Whether pre-dumps and incremental dumps (`--parent-path`) work here.
pub async fn memory_tracking() -> &'static Feature {
    MEMORY_TRACKING.get_or_init(|| probe("mem_dirty_track")).await
}

/// Whether CRIU can lock the network with nftables here.
pub async fn nftables_lock() -> &'static Feature {
    NFTABLES_LOCK.get_or_init(|| probe("network_lock_nftables")).await
}

async fn probe(feature: &str) -> Feature {
    super::kerndat::ensure_cache().await;
    let args = vec!["check".into(), "--feature".into(), feature.into()];
    match run(Path::new("criu"), args, Stdio3::Captured, None, &[]).await {
        Ok(out) => Feature::from_check(feature, out.status, &out.stdout, &out.stderr),
        Err(e) => Feature::Unsupported { reason: format!("cannot ask CRIU: {e}") },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_zero_is_support() {
        let found = Feature::from_check("mem_dirty_track", 0, b"mem_dirty_track is supported\n", b"");
        assert_eq!(found, Feature::Supported);
    }

    #[test]
    fn criu_says_why_not() {
        let stderr = b"Warn  (criu/cr-check.c:824): Dirty tracking is OFF. Memory snapshot will not work.\n";
        let found = Feature::from_check("mem_dirty_track", 1, b"", stderr);
        assert_eq!(
            found,
            Feature::Unsupported {
                reason: "Warn  (criu/cr-check.c:824): Dirty tracking is OFF. Memory snapshot will not work.".into()
            }
        );
    }

    #[test]
    fn silence_is_explained_too() {
        let found = Feature::from_check("network_lock_nftables", 1, b"\n", b"");
        assert_eq!(
            found,
            Feature::Unsupported { reason: "`criu check --feature network_lock_nftables` exited with status 1".into() }
        );
    }
}
