//! The agent's part of a migration: stop-and-copy, post-copy (whose dump
//! leaves the memory behind a page server, [`page_server`], that the
//! target's runtime pulls from, [`pages`]) or pre-copy (whose rounds copy
//! the memory while the container runs, each a CRIU pre-dump on the round
//! before, and whose dump sends only what changed since the last). The
//! coordinator drives it, one call per step, on both hosts; data goes
//! from agent to agent, never through the coordinator:
//!
//! | step | source ([`source`]) | target ([`target`]) |
//! |---|---|---|
//! | prepare | `Describe`: spec, image, snapshot | `PrepareTarget`: image, network (link down), snapshot, container |
//! | sync | `SyncLayer`: the writable layer's changes | `Receive`: applies them |
//! | dump | `Dump`: link down, freeze, dump into RAM (pre-copy: on the last round) while its images stream to the target, last changes of the layer | `Receive` |
//! | restore | | `RestoreTarget`: task from the images, link up, announce |
//! | pre-copy rounds | `PreDump`: a pre-dump into RAM on the round before, streamed as CRIU writes it | `Receive`: the round's images, on the round before |
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

use std::path::{Path, PathBuf};

use super::context::Context;

/// A migration as this host takes part in it.
pub enum Migration {
    Source(source::Source),
    Target(target::Target),
}

impl Migration {
    /// The container this host receives, if it is the migration's target.
    pub fn incoming(&self) -> Option<&str> {
        match self {
            Migration::Target(t) => Some(t.container()),
            Migration::Source(_) => None,
        }
    }
}

/// Where migration `id` keeps its files on this host: in RAM where the
/// host has a RAM-backed file system (the memory images arrive there at
/// the link's pace and are read back by the restore; on disk, writing them
/// slowed the page server down), else under the agent's state directory.
pub fn dir(ctx: &Context, id: &str) -> PathBuf {
    migrate_oci::ram::staging_root().unwrap_or_else(|| ctx.work.clone()).join("migrations").join(id)
}

/// Where pre-copy's round `round` (0: the final dump's images) of the
/// migration whose files are in `migration_dir` goes, on both hosts (each
/// host makes its own `parent` links: CRIU's on the source, the agent's
/// on the target):
///
/// ```text
/// migrations/ID/rounds/1     first pre-dump: all the memory
/// migrations/ID/rounds/2     parent -> ../1: what changed since
/// migrations/ID/images       final dump: parent -> ../rounds/N
/// ```
pub fn round_dir(migration_dir: &Path, round: u32) -> PathBuf {
    match round {
        0 => migration_dir.join("images"),
        n => migration_dir.join("rounds").join(n.to_string()),
    }
}

/// Round `round`'s parent, relative to its directory as CRIU records it,
/// after `last_round` rounds: None for the first.
pub fn parent_of(round: u32, last_round: u32) -> Option<PathBuf> {
    match round {
        0 if last_round > 0 => Some(Path::new("../rounds").join(last_round.to_string())),
        0 | 1 => None,
        n => Some(PathBuf::from(format!("../{}", n - 1))),
    }
}

/// A migration id is a file name here: refuse anything else.
pub fn check_id(id: &str) -> Result<(), tonic::Status> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !id.starts_with('.');
    if ok { Ok(()) } else { Err(tonic::Status::invalid_argument(format!("{id:?} is not a migration id"))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_round_builds_on_the_one_before() {
        let m = Path::new("/m");
        assert_eq!(round_dir(m, 1), Path::new("/m/rounds/1"));
        assert_eq!(round_dir(m, 0), Path::new("/m/images"));
        assert_eq!(parent_of(1, 0), None);
        assert_eq!(parent_of(3, 0), Some(PathBuf::from("../2")));
        // The final dump on the last round; with no rounds, on nothing.
        assert_eq!(parent_of(0, 4), Some(PathBuf::from("../rounds/4")));
        assert_eq!(parent_of(0, 0), None);
    }
}
