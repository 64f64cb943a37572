//! The agent's part of a migration, stop-and-copy or post-copy (whose dump
//! leaves the memory behind a page server, [`page_server`], that the
//! target's runtime pulls from, [`pages`]). The coordinator drives it, one call per step, on both
//! hosts; data goes from agent to agent, never through the coordinator:
//!
//! | step | source ([`source`]) | target ([`target`]) |
//! |---|---|---|
//! | prepare | `Describe`: spec, image, snapshot | `PrepareTarget`: image, network (link down), snapshot, container |
//! | sync | `SyncLayer`: the writable layer's changes | `Receive`: applies them |
//! | dump | `Dump`: link down, freeze, dump into RAM while its images stream to the target, last changes of the layer | `Receive` |
//! | restore | | `RestoreTarget`: task from the images, link up, announce |
//! | pages (post-copy) | page server until the target has every page | `AwaitPages`: the runtime pulls them |
//! | finish | `FinishSource`: removed | |
//! | or abort | `StopPages`, `ResumeSource`: thawed, link up | `AbortTarget`: all undone |
//!
//! Each host keeps what it needs between calls here, keyed by the
//! migration's id, and its files under `migrations/ID` ([`dir`]); an agent that
//! restarts mid-migration has lost it, and the coordinator's abort then
//! cleans up by container id.

pub mod criu_images;
pub mod features;
pub mod layer;
pub mod page_server;
pub mod pages;
pub mod source;
pub mod target;
pub mod transfer;

use std::path::PathBuf;

use super::context::Context;

/// A migration as this host takes part in it.
pub enum Migration {
    Source(source::Source),
    Target(target::Target),
}

/// Where migration `id` keeps its files on this host: in RAM where the
/// host has a RAM-backed file system (the memory images arrive there at
/// the link's pace and are read back by the restore; on disk, writing them
/// slowed the page server down), else under the agent's state directory.
pub fn dir(ctx: &Context, id: &str) -> PathBuf {
    migrate_oci::ram::staging_root().unwrap_or_else(|| ctx.work.clone()).join("migrations").join(id)
}

/// A migration id is a file name here: refuse anything else.
pub fn check_id(id: &str) -> Result<(), tonic::Status> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !id.starts_with('.');
    if ok { Ok(()) } else { Err(tonic::Status::invalid_argument(format!("{id:?} is not a migration id"))) }
}
