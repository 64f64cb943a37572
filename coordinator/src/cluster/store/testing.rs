//! Stores for tests of the code written against [`Store`].

use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;

use super::redb::RedbStore;
use super::{Expect, Revision, Store, StoreError, Swap, Versioned};

/// A store where another writer slips in once, between a change's read and
/// its conditional write (or delete): the key then holds `other`.
pub struct RacedOnce {
    inner: RedbStore,
    raced: AtomicBool,
    other: Vec<u8>,
}

impl RacedOnce {
    pub fn new(inner: RedbStore, other: Vec<u8>) -> RacedOnce {
        RacedOnce { inner, raced: AtomicBool::new(false), other }
    }

    async fn race(&self, key: &str) -> Result<(), StoreError> {
        if !self.raced.swap(true, Ordering::SeqCst) {
            self.inner.put(key, self.other.clone()).await?;
        }
        Ok(())
    }
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
        self.race(key).await?;
        self.inner.compare_and_swap(key, expect, value).await
    }
    async fn compare_and_delete(&self, key: &str, revision: Revision) -> Result<Swap, StoreError> {
        self.race(key).await?;
        self.inner.compare_and_delete(key, revision).await
    }
}
