//! The hosts' records (`hosts/<name>`): their membership is decided by
//! the pure rules of [`crate::membership`], written through [`crate::records`].

use crate::membership::HostRecord;
use crate::records::{self, Record, RecordsError};
use crate::store::Store;

pub use crate::records::Change;

pub type HostsError = RecordsError;

impl Record for HostRecord {
    const PREFIX: &'static str = "hosts/";
    const WHAT: &'static str = "host";
}

/// Every host, in name order.
pub async fn list(store: &dyn Store) -> Result<Vec<HostRecord>, HostsError> {
    records::list(store).await
}

/// [`records::update`] of host `name`.
pub async fn update<E>(
    store: &dyn Store,
    name: &str,
    change: impl FnMut(Option<&HostRecord>) -> Change<HostRecord, E>,
) -> Result<Result<Option<HostRecord>, E>, HostsError> {
    records::update(store, name, change).await
}
