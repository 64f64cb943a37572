//! Finding the migratectl binary the end-to-end tests drive.
//!
//! It is taken from `$MIGRATECTL`, else from the test's own target profile
//! (`cargo test --workspace` builds it, since coordinator/ has integration
//! tests of its own), else from the other profile.

use std::path::PathBuf;

use crate::{fixture::repo_root, host};

pub fn binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("MIGRATECTL") {
        return Some(PathBuf::from(path)).filter(|p| host::is_executable(p));
    }
    // target/<profile>/deps/<this test> -> target/<profile>
    let own_profile = std::env::current_exe()
        .ok()?
        .parent()?
        .parent()?
        .to_path_buf();
    let target = repo_root().join("target");
    [own_profile, target.join("release"), target.join("debug")]
        .into_iter()
        .map(|dir| dir.join("migratectl"))
        .find(|p| host::is_executable(p))
}

/// Whether `test` can run: migratectl and CRIU are there. If not, it
/// panics with CI=true and otherwise prints why it skips; the fixture
/// checks the rest (root, containerd, the shim).
pub fn prerequisites_met(test: &str) -> bool {
    let mut missing = Vec::new();
    if binary().is_none() {
        missing.push(
            "the migratectl binary (cargo build --release -p containerd-migrate-coordinator)",
        );
    }
    if host::which("criu").is_none() {
        missing.push("`criu` on PATH (hack/setup.sh builds and installs it)");
    }
    if missing.is_empty() {
        return true;
    }
    let reason = format!("{test} needs {}", missing.join(", "));
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{reason}; run hack/setup.sh (as root)");
    }
    eprintln!("skipping: {reason}");
    false
}
