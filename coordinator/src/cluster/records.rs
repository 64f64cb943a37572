//! The cluster's records in the store, each kind under a prefix of its
//! own (`hosts/<name>`, `containers/<id>`), as JSON. Every change is a
//! read, a pure change and a write conditional on the revision read; a
//! conflict (another request for the same record, the expiry sweep)
//! re-reads and tries again.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::store::{Expect, Store, StoreError, Swap};

/// A kind of record and where it lives.
pub trait Record: Serialize + DeserializeOwned {
    /// Its keys' prefix, with the trailing slash.
    const PREFIX: &'static str;
    /// What one is called in messages: "host", "container".
    const WHAT: &'static str;
}

#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the stored record {key} is not a {what} record ({source}); was the state file written by a newer version?"
    )]
    Corrupt { key: String, what: &'static str, source: serde_json::Error },
    #[error("{what} {name} changed under {attempts} writes in a row; try again")]
    Contended { what: &'static str, name: String, attempts: u32 },
}

/// What a change does with a record as it is now.
pub enum Change<R, E> {
    Write(R),
    /// Forget it.
    Delete,
    Keep,
    Refuse(E),
}

/// A bound on retries: contention on one record comes from a handful of
/// writers (its agent, the sweep, an operator), never from a stream.
const MAX_ATTEMPTS: u32 = 16;

/// Every record of kind `R`, in key order.
pub async fn list<R: Record>(store: &dyn Store) -> Result<Vec<R>, RecordsError> {
    store.list(R::PREFIX).await?.into_iter().map(|(key, v)| decode(&key, &v.value)).collect()
}

/// Record `name` of kind `R`, if there is one.
pub async fn get<R: Record>(store: &dyn Store, name: &str) -> Result<Option<R>, RecordsError> {
    let key = format!("{}{name}", R::PREFIX);
    store.get(&key).await?.map(|v| decode(&key, &v.value)).transpose()
}

/// Applies `change` to record `name` (None if there is none) until it is
/// written (or deleted) without a conflict. Returns the record as it now
/// is (None once deleted).
pub async fn update<R: Record, E>(
    store: &dyn Store,
    name: &str,
    mut change: impl FnMut(Option<&R>) -> Change<R, E>,
) -> Result<Result<Option<R>, E>, RecordsError> {
    let key = format!("{}{name}", R::PREFIX);
    for _ in 0..MAX_ATTEMPTS {
        let current = match store.get(&key).await? {
            Some(v) => Some((decode::<R>(&key, &v.value)?, v.revision)),
            None => None,
        };
        let new = match change(current.as_ref().map(|(r, _)| r)) {
            Change::Write(new) => new,
            Change::Delete => {
                let Some((_, revision)) = current else { return Ok(Ok(None)) };
                match store.compare_and_delete(&key, revision).await? {
                    Swap::Applied(_) => return Ok(Ok(None)),
                    Swap::Conflict => continue,
                }
            }
            Change::Keep => return Ok(Ok(current.map(|(r, _)| r))),
            Change::Refuse(e) => return Ok(Err(e)),
        };
        let expect = current.as_ref().map_or(Expect::Absent, |(_, rev)| Expect::At(*rev));
        let value = serde_json::to_vec(&new).expect("a record of plain data always serialises");
        match store.compare_and_swap(&key, expect, value).await? {
            Swap::Applied(_) => return Ok(Ok(Some(new))),
            Swap::Conflict => continue,
        }
    }
    Err(RecordsError::Contended { what: R::WHAT, name: name.to_string(), attempts: MAX_ATTEMPTS })
}

fn decode<R: Record>(key: &str, value: &[u8]) -> Result<R, RecordsError> {
    serde_json::from_slice(value).map_err(|source| RecordsError::Corrupt {
        key: key.to_string(),
        what: R::WHAT,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::{self, HostFacts, HostRecord};
    use crate::store::redb::RedbStore;
    use crate::store::testing::RacedOnce;
    use std::collections::BTreeMap;

    fn record(containers: u32) -> HostRecord {
        let facts = HostFacts {
            name: "h1".into(),
            address: "127.0.0.1:7401".into(),
            labels: BTreeMap::new(),
            containerd_version: String::new(),
            criu_version: String::new(),
            kernel_version: String::new(),
        };
        membership::register(None, facts, containers, Vec::new(), "s1".into(), 1_000)
    }

    #[tokio::test]
    async fn a_change_that_lost_a_race_is_made_again_on_the_new_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = RacedOnce::new(
            RedbStore::open(&dir.path().join("state.redb")).unwrap(),
            serde_json::to_vec(&record(7)).unwrap(),
        );
        let mut seen = Vec::new();
        let Ok(written) = update(&store, "h1", |current| {
            seen.push(current.map(|r: &HostRecord| r.containers));
            // Adds one container to whatever is there.
            Change::<HostRecord, std::convert::Infallible>::Write(record(current.map_or(0, |r| r.containers) + 1))
        })
        .await
        .unwrap();
        // First on nothing, then again on the other writer's record.
        assert_eq!(seen, [None, Some(7)]);
        assert_eq!(written.unwrap().containers, 8);
        assert_eq!(list::<HostRecord>(&store).await.unwrap(), [record(8)]);
    }

    #[tokio::test]
    async fn refusals_and_keeps_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("state.redb")).unwrap();
        let refused = update::<HostRecord, _>(&store, "h1", |_| Change::Refuse("no such host")).await.unwrap();
        assert_eq!(refused, Err("no such host"));
        let kept = update::<HostRecord, ()>(&store, "h1", |_| Change::Keep).await.unwrap();
        assert_eq!(kept, Ok(None));
        assert!(store.list("").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_delete_that_lost_a_race_is_decided_again() {
        let dir = tempfile::tempdir().unwrap();
        let inner = RedbStore::open(&dir.path().join("state.redb")).unwrap();
        inner.put("hosts/h1", serde_json::to_vec(&record(1)).unwrap()).await.unwrap();
        let store = RacedOnce::new(inner, serde_json::to_vec(&record(7)).unwrap());
        let mut seen = Vec::new();
        // Deletes only a host without containers: the other writer's record
        // has some, so the second look keeps it.
        let Ok(kept) = update(&store, "h1", |current| {
            seen.push(current.map(|r: &HostRecord| r.containers));
            if current.is_some_and(|r| r.containers > 1) {
                Change::<HostRecord, std::convert::Infallible>::Keep
            } else {
                Change::Delete
            }
        })
        .await
        .unwrap();
        assert_eq!(seen, [Some(1), Some(7)]);
        assert_eq!(kept.unwrap().containers, 7);
    }
}
