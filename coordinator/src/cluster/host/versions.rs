//! Versions of a checkpoint ticker's store rebuilt for a restore: which
//! to try (newest first, or one), and each rebuilt as a checkpoint
//! directory in scratch space. `migratectl restore --store` and the
//! agent's recovery of a dead host's containers (seed 001's Algorithm 2)
//! both go through here.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use migrate_version_store::{ChunkCipher, ContainerRef, StoreLocation, VersionError, VersionStore};

use super::scratch;

pub fn open(location: &StoreLocation) -> Result<Box<dyn VersionStore>> {
    location.open().with_context(|| format!("open the version store {location}"))
}

/// Which version `restore --store` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// The newest that rebuilds and restores, falling back to older ones.
    Latest,
    /// This one, or fail.
    Exactly(u64),
}

impl FromStr for Choice {
    type Err = String;

    fn from_str(s: &str) -> Result<Choice, String> {
        match s {
            "latest" => Ok(Choice::Latest),
            n => n.parse().map(Choice::Exactly).map_err(|_| format!("{n:?} is not a version: use latest or a number")),
        }
    }
}

/// The versions to try, in order.
pub fn candidates(store: &dyn VersionStore, target: &ContainerRef, choice: Choice) -> Result<Vec<u64>> {
    let listed = store.list_versions(target)?;
    match choice {
        Choice::Latest if listed.is_empty() => {
            bail!("the store holds no version of {target}: is its ticker running, and with this --store?")
        }
        Choice::Latest => Ok(listed.into_iter().rev().collect()),
        Choice::Exactly(v) if listed.contains(&v) => Ok(vec![v]),
        Choice::Exactly(v) => bail!("the store holds no version {v} of {target}; it holds {listed:?}"),
    }
}

/// Errors that no older version would avoid: the key is the same for all.
pub fn is_key_problem(e: &VersionError) -> bool {
    matches!(e, VersionError::KeyNeeded { .. } | VersionError::WrongKey { .. } | VersionError::NotEncrypted { .. })
}

/// A version rebuilt as a checkpoint directory in RAM (if there is a
/// tmpfs), removed when dropped: once the task runs, CRIU needs no images.
#[derive(Debug)]
pub struct Rebuilt {
    pub checkpoint: migrate_oci::Checkpoint,
    dir: PathBuf,
}

impl Drop for Rebuilt {
    fn drop(&mut self) {
        scratch::remove_dir(&self.dir, "the rebuilt version");
    }
}

/// Rebuilds version `version` and verifies it (every chunk's id, every
/// file's sha256). The error is boxed: it is big, and restore keeps it to
/// decide whether to fall back to an older version.
pub fn rebuild(
    store: &dyn VersionStore,
    target: &ContainerRef,
    version: u64,
    cipher: Option<&ChunkCipher>,
) -> Result<Rebuilt, Box<VersionError>> {
    let root = scratch::scratch_root(Path::new(RESTORE_SCRATCH)).map_err(|e| VersionError::Io {
        op: "create a scratch directory",
        path: RESTORE_SCRATCH.into(),
        source: std::io::Error::other(format!("{e:#}")),
    })?;
    // A directory of its own: a version with parents (criu-parent mode) is
    // rebuilt with them beside it, and all of it goes when dropped.
    let dir = root.join(format!("{}-{}-v{version}-{}", target.namespace, target.id, std::process::id()));
    std::fs::create_dir(&dir).map_err(|source| VersionError::Io {
        op: "create directory",
        path: dir.clone(),
        source,
    })?;
    match migrate_version_store::materialize(store, target, version, cipher, &dir.join("checkpoint")) {
        Ok(checkpoint) => Ok(Rebuilt { checkpoint, dir }),
        Err(e) => {
            scratch::remove_dir(&dir, "a version that did not rebuild");
            Err(Box::new(e))
        }
    }
}

/// Where versions are rebuilt when no tmpfs is mounted.
const RESTORE_SCRATCH: &str = "/var/lib/containerd-migrate/restore";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices() {
        assert_eq!("latest".parse::<Choice>().unwrap(), Choice::Latest);
        assert_eq!("7".parse::<Choice>().unwrap(), Choice::Exactly(7));
        assert!("newest".parse::<Choice>().unwrap_err().contains("latest or a number"));
    }
}
