//! Ready-point checkpoints (seed 003): the shim watches the container's
//! sockets and, the moment the application listens on the configured port,
//! checkpoints it, leaving it running. Nothing is asked of the application.
//!
//! No event exists for "a socket started listening", so the watcher asks
//! the kernel (sock_diag, in the container's network namespace: see
//! `listen_probe`) at a short interval; it costs one small netlink dump per
//! interval and ends with the container.

use std::{sync::Arc, time::Duration};

use containerd_shim::protos::events::task::TaskCheckpointed;
use log::{info, warn};

mod listen_probe;

use crate::{
    capture::{self, Increment},
    container::Container,
    error::Result,
    events::Events,
    hashed,
    process::InitState,
    runc::{self, NetworkLock},
};

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
            warn!(
                "{}: cannot watch for a listener on port {}, no ready-point checkpoint: {e}",
                container.id, plan.port
            );
            return;
        }
    }
    let id = format!("{}-ready", container.id);
    match checkpoint_for_new_containers(&container, &plan.store, &id).await {
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

/// A leave-running checkpoint for new containers to start from, taken the
/// moment the app listens, before it has served anyone, and restored as
/// containers with network identities of their own. Nothing connected to
/// the source could carry on with a restored copy (and CRIU refuses to
/// dump established connections unless told to keep them), so the network
/// lock protects nothing here. Skipping it shortens the freeze and every
/// restore, which take the dump's method: unlocking the restored network
/// costs about 20 ms here, on the path of each start.
async fn checkpoint_for_new_containers(
    container: &Container,
    store: &std::path::Path,
    id: &str,
) -> Result<std::path::PathBuf> {
    let (mut request, target) = capture::own(container, store, id, Increment::Full);
    request.network_lock = runc::network_lock_skip().await.then_some(NetworkLock::Skip);
    let checkpoint = capture::into_store(container, &request, &target).await?;
    let dir = checkpoint.dir().to_path_buf();
    // Its clones will be restored from it on this host, many times over:
    // its memory images need no hashing before them, this shim hashed
    // them as it wrote them.
    let _ = tokio::task::spawn_blocking(move || hashed::written(&checkpoint)).await;
    Ok(dir)
}

/// A ready-point checkpoint to take: when the app listens on `port`, into
/// the store at `store`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyPlan {
    pub port: u16,
    pub store: std::path::PathBuf,
}
