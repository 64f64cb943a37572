//! Finding the CRIU images a task is restored from, and making the root
//! file system match them.
//!
//! A checkpoint path may hold this project's format (a `manifest.json` with
//! the digest of every file, the CRIU images under `criu/`, the writable
//! layer's changes in `rootfs-diff.tar`) or a bare CRIU image directory as
//! containerd and runc.v2 produce it. Ours is verified before anything is
//! used: a damaged or partial checkpoint is refused, never half-restored.
//! All of it but the digests of the memory images, that is: those are
//! checked while CRIU restores (see `restore_gate`), unless the caller
//! asks for everything now.

use std::path::{Path, PathBuf};

use migrate_oci::{Checkpoint, DeferredDigests};

use crate::{
    error::{Error, Result},
    hashed,
    rootfs::Overlay,
};

/// A checkpoint that passed every check and can be restored.
pub struct RestoreSource {
    criu: PathBuf,
    rootfs_diff: Option<PathBuf>,
    /// The memory images' digests, still to be checked.
    memory: Option<DeferredDigests>,
}

/// A checkpoint ready for `runc restore`.
pub struct Prepared {
    pub criu: PathBuf,
    /// Digests the restore must check before the restored processes run.
    pub memory: Option<DeferredDigests>,
}

impl RestoreSource {
    /// Checks the checkpoint at `path` for a container whose root file
    /// system is `overlay`. An `Err` says why it cannot be used.
    pub fn check(path: &Path, overlay: Option<&Overlay>) -> Result<RestoreSource> {
        if path.join("manifest.json").is_file() {
            let checkpoint = Checkpoint::open(path)?;
            let memory = checkpoint.verify_deferring_memory()?;
            let manifest = checkpoint.manifest();
            if let (Some(saved), Some(ours)) = (&manifest.rootfs, overlay)
                && saved.lower_dirs != ours.lowers
            {
                return Err(Error::InvalidArgument(format!(
                    "checkpoint {} was taken from a different image: its layers are {:?}, this container's are {:?}",
                    manifest.id, saved.lower_dirs, ours.lowers
                )));
            }
            return Ok(RestoreSource {
                criu: checkpoint.criu_dir(),
                rootfs_diff: checkpoint.rootfs_diff(),
                // Files this host hashed before, unchanged since, are not
                // hashed again: the clones of one ready point, above all.
                memory: (!memory.is_empty() && !hashed::already(&memory)).then_some(memory),
            });
        }
        if path.join("inventory.img").is_file() {
            return Ok(RestoreSource { criu: path.to_path_buf(), rootfs_diff: None, memory: None });
        }
        Err(Error::InvalidArgument(format!(
            "{} holds no checkpoint: neither a manifest.json nor CRIU's inventory.img",
            path.display()
        )))
    }

    /// Whether applying the checkpoint changes the root file system.
    pub fn changes_rootfs(&self) -> bool {
        self.rootfs_diff.is_some()
    }

    /// Checks the memory images' digests now rather than during the restore.
    pub fn verify_memory_now(&mut self) -> Result<()> {
        match self.memory.take() {
            Some(memory) => hashed::verify(&memory).map_err(Error::from),
            None => Ok(()),
        }
    }

    /// Applies the checkpoint's writable-layer changes to the mounted root
    /// file system, then returns what `runc restore` needs.
    pub fn prepare(self, rootfs: Option<&Path>) -> Result<Prepared> {
        if let Some(diff) = &self.rootfs_diff {
            let Some(rootfs) = rootfs else {
                return Err(Error::InvalidArgument(
                    "the checkpoint carries root file system changes but the task has no rootfs mounts".into(),
                ));
            };
            migrate_oci::apply_layer(diff, rootfs)?;
        }
        Ok(Prepared { criu: self.criu, memory: self.memory })
    }
}
