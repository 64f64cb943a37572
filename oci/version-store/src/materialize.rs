//! Rebuilding a checkpoint directory from one version.

use std::{
    fs::File,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
};

use crate::{
    ContainerRef, VersionStore,
    crypto::{self, ChunkCipher},
    error::{Result, VersionError},
    manifest::{ChunkRef, VERSION_MEDIA_TYPE, VERSION_SCHEMA_VERSION, VersionFile, VersionManifest},
};
use migrate_oci::{
    Checkpoint,
    durable::{rename_noreplace, unique_suffix},
    layout,
};

/// Chunks a thread fetches in one go when rebuilding a file (about 8 MiB
/// of memory images).
const CHUNK_BATCH: usize = 256;
/// Threads fetching chunks: a restore wants every core it can get.
const MAX_THREADS: usize = 4;

/// Reads and checks the manifest of version `version` of `container`.
pub fn read_manifest(store: &dyn VersionStore, container: &ContainerRef, version: u64) -> Result<VersionManifest> {
    let bytes = store
        .get_manifest(container, version)?
        .ok_or_else(|| VersionError::VersionNotFound { container: container.clone(), version })?;
    let bad = |reason: String| VersionError::BadVersionManifest { container: container.clone(), version, reason };
    let manifest: VersionManifest = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if manifest.schema_version != VERSION_SCHEMA_VERSION || manifest.media_type != VERSION_MEDIA_TYPE {
        return Err(bad(format!(
            "schemaVersion {} of {:?}, where this containerd-migrate reads schemaVersion {VERSION_SCHEMA_VERSION} \
             of {VERSION_MEDIA_TYPE}",
            manifest.schema_version, manifest.media_type
        )));
    }
    if manifest.namespace != container.namespace || manifest.container != container.id || manifest.version != version {
        return Err(bad(format!(
            "it is the manifest of version {} of container {}/{}",
            manifest.version, manifest.namespace, manifest.container
        )));
    }
    Ok(manifest)
}

/// Rebuilds version `version` of `container` as the checkpoint directory
/// `dest` (which must not exist). The files are written into a sibling
/// temporary directory, manifest.json last, each chunk checked as it is
/// read, the whole checked with [`Checkpoint::check_files`] (not hashed
/// again: see `Source::rebuild`) and renamed to `dest`: on any error nothing is left
/// at `dest`, and the error names the version and the file and chunk at
/// fault, so that the caller can fall back to the previous version.
///
/// A version in [`IncrementalMode::CriuParent`] also needs its parents,
/// which CRIU reaches through `criu/parent` as `../../ID/criu`: they are
/// rebuilt the same way beside `dest`, under their own ids, oldest first, so
/// that `dest` restores with `runc restore` like any checkpoint. A parent
/// already there from an earlier call (the same checkpoint: its
/// manifest.json is the recorded one) is verified and used as it is; one
/// that is another checkpoint fails the call with
/// [`VersionError::ParentInTheWay`]. On error, the parents this call
/// rebuilt are removed again, so run one materialization per directory at
/// a time. Find the parents of the result through its manifest's `parent`;
/// simplest is to give each call a directory of its own (`DIR/checkpoint`)
/// and remove `DIR` when done, parents and all.
///
/// [`IncrementalMode::CriuParent`]: crate::IncrementalMode::CriuParent
pub fn materialize(
    store: &dyn VersionStore,
    container: &ContainerRef,
    version: u64,
    cipher: Option<&ChunkCipher>,
    dest: &Path,
) -> Result<Checkpoint> {
    let manifest = read_manifest(store, container, version)?;
    match (&manifest.encryption, cipher) {
        (None, None) => {}
        (Some(e), None) => {
            return Err(VersionError::KeyNeeded { container: container.clone(), version, key_id: e.key_id.clone() });
        }
        (None, Some(_)) => return Err(VersionError::NotEncrypted { container: container.clone(), version }),
        (Some(e), Some(c)) if e.key_id != c.key_id() => {
            return Err(VersionError::WrongKey {
                container: container.clone(),
                version,
                expected: e.key_id.clone(),
                found: c.key_id().to_owned(),
            });
        }
        (Some(_), Some(_)) => {}
    }
    if dest.symlink_metadata().is_ok() {
        return Err(VersionError::DestinationExists { path: dest.to_owned() });
    }
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let source = Source { store, container, manifest: &manifest, cipher };
    let mut rebuilt_parents: Vec<PathBuf> = Vec::new();
    let mut result = Ok(());
    for (i, parent) in manifest.parents.iter().enumerate().rev() {
        let grandparent = manifest.parents.get(i + 1).map(|p| p.id.as_str());
        let path = dir.join(&parent.id);
        result = match path.symlink_metadata() {
            Ok(_) => source.reuse_parent(&parent.id, &parent.files, &path),
            Err(_) => match source.rebuild(&parent.files, grandparent, &path) {
                Ok(_) => {
                    rebuilt_parents.push(path);
                    Ok(())
                }
                // Rebuilt meanwhile by another call.
                Err(VersionError::DestinationExists { .. }) => source.reuse_parent(&parent.id, &parent.files, &path),
                Err(e) => Err(e),
            },
        };
        if result.is_err() {
            break;
        }
    }
    let parent = manifest.parents.first().map(|p| p.id.as_str());
    let result = result.and_then(|()| source.rebuild(&manifest.files, parent, dest));
    if result.is_err() {
        for path in rebuilt_parents.iter().rev() {
            let _ = std::fs::remove_dir_all(path);
        }
    }
    result
}

/// Where a version's files come from.
struct Source<'a> {
    store: &'a dyn VersionStore,
    container: &'a ContainerRef,
    manifest: &'a VersionManifest,
    cipher: Option<&'a ChunkCipher>,
}

impl Source<'_> {
    /// Writes `files` (and, with `parent`, the `criu/parent` link to it)
    /// into a temporary directory beside `dest`, checks that they make the
    /// checkpoint its manifest lists and renames the directory to `dest`.
    ///
    /// The files are not hashed again: each chunk was checked against its
    /// id (a digest of its plaintext, or with a key a MAC) as it was read,
    /// so each file holds what `store_version` stored, which it hashed and
    /// compared with the checkpoint's manifest then. Hashing a gibibyte
    /// takes 0.8 s here, and whoever restores the checkpoint verifies it
    /// anyway (the shim does before every restore).
    fn rebuild(&self, files: &[VersionFile], parent: Option<&str>, dest: &Path) -> Result<Checkpoint> {
        let version = self.manifest.version;
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = dest.file_name().map_or("checkpoint".into(), |n| n.to_string_lossy().into_owned());
        let tmp = dir.join(format!(".{name}.materialize-{}", unique_suffix()));
        std::fs::create_dir(&tmp).map_err(VersionError::io("create directory", &tmp))?;
        let result = self.write_files(files, parent, &tmp).and_then(|()| {
            let rebuilt = Checkpoint::open(&tmp).and_then(|cp| cp.check_files());
            rebuilt.map_err(|source| VersionError::Rebuilt {
                container: self.container.clone(),
                version,
                source: Box::new(source),
            })
        });
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        if let Err(e) = rename_noreplace(&tmp, dest) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(if e.kind() == std::io::ErrorKind::AlreadyExists {
                VersionError::DestinationExists { path: dest.to_owned() }
            } else {
                VersionError::Io { op: "rename into place", path: dest.to_owned(), source: e }
            });
        }
        sync_dir(dir)?;
        Checkpoint::open(dest).map_err(|source| VersionError::Rebuilt {
            container: self.container.clone(),
            version,
            source: Box::new(source),
        })
    }

    /// Accepts the checkpoint at `path` as parent `id` if its manifest.json
    /// is the one recorded in `files` and it verifies.
    fn reuse_parent(&self, id: &str, files: &[VersionFile], path: &Path) -> Result<()> {
        let in_the_way = || VersionError::ParentInTheWay {
            container: self.container.clone(),
            version: self.manifest.version,
            parent: id.to_owned(),
            path: path.to_owned(),
        };
        let recorded = files.iter().find(|f| f.path == layout::MANIFEST_FILE).ok_or_else(in_the_way)?;
        let mut expected = Vec::with_capacity(recorded.size as usize);
        let ids: Vec<_> = recorded.chunks.iter().map(|c| c.id).collect();
        for (chunk, blob) in recorded.chunks.iter().zip(self.store.get_chunks(&ids)?) {
            expected.extend_from_slice(&self.open(recorded, chunk, blob)?);
        }
        match std::fs::read(path.join(layout::MANIFEST_FILE)) {
            Ok(found) if found == expected => {}
            _ => return Err(in_the_way()),
        }
        Checkpoint::open(path).and_then(|cp| cp.verify()).map_err(|source| VersionError::Rebuilt {
            container: self.container.clone(),
            version: self.manifest.version,
            source: Box::new(source),
        })
    }

    /// The plaintext of `chunk` of `file` from its blob, checked.
    fn open(&self, file: &VersionFile, chunk: &ChunkRef, blob: Option<Vec<u8>>) -> Result<Vec<u8>> {
        let fault = |missing: bool| {
            let (container, version, path, id) =
                (self.container.clone(), self.manifest.version, file.path.clone(), chunk.id);
            if missing {
                VersionError::ChunkMissing { container, version, path, id }
            } else {
                VersionError::ChunkDamaged { container, version, path, id }
            }
        };
        let plain =
            crypto::open(self.cipher, &chunk.id, blob.ok_or_else(|| fault(true))?).ok_or_else(|| fault(false))?;
        if plain.len() != chunk.size as usize {
            return Err(fault(false));
        }
        Ok(plain)
    }

    fn write_files(&self, files: &[VersionFile], parent: Option<&str>, root: &Path) -> Result<()> {
        let mut dirs: Vec<PathBuf> = vec![root.to_owned()];
        // manifest.json last, whatever the order in the version's manifest: a
        // directory interrupted mid-way is then never a checkpoint.
        let (last, rest): (Vec<_>, Vec<_>) = files.iter().partition(|f| f.path == layout::MANIFEST_FILE);
        for file in rest {
            self.write_file(file, root, &mut dirs)?;
        }
        if let Some(parent) = parent {
            let link = root.join(layout::PARENT_LINK);
            let criu = link.parent().expect("criu/parent has a directory");
            if !dirs.iter().any(|d| d == criu) {
                std::fs::create_dir_all(criu).map_err(VersionError::io("create directory", criu))?;
                dirs.push(criu.to_owned());
            }
            std::os::unix::fs::symlink(layout::parent_link_target(parent), &link)
                .map_err(VersionError::io("symlink", &link))?;
        }
        for file in last {
            self.write_file(file, root, &mut dirs)?;
        }
        for dir in dirs.iter().rev() {
            sync_dir(dir)?;
        }
        Ok(())
    }

    fn write_file(&self, file: &VersionFile, root: &Path, dirs: &mut Vec<PathBuf>) -> Result<()> {
        let path = root.join(&file.path);
        let dir = path.parent().expect("a file in the checkpoint has a directory");
        if !dirs.iter().any(|d| d == dir) {
            std::fs::create_dir_all(dir).map_err(VersionError::io("create directory", dir))?;
            dirs.push(dir.to_owned());
        }
        let out = File::create_new(&path).map_err(VersionError::io("create", &path))?;
        // Fetching and checking chunks (a read or a request, and a digest,
        // each) is most of a restore from a store: threads take batches of
        // chunks in turn and write each at its offset.
        let mut offsets = Vec::with_capacity(file.chunks.len());
        let mut end = 0u64;
        for chunk in &file.chunks {
            offsets.push(end);
            end += u64::from(chunk.size);
        }
        let batches = file.chunks.len().div_ceil(CHUNK_BATCH);
        let next = AtomicUsize::new(0);
        let fetch = || -> Result<()> {
            loop {
                let batch = next.fetch_add(1, Ordering::Relaxed);
                if batch >= batches {
                    return Ok(());
                }
                let range = batch * CHUNK_BATCH..((batch + 1) * CHUNK_BATCH).min(file.chunks.len());
                let ids: Vec<_> = file.chunks[range.clone()].iter().map(|c| c.id).collect();
                let written = self.store.get_chunks(&ids).and_then(|blobs| {
                    range.zip(blobs).try_for_each(|(i, blob)| {
                        let plain = self.open(file, &file.chunks[i], blob)?;
                        out.write_all_at(&plain, offsets[i]).map_err(VersionError::io("write", &path))
                    })
                });
                if let Err(e) = written {
                    // The other threads stop after their batch.
                    next.store(batches, Ordering::Relaxed);
                    return Err(e);
                }
            }
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, MAX_THREADS).min(batches);
        std::thread::scope(|scope| {
            let workers: Vec<_> = (1..threads).map(|_| scope.spawn(fetch)).collect();
            let mine = fetch();
            workers.into_iter().map(|w| w.join().expect("a chunk-fetching thread panicked")).fold(mine, Result::and)
        })?;
        out.sync_all().map_err(VersionError::io("fsync", &path))
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(VersionError::io("fsync", dir))
}

#[cfg(test)]
mod tests {
    //! Versions in mode criu-parent: a dump stored with the chain of
    //! checkpoints its CRIU images build on, and rebuilt with it.

    use std::time::Duration;

    use super::*;
    use migrate_oci::{CheckpointStore, testing::commit_info};

    use crate::{DirStore, IncrementalMode, Retention, apply_retention, chunking::tests::memory_image, store_version};

    struct Setup {
        _tmp: tempfile::TempDir,
        checkpoints: CheckpointStore,
        store: DirStore,
        out: PathBuf,
    }

    fn setup() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let checkpoints = CheckpointStore::open(tmp.path().join("checkpoints")).unwrap();
        let store = DirStore::open(tmp.path().join("versions")).unwrap();
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        Setup { _tmp: tmp, checkpoints, store, out }
    }

    fn web() -> ContainerRef {
        ContainerRef::new("default", "web").unwrap()
    }

    /// Commits checkpoint `id` on `parent` with a CRIU-like image set whose
    /// memory is `pages`: a pre-dump when `full`, else a dump (which has
    /// the rest of CRIU's images and the container's spec).
    fn dump(s: &Setup, id: &str, parent: Option<&str>, pages: &[u8], full: bool) -> Checkpoint {
        let mut staging = s.checkpoints.staging(id).unwrap();
        let criu = staging.criu_dir();
        std::fs::write(criu.join("pagemap-1.img"), format!("pagemap of {id}")).unwrap();
        std::fs::write(criu.join("pages-1.img"), pages).unwrap();
        if full {
            std::fs::write(criu.join("inventory.img"), b"inventory").unwrap();
            std::fs::write(criu.join("core-1.img"), format!("registers of {id}")).unwrap();
            staging.add_file(migrate_oci::CONFIG_FILE, br#"{"ociVersion": "1.2.0"}"#).unwrap();
        }
        if let Some(parent) = parent {
            // What CRIU leaves; the commit replaces it with a link in the store.
            std::os::unix::fs::symlink(format!("/elsewhere/{parent}"), criu.join("parent")).unwrap();
        }
        staging.commit(commit_info(parent)).unwrap()
    }

    /// A group as the ticker makes it: a pre-dump of 4 MiB, then two dumps
    /// each against the one before, with little memory of their own.
    fn group(s: &Setup) -> [Checkpoint; 3] {
        let pre = dump(s, "pre-0", None, &memory_image(1024, 1), false);
        let v0 = dump(s, "v0", Some("pre-0"), &memory_image(8, 2), true);
        let v1 = dump(s, "v1", Some("v0"), &memory_image(8, 3), true);
        [pre, v0, v1]
    }

    fn same_files(a: &Checkpoint, b: &Path) {
        let mut rels: Vec<&str> = a.manifest().files.iter().map(|f| f.path.as_str()).collect();
        rels.push(layout::MANIFEST_FILE);
        for rel in rels {
            assert!(std::fs::read(a.dir().join(rel)).unwrap() == std::fs::read(b.join(rel)).unwrap(), "{rel} differs");
        }
    }

    #[test]
    fn a_dump_on_parents_is_stored_with_its_chain_and_rebuilt_with_it() {
        let s = setup();
        let [pre, v0, v1] = group(&s);
        let first = store_version(&s.store, v0.dir(), &web(), 0, 5, None).unwrap();
        assert!(first.bytes_total > 4 << 20, "the pre-dump is part of the version: {first:?}");
        let second = store_version(&s.store, v1.dir(), &web(), 1, 5, None).unwrap();
        assert!(second.bytes_total > first.bytes_total);
        // The chain's chunks are in the store already: only v1's are new.
        assert!(second.bytes_new < 64 << 10, "{second:?}");

        let m = read_manifest(&s.store, &web(), 1).unwrap();
        assert_eq!(m.mode, IncrementalMode::CriuParent);
        let ids: Vec<&str> = m.parents.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["v0", "pre-0"]);
        assert_eq!(m.files.last().unwrap().path, layout::MANIFEST_FILE);
        assert_eq!(m.parents[1].files.last().unwrap().path, layout::MANIFEST_FILE);

        let restore = s.out.join("restore");
        std::fs::create_dir(&restore).unwrap();
        let rebuilt = materialize(&s.store, &web(), 1, None, &restore.join("latest")).unwrap();
        rebuilt.verify().unwrap();
        assert_eq!(rebuilt.manifest().parent.as_deref(), Some("v0"));
        assert_eq!(std::fs::read_link(restore.join("latest/criu/parent")).unwrap(), Path::new("../../v0/criu"));
        assert_eq!(std::fs::read_link(restore.join("v0/criu/parent")).unwrap(), Path::new("../../pre-0/criu"));
        assert!(restore.join("pre-0/criu/parent").symlink_metadata().is_err(), "the pre-dump has no parent");
        same_files(&v1, &restore.join("latest"));
        same_files(&v0, &restore.join("v0"));
        same_files(&pre, &restore.join("pre-0"));
        for id in ["v0", "pre-0"] {
            Checkpoint::open(&restore.join(id)).unwrap().verify().unwrap();
        }

        // The next one beside it reuses the parents that are there.
        materialize(&s.store, &web(), 0, None, &restore.join("previous")).unwrap().verify().unwrap();
        let mut names: Vec<String> =
            std::fs::read_dir(&restore).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["latest", "pre-0", "previous", "v0"], "no temporary directory may be left");
    }

    #[test]
    fn a_parent_that_is_another_checkpoint_is_not_overwritten() {
        let s = setup();
        let [_, v0, _] = group(&s);
        store_version(&s.store, v0.dir(), &web(), 0, 5, None).unwrap();
        let other = CheckpointStore::open(s.out.join("other")).unwrap();
        migrate_oci::testing::committed(&other, "pre-0");
        let before = std::fs::read(other.root().join("pre-0/manifest.json")).unwrap();

        let err = materialize(&s.store, &web(), 0, None, &other.root().join("v0")).unwrap_err();
        assert!(matches!(&err, VersionError::ParentInTheWay { parent, .. } if parent == "pre-0"), "{err}");
        assert!(err.to_string().contains("materialize into a directory without it"), "{err}");
        assert_eq!(std::fs::read(other.root().join("pre-0/manifest.json")).unwrap(), before);
        assert!(!other.root().join("v0").exists());
        assert_eq!(std::fs::read_dir(other.root()).unwrap().count(), 1, "nothing may be left behind");
    }

    #[test]
    fn a_failed_rebuild_removes_the_parents_it_made() {
        let s = setup();
        let [_, v0, v1] = group(&s);
        store_version(&s.store, v0.dir(), &web(), 0, 5, None).unwrap();
        store_version(&s.store, v1.dir(), &web(), 1, 5, None).unwrap();
        // v1's own memory is lost; its parents' chunks are all there.
        let m = read_manifest(&s.store, &web(), 1).unwrap();
        let pages = m.files.iter().find(|f| f.path == "criu/pages-1.img").unwrap();
        let keep = m.chunk_ids().filter(|id| *id != pages.chunks[0].id).collect();
        s.store.gc_chunks(&keep, Duration::ZERO).unwrap();

        let err = materialize(&s.store, &web(), 1, None, &s.out.join("latest")).unwrap_err();
        assert!(matches!(&err, VersionError::ChunkMissing { path, .. } if path == "criu/pages-1.img"), "{err}");
        assert_eq!(std::fs::read_dir(&s.out).unwrap().count(), 0, "the rebuilt parents must go again");
    }

    #[test]
    fn retention_keeps_the_chains_chunks() {
        let s = setup();
        let [_, _, v1] = group(&s);
        // Only the latest version is stored: the chain lives in it alone.
        store_version(&s.store, v1.dir(), &web(), 1, 5, None).unwrap();
        let now = Retention { keep_groups: 1, group_size: 5, chunk_grace: Duration::ZERO };
        apply_retention(&s.store, &web(), &now).unwrap();
        materialize(&s.store, &web(), 1, None, &s.out.join("latest")).unwrap().verify().unwrap();
    }

    #[test]
    fn a_missing_parent_is_named_and_nothing_is_stored() {
        let s = setup();
        let [_, v0, v1] = group(&s);
        // Deleted behind the store's back (remove() refuses while v1 needs it).
        std::fs::remove_dir_all(v0.dir()).unwrap();
        let err = store_version(&s.store, v1.dir(), &web(), 1, 5, None).unwrap_err();
        assert!(matches!(&err, VersionError::ParentUnavailable { parent, .. } if parent == "v0"), "{err}");
        assert!(err.to_string().contains("builds on checkpoint v0, which cannot be read beside it"), "{err}");
        assert!(s.store.list_versions(&web()).unwrap().is_empty());
    }

    #[test]
    fn a_loop_of_parents_is_refused() {
        let s = setup();
        let [pre, ..] = group(&s);
        // Only a hand-edited manifest can say this.
        let path = pre.dir().join(layout::MANIFEST_FILE);
        let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        json["parent"] = "v1".into();
        std::fs::write(&path, json.to_string()).unwrap();
        let err = store_version(&s.store, s.checkpoints.root().join("v1").as_path(), &web(), 0, 5, None).unwrap_err();
        assert!(matches!(&err, VersionError::ParentLoop { parent, .. } if parent == "v1"), "{err}");
    }
}
