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
//! - Action scripts from a configuration file while runc drives CRIU over
//!   RPC: CRIU runs them from 3.19 on ("action-scripts: allow shell
//!   scripts in rpc mode"); before, it ignores them or stops at a BUG. A
//!   restore that checks memory digests while CRIU works needs them.
//!
//! - Skipping the network lock: from 3.19 on. A checkpoint whose restores
//!   cannot continue its connections anyway needs none (see
//!   [`NetworkLock::Skip`](super::NetworkLock::Skip)).
//!
//! CRIU's own check is the authority: it knows what its version needs of
//! the kernel. The answers cannot change while the host runs, so each is
//! asked once per boot, of the `criu` runc runs (the first on PATH), and
//! kept for every shim ([`super::replies`]).

use tokio::sync::OnceCell;

use super::replies;

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
    fn from_check(feature: &str, status: i32, stdout: &str, stderr: &str) -> Feature {
        if status == 0 {
            return Feature::Supported;
        }
        let said = |text: &str| text.lines().map(str::trim).rfind(|l| !l.is_empty()).map(str::to_string);
        let reason = said(stderr)
            .or_else(|| said(stdout))
            .unwrap_or_else(|| format!("`criu check --feature {feature}` exited with status {status}"));
        Feature::Unsupported { reason }
    }
}

static MEMORY_TRACKING: OnceCell<Feature> = OnceCell::const_new();
static NFTABLES_LOCK: OnceCell<Feature> = OnceCell::const_new();
static VERSION: OnceCell<Option<String>> = OnceCell::const_new();

/// The first CRIU that runs a configuration file's action scripts in RPC
/// mode, and that can skip the network lock.
const SINCE_3_19: (u32, u32) = (3, 19);

/// Whether pre-dumps and incremental dumps (`--parent-path`) work here.
pub async fn memory_tracking() -> &'static Feature {
    MEMORY_TRACKING.get_or_init(|| probe("mem_dirty_track")).await
}

/// Whether CRIU can lock the network with nftables here.
pub async fn nftables_lock() -> &'static Feature {
    NFTABLES_LOCK.get_or_init(|| probe("network_lock_nftables")).await
}

/// Whether CRIU runs the action scripts of its configuration file when runc
/// drives it (see the module's comment).
pub async fn config_scripts_under_runc() -> bool {
    criu_version().await.is_some_and(|v| v >= SINCE_3_19)
}

/// Whether CRIU can be told not to lock the network.
pub async fn network_lock_skip() -> bool {
    criu_version().await.is_some_and(|v| v >= SINCE_3_19)
}

/// Major and minor of CRIU's version; `None` when CRIU cannot say.
async fn criu_version() -> Option<(u32, u32)> {
    criu_version_text().await.as_deref().and_then(major_minor)
}

/// CRIU's version as it prints it ("4.2.1"), asked once per boot (see
/// `replies`); `None` when CRIU cannot say. Checkpoints record it.
pub async fn criu_version_text() -> Option<String> {
    VERSION
        .get_or_init(|| async {
            let reply = replies::ask(&["--version"]).await.ok()?;
            if reply.status != 0 {
                return None;
            }
            version(&reply.stdout)
        })
        .await
        .clone()
}

/// The version of `criu --version`'s "Version: 4.2.1" line ("GitID: ..."
/// follows for builds from git).
fn version(text: &str) -> Option<String> {
    text.lines().find_map(|l| l.trim().strip_prefix("Version:")).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

/// Major and minor of a version such as "4.2.1".
fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next().flatten().unwrap_or(0)))
}

async fn probe(feature: &str) -> Feature {
    super::kerndat::ensure_cache().await;
    match replies::ask(&["check", "--feature", feature]).await {
        Ok(r) => Feature::from_check(feature, r.status, &r.stdout, &r.stderr),
        Err(e) => Feature::Unsupported { reason: format!("cannot ask CRIU: {e}") },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(version("Version: 4.2.1\n").as_deref(), Some("4.2.1"));
        assert_eq!(version("Version: 3.19\nGitID: v3.19-12-gabc\n").as_deref(), Some("3.19"));
        assert_eq!(version("criu: command not found\n"), None);
        assert_eq!(version("Version:\n"), None);
        assert_eq!(major_minor("4.2.1"), Some((4, 2)));
        assert_eq!(major_minor("3.19"), Some((3, 19)));
        assert_eq!(major_minor("4"), Some((4, 0)));
        assert_eq!(major_minor("bogus"), None);
        assert!(major_minor("3.17.1").unwrap() < SINCE_3_19);
    }

    #[test]
    fn exit_status_zero_is_support() {
        let found = Feature::from_check("mem_dirty_track", 0, "mem_dirty_track is supported\n", "");
        assert_eq!(found, Feature::Supported);
    }

    #[test]
    fn criu_says_why_not() {
        let stderr = "Warn  (criu/cr-check.c:824): Dirty tracking is OFF. Memory snapshot will not work.\n";
        let found = Feature::from_check("mem_dirty_track", 1, "", stderr);
        assert_eq!(
            found,
            Feature::Unsupported {
                reason: "Warn  (criu/cr-check.c:824): Dirty tracking is OFF. Memory snapshot will not work.".into()
            }
        );
    }

    #[test]
    fn silence_is_explained_too() {
        let found = Feature::from_check("network_lock_nftables", 1, "\n", "");
        assert_eq!(
            found,
            Feature::Unsupported { reason: "`criu check --feature network_lock_nftables` exited with status 1".into() }
        );
    }
}
