//! Storing a committed checkpoint as one version of its container.

use std::{collections::HashSet, fs::File, path::Path};

use sha2::Digest;
use time::OffsetDateTime;

use crate::{
    ContainerRef, VersionStore,
    chunking::{self, chunking_for},
    crypto::{self, ChunkCipher},
    error::{Result, VersionError},
    group_of,
    manifest::{
        ChunkRef, ENCRYPTION_ALGORITHM, Encryption, IncrementalMode, ParentCheckpoint, VERSION_MEDIA_TYPE,
        VERSION_SCHEMA_VERSION, VersionFile, VersionManifest,
    },
};
use migrate_oci::{Checkpoint, Sha256, layout};

/// What storing one version cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionReport {
    pub version: u64,
    pub group: u64,
    pub base: u64,
    pub bytes_total: u64,
    /// Plaintext bytes of the chunks the store did not have.
    pub bytes_new: u64,
    pub chunks_total: u64,
    pub chunks_new: u64,
}

/// Stores the committed checkpoint in `checkpoint_dir` as version `version`
/// of `container`: uploads the chunks the store lacks, then the manifest.
/// Each file is hashed on the way and compared with the checkpoint's
/// manifest, so a damaged checkpoint never becomes a version. Until the
/// manifest is stored the version does not exist; a failure leaves only
/// unreferenced chunks, which a later GC removes.
///
/// A checkpoint that builds on a parent (a CRIU dump against a pre-dump or
/// an earlier dump) is stored in [`IncrementalMode::CriuParent`] with its
/// whole chain of parents, which must be committed beside it in the same
/// checkpoint store; one without is stored in
/// [`IncrementalMode::StorageChunks`].
///
/// It runs on the calling thread alone: the ticker uploads beside the
/// running container, whose workload should keep the other core.
pub fn store_version(
    store: &dyn VersionStore,
    checkpoint_dir: &Path,
    container: &ContainerRef,
    version: u64,
    group_size: u64,
    cipher: Option<&ChunkCipher>,
) -> Result<VersionReport> {
    let (group, base) = group_of(version, group_size)?;
    if store.get_manifest(container, version)?.is_some() {
        return Err(VersionError::VersionExists { container: container.clone(), version });
    }
    let checkpoint = Checkpoint::open(checkpoint_dir)
        .map_err(|source| VersionError::Checkpoint { dir: checkpoint_dir.to_owned(), source: Box::new(source) })?;
    let chain = parent_chain(&checkpoint)?;

    let mut manifest = VersionManifest {
        schema_version: VERSION_SCHEMA_VERSION,
        media_type: VERSION_MEDIA_TYPE.into(),
        namespace: container.namespace.clone(),
        container: container.id.clone(),
        version,
        group,
        base,
        created: now(),
        mode: if chain.is_empty() { IncrementalMode::StorageChunks } else { IncrementalMode::CriuParent },
        encryption: cipher
            .map(|c| Encryption { algorithm: ENCRYPTION_ALGORITHM.into(), key_id: c.key_id().to_owned() }),
        files: Vec::new(),
        parents: Vec::with_capacity(chain.len()),
        bytes_total: 0,
        bytes_new: 0,
        chunks_total: 0,
        chunks_new: 0,
    };
    manifest.files = store_files(store, &checkpoint, cipher, &mut manifest)?;
    for parent in &chain {
        let files = store_files(store, parent, cipher, &mut manifest)?;
        manifest.parents.push(ParentCheckpoint { id: parent.manifest().id.clone(), files });
    }
    let bytes = serde_json::to_vec(&manifest).expect("a version manifest serializes");
    store.put_manifest(container, version, &bytes)?;
    Ok(VersionReport {
        version,
        group,
        base,
        bytes_total: manifest.bytes_total,
        bytes_new: manifest.bytes_new,
        chunks_total: manifest.chunks_total,
        chunks_new: manifest.chunks_new,
    })
}

/// The checkpoints `checkpoint` builds on, nearest first, each opened from
/// its directory beside its child's, where the commit's `criu/parent` link
/// points.
fn parent_chain(checkpoint: &Checkpoint) -> Result<Vec<Checkpoint>> {
    let mut chain: Vec<Checkpoint> = Vec::new();
    let mut seen = HashSet::from([checkpoint.manifest().id.clone()]);
    let mut child = checkpoint;
    while let Some(parent) = &child.manifest().parent {
        if !seen.insert(parent.clone()) {
            return Err(VersionError::ParentLoop { dir: checkpoint.dir().to_owned(), parent: parent.clone() });
        }
        let unavailable = |source| VersionError::ParentUnavailable {
            dir: child.dir().to_owned(),
            parent: parent.clone(),
            source: Box::new(source),
        };
        migrate_oci::validate_id(parent).map_err(unavailable)?;
        let dir = child.dir().parent().unwrap_or(Path::new(".")).join(parent);
        let opened = Checkpoint::open(&dir).map_err(unavailable)?;
        // Rebuilt under this id, it must be the name its child links to.
        if opened.manifest().id != *parent {
            let manifest_id = opened.manifest().id.clone();
            return Err(unavailable(migrate_oci::Error::IdMismatch { dir, manifest_id }));
        }
        chain.push(opened);
        child = chain.last().expect("just pushed");
    }
    Ok(chain)
}

/// Stores the chunks of every file of `checkpoint` (manifest.json last) that
/// the store lacks, adding to the counters of `manifest`, and returns the
/// files as chunk lists.
fn store_files(
    store: &dyn VersionStore,
    checkpoint: &Checkpoint,
    cipher: Option<&ChunkCipher>,
    manifest: &mut VersionManifest,
) -> Result<Vec<VersionFile>> {
    let mut listed: Vec<(&str, Option<Sha256>)> =
        checkpoint.manifest().files.iter().map(|f| (f.path.as_str(), Some(f.sha256))).collect();
    listed.push((layout::MANIFEST_FILE, None));
    let mut files = Vec::with_capacity(listed.len());
    for (rel, expected) in listed {
        let path = checkpoint.dir().join(rel);
        let file = File::open(&path).map_err(VersionError::io("open", &path))?;
        let chunking = chunking_for(rel);
        let mut entry = VersionFile { path: rel.to_owned(), size: 0, chunking, chunks: Vec::new() };
        let mut hasher = sha2::Sha256::new();
        for chunk in chunking::chunks(file, chunking) {
            let plain = chunk.map_err(VersionError::io("read", &path))?;
            hasher.update(&plain);
            let size = plain.len() as u32;
            let id = crypto::chunk_id(cipher, &plain);
            // Claimed rather than only looked up: see claim_chunk.
            let new = !store.claim_chunk(&id)? && store.put_chunk(&id, &crypto::seal(cipher, &id, plain))?;
            if new {
                manifest.chunks_new += 1;
                manifest.bytes_new += u64::from(size);
            }
            manifest.chunks_total += 1;
            entry.size += u64::from(size);
            entry.chunks.push(ChunkRef { id, size });
        }
        if let Some(expected) = expected {
            let found: Sha256 = hex::encode(hasher.finalize()).parse().expect("sha256 hex is a Sha256");
            if found != expected {
                return Err(VersionError::FileChanged { path, expected, found });
            }
        }
        manifest.bytes_total += entry.size;
        files.push(entry);
    }
    Ok(files)
}

/// Now, to the millisecond, as checkpoint manifests record it.
fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_millisecond(t.millisecond()).unwrap_or(t)
}
