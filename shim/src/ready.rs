//! Ready-point checkpoints (seed 003): the shim watches the container's
//! sockets and, the moment the application listens on the configured port,
//! checkpoints it, leaving it running. Nothing is asked of the application.
//!
//! No event exists for "a socket started listening", so the watcher reads
//! the container's /proc/PID/net/tcp{,6} at a short interval; it costs a
//! small file read per interval and ends with the container.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use containerd_shim::protos::events::task::TaskCheckpointed;
use log::{info, warn};
use migrate_oci::{CheckpointStore, CommitInfo, ContainerInfo, RootfsInfo, Timings, criu_stats};

use crate::{
    container::Container,
    error::{Error, Result},
    events::Events,
    process::InitState,
    runc::{CheckpointOptions, CriuOptions, Pages},
};

/// RAM-backed, so the container is frozen only for as long as CRIU needs to
/// copy its memory; hashing and writing to the store happen after it runs on.
pub const STAGING_ROOT: &str = "/run/containerd-migrate/staging";

/// Short enough that the checkpoint is taken right when the app is ready,
/// long enough that the watch costs nothing measurable.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(5);

/// Waits until the container listens on the plan's port, then checkpoints
/// it into the store as `<container id>-ready`, replacing an older one.
/// Ends quietly if the container stops first.
pub async fn checkpoint_when_ready(container: Arc<Container>, plan: ReadyPlan, events: Events) {
    let mut probe = tokio::time::interval(PROBE_INTERVAL);
    loop {
        probe.tick().await;
        let pid = match container.init.state() {
            InitState::Running { pid } | InitState::Paused { pid } => pid,
            InitState::Created { .. } | InitState::CreatedFromCheckpoint { .. } | InitState::Stopped { .. } => return,
        };
        if listening(pid, plan.port) {
            break;
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
    let staging = Path::new(STAGING_ROOT).join(format!("{}-{id}", container.namespace()));
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

/// Whether a socket in the network namespace of `pid` listens on `port`.
pub fn listening(pid: u32, port: u16) -> bool {
    ["tcp", "tcp6"].iter().any(|table| {
        std::fs::read_to_string(format!("/proc/{pid}/net/{table}"))
            .map(|text| table_listens(&text, port))
            .unwrap_or(false)
    })
}

/// Parses a /proc/net/tcp table: "sl local_address rem_address st ...",
/// addresses as HEXIP:HEXPORT, state 0A for LISTEN.
fn table_listens(text: &str, port: u16) -> bool {
    const LISTEN: &str = "0A";
    text.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1);
        let state = fields.nth(1);
        let local_port = local.and_then(|l| l.rsplit_once(':')).and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        state == Some(LISTEN) && local_port == Some(port)
    })
}

/// A ready-point checkpoint to take: when the app listens on `port`, into
/// the store at `store`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyPlan {
    pub port: u16,
    pub store: std::path::PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0 100 0 0 10 0
   1: 0100007F:0050 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 1235 1 0 100 0 0 10 0";

    #[test]
    fn finds_listening_ports_only() {
        assert!(table_listens(TCP, 8080));
        // Port 80 has an established connection, not a listener.
        assert!(!table_listens(TCP, 80));
        assert!(!table_listens(TCP, 9090));
    }

    #[test]
    fn sees_a_real_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(listening(std::process::id(), port));
        drop(listener);
        assert!(!listening(std::process::id(), port));
    }
}
