//! The directory backend of [`VersionStore`]: a local directory or a shared
//! mount (NFS, Gluster) named `file:///PATH`.
//!
//! ```text
//! <root>/chunks/<aa>/<chunk id>                              blobs, aa = first two hex digits
//! <root>/containers/<namespace>/<container>/versions/<V>.json  manifests
//! ```
//!
//! Every file is written under a temporary name (starting with `.`) and
//! renamed into place, so a reader never sees half a blob or half a
//! manifest. Chunks are written without an fsync each, which would cap an
//! upload at one disk flush per chunk (about 12 MiB/s here); instead, before
//! a manifest is written, one syncfs(2) makes every chunk written since
//! durable, then they are renamed into place and a second syncfs makes the
//! renames durable. So a chunk is under its final name only once its bytes
//! are durable (a crash never leaves a truncated chunk that a later version
//! would dedup against), and a manifest is durable only after its chunks.
//! Until that flush, the store finds its own pending chunks by their
//! temporary names. Temporary files of an interrupted upload are removed by
//! [`VersionStore::gc_chunks`] once older than its grace period.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    fs::File,
    io::{self, Write},
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, SystemTime},
};

use crate::{
    ContainerRef, GcReport, VersionStore,
    crypto::ChunkId,
    error::{Result, VersionError},
};
use migrate_oci::durable::{rename_noreplace, unique_suffix};

const CHUNKS_DIR: &str = "chunks";
const CONTAINERS_DIR: &str = "containers";
const VERSIONS_DIR: &str = "versions";

#[derive(Debug)]
pub struct DirStore {
    root: PathBuf,
    /// Directories that gained entries no sync has made durable yet.
    unsynced: Mutex<BTreeSet<PathBuf>>,
    /// Chunks written under a temporary name, not yet synced and renamed.
    pending: Mutex<HashMap<ChunkId, PathBuf>>,
}

impl DirStore {
    /// Opens (creating if need be) the store in directory `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<DirStore> {
        let root = root.into();
        for dir in [CHUNKS_DIR, CONTAINERS_DIR] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path).map_err(VersionError::io("create directory", &path))?;
        }
        Ok(DirStore { root, unsynced: Mutex::default(), pending: Mutex::default() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        self.root.join(CHUNKS_DIR).join(id.shard()).join(id.to_string())
    }

    fn versions_dir(&self, container: &ContainerRef) -> PathBuf {
        self.root.join(CONTAINERS_DIR).join(&container.namespace).join(&container.id).join(VERSIONS_DIR)
    }

    fn manifest_path(&self, container: &ContainerRef, version: u64) -> PathBuf {
        self.versions_dir(container).join(format!("{version}.json"))
    }

    /// Writes `bytes` to a temporary file in `dir`, with `fsync` durably;
    /// returns its path.
    fn write_temp(dir: &Path, name: &str, bytes: &[u8], fsync: bool) -> Result<PathBuf> {
        let tmp = dir.join(format!(".{name}.tmp-{}", unique_suffix()));
        let write = || -> io::Result<()> {
            let mut f = File::create_new(&tmp)?;
            f.write_all(bytes)?;
            if fsync { f.sync_all() } else { Ok(()) }
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            VersionError::Io { op: "write", path: tmp.clone(), source: e }
        })?;
        Ok(tmp)
    }

    /// Creates `dir` and its missing parents, noting which need an fsync.
    fn make_dir(&self, dir: &Path) -> Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        if let Some(parent) = dir.parent() {
            self.make_dir(parent)?;
        }
        match std::fs::create_dir(dir) {
            Ok(()) => {
                if let Some(parent) = dir.parent() {
                    self.note_unsynced(parent);
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(VersionError::Io { op: "create directory", path: dir.to_owned(), source: e }),
        }
    }

    fn note_unsynced(&self, dir: &Path) {
        self.unsynced.lock().unwrap_or_else(|e| e.into_inner()).insert(dir.to_owned());
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<ChunkId, PathBuf>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the pending chunks durable and puts them under their names,
    /// and makes every directory entry made since the last call durable.
    fn flush(&self) -> Result<()> {
        let pending = std::mem::take(&mut *self.pending());
        let dirs = std::mem::take(&mut *self.unsynced.lock().unwrap_or_else(|e| e.into_inner()));
        if pending.is_empty() && dirs.is_empty() {
            return Ok(());
        }
        self.syncfs()?;
        for (id, tmp) in &pending {
            let path = self.chunk_path(id);
            // A plain rename: another uploader may have put the same chunk,
            // and replacing it with identical bytes is harmless.
            std::fs::rename(tmp, &path).map_err(VersionError::io("rename into place", &path))?;
        }
        self.syncfs()
    }

    /// syncfs(2) of the store's file system: one flush for everything
    /// written, where an fsync per chunk would wait for the disk each time.
    fn syncfs(&self) -> Result<()> {
        let root = File::open(&self.root).map_err(VersionError::io("open", &self.root))?;
        nix::unistd::syncfs(&root).map_err(|e| VersionError::Io {
            op: "syncfs",
            path: self.root.clone(),
            source: e.into(),
        })
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(VersionError::io("fsync", dir))
}

/// The entries of `dir`, or none if it does not exist.
fn read_dir_names(dir: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(VersionError::Io { op: "list", path: dir.to_owned(), source: e }),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(VersionError::io("list", dir))?;
        names.extend(entry.file_name().into_string().ok());
    }
    Ok(names)
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(VersionError::Io { op: "read", path: path.to_owned(), source: e }),
    }
}

impl VersionStore for DirStore {
    fn put_chunk(&self, id: &ChunkId, blob: &[u8]) -> Result<bool> {
        if self.claim_chunk(id)? {
            return Ok(false);
        }
        let path = self.chunk_path(id);
        let shard = path.parent().expect("a chunk path has a shard directory");
        self.make_dir(shard)?;
        let tmp = DirStore::write_temp(shard, &id.to_string(), blob, false)?;
        self.pending().insert(*id, tmp);
        Ok(true)
    }

    fn has_chunk(&self, id: &ChunkId) -> Result<bool> {
        if self.pending().contains_key(id) {
            return Ok(true);
        }
        let path = self.chunk_path(id);
        match path.symlink_metadata() {
            Ok(meta) => Ok(meta.is_file()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(VersionError::Io { op: "stat", path, source: e }),
        }
    }

    fn claim_chunk(&self, id: &ChunkId) -> Result<bool> {
        if self.pending().contains_key(id) {
            return Ok(true);
        }
        let path = self.chunk_path(id);
        match File::options().append(true).open(&path) {
            Ok(f) => {
                f.set_modified(SystemTime::now()).map_err(VersionError::io("set the time of", &path))?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(VersionError::Io { op: "open", path, source: e }),
        }
    }

    fn get_chunk(&self, id: &ChunkId) -> Result<Option<Vec<u8>>> {
        if let Some(tmp) = self.pending().get(id).cloned() {
            return read_optional(&tmp);
        }
        read_optional(&self.chunk_path(id))
    }

    fn put_manifest(&self, container: &ContainerRef, version: u64, bytes: &[u8]) -> Result<()> {
        let dir = self.versions_dir(container);
        self.make_dir(&dir)?;
        // The chunks first: the manifest must not outlive a crash that its
        // chunks do not.
        self.flush()?;
        let path = self.manifest_path(container, version);
        let tmp = DirStore::write_temp(&dir, &format!("{version}.json"), bytes, true)?;
        match rename_noreplace(&tmp, &path) {
            Ok(()) => {}
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(if e.kind() == io::ErrorKind::AlreadyExists {
                    VersionError::VersionExists { container: container.clone(), version }
                } else {
                    VersionError::Io { op: "rename into place", path, source: e }
                });
            }
        }
        sync_dir(&dir)
    }

    fn list_containers(&self) -> Result<Vec<ContainerRef>> {
        let mut out = Vec::new();
        let root = self.root.join(CONTAINERS_DIR);
        for namespace in read_dir_names(&root)? {
            for id in read_dir_names(&root.join(&namespace))? {
                if let Ok(c) = ContainerRef::new(&namespace, &id) {
                    out.push(c);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn list_versions(&self, container: &ContainerRef) -> Result<Vec<u64>> {
        // Temporary names start with '.', so an interrupted manifest write
        // is never listed, and neither is a version whose manifest was never
        // written.
        let mut versions: Vec<u64> = read_dir_names(&self.versions_dir(container))?
            .iter()
            .filter_map(|name| name.strip_suffix(".json")?.parse().ok())
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    fn get_manifest(&self, container: &ContainerRef, version: u64) -> Result<Option<Vec<u8>>> {
        read_optional(&self.manifest_path(container, version))
    }

    fn delete_version(&self, container: &ContainerRef, version: u64) -> Result<bool> {
        let path = self.manifest_path(container, version);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(VersionError::Io { op: "remove", path, source: e }),
        }
        sync_dir(&self.versions_dir(container))?;
        Ok(true)
    }

    fn gc_chunks(&self, keep: &HashSet<ChunkId>, grace: Duration) -> Result<GcReport> {
        let mut report = GcReport::default();
        let chunks = self.root.join(CHUNKS_DIR);
        // This store's own upload in progress, whatever the grace period.
        let own: HashSet<PathBuf> = self.pending().values().cloned().collect();
        let cutoff = SystemTime::now().checked_sub(grace).unwrap_or(SystemTime::UNIX_EPOCH);
        for shard in read_dir_names(&chunks)? {
            let dir = chunks.join(&shard);
            let mut removed_any = false;
            for name in read_dir_names(&dir)? {
                let temp = name.starts_with('.');
                let id: Option<ChunkId> = name.parse().ok();
                if !temp && id.is_none_or(|id| keep.contains(&id)) {
                    continue;
                }
                let path = dir.join(&name);
                if own.contains(&path) {
                    continue;
                }
                let Ok(meta) = path.symlink_metadata() else { continue };
                // Recent ones may belong to an upload whose manifest is not
                // written yet (claim_chunk refreshes the time of chunks it
                // reuses).
                if meta.modified().map_err(VersionError::io("stat", &path))? > cutoff {
                    continue;
                }
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(VersionError::Io { op: "remove", path, source: e }),
                }
                removed_any = true;
                if temp {
                    report.temp_files_removed += 1;
                } else {
                    report.chunks_removed += 1;
                    report.bytes_removed += meta.len();
                }
            }
            if removed_any {
                sync_dir(&dir)?;
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::chunk_id;

    fn web() -> ContainerRef {
        ContainerRef::new("default", "web").unwrap()
    }

    #[test]
    fn opening_creates_the_layout() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().join("s").display());
        url.parse::<crate::StoreLocation>().unwrap().open().unwrap();
        assert!(dir.path().join("s/chunks").is_dir() && dir.path().join("s/containers").is_dir());
    }

    #[test]
    fn chunks_are_put_once_and_sharded() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path()).unwrap();
        let id = chunk_id(None, b"hello");
        assert!(!store.has_chunk(&id).unwrap());
        assert_eq!(store.get_chunk(&id).unwrap(), None);
        assert!(store.put_chunk(&id, b"hello").unwrap());
        assert!(!store.put_chunk(&id, b"hello").unwrap());
        assert!(store.has_chunk(&id).unwrap() && store.claim_chunk(&id).unwrap());
        assert_eq!(store.get_chunk(&id).unwrap().unwrap(), b"hello");
        let path = dir.path().join("chunks").join(&id.to_string()[..2]).join(id.to_string());
        // Pending under a temporary name until a manifest flushes it.
        assert!(!path.exists());
        store.put_manifest(&web(), 0, b"{}").unwrap();
        assert!(path.is_file() && store.has_chunk(&id).unwrap());
        assert_eq!(store.get_chunk(&id).unwrap().unwrap(), b"hello");
        let shard = std::fs::read_dir(path.parent().unwrap()).unwrap().count();
        assert_eq!(shard, 1, "a temporary file was left behind");
    }

    #[test]
    fn manifests_are_never_overwritten_and_temporaries_never_listed() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path()).unwrap();
        assert!(store.list_versions(&web()).unwrap().is_empty());
        store.put_manifest(&web(), 10, b"{}").unwrap();
        store.put_manifest(&web(), 9, b"{}").unwrap();
        let err = store.put_manifest(&web(), 10, b"{\"x\":1}").unwrap_err();
        assert!(matches!(err, VersionError::VersionExists { version: 10, .. }), "{err}");
        assert_eq!(store.get_manifest(&web(), 10).unwrap().unwrap(), b"{}");
        // What a crash mid-write leaves: a temporary name.
        std::fs::write(store.versions_dir(&web()).join(".11.json.tmp-1-2"), b"{").unwrap();
        assert_eq!(store.list_versions(&web()).unwrap(), [9, 10]);
        assert_eq!(store.list_containers().unwrap(), [web()]);
        assert!(store.delete_version(&web(), 9).unwrap());
        assert!(!store.delete_version(&web(), 9).unwrap());
        assert_eq!(store.list_versions(&web()).unwrap(), [10]);
    }

    #[test]
    fn gc_spares_kept_and_recent_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path()).unwrap();
        let (a, b, c) = (chunk_id(None, b"a"), chunk_id(None, b"b"), chunk_id(None, b"c"));
        store.put_chunk(&a, b"a").unwrap();
        store.put_chunk(&b, b"b").unwrap();
        store.put_manifest(&web(), 0, b"{}").unwrap();
        // Pending, as in an upload under way: never collected.
        store.put_chunk(&c, b"c").unwrap();
        let shard = store.chunk_path(&a).parent().unwrap().to_owned();
        std::fs::write(shard.join(".leftover.tmp-1-2"), b"partial").unwrap();
        let keep = HashSet::from([a]);
        let hour = Duration::from_secs(3600);
        assert_eq!(store.gc_chunks(&keep, hour).unwrap(), GcReport::default());
        let report = store.gc_chunks(&keep, Duration::ZERO).unwrap();
        assert_eq!(report, GcReport { chunks_removed: 1, bytes_removed: 1, temp_files_removed: 1 });
        assert!(store.has_chunk(&a).unwrap() && !store.has_chunk(&b).unwrap());
        store.put_manifest(&web(), 1, b"{}").unwrap();
        assert_eq!(store.get_chunk(&c).unwrap().unwrap(), b"c");
    }
}
