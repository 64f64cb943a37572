//! Where the cluster's state lives. The coordinator keeps nothing that
//! matters only in memory: every record goes through [`Store`], whose
//! embedded default is one redb file ([`redb::RedbStore`]); replicated
//! coordinators share etcd ([`etcd::EtcdStore`]). The trait has etcd's
//! semantics:
//! keys are strings ordered bytewise, every write gets a revision from one
//! counter that only grows (etcd's `mod_revision`), and a write can be made
//! conditional on a key's revision (a transaction comparing it).
//!
//! Conflicts are not errors: [`Swap::Conflict`] means "re-read and retry",
//! as with swarmkit's store.

pub mod etcd;
pub mod redb;
#[cfg(test)]
pub mod testing;

use async_trait::async_trait;

/// A store-wide write counter: a key's revision is that of its last write.
/// Never reused, even after a delete, so a stale revision can never match a
/// newer record of the same key.
pub type Revision = u64;

/// A value and the revision of its last write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    pub revision: Revision,
}

/// What a conditional write expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The key does not exist.
    Absent,
    /// The key was last written at this revision.
    At(Revision),
}

/// The outcome of a conditional write or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Swap {
    /// Done, at this revision (a delete takes one too, as in etcd).
    Applied(Revision),
    /// The key was not as expected; nothing was changed.
    Conflict,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot open the state file {path}: {source}; is another migrate-coordinator using it? \
         (each coordinator needs a state file of its own)"
    )]
    Open { path: std::path::PathBuf, source: Box<dyn std::error::Error + Send + Sync> },
    #[error("the state store failed while {doing}: {source}")]
    Backend { doing: String, source: Box<dyn std::error::Error + Send + Sync> },
}

#[async_trait]
pub trait Store: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError>;
    /// Every key starting with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError>;
    /// Writes `value` whatever the key holds.
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError>;
    /// Removes the key; false if it did not exist.
    async fn delete(&self, key: &str) -> Result<bool, StoreError>;
    /// Writes `value` only if the key is as `expect` says, atomically.
    async fn compare_and_swap(&self, key: &str, expect: Expect, value: Vec<u8>) -> Result<Swap, StoreError>;
    /// Removes the key only if it was last written at `revision`, atomically.
    async fn compare_and_delete(&self, key: &str, revision: Revision) -> Result<Swap, StoreError>;
}
