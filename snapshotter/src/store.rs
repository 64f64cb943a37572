//! The snapshotter's metadata: which snapshots exist, their kind, parent,
//! labels and times, and the number of the directory that holds each.
//!
//! It is one JSON file, rewritten whole on every change (a temporary file,
//! fsync, rename, fsync of the directory), so a crash leaves either the old
//! or the new state and never half of one. Snapshots number in the hundreds
//! on a host, so rewriting the file is cheap next to the mounts they serve.
//! The rules are containerd's (`core/snapshots/storage`): keys are unique
//! across kinds, a parent must be committed, only an active snapshot can be
//! committed, and a snapshot with children cannot be removed.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// containerd's limit on one label (key and value together), in bytes.
const MAX_LABEL_BYTES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Read-only, from Prepare's sibling View; never committed.
    View,
    /// Writable; becomes a committed snapshot by Commit.
    Active,
    /// Immutable; the only kind that can be a parent.
    Committed,
}

/// A snapshot as containerd sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    pub name: String,
    /// The committed snapshot this one is based on, by name.
    pub parent: Option<String>,
    pub kind: Kind,
    pub created: SystemTime,
    pub updated: SystemTime,
    pub labels: BTreeMap<String, String>,
}

/// Space used by a snapshot's own directory (not its parents').
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub size: i64,
    pub inodes: i64,
}

/// A snapshot and where it is on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Names its directory, `snapshots/<id>`; never reused while the record lives.
    pub id: u64,
    pub info: Info,
    /// Measured at commit: a committed snapshot no longer changes.
    pub usage: Option<Usage>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Data {
    next_id: u64,
    snapshots: BTreeMap<String, Record>,
}

/// How [`Store::update`] changes a snapshot's labels: containerd's field
/// paths `labels` and `labels.KEY`; none means all mutable fields.
pub type FieldPaths<'a> = &'a [String];

pub struct Store {
    path: PathBuf,
    data: Data,
}

impl Store {
    /// Opens the metadata file at `path`, or starts empty if there is none.
    pub fn open(path: &Path) -> Result<Store> {
        let data = match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::Corrupt(format!(
                    "{}: {e}; restore it from a backup or remove the snapshotter's root to start over",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Data::default(),
            Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
        };
        Ok(Store { path: path.to_owned(), data })
    }

    pub fn get(&self, key: &str) -> Result<&Record> {
        self.data.snapshots.get(key).ok_or_else(|| Error::NotFound(format!("snapshot {key:?} does not exist")))
    }

    /// The ids of `parent` and its ancestors, nearest first: the lower
    /// directories of an overlay mount, in overlay's order.
    pub fn parent_ids(&self, parent: Option<&str>) -> Result<Vec<u64>> {
        let mut ids = Vec::new();
        let mut next = parent;
        while let Some(name) = next {
            let r = self.get(name)?;
            ids.push(r.id);
            next = r.info.parent.as_deref();
        }
        Ok(ids)
    }

    pub fn list(&self) -> impl Iterator<Item = &Record> {
        self.data.snapshots.values()
    }

    /// Every id a record holds: what Cleanup must keep.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.data.snapshots.values().map(|r| r.id)
    }

    /// The id the next created snapshot will get, so the caller can make its
    /// directory before the record is saved (a crash in between leaves a
    /// directory without a record, which Cleanup removes).
    pub fn next_id(&self) -> u64 {
        self.data.next_id + 1
    }

    /// Records a new active or view snapshot `key` on `parent` (which must
    /// be committed) with the id [`Store::next_id`] gave.
    pub fn create(
        &mut self,
        kind: Kind,
        key: &str,
        parent: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<Record> {
        if kind == Kind::Committed {
            return Err(Error::InvalidArgument("a committed snapshot is made by Commit, not created".into()));
        }
        check_key(key)?;
        check_labels(&labels)?;
        if self.data.snapshots.contains_key(key) {
            return Err(Error::AlreadyExists(format!("snapshot {key:?} already exists")));
        }
        if let Some(p) = parent {
            let pr = self
                .data
                .snapshots
                .get(p)
                .ok_or_else(|| Error::NotFound(format!("parent snapshot {p:?} of {key:?} does not exist")))?;
            if pr.info.kind != Kind::Committed {
                return Err(Error::FailedPrecondition(format!(
                    "parent {p:?} of {key:?} is not committed (commit it first)"
                )));
            }
        }
        let now = SystemTime::now();
        let record = Record {
            id: self.next_id(),
            info: Info { name: key.into(), parent: parent.map(Into::into), kind, created: now, updated: now, labels },
            usage: None,
        };
        self.data.next_id = record.id;
        self.data.snapshots.insert(key.into(), record.clone());
        self.save()?;
        Ok(record)
    }

    /// Turns active snapshot `key` into committed snapshot `name`, keeping
    /// its id (and so its directory); `labels` become its labels.
    pub fn commit(&mut self, key: &str, name: &str, usage: Usage, labels: BTreeMap<String, String>) -> Result<Record> {
        check_key(name)?;
        check_labels(&labels)?;
        let active = self.get(key)?;
        if active.info.kind != Kind::Active {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key:?} is {:?}, only an active snapshot can be committed",
                active.info.kind
            )));
        }
        if self.data.snapshots.contains_key(name) {
            return Err(Error::AlreadyExists(format!("snapshot {name:?} already exists")));
        }
        let mut record = self.data.snapshots.remove(key).expect("checked above");
        let now = SystemTime::now();
        record.info.name = name.into();
        record.info.kind = Kind::Committed;
        record.info.created = now;
        record.info.updated = now;
        record.info.labels = labels;
        record.usage = Some(usage);
        self.data.snapshots.insert(name.into(), record.clone());
        self.save()?;
        Ok(record)
    }

    /// Forgets snapshot `key`; refused while another snapshot has it as parent.
    pub fn remove(&mut self, key: &str) -> Result<Record> {
        self.get(key)?;
        if let Some(child) = self.data.snapshots.values().find(|r| r.info.parent.as_deref() == Some(key)) {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key:?} has a child, {:?}: remove the children first",
                child.info.name
            )));
        }
        let record = self.data.snapshots.remove(key).expect("checked above");
        self.save()?;
        Ok(record)
    }

    /// Changes the labels of `info.name` as `paths` say (containerd's
    /// Update: the name, parent, kind and creation time are immutable).
    pub fn update(&mut self, info: &Info, paths: FieldPaths) -> Result<Info> {
        let record = self
            .data
            .snapshots
            .get_mut(&info.name)
            .ok_or_else(|| Error::NotFound(format!("snapshot {:?} does not exist", info.name)))?;
        let mut labels = record.info.labels.clone();
        if paths.is_empty() {
            labels = info.labels.clone();
        }
        for path in paths {
            if path == "labels" {
                labels = info.labels.clone();
            } else if let Some(key) = path.strip_prefix("labels.") {
                match info.labels.get(key) {
                    Some(v) => labels.insert(key.into(), v.clone()),
                    None => labels.remove(key),
                };
            } else {
                return Err(Error::InvalidArgument(format!(
                    "cannot update field {path:?} of snapshot {:?}: only labels are mutable",
                    info.name
                )));
            }
        }
        check_labels(&labels)?;
        record.info.labels = labels;
        record.info.updated = SystemTime::now();
        let updated = record.info.clone();
        self.save()?;
        Ok(updated)
    }

    fn save(&self) -> Result<()> {
        let bytes = serde_json::to_vec(&self.data).expect("metadata serializes");
        write_atomically(&self.path, &bytes)
            .map_err(|e| Error::io(format!("cannot save the snapshot metadata {}", self.path.display()), e))
    }
}

fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidArgument("a snapshot key must not be empty".into()));
    }
    Ok(())
}

fn check_labels(labels: &BTreeMap<String, String>) -> Result<()> {
    for (k, v) in labels {
        if k.len() + v.len() > MAX_LABEL_BYTES {
            return Err(Error::InvalidArgument(format!(
                "label {k:?} has {} bytes with its value, more than containerd's limit of {MAX_LABEL_BYTES}",
                k.len() + v.len()
            )));
        }
    }
    Ok(())
}

/// Replaces `path` with `bytes` so that a crash leaves the old or the new content.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("metadata.json")).unwrap();
        (dir, s)
    }

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn prepare_commit_and_parents() {
        let (_d, mut s) = store();
        let a = s.create(Kind::Active, "a-key", None, BTreeMap::new()).unwrap();
        let l1 = s.commit("a-key", "layer1", Usage { size: 10, inodes: 2 }, labels(&[("x", "1")])).unwrap();
        assert_eq!(l1.id, a.id, "commit keeps the directory");
        assert_eq!(l1.info.kind, Kind::Committed);
        assert!(s.get("a-key").is_err());
        s.create(Kind::Active, "b-key", Some("layer1"), BTreeMap::new()).unwrap();
        let l2 = s.commit("b-key", "layer2", Usage::default(), BTreeMap::new()).unwrap();
        let c = s.create(Kind::Active, "container", Some("layer2"), BTreeMap::new()).unwrap();
        assert_eq!(c.info.parent.as_deref(), Some("layer2"));
        assert_eq!(s.parent_ids(Some("layer2")).unwrap(), vec![l2.id, l1.id], "nearest first");
        assert!(s.ids().all(|id| id != 0));
    }

    #[test]
    fn rules_of_containerd() {
        let (_d, mut s) = store();
        s.create(Kind::Active, "a", None, BTreeMap::new()).unwrap();
        assert!(matches!(s.create(Kind::View, "a", None, BTreeMap::new()), Err(Error::AlreadyExists(_))));
        assert!(matches!(s.create(Kind::Active, "b", Some("a"), BTreeMap::new()), Err(Error::FailedPrecondition(_))));
        assert!(matches!(s.create(Kind::Active, "b", Some("nope"), BTreeMap::new()), Err(Error::NotFound(_))));
        s.create(Kind::View, "v", None, BTreeMap::new()).unwrap();
        assert!(matches!(s.commit("v", "c", Usage::default(), BTreeMap::new()), Err(Error::FailedPrecondition(_))));
        s.commit("a", "base", Usage::default(), BTreeMap::new()).unwrap();
        assert!(matches!(s.commit("v", "base", Usage::default(), BTreeMap::new()), Err(Error::FailedPrecondition(_))));
        s.create(Kind::Active, "child", Some("base"), BTreeMap::new()).unwrap();
        let err = s.remove("base").unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(ref m) if m.contains("child")), "{err}");
        s.remove("child").unwrap();
        s.remove("base").unwrap();
        assert!(matches!(s.remove("base"), Err(Error::NotFound(_))));
        let big = "x".repeat(MAX_LABEL_BYTES);
        assert!(matches!(s.create(Kind::Active, "l", None, labels(&[("k", &big)])), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn survives_reopening_and_ids_are_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.json");
        let mut s = Store::open(&path).unwrap();
        let a = s.create(Kind::Active, "a", None, labels(&[("k", "v")])).unwrap();
        s.remove("a").unwrap();
        let b = s.create(Kind::Active, "b", None, BTreeMap::new()).unwrap();
        let s = Store::open(&path).unwrap();
        assert_eq!(s.get("b").unwrap(), &b);
        assert!(b.id > a.id);
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn update_changes_labels_only() {
        let (_d, mut s) = store();
        s.create(Kind::Active, "a", None, labels(&[("keep", "1"), ("drop", "2")])).unwrap();
        let mut info = s.get("a").unwrap().info.clone();
        info.labels = labels(&[("new", "3")]);
        let got = s.update(&info, &["labels.new".into(), "labels.drop".into()]).unwrap();
        assert_eq!(got.labels, labels(&[("keep", "1"), ("new", "3")]));
        let got = s.update(&info, &[]).unwrap();
        assert_eq!(got.labels, labels(&[("new", "3")]));
        assert!(matches!(s.update(&info, &["parent".into()]), Err(Error::InvalidArgument(_))));
    }
}
