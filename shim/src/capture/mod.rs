//! The one capture pipeline: pause → CRIU dump → rootfs diff → resume →
//! hash and commit, for every checkpoint this runtime takes: the Checkpoint
//! RPC (`ctr task checkpoint`, `ctr container checkpoint`, `migratectl
//! checkpoint create` through this runtime's own options), ready points and
//! checkpoint tickers. A [`Memory`] says, in types, where memory goes (and
//! for a store, whether the rootfs diff is taken), a [`Capture`] whether
//! the container keeps running and what the dump builds on; [`capture`]
//! does it, [`into_store`] when the caller wants the committed checkpoint.
//!
//! A failed capture leaves the container running (unfrozen, as it was) and
//! nothing half-written visible: a checkpoint in a store is committed with
//! one rename, and a dump directory is removed when it is given up.

use std::path::{Path, PathBuf};

use migrate_oci::Checkpoint;

use crate::{
    container::Container,
    error::Result,
    runc::{CriuOptions, CriuTls, NetworkLock},
};

mod dump;
pub mod pages_tap;
mod store;

/// How to take one checkpoint; where it goes is a [`Memory`].
#[derive(Debug, Clone)]
pub struct Capture {
    pub after: After,
    pub increment: Increment,
    pub criu: CriuOptions,
    /// How CRIU locks the network during the dump; by default nftables
    /// where CRIU can (its default, iptables, costs about 60 ms per dump).
    pub network_lock: Option<NetworkLock>,
    /// Where CRIU writes its log and statistics.
    pub work_path: PathBuf,
    /// TLS to the page server of a [`Memory::PageServer`] or from a
    /// [`Memory::Lazy`] one.
    pub tls: Option<CriuTls>,
}

/// Where the images, the memory images above all, go.
#[derive(Debug, Clone, PartialEq)]
pub enum Memory {
    /// CRIU's usual image directory, the caller's (`ctr task checkpoint
    /// --image-path`). On disk, while the container stays frozen after the
    /// dump, the memory images go through FIFOs around the page cache
    /// ([`pages_tap::InPlaceTap`]); into RAM (tmpfs, ramfs) CRIU writes
    /// them itself, which measured faster there.
    Directory(PathBuf),
    /// Memory pages streamed to a CRIU page server at "ADDRESS:PORT"; the
    /// other images into the directory.
    PageServer { images: PathBuf, address: String },
    /// Post-copy: pages served from here on demand after the restore; a
    /// zero byte in the `status` FIFO says when the images are complete.
    Lazy { images: PathBuf, page_server: String, status: Option<PathBuf> },
    /// A committed checkpoint in a store of this project's format.
    Store(StoreTarget),
}

/// A checkpoint of a store to write, and how its images get there.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreTarget {
    pub store: PathBuf,
    pub id: String,
    pub route: Route,
    /// Whether the changes in the container's writable layer are saved
    /// too, of the instant of the dump (the container is paused across
    /// both): a ready point, a version or `migratectl` save them; a
    /// pre-dump, only memory for later dumps to build on, never does.
    pub rootfs_diff: bool,
    pub existing: Existing,
    /// For a ready point, what made the shim take it, recorded in the manifest.
    pub ready: Option<migrate_oci::ReadyInfo>,
}

/// How the images reach the store.
///
/// Measured at 1 GiB on ext4 (2 shared cores, medians of 5): dumping into
/// tmpfs froze the container for 1.0 s and the copy into the store took
/// 1.7 s; dumping into the store froze it for 2.7 s (1.4 to 3.6 s across
/// runs: CRIU's writes into ext4's page cache were the slower part) for a
/// persist of 1.3 s; tapping the memory images into the store froze it for
/// 0.84 to 1.0 s with nothing left to copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// CRIU dumps into a directory under `root` (RAM) and the images are
    /// hashed and written to the store once the container runs again: it
    /// is frozen only for as long as CRIU copies its memory into RAM.
    Ram { root: PathBuf },
    /// As [`Route::Ram`], but while the container stays frozen after the
    /// dump (paused for the rootfs diff, or dumped to exit) the memory
    /// images go from CRIU through FIFOs straight into the store, around
    /// the page cache: nothing of them is ever copied in RAM.
    Tapped { root: PathBuf },
    /// CRIU dumps straight into the store: nothing is copied afterwards,
    /// but the container is frozen while CRIU writes to the store's file
    /// system.
    Direct,
}

/// What to do with a checkpoint of the same id already in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Fail before touching the container.
    Refuse,
    /// Replace it once the new one is dumped (a ready point taken again).
    Replace,
}

/// What becomes of the container after the dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    LeaveRunning,
    /// CRIU kills it once dumped.
    Exit,
}

/// What the dump builds on, with CRIU's memory tracking (soft-dirty bits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Increment {
    /// All of it, whatever came before.
    Full,
    /// Memory only, for later dumps to build on (`--pre-dump`): not a
    /// checkpoint that restores by itself; after the first round of a
    /// pre-copy, only what changed since the round before.
    PreDump(Option<Parent>),
    /// Only the memory changed since `Parent` (`--parent-path`).
    OnParent(Parent),
}

impl Increment {
    pub fn is_pre_dump(&self) -> bool {
        matches!(self, Increment::PreDump(_))
    }

    pub fn parent(&self) -> Option<&Parent> {
        match self {
            Increment::Full => None,
            Increment::PreDump(parent) => parent.as_ref(),
            Increment::OnParent(parent) => Some(parent),
        }
    }
}

/// The dump an increment builds on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parent {
    /// Checkpoint `0` of the same store.
    Checkpoint(String),
    /// CRIU images at this path, as the caller gave it (relative paths are
    /// relative to the image directory).
    Images(PathBuf),
}

/// Takes the checkpoint `request` asks for into `memory`; returns where it
/// is (the images directory, or the committed checkpoint's). The
/// container's lifecycle lock is held while it is dumped (and frozen), not
/// while a checkpoint is hashed and written to a store after.
pub async fn capture(container: &Container, request: &Capture, memory: &Memory) -> Result<PathBuf> {
    match memory {
        Memory::Directory(images) | Memory::PageServer { images, .. } | Memory::Lazy { images, .. } => {
            let _lifecycle = container.lifecycle.lock().await;
            dump::to_directory(container, request, memory, images).await
        }
        Memory::Store(target) => into_store(container, request, target).await.map(|c| c.dir().to_path_buf()),
    }
}

/// [`capture`] into a store: returns the committed checkpoint.
pub async fn into_store(container: &Container, request: &Capture, target: &StoreTarget) -> Result<Checkpoint> {
    store::capture(container, request, target).await
}

/// Where the shim's own checkpoints (ready points, tickers' versions) wait
/// in RAM to be committed: the first RAM-backed staging root, else
/// /dev/shm's, RAM almost everywhere.
pub fn ram_root() -> PathBuf {
    migrate_oci::ram::staging_root().unwrap_or_else(|| PathBuf::from(migrate_oci::ram::SHM_STAGING_ROOT))
}

/// A leave-running checkpoint the shim takes on its own (a ready point, a
/// ticker's version), as checkpoint `id` of `store`, replacing one of that
/// id: dumped into RAM, so the container is frozen only for as long as
/// CRIU copies its memory, then committed while it runs on.
pub fn own(container: &Container, store: &Path, id: &str, increment: Increment) -> (Capture, StoreTarget) {
    let request = Capture {
        after: After::LeaveRunning,
        increment,
        criu: CriuOptions { shell_job: container.init.stdio.terminal, ..Default::default() },
        network_lock: None,
        work_path: container.bundle.join("criu-work"),
        tls: None,
    };
    let target = StoreTarget {
        store: store.to_owned(),
        id: id.to_owned(),
        route: Route::Ram { root: ram_root() },
        rootfs_diff: true,
        existing: Existing::Replace,
        ready: None,
    };
    (request, target)
}

pub(crate) use dump::fresh_dir;
