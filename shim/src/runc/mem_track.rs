//! Whether CRIU can track memory changes on this host: the soft-dirty bits
//! of the kernel (`CONFIG_MEM_SOFT_DIRTY`) that pre-dumps and dumps against
//! parent images rely on.
//!
//! Most x86_64 distribution kernels have them; some kernels (and arm64
//! before 6.x) do not, and there `runc checkpoint --pre-dump` fails with
//! "CRIU is missing features" while `criu pre-dump` hits a BUG. So callers
//! ask first, and fall back to full dumps whose increments are found by
//! the storage layer. CRIU's own check is the authority: it knows what its
//! version needs of the kernel. The answer cannot change while the host
//! runs, so it is asked once per process.

use std::path::Path;

use tokio::sync::OnceCell;

use super::command::{Stdio3, run};

/// What `criu check --feature mem_dirty_track` says about this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryTracking {
    /// Pre-dumps and incremental dumps (`--parent-path`) work.
    Supported,
    /// They do not; `reason` is CRIU's own words, or why it could not be asked.
    Unsupported { reason: String },
}

impl MemoryTracking {
    /// Reads CRIU's answer: it exits 0 only when the feature works, and
    /// otherwise says why (e.g. "Warn (criu/cr-check.c:824): Dirty tracking
    /// is OFF. Memory snapshot will not work.") on stderr.
    fn from_check(status: i32, stdout: &[u8], stderr: &[u8]) -> MemoryTracking {
        if status == 0 {
            return MemoryTracking::Supported;
        }
        let said = |bytes: &[u8]| {
            String::from_utf8_lossy(bytes).lines().map(str::trim).rfind(|l| !l.is_empty()).map(str::to_string)
        };
        let reason = said(stderr)
            .or_else(|| said(stdout))
            .unwrap_or_else(|| format!("`criu check --feature mem_dirty_track` exited with status {status}"));
        MemoryTracking::Unsupported { reason }
    }
}

static MEMORY_TRACKING: OnceCell<MemoryTracking> = OnceCell::const_new();

/// Whether CRIU's memory tracking works here, asked of the `criu` runc
/// runs (the first on PATH) on the first call only.
pub async fn memory_tracking() -> &'static MemoryTracking {
    MEMORY_TRACKING.get_or_init(|| probe(Path::new("criu"))).await
}

async fn probe(criu: &Path) -> MemoryTracking {
    let args = vec!["check".into(), "--feature".into(), "mem_dirty_track".into()];
    match run(criu, args, Stdio3::Captured, None).await {
        Ok(out) => MemoryTracking::from_check(out.status, &out.stdout, &out.stderr),
        Err(e) => MemoryTracking::Unsupported { reason: format!("cannot ask CRIU: {e}") },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_zero_is_support() {
        let found = MemoryTracking::from_check(0, b"mem_dirty_track is supported\n", b"");
        assert_eq!(found, MemoryTracking::Supported);
    }

    #[test]
    fn criu_says_why_not() {
        let stderr = b"Warn  (criu/cr-check.c:824): Dirty tracking is OFF. Memory snapshot will not work.\n";
        let found = MemoryTracking::from_check(1, b"", stderr);
        assert_eq!(
            found,
            MemoryTracking::Unsupported {
                reason: "Warn  (criu/cr-check.c:824): Dirty tracking is OFF. Memory snapshot will not work.".into()
            }
        );
    }

    #[test]
    fn silence_is_explained_too() {
        let found = MemoryTracking::from_check(1, b"\n", b"");
        assert_eq!(
            found,
            MemoryTracking::Unsupported {
                reason: "`criu check --feature mem_dirty_track` exited with status 1".into()
            }
        );
    }
}
