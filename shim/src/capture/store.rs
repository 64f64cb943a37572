//! Captures into a checkpoint store: dumped (into RAM, through the pages
//! tap, or straight into the store) while the container is frozen, then
//! hashed and committed while it runs on.

use std::{
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    time::Instant,
};

use log::{info, warn};
use migrate_oci::{
    Checkpoint, CheckpointStore, CommitInfo, ContainerInfo, HostInfo, Staging, Timings, WrittenFile, criu_stats,
};

use super::{
    After, Capture, Existing, Memory, Parent, Route, StoreTarget,
    dump::{self, frozen_after, runc_options, tap_count, while_paused},
    pages_tap::PagesTap,
};
use crate::{
    container::Container,
    error::{Error, Result, blocking},
    runc,
};

/// Takes `request` as checkpoint `target.id` of the store `target.store`.
pub(super) async fn capture(container: &Container, request: &Capture, target: &StoreTarget) -> Result<Checkpoint> {
    let started = Instant::now();
    let parent = match request.increment.parent() {
        Some(Parent::Checkpoint(id)) => Some(id.clone()),
        Some(Parent::Images(path)) => {
            return Err(Error::InvalidArgument(format!(
                "a checkpoint of a store builds on another checkpoint of it, not on the images at {}",
                path.display()
            )));
        }
        None => None,
    };
    // Answered while the container is dumped; the manifest records it.
    container.ask_image();
    let pre_dump = request.increment.is_pre_dump();
    // A pre-dump is only memory for later dumps to build on, never
    // restored by itself: it needs no rootfs diff, and no pause for one.
    let upper = container.overlay.as_ref().and_then(|o| o.upper.clone()).filter(|_| target.rootfs_diff && !pre_dump);

    // Everything that can fail without touching the container fails here,
    // before the freeze: an unusable store, a taken id.
    let store = CheckpointStore::open(&target.store)?;
    let scratch = Scratch::new(&store, container, target)?;
    let early = target.existing == Existing::Refuse || target.route == Route::Direct || tapped(target);
    let mut staging = early.then(|| open_staging(&store, target)).transpose()?;
    let images = match (&target.route, &staging) {
        (Route::Direct, Some(staging)) => staging.criu_dir(),
        _ => scratch.images.clone(),
    };
    let parent_path = parent.as_deref().map(|id| parent_path(&images, &store, id)).transpose()?;
    let opts = runc_options(request, &Memory::Store(target.clone()), images, parent_path);

    // The rootfs diff must be of the instant of the dump: a file the
    // container renames or deletes right after (a temporary file being
    // written) and had open at the dump could not be restored. Left
    // running, the container is paused across both (CRIU leaves a frozen
    // container frozen); dumped to exit, it is gone before the diff.
    let pause = request.after == After::LeaveRunning && upper.is_some();
    // The pages CRIU splices into the tap's FIFOs are the process's own:
    // only while it stays frozen until the tap is drained.
    let tap = match &staging {
        Some(staging) if tapped(target) && !pre_dump && (pause || frozen_after(container, request.after)) => {
            let count = tap_count(container);
            info!("{}: taking the memory images into the store through {count} FIFOs", container.id);
            Some(PagesTap::start(staging, &opts.image_path, count)?)
        }
        _ => None,
    };
    let diff = upper.map(|upper| (upper, scratch.diff.clone()));
    let frozen = {
        let _lifecycle = container.lifecycle.lock().await;
        let work = frozen_part(container, &opts, diff.clone(), tap);
        if pause {
            while_paused(container, work).await.map(|(tapped, paused)| (tapped, Some(paused)))
        } else {
            work.await.map(|tapped| (tapped, None))
        }
    };
    let (tapped, paused) = frozen?;
    let dump_ms = started.elapsed().as_secs_f64() * 1000.0;

    let persist_started = Instant::now();
    let host = HostInfo::this_machine(runc::criu_version_text().await);
    let image = container.image().await;
    let info = CommitInfo {
        container: ContainerInfo {
            id: container.id.clone(),
            namespace: container.namespace().to_string(),
            image: image.reference,
            runtime: crate::RUNTIME_ID.to_string(),
        },
        parent,
        leave_running: request.after == After::LeaveRunning,
        rootfs: image.rootfs,
        timings: Timings {
            frozen_ms: paused.map(|d| d.as_secs_f64() * 1000.0),
            dump_ms: Some(dump_ms),
            persist_ms: None,
        },
        host,
        ready: target.ready.clone(),
    };
    let persist = Persist {
        store,
        target: target.clone(),
        staging: staging.take(),
        scratch,
        tapped,
        spec: (!pre_dump).then(|| container.bundle.join("config.json")),
        diff: diff.map(|(_, file)| file),
        info,
        started: persist_started,
    };
    let id = target.id.clone();
    tokio::task::spawn_blocking(move || persist.run())
        .await
        .map_err(|e| Error::io(format!("commit checkpoint {id}"))(std::io::Error::other(e)))?
}

fn tapped(target: &StoreTarget) -> bool {
    matches!(target.route, Route::Tapped { .. })
}

/// The staging checkpoint for `target`, after removing one of its id if
/// it is to be replaced.
fn open_staging(store: &CheckpointStore, target: &StoreTarget) -> Result<Staging> {
    if target.existing == Existing::Replace && store.get(&target.id).is_ok() {
        store.remove(&target.id)?;
    }
    Ok(store.staging(&target.id)?)
}

/// The part of a capture during which the container must not run: CRIU's
/// dump, the rootfs diff `(upperdir, file)` and draining the pages tap.
/// Returns the memory images the tap wrote into the staging checkpoint.
async fn frozen_part(
    container: &Container,
    opts: &runc::CheckpointOptions,
    diff: Option<(PathBuf, PathBuf)>,
    tap: Option<PagesTap>,
) -> Result<Vec<WrittenFile>> {
    let dumped = dump::run(container, opts).await;
    let diffed = match (&dumped, diff) {
        (Ok(()), Some((upper, file))) => blocking("write the rootfs diff", move || {
            migrate_oci::write_rootfs_diff(&upper, &file).map_err(Error::from)
        })
        .await
        .map_err(|e| dumped_but(container, "its rootfs", e)),
        _ => Ok(()),
    };
    // Before the container runs again, which would change the pages that
    // CRIU handed over but the tap has not read yet. Joining the readers
    // blocks: off the async runtime, also when the tap is only given up.
    let ok = dumped.is_ok();
    let tapped = match tap {
        Some(tap) => {
            blocking("take the memory images", move || {
                if ok {
                    tap.finish().map_err(Error::from)
                } else {
                    drop(tap);
                    Ok(Vec::new())
                }
            })
            .await
        }
        None => Ok(Vec::new()),
    };
    dumped?;
    diffed?;
    tapped.map_err(|e| dumped_but(container, "its memory", e))
}

fn dumped_but(container: &Container, what: &str, e: Error) -> Error {
    Error::io(format!("container {} was dumped, but not {what}", container.id))(std::io::Error::other(e))
}

/// Where CRIU finds the images of checkpoint `parent` of `store` from the
/// images directory `dump`: relative when both are in one directory (as the
/// ticker's are), since CRIU keeps the path as the images' `parent` link.
fn parent_path(dump: &Path, store: &CheckpointStore, parent: &str) -> Result<PathBuf> {
    let images = store.get(parent)?.criu_dir();
    Ok(match (dump.parent(), store.root().parent()) {
        (Some(dir), Some(same)) if dir == same => {
            Path::new("..").join(images.strip_prefix(dir).expect("the store is in dir"))
        }
        _ => images,
    })
}

/// Where a dump waits to be committed: its images directory and its rootfs
/// diff, beside each other under the route's RAM root (or, dumping
/// straight into the store without RAM at hand, hidden in the store).
/// Both are removed when it is dropped, committed or not.
struct Scratch {
    images: PathBuf,
    diff: PathBuf,
}

impl Scratch {
    fn new(store: &CheckpointStore, container: &Container, target: &StoreTarget) -> Result<Scratch> {
        let name = format!("{}-{}-{}", container.namespace(), container.id, target.id);
        let images = match &target.route {
            Route::Ram { root } | Route::Tapped { root } => root.join(&name),
            Route::Direct => match migrate_oci::ram::staging_root() {
                Some(root) => root.join(&name),
                None => store.root().join(format!(".dump-{name}")),
            },
        };
        let mut diff = images.clone().into_os_string();
        diff.push(".rootfs-diff.tar");
        let diff = PathBuf::from(diff);
        if target.existing == Existing::Replace {
            // What a shim killed in the middle of this same checkpoint
            // left: CRIU would write beside stale images.
            Scratch::remove(&images, &diff);
        }
        let parent = images.parent().expect("a scratch directory has a parent");
        private_dir(parent)?;
        // Created here, never taken over: one of the same name may be
        // another capture's, under way (removed only if it is this one's).
        match std::fs::DirBuilder::new().mode(0o700).create(&images) {
            Ok(()) => Ok(Scratch { images, diff }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(Error::AlreadyExists(format!(
                "the dump directory {} (a checkpoint with id {} is under way, or one was interrupted: remove the \
                 directory if so)",
                images.display(),
                target.id
            ))),
            Err(e) => Err(Error::io(format!("create {}", images.display()))(e)),
        }
    }

    fn remove(images: &Path, diff: &Path) {
        for (result, path) in [(std::fs::remove_dir_all(images), images), (std::fs::remove_file(diff), diff)] {
            if let Err(e) = result
                && e.kind() != std::io::ErrorKind::NotFound
            {
                warn!("could not remove {}: {e}", path.display());
            }
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        Scratch::remove(&self.images, &self.diff);
    }
}

fn private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(Error::io(format!("create the staging directory {}", dir.display())))
}

/// Turning a dump into a committed checkpoint.
struct Persist {
    store: CheckpointStore,
    target: StoreTarget,
    /// The staging checkpoint, if it was opened before the dump.
    staging: Option<Staging>,
    scratch: Scratch,
    tapped: Vec<WrittenFile>,
    /// The container's spec, unless a pre-dump.
    spec: Option<PathBuf>,
    /// The rootfs diff taken with the dump.
    diff: Option<PathBuf>,
    info: CommitInfo,
    started: Instant,
}

impl Persist {
    fn run(self) -> Result<Checkpoint> {
        let Persist { store, target, staging, scratch, tapped, spec, diff, mut info, started } = self;
        let mut staging = match staging {
            Some(staging) => staging,
            None => open_staging(&store, &target)?,
        };
        if target.route != Route::Direct {
            staging.import_criu_dir(&scratch.images)?;
        }
        for file in tapped {
            staging.add_written(file);
        }
        if let Some(spec) = &spec {
            let bytes = std::fs::read(spec).map_err(Error::io(format!("read {}", spec.display())))?;
            staging.add_file(migrate_oci::CONFIG_FILE, &bytes)?;
        }
        if let Some(diff) = &diff {
            let file = std::fs::File::open(diff).map_err(Error::io(format!("open {}", diff.display())))?;
            staging.add_file_from(migrate_oci::ROOTFS_DIFF_FILE, file)?;
        }
        drop(scratch);
        // Not paused for a diff: CRIU's own statistics say how long the
        // dump froze it.
        if info.timings.frozen_ms.is_none() {
            info.timings.frozen_ms = match criu_stats::read_dump_stats(&staging.criu_dir()) {
                Ok(stats) => stats.map(|s| s.frozen_time_us as f64 / 1000.0),
                Err(e) => {
                    warn!("CRIU's dump statistics are unreadable, the frozen time is not recorded: {e}");
                    None
                }
            };
        }
        // The commit's own hashing of leftovers and its fsyncs are not in
        // persist_ms: the manifest is written inside the commit.
        info.timings.persist_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
        Ok(staging.commit(info)?)
    }
}
