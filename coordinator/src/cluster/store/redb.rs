//! The embedded [`Store`]: one redb file on the coordinator's host. Each
//! call is one redb transaction, committed durably before it returns. redb
//! locks the file, so a second coordinator on the same file is refused.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Expect, Revision, Store, StoreError, Swap, Versioned};

/// key -> (revision of its last write, value).
const RECORDS: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("records");
/// One row, "revision": the last revision handed out.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION_KEY: &str = "revision";

#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Database>,
}

impl RedbStore {
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        let db = Database::create(path)
            .map_err(|source| StoreError::Open { path: path.to_path_buf(), source: Box::new(source) })?;
        Ok(RedbStore { db: Arc::new(db) })
    }

    /// Runs a blocking redb call off the async runtime's threads: a commit
    /// waits for an fsync.
    async fn blocking<T: Send + 'static>(
        &self,
        doing: String,
        f: impl FnOnce(&Database) -> Result<T, redb::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        let backend =
            |doing: String, source: Box<dyn std::error::Error + Send + Sync>| StoreError::Backend { doing, source };
        match tokio::task::spawn_blocking(move || f(&db)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(backend(doing, Box::new(e))),
            Err(e) => Err(backend(doing, Box::new(e))),
        }
    }
}

/// Takes the next revision, inside the caller's transaction.
fn next_revision(txn: &redb::WriteTransaction) -> Result<Revision, redb::Error> {
    let mut meta = txn.open_table(META)?;
    let revision = meta.get(REVISION_KEY)?.map_or(0, |g| g.value()) + 1;
    meta.insert(REVISION_KEY, revision)?;
    Ok(revision)
}

/// Writes `value` under the next revision, inside the caller's transaction.
fn write(txn: &redb::WriteTransaction, key: &str, value: &[u8]) -> Result<Revision, redb::Error> {
    let revision = next_revision(txn)?;
    txn.open_table(RECORDS)?.insert(key, (revision, value))?;
    Ok(revision)
}

#[async_trait]
impl Store for RedbStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let k = key.to_string();
        self.blocking(format!("reading {key}"), move |db| {
            let txn = db.begin_read()?;
            let table = match txn.open_table(RECORDS) {
                Ok(t) => t,
                // Nothing was ever written.
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            Ok(table.get(k.as_str())?.map(|g| {
                let (revision, value) = g.value();
                Versioned { value: value.to_vec(), revision }
            }))
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        let p = prefix.to_string();
        self.blocking(format!("listing {prefix}*"), move |db| {
            let txn = db.begin_read()?;
            let table = match txn.open_table(RECORDS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let mut out = Vec::new();
            for row in table.range(p.as_str()..)? {
                let (k, v) = row?;
                let key = k.value();
                if !key.starts_with(p.as_str()) {
                    break;
                }
                let (revision, value) = v.value();
                out.push((key.to_string(), Versioned { value: value.to_vec(), revision }));
            }
            Ok(out)
        })
        .await
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
        let k = key.to_string();
        self.blocking(format!("writing {key}"), move |db| {
            let txn = db.begin_write()?;
            let revision = write(&txn, &k, &value)?;
            txn.commit()?;
            Ok(revision)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let k = key.to_string();
        self.blocking(format!("deleting {key}"), move |db| {
            let txn = db.begin_write()?;
            let existed = txn.open_table(RECORDS)?.remove(k.as_str())?.is_some();
            if existed {
                next_revision(&txn)?;
            }
            txn.commit()?;
            Ok(existed)
        })
        .await
    }

    async fn compare_and_swap(&self, key: &str, expect: Expect, value: Vec<u8>) -> Result<Swap, StoreError> {
        let k = key.to_string();
        self.blocking(format!("writing {key} conditionally"), move |db| {
            // redb has one writer at a time: the check and the write below
            // cannot interleave with another write.
            let txn = db.begin_write()?;
            let current = txn.open_table(RECORDS)?.get(k.as_str())?.map(|g| g.value().0);
            let matches = match (expect, current) {
                (Expect::Absent, None) => true,
                (Expect::At(want), Some(have)) => want == have,
                _ => false,
            };
            if !matches {
                txn.abort()?;
                return Ok(Swap::Conflict);
            }
            let revision = write(&txn, &k, &value)?;
            txn.commit()?;
            Ok(Swap::Applied(revision))
        })
        .await
    }

    async fn compare_and_delete(&self, key: &str, revision: Revision) -> Result<Swap, StoreError> {
        let k = key.to_string();
        self.blocking(format!("deleting {key} conditionally"), move |db| {
            RedbStore::compare_and_delete_blocking(db, &k, revision)
        })
        .await
    }
}

impl RedbStore {
    fn compare_and_delete_blocking(db: &Database, key: &str, revision: Revision) -> Result<Swap, redb::Error> {
        let txn = db.begin_write()?;
        let current = txn.open_table(RECORDS)?.get(key)?.map(|g| g.value().0);
        if current != Some(revision) {
            txn.abort()?;
            return Ok(Swap::Conflict);
        }
        txn.open_table(RECORDS)?.remove(key)?;
        let deleted_at = next_revision(&txn)?;
        txn.commit()?;
        Ok(Swap::Applied(deleted_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_are_versioned_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(store.get("hosts/h1").await.unwrap(), None);
        assert_eq!(store.list("hosts/").await.unwrap(), vec![]);

        let r1 = store.put("hosts/h1", b"one".to_vec()).await.unwrap();
        let r2 = store.put("hosts/h2", b"two".to_vec()).await.unwrap();
        store.put("hostsx", b"not a host".to_vec()).await.unwrap();
        store.put("a", b"before".to_vec()).await.unwrap();
        assert!(r2 > r1);
        let listed: Vec<String> = store.list("hosts/").await.unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(listed, ["hosts/h1", "hosts/h2"]);

        assert!(store.delete("hosts/h2").await.unwrap());
        assert!(!store.delete("hosts/h2").await.unwrap());
        drop(store);

        let store = RedbStore::open(&path).unwrap();
        assert_eq!(store.get("hosts/h1").await.unwrap(), Some(Versioned { value: b"one".to_vec(), revision: r1 }));
        assert_eq!(store.get("hosts/h2").await.unwrap(), None);
        // The counter goes on from where it was.
        assert!(store.put("hosts/h3", vec![]).await.unwrap() > r2);
    }

    #[tokio::test]
    async fn compare_and_swap_writes_only_what_was_expected() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("state.redb")).unwrap();
        let Swap::Applied(r1) = store.compare_and_swap("k", Expect::Absent, b"1".to_vec()).await.unwrap() else {
            panic!("a new key was not written");
        };
        assert_eq!(store.compare_and_swap("k", Expect::Absent, b"x".to_vec()).await.unwrap(), Swap::Conflict);
        let Swap::Applied(r2) = store.compare_and_swap("k", Expect::At(r1), b"2".to_vec()).await.unwrap() else {
            panic!("the expected revision was not accepted");
        };
        // A writer that read r1 lost the race.
        assert_eq!(store.compare_and_swap("k", Expect::At(r1), b"y".to_vec()).await.unwrap(), Swap::Conflict);
        assert_eq!(store.get("k").await.unwrap().unwrap(), Versioned { value: b"2".to_vec(), revision: r2 });

        // A delete, too, only of what was expected.
        assert_eq!(store.compare_and_delete("k", r1).await.unwrap(), Swap::Conflict);
        let Swap::Applied(deleted_at) = store.compare_and_delete("k", r2).await.unwrap() else {
            panic!("the expected revision was not deleted");
        };
        assert!(deleted_at > r2);
        assert_eq!(store.get("k").await.unwrap(), None);
        assert_eq!(store.compare_and_delete("k", r2).await.unwrap(), Swap::Conflict);
        store.put("k", b"2".to_vec()).await.unwrap();

        // A revision from before a delete never matches the key made again.
        store.delete("k").await.unwrap();
        store.put("k", b"3".to_vec()).await.unwrap();
        assert_eq!(store.compare_and_swap("k", Expect::At(r2), b"z".to_vec()).await.unwrap(), Swap::Conflict);
    }

    #[test]
    fn a_second_opener_is_refused_with_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let _first = RedbStore::open(&path).unwrap();
        let err = RedbStore::open(&path).err().expect("a second open succeeded");
        assert!(err.to_string().contains("another migrate-coordinator"), "{err}");
    }
}
