//! The registry store against a real registry: Debian's `docker-registry`
//! (the CNCF distribution registry), one per test, on a free loopback port
//! with a temporary storage directory.

use std::{
    collections::HashSet,
    fs::File,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    chunking::tests::{dirty_pages, memory_image},
    registry_api::{Registry, sha256_of},
    registry_artifact::{
        CONTAINER_ANNOTATION, NAMESPACE_ANNOTATION, PACK_INDEX_ANNOTATION, PART_ANNOTATION, PackBlobs,
        VERSION_ANNOTATION, packs, parse_part_tag, parse_version_tag, part_tag, version_tag,
    },
    registry_pack::{PACK_INDEX_MEDIA_TYPE, PACK_MEDIA_TYPE, PackIndex},
    tests::{NoManifests, PAGES, Setup, checkpoint, same_files, setup, web},
    *,
};
use migrate_oci::{Checkpoint, testing::commit_info};
use oci_spec::image::{Descriptor, Digest, ImageIndex, ImageManifest, MediaType};

const BINARY: &str = "docker-registry";

/// Loopback only, storage in the test's directory.
const CONFIG: &str = "\
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: DATA
  delete:
    enabled: DELETE
http:
  addr: 127.0.0.1:PORT
";

/// A registry of one test's own, killed when dropped.
struct TestRegistry {
    binary: PathBuf,
    child: Child,
    dir: tempfile::TempDir,
    location: RegistryLocation,
}

impl TestRegistry {
    /// Starts a registry with deletion enabled, or returns None (saying
    /// so) when the binary is missing; CI=true requires it.
    fn start(test: &str) -> Option<TestRegistry> {
        TestRegistry::start_with(test, true)
    }

    fn start_with(test: &str, delete_enabled: bool) -> Option<TestRegistry> {
        let Some(binary) = find_binary() else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{test} needs {BINARY} (Debian's package of the distribution registry), and CI=true requires every \
                 test to run: run hack/setup.sh"
            );
            eprintln!("skipping {test}: {BINARY} is not installed (hack/setup.sh installs it)");
            return None;
        };
        // The filesystem driver fsyncs about ten times per blob; on tmpfs
        // that is free, and the blobs are still files the tests can damage.
        let dir = if Path::new("/dev/shm").is_dir() {
            tempfile::tempdir_in("/dev/shm").unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        let port = free_port();
        let config = CONFIG
            .replace("DATA", &dir.path().join("data").display().to_string())
            .replace("DELETE", &delete_enabled.to_string())
            .replace("PORT", &port.to_string());
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let location = RegistryLocation { host: "127.0.0.1".into(), port, repository: "checkpoints/versions".into() };
        let child = spawn(&binary, dir.path());
        let mut registry = TestRegistry { binary, child, dir, location };
        registry.wait_until_up();
        Some(registry)
    }

    /// Polls `/v2/` (through `open`) until it answers, the registry exits
    /// or the deadline passes.
    fn wait_until_up(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let Err(e) = RegistryStore::open(&self.location) else { return };
            let log = || std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default();
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{BINARY} exited ({status}) before it answered; its log:\n{}", log());
            }
            assert!(Instant::now() < deadline, "{BINARY} did not answer within 30 s ({e}); its log:\n{}", log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn store(&self) -> RegistryStore {
        RegistryStore::open(&self.location).unwrap()
    }

    /// A store that cuts versions into parts of two packs of 64 KiB.
    fn small_packs_store(&self) -> RegistryStore {
        self.store().with_sizes(2, 64 << 10)
    }

    fn api(&self) -> Registry {
        Registry::new(&self.location)
    }

    /// The registry's blobs on disk (packs, their indexes, configs and
    /// manifests).
    fn blob_files(&self) -> Vec<PathBuf> {
        let root = self.dir.path().join("data/docker/registry/v2/blobs/sha256");
        let mut out = Vec::new();
        for shard in std::fs::read_dir(root).unwrap() {
            for blob in std::fs::read_dir(shard.unwrap().path()).unwrap() {
                out.push(blob.unwrap().path().join("data"));
            }
        }
        out
    }

    fn blob_file(&self, digest: &Digest) -> PathBuf {
        let hex = digest.to_string()["sha256:".len()..].to_owned();
        self.dir.path().join("data/docker/registry/v2/blobs/sha256").join(&hex[..2]).join(&hex).join("data")
    }

    fn manifest(&self, reference: &str) -> Option<Vec<u8>> {
        self.api().get_manifest(reference, format_args!("test")).unwrap()
    }

    /// The index of a version, as the registry holds it.
    fn index(&self, container: &ContainerRef, version: u64) -> ImageIndex {
        serde_json::from_slice(&self.manifest(&version_tag(container, version)).unwrap()).unwrap()
    }

    /// The parts of a version, in its index's order.
    fn parts(&self, container: &ContainerRef, version: u64) -> Vec<ImageManifest> {
        let index = self.index(container, version);
        let part = |d: &Descriptor| self.manifest(d.digest().as_ref()).unwrap();
        index.manifests().iter().map(|d| serde_json::from_slice(&part(d)).unwrap()).collect()
    }

    fn pack_index(&self, blobs: &PackBlobs) -> PackIndex {
        PackIndex::parse(&std::fs::read(self.blob_file(&blobs.index.digest)).unwrap(), &blobs.pack).unwrap()
    }

    /// The chunks in the packs of `part`, pack by pack.
    fn packed_chunks(&self, part: &ImageManifest) -> Vec<ChunkId> {
        packs(part).flat_map(|p| self.pack_index(&p).chunks.into_iter().map(|c| c.id)).collect()
    }

    fn tags(&self) -> Vec<String> {
        let mut tags = self.api().tags(format_args!("test")).unwrap();
        tags.sort();
        tags
    }

    /// The blob files of what the versions in the registry reference:
    /// their indexes, parts, version manifests, packs and pack indexes.
    fn referenced_blob_files(&self) -> HashSet<PathBuf> {
        let mut digests = Vec::new();
        for tag in self.tags().iter().filter(|t| parse_version_tag(t).is_some()) {
            let index = self.manifest(tag).unwrap();
            digests.push(sha256_of(&index));
            for part in serde_json::from_slice::<ImageIndex>(&index).unwrap().manifests() {
                let body: ImageManifest =
                    serde_json::from_slice(&self.manifest(part.digest().as_ref()).unwrap()).unwrap();
                digests.push(part.digest().clone());
                digests.push(body.config().digest().clone());
                digests.extend(body.layers().iter().map(|l| l.digest().clone()));
            }
        }
        digests.iter().map(|d| self.blob_file(d)).collect()
    }

    /// Stops the registry, runs its offline garbage collector with `args`,
    /// and starts it again on the same port and storage.
    fn garbage_collect(&mut self, args: &[&str]) {
        self.kill();
        let out = Command::new(&self.binary)
            .arg("garbage-collect")
            .args(args)
            .arg(self.dir.path().join("config.yml"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{BINARY} garbage-collect: {}", String::from_utf8_lossy(&out.stderr));
        self.child = spawn(&self.binary, self.dir.path());
        self.wait_until_up();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.kill();
    }
}

fn find_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(BINARY)).find(|p| p.is_file())
}

fn spawn(binary: &Path, dir: &Path) -> Child {
    let log = File::options().create(true).append(true).open(dir.join("registry.log")).unwrap();
    Command::new(binary)
        .arg("serve")
        .arg(dir.join("config.yml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Stores `cp` as version `version` of web.
fn push(store: &RegistryStore, cp: &Checkpoint, version: u64, cipher: Option<&ChunkCipher>) -> VersionReport {
    store_version(store, cp.dir(), &web(), version, DEFAULT_GROUP_SIZE, cipher)
        .unwrap_or_else(|e| panic!("storing version {version}: {e}"))
}

/// The distinct chunks of a version, in the order of its manifest.
fn distinct_chunks(m: &VersionManifest) -> Vec<ChunkId> {
    let mut seen = HashSet::new();
    m.chunk_ids().filter(|id| seen.insert(*id)).collect()
}

/// A store whose uploads die between the parts and the index.
struct DiesBeforeIndex<'a>(&'a RegistryStore);

impl VersionStore for DiesBeforeIndex<'_> {
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
    fn get_chunks(&self, ids: &[ChunkId]) -> Result<Vec<Option<Vec<u8>>>> {
        self.0.get_chunks(ids)
    }
    fn put_manifest(&self, c: &ContainerRef, v: u64, bytes: &[u8]) -> Result<()> {
        self.0.put_parts(c, v, bytes)?;
        Err(VersionError::Io { op: "write", path: "index".into(), source: std::io::ErrorKind::BrokenPipe.into() })
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
fn versions_round_trip_through_a_registry_plain_and_encrypted() {
    let Some(registry) = TestRegistry::start("versions_round_trip_through_a_registry_plain_and_encrypted") else {
        return;
    };
    let s = setup();
    let location = StoreLocation::Registry(registry.location.clone());
    let opened = location.open().unwrap();
    let pages = memory_image(1024, 1);
    let cp = checkpoint(&s, "v0", &pages);
    let report = store_version(opened.as_ref(), cp.dir(), &web(), 0, DEFAULT_GROUP_SIZE, None).unwrap();
    assert_eq!(report.bytes_new, report.bytes_total);
    let store = registry.store();
    assert_eq!(store.list_versions(&web()).unwrap(), [0]);
    assert_eq!(store.list_containers().unwrap(), [web()]);
    let dest = s.out.join("v0");
    materialize(&store, &web(), 0, None, &dest).unwrap().verify().unwrap();
    same_files(cp.dir(), &dest);

    // The artifacts: an index of one part, whose config is the version
    // manifest and whose layers are a pack index and its pack (the version
    // is under 8 MiB) holding each distinct chunk once.
    let index = registry.index(&web(), 0);
    assert_eq!(index.media_type(), &Some(MediaType::ImageIndex));
    assert_eq!(index.artifact_type(), &Some(MediaType::from(VERSION_MEDIA_TYPE)));
    let annotations = index.annotations().as_ref().unwrap();
    assert_eq!(annotations[NAMESPACE_ANNOTATION], "default");
    assert_eq!(annotations[CONTAINER_ANNOTATION], "web");
    assert_eq!(annotations[VERSION_ANNOTATION], "0");
    let [part] = &registry.parts(&web(), 0)[..] else { panic!("{index:?} has more than one part") };
    assert_eq!(part.media_type(), &Some(MediaType::ImageManifest));
    assert_eq!(part.artifact_type(), &Some(MediaType::from(VERSION_MEDIA_TYPE)));
    let config = store.get_manifest(&web(), 0).unwrap().unwrap();
    assert_eq!(*part.config().digest(), sha256_of(&config));
    let m = read_manifest(&store, &web(), 0).unwrap();
    let media_types: Vec<&str> = part.layers().iter().map(|l| l.media_type().as_ref()).collect();
    assert_eq!(media_types, [PACK_INDEX_MEDIA_TYPE, PACK_MEDIA_TYPE]);
    let pack_annotations = part.layers()[1].annotations().as_ref().unwrap();
    assert_eq!(pack_annotations[PACK_INDEX_ANNOTATION], part.layers()[0].digest().to_string());
    assert_eq!(registry.packed_chunks(part), distinct_chunks(&m));
    let annotations = part.annotations().as_ref().unwrap();
    assert_eq!(annotations[VERSION_ANNOTATION], "0");
    assert_eq!(annotations[PART_ANNOTATION], "0");
    assert_eq!(registry.tags(), [version_tag(&web(), 0), part_tag(&web(), 0, 0)]);

    // Encrypted, and read back by a store that has seen nothing of it.
    let cipher = ChunkCipher::from_key(&[0x5a; KEY_LEN]);
    let cp = checkpoint(&s, "v1", &pages);
    let report = push(&store, &cp, 1, Some(&cipher));
    assert_eq!(report.bytes_new, report.bytes_total);
    let dest = s.out.join("v1");
    materialize(&registry.store(), &web(), 1, Some(&cipher), &dest).unwrap().verify().unwrap();
    same_files(cp.dir(), &dest);
    for layer in registry.parts(&web(), 1).iter().flat_map(|p| p.layers()) {
        let blob = std::fs::read(registry.blob_file(layer.digest())).unwrap();
        assert!(!blob.windows(64).any(|w| w == &pages[4096..4160]), "{} holds plaintext", layer.digest());
        assert!(!blob.windows(9).any(|w| w == b"inventory"), "{} holds plaintext", layer.digest());
    }
}

#[test]
fn a_second_version_uploads_only_new_chunks() {
    let Some(registry) = TestRegistry::start("a_second_version_uploads_only_new_chunks") else { return };
    let s = setup();
    let store = registry.store();
    let mut pages = memory_image(PAGES, 1);
    push(&store, &checkpoint(&s, "v0", &pages), 0, None);
    let blobs = registry.blob_files().len();
    let changed = dirty_pages(&mut pages, 0.05, 64, 2);
    let cp = checkpoint(&s, "v1", &pages);
    let report = push(&store, &cp, 1, None);
    assert!(report.chunks_new < report.chunks_total);
    assert!(report.bytes_new <= changed as u64 * 2 + (64 << 10), "{} new bytes for {changed}", report.bytes_new);
    // A pack of the new chunks and its index, the version manifest, its one
    // part and its index.
    assert_eq!(registry.blob_files().len(), blobs + 5);
    let dest = s.out.join("v1");
    materialize(&store, &web(), 1, None, &dest).unwrap();
    same_files(cp.dir(), &dest);

    // Under a key, a store that did not upload the chunks (a restarted
    // ticker) finds them in the versions others stored.
    let cipher = ChunkCipher::from_key(&[3; KEY_LEN]);
    let pages = memory_image(256, 3);
    push(&registry.store(), &checkpoint(&s, "v2", &pages), 2, Some(&cipher));
    let blobs = registry.blob_files().len();
    let report = push(&registry.store(), &checkpoint(&s, "v3", &pages), 3, Some(&cipher));
    // Only the checkpoint's own manifest.json changed.
    assert_eq!(report.chunks_new, 1, "{report:?}");
    assert_eq!(registry.blob_files().len(), blobs + 5);
    materialize(&registry.store(), &web(), 3, Some(&cipher), &s.out.join("v3")).unwrap();
}

#[test]
fn a_version_of_many_parts_round_trips_plain_and_encrypted() {
    let Some(registry) = TestRegistry::start("a_version_of_many_parts_round_trips_plain_and_encrypted") else {
        return;
    };
    let s = setup();
    let store = registry.small_packs_store();
    let pages = memory_image(256, 1);
    let cp = checkpoint(&s, "v0", &pages);
    push(&store, &cp, 0, None);
    // Read back by a store that has seen nothing of it.
    let fresh = registry.store();
    let config = fresh.get_manifest(&web(), 0).unwrap().unwrap();
    let distinct = distinct_chunks(&read_manifest(&fresh, &web(), 0).unwrap());
    let parts = registry.parts(&web(), 0);
    let pack_count = parts.iter().flat_map(packs).count();
    assert!(parts.len() >= 4, "{pack_count} packs in {} parts", parts.len());
    assert_eq!(parts.len(), pack_count.div_ceil(2));
    // Each distinct chunk in one pack, in the manifest's order; every part
    // names the version manifest and its own place.
    let packed: Vec<ChunkId> = parts.iter().flat_map(|p| registry.packed_chunks(p)).collect();
    assert_eq!(packed, distinct);
    for (number, part) in parts.iter().enumerate() {
        assert!(part.layers().len() <= 4);
        assert_eq!(*part.config().digest(), sha256_of(&config));
        let annotations = part.annotations().as_ref().unwrap();
        assert_eq!(annotations[PART_ANNOTATION], number.to_string());
        assert_eq!(annotations[VERSION_ANNOTATION], "0");
    }
    let mut tags: Vec<String> = (0..parts.len()).map(|p| part_tag(&web(), 0, p)).collect();
    tags.push(version_tag(&web(), 0));
    tags.sort();
    assert_eq!(registry.tags(), tags);
    assert_eq!(fresh.list_versions(&web()).unwrap(), [0]);
    let dest = s.out.join("v0");
    materialize(&fresh, &web(), 0, None, &dest).unwrap().verify().unwrap();
    same_files(cp.dir(), &dest);

    // Encrypted: a fresh store finds the chunks in the packs of every part,
    // both reading a version and storing the next.
    let cipher = ChunkCipher::from_key(&[0x5a; KEY_LEN]);
    let cp = checkpoint(&s, "v1", &pages);
    push(&store, &cp, 1, Some(&cipher));
    assert!(registry.parts(&web(), 1).len() >= 4);
    let dest = s.out.join("v1");
    materialize(&registry.store(), &web(), 1, Some(&cipher), &dest).unwrap().verify().unwrap();
    same_files(cp.dir(), &dest);
    let report = push(&registry.small_packs_store(), &checkpoint(&s, "v2", &pages), 2, Some(&cipher));
    assert_eq!(report.chunks_new, 1, "only the checkpoint's own manifest.json changed: {report:?}");

    // An index whose parts belong to two versions is refused.
    let mut mixed = registry.index(&web(), 1);
    let mut manifests = mixed.manifests().clone();
    manifests[1] = registry.index(&web(), 2).manifests()[1].clone();
    mixed.set_manifests(manifests);
    let mixed = serde_json::to_vec(&mixed).unwrap();
    registry.api().put_manifest(&version_tag(&web(), 9), &MediaType::ImageIndex, &mixed, format_args!("test")).unwrap();
    let err = read_manifest(&registry.store(), &web(), 9).unwrap_err();
    assert!(matches!(err, VersionError::BadVersionManifest { version: 9, .. }), "{err}");
    assert!(err.to_string().contains("belongs to another version manifest"), "{err}");
}

#[test]
fn an_interrupted_upload_is_never_listed_and_its_parts_are_collected() {
    let Some(mut registry) = TestRegistry::start("an_interrupted_upload_is_never_listed_and_its_parts_are_collected")
    else {
        return;
    };
    let s = setup();
    let store = registry.small_packs_store();
    push(&store, &checkpoint(&s, "v0", &memory_image(256, 1)), 0, None);
    let blobs = registry.blob_files().len();
    let cp = checkpoint(&s, "v1", &memory_image(256, 2));
    // An uploader that dies between its chunks and its manifest, and one
    // that dies between its parts and its index.
    let dying = registry.small_packs_store();
    let err = store_version(&NoManifests(&dying), cp.dir(), &web(), 1, 5, None).unwrap_err();
    assert!(matches!(err, VersionError::Io { .. }), "{err}");
    assert!(registry.blob_files().len() > blobs, "the chunks were not uploaded");
    let err = store_version(&DiesBeforeIndex(&dying), cp.dir(), &web(), 1, 5, None).unwrap_err();
    assert!(matches!(err, VersionError::Io { .. }), "{err}");
    let parts_of = |version: u64| -> Vec<String> {
        let prefix = format!("{}.part", version_tag(&web(), version));
        registry.tags().into_iter().filter(|t| t.starts_with(&prefix)).collect()
    };
    let left = parts_of(1);
    assert!(left.len() >= 4, "{left:?}");
    assert!(!registry.tags().contains(&version_tag(&web(), 1)));
    assert_eq!(store.list_versions(&web()).unwrap(), [0]);
    let err = materialize(&store, &web(), 1, None, &s.out.join("v1")).unwrap_err();
    assert!(matches!(err, VersionError::VersionNotFound { version: 1, .. }), "{err}");

    // Storing it again reuses the packs it uploaded and replaces the parts
    // left: the version's part tags are exactly its index's parts. (A store
    // opened afresh would upload new packs: packs no version lists are
    // found by none, and the registry's garbage collector takes them.)
    let left: Vec<Digest> = left.iter().map(|t| sha256_of(&registry.manifest(t).unwrap())).collect();
    let report = push(&dying, &cp, 1, None);
    assert_eq!(report.chunks_new, 0, "{report:?}");
    materialize(&store, &web(), 1, None, &s.out.join("v1")).unwrap();
    let tagged: Vec<Digest> = parts_of(1).iter().map(|t| sha256_of(&registry.manifest(t).unwrap())).collect();
    let indexed: Vec<Digest> = registry.index(&web(), 1).manifests().iter().map(|d| d.digest().clone()).collect();
    assert_eq!(tagged.iter().collect::<HashSet<_>>(), indexed.iter().collect::<HashSet<_>>());
    assert!(left.iter().all(|d| registry.manifest(d.as_ref()).is_none()), "an old part is still there");

    // Parts of no version are deleted once older than the grace period,
    // and the registry's garbage collector then takes their chunks.
    let cp = checkpoint(&s, "v2", &memory_image(256, 3));
    store_version(&DiesBeforeIndex(&dying), cp.dir(), &web(), 2, 5, None).unwrap_err();
    let left = parts_of(2).len();
    assert!(left >= 4);
    let hour = Retention::default();
    assert_eq!(apply_retention(&registry.store(), &web(), &hour).unwrap().gc, GcReport::default());
    assert_eq!(parts_of(2).len(), left);
    let now = Retention { chunk_grace: Duration::ZERO, ..hour };
    let report = apply_retention(&registry.store(), &web(), &now).unwrap();
    assert_eq!(report.gc, GcReport { temp_files_removed: left as u64, ..GcReport::default() });
    assert!(report.deleted_versions.is_empty());
    assert!(parts_of(2).is_empty());
    registry.garbage_collect(&[]);
    let blobs: HashSet<PathBuf> = registry.blob_files().into_iter().collect();
    assert_eq!(blobs, registry.referenced_blob_files(), "the registry holds more than its versions reference");
    for v in [0, 1] {
        materialize(&registry.store(), &web(), v, None, &s.out.join(format!("after-gc-{v}"))).unwrap();
    }
}

#[test]
fn versions_are_never_overwritten() {
    let Some(registry) = TestRegistry::start("versions_are_never_overwritten") else { return };
    let s = setup();
    let store = registry.store();
    let cp = checkpoint(&s, "v0", &memory_image(64, 1));
    push(&store, &cp, 0, None);
    let err = store_version(&store, cp.dir(), &web(), 0, 5, None).unwrap_err();
    assert!(matches!(err, VersionError::VersionExists { version: 0, .. }), "{err}");

    // put_manifest itself refuses, even with other bytes.
    push(&store, &cp, 1, None);
    let first = store.get_manifest(&web(), 0).unwrap().unwrap();
    let second = store.get_manifest(&web(), 1).unwrap().unwrap();
    let err = store.put_manifest(&web(), 0, &second).unwrap_err();
    assert!(matches!(err, VersionError::VersionExists { version: 0, .. }), "{err}");
    assert_eq!(store.get_manifest(&web(), 0).unwrap().unwrap(), first);

    let err = store.put_manifest(&web(), 2, b"{}").unwrap_err();
    assert!(matches!(err, VersionError::NotAVersionManifest { version: 2, .. }), "{err}");
    assert_eq!(store.list_versions(&web()).unwrap(), [0, 1]);
}

#[test]
fn retention_deletes_versions_and_the_registry_collects_their_chunks() {
    let Some(mut registry) = TestRegistry::start("retention_deletes_versions_and_the_registry_collects_their_chunks")
    else {
        return;
    };
    let s = setup();
    // Versions of several parts each.
    let store = registry.small_packs_store();
    let mut pages = memory_image(256, 1);
    // Groups of 2: versions 0-1, 2-3, 4-5, 6.
    for v in 0..7 {
        dirty_pages(&mut pages, 0.2, 16, v + 10);
        store_version(&store, checkpoint(&s, &format!("v{v}"), &pages).dir(), &web(), v, 2, None).unwrap();
    }
    // Another container, sharing every chunk with web's version 0.
    let db = ContainerRef::new("default", "db").unwrap();
    let v0 = s.checkpoints.get("v0").unwrap();
    store_version(&store, v0.dir(), &db, 0, 2, None).unwrap();
    assert!(registry.parts(&web(), 4).len() >= 4);

    let retention = Retention { keep_groups: 2, group_size: 2, chunk_grace: Duration::ZERO };
    let report = apply_retention(&store, &web(), &retention).unwrap();
    assert_eq!(report.kept_groups, [2, 3]);
    assert_eq!(report.deleted_versions, [0, 1, 2, 3]);
    assert_eq!(report.gc, GcReport::default(), "the registry collects blobs itself");
    assert_eq!(store.list_versions(&web()).unwrap(), [4, 5, 6]);
    assert_eq!(store.list_containers().unwrap(), [db.clone(), web()]);
    assert!(!store.delete_version(&web(), 0).unwrap());
    // The parts went with their versions.
    let tags = registry.tags();
    for tag in &tags {
        if let Some((version, _)) = parse_part_tag(tag) {
            assert!(tags.iter().any(|t| t == version), "{tag} outlived its version");
        }
    }

    // The registry's garbage collector keeps exactly what versions left
    // reference, and collects the deleted versions' parts and chunks.
    let before = registry.blob_files().len();
    registry.garbage_collect(&[]);
    let left: HashSet<PathBuf> = registry.blob_files().into_iter().collect();
    assert!(left.len() < before, "nothing was collected");
    assert_eq!(left, registry.referenced_blob_files());
    // So does one that deletes untagged manifests: every part has a tag.
    registry.garbage_collect(&["--delete-untagged"]);
    assert_eq!(registry.blob_files().into_iter().collect::<HashSet<_>>(), left);
    let store = registry.store();
    for v in [4, 6] {
        materialize(&store, &web(), v, None, &s.out.join(format!("web-{v}"))).unwrap();
    }
    let dest = s.out.join("db-0");
    materialize(&store, &db, 0, None, &dest).unwrap();
    same_files(v0.dir(), &dest);
    // And a new version still dedups against what is left.
    let report = store_version(&store, v0.dir(), &db, 1, 2, None).unwrap();
    assert_eq!(report.chunks_new, 0, "{report:?}");
}

#[test]
fn a_registry_without_deletion_says_how_to_enable_it() {
    let Some(registry) = TestRegistry::start_with("a_registry_without_deletion_says_how_to_enable_it", false) else {
        return;
    };
    let s = setup();
    let store = registry.store();
    push(&store, &checkpoint(&s, "v0", &memory_image(64, 1)), 0, None);
    let err = store.delete_version(&web(), 0).unwrap_err();
    assert!(matches!(err, VersionError::RegistryDeleteDisabled { .. }), "{err}");
    let msg = err.to_string();
    let url = StoreLocation::Registry(registry.location.clone()).to_string();
    assert!(msg.starts_with(&format!("{url}: deleting version 0 of container default/web: ")), "{msg}");
    assert!(msg.contains("REGISTRY_STORAGE_DELETE_ENABLED=true"), "{msg}");
    // Version 5 starts group 1, so retention drops group 0.
    push(&store, &checkpoint(&s, "v5", &memory_image(64, 2)), 5, None);
    let retention = Retention { keep_groups: 1, ..Retention::default() };
    let err = apply_retention(&store, &web(), &retention).unwrap_err();
    assert!(matches!(err, VersionError::RegistryDeleteDisabled { .. }), "{err}");
    assert_eq!(store.list_versions(&web()).unwrap(), [0, 5]);
}

#[test]
fn containers_are_listed_by_their_names_beside_other_artifacts() {
    let Some(registry) = TestRegistry::start("containers_are_listed_by_their_names_beside_other_artifacts") else {
        return;
    };
    let s = setup();
    let store = registry.store();
    let cp = checkpoint(&s, "v0", &memory_image(64, 1));
    let longest = ContainerRef::new(&"n".repeat(128), &format!("{}-x", "i".repeat(126))).unwrap();
    let a = ContainerRef::new("a-b", "c").unwrap();
    let b = ContainerRef::new("a", "b-c").unwrap();
    for (container, versions) in [(&longest, 0..3), (&a, 5..7), (&b, 0..1)] {
        for v in versions {
            store_version(&store, cp.dir(), container, v, 5, None).unwrap();
        }
    }
    // An image tagged latest, and one under a tag shaped like a version.
    let api = registry.api();
    let config = api.push_blob(sha256_of(b"{}"), b"{}", format_args!("test")).unwrap();
    let image = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.digest, "size": 2},
        "layers": [],
    });
    let image = serde_json::to_vec(&image).unwrap();
    let impostor = ContainerRef::new("default", "impostor").unwrap();
    for tag in ["latest".to_owned(), version_tag(&impostor, 0)] {
        api.put_manifest(&tag, &MediaType::ImageManifest, &image, format_args!("test")).unwrap();
    }

    // A fresh store learns the names from the annotations.
    let fresh = registry.store();
    let mut expected = vec![longest.clone(), a.clone(), b.clone()];
    expected.sort();
    assert_eq!(fresh.list_containers().unwrap(), expected);
    assert_eq!(fresh.list_versions(&longest).unwrap(), [0, 1, 2]);
    assert_eq!(fresh.list_versions(&a).unwrap(), [5, 6]);
    assert_eq!(fresh.list_versions(&b).unwrap(), [0]);
    assert!(fresh.list_versions(&web()).unwrap().is_empty());
    let dest = s.out.join("longest");
    materialize(&fresh, &longest, 2, None, &dest).unwrap();
    same_files(cp.dir(), &dest);
    let err = read_manifest(&fresh, &impostor, 0).unwrap_err();
    assert!(err.to_string().contains("holds no OCI image index"), "{err}");
}

#[test]
fn wrong_keys_and_damaged_blobs_are_detected() {
    let Some(registry) = TestRegistry::start("wrong_keys_and_damaged_blobs_are_detected") else { return };
    let s = setup();
    let store = registry.store();
    let cipher = ChunkCipher::from_key(&[0x11; KEY_LEN]);
    push(&store, &checkpoint(&s, "v0", &memory_image(256, 1)), 0, Some(&cipher));
    let other = ChunkCipher::from_key(&[0x22; KEY_LEN]);
    let err = materialize(&store, &web(), 0, Some(&other), &s.out.join("a")).unwrap_err();
    assert!(matches!(err, VersionError::WrongKey { .. }), "{err}");
    let err = materialize(&store, &web(), 0, None, &s.out.join("a")).unwrap_err();
    assert!(matches!(err, VersionError::KeyNeeded { .. }), "{err}");

    // A pack index that points one chunk at another's bytes, in a part
    // pushed over the version's, and an index naming that part: the id now
    // names a blob sealed for another.
    let m = read_manifest(&store, &web(), 0).unwrap();
    let pages = &m.files.iter().find(|f| f.path == "criu/pages-1.img").unwrap().chunks;
    let (victim, donor) = (pages[1].id, pages[2].id);
    let [mut part] = <[ImageManifest; 1]>::try_from(registry.parts(&web(), 0)).unwrap();
    let [blobs] = <[PackBlobs; 1]>::try_from(packs(&part).collect::<Vec<_>>()).unwrap();
    let mut forged = registry.pack_index(&blobs);
    let donor_at = *forged.chunks.iter().find(|c| c.id == donor).unwrap();
    let at = forged.chunks.iter_mut().find(|c| c.id == victim).unwrap();
    (at.offset, at.size) = (donor_at.offset, donor_at.size);
    let forged = serde_json::to_vec(&forged).unwrap();
    let api = registry.api();
    let forged = api.push_blob(sha256_of(&forged), &forged, format_args!("test")).unwrap();
    for layer in part.layers_mut() {
        if *layer.digest() == blobs.index.digest {
            layer.set_digest(forged.digest.clone());
            layer.set_size(forged.size);
        }
        let mut annotations = layer.annotations().clone().unwrap_or_default();
        if let Some(index) = annotations.get_mut(PACK_INDEX_ANNOTATION) {
            *index = forged.digest.to_string();
            layer.set_annotations(Some(annotations));
        }
    }
    let swapped = serde_json::to_vec(&part).unwrap();
    api.put_manifest(&part_tag(&web(), 0, 0), &MediaType::ImageManifest, &swapped, format_args!("test")).unwrap();
    let mut index = registry.index(&web(), 0);
    let mut manifests = index.manifests().clone();
    manifests[0].set_digest(sha256_of(&swapped));
    manifests[0].set_size(swapped.len() as u64);
    index.set_manifests(manifests);
    let index = serde_json::to_vec(&index).unwrap();
    api.put_manifest(&version_tag(&web(), 0), &MediaType::ImageIndex, &index, format_args!("test")).unwrap();
    let err = materialize(&registry.store(), &web(), 0, Some(&cipher), &s.out.join("a")).unwrap_err();
    assert!(matches!(&err, VersionError::ChunkDamaged { id, .. } if *id == victim), "{err}");

    // A bit flipped in a blob on the registry's disk.
    let plain = checkpoint(&s, "v1", &memory_image(64, 2));
    push(&store, &plain, 1, None);
    let m = read_manifest(&store, &web(), 1).unwrap();
    let victim = m.files.last().unwrap().chunks[0].id;
    let (pack, at) = registry
        .parts(&web(), 1)
        .iter()
        .flat_map(packs)
        .find_map(|p| Some((p.pack.digest.clone(), *registry.pack_index(&p).chunks.iter().find(|c| c.id == victim)?)))
        .unwrap();
    let path = registry.blob_file(&pack);
    let mut blob = std::fs::read(&path).unwrap();
    blob[at.offset as usize + 3] ^= 1;
    std::fs::write(&path, &blob).unwrap();
    let err = materialize(&store, &web(), 1, None, &s.out.join("a")).unwrap_err();
    assert!(matches!(&err, VersionError::ChunkDamaged { path, .. } if path == "manifest.json"), "{err}");
    assert!(!s.out.join("a").exists());
}

#[test]
fn a_wrong_address_fails_when_the_store_is_opened() {
    let port = free_port();
    let url = format!("oci://127.0.0.1:{port}/versions");
    let Err(err) = url.parse::<StoreLocation>().unwrap().open() else { panic!("{url} opened") };
    assert!(matches!(err, VersionError::RegistryUnreachable { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.starts_with(&format!("{url}: opening the store: cannot reach the registry (")), "{msg}");
    assert!(msg.ends_with(&format!("is the registry running at 127.0.0.1:{port}?")), "{msg}");

    // Something that speaks HTTP, but not the distribution API.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("oci://127.0.0.1:{}/versions", listener.local_addr().unwrap().port());
    let server = std::thread::spawn(move || {
        let (mut conn, _): (TcpStream, _) = listener.accept().unwrap();
        let mut request = [0; 1024];
        let _ = conn.read(&mut request).unwrap();
        conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot here\n").unwrap();
    });
    let Err(err) = url.parse::<StoreLocation>().unwrap().open() else { panic!("{url} opened") };
    server.join().unwrap();
    let msg = err.to_string();
    assert!(msg.contains("GET http://127.0.0.1:") && msg.contains("/v2/ answered HTTP 404 (not here)"), "{msg}");
    assert!(msg.contains("check the host and port"), "{msg}");
}

/// Commits checkpoint `id` whose memory images are `images`.
fn images_checkpoint(s: &Setup, id: &str, images: &[Vec<u8>]) -> Checkpoint {
    let mut staging = s.checkpoints.staging(id).unwrap();
    let criu = staging.criu_dir();
    std::fs::create_dir_all(&criu).unwrap();
    std::fs::write(criu.join("inventory.img"), b"inventory").unwrap();
    for (i, pages) in images.iter().enumerate() {
        std::fs::write(criu.join(format!("pagemap-{}.img", i + 1)), b"pagemap").unwrap();
        std::fs::write(criu.join(format!("pages-{}.img", i + 1)), pages).unwrap();
    }
    staging.add_file(migrate_oci::CONFIG_FILE, br#"{"ociVersion": "1.2.0"}"#).unwrap();
    staging.commit(commit_info(None)).unwrap()
}

/// A container of 1 GiB of memory (eight processes of 128 MiB of random
/// pages) stored into a registry on tmpfs: the first version, a second
/// with 5% of the pages changed, and rebuilding it.
#[test]
#[ignore = "a measurement: run with --release --ignored --nocapture"]
fn a_gibibyte_version() {
    const MIB: f64 = (1 << 20) as f64;
    let Some(registry) = TestRegistry::start("a_gibibyte_version") else { return };
    let s = setup();
    // Odd seeds: memory_image makes every seed odd.
    let mut images: Vec<Vec<u8>> = (0..8).map(|i| memory_image(32768, 2 * i + 1)).collect();
    let cp = images_checkpoint(&s, "v0", &images);
    let store = registry.store();
    let t = Instant::now();
    let first = push(&store, &cp, 0, None);
    let full = t.elapsed().as_secs_f64();
    let index = registry.index(&web(), 0);
    let largest = index.manifests().iter().map(|d| d.size()).max().unwrap();
    let distinct = distinct_chunks(&read_manifest(&store, &web(), 0).unwrap()).len();
    let pack_count = registry.parts(&web(), 0).iter().flat_map(packs).count();
    println!(
        "version 0: {:.0} MiB, {} chunks ({distinct} distinct) in {pack_count} packs, {} parts (largest {:.2} MiB), \
         stored in {full:.1} s ({:.0} MiB/s)",
        first.bytes_total as f64 / MIB,
        first.chunks_total,
        index.manifests().len(),
        largest as f64 / MIB,
        first.bytes_total as f64 / MIB / full,
    );

    for (seed, image) in images.iter_mut().enumerate() {
        dirty_pages(image, 0.05, 64, seed as u64 + 100);
    }
    let cp = images_checkpoint(&s, "v1", &images);
    drop(images);
    let t = Instant::now();
    let second = push(&store, &cp, 1, None);
    let incr = t.elapsed().as_secs_f64();
    let t = Instant::now();
    materialize(&registry.store(), &web(), 1, None, &s.out.join("v1")).unwrap();
    let rebuild = t.elapsed().as_secs_f64();
    println!(
        "version 1 (5% of pages changed): {:.1} MiB new in {} chunks, stored in {incr:.1} s; rebuilt and verified \
         by a fresh store in {rebuild:.1} s ({:.0} MiB/s)",
        second.bytes_new as f64 / MIB,
        second.chunks_new,
        second.bytes_total as f64 / MIB / rebuild,
    );
}
