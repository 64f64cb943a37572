//! The registry store against a real registry: Debian's `docker-registry`
//! (the CNCF distribution registry), one per test, on a free loopback port
//! with a temporary storage directory.

use std::{
    fs::File,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{
    chunking::tests::{dirty_pages, memory_image},
    registry_api::{Digest, Registry},
    registry_artifact::{
        CHUNK_ANNOTATION, CONTAINER_ANNOTATION, NAMESPACE_ANNOTATION, OciManifest, VERSION_ANNOTATION, version_tag,
    },
    tests::{NoManifests, PAGES, checkpoint, same_files, setup, web},
    *,
};
use crate::Checkpoint;

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

    fn api(&self) -> Registry {
        Registry::new(&self.location)
    }

    /// The registry's blobs on disk (chunks, configs and manifests).
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

    /// The OCI manifest of a version, as the registry holds it.
    fn artifact(&self, container: &ContainerRef, version: u64) -> OciManifest {
        let tag = version_tag(container, version);
        let bytes = self.api().get_manifest(&tag, format_args!("test")).unwrap().unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    /// Stops the registry, runs its offline garbage collector, and starts
    /// it again on the same port and storage.
    fn garbage_collect(&mut self) {
        self.kill();
        let out =
            Command::new(&self.binary).arg("garbage-collect").arg(self.dir.path().join("config.yml")).output().unwrap();
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

    // The artifact: the version manifest as config, each distinct chunk
    // once as a layer named by its id, whose digest it is without a key.
    let artifact = registry.artifact(&web(), 0);
    assert_eq!(artifact.media_type, "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(artifact.artifact_type.as_deref(), Some(VERSION_MEDIA_TYPE));
    let config = store.get_manifest(&web(), 0).unwrap().unwrap();
    assert_eq!(artifact.config.digest, Digest::of(&config));
    let m = read_manifest(&store, &web(), 0).unwrap();
    let distinct: std::collections::HashSet<ChunkId> = m.chunk_ids().collect();
    assert_eq!(artifact.layers.len(), distinct.len());
    for layer in &artifact.layers {
        assert_eq!(layer.digest.to_string(), format!("sha256:{}", layer.annotations[CHUNK_ANNOTATION]));
    }
    assert_eq!(artifact.annotations[NAMESPACE_ANNOTATION], "default");
    assert_eq!(artifact.annotations[CONTAINER_ANNOTATION], "web");
    assert_eq!(artifact.annotations[VERSION_ANNOTATION], "0");

    // Encrypted, and read back by a store that has seen nothing of it.
    let cipher = ChunkCipher::from_key(&[0x5a; KEY_LEN]);
    let cp = checkpoint(&s, "v1", &pages);
    let report = push(&store, &cp, 1, Some(&cipher));
    assert_eq!(report.bytes_new, report.bytes_total);
    let dest = s.out.join("v1");
    materialize(&registry.store(), &web(), 1, Some(&cipher), &dest).unwrap().verify().unwrap();
    same_files(cp.dir(), &dest);
    for layer in &registry.artifact(&web(), 1).layers {
        assert_ne!(layer.digest.to_string(), format!("sha256:{}", layer.annotations[CHUNK_ANNOTATION]));
        let blob = std::fs::read(registry.blob_file(&layer.digest)).unwrap();
        assert!(!blob.windows(64).any(|w| w == &pages[4096..4160]), "{} holds plaintext", layer.digest);
        assert!(!blob.windows(9).any(|w| w == b"inventory"), "{} holds plaintext", layer.digest);
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
    // The new chunks, the version manifest and the OCI manifest.
    assert_eq!(registry.blob_files().len(), blobs + report.chunks_new as usize + 2);
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
    assert_eq!(registry.blob_files().len(), blobs + 3);
    materialize(&registry.store(), &web(), 3, Some(&cipher), &s.out.join("v3")).unwrap();
}

#[test]
fn an_interrupted_upload_is_never_listed() {
    let Some(registry) = TestRegistry::start("an_interrupted_upload_is_never_listed") else { return };
    let s = setup();
    let store = registry.store();
    push(&store, &checkpoint(&s, "v0", &memory_image(256, 1)), 0, None);
    let blobs = registry.blob_files().len();
    let cp = checkpoint(&s, "v1", &memory_image(256, 2));
    // An uploader that dies between its chunks and its manifest.
    let dying = registry.store();
    let err = store_version(&NoManifests(&dying), cp.dir(), &web(), 1, 5, None).unwrap_err();
    assert!(matches!(err, VersionError::Io { .. }), "{err}");
    assert!(registry.blob_files().len() > blobs, "the chunks were not uploaded");
    assert_eq!(store.list_versions(&web()).unwrap(), [0]);
    assert_eq!(registry.api().tags(format_args!("test")).unwrap(), [version_tag(&web(), 0)]);
    let err = materialize(&store, &web(), 1, None, &s.out.join("v1")).unwrap_err();
    assert!(matches!(err, VersionError::VersionNotFound { version: 1, .. }), "{err}");
    // Storing it again reuses what was uploaded.
    let report = push(&store, &cp, 1, None);
    assert_eq!(report.chunks_new, 0, "{report:?}");
    materialize(&store, &web(), 1, None, &s.out.join("v1")).unwrap();
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
    let store = registry.store();
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

    let retention = Retention { keep_groups: 2, group_size: 2, chunk_grace: Duration::ZERO };
    let report = apply_retention(&store, &web(), &retention).unwrap();
    assert_eq!(report.kept_groups, [2, 3]);
    assert_eq!(report.deleted_versions, [0, 1, 2, 3]);
    assert_eq!(report.gc, GcReport::default(), "the registry collects blobs itself");
    assert_eq!(store.list_versions(&web()).unwrap(), [4, 5, 6]);
    assert_eq!(store.list_containers().unwrap(), [db.clone(), web()]);
    assert!(!store.delete_version(&web(), 0).unwrap());

    // The registry's garbage collector keeps exactly what versions left
    // reference.
    let before = registry.blob_files().len();
    registry.garbage_collect();
    assert!(registry.blob_files().len() < before, "nothing was collected");
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
    let config = api.push_blob(Digest::of(b"{}"), b"{}", format_args!("test")).unwrap();
    let image = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.digest, "size": 2},
        "layers": [],
    });
    let image = serde_json::to_vec(&image).unwrap();
    let impostor = ContainerRef::new("default", "impostor").unwrap();
    for tag in ["latest".to_owned(), version_tag(&impostor, 0)] {
        api.put_manifest(&tag, &image, format_args!("test")).unwrap();
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
    assert!(err.to_string().contains("application/vnd.oci.image.config.v1+json, not a version"), "{err}");
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

    // A manifest pushed over the version that swaps two chunks' blobs: each
    // id now names a blob sealed for another.
    let m = read_manifest(&store, &web(), 0).unwrap();
    let pages = &m.files.iter().find(|f| f.path == "criu/pages-1.img").unwrap().chunks;
    let (victim, donor) = (pages[1].id, pages[2].id);
    let mut artifact = registry.artifact(&web(), 0);
    let blob_of = |a: &OciManifest, id: ChunkId| {
        a.layers.iter().position(|l| l.annotations[CHUNK_ANNOTATION] == id.to_string()).unwrap()
    };
    let (v, d) = (blob_of(&artifact, victim), blob_of(&artifact, donor));
    artifact.layers[v].digest = artifact.layers[d].digest.clone();
    artifact.layers[v].size = artifact.layers[d].size;
    let swapped = serde_json::to_vec(&artifact).unwrap();
    registry.api().put_manifest(&version_tag(&web(), 0), &swapped, format_args!("test")).unwrap();
    let err = materialize(&registry.store(), &web(), 0, Some(&cipher), &s.out.join("a")).unwrap_err();
    assert!(matches!(&err, VersionError::ChunkDamaged { id, .. } if *id == victim), "{err}");

    // A bit flipped in a blob on the registry's disk.
    let plain = checkpoint(&s, "v1", &memory_image(64, 2));
    push(&store, &plain, 1, None);
    let m = read_manifest(&store, &web(), 1).unwrap();
    let victim = m.files.last().unwrap().chunks[0].id;
    let path = registry.blob_file(&Digest::parse(&format!("sha256:{victim}")).unwrap());
    let mut blob = std::fs::read(&path).unwrap();
    blob[3] ^= 1;
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
