//! Starting the init from a checkpoint: `runc restore` while the memory
//! images' digests are checked (the memory gate), once more after CRIU's
//! misplaced vDSO, and a cold start instead when the checkpoint was only
//! the annotation's wish and its memory turns out damaged.

use std::{path::Path, time::Instant};

use containerd_shim::{protos::shim::oci::Options, protos::types::mount::Mount, util::read_pid_from_file};
use log::{error, info, warn};
use migrate_oci::DeferredDigests;

use super::Container;
use crate::{
    capture::fresh_dir,
    checkpoint::RestoreCriuOptions,
    error::{Error, Result, blocking},
    exits::ProcessKey,
    image_origin,
    lazy_pages::{self, PageSource},
    netns,
    process::{InitState, Lifecycle},
    restore_gate::MemoryGate,
    restore_source::RestoreSource,
    rootfs::{MountedRootfs, Overlay},
    runc::{self, CriuConfig, RestoreOptions},
    same_image::Image,
    stdio::PendingIo,
};

/// The digests of the memory images a restore checks while CRIU works
/// ([`MemoryGate`]), and, when the checkpoint was only the annotation's
/// wish, how to start cold instead should they not match.
pub(super) struct PendingMemory {
    pub digests: DeferredDigests,
    pub cold: Option<ColdStart>,
}

/// What `runc create` needs after a restore that never ran: the runtime
/// options and, if the checkpoint's changes went into the root file system
/// (an overlay's writable layer that was empty before), its mounts, to put
/// it back as it was.
pub(super) struct ColdStart {
    pub options: Options,
    pub undo_rootfs: Option<Vec<Mount>>,
}

impl Container {
    /// annotation's wish and its memory images turn out damaged, starts it
    /// cold instead.
    pub(super) async fn restore(&self, image: &Path) -> Result<(u32, Option<i32>)> {
        let pending = self.pending_memory.lock().unwrap().take();
        let (digests, cold) = match pending {
            Some(PendingMemory { digests, cold }) => (Some(digests), cold),
            None => (None, None),
        };
        let mut restored = self.restore_checked(image, digests).await;
        if let Err(e) = &restored
            && is_vdso_misplaced(e)
        {
            // Nothing ran, and the memory's digests, if any were pending,
            // matched (a mismatch is reported instead of CRIU's error).
            warn!("{}: retrying the restore once: {e}", self.id);
            match self.ctx.runc.delete(&self.id, true).await {
                Ok(()) | Err(runc::Error::NotFound { .. }) => {}
                Err(e) => warn!("{}: {e}", self.id),
            }
            restored = self.restore_checked(image, None).await;
        }
        match (restored, cold) {
            (Err(Error::Checkpoint(damaged @ migrate_oci::Error::Damaged { .. })), Some(cold)) => {
                warn!("{}: starting cold instead of from {}: {damaged}", self.id, image.display());
                self.start_cold(cold).await
            }
            (result, _) => result,
        }
    }

    /// Restores the init from `image`, checking `digests` of its memory
    /// images while CRIU works; the restored processes run only if they match.
    async fn restore_checked(&self, image: &Path, digests: Option<DeferredDigests>) -> Result<(u32, Option<i32>)> {
        let recorded = RestoreCriuOptions::read(image)?;
        let criu = recorded.to_criu();
        let tcp_close = criu.tcp_close;
        let work = self.bundle.join("criu-restore-work");
        fresh_dir(&work)?;
        let lazy = match recorded.lazy_pages {
            true => Some(lazy_pages::Daemon::start(image, &work, &PageSource::read(image)?).await?),
            false => None,
        };
        let restored = self.restore_with(image, digests, criu, tcp_close, &work, lazy.is_some()).await;
        match (lazy, &restored) {
            (Some(daemon), Ok(_)) => {
                let (runc, id) = (self.ctx.runc.clone(), self.id.clone());
                daemon.watch(image.to_path_buf(), async move {
                    if let Err(e) = runc.kill(&id, nix::sys::signal::Signal::SIGKILL as u32, true).await {
                        error!("{id}: could not kill it after its pages stopped coming: {e}");
                    }
                });
            }
            (Some(daemon), Err(_)) => daemon.kill().await,
            (None, _) => {}
        }
        restored
    }

    /// [`Self::restore_checked`] once the work directory (and, for a lazy
    /// restore, the daemon serving its pages) is ready.
    async fn restore_with(
        &self,
        image: &Path,
        digests: Option<DeferredDigests>,
        criu: runc::CriuOptions,
        tcp_close: bool,
        work: &Path,
        lazy_pages: bool,
    ) -> Result<(u32, Option<i32>)> {
        let mut gate = digests.map(|d| MemoryGate::start(work, d)).transpose()?;
        if gate.is_some() && !runc::config_scripts_under_runc().await {
            // This CRIU cannot be made to wait: the digests come first.
            if let Some(gate) = gate.take() {
                gate.verdict().await?;
            }
        }
        let pid_file = self.bundle.join("init.pid");
        let (pending, runc_stdio) = PendingIo::prepare(&self.init.stdio, self.ctx.owner, &self.ctx.logger_env())?;
        let starting = self.ctx.exits.begin_start();
        let opts = RestoreOptions {
            bundle: &self.bundle,
            image_path: image,
            work_path: work,
            pid_file: &pid_file,
            console_socket: pending.console_socket(),
            no_pivot: self.no_pivot,
            lazy_pages,
            criu,
            config: CriuConfig {
                action_script: gate.as_ref().map(|g| g.script().to_owned()),
                tcp_close,
                ..Default::default()
            },
        };
        let restoring = Instant::now();
        let restored = self.ctx.runc.restore(&self.id, &opts, runc_stdio).await;
        let verdict = match gate {
            Some(gate) => gate.verdict().await,
            None => Ok(()),
        };
        if let Err(damaged) = verdict {
            // CRIU's action script stopped the restore before anything ran;
            // had it not, what runs now is killed.
            if restored.is_ok() {
                error!("{}: restored from damaged memory images; killing it", self.id);
                if let Err(e) = self.ctx.runc.delete(&self.id, true).await {
                    warn!("{}: {e}", self.id);
                }
            }
            pending.abort().await;
            return Err(damaged);
        }
        if let Err(e) = restored {
            pending.abort().await;
            return Err(e.into());
        }
        info!("{}: runc restored it in {:?}", self.id, restoring.elapsed());
        self.init.set_io(pending.finish().await?);
        let pid = read_pid_from_file(&pid_file)
            .await
            .map_err(Error::shim(format!("read the pid file {}", pid_file.display())))? as u32;
        if let Err(e) = netns::loopback_up(pid) {
            warn!("{}: restored, but loopback stays down: {e}", self.id);
        }
        let key = ProcessKey { container: self.id.clone(), exec: None };
        Ok((pid, self.ctx.exits.register(pid, key, &starting)))
    }

    /// Starts the init cold after a restore that never ran: the root file
    /// system goes back to the image's if the checkpoint changed it (the
    /// writable layer was empty before), then `runc create` and `start`.
    async fn start_cold(&self, cold: ColdStart) -> Result<(u32, Option<i32>)> {
        // runc removes a container whose restore failed; this is in case not.
        match self.ctx.runc.delete(&self.id, true).await {
            Ok(()) | Err(runc::Error::NotFound { .. }) => {}
            Err(e) => warn!("{}: {e}", self.id),
        }
        if let Some(mounts) = &cold.undo_rootfs {
            // Taken and dropped: unmounted.
            let target = self.rootfs.lock().unwrap().take().map(|mounted| mounted.path().to_owned());
            if let Some(target) = target {
                if let Some(upper) = self.overlay.as_ref().and_then(|o| o.upper.as_deref()) {
                    empty_dir(upper).map_err(Error::io(format!("empty the writable layer {}", upper.display())))?;
                }
                let mounted = MountedRootfs::mount(mounts, &target).await?;
                *self.rootfs.lock().unwrap() = Some(mounted);
            }
        }
        let (state, io) = self.ctx.create_init(&cold.options, &self.init.stdio).await?;
        self.init.set_io(io);
        match state {
            InitState::Created { pid } => {
                self.ctx.runc.start(&self.id).await?;
                Ok((pid, None))
            }
            InitState::Stopped { pid, exit } => Ok((pid, Some(exit.status as i32))),
            s @ (InitState::CreatedFromCheckpoint { .. } | InitState::Running { .. } | InitState::Paused { .. }) => {
                Err(Error::WrongState { verb: "start", state: s.name() })
            }
        }
    }
}

/// CRIU 4.2 asks the kernel for a fresh vDSO at an address its restorer
/// still occupies, now and then: the kernel maps it elsewhere, CRIU parses
/// the wrong memory and fails with "vdso: Invalid ELF magic" before any
/// restored process runs (checkpoint-restore/criu#3012, unfixed upstream).
/// Another attempt gets another address layout.
fn is_vdso_misplaced(e: &Error) -> bool {
    matches!(e, Error::Runc(runc::Error::Criu { line, .. }) if line.contains("vdso: Invalid ELF magic"))
}

/// Checks the checkpoint at `path` off the reactor (hashing a large one
/// takes a while, and other containers of this shim must not wait for it):
/// all but its memory images' digests, which the restore checks while CRIU
/// works; then that it was taken from this container's image, which
/// containerd has told (`origin`) meanwhile. A `wish` (the annotation's
/// checkpoint) falls back to a cold start when those do not match, which
/// needs the root file system as it was: so its memory is checked now too
/// if the checkpoint's changes would go where they cannot be taken back
/// out (anything but an overlay's empty writable layer).
pub(super) async fn check_source(
    path: &Path,
    overlay: Option<&Overlay>,
    origin: &image_origin::Lookup,
    wish: bool,
) -> Result<RestoreSource> {
    let path = path.to_path_buf();
    let source = blocking("verify the checkpoint", move || RestoreSource::check(&path)).await?;
    source.check_image(&Image::of(origin.answer().await, overlay))?;
    let undoable = overlay.and_then(|o| o.upper.as_deref()).is_some_and(is_empty_dir);
    if wish && source.changes_rootfs() && !undoable {
        return blocking("verify the checkpoint's memory images", move || {
            let mut source = source;
            source.verify_memory_now()?;
            Ok(source)
        })
        .await;
    }
    Ok(source)
}

fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
}

/// Removes everything in `dir`, keeping `dir`.
fn empty_dir(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.symlink_metadata()?.is_dir() { std::fs::remove_dir_all(&path)? } else { std::fs::remove_file(&path)? }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn only_the_misplaced_vdso_is_retried() {
        let criu = |line: &str| {
            Error::Runc(runc::Error::Criu {
                command: "restore",
                line: line.into(),
                hint: None,
                log: "/b/restore.log".into(),
            })
        };
        assert!(is_vdso_misplaced(&criu(
            "(00.038968) pie: 6: Error (criu/pie/util-vdso.c:107): vdso: Invalid ELF magic"
        )));
        assert!(!is_vdso_misplaced(&criu("(00.060379) Error (criu/sk-inet.c:200): inet: Connected TCP socket")));
        assert!(!is_vdso_misplaced(&Error::InvalidArgument("vdso: Invalid ELF magic".into())));
    }
}
