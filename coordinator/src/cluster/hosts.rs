//! The hosts' records in the store, under `hosts/<name>`, as JSON. Every
//! change is a read, a pure change ([`crate::membership`]) and a write
//! conditional on the revision read; a conflict (another request for the
//! same host, the expiry sweep) re-reads and tries again.

use crate::membership::HostRecord;
use crate::store::{Expect, Store, StoreError, Swap};

const PREFIX: &str = "hosts/";

#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the stored record {key} is not a host record ({source}); was the state file written by a newer version?")]
    Corrupt { key: String, source: serde_json::Error },
    #[error("host {name} changed under {attempts} writes in a row; try again")]
    Contended { name: String, attempts: u32 },
}

/// What a change does with a host's current record.
#[expect(
    clippy::large_enum_variant,
    reason = "one lives for one store write; boxing the record would only add an allocation to every change"
)]
pub enum Change<E> {
    Write(HostRecord),
    /// Forget the host.
    Delete,
    Keep,
    Refuse(E),
}

/// A bound on retries: contention on one host comes from a handful of
/// writers (its agent, the sweep, an operator), never from a stream.
const MAX_ATTEMPTS: u32 = 16;

/// Every host, in name order.
pub async fn list(store: &dyn Store) -> Result<Vec<HostRecord>, HostsError> {
    store.list(PREFIX).await?.into_iter().map(|(key, v)| decode(&key, &v.value)).collect()
}

/// Applies `change` to host `name`'s record (None if unknown) until it is
/// written (or deleted) without a conflict. Returns the record as it now
/// is (None once deleted).
pub async fn update<E>(
    store: &dyn Store,
    name: &str,
    mut change: impl FnMut(Option<&HostRecord>) -> Change<E>,
) -> Result<Result<Option<HostRecord>, E>, HostsError> {
    let key = format!("{PREFIX}{name}");
    for _ in 0..MAX_ATTEMPTS {
        let current = match store.get(&key).await? {
            Some(v) => Some((decode(&key, &v.value)?, v.revision)),
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
        let value = serde_json::to_vec(&new).expect("a host record always serialises");
        match store.compare_and_swap(&key, expect, value).await? {
            Swap::Applied(_) => return Ok(Ok(Some(new))),
            Swap::Conflict => continue,
        }
    }
    Err(HostsError::Contended { name: name.to_string(), attempts: MAX_ATTEMPTS })
}

fn decode(key: &str, value: &[u8]) -> Result<HostRecord, HostsError> {
    serde_json::from_slice(value).map_err(|source| HostsError::Corrupt { key: key.to_string(), source })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::membership::{self, HostFacts};
    use crate::store::redb::RedbStore;
    use crate::store::{Revision, Versioned};

    /// A store where another writer slips in once, between a change's read
    /// and its conditional write.
    struct RacedOnce {
        inner: RedbStore,
        raced: AtomicBool,
        other: Vec<u8>,
    }

    #[async_trait]
    impl Store for RacedOnce {
        async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
            self.inner.get(key).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
            self.inner.list(prefix).await
        }
        async fn put(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
            self.inner.put(key, value).await
        }
        async fn delete(&self, key: &str) -> Result<bool, StoreError> {
            self.inner.delete(key).await
        }
        async fn compare_and_swap(&self, key: &str, expect: Expect, value: Vec<u8>) -> Result<Swap, StoreError> {
            if !self.raced.swap(true, Ordering::SeqCst) {
                self.inner.put(key, self.other.clone()).await?;
            }
            self.inner.compare_and_swap(key, expect, value).await
        }
        async fn compare_and_delete(&self, key: &str, revision: Revision) -> Result<Swap, StoreError> {
            if !self.raced.swap(true, Ordering::SeqCst) {
                self.inner.put(key, self.other.clone()).await?;
            }
            self.inner.compare_and_delete(key, revision).await
        }
    }

    fn record(containers: u32) -> HostRecord {
        let facts = HostFacts {
            name: "h1".into(),
            address: "127.0.0.1:7401".into(),
            labels: BTreeMap::new(),
            containerd_version: String::new(),
            criu_version: String::new(),
            kernel_version: String::new(),
        };
        membership::register(None, facts, containers, vec![], "s1".into(), 1_000)
    }

    #[tokio::test]
    async fn a_change_that_lost_a_race_is_made_again_on_the_new_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = RacedOnce {
            inner: RedbStore::open(&dir.path().join("state.redb")).unwrap(),
            raced: AtomicBool::new(false),
            other: serde_json::to_vec(&record(7)).unwrap(),
        };
        let mut seen = Vec::new();
        let Ok(written) = update(&store, "h1", |current| {
            seen.push(current.map(|r| r.containers));
            // Adds one container to whatever is there.
            Change::<std::convert::Infallible>::Write(record(current.map_or(0, |r| r.containers) + 1))
        })
        .await
        .unwrap();
        // First on nothing, then again on the other writer's record.
        assert_eq!(seen, [None, Some(7)]);
        assert_eq!(written.unwrap().containers, 8);
        assert_eq!(list(&store).await.unwrap(), [record(8)]);
    }

    #[tokio::test]
    async fn refusals_and_keeps_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("state.redb")).unwrap();
        let refused = update(&store, "h1", |_| Change::Refuse("no such host")).await.unwrap();
        assert_eq!(refused, Err("no such host"));
        let kept = update(&store, "h1", |_| Change::<()>::Keep).await.unwrap();
        assert_eq!(kept, Ok(None));
        assert!(store.list("").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_delete_that_lost_a_race_is_decided_again() {
        let dir = tempfile::tempdir().unwrap();
        let inner = RedbStore::open(&dir.path().join("state.redb")).unwrap();
        inner.put("hosts/h1", serde_json::to_vec(&record(1)).unwrap()).await.unwrap();
        let store = RacedOnce { inner, raced: AtomicBool::new(false), other: serde_json::to_vec(&record(7)).unwrap() };
        let mut seen = Vec::new();
        // Deletes only a host without containers: the other writer's record
        // has some, so the second look keeps it.
        let Ok(kept) = update(&store, "h1", |current| {
            seen.push(current.map(|r| r.containers));
            if current.is_some_and(|r| r.containers > 1) {
                Change::<std::convert::Infallible>::Keep
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
