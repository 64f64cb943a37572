//! The OCI registry backend of [`VersionStore`]: a repository of an OCI
//! distribution registry named `oci://HOST:PORT/REPOSITORY`, spoken to
//! over plain HTTP.
//!
//! ```text
//! <repository>:<hash>-<version>   one OCI image manifest per version
//!     artifactType  application/vnd.containerd-migrate.version.manifest.v1+json
//!     config        the version manifest (that media type)
//!     layers        the version's distinct chunk blobs, application/vnd.containerd-migrate.chunk.v1,
//!                   each annotated io.containerd.migrate.chunk=<chunk id>
//!     annotations   io.containerd.migrate.namespace, .container, .version; org.opencontainers.image.created
//! <repository>@sha256:<sha256 of the stored blob>   chunk and config blobs, shared by digest
//! ```
//!
//! **Tags.** `<hash>` is the first 32 hex digits (128 bits) of
//! sha256("NAMESPACE/ID"). A namespace and a container id of up to 128
//! characters each do not fit the 128-character tag grammar together, and
//! any separator allowed in a tag may also occur in the names; the hash has
//! a fixed width, so a tag is at most 53 characters and parses back
//! uniquely. The names themselves are read from the annotations. Tags of
//! any other shape are not versions, so the repository may hold other
//! artifacts too. A container is listed while it has a version.
//!
//! **Chunks.** Without a key a chunk's id is the sha256 of its blob, so its
//! blob is `sha256:<id>` and [`VersionStore::has_chunk`] is a HEAD on it.
//! With a key the id is an HMAC and says nothing of the blob's digest (two
//! uploads of one chunk even differ, nonces being random), so the store
//! keeps an index chunk id → blob for keyed chunks, filled from what it
//! uploads, from each version manifest it reads, and from the layers of
//! the versions it has not read yet: it reads those when a keyed chunk is
//! about to be uploaded or a chunk is not found, at most once per version
//! stored. So a ticker, which keeps one store for its container's life,
//! reads each other version's manifest once, plus one tag list per
//! version. A version relies on a hint of the index only after a HEAD, and
//! what a blob holds is checked by the chunk's id (and the cipher) when it
//! is opened.
//!
//! **Commit.** A version is its tag. Storing one costs a HEAD per chunk,
//! and a POST and a PUT (a monolithic upload) per chunk the registry
//! lacks; then the version manifest is uploaded as the config blob, and
//! the OCI manifest is PUT last. An interrupted upload leaves only
//! untagged blobs, never a version. `put_manifest` lists a blob only once
//! this store has seen it in the registry, since registries need not
//! refuse a manifest whose blobs are missing (the distribution registry
//! does). A PUT replaces a tag, so `put_manifest` first checks that the
//! tag is free: registries have no put-if-absent, and a version number has
//! one writer, its container's ticker.
//!
//! **Deletion and GC.** `delete_version` deletes a version's manifest by
//! digest, which the registry refuses unless deletion is enabled
//! (`REGISTRY_STORAGE_DELETE_ENABLED=true`, or `storage.delete.enabled` in
//! its config). Blobs that no manifest references any more are reclaimed
//! by the registry's own offline garbage collector
//! (`registry garbage-collect CONFIG`, run while the registry is stopped or
//! read-only), not by this store: `gc_chunks` removes nothing.
//!
//! **Size.** A version's manifest lists each of its distinct chunks; the
//! distribution registry takes manifests of up to 4 MiB, about 15,000
//! chunks, or some 500 MiB of checkpoint at 32 KiB chunks.

use std::{
    collections::{HashMap, HashSet},
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use time::format_description::well_known::Rfc3339;

use super::{
    ContainerRef, GcReport, RegistryLocation, VersionStore,
    crypto::ChunkId,
    error::{Result, VersionError},
    manifest::VersionManifest,
    registry_api::{Blob, Digest, Registry},
    registry_artifact::{OciManifest, container_hash, parse_version_tag, version_tag},
};

#[derive(Debug)]
pub struct RegistryStore {
    registry: Registry,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Where the blobs of keyed chunks are: the chunks whose blob digest is
    /// not sha256 of their id.
    keyed: HashMap<ChunkId, Blob>,
    /// Version tags whose layers are in `keyed`.
    indexed_tags: HashSet<String>,
    /// Whether the unread versions were indexed since the last version was
    /// stored.
    refreshed: bool,
    /// Chunks found or uploaded since the last version was stored: the
    /// next version's layers, known without asking again.
    present: HashMap<ChunkId, Blob>,
    /// The containers behind the hashes in tags.
    containers: HashMap<String, ContainerRef>,
}

impl RegistryStore {
    /// Opens the repository at `location`, checking that a distribution API
    /// answers there, so that a wrong address fails now rather than at the
    /// first version.
    pub fn open(location: &RegistryLocation) -> Result<RegistryStore> {
        let registry = Registry::new(location);
        registry.ping()?;
        Ok(RegistryStore { registry, state: Mutex::default() })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where chunk `id`'s blob should be: the index's hint for a keyed
    /// chunk, else the digest a plain chunk's blob has.
    fn digest_of(&self, id: &ChunkId) -> Digest {
        self.state().keyed.get(id).map_or_else(|| plain_digest(id), |blob| blob.digest.clone())
    }

    /// The blob of chunk `id`, if the registry has it (a HEAD).
    fn find(&self, id: &ChunkId) -> Result<Option<Blob>> {
        let digest = self.digest_of(id);
        let Some(size) = self.registry.blob_size(&digest, format_args!("checking chunk {id}"))? else {
            // If the index pointed here, the blob was collected with the
            // versions that used it.
            self.state().keyed.remove(id);
            return Ok(None);
        };
        let blob = Blob { digest, size };
        self.state().present.insert(*id, blob.clone());
        Ok(Some(blob))
    }

    /// Indexes the keyed chunks of every version tag not indexed yet, once
    /// per version stored.
    fn refresh_index(&self) -> Result<()> {
        if self.state().refreshed {
            return Ok(());
        }
        let tags = self.registry.tags(format_args!("listing versions to find chunks stored under a key"))?;
        let unread: Vec<String> = {
            let state = self.state();
            tags.into_iter().filter(|t| parse_version_tag(t).is_some() && !state.indexed_tags.contains(t)).collect()
        };
        for tag in unread {
            // Deleted meanwhile, or another artifact: nothing to index.
            if let Some(manifest) = self.read_oci_manifest(&tag)?
                && manifest.is_version()
            {
                self.index(&manifest);
            }
            self.state().indexed_tags.insert(tag);
        }
        self.state().refreshed = true;
        Ok(())
    }

    fn index(&self, manifest: &OciManifest) {
        let mut state = self.state();
        for (id, blob) in manifest.chunk_blobs() {
            if blob.digest != plain_digest(&id) {
                state.keyed.insert(id, blob);
            }
        }
    }

    /// The OCI manifest tagged `tag`, or None if there is none or it is
    /// not an OCI manifest.
    fn read_oci_manifest(&self, tag: &str) -> Result<Option<OciManifest>> {
        let bytes = self.registry.get_manifest(tag, format_args!("reading the manifest tagged {tag}"))?;
        Ok(bytes.and_then(|b| serde_json::from_slice(&b).ok()))
    }
}

/// The digest of a plain chunk's blob: its id.
fn plain_digest(id: &ChunkId) -> Digest {
    Digest::parse(&format!("sha256:{id}")).expect("a chunk id is 64 lowercase hex digits")
}

impl VersionStore for RegistryStore {
    fn put_chunk(&self, id: &ChunkId, blob: &[u8]) -> Result<bool> {
        let digest = Digest::of(blob);
        let keyed = digest != plain_digest(id);
        if keyed {
            // Another upload of this chunk has another digest, which only
            // the versions that list it tell.
            self.refresh_index()?;
        }
        if self.find(id)?.is_some() {
            return Ok(false);
        }
        let blob = self.registry.push_blob(digest, blob, format_args!("uploading chunk {id}"))?;
        let mut state = self.state();
        if keyed {
            state.keyed.insert(*id, blob.clone());
        }
        state.present.insert(*id, blob);
        Ok(true)
    }

    fn has_chunk(&self, id: &ChunkId) -> Result<bool> {
        Ok(self.find(id)?.is_some())
    }

    /// The same as `has_chunk`: nothing removes a registry's blobs while
    /// versions are being written (its garbage collector runs offline, and
    /// `gc_chunks` removes nothing), so a chunk found now is still there
    /// when the manifest referencing it is PUT. Should a collector run
    /// anyway, the distribution registry refuses that manifest rather than
    /// storing a broken version.
    fn claim_chunk(&self, id: &ChunkId) -> Result<bool> {
        self.has_chunk(id)
    }

    fn get_chunk(&self, id: &ChunkId) -> Result<Option<Vec<u8>>> {
        let what = format_args!("reading chunk {id}");
        let digest = self.digest_of(id);
        if let Some(bytes) = self.registry.get_blob(&digest, what)? {
            return Ok(Some(bytes));
        }
        // A keyed chunk that no version this store has read lists.
        self.refresh_index()?;
        let indexed = self.digest_of(id);
        if indexed == digest {
            return Ok(None);
        }
        self.registry.get_blob(&indexed, what)
    }

    fn put_manifest(&self, container: &ContainerRef, version: u64, bytes: &[u8]) -> Result<()> {
        let store = || self.registry.store().to_owned();
        let manifest: VersionManifest =
            serde_json::from_slice(bytes).map_err(|e| VersionError::NotAVersionManifest {
                store: store(),
                container: container.clone(),
                version,
                reason: e.to_string(),
            })?;
        let what = format_args!("storing version {version} of {container}");
        let tag = version_tag(container, version);
        // Taken whatever happens next: the version after this one claims its
        // own chunks, and refreshes the index once more.
        let present = {
            let mut state = self.state();
            state.refreshed = false;
            std::mem::take(&mut state.present)
        };
        if self.registry.has_manifest(&tag, what)? {
            return Err(VersionError::VersionExists { container: container.clone(), version });
        }
        let mut listed = HashSet::new();
        let mut chunks = Vec::new();
        for id in manifest.chunk_ids() {
            if !listed.insert(id) {
                continue;
            }
            let blob = match present.get(&id) {
                Some(blob) => blob.clone(),
                None => self.find(&id)?.ok_or_else(|| VersionError::RegistryChunkMissing {
                    store: store(),
                    container: container.clone(),
                    version,
                    id,
                })?,
            };
            chunks.push((id, blob));
        }
        let digest = Digest::of(bytes);
        let config = match self.registry.blob_size(&digest, what)? {
            Some(size) => Blob { digest, size },
            None => self.registry.push_blob(digest, bytes, what)?,
        };
        let created = manifest.created.format(&Rfc3339).expect("a version's time formats as RFC 3339");
        let oci = OciManifest::version(container, version, created, config, chunks);
        let body = serde_json::to_vec(&oci).expect("an OCI manifest serializes");
        self.registry.put_manifest(&tag, &body, what)?;
        let mut state = self.state();
        state.indexed_tags.insert(tag);
        state.containers.insert(container_hash(container), container.clone());
        Ok(())
    }

    fn list_containers(&self) -> Result<Vec<ContainerRef>> {
        let mut versions: HashMap<String, Vec<u64>> = HashMap::new();
        for tag in self.registry.tags(format_args!("listing containers"))? {
            if let Some((hash, version)) = parse_version_tag(&tag) {
                versions.entry(hash.to_owned()).or_default().push(version);
            }
        }
        let mut out = Vec::new();
        for (hash, mut numbers) in versions {
            if let Some(known) = self.state().containers.get(&hash) {
                out.push(known.clone());
                continue;
            }
            // The names are in every version's annotations; the newest is
            // the least likely to be deleted by a retention meanwhile.
            numbers.sort_unstable();
            for version in numbers.iter().rev() {
                let tag = format!("{hash}-{version}");
                let named = self.read_oci_manifest(&tag)?.filter(OciManifest::is_version).and_then(|m| m.container());
                if let Some(container) = named.filter(|c| container_hash(c) == hash) {
                    self.state().containers.insert(hash, container.clone());
                    out.push(container);
                    break;
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn list_versions(&self, container: &ContainerRef) -> Result<Vec<u64>> {
        let hash = container_hash(container);
        let tags = self.registry.tags(format_args!("listing the versions of {container}"))?;
        let mut versions: Vec<u64> = tags
            .iter()
            .filter_map(|tag| parse_version_tag(tag))
            .filter(|(h, _)| *h == hash)
            .map(|(_, version)| version)
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    fn get_manifest(&self, container: &ContainerRef, version: u64) -> Result<Option<Vec<u8>>> {
        let tag = version_tag(container, version);
        let what = format_args!("reading version {version} of {container}");
        let Some(body) = self.registry.get_manifest(&tag, what)? else { return Ok(None) };
        let bad = |reason: String| VersionError::BadVersionManifest { container: container.clone(), version, reason };
        let manifest: OciManifest = serde_json::from_slice(&body)
            .map_err(|e| bad(format!("tag {tag} is not an OCI manifest this store reads: {e}")))?;
        if !manifest.is_version() {
            return Err(bad(format!("tag {tag} holds a {}, not a version", manifest.config.media_type)));
        }
        // So that the chunks of this version are found, keyed or not.
        self.index(&manifest);
        self.state().indexed_tags.insert(tag.clone());
        let config = &manifest.config.digest;
        let bytes = self
            .registry
            .get_blob(config, what)?
            .ok_or_else(|| bad(format!("its config blob {config} is missing from the registry")))?;
        if Digest::of(&bytes) != *config {
            return Err(bad(format!("its config blob {config} is damaged")));
        }
        Ok(Some(bytes))
    }

    fn delete_version(&self, container: &ContainerRef, version: u64) -> Result<bool> {
        let tag = version_tag(container, version);
        let what = format_args!("deleting version {version} of {container}");
        // Registries delete manifests by digest only; the digest of the
        // bytes is the manifest's, whatever headers a registry sends.
        let Some(body) = self.registry.get_manifest(&tag, what)? else { return Ok(false) };
        let deleted = self.registry.delete_manifest(&Digest::of(&body), what)?;
        self.state().indexed_tags.remove(&tag);
        Ok(deleted)
    }

    /// Removes nothing: a registry reclaims blobs that no manifest
    /// references with its own garbage collector (`registry
    /// garbage-collect`), which runs offline because blobs cannot be
    /// removed safely through the API while versions are being written.
    fn gc_chunks(&self, _keep: &HashSet<ChunkId>, _grace: Duration) -> Result<GcReport> {
        Ok(GcReport::default())
    }
}
