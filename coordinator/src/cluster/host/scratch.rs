//! Scratch directories: where a version is rebuilt before a restore, in
//! RAM where there is a RAM-backed file system, removed when done.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Removes `what` at `path` with all it holds, from a `Drop`: a failure is
/// only warned about.
pub fn remove_dir(path: &Path, what: &str) {
    match std::fs::remove_dir_all(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => log::warn!("could not remove {what} {}: {e}", path.display()),
    }
}

/// A directory for scratch work (rebuilding a version to restore it): the
/// first RAM-backed staging root, else `fallback`; created.
pub fn scratch_root(fallback: &Path) -> Result<PathBuf> {
    let root = migrate_oci::ram::staging_root().unwrap_or_else(|| fallback.to_path_buf());
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&root)
        .with_context(|| format!("create the scratch directory {}", root.display()))?;
    Ok(root)
}
