//! Dropping old versions: whole groups, oldest first, then the chunks that
//! no remaining version uses.

use std::{collections::HashSet, time::Duration};

use crate::{
    ContainerRef, DEFAULT_GROUP_SIZE, DEFAULT_KEEP_GROUPS, GcReport, VersionStore,
    error::{Result, VersionError},
    materialize::read_manifest,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Groups kept, newest first, counting the one being filled.
    pub keep_groups: u64,
    /// Used for versions whose manifest cannot be read; the rest say their group.
    pub group_size: u64,
    /// Chunks put or reused within this time survive the GC, because a
    /// version being stored right now (by any container's ticker) may be
    /// about to reference them. Longer than any upload takes.
    pub chunk_grace: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep_groups: DEFAULT_KEEP_GROUPS,
            group_size: DEFAULT_GROUP_SIZE,
            chunk_grace: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Groups left, ascending.
    pub kept_groups: Vec<u64>,
    /// Versions whose manifests were deleted, ascending.
    pub deleted_versions: Vec<u64>,
    pub gc: GcReport,
}

/// Deletes the versions of `container` in groups older than the newest
/// `keep_groups`, oldest first, then every chunk that no version left in the
/// store (of any container: chunks are shared) references. A manifest that
/// cannot be read stops the GC, since what it references is unknown.
pub fn apply_retention(
    store: &dyn VersionStore,
    container: &ContainerRef,
    retention: &Retention,
) -> Result<RetentionReport> {
    if retention.group_size == 0 {
        return Err(VersionError::ZeroGroupSize);
    }
    let mut groups: Vec<(u64, u64)> = Vec::new(); // (group, version)
    for version in store.list_versions(container)? {
        let group = match read_manifest(store, container, version) {
            Ok(m) => m.group,
            // Deleted meanwhile by another retention run.
            Err(VersionError::VersionNotFound { .. }) => continue,
            Err(VersionError::BadVersionManifest { .. }) => version / retention.group_size,
            Err(e) => return Err(e),
        };
        groups.push((group, version));
    }
    let mut distinct: Vec<u64> = groups.iter().map(|(g, _)| *g).collect();
    distinct.sort_unstable();
    distinct.dedup();
    let keep_from = distinct.len().saturating_sub(retention.keep_groups as usize);
    let kept_groups = distinct[keep_from..].to_vec();
    let mut doomed: Vec<u64> = groups.iter().filter(|(g, _)| !kept_groups.contains(g)).map(|(_, v)| *v).collect();
    doomed.sort_unstable();
    let mut deleted_versions = Vec::new();
    for version in doomed {
        if store.delete_version(container, version)? {
            deleted_versions.push(version);
        }
    }

    let mut referenced = HashSet::new();
    for other in store.list_containers()? {
        for version in store.list_versions(&other)? {
            match read_manifest(store, &other, version) {
                Ok(m) => referenced.extend(m.chunk_ids()),
                Err(VersionError::VersionNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    let gc = store.gc_chunks(&referenced, retention.chunk_grace)?;
    Ok(RetentionReport { kept_groups, deleted_versions, gc })
}
