//! Ready-point checkpoints (seed 003): the shim watches the container's
//! sockets and, the moment the application listens on the configured port,
//! checkpoints it, leaving it running. Nothing is asked of the application.
//!
//! No event exists for "a socket started listening", so the watcher reads
//! the container's /proc/PID/net/tcp{,6} at a short interval; it costs a
//! small file read per interval and ends with the container.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use containerd_shim::protos::events::task::TaskCheckpointed;
use log::{info, warn};
use migrate_oci::{CheckpointStore, CommitInfo, ContainerInfo, RootfsInfo, Timings, criu_stats};

mod listen_probe;

use crate::{
    container::Container,
    error::{Error, Result},
    events::Events,
    process::InitState,
    runc::{CheckpointOptions, CriuOptions, Pages},
};

/// Where dumps are staged: RAM-backed, so the container is frozen only for
/// as long as CRIU needs to copy its memory; hashing and writing to the
/// store happen after it runs on. /run is a tmpfs on most hosts but not on
/// all (not on this project's test machines), /dev/shm is one everywhere.
fn staging_root() -> PathBuf {
    // (staging directory, the file system it lives on)
    const CANDIDATES: [(&str, &str); 2] =
        [("/run/containerd-migrate/staging", "/run"), ("/dev/shm/containerd-migrate-staging", "/dev/shm")];
    let in_ram = |fs: &str| {
        nix::sys::statfs::statfs(fs).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
    };
    let (dir, _) = CANDIDATES.into_iter().find(|(_, fs)| in_ram(fs)).unwrap_or(CANDIDATES[1]);
    PathBuf::from(dir)
}

/// Short enough that the checkpoint is taken right when the app is ready,
/// long enough that the watch costs nothing measurable.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(5);

/// Waits until the container listens on the plan's port, then checkpoints
/// it into the store as `<container id>-ready`, replacing an older one.
/// Ends quietly if the container stops first.
pub async fn checkpoint_when_ready(container: Arc<Container>, plan: ReadyPlan, events: Events) {
    let pid = match container.init.state() {
        InitState::Running { pid } | InitState::Paused { pid } => pid,
        InitState::Created { .. } | InitState::CreatedFromCheckpoint { .. } | InitState::Stopped { .. } => return,
    };
    match listen_probe::wait(pid, plan.port, PROBE_INTERVAL).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            warn!("{}: cannot watch for a listener on port {}, no ready-point checkpoint: {e}", container.id, plan.port);
            return;
        }
    }
    let id = format!("{}-ready", container.id);
    match take(&container, &plan, &id).await {
        Ok(dir) => {
            info!("{}: listening on port {}; ready-point checkpoint {}", container.id, plan.port, dir.display());
            events
                .publish(TaskCheckpointed {
                    container_id: container.id.clone(),
                    checkpoint: dir.display().to_string(),
                    ..Default::default()
                })
                .await;
        }
        Err(e) => warn!("{}: ready-point checkpoint failed, the container runs on: {e}", container.id),
    }
}

async fn take(container: &Container, plan: &ReadyPlan, id: &str) -> Result<PathBuf> {
    let staging = staging_root().join(format!("{}-{id}", container.namespace()));
    let opts = CheckpointOptions {
        image_path: staging.clone(),
        work_path: container.bundle.join("criu-work"),
        parent_path: None,
        leave_running: true,
        pre_dump: false,
        pages: Pages::Local,
        criu: CriuOptions { shell_job: container.init.stdio.terminal, ..Default::default() },
    };
    let started = Instant::now();
    {
        let _lifecycle = container.lifecycle.lock().await;
        container.checkpoint(&opts).await?;
    }
    let dump_ms = started.elapsed().as_secs_f64() * 1000.0;

    let persist = Persist {
        store: plan.store.clone(),
        id: id.to_string(),
        staging: staging.clone(),
        spec: container.bundle.join("config.json"),
        upper: container.overlay.as_ref().and_then(|o| o.upper.clone()),
        lowers: container.overlay.as_ref().map(|o| o.lowers.clone()),
        container: ContainerInfo {
            id: container.id.clone(),
            namespace: container.namespace().to_string(),
            image: None,
            runtime: crate::RUNTIME_ID.to_string(),
        },
        dump_ms,
    };
    let persisted = tokio::task::spawn_blocking(move || persist.run()).await;
    let _ = std::fs::remove_dir_all(&staging);
    match persisted {
        Ok(result) => result,
        Err(e) => Err(Error::io("persist the ready-point checkpoint")(std::io::Error::other(e))),
    }
}

/// Turning a dump in the staging directory into a committed checkpoint.
struct Persist {
    store: PathBuf,
    id: String,
    staging: PathBuf,
    spec: PathBuf,
    upper: Option<PathBuf>,
    lowers: Option<Vec<PathBuf>>,
    container: ContainerInfo,
    dump_ms: f64,
}

impl Persist {
    fn run(self) -> Result<PathBuf> {
        let started = Instant::now();
        let store = CheckpointStore::open(&self.store)?;
        if store.get(&self.id).is_ok() {
            store.remove(&self.id)?;
        }
        let mut staging = store.staging(&self.id)?;
        staging.import_criu_dir(&self.staging)?;
        let spec = std::fs::read(&self.spec).map_err(Error::io(format!("read {}", self.spec.display())))?;
        staging.add_file("config.json", &spec)?;
        if let Some(upper) = &self.upper {
            staging.add_rootfs_diff(upper)?;
        }
        let frozen_ms = criu_stats::read_dump_stats(&staging.criu_dir())
            .ok()
            .flatten()
            .map(|s| s.frozen_time_us as f64 / 1000.0);
        let checkpoint = staging.commit(CommitInfo {
            container: self.container,
            parent: None,
            leave_running: true,
            rootfs: self.lowers.map(|lower_dirs| RootfsInfo { lower_dirs }),
            timings: Timings {
                frozen_ms,
                dump_ms: Some(self.dump_ms),
                persist_ms: Some(started.elapsed().as_secs_f64() * 1000.0),
            },
        })?;
        Ok(checkpoint.dir().to_path_buf())
    }
}

/// A ready-point checkpoint to take: when the app listens on `port`, into
/// the store at `store`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyPlan {
    pub port: u16,
    pub store: std::path::PathBuf,
}
