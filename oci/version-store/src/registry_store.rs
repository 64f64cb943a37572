//! The OCI registry backend of [`VersionStore`]: a repository of an OCI
//! distribution registry named `oci://HOST:PORT/REPOSITORY`, spoken to
//! over plain HTTP.
//!
//! ```text
//! <repository>:<hash>-<version>          one OCI image index per version, pushed last: the version
//!     artifactType  application/vnd.containerd-migrate.version.manifest.v1+json
//!     manifests     the version's parts, by digest, in order
//!     annotations   io.containerd.migrate.namespace, .container, .version; org.opencontainers.image.created
//! <repository>:<hash>-<version>.part<P>  its parts, P = 0, 1, ...: one OCI image manifest each
//!     artifactType  application/vnd.containerd-migrate.version.manifest.v1+json
//!     config        the version manifest (that media type): the same blob in every part
//!     layers        up to 4,000 of the packs holding the version's chunks, each as two layers: its index
//!                   (application/vnd.containerd-migrate.pack-index.v1+json), then the pack
//!                   (application/vnd.containerd-migrate.pack.v1, annotated io.containerd.migrate.pack-index=
//!                   <the index's digest>); each pack in one part only
//!     annotations   the index's, io.containerd.migrate.part=<P>, and org.opencontainers.image.created = when
//!                   the part was pushed
//! <repository>@sha256:<sha256 of the stored blob>   packs, pack indexes and configs, shared by digest
//! ```
//!
//! **Tags.** `<hash>` is the first 32 hex digits (128 bits) of
//! sha256("NAMESPACE/ID"). A namespace and a container id of up to 128
//! characters each do not fit the 128-character tag grammar together, and
//! any separator allowed in a tag may also occur in the names; the hash has
//! a fixed width, so a version's tag is at most 53 characters, a part's 78,
//! and each parses back uniquely. The names themselves are read from the
//! annotations. Tags of any other shape are neither, so the repository may
//! hold other artifacts too. A container is listed while it has a version.
//!
//! **Parts.** The distribution registry refuses manifests over 4 MiB. A
//! part of at most [`PART_PACKS`] (4,000) packs is about 1.8 MiB and
//! lists 31 GiB of checkpoint, so most versions are one part (1 GiB of
//! memory is about 130 packs), and an index under 4 MiB lists some 25,000
//! parts. The version manifest is the config of every part, not only of
//! the first: each part is then a whole artifact of the version's type (an
//! image manifest needs a config, and an empty one would be a second kind
//! of part), the registry checks at each part's PUT that the version
//! manifest is there, and a reader checks that the parts of an index all
//! name the same one, so a part of another version is never mixed in. It
//! costs a descriptor per part; the blob is shared.
//!
//! Parts are tagged, not pushed by digest alone, because of the garbage
//! collector of distribution 2.8 (Debian's `docker-registry` 2.8.2; 3.0
//! fixed the first point): with `--delete-untagged` it deletes every
//! untagged manifest even while a tagged index references it, and then
//! the chunks only that manifest referenced, breaking live versions;
//! without it, it keeps every manifest the repository holds, tagged or not,
//! and the API lists no untagged manifests, so parts an interrupted upload
//! left untagged would hold their chunks forever. Tagged, parts survive
//! both collectors while their version lives, and leftovers are found in
//! the tag list. `registry_tests` checks both collectors.
//!
//! **Chunks** are kept in packs ([`crate::registry_pack`]): blobs of
//! about 8 MiB of chunks, each with an index blob saying which chunk is
//! where in it. The store keeps a map chunk id → (pack, offset, size),
//! filled from the packs it uploads, from the parts (and new pack
//! indexes) of each version it reads, and from those of the versions it
//! has not read yet, which it reads when a chunk is not in the map, at
//! most once per version stored. So a ticker, which keeps one store for
//! its container's life, reads each other version's parts once, plus one
//! tag list per version, and shares chunks with every container of the
//! repository. A version relies on the map's word that a pack is in the
//! registry only after a HEAD on it (once per pack), and what a chunk
//! holds is checked by its id (and the cipher) when it is opened.
//!
//! **Commit.** A version is its index's tag. Storing one costs, per chunk
//! the store lacks, a copy into the pack being gathered, and per pack a
//! POST and a PUT each for it and its index; `put_manifest` uploads the
//! last pack, the version manifest as the config blob, then the parts, and
//! the index last. An interrupted upload leaves blobs and parts, never a
//! version. `put_manifest` lists a pack only once this store has seen it
//! in the registry, since registries need not refuse a manifest whose
//! blobs are missing (the distribution registry refuses a part whose
//! blobs, and an index whose parts, are missing). A PUT replaces a tag, so
//! `put_manifest` first checks that the version's tag is free (registries
//! have no put-if-absent, and a version number has one writer, its
//! container's ticker), then deletes the parts an earlier try at that
//! version left, which the new parts' tags would otherwise untag.
//!
//! **Reading.** [`VersionStore::get_manifest`] reads the index and, the
//! first time, every part (checked against its digest) and the indexes of
//! the packs not read yet, then the version manifest; after that, the
//! index and the version manifest. [`VersionStore::get_chunks`] reads a
//! batch of chunks with one ranged GET per run of them in a pack (chunks
//! less than [`RANGE_GAP`] apart are one run): a restore of 1 GiB is a few
//! hundred requests.
//!
//! **Deletion and GC.** `delete_version` deletes a version's index by
//! digest, which ends the version and drops its tag, then each of its
//! parts by digest, with their tags. The registry refuses both unless
//! deletion is enabled (`REGISTRY_STORAGE_DELETE_ENABLED=true`, or
//! `storage.delete.enabled` in its config). Blobs and manifests that no
//! manifest left in the repository references are reclaimed by the
//! registry's own offline garbage collector (`registry garbage-collect
//! CONFIG`, with or without `--delete-untagged`, run while the registry is
//! stopped or read-only), not by this store. A deletion interrupted before
//! the parts, or an upload before the index, leaves tagged parts of no
//! version; `gc_chunks`, which retention runs, deletes those pushed longer
//! than its grace period ago, so the next collection takes their chunks.
//! It removes no blob itself.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    ops::Range,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use oci_spec::image::{Descriptor, Digest, ImageIndex, ImageManifest, MediaType};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::{
    ContainerRef, GcReport, RegistryLocation, VersionStore,
    crypto::ChunkId,
    error::{Result, VersionError},
    manifest::VersionManifest,
    registry_api::{Blob, Registry, sha256_of},
    registry_artifact::{
        PART_PACKS, PackBlobs, container_hash, is_part, is_version, packs, parse_part_tag, parse_version_tag,
        part_manifest, part_tag, pushed, version_container, version_index, version_tag,
    },
    registry_pack::{PACK_BYTES, PackBuilder, PackIndex},
};

/// Chunks of one pack at most this far apart are read with one ranged GET:
/// a request costs about as much as reading 256 KiB more.
const RANGE_GAP: u64 = 256 << 10;
/// The longest range read in one GET.
const MAX_RANGE: u64 = 16 << 20;

#[derive(Debug)]
pub struct RegistryStore {
    registry: Registry,
    /// Packs per part: [`PART_PACKS`], fewer in tests.
    part_packs: usize,
    /// Bytes a pack gathers before it is uploaded: [`PACK_BYTES`], fewer in
    /// tests.
    pack_bytes: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Where each chunk in the packs this store knows is.
    located: HashMap<ChunkId, Location>,
    /// The packs whose indexes are in `located`.
    packs: HashMap<Digest, KnownPack>,
    /// The chunks put since the last pack was uploaded.
    pending: PackBuilder,
    /// Version tags whose parts were read into `located` (or had no parts
    /// that could be read).
    indexed_tags: HashSet<String>,
    /// The version manifest that each version index read whole names, by
    /// the index's digest: reading that version again costs its index and
    /// its manifest, not its parts.
    configs: HashMap<Digest, Digest>,
    /// Whether the unread versions were indexed since the last version was
    /// stored.
    refreshed: bool,
    /// The containers behind the hashes in tags.
    containers: HashMap<String, ContainerRef>,
}

#[derive(Debug, Clone)]
struct Location {
    pack: Digest,
    offset: u64,
    size: u32,
}

#[derive(Debug, Clone)]
struct KnownPack {
    blobs: PackBlobs,
    /// Whether this store uploaded the pack or found it in the registry
    /// (a HEAD): only then do versions list it. A registry drops blobs only
    /// in its offline garbage collection; should one have run meanwhile,
    /// it refuses the part that lists a collected pack
    /// (MANIFEST_BLOB_UNKNOWN), the version fails, and the ticker opens
    /// the store afresh.
    confirmed: bool,
}

/// A version whose parts are in the registry, and the index that commits
/// them is not yet.
pub(super) struct PushedParts {
    /// The version manifest's time, RFC 3339.
    created: String,
    config: Digest,
    parts: Vec<Blob>,
}

/// Chunks read with one ranged GET: their place in the batch and in the
/// pack.
struct Run {
    pack: Digest,
    range: Range<u64>,
    members: Vec<(usize, Range<u64>)>,
}

impl RegistryStore {
    /// Opens the repository at `location`, checking that a distribution API
    /// answers there, so that a wrong address fails now rather than at the
    /// first version.
    pub fn open(location: &RegistryLocation) -> Result<RegistryStore> {
        let registry = Registry::new(location);
        registry.ping()?;
        Ok(RegistryStore { registry, part_packs: PART_PACKS, pack_bytes: PACK_BYTES, state: Mutex::default() })
    }

    /// Cuts the versions this store writes into parts of `packs` packs of
    /// about `pack_bytes` each, so that tests see many of both without
    /// storing gigabytes.
    #[cfg(test)]
    pub(super) fn with_sizes(self, packs: usize, pack_bytes: usize) -> RegistryStore {
        assert!(packs > 0 && pack_bytes > 0);
        RegistryStore { part_packs: packs, pack_bytes, ..self }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where chunk `id` is, if a pack this store knows holds it; reads the
    /// versions not read yet first if none does.
    fn locate(&self, id: &ChunkId) -> Result<Option<Location>> {
        if let Some(found) = self.state().located.get(id) {
            return Ok(Some(found.clone()));
        }
        self.refresh_index()?;
        Ok(self.state().located.get(id).cloned())
    }

    /// Where chunk `id` is, if it is in a pack the registry has; the first
    /// time a pack is relied on, a HEAD checks that it is there, and a pack
    /// that is not is forgotten with its chunks.
    fn locate_confirmed(&self, id: &ChunkId) -> Result<Option<Location>> {
        let Some(found) = self.locate(id)? else { return Ok(None) };
        let pack = {
            let state = self.state();
            match state.packs.get(&found.pack) {
                Some(known) if known.confirmed => return Ok(Some(found)),
                Some(known) => known.blobs.pack.clone(),
                None => return Ok(None),
            }
        };
        let what = format_args!("checking pack {} of chunk {id}", pack.digest);
        let there = self.registry.blob_size(&pack.digest, what)? == Some(pack.size);
        let mut state = self.state();
        if there {
            if let Some(known) = state.packs.get_mut(&pack.digest) {
                known.confirmed = true;
            }
            return Ok(Some(found));
        }
        // Collected with the versions that used it.
        state.packs.remove(&pack.digest);
        state.located.retain(|_, at| at.pack != pack.digest);
        Ok(None)
    }

    /// Reads the parts of every version tag not read yet, once per version
    /// stored.
    fn refresh_index(&self) -> Result<()> {
        if self.state().refreshed {
            return Ok(());
        }
        let what = format_args!("listing versions to find the chunks they store");
        let tags = self.registry.tags(what)?;
        let unread: Vec<String> = {
            let state = self.state();
            tags.into_iter().filter(|t| parse_version_tag(t).is_some() && !state.indexed_tags.contains(t)).collect()
        };
        for tag in unread {
            // One version the registry cannot serve (a damaged manifest on
            // its disk answers 500) must not stop every ticker that shares
            // the repository: its chunks are only not known to be stored,
            // and it is tried again when the store is next opened.
            let index = match self.read_index(&tag, what) {
                Ok(index) => index,
                Err(e) => {
                    log::warn!("version {tag} is left out of the index of stored chunks: {e}");
                    continue;
                }
            };
            // Deleted meanwhile, another artifact, or parts that cannot be
            // read: nothing (more) to index.
            if let Some((digest, index)) = index
                && let Ok(config) = self.read_parts(&index, what)?
            {
                self.state().configs.insert(digest, config);
            }
            self.state().indexed_tags.insert(tag);
        }
        self.state().refreshed = true;
        Ok(())
    }

    /// The version index tagged `tag` and its digest, or None if there is
    /// none or it is not a version.
    fn read_index(&self, tag: &str, what: fmt::Arguments<'_>) -> Result<Option<(Digest, ImageIndex)>> {
        let Some(body) = self.registry.get_manifest(tag, what)? else { return Ok(None) };
        let index = serde_json::from_slice::<ImageIndex>(&body).ok().filter(is_version);
        Ok(index.map(|index| (sha256_of(&body), index)))
    }

    /// Reads every part of version index `index`, in order, and the indexes
    /// of their packs not read yet into `located`, and returns the version
    /// manifest they all name; Err says what is wrong with the parts.
    fn read_parts(&self, index: &ImageIndex, what: fmt::Arguments<'_>) -> Result<Result<Digest, String>> {
        let mut config: Option<Digest> = None;
        for descriptor in index.manifests() {
            let part = match self.read_part(descriptor, what)? {
                Ok(part) => part,
                Err(reason) => return Ok(Err(reason)),
            };
            if config.get_or_insert_with(|| part.config().digest().clone()) != part.config().digest() {
                return Ok(Err(format!("its part {} belongs to another version manifest", descriptor.digest())));
            }
            for blobs in packs(&part) {
                if let Err(reason) = self.read_pack_index(blobs, what)? {
                    return Ok(Err(reason));
                }
            }
        }
        Ok(config.ok_or_else(|| "its index lists no parts".to_owned()))
    }

    /// The part `descriptor` names, checked against its digest; Err says
    /// why it is not a part.
    fn read_part(&self, descriptor: &Descriptor, what: fmt::Arguments<'_>) -> Result<Result<ImageManifest, String>> {
        let digest = descriptor.digest();
        let Some(body) = self.registry.get_manifest(digest.as_ref(), what)? else {
            return Ok(Err(format!("its part {digest} is missing from the registry")));
        };
        if sha256_of(&body) != *digest {
            return Ok(Err(format!("its part {digest} is damaged")));
        }
        Ok(match serde_json::from_slice::<ImageManifest>(&body) {
            Ok(part) if is_part(&part) => Ok(part),
            Ok(other) => {
                Err(format!("its part {digest} holds a {}, not a version's chunks", other.config().media_type()))
            }
            Err(e) => Err(format!("its part {digest} is not an OCI image manifest: {e}")),
        })
    }

    /// Reads the index of a pack into `located` unless it is there; Err says
    /// what is wrong with it.
    fn read_pack_index(&self, blobs: PackBlobs, what: fmt::Arguments<'_>) -> Result<Result<(), String>> {
        if self.state().packs.contains_key(&blobs.pack.digest) {
            return Ok(Ok(()));
        }
        let digest = &blobs.index.digest;
        let Some(bytes) = self.registry.get_blob(digest, what)? else {
            return Ok(Err(format!(
                "the index {digest} of its pack {} is missing from the registry",
                blobs.pack.digest
            )));
        };
        if sha256_of(&bytes) != *digest {
            return Ok(Err(format!("the index {digest} of its pack {} is damaged", blobs.pack.digest)));
        }
        let index = match PackIndex::parse(&bytes, &blobs.pack) {
            Ok(index) => index,
            Err(reason) => return Ok(Err(format!("the index {digest} of its pack {}: {reason}", blobs.pack.digest))),
        };
        self.learn(blobs, &index, false);
        Ok(Ok(()))
    }

    /// Adds the chunks of a pack to `located`. A chunk already located
    /// elsewhere stays there.
    fn learn(&self, blobs: PackBlobs, index: &PackIndex, confirmed: bool) {
        let mut state = self.state();
        for chunk in &index.chunks {
            let at = Location { pack: blobs.pack.digest.clone(), offset: chunk.offset, size: chunk.size };
            state.located.entry(chunk.id).or_insert(at);
        }
        state.packs.insert(blobs.pack.digest.clone(), KnownPack { blobs, confirmed });
    }

    /// Uploads the chunks gathered so far as a pack, with its index.
    fn upload_pending(&self) -> Result<()> {
        let pending = std::mem::take(&mut self.state().pending);
        if pending.is_empty() {
            return Ok(());
        }
        let pack = pending.finish();
        let chunks = pack.index.chunks.len();
        let what = format_args!("uploading a pack of {chunks} chunks");
        let pack_blob = self.registry.push_blob(pack.index.pack.clone(), &pack.bytes, what)?;
        let index_blob = self.registry.push_blob(sha256_of(&pack.index_bytes), &pack.index_bytes, what)?;
        self.learn(PackBlobs { pack: pack_blob, index: index_blob }, &pack.index, true);
        Ok(())
    }

    /// Pushes all of version `version` of `container` but the index that
    /// makes it a version: the chunks still gathered as a pack, its version
    /// manifest `bytes` as a blob, then its parts, tagged, once the parts
    /// an earlier try at this version left are deleted.
    pub(super) fn put_parts(&self, container: &ContainerRef, version: u64, bytes: &[u8]) -> Result<PushedParts> {
        let store = || self.registry.store().to_owned();
        let manifest: VersionManifest =
            serde_json::from_slice(bytes).map_err(|e| VersionError::NotAVersionManifest {
                store: store(),
                container: container.clone(),
                version,
                reason: e.to_string(),
            })?;
        let what = format_args!("storing version {version} of {container}");
        if self.registry.has_manifest(&version_tag(container, version), what)? {
            return Err(VersionError::VersionExists { container: container.clone(), version });
        }
        self.upload_pending()?;
        // The packs, in the order the version first uses them.
        let mut listed = HashSet::new();
        let mut packs = Vec::new();
        for id in manifest.chunk_ids() {
            let missing =
                || VersionError::RegistryChunkMissing { store: store(), container: container.clone(), version, id };
            let at = self.locate_confirmed(&id)?.ok_or_else(missing)?;
            if listed.insert(at.pack.clone()) {
                let blobs = self.state().packs.get(&at.pack).map(|known| known.blobs.clone());
                packs.push(blobs.ok_or_else(missing)?);
            }
        }
        // The version after this one refreshes the index once more.
        self.state().refreshed = false;
        let digest = sha256_of(bytes);
        let config = match self.registry.blob_size(&digest, what)? {
            Some(size) => Blob { digest, size },
            None => self.registry.push_blob(digest, bytes, what)?,
        };
        self.delete_left_parts(container, version, what)?;
        let pushed = OffsetDateTime::now_utc().format(&Rfc3339).expect("now formats as RFC 3339");
        // One part even for no chunks, so that every version has a config.
        let slices: Vec<&[PackBlobs]> =
            if packs.is_empty() { vec![&[]] } else { packs.chunks(self.part_packs).collect() };
        let mut parts = Vec::with_capacity(slices.len());
        for (number, slice) in slices.into_iter().enumerate() {
            let part = part_manifest(container, version, number, &pushed, &config, slice);
            let body = serde_json::to_vec(&part).expect("an OCI manifest serializes");
            self.registry.put_manifest(
                &part_tag(container, version, number),
                &MediaType::ImageManifest,
                &body,
                what,
            )?;
            parts.push(Blob { digest: sha256_of(&body), size: body.len() as u64 });
        }
        let created = manifest.created.format(&Rfc3339).expect("a version's time formats as RFC 3339");
        Ok(PushedParts { created, config: config.digest, parts })
    }

    /// Pushes the index of `parts`, which makes them version `version` of
    /// `container`.
    fn put_index(&self, container: &ContainerRef, version: u64, parts: PushedParts) -> Result<()> {
        let what = format_args!("storing version {version} of {container}");
        let tag = version_tag(container, version);
        let index = version_index(container, version, &parts.created, &parts.parts);
        let body = serde_json::to_vec(&index).expect("an OCI index serializes");
        self.registry.put_manifest(&tag, &MediaType::ImageIndex, &body, what)?;
        let mut state = self.state();
        state.indexed_tags.insert(tag);
        state.configs.insert(sha256_of(&body), parts.config);
        state.containers.insert(container_hash(container), container.clone());
        Ok(())
    }

    /// Deletes the parts tagged for version `version` of `container`, which
    /// has no index: what an earlier try at it left. Each would otherwise
    /// lose its tag to the new part of its number and stay in the registry
    /// untagged, where nothing finds it again.
    fn delete_left_parts(&self, container: &ContainerRef, version: u64, what: fmt::Arguments<'_>) -> Result<()> {
        let ours = version_tag(container, version);
        let tags = self.registry.tags(what)?;
        for tag in tags.iter().filter(|tag| parse_part_tag(tag).is_some_and(|(version_tag, _)| version_tag == ours)) {
            let Some(body) = self.registry.get_manifest(tag, what)? else { continue };
            match self.registry.delete_manifest(&sha256_of(&body), what) {
                Ok(_) => {}
                // Then the old part only loses its tag. Failing instead
                // would keep this version from ever being stored.
                Err(VersionError::RegistryDeleteDisabled { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Groups the chunks of a batch into runs, each read with one GET.
    fn runs(&self, ids: &[ChunkId]) -> Result<Vec<Run>> {
        let mut wanted: Vec<(Location, usize)> = Vec::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            if let Some(at) = self.locate(id)? {
                wanted.push((at, i));
            }
        }
        wanted.sort_by(|(a, _), (b, _)| (a.pack.as_ref(), a.offset).cmp(&(b.pack.as_ref(), b.offset)));
        let mut runs: Vec<Run> = Vec::new();
        for (at, i) in wanted {
            let chunk = at.offset..at.offset + u64::from(at.size);
            match runs.last_mut() {
                Some(run)
                    if run.pack == at.pack
                        && chunk.start <= run.range.end + RANGE_GAP
                        && chunk.end.max(run.range.end) - run.range.start <= MAX_RANGE =>
                {
                    run.range.end = run.range.end.max(chunk.end);
                    run.members.push((i, chunk));
                }
                _ => runs.push(Run { pack: at.pack, range: chunk.clone(), members: vec![(i, chunk)] }),
            }
        }
        Ok(runs)
    }
}

impl VersionStore for RegistryStore {
    /// Gathers the chunk into the pack being filled, which is uploaded
    /// once it holds [`PACK_BYTES`], or by `put_manifest`.
    fn put_chunk(&self, id: &ChunkId, blob: &[u8]) -> Result<bool> {
        if self.has_chunk(id)? {
            return Ok(false);
        }
        let full = {
            let mut state = self.state();
            state.pending.push(*id, blob);
            state.pending.len() >= self.pack_bytes
        };
        if full {
            self.upload_pending()?;
        }
        Ok(true)
    }

    fn has_chunk(&self, id: &ChunkId) -> Result<bool> {
        Ok(self.state().pending.contains(id) || self.locate_confirmed(id)?.is_some())
    }

    /// The same as `has_chunk`: nothing removes a registry's blobs while
    /// versions are being written (its garbage collector runs offline, and
    /// `gc_chunks` removes only parts left without an index), so a pack
    /// found now is still there when the part listing it is PUT. Should a
    /// collector run anyway, the distribution registry refuses that part
    /// rather than storing a broken version.
    fn claim_chunk(&self, id: &ChunkId) -> Result<bool> {
        self.has_chunk(id)
    }

    fn get_chunk(&self, id: &ChunkId) -> Result<Option<Vec<u8>>> {
        Ok(self.get_chunks(std::slice::from_ref(id))?.pop().flatten())
    }

    /// One ranged GET per run of the chunks in a pack; a chunk whose pack
    /// is gone, or whose bytes are past the pack's end, is None.
    fn get_chunks(&self, ids: &[ChunkId]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut out = vec![None; ids.len()];
        for run in self.runs(ids)? {
            let what = format_args!("reading {} chunks from pack {}", run.members.len(), run.pack);
            let Some(bytes) = self.registry.get_blob_range(&run.pack, run.range.clone(), what)? else { continue };
            for (i, chunk) in run.members {
                let (start, end) = ((chunk.start - run.range.start) as usize, (chunk.end - run.range.start) as usize);
                out[i] = bytes.get(start..end).map(<[u8]>::to_vec);
            }
        }
        Ok(out)
    }

    fn put_manifest(&self, container: &ContainerRef, version: u64, bytes: &[u8]) -> Result<()> {
        let parts = self.put_parts(container, version, bytes)?;
        self.put_index(container, version, parts)
    }

    fn list_containers(&self) -> Result<Vec<ContainerRef>> {
        let what = format_args!("listing containers");
        let mut versions: HashMap<String, Vec<u64>> = HashMap::new();
        for tag in self.registry.tags(what)? {
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
                let named =
                    self.read_index(&format!("{hash}-{version}"), what)?.and_then(|(_, i)| version_container(&i));
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

    /// Reads the version's index and its manifest; the first time, also
    /// every part, which checks that they agree, and the indexes of their
    /// packs, so that the chunks of this version are found.
    fn get_manifest(&self, container: &ContainerRef, version: u64) -> Result<Option<Vec<u8>>> {
        let tag = version_tag(container, version);
        let what = format_args!("reading version {version} of {container}");
        let Some(body) = self.registry.get_manifest(&tag, what)? else { return Ok(None) };
        let bad = |reason: String| VersionError::BadVersionManifest { container: container.clone(), version, reason };
        let index: ImageIndex = serde_json::from_slice(&body)
            .map_err(|e| bad(format!("tag {tag} holds no OCI image index ({e}), so no version")))?;
        if !is_version(&index) {
            let kind = index.artifact_type().as_ref().map_or("no artifact type", |t| t.as_ref());
            return Err(bad(format!("tag {tag} holds an index of {kind}, not a version")));
        }
        let digest = sha256_of(&body);
        let known = self.state().configs.get(&digest).cloned();
        let config = match known {
            Some(config) => config,
            None => {
                let config = self.read_parts(&index, what)?.map_err(bad)?;
                let mut state = self.state();
                state.configs.insert(digest, config.clone());
                state.indexed_tags.insert(tag);
                config
            }
        };
        let bytes = self
            .registry
            .get_blob(&config, what)?
            .ok_or_else(|| bad(format!("its config blob {config} is missing from the registry")))?;
        if sha256_of(&bytes) != config {
            return Err(bad(format!("its config blob {config} is damaged")));
        }
        Ok(Some(bytes))
    }

    /// Deletes the version's index, which ends the version, then its parts,
    /// so that the registry's garbage collector can take their chunks: it
    /// keeps every manifest the repository still holds, an index's or not.
    fn delete_version(&self, container: &ContainerRef, version: u64) -> Result<bool> {
        let tag = version_tag(container, version);
        let what = format_args!("deleting version {version} of {container}");
        // Registries delete manifests by digest only; the digest of the
        // bytes is the manifest's, whatever headers a registry sends.
        let Some(body) = self.registry.get_manifest(&tag, what)? else { return Ok(false) };
        let digest = sha256_of(&body);
        let deleted = self.registry.delete_manifest(&digest, what)?;
        {
            let mut state = self.state();
            state.indexed_tags.remove(&tag);
            state.configs.remove(&digest);
        }
        // Interrupted here, the parts are left tagged without an index, as
        // by an interrupted upload, and gc_chunks deletes them.
        let parts = serde_json::from_slice::<ImageIndex>(&body).ok().filter(is_version);
        for part in parts.iter().flat_map(|index| index.manifests()) {
            self.registry.delete_manifest(part.digest(), what)?;
        }
        Ok(deleted)
    }

    /// Deletes the parts that no index holds (left by an upload or a
    /// deletion that was interrupted) once pushed longer than `grace` ago,
    /// so that the registry's garbage collector takes their chunks; counts
    /// them as `temp_files_removed`. Removes no chunk itself: a registry
    /// reclaims blobs that no manifest references with its own garbage
    /// collector (`registry garbage-collect`), which runs offline because
    /// blobs cannot be removed safely through the API while versions are
    /// being written.
    fn gc_chunks(&self, _keep: &HashSet<ChunkId>, grace: Duration) -> Result<GcReport> {
        let what = format_args!("deleting parts left without a version");
        let tags = self.registry.tags(what)?;
        let versions: HashSet<&str> =
            tags.iter().map(String::as_str).filter(|t| parse_version_tag(t).is_some()).collect();
        let mut report = GcReport::default();
        let now = OffsetDateTime::now_utc();
        for tag in &tags {
            // Parts of a version have its index; an index that leaves out a
            // part tagged for it is not made (put_parts deletes those first).
            let Some((version_tag, _)) = parse_part_tag(tag) else { continue };
            if versions.contains(version_tag) {
                continue;
            }
            let Some(body) = self.registry.get_manifest(tag, what)? else { continue };
            let Ok(part) = serde_json::from_slice::<ImageManifest>(&body) else { continue };
            // Another artifact's, or maybe the next version's, about to be
            // committed by its index.
            if !is_part(&part) || pushed(&part).is_none_or(|pushed| now - pushed < grace) {
                continue;
            }
            if self.registry.delete_manifest(&sha256_of(&body), what)? {
                report.temp_files_removed += 1;
            }
        }
        Ok(report)
    }
}
