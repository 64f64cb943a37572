//! Ready-point checkpoints (seed 003): the shim watches the container's
//! sockets and, the moment the application listens on the configured port,
//! checkpoints it, leaving it running. Nothing is asked of the application.
//!
//! No event exists for "a socket started listening", so the watcher reads
//! the container's /proc/PID/net/tcp{,6} at a short interval; it costs a
//! small file read per interval and ends with the container.

use std::{sync::Arc, time::Duration};

use containerd_shim::protos::events::task::TaskCheckpointed;
use log::{info, warn};

mod listen_probe;

use crate::{container::Container, events::Events, persist, process::InitState};

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
    match persist::checkpoint_for_new_containers(&container, &plan.store, &id).await {
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

/// A ready-point checkpoint to take: when the app listens on `port`, into
/// the store at `store`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyPlan {
    pub port: u16,
    pub store: std::path::PathBuf,
}
