//! The ticker's criu-parent mode: where CRIU can track memory (the kernel
//! has soft-dirty bits), Algorithm 1 as seed 001 wrote it. Each group of
//! versions starts with a pre-dump, and every version is a dump against the
//! one before it (the pre-dump, for the group's first), so CRIU writes only
//! the pages dirtied since: the container is frozen for about that long,
//! not for all of its memory. The store records each version with its chain
//! of parents (mode criu-parent), so each still restores on its own.
//!
//! The chain lives in the ticker's RAM checkpoint store until the group
//! ends, which holds about the container's memory in RAM meanwhile. CRIU
//! tracks changes since the last dump that cleared the soft-dirty bits, so
//! the next dump must build on the newest one taken, stored or not: a dump
//! whose upload failed stays in the chain. A dump that failed may have
//! cleared the bits, so after one the chain starts over with a pre-dump.
//! So does a pre-dump or parent dump someone asks of the shim in between
//! through the Checkpoint RPC (a pre-copy migration's rounds): such a dump
//! clears the bits too, and an increment on the ticker's last dump would
//! miss what changed before it.

use std::path::{Path, PathBuf};

use log::{info, warn};

use crate::{
    capture::{Increment, Parent},
    container::Container,
    error::Result,
    runc::{self, Feature},
};

/// The checkpoints in the ticker's RAM store that the next dump builds on:
/// the pre-dump and every dump since, oldest first.
pub(super) struct Chain {
    ram: PathBuf,
    ids: Vec<String>,
    /// The container's [`Container::tracking_resets`] when the chain's
    /// last dump was taken: another value means the bits were cleared
    /// by someone else since.
    resets: u64,
}

impl Chain {
    /// A chain for container `id`'s dumps in the RAM store `ram` if CRIU's
    /// memory tracking works on this host (asked once per boot), else
    /// None: its versions are then found by storage chunks.
    pub(super) async fn if_supported(id: &str, ram: &Path) -> Option<Chain> {
        match runc::memory_tracking().await {
            Feature::Supported => {
                info!("{id}: CRIU tracks memory here: versions are dumps on parents (mode criu-parent)");
                Some(Chain { ram: ram.to_owned(), ids: Vec::new(), resets: 0 })
            }
            Feature::Unsupported { reason } => {
                info!("{id}: CRIU cannot track memory here ({reason}): versions are full dumps (mode storage-chunks)");
                None
            }
        }
    }

    /// Dumps version `version`, the first of its group if `group_base`:
    /// then, and whenever no chain is at hand, a pre-dump first. Returns
    /// the dump's directory, which the next dump builds on: it must stay.
    pub(super) async fn dump(&mut self, container: &Container, version: u64, group_base: bool) -> Result<PathBuf> {
        let resets = container.tracking_resets();
        if resets != self.resets && !self.ids.is_empty() {
            info!("{}: a dump outside the ticker cleared the memory tracking; the chain starts over", container.id);
        }
        if group_base || self.ids.is_empty() || resets != self.resets {
            self.discard();
            self.resets = resets;
            let id = self.fresh_id(&format!("v{version}-pre"));
            let pre = super::dump(container, &self.ram, &id, Increment::PreDump(None)).await;
            self.grow(id, pre)?;
        }
        let parent = self.ids.last().expect("a chain has its pre-dump").clone();
        let id = self.fresh_id(&format!("v{version}"));
        let dumped = super::dump(container, &self.ram, &id, Increment::OnParent(Parent::Checkpoint(parent))).await;
        self.grow(id, dumped)
    }

    /// Adds a dump's checkpoint to the chain, or drops the chain if the
    /// dump failed.
    fn grow(&mut self, id: String, dumped: Result<PathBuf>) -> Result<PathBuf> {
        match dumped {
            Ok(dir) => {
                self.ids.push(id);
                Ok(dir)
            }
            Err(e) => {
                self.discard();
                Err(e)
            }
        }
    }

    /// `stem`, or `stem.N` if the chain has a checkpoint of that name (a
    /// version dumped again after its upload failed).
    fn fresh_id(&self, stem: &str) -> String {
        (1..)
            .map(|n| if n == 1 { stem.to_string() } else { format!("{stem}.{n}") })
            .find(|id| !self.ids.contains(id))
            .expect("some suffix is free")
    }

    /// Removes the chain's checkpoints from RAM, children first.
    fn discard(&mut self) {
        while let Some(id) = self.ids.pop() {
            let dir = self.ram.join(&id);
            if let Err(e) = std::fs::remove_dir_all(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                warn!("cannot remove {}: {e}", dir.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_stay_unique_in_a_chain() {
        let mut chain = Chain { ram: PathBuf::from("/nonexistent"), ids: Vec::new(), resets: 0 };
        assert_eq!(chain.fresh_id("v5"), "v5");
        chain.ids.extend(["v5-pre".to_string(), "v5".to_string()]);
        assert_eq!(chain.fresh_id("v5"), "v5.2");
        chain.ids.push("v5.2".into());
        assert_eq!(chain.fresh_id("v5"), "v5.3");
        assert_eq!(chain.fresh_id("v6"), "v6");
    }

    #[test]
    fn a_failed_dump_drops_the_chain() {
        let ram = tempfile::tempdir().unwrap();
        for id in ["v0-pre", "v0"] {
            std::fs::create_dir(ram.path().join(id)).unwrap();
        }
        let mut chain = Chain { ram: ram.path().to_owned(), ids: vec!["v0-pre".into(), "v0".into()], resets: 0 };
        let failed = chain.grow("v1".into(), Err(crate::error::Error::InvalidArgument("CRIU failed".into())));
        assert!(failed.is_err());
        assert!(chain.ids.is_empty());
        assert_eq!(std::fs::read_dir(ram.path()).unwrap().count(), 0);
        let grown = chain.grow("v2-pre".into(), Ok(ram.path().join("v2-pre"))).unwrap();
        assert_eq!(grown, ram.path().join("v2-pre"));
        assert_eq!(chain.ids, ["v2-pre"]);
    }
}
