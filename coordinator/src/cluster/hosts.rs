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
pub enum Change<E> {
    Write(HostRecord),
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
/// written without a conflict. Returns the record as it now is.
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
            Change::Keep => return Ok(Ok(current.map(|(r, _)| r))),
            Change::Refuse(e) => return Ok(Err(e)),
        };
        let expect = current.as_ref().map_or(Expect::Absent, |(_, rev)| Expect::At(*rev));
        let value = serde_json::to_vec(&new).expect("a host record always serialises");
        match store.compare_and_swap(&key, expect, value).await? {
            Swap::Written(_) => return Ok(Ok(Some(new))),
            Swap::Conflict => continue,
        }
    }
    Err(HostsError::Contended { name: name.to_string(), attempts: MAX_ATTEMPTS })
}

fn decode(key: &str, value: &[u8]) -> Result<HostRecord, HostsError> {
    serde_json::from_slice(value).map_err(|source| HostsError::Corrupt { key: key.to_string(), source })
}
