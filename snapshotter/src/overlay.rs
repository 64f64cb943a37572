//! The snapshotter itself: containerd's overlayfs snapshotter's semantics
//! (`plugins/snapshots/overlay`) on a root directory of this layout:
//!
//! ```text
//! ROOT/metadata.json            the store (store.rs)
//! ROOT/snapshots/<id>/fs        a snapshot's files: a layer, or a container's upper dir
//! ROOT/snapshots/<id>/work      overlay's work dir (active snapshots only)
//! ```
//!
//! Mounts, as containerd makes them: an active snapshot with parents is an
//! overlay (`lowerdir` the parents' `fs`, nearest first; `upperdir` and
//! `workdir` its own), which is what the layer sync reads and writes; an
//! active snapshot without a parent is a read-write bind mount of its `fs`;
//! a view of one layer is a read-only bind mount of that layer, a view of
//! more an overlay of lower dirs only.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::store::{Info, Kind, Record, Store, Usage};

/// A mount as containerd's Mount message carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

pub struct Snapshotter {
    root: PathBuf,
    store: Mutex<Store>,
    /// Whether overlay takes `index=off`: containerd passes it so that a
    /// layer mounted by several containers is not tied to one upper dir.
    index_off: bool,
}

impl Snapshotter {
    /// Opens (or creates) the snapshotter at `root`.
    pub fn open(root: &Path) -> Result<Snapshotter> {
        let snapshots = root.join("snapshots");
        fs::create_dir_all(&snapshots).map_err(|e| Error::io(format!("cannot create {}", snapshots.display()), e))?;
        let store = Store::open(&root.join("metadata.json"))?;
        let index_off = Path::new("/sys/module/overlay/parameters/index").exists();
        Ok(Snapshotter { root: root.to_owned(), store: Mutex::new(store), index_off })
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock cannot leave the store half
        // changed: every change is saved whole before it is kept.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    /// The directory of snapshot `key`'s own files: for an active snapshot
    /// with a parent, overlay's upper dir.
    pub fn fs_dir(&self, key: &str) -> Result<PathBuf> {
        Ok(self.dir(self.store().get(key)?.id).join("fs"))
    }

    pub fn prepare(&self, key: &str, parent: Option<&str>, labels: BTreeMap<String, String>) -> Result<Vec<Mount>> {
        self.create(Kind::Active, key, parent, labels)
    }

    pub fn view(&self, key: &str, parent: Option<&str>, labels: BTreeMap<String, String>) -> Result<Vec<Mount>> {
        self.create(Kind::View, key, parent, labels)
    }

    fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>> {
        let mut store = self.store();
        // Checked before any directory is made; create() checks again.
        if store.get(key).is_ok() {
            return Err(Error::AlreadyExists(format!("snapshot {key:?} already exists")));
        }
        let parent_ids = store.parent_ids(parent)?;
        let dir = self.dir(store.next_id());
        self.make_dirs(&dir, kind, parent_ids.first().map(|&id| self.dir(id).join("fs"))).map_err(|e| {
            Error::io(format!("cannot create the directories of snapshot {key:?} in {}", dir.display()), e)
        })?;
        let record = match store.create(kind, key, parent, labels) {
            Ok(r) => r,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        Ok(self.mounts_of(&record, &parent_ids))
    }

    /// `dir/fs` (owned like the parent's, as containerd does, so a layer
    /// owned by a user keeps it) and, for an active snapshot, `dir/work`.
    fn make_dirs(&self, dir: &Path, kind: Kind, parent_fs: Option<PathBuf>) -> std::io::Result<()> {
        // A directory without a record: left by a crash between this and
        // saving the record. Nothing refers to it.
        if dir.exists() {
            fs::remove_dir_all(dir)?;
        }
        fs::create_dir(dir)?;
        let fs_dir = dir.join("fs");
        fs::create_dir(&fs_dir)?;
        fs::set_permissions(&fs_dir, fs::Permissions::from_mode(0o755))?;
        if let Some(p) = parent_fs {
            let m = fs::metadata(&p)?;
            std::os::unix::fs::lchown(&fs_dir, Some(m.uid()), Some(m.gid()))?;
        }
        if kind == Kind::Active {
            fs::create_dir(dir.join("work"))?;
            fs::set_permissions(dir.join("work"), fs::Permissions::from_mode(0o711))?;
        }
        Ok(())
    }

    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let store = self.store();
        let record = store.get(key)?;
        let parent_ids = store.parent_ids(record.info.parent.as_deref())?;
        Ok(self.mounts_of(record, &parent_ids))
    }

    fn mounts_of(&self, record: &Record, parent_ids: &[u64]) -> Vec<Mount> {
        let own = self.dir(record.id);
        let bind = |dir: PathBuf, rw: bool| Mount {
            kind: "bind".into(),
            source: dir.display().to_string(),
            options: vec![if rw { "rw" } else { "ro" }.into(), "rbind".into()],
        };
        match (record.info.kind, parent_ids) {
            (Kind::Active, []) => return vec![bind(own.join("fs"), true)],
            (_, []) => return vec![bind(own.join("fs"), false)],
            (Kind::View, [only]) => return vec![bind(self.dir(*only).join("fs"), false)],
            _ => {}
        }
        let mut options = Vec::new();
        if self.index_off {
            options.push("index=off".to_string());
        }
        if record.info.kind == Kind::Active {
            options.push(format!("workdir={}", own.join("work").display()));
            options.push(format!("upperdir={}", own.join("fs").display()));
        }
        let lower: Vec<String> = parent_ids.iter().map(|&id| self.dir(id).join("fs").display().to_string()).collect();
        options.push(format!("lowerdir={}", lower.join(":")));
        vec![Mount { kind: "overlay".into(), source: "overlay".into(), options }]
    }

    /// Commits active snapshot `key` as `name`, measuring its size once.
    pub fn commit(&self, name: &str, key: &str, labels: BTreeMap<String, String>) -> Result<()> {
        let mut store = self.store();
        let record = store.get(key)?;
        let dir = self.dir(record.id);
        let usage = if record.info.kind == Kind::Active { disk_usage(&dir.join("fs"))? } else { Usage::default() };
        store.commit(key, name, usage, labels)?;
        Ok(())
    }

    /// Removes snapshot `key` and its directory (refused while it has children).
    pub fn remove(&self, key: &str) -> Result<()> {
        let record = self.store().remove(key)?;
        let dir = self.dir(record.id);
        // The record is gone: a directory that cannot be removed now is
        // left to Cleanup, which removes every directory without a record.
        if let Err(e) = fs::remove_dir_all(&dir) {
            log::warn!("snapshot {key:?} removed, but not its directory {} ({e}); Cleanup will retry", dir.display());
        }
        Ok(())
    }

    pub fn stat(&self, key: &str) -> Result<Info> {
        Ok(self.store().get(key)?.info.clone())
    }

    pub fn update(&self, info: &Info, paths: &[String]) -> Result<Info> {
        self.store().update(info, paths)
    }

    /// A committed snapshot's size as measured at commit; an active one's now.
    pub fn usage(&self, key: &str) -> Result<Usage> {
        let (id, usage) = {
            let store = self.store();
            let r = store.get(key)?;
            (r.id, r.usage)
        };
        match usage {
            Some(u) => Ok(u),
            None => disk_usage(&self.dir(id).join("fs")),
        }
    }

    pub fn list(&self) -> Vec<Info> {
        self.store().list().map(|r| r.info.clone()).collect()
    }

    /// Removes directories under `snapshots/` that no record names.
    pub fn cleanup(&self) -> Result<()> {
        let store = self.store();
        let keep: HashSet<String> = store.ids().map(|id| id.to_string()).collect();
        let snapshots = self.root.join("snapshots");
        let entries =
            fs::read_dir(&snapshots).map_err(|e| Error::io(format!("cannot read {}", snapshots.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(format!("cannot read {}", snapshots.display()), e))?;
            if keep.contains(entry.file_name().to_string_lossy().as_ref()) {
                continue;
            }
            let path = entry.path();
            log::info!("cleanup: removing {}, which no snapshot uses", path.display());
            fs::remove_dir_all(&path).map_err(|e| Error::io(format!("cannot remove {}", path.display()), e))?;
        }
        Ok(())
    }
}

/// Bytes allocated (st_blocks) and inodes under `dir`, each inode once, as
/// containerd's `fs.DiskUsage` counts them.
fn disk_usage(dir: &Path) -> Result<Usage> {
    fn walk(dir: &Path, seen: &mut HashSet<u64>, usage: &mut Usage) -> std::io::Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let m = entry.path().symlink_metadata()?;
            if seen.insert(m.ino()) {
                usage.inodes += 1;
                usage.size += m.blocks() as i64 * 512;
            }
            if m.is_dir() {
                walk(&entry.path(), seen, usage)?;
            }
        }
        Ok(())
    }
    let mut usage = Usage::default();
    walk(dir, &mut HashSet::new(), &mut usage)
        .map_err(|e| Error::io(format!("cannot measure the disk usage of {}", dir.display()), e))?;
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt<'a>(m: &'a Mount, prefix: &str) -> Option<&'a str> {
        m.options.iter().find_map(|o| o.strip_prefix(prefix))
    }

    #[test]
    fn mounts_like_containerds_overlay() {
        let root = tempfile::tempdir().unwrap();
        let s = Snapshotter::open(root.path()).unwrap();
        let m = s.prepare("l1-key", None, BTreeMap::new()).unwrap();
        assert_eq!(m[0].kind, "bind");
        assert_eq!(m[0].options, ["rw", "rbind"]);
        let l1_fs = s.fs_dir("l1-key").unwrap();
        assert_eq!(Path::new(&m[0].source), l1_fs);
        fs::write(l1_fs.join("file"), b"layer one").unwrap();
        s.commit("l1", "l1-key", BTreeMap::new()).unwrap();
        assert!(s.usage("l1").unwrap().inodes >= 1);

        let v = s.view("v", Some("l1"), BTreeMap::new()).unwrap();
        assert_eq!((v[0].kind.as_str(), v[0].source.as_str()), ("bind", l1_fs.to_str().unwrap()));
        assert_eq!(v[0].options, ["ro", "rbind"]);

        s.prepare("l2-key", Some("l1"), BTreeMap::new()).unwrap();
        s.commit("l2", "l2-key", BTreeMap::new()).unwrap();
        let c = s.prepare("c", Some("l2"), BTreeMap::new()).unwrap();
        assert_eq!(c[0].kind, "overlay");
        let upper = s.fs_dir("c").unwrap();
        assert_eq!(opt(&c[0], "upperdir="), upper.to_str());
        assert!(Path::new(opt(&c[0], "workdir=").unwrap()).is_dir());
        let lower: Vec<&str> = opt(&c[0], "lowerdir=").unwrap().split(':').collect();
        assert_eq!(lower, [s.fs_dir("l2").unwrap().to_str().unwrap(), l1_fs.to_str().unwrap()]);
        assert_eq!(s.mounts("c").unwrap(), c);

        let v2 = s.view("v2", Some("l2"), BTreeMap::new()).unwrap();
        assert_eq!(v2[0].kind, "overlay");
        assert!(opt(&v2[0], "upperdir=").is_none());
    }

    #[test]
    fn remove_and_cleanup() {
        let root = tempfile::tempdir().unwrap();
        let s = Snapshotter::open(root.path()).unwrap();
        s.prepare("a", None, BTreeMap::new()).unwrap();
        s.commit("base", "a", BTreeMap::new()).unwrap();
        s.prepare("c", Some("base"), BTreeMap::new()).unwrap();
        assert!(matches!(s.remove("base"), Err(Error::FailedPrecondition(_))));
        let upper = s.fs_dir("c").unwrap();
        s.remove("c").unwrap();
        assert!(!upper.exists());
        fs::create_dir(root.path().join("snapshots/999")).unwrap();
        s.cleanup().unwrap();
        assert!(!root.path().join("snapshots/999").exists());
        assert!(s.fs_dir("base").unwrap().exists());
        drop(s);
        let s = Snapshotter::open(root.path()).unwrap();
        assert_eq!(s.list().iter().map(|i| i.name.as_str()).collect::<Vec<_>>(), ["base"]);
    }
}
