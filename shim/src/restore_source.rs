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
    same_image::{self, Image},
};

/// A checkpoint that passed every check and can be restored.
pub struct RestoreSource {
    criu: PathBuf,
    rootfs_diff: Option<PathBuf>,
    /// The memory images' digests, still to be checked.
    memory: Option<DeferredDigests>,
    /// The checkpoint's id and the image of the container it was taken
    /// from; None for a bare CRIU image directory, which says nothing of it.
    taken_from: Option<(String, Image)>,
}

/// A checkpoint ready for `runc restore`.
pub struct Prepared {
    pub criu: PathBuf,
    /// Digests the restore must check before the restored processes run.
    pub memory: Option<DeferredDigests>,
}

impl RestoreSource {
    /// Checks the checkpoint at `path`. An `Err` says why it cannot be used.
    pub fn check(path: &Path) -> Result<RestoreSource> {
        if path.join("manifest.json").is_file() {
            let checkpoint = Checkpoint::open(path)?;
            let memory = checkpoint.verify_deferring_memory()?;
            let manifest = checkpoint.manifest();
            let image = Image { reference: manifest.container.image.clone(), rootfs: manifest.rootfs.clone() };
            return Ok(RestoreSource {
                criu: checkpoint.criu_dir(),
                rootfs_diff: checkpoint.rootfs_diff(),
                // Files this host hashed before, unchanged since, are not
                // hashed again: the clones of one ready point, above all.
                memory: (!memory.is_empty() && !hashed::already(&memory)).then_some(memory),
                taken_from: Some((manifest.id.clone(), image)),
            });
        }
        if path.join("inventory.img").is_file() {
            return Ok(RestoreSource { criu: path.to_path_buf(), rootfs_diff: None, memory: None, taken_from: None });
        }
        Err(Error::InvalidArgument(format!(
            "{} holds no checkpoint: neither a manifest.json nor CRIU's inventory.img",
            path.display()
        )))
    }

    /// Checks that the checkpoint was taken from a container of `ours`, the
    /// image of the container it is to be restored into.
    pub fn check_image(&self, ours: &Image) -> Result<()> {
        match &self.taken_from {
            Some((id, saved)) => same_image::check(id, saved, ours),
            None => Ok(()),
        }
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

#[cfg(test)]
mod tests {
    use migrate_oci::{CheckpointStore, RootfsInfo};

    use super::*;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn image(reference: &str, chain: &str, lower: &str) -> Image {
        Image {
            reference: Some(reference.into()),
            rootfs: RootfsInfo::of(Some(chain.parse().unwrap()), vec![lower.into()]),
        }
    }

    #[test]
    fn the_image_the_manifest_records_is_compared() {
        let dir = tempfile::tempdir().unwrap();
        let staging = CheckpointStore::open(dir.path()).unwrap().staging("web-1").unwrap();
        std::fs::create_dir_all(staging.criu_dir()).unwrap();
        std::fs::write(staging.criu_dir().join("inventory.img"), [1; 64]).unwrap();
        let mut info = crate::testing::commit_info();
        let taken = image("redis:7", A, "/host1/snapshots/3/fs");
        info.container.image = taken.reference.clone();
        info.rootfs = taken.rootfs.clone();
        let checkpoint = staging.commit(info).unwrap();

        let source = RestoreSource::check(checkpoint.dir()).unwrap();
        source.check_image(&image("redis:7", A, "/host2/snapshots/41/fs")).unwrap();
        let err = source.check_image(&image("redis:8", B, "/host1/snapshots/3/fs")).unwrap_err().to_string();
        assert!(
            err.contains(&format!("checkpoint web-1 was taken from a different image: redis:7 (layers {A})")),
            "{err}"
        );
    }

    #[test]
    fn a_bare_criu_directory_names_no_image_to_compare() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("inventory.img"), [1; 64]).unwrap();
        let source = RestoreSource::check(dir.path()).unwrap();
        source.check_image(&image("redis:8", B, "/s/1/fs")).unwrap();
    }
}
