//! Versioned, incremental checkpoints (of [`migrate_oci`]'s format) in a
//! remote store: the storage under the checkpoint ticker.
//!
//! The ticker takes a leave-running checkpoint every interval and stores it
//! as version V of its container with [`store_version`]. Each file is cut
//! into chunks ([`chunking`]) addressed by their digest, and only chunks the
//! store lacks are uploaded. Where the kernel has no soft-dirty tracking the
//! increments are found here, in storage, rather than by CRIU
//! ([`IncrementalMode::StorageChunks`]); where it has, CRIU dumps only what
//! changed since the previous dump, and the version records the chain of
//! parent checkpoints it builds on ([`IncrementalMode::CriuParent`]). The
//! version's manifest is stored last, so a version is listed only once all
//! its chunks are durable.
//!
//! Versions form groups of `group_size` (`g * size .. g * size + size - 1`,
//! the first being the group's base); [`apply_retention`] drops the oldest
//! groups beyond `keep_groups`, then the chunks no remaining version of any
//! container uses. Because chunks are shared by content, every version is
//! self-contained: [`materialize`] rebuilds any of them alone. In this mode
//! a base is stored like the other versions (it too uploads only chunks the
//! store lacks); groups decide what retention drops together, and in
//! [`IncrementalMode::CriuParent`] they bound the chain of parents (each
//! group starts with a pre-dump).
//!
//! With a [`ChunkCipher`] the chunks are encrypted at rest ([`crypto`]).

pub mod chunking;
pub mod crypto;
mod dir_store;
mod error;
mod location;
mod manifest;
mod materialize;
mod registry_api;
mod registry_artifact;
mod registry_pack;
mod registry_store;
#[cfg(test)]
mod registry_tests;
mod retention;
mod store_version;
#[cfg(test)]
mod tests;

use std::{collections::HashSet, fmt, time::Duration};

pub use chunking::Chunking;
pub use crypto::{ChunkCipher, ChunkId, KEY_LEN};
pub use dir_store::DirStore;
pub use error::{Result, VersionError};
pub use location::{LOCATION_FORMS, RegistryLocation, StoreLocation};
pub use manifest::{
    ChunkRef, ENCRYPTION_ALGORITHM, Encryption, IncrementalMode, ParentCheckpoint, VERSION_MEDIA_TYPE,
    VERSION_SCHEMA_VERSION, VersionFile, VersionManifest,
};
pub use materialize::{materialize, read_manifest};
pub use registry_store::RegistryStore;
pub use retention::{Retention, RetentionReport, apply_retention};
pub use store_version::{VersionReport, store_version};

pub const DEFAULT_GROUP_SIZE: u64 = 5;
pub const DEFAULT_KEEP_GROUPS: u64 = 3;

/// Which container's versions: a containerd namespace and container id,
/// each `[A-Za-z0-9][A-Za-z0-9_.-]{0,127}`, which makes them safe path parts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerRef {
    pub namespace: String,
    pub id: String,
}

impl ContainerRef {
    pub fn new(namespace: &str, id: &str) -> Result<ContainerRef> {
        for (what, name) in [("namespace", namespace), ("container id", id)] {
            migrate_oci::validate_id(name).map_err(|_| VersionError::InvalidName { what, name: name.to_owned() })?;
        }
        Ok(ContainerRef { namespace: namespace.to_owned(), id: id.to_owned() })
    }
}

impl fmt::Display for ContainerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "container {}/{}", self.namespace, self.id)
    }
}

/// The group version `version` belongs to, and that group's base.
pub fn group_of(version: u64, group_size: u64) -> Result<(u64, u64)> {
    if group_size == 0 {
        return Err(VersionError::ZeroGroupSize);
    }
    let group = version / group_size;
    Ok((group, group * group_size))
}

/// What [`VersionStore::gc_chunks`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    pub chunks_removed: u64,
    pub bytes_removed: u64,
    /// Leftovers of interrupted writes.
    pub temp_files_removed: u64,
}

/// Where versions are kept: content-addressed chunk blobs, and per container
/// one manifest per version. Implementations make each blob and manifest
/// appear whole or not at all, and a manifest durable only after the chunks
/// put before it.
pub trait VersionStore: Send + Sync {
    /// Stores `blob` as chunk `id` unless the store has it; true if it was
    /// stored now.
    fn put_chunk(&self, id: &ChunkId, blob: &[u8]) -> Result<bool>;
    fn has_chunk(&self, id: &ChunkId) -> Result<bool>;
    /// Whether the store has chunk `id`; if it does, it is also marked as
    /// just used, so that a [`VersionStore::gc_chunks`] running meanwhile
    /// (which spares chunks used within its grace period) does not remove
    /// it from under a version that is about to reference it.
    fn claim_chunk(&self, id: &ChunkId) -> Result<bool>;
    fn get_chunk(&self, id: &ChunkId) -> Result<Option<Vec<u8>>>;
    /// The blobs of `ids`, in order, None for each the store lacks. A
    /// restore reads chunks in batches through this; stores where a request
    /// costs more than its bytes read a batch in few requests.
    fn get_chunks(&self, ids: &[ChunkId]) -> Result<Vec<Option<Vec<u8>>>> {
        ids.iter().map(|id| self.get_chunk(id)).collect()
    }
    /// Stores a version's manifest, after making every chunk put so far
    /// durable; fails with [`VersionError::VersionExists`] rather than
    /// replacing one.
    fn put_manifest(&self, container: &ContainerRef, version: u64, bytes: &[u8]) -> Result<()>;
    /// Containers with a directory in the store, with versions or not.
    fn list_containers(&self) -> Result<Vec<ContainerRef>>;
    /// Versions with a manifest, ascending.
    fn list_versions(&self, container: &ContainerRef) -> Result<Vec<u64>>;
    fn get_manifest(&self, container: &ContainerRef, version: u64) -> Result<Option<Vec<u8>>>;
    /// Removes a version's manifest (its chunks stay until a GC); false if
    /// there was none.
    fn delete_version(&self, container: &ContainerRef, version: u64) -> Result<bool>;
    /// Removes the chunks not in `keep` that were neither put nor claimed
    /// within `grace`, and leftovers of interrupted writes older than that.
    fn gc_chunks(&self, keep: &HashSet<ChunkId>, grace: Duration) -> Result<GcReport>;
}
