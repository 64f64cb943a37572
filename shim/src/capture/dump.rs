//! The CRIU dump itself, the freeze around it, and dumps into a caller's
//! directory.

use std::{
    future::Future,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use log::{error, info, warn};

use super::{After, Capture, Memory, Parent, pages_tap::InPlaceTap};
use crate::{
    cgroups::Cgroups,
    checkpoint::RestoreCriuOptions,
    container::Container,
    error::{Error, Result},
    process::{InitState, Lifecycle},
    runc::{self, CheckpointOptions, CriuConfig, Feature, NetworkLock, Pages},
};

/// FIFOs for memory images beyond one per process: CRIU numbers the images
/// of shared memory segments in the same sequence. Any further image is an
/// ordinary file, as without a tap.
pub(super) const TAP_SPARE: u32 = 2;

/// How many memory images to tap: one per process of the container, which
/// is frozen, so its cgroup is read rather than asked of runc. Only a hint:
/// images beyond the FIFOs are ordinary files.
pub(super) fn tap_count(container: &Container) -> u32 {
    let processes = Cgroups::of(container.init.state().pid()).and_then(|c| c.process_count("memory")).unwrap_or(1);
    u32::try_from(processes).unwrap_or(u32::MAX).saturating_add(TAP_SPARE)
}

/// runc's options for dumping `request` into `images`.
pub(super) fn runc_options(
    request: &Capture,
    memory: &Memory,
    images: PathBuf,
    parent_path: Option<PathBuf>,
) -> CheckpointOptions {
    CheckpointOptions {
        image_path: images,
        work_path: request.work_path.clone(),
        parent_path,
        leave_running: request.after == After::LeaveRunning,
        pre_dump: request.increment.is_pre_dump(),
        pages: match memory {
            Memory::PageServer { address, .. } => Pages::PageServer(address.clone()),
            Memory::Lazy { page_server, status, .. } => {
                Pages::Lazy { page_server: page_server.clone(), status: status.clone() }
            }
            Memory::Directory(_) | Memory::Store(_) => Pages::Local,
        },
        criu: request.criu.clone(),
        config: CriuConfig {
            network_lock: request.network_lock,
            tcp_close: request.criu.tcp_close,
            tls: request.tls.clone(),
            ..Default::default()
        },
    }
}

/// Whether the container stays frozen from the end of CRIU's dump until
/// the caller lets it go: it was paused before, or it is dumped to exit.
pub(super) fn frozen_after(container: &Container, after: After) -> bool {
    after == After::Exit || matches!(container.init.state(), InitState::Paused { .. })
}

/// A dump into the caller's directory (the Checkpoint RPC's image path).
/// When the container stays frozen after CRIU's dump (containerd's client
/// pauses it for `ctr task checkpoint`, or it is dumped to exit) and the
/// directory is on disk, the memory images go from CRIU through FIFOs to
/// the disk around the page cache: a dump of 1 GiB then allocates no memory
/// for them, which on a VM whose host takes freed memory back costs seconds
/// at random. Into RAM the tap only adds work (1.06-1.20× runc.v2's time
/// measured into /dev/shm), so CRIU writes there itself. The directory
/// looks as CRIU leaves it either way.
pub(super) async fn to_directory(
    container: &Container,
    request: &Capture,
    memory: &Memory,
    images: &Path,
) -> Result<PathBuf> {
    let images = images.to_path_buf();
    let pages_local = matches!(memory, Memory::Directory(_));
    let parent = match request.increment.parent() {
        Some(Parent::Images(path)) => Some(path.clone()),
        Some(Parent::Checkpoint(id)) => {
            return Err(Error::InvalidArgument(format!(
                "a dump into a directory builds on images by path, not on checkpoint {id} of a store"
            )));
        }
        None => None,
    };
    let opts = runc_options(request, memory, images.clone(), parent);
    std::fs::create_dir_all(&images)
        .map_err(Error::io(format!("create the checkpoint directory {}", images.display())))?;
    let tap = pages_local
        && !request.increment.is_pre_dump()
        && frozen_after(container, request.after)
        && !migrate_oci::ram::is_ram_backed(&images).unwrap_or(false);
    if !tap {
        return run(container, &opts).await.map(|()| images);
    }
    let count = tap_count(container);
    let tap = match InPlaceTap::start(&images, count) {
        Ok(tap) => tap,
        Err(e) => {
            warn!("{}: not tapping the memory images: {e}", container.id);
            return run(container, &opts).await.map(|()| images);
        }
    };
    info!("{}: taking the memory images through {count} FIFOs", container.id);
    let dumped = run(container, &opts).await;
    // Joining the readers blocks: off the async runtime, also when the
    // dump failed and the tap is only given up.
    let finished = tokio::task::spawn_blocking(move || match dumped {
        Ok(()) => tap.finish().map_err(Error::from),
        Err(e) => {
            drop(tap);
            Err(e)
        }
    })
    .await;
    finished.map_err(|e| Error::io("take the memory images")(std::io::Error::other(e)))?.map(|()| images)
}

/// Dumps the init with CRIU. A failure leaves the container as it was,
/// running, with CRIU's log kept in the work path named by the error.
pub(super) async fn run(container: &Container, opts: &CheckpointOptions) -> Result<()> {
    container.init.state().checkpointable()?;
    fresh_dir(&opts.work_path)?;
    std::fs::create_dir_all(&opts.image_path)
        .map_err(Error::io(format!("create the checkpoint directory {}", opts.image_path.display())))?;
    let mut opts = opts.clone();
    if opts.config.network_lock.is_none() && *runc::nftables_lock().await == Feature::Supported {
        // Its default, iptables, keeps the container frozen for about
        // 60 ms more per dump, and its restores wait as long again.
        opts.config.network_lock = Some(NetworkLock::Nftables);
    }
    let opts = &opts;
    // Before the dump: a lazy one's images are restored while it still
    // serves their pages, and must say so by then.
    let restore = RestoreCriuOptions {
        lazy_pages: matches!(opts.pages, Pages::Lazy { .. }),
        ..RestoreCriuOptions::from(&opts.criu)
    };
    restore.write(&opts.image_path)?;
    if let Err(e) = container.runc().checkpoint(&container.id, opts).await {
        // CRIU freezes the cgroup around its work and thaws it while it
        // holds the processes by ptrace; one that was killed (a post-copy's
        // page server stopped) cannot undo either. Paused it was, paused
        // it stays; running it was, running it stays (a killed pre-dump
        // leaves the cgroup frozen; resuming one that is not says so, and
        // is harmless).
        let undone = match container.init.state() {
            InitState::Paused { .. } => container.runc().pause(&container.id).await,
            InitState::Running { .. } => container.runc().resume(&container.id).await,
            _ => Ok(()),
        };
        if let Err(again) = undone {
            info!("{}: after the failed dump: {again}", container.id);
        }
        return Err(e.into());
    }
    // CRIU writes its timings (how long the container was frozen) to the
    // work path; they belong with the images they describe.
    let stats = opts.work_path.join("stats-dump");
    if stats.is_file() && opts.work_path != opts.image_path {
        let _ = std::fs::rename(&stats, opts.image_path.join("stats-dump"))
            .or_else(|_| std::fs::copy(&stats, opts.image_path.join("stats-dump")).map(drop));
    }
    if opts.work_path.starts_with(&container.bundle) {
        let _ = std::fs::remove_dir_all(&opts.work_path);
    }
    Ok(())
}

/// Runs `work` with the container paused, unless it was paused already,
/// and resumes it after, whatever happened; returns what `work` returned
/// and how long the container was paused for it.
pub(super) async fn while_paused<T>(
    container: &Container,
    work: impl Future<Output = Result<T>>,
) -> Result<(T, Duration)> {
    let was_paused = matches!(container.init.state(), InitState::Paused { .. });
    if !was_paused {
        container.pause().await?;
    }
    let paused = Instant::now();
    let result = work.await;
    let frozen = paused.elapsed();
    if !was_paused && let Err(e) = container.resume().await {
        error!("{}: could not resume the container after its checkpoint: {e}", container.id);
        return Err(result.err().unwrap_or(e));
    }
    result.map(|done| (done, frozen))
}

/// Empties `dir`, creating it if needed, so that no file of an earlier run
/// (say a stale CRIU log) is mistaken for one of this run.
pub(crate) fn fresh_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("clear {}", dir.display()))(e)),
    }
    std::fs::create_dir_all(dir).map_err(Error::io(format!("create {}", dir.display())))
}
