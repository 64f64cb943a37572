//! The version store end to end: checkpoints stored, retained, rebuilt.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{chunking::tests::*, *};
use migrate_oci::{Checkpoint, CheckpointStore, testing::commit_info};

pub(super) const PAGES: usize = 4096; // 16 MiB

pub(super) struct Setup {
    _tmp: tempfile::TempDir,
    pub(super) checkpoints: CheckpointStore,
    store: DirStore,
    pub(super) out: PathBuf,
}

pub(super) fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let checkpoints = CheckpointStore::open(tmp.path().join("checkpoints")).unwrap();
    let store = DirStore::open(tmp.path().join("versions")).unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    Setup { _tmp: tmp, checkpoints, store, out }
}

pub(super) fn web() -> ContainerRef {
    ContainerRef::new("default", "web").unwrap()
}

/// Commits checkpoint `id` whose memory image is `pages`.
pub(super) fn checkpoint(s: &Setup, id: &str, pages: &[u8]) -> Checkpoint {
    let mut staging = s.checkpoints.staging(id).unwrap();
    let criu = staging.criu_dir();
    std::fs::create_dir_all(&criu).unwrap();
    std::fs::write(criu.join("inventory.img"), b"inventory").unwrap();
    std::fs::write(criu.join("pagemap-1.img"), b"pagemap").unwrap();
    std::fs::write(criu.join("pages-1.img"), pages).unwrap();
    staging.add_file(migrate_oci::CONFIG_FILE, br#"{"ociVersion": "1.2.0"}"#).unwrap();
    staging.commit(commit_info(None)).unwrap()
}

fn store(s: &Setup, cp: &Checkpoint, version: u64, cipher: Option<&ChunkCipher>) -> VersionReport {
    store_version(&s.store, cp.dir(), &web(), version, DEFAULT_GROUP_SIZE, cipher).unwrap()
}

pub(super) fn same_files(a: &Path, b: &Path) {
    for rel in ["manifest.json", "config.json", "criu/inventory.img", "criu/pagemap-1.img", "criu/pages-1.img"] {
        assert!(std::fs::read(a.join(rel)).unwrap() == std::fs::read(b.join(rel)).unwrap(), "{rel} differs");
    }
}

fn blob_paths(store: &DirStore) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for shard in std::fs::read_dir(store.root().join("chunks")).unwrap() {
        for f in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out
}

#[test]
fn a_version_round_trips_to_a_verified_checkpoint() {
    let s = setup();
    let cp = checkpoint(&s, "v0", &memory_image(PAGES, 1));
    let report = store(&s, &cp, 0, None);
    assert_eq!((report.version, report.group, report.base), (0, 0, 0));
    assert_eq!(report.bytes_new, report.bytes_total);
    assert!(report.bytes_total > (PAGES * 4096) as u64);
    assert_eq!(s.store.list_versions(&web()).unwrap(), [0]);

    let dest = s.out.join("restored");
    let rebuilt = materialize(&s.store, &web(), 0, None, &dest).unwrap();
    rebuilt.verify().unwrap();
    assert_eq!(rebuilt.manifest(), cp.manifest());
    same_files(cp.dir(), &dest);
    assert_eq!(std::fs::read_dir(&s.out).unwrap().count(), 1, "a temporary directory was left");

    let err = materialize(&s.store, &web(), 0, None, &dest).unwrap_err();
    assert!(matches!(err, VersionError::DestinationExists { .. }), "{err}");
    let err = materialize(&s.store, &web(), 1, None, &s.out.join("x")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no version 1 of container default/web in the store: list its versions to see which it holds"
    );
    let err = store_version(&s.store, cp.dir(), &web(), 0, 5, None).unwrap_err();
    assert!(matches!(err, VersionError::VersionExists { version: 0, .. }), "{err}");
    let err = store_version(&s.store, cp.dir(), &web(), 1, 0, None).unwrap_err();
    assert!(matches!(err, VersionError::ZeroGroupSize), "{err}");
}

#[test]
fn a_second_version_stores_about_what_changed() {
    let s = setup();
    let mut pages = memory_image(PAGES, 1);
    store(&s, &checkpoint(&s, "v0", &pages), 0, None);
    let changed = dirty_pages(&mut pages, 0.05, 64, 2);
    let cp = checkpoint(&s, "v1", &pages);
    let report = store(&s, &cp, 1, None);
    assert_eq!((report.group, report.base), (0, 0));
    assert!(
        report.bytes_new <= changed as u64 * 3 / 2 + (1 << 20),
        "{} new bytes for {changed} changed pages' bytes",
        report.bytes_new
    );
    // Tighter than the bound above, which is mostly slack at this size: the
    // changed runs with the chunks they straddle (at this size a handful of
    // runs, so their ends weigh more than on 64 MiB, where it is 1.45x),
    // plus the new manifest.json.
    assert!(report.bytes_new <= changed as u64 * 2 + (64 << 10), "{} for {changed}", report.bytes_new);
    assert!(report.chunks_new < report.chunks_total);
    let dest = s.out.join("v1");
    materialize(&s.store, &web(), 1, None, &dest).unwrap();
    same_files(cp.dir(), &dest);
}

#[test]
fn retention_keeps_the_newest_groups_and_gc_only_unreferenced_chunks() {
    let s = setup();
    let mut pages = memory_image(256, 1);
    // 12 versions in groups of 5: groups 0, 1 and 2 (versions 10 and 11).
    for v in 0..12 {
        dirty_pages(&mut pages, 0.1, 16, v + 10);
        store(&s, &checkpoint(&s, &format!("v{v}"), &pages), v, None);
    }
    // Another container sharing chunks with web's oldest version.
    let db = ContainerRef::new("default", "db").unwrap();
    store_version(&s.store, s.checkpoints.get("v0").unwrap().dir(), &db, 0, 5, None).unwrap();

    let before: HashSet<PathBuf> = blob_paths(&s.store).into_iter().collect();
    let hour = Retention { keep_groups: 2, group_size: 5, chunk_grace: Duration::from_secs(3600) };
    let report = apply_retention(&s.store, &web(), &hour).unwrap();
    assert_eq!(report.kept_groups, [1, 2]);
    assert_eq!(report.deleted_versions, [0, 1, 2, 3, 4]);
    assert_eq!(report.gc, GcReport::default(), "the grace period must spare fresh chunks");
    assert_eq!(s.store.list_versions(&web()).unwrap(), (5..12).collect::<Vec<_>>());

    let now = Retention { chunk_grace: Duration::ZERO, ..hour };
    let report = apply_retention(&s.store, &web(), &now).unwrap();
    assert!(report.deleted_versions.is_empty());
    assert!(report.gc.chunks_removed > 0);
    let after: HashSet<PathBuf> = blob_paths(&s.store).into_iter().collect();
    assert_eq!(before.len() - after.len(), report.gc.chunks_removed as usize);
    // Exactly the referenced chunks are left.
    let mut referenced = HashSet::new();
    for (c, v) in (5..12).map(|v| (web(), v)).chain([(db.clone(), 0)]) {
        referenced.extend(read_manifest(&s.store, &c, v).unwrap().chunk_ids().map(|id| id.to_string()));
    }
    let left: HashSet<String> = after.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(left, referenced);
    for v in [5, 11] {
        materialize(&s.store, &web(), v, None, &s.out.join(format!("web-{v}"))).unwrap();
    }
    materialize(&s.store, &db, 0, None, &s.out.join("db-0")).unwrap();

    // A new group pushes out the oldest kept one.
    for v in 12..16 {
        store(&s, &checkpoint(&s, &format!("v{v}"), &pages), v, None);
    }
    let report = apply_retention(&s.store, &web(), &now).unwrap();
    assert_eq!(report.kept_groups, [2, 3]);
    assert_eq!(report.deleted_versions, [5, 6, 7, 8, 9]);
}

/// A store whose manifest writes fail, as when the uploader dies just before.
pub(super) struct NoManifests<'a>(pub(super) &'a dyn VersionStore);

impl VersionStore for NoManifests<'_> {
    fn put_chunk(&self, id: &ChunkId, blob: &[u8]) -> Result<bool> {
        self.0.put_chunk(id, blob)
    }
    fn has_chunk(&self, id: &ChunkId) -> Result<bool> {
        self.0.has_chunk(id)
    }
    fn claim_chunk(&self, id: &ChunkId) -> Result<bool> {
        self.0.claim_chunk(id)
    }
    fn get_chunk(&self, id: &ChunkId) -> Result<Option<Vec<u8>>> {
        self.0.get_chunk(id)
    }
    fn put_manifest(&self, _: &ContainerRef, _: u64, _: &[u8]) -> Result<()> {
        Err(VersionError::Io { op: "write", path: "manifest".into(), source: std::io::ErrorKind::BrokenPipe.into() })
    }
    fn list_containers(&self) -> Result<Vec<ContainerRef>> {
        self.0.list_containers()
    }
    fn list_versions(&self, c: &ContainerRef) -> Result<Vec<u64>> {
        self.0.list_versions(c)
    }
    fn get_manifest(&self, c: &ContainerRef, v: u64) -> Result<Option<Vec<u8>>> {
        self.0.get_manifest(c, v)
    }
    fn delete_version(&self, c: &ContainerRef, v: u64) -> Result<bool> {
        self.0.delete_version(c, v)
    }
    fn gc_chunks(&self, keep: &HashSet<ChunkId>, grace: Duration) -> Result<GcReport> {
        self.0.gc_chunks(keep, grace)
    }
}

#[test]
fn an_interrupted_upload_is_never_a_version() {
    let s = setup();
    store(&s, &checkpoint(&s, "v0", &memory_image(64, 1)), 0, None);
    let cp = checkpoint(&s, "v1", &memory_image(64, 2));
    // Another uploader, which dies before its manifest.
    let dying = DirStore::open(s.store.root()).unwrap();
    let err = store_version(&NoManifests(&dying), cp.dir(), &web(), 1, 5, None).unwrap_err();
    assert!(matches!(err, VersionError::Io { .. }), "{err}");
    drop(dying);
    assert_eq!(s.store.list_versions(&web()).unwrap(), [0]);
    assert!(matches!(
        materialize(&s.store, &web(), 1, None, &s.out.join("v1")),
        Err(VersionError::VersionNotFound { version: 1, .. })
    ));
    // Its chunks never got their names, and are garbage to a GC past the
    // grace period; version 0 is whole.
    let before = blob_paths(&s.store);
    assert!(before.iter().any(|p| p.file_name().unwrap().to_string_lossy().starts_with('.')));
    let hour = Retention::default();
    assert_eq!(apply_retention(&s.store, &web(), &hour).unwrap().gc, GcReport::default());
    let now = Retention { chunk_grace: Duration::ZERO, ..hour };
    let report = apply_retention(&s.store, &web(), &now).unwrap();
    assert_eq!(report.gc.chunks_removed, 0);
    assert!(report.gc.temp_files_removed >= 4, "{report:?}");
    assert!(blob_paths(&s.store).iter().all(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.')));
    materialize(&s.store, &web(), 0, None, &s.out.join("v0")).unwrap();
    // And the version can be stored again.
    store(&s, &cp, 1, None);
}

#[test]
fn a_checkpoint_damaged_before_upload_is_refused() {
    let s = setup();
    let cp = checkpoint(&s, "v0", &memory_image(64, 1));
    let pages = cp.criu_dir().join("pages-1.img");
    let mut bytes = std::fs::read(&pages).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&pages, bytes).unwrap();
    let err = store_version(&s.store, cp.dir(), &web(), 0, 5, None).unwrap_err();
    assert!(matches!(&err, VersionError::FileChanged { path, .. } if *path == pages), "{err}");
    assert!(s.store.list_versions(&web()).unwrap().is_empty());
    let err = store_version(&s.store, &s.out, &web(), 0, 5, None).unwrap_err();
    assert!(matches!(err, VersionError::Checkpoint { .. }), "{err}");

    // An incremental dump whose parent is gone cannot restore: see
    // materialize's tests for versions in mode criu-parent.
    let parent = migrate_oci::testing::committed(&s.checkpoints, "parent");
    let child = s.checkpoints.staging("child").unwrap();
    migrate_oci::testing::write_images(&child.criu_dir());
    let child = child.commit(commit_info(Some("parent"))).unwrap();
    std::fs::remove_dir_all(parent.dir()).unwrap();
    let err = store_version(&s.store, child.dir(), &web(), 0, 5, None).unwrap_err();
    assert!(matches!(&err, VersionError::ParentUnavailable { parent, .. } if parent == "parent"), "{err}");
    assert!(s.store.list_versions(&web()).unwrap().is_empty());
}

#[test]
fn encrypted_versions_round_trip_and_refuse_wrong_keys_and_tampering() {
    let s = setup();
    let key_file = s.out.join("key");
    let key = [0x5au8; KEY_LEN];
    std::fs::write(&key_file, hex::encode(key)).unwrap();
    let cipher = ChunkCipher::from_key_file(&key_file).unwrap();
    let pages = memory_image(256, 1);
    let cp = checkpoint(&s, "v0", &pages);
    let report = store(&s, &cp, 0, Some(&cipher));
    assert_eq!(report.bytes_new, report.bytes_total);

    // At rest: no plaintext in blobs, no key in the manifest.
    for blob in blob_paths(&s.store) {
        let bytes = std::fs::read(&blob).unwrap();
        assert!(!bytes.windows(64).any(|w| w == &pages[4096..4160]), "{} holds plaintext", blob.display());
        assert!(!bytes.windows(9).any(|w| w == b"inventory"));
    }
    let manifest = String::from_utf8(s.store.get_manifest(&web(), 0).unwrap().unwrap()).unwrap();
    assert!(!manifest.contains(&hex::encode(key)) && !manifest.contains("5a5a5a5a"), "{manifest}");
    assert!(manifest.contains(cipher.key_id()));
    let m = read_manifest(&s.store, &web(), 0).unwrap();
    assert_eq!(m.encryption.as_ref().unwrap().algorithm, "xchacha20poly1305");

    let dest = s.out.join("restored");
    materialize(&s.store, &web(), 0, Some(&cipher), &dest).unwrap().verify().unwrap();
    same_files(cp.dir(), &dest);

    let other = ChunkCipher::from_key(&[1; KEY_LEN]);
    let err = materialize(&s.store, &web(), 0, Some(&other), &s.out.join("a")).unwrap_err();
    assert!(matches!(err, VersionError::WrongKey { .. }), "{err}");
    assert!(err.to_string().contains("pass the key file it was stored with"), "{err}");
    let err = materialize(&s.store, &web(), 0, None, &s.out.join("a")).unwrap_err();
    assert!(matches!(err, VersionError::KeyNeeded { .. }), "{err}");
    store(&s, &checkpoint(&s, "plain", &pages), 1, None);
    let err = materialize(&s.store, &web(), 1, Some(&cipher), &s.out.join("a")).unwrap_err();
    assert!(matches!(err, VersionError::NotEncrypted { .. }), "{err}");

    // One flipped bit in one blob of version 0.
    let victim = m.files.iter().find(|f| f.path == "criu/pages-1.img").unwrap().chunks[1].id;
    let path = s.store.root().join("chunks").join(victim.shard()).join(victim.to_string());
    let mut blob = std::fs::read(&path).unwrap();
    blob[40] ^= 0x08;
    std::fs::write(&path, &blob).unwrap();
    let err = materialize(&s.store, &web(), 0, Some(&cipher), &s.out.join("a")).unwrap_err();
    assert!(matches!(&err, VersionError::ChunkDamaged { id, .. } if *id == victim), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "version 0 of container default/web: criu/pages-1.img: chunk {victim} is damaged or was encrypted \
             with another key; this version cannot be restored — use the previous version"
        )
    );
    std::fs::remove_file(&path).unwrap();
    let err = materialize(&s.store, &web(), 0, Some(&cipher), &s.out.join("a")).unwrap_err();
    assert!(matches!(&err, VersionError::ChunkMissing { id, .. } if *id == victim), "{err}");
    assert!(!s.out.join("a").exists());
    assert_eq!(std::fs::read_dir(&s.out).unwrap().count(), 2, "a temporary directory was left");

    let err = ChunkCipher::from_key_file(&s.out.join("nokey")).unwrap_err();
    assert!(matches!(err, VersionError::KeyFile { .. }), "{err}");
}

#[test]
fn a_damaged_plain_chunk_is_detected() {
    let s = setup();
    store(&s, &checkpoint(&s, "v0", &memory_image(64, 1)), 0, None);
    let m = read_manifest(&s.store, &web(), 0).unwrap();
    let victim = m.files.last().unwrap().chunks[0].id;
    assert_eq!(m.files.last().unwrap().path, "manifest.json");
    let path = s.store.root().join("chunks").join(victim.shard()).join(victim.to_string());
    let mut blob = std::fs::read(&path).unwrap();
    blob[3] ^= 1;
    std::fs::write(&path, &blob).unwrap();
    let err = materialize(&s.store, &web(), 0, None, &s.out.join("a")).unwrap_err();
    assert!(matches!(&err, VersionError::ChunkDamaged { path, .. } if path == "manifest.json"), "{err}");
}

#[test]
fn a_manifest_under_the_wrong_name_is_refused() {
    let s = setup();
    store(&s, &checkpoint(&s, "v0", &memory_image(8, 1)), 0, None);
    let bytes = s.store.get_manifest(&web(), 0).unwrap().unwrap();
    s.store.put_manifest(&web(), 3, &bytes).unwrap();
    let err = read_manifest(&s.store, &web(), 3).unwrap_err();
    assert!(err.to_string().contains("it is the manifest of version 0 of container default/web"), "{err}");
    s.store.put_manifest(&web(), 4, b"{").unwrap();
    assert!(matches!(read_manifest(&s.store, &web(), 4), Err(VersionError::BadVersionManifest { .. })));
}

#[test]
fn names_are_checked() {
    assert!(ContainerRef::new("k8s.io", "abc-123").is_ok());
    for (ns, id) in [("", "x"), ("default", "../x"), ("a/b", "x"), ("default", ".x")] {
        assert!(matches!(ContainerRef::new(ns, id), Err(VersionError::InvalidName { .. })), "{ns}/{id}");
    }
    assert_eq!(group_of(0, 5).unwrap(), (0, 0));
    assert_eq!(group_of(4, 5).unwrap(), (0, 0));
    assert_eq!(group_of(7, 5).unwrap(), (1, 5));
}

/// Dedup ratio and throughput of storing a 256 MiB memory image, then a
/// second version with 1%, 10% and 50% of its pages changed in place.
#[test]
#[ignore = "a measurement: run with --release --ignored --nocapture"]
fn dedup_and_throughput() {
    const MIB: f64 = (1 << 20) as f64;
    for cipher in [None, Some(ChunkCipher::from_key(&[9; KEY_LEN]))] {
        let label = if cipher.is_some() { "encrypted" } else { "plain" };
        for fraction in [0.01, 0.10, 0.50] {
            let s = setup();
            let mut pages = memory_image(65536, 1);
            let cp = checkpoint(&s, "v0", &pages);
            let t = Instant::now();
            let first = store_version(&s.store, cp.dir(), &web(), 0, 5, cipher.as_ref()).unwrap();
            let full = t.elapsed().as_secs_f64();
            let changed = dirty_pages(&mut pages, fraction, 64, 5);
            let cp = checkpoint(&s, "v1", &pages);
            let t = Instant::now();
            let second = store_version(&s.store, cp.dir(), &web(), 1, 5, cipher.as_ref()).unwrap();
            let incr = t.elapsed().as_secs_f64();
            let t = Instant::now();
            materialize(&s.store, &web(), 1, cipher.as_ref(), &s.out.join("r")).unwrap();
            let rest = t.elapsed().as_secs_f64();
            println!(
                "{label:>9} {:>2}% pages changed: full {:.0} MiB/s; second version stored {:.1} MiB new for {:.1} MiB \
                 changed (x{:.2}, dedup ratio {:.1}:1) at {:.0} MiB/s; materialize+verify {:.0} MiB/s",
                fraction * 100.0,
                first.bytes_total as f64 / MIB / full,
                second.bytes_new as f64 / MIB,
                changed as f64 / MIB,
                second.bytes_new as f64 / changed as f64,
                second.bytes_total as f64 / second.bytes_new as f64,
                second.bytes_total as f64 / MIB / incr,
                second.bytes_total as f64 / MIB / rest,
            );
        }
    }
}
