//! A directory of checkpoints, one subdirectory per id. Entries starting
//! with `.` are work in progress (staging, removal) and never checkpoints.

use std::{
    fs::DirBuilder,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use crate::{
    checkpoint::Checkpoint,
    durable,
    error::{Error, Result},
    layout::validate_id,
    staging::{STAGING_PREFIX, Staging},
};

pub const DEFAULT_STORE_ROOT: &str = "/var/lib/containerd-migrate/checkpoints";

const REMOVING_PREFIX: &str = ".removing-";

/// How old an orphaned staging or removal directory must be before
/// [`CheckpointStore::open`] deletes it. Its owner is gone by then; the age
/// guards against a pid reused by an unrelated process and clocks that jump.
const ORPHAN_AGE: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct CheckpointStore {
    root: PathBuf,
}

impl CheckpointStore {
    /// Opens the store at `root`, creating it (mode 0700: checkpoints hold
    /// process memory) if it is missing, and deleting what crashed takers
    /// and removers left behind.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        DirBuilder::new().recursive(true).mode(0o700).create(&root).map_err(Error::io("create directory", &root))?;
        let store = CheckpointStore { root };
        store.remove_orphans();
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Starts a checkpoint `id`; fails if the id is not valid or taken.
    pub fn staging(&self, id: &str) -> Result<Staging> {
        Staging::create(&self.root, id)
    }

    /// The committed checkpoints, newest first. A directory whose manifest
    /// cannot be read is skipped with a warning, so that one damaged
    /// checkpoint does not hide the others.
    pub fn list(&self) -> Result<Vec<Checkpoint>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.root).map_err(Error::io("read directory", &self.root))? {
            let entry = entry.map_err(Error::io("read directory", &self.root))?;
            let name = entry.file_name();
            let Some(name) = name.to_str().filter(|n| !n.starts_with('.')) else { continue };
            if !entry.file_type().is_ok_and(|t| t.is_dir()) || validate_id(name).is_err() {
                continue; // e.g. lost+found, when the store is a file system of its own
            }
            match self.open_checkpoint(name) {
                Ok(c) => out.push(c),
                Err(e) => log::warn!("skipping {}: {e}", entry.path().display()),
            }
        }
        out.sort_by(|a, b| {
            let (a, b) = (a.manifest(), b.manifest());
            b.created.cmp(&a.created).then_with(|| a.id.cmp(&b.id))
        });
        Ok(out)
    }

    pub fn get(&self, id: &str) -> Result<Checkpoint> {
        validate_id(id)?;
        if self.root.join(id).symlink_metadata().is_err() {
            return Err(self.not_found(id));
        }
        self.open_checkpoint(id)
    }

    /// Removes checkpoint `id` (committed or not): renamed away first, so it
    /// vanishes at once, then deleted. Refused while another checkpoint
    /// builds on it.
    pub fn remove(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        let dir = self.root.join(id);
        if dir.symlink_metadata().is_err() {
            return Err(self.not_found(id));
        }
        let children: Vec<String> = self
            .list()?
            .into_iter()
            .filter(|c| c.manifest().parent.as_deref() == Some(id))
            .map(|c| c.manifest().id.clone())
            .collect();
        if !children.is_empty() {
            return Err(Error::HasChildren { id: id.to_owned(), store: self.root.clone(), children });
        }
        let doomed = self.root.join(format!("{REMOVING_PREFIX}{id}-{}", durable::unique_suffix()));
        std::fs::rename(&dir, &doomed).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                self.not_found(id)
            } else {
                Error::Rename { from: dir.clone(), to: doomed.clone(), source }
            }
        })?;
        durable::sync_dir(&self.root)?;
        std::fs::remove_dir_all(&doomed).map_err(Error::io("remove", &doomed))
    }

    fn open_checkpoint(&self, id: &str) -> Result<Checkpoint> {
        validate_id(id)?;
        let dir = self.root.join(id);
        let checkpoint = Checkpoint::open(&dir)?;
        if checkpoint.manifest().id != id {
            return Err(Error::IdMismatch { dir, manifest_id: checkpoint.manifest().id.clone() });
        }
        Ok(checkpoint)
    }

    fn not_found(&self, id: &str) -> Error {
        Error::NotFound { id: id.to_owned(), store: self.root.clone() }
    }

    /// Deletes staging and removal directories whose process is gone and
    /// that are old. Best effort: a store that cannot be tidied still works.
    fn remove_orphans(&self) {
        let Ok(entries) = std::fs::read_dir(&self.root) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !(name.starts_with(STAGING_PREFIX) || name.starts_with(REMOVING_PREFIX)) {
                continue;
            }
            let owner_alive = durable::owner_pid(name).is_none_or(|pid| Path::new(&format!("/proc/{pid}")).exists());
            let age = entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| SystemTime::now().duration_since(t).ok());
            if owner_alive || age.is_none_or(|a| a < ORPHAN_AGE) {
                continue;
            }
            log::info!("removing {}, left behind by a checkpoint that did not finish", entry.path().display());
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                log::warn!("could not remove {}: {e}", entry.path().display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;
    use crate::{
        layout::CONFIG_FILE,
        testing::{IMAGES, commit_info, committed, write_images},
    };

    fn store() -> (tempfile::TempDir, CheckpointStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().join("checkpoints")).unwrap();
        (dir, store)
    }

    /// Names in the store root, hidden ones included.
    fn entries(store: &CheckpointStore) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(store.root()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    }

    #[test]
    fn commit_round_trip() {
        let (_dir, store) = store();
        assert_eq!(std::fs::metadata(store.root()).unwrap().permissions().mode() & 0o777, 0o700);
        let src = tempfile::tempdir_in(store.root()).unwrap();
        write_images(src.path());
        std::os::unix::fs::symlink("/somewhere/parent", src.path().join("parent")).unwrap();
        let mut staging = store.staging("web-1").unwrap();
        assert!(staging.path().file_name().unwrap().to_str().unwrap().starts_with(".staging-web-1-"));
        staging.import_criu_dir(src.path()).unwrap();
        staging.add_file(CONFIG_FILE, br#"{"ociVersion": "1.2.0"}"#).unwrap();
        let made = staging.commit(commit_info(None)).unwrap();

        let m = made.manifest();
        assert_eq!(m.id, "web-1");
        assert_eq!(made.dir(), store.root().join("web-1"));
        let paths: Vec<_> = m.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "config.json",
                "criu/descriptors.json",
                "criu/inventory.img",
                "criu/pagemap-1.img",
                "criu/pages-1.img",
                "criu/pages-2.img"
            ]
        );
        assert_eq!(m.memory_bytes, 8192 + 4096);
        assert_eq!(made.size_bytes(), IMAGES.iter().map(|(_, b)| b.len() as u64).sum::<u64>() + 23);
        assert_eq!(m.created.offset(), time::UtcOffset::UTC);
        assert_eq!(m.created.nanosecond() % 1_000_000, 0);
        assert!(!m.host.kernel.is_empty());
        assert_eq!(m.timings.frozen_ms, Some(12.5));
        // Same file system: the images were moved, and the symlink left.
        assert_eq!(std::fs::read_dir(src.path()).unwrap().count(), 1);
        assert!(!made.criu_dir().join("parent").exists());

        let listed = store.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].manifest(), m);
        let got = store.get("web-1").unwrap();
        assert_eq!(got.manifest(), m);
        got.verify().unwrap();
        assert_eq!(got.spec().unwrap().unwrap().version(), "1.2.0");
        assert_eq!(got.rootfs_diff(), None);
        assert_eq!(std::fs::read(got.criu_dir().join("pages-2.img")).unwrap(), [9; 4096]);
        // Only the checkpoint and the source dir remain: no staging.
        assert_eq!(entries(&store).len(), 2);
    }

    #[test]
    fn imports_from_another_file_system_by_copying() {
        let Ok(src) = tempfile::tempdir_in("/dev/shm") else {
            eprintln!("skipping: no /dev/shm to import from");
            return;
        };
        let (_dir, store) = store();
        if std::fs::metadata(src.path()).unwrap().dev() == std::fs::metadata(store.root()).unwrap().dev() {
            eprintln!("skipping: /dev/shm is on the same file system as the temp dir");
            return;
        }
        write_images(src.path());
        let mut staging = store.staging("copied").unwrap();
        staging.import_criu_dir(src.path()).unwrap();
        staging.commit(commit_info(None)).unwrap().verify().unwrap();
        // Copied, not moved.
        assert_eq!(std::fs::read_dir(src.path()).unwrap().count(), IMAGES.len());
    }

    #[test]
    fn unfinished_checkpoints_are_never_listed() {
        let (_dir, store) = store();
        // Dropped before its commit: its directory goes with it.
        let mut staging = store.staging("dropped").unwrap();
        write_images(&staging.criu_dir());
        staging.add_file(CONFIG_FILE, b"{}").unwrap();
        drop(staging);
        // A commit that fails leaves nothing either.
        let staging = store.staging("empty").unwrap();
        let err = staging.commit(commit_info(None)).unwrap_err();
        assert!(matches!(err, Error::NoImages { .. }), "{err}");
        assert_eq!(entries(&store), Vec::<String>::new());

        // What a crash leaves: a staging dir, even one with a manifest, and a
        // directory that never got its manifest.
        let crashed = store.staging("crashed").unwrap();
        write_images(&crashed.criu_dir());
        std::fs::write(crashed.path().join("manifest.json"), b"{}").unwrap();
        std::mem::forget(crashed);
        std::fs::create_dir(store.root().join("web-2")).unwrap();
        assert!(store.list().unwrap().is_empty());
        assert!(matches!(store.get("web-2"), Err(Error::Incomplete { .. })));
        assert!(matches!(store.get("crashed"), Err(Error::NotFound { .. })));
    }

    #[test]
    fn runc_may_dump_straight_into_the_staging_dir() {
        let (_dir, store) = store();
        let staging = store.staging("direct").unwrap();
        write_images(&staging.criu_dir());
        let made = staging.commit(commit_info(None)).unwrap();
        assert_eq!(made.manifest().files.len(), IMAGES.len());
        made.verify().unwrap();
    }

    #[test]
    fn ids_are_checked_and_never_reused() {
        let (_dir, store) = store();
        for bad in ["", "../x", ".staging-x", "a/b"] {
            assert!(matches!(store.staging(bad), Err(Error::InvalidId { .. })), "{bad}");
            assert!(matches!(store.get(bad), Err(Error::InvalidId { .. })), "{bad}");
        }
        // Two takers race for one id: the second commit loses, cleanly.
        let mut second = store.staging("web-1").unwrap();
        write_images(&second.criu_dir());
        second.add_file("note", b"second").unwrap();
        committed(&store, "web-1");
        let err = second.commit(commit_info(None)).unwrap_err();
        assert!(matches!(&err, Error::AlreadyExists { id, .. } if id == "web-1"), "{err}");
        assert!(store.get("web-1").unwrap().manifest().files.iter().all(|f| f.path != "note"));
        assert!(matches!(store.staging("web-1"), Err(Error::AlreadyExists { .. })));
        assert_eq!(entries(&store), ["web-1"]);
    }

    #[test]
    fn list_is_newest_first_and_skips_damaged_manifests() {
        let (_dir, store) = store();
        committed(&store, "a");
        std::thread::sleep(Duration::from_millis(2));
        committed(&store, "b");
        committed(&store, "broken");
        std::fs::write(store.root().join("broken/manifest.json"), b"{not json").unwrap();
        let ids: Vec<_> = store.list().unwrap().iter().map(|c| c.manifest().id.clone()).collect();
        assert_eq!(ids, ["b", "a"]);
        assert!(matches!(store.get("broken"), Err(Error::BadManifest { .. })));
        std::fs::rename(store.root().join("a"), store.root().join("renamed")).unwrap();
        assert!(matches!(store.get("renamed"), Err(Error::IdMismatch { .. })));
    }

    #[test]
    fn remove_is_atomic_and_spares_parents() {
        let (_dir, store) = store();
        committed(&store, "base");
        let mut child = store.staging("incr").unwrap();
        write_images(&child.criu_dir());
        // What runc leaves for --parent-path: CRIU's link, by absolute path.
        std::os::unix::fs::symlink("/tmp/old-dump", child.criu_dir().join("parent")).unwrap();
        child.add_file(CONFIG_FILE, b"{}").unwrap();
        let child = child.commit(commit_info(Some("base"))).unwrap();
        assert_eq!(std::fs::read_link(child.criu_dir().join("parent")).unwrap(), Path::new("../../base/criu"));
        assert!(child.criu_dir().join("parent/pages-1.img").is_file());
        child.verify().unwrap();

        let err = store.remove("base").unwrap_err();
        assert!(matches!(&err, Error::HasChildren { children, .. } if children == &["incr"]), "{err}");
        store.remove("incr").unwrap();
        store.remove("base").unwrap();
        assert!(matches!(store.remove("base"), Err(Error::NotFound { .. })));
        assert_eq!(entries(&store), Vec::<String>::new());
    }

    #[test]
    fn a_parent_must_exist_and_a_parent_link_needs_a_parent() {
        let (_dir, store) = store();
        let staging = store.staging("orphan").unwrap();
        write_images(&staging.criu_dir());
        let err = staging.commit(commit_info(Some("nope"))).unwrap_err();
        assert!(matches!(&err, Error::NotFound { id, .. } if id == "nope"), "{err}");

        let staging = store.staging("linked").unwrap();
        write_images(&staging.criu_dir());
        std::os::unix::fs::symlink("/tmp/old-dump", staging.criu_dir().join("parent")).unwrap();
        let err = staging.commit(commit_info(None)).unwrap_err();
        assert!(matches!(err, Error::UnexpectedParentLink { .. }), "{err}");
        assert!(err.to_string().contains("CommitInfo::parent"));
    }

    #[test]
    fn refuses_what_a_checkpoint_cannot_hold() {
        let (_dir, store) = store();
        let mut staging = store.staging("odd").unwrap();
        write_images(&staging.criu_dir());
        std::os::unix::fs::symlink("/etc/passwd", staging.criu_dir().join("link")).unwrap();
        assert!(matches!(staging.add_file("../escape", b""), Err(Error::InvalidPath { .. })));
        assert!(matches!(staging.add_file("manifest.json", b""), Err(Error::InvalidPath { .. })));
        let err = staging.commit(commit_info(None)).unwrap_err();
        assert!(matches!(&err, Error::UnsupportedFile { kind: "symlink", .. }), "{err}");
    }

    #[test]
    fn open_removes_orphans_of_dead_processes_only() {
        let (_dir, store) = store();
        let old = SystemTime::now() - 2 * ORPHAN_AGE;
        let mk = |name: &str| {
            let dir = store.root().join(name);
            std::fs::create_dir(&dir).unwrap();
            std::fs::File::open(&dir).unwrap().set_modified(old).unwrap();
        };
        // pid 0 is never a process; this one is alive.
        mk(".staging-web-1-0-abc");
        mk(".removing-web-2-0-abc");
        mk(&format!(".staging-web-3-{}-abc", std::process::id()));
        let store = CheckpointStore::open(store.root()).unwrap();
        assert_eq!(entries(&store), [format!(".staging-web-3-{}-abc", std::process::id())]);
    }
}
