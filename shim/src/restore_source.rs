//! Finding the CRIU images a task is restored from, and making the root
//! file system match them.
//!
//! A checkpoint path may hold this project's format (a `manifest.json` with
//! the digest of every file, the CRIU images under `criu/`, the writable
//! layer's changes in `rootfs-diff.tar`) or a bare CRIU image directory as
//! containerd and runc.v2 produce it. Ours is verified before anything is
//! used: a damaged or partial checkpoint is refused, never half-restored.

use std::path::{Path, PathBuf};

use migrate_oci::Checkpoint;

use crate::{
    error::{Error, Result},
    rootfs::Overlay,
};

/// A checkpoint that passed every check and can be restored.
pub struct RestoreSource {
    criu: PathBuf,
    rootfs_diff: Option<PathBuf>,
}

impl RestoreSource {
    /// Checks the checkpoint at `path` for a container whose root file
    /// system is `overlay`. An `Err` says why it cannot be used.
    pub fn check(path: &Path, overlay: Option<&Overlay>) -> Result<RestoreSource> {
        if path.join("manifest.json").is_file() {
            let checkpoint = Checkpoint::open(path)?;
            checkpoint.verify()?;
            let manifest = checkpoint.manifest();
            if let (Some(saved), Some(ours)) = (&manifest.rootfs, overlay)
                && saved.lower_dirs != ours.lowers
            {
                return Err(Error::InvalidArgument(format!(
                    "checkpoint {} was taken from a different image: its layers are {:?}, this container's are {:?}",
                    manifest.id, saved.lower_dirs, ours.lowers
                )));
            }
            return Ok(RestoreSource { criu: checkpoint.criu_dir(), rootfs_diff: checkpoint.rootfs_diff() });
        }
        if path.join("inventory.img").is_file() {
            return Ok(RestoreSource { criu: path.to_path_buf(), rootfs_diff: None });
        }
        Err(Error::InvalidArgument(format!(
            "{} holds no checkpoint: neither a manifest.json nor CRIU's inventory.img",
            path.display()
        )))
    }

    /// Applies the checkpoint's writable-layer changes to the mounted root
    /// file system, then returns the CRIU image directory.
    pub fn prepare(self, rootfs: Option<&Path>) -> Result<PathBuf> {
        if let Some(diff) = &self.rootfs_diff {
            let Some(rootfs) = rootfs else {
                return Err(Error::InvalidArgument(
                    "the checkpoint carries root file system changes but the task has no rootfs mounts".into(),
                ));
            };
            migrate_oci::apply_layer(diff, rootfs)?;
        }
        Ok(self.criu)
    }
}
