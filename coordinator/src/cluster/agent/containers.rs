//! The cluster's containers on this host: made from a record (image,
//! network, snapshot, container, task, in that order, undone in reverse
//! when a step fails), listed with their states, and removed.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context as _, Result};
use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::{Container, CreateTaskRequest};
use containerd_client::types::Mount;
use prost_types::Any;

use super::context::Context;
use super::network::{self, Link};
use super::{images, spec};
use crate::host::containerd::{self, Containerd, Lease};
use crate::host::image;
use crate::proto::agent_client::AgentClient;
use crate::proto::{self, ContainerState};
use tonic::transport::Channel;

/// The label that marks a container as the cluster's in its host's
/// containerd: the agent lists and moves only those.
pub const CLUSTER_LABEL: &str = "io.containerd.migrate.cluster";
/// How long a killed container may take to die.
const KILL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a killed frozen container may take to die before it is thawed
/// (cgroup v1's freezer keeps it from dying).
const FROZEN_KILL_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The runtime every container of the cluster runs under.
pub const RUNTIME: &str = "io.containerd.migrate.v1";

/// The label that carries a container's restore policy into its host's
/// containerd, where the agent's fencing finds it (the same key as the
/// annotation the policy is given by).
pub const RESTORE_POLICY_LABEL: &str = crate::containers::RESTORE_POLICY_ANNOTATION;

/// Creates and starts container `c` on this host; returns its pid.
pub async fn create(ctx: &Context, c: &proto::Container) -> Result<u32> {
    make(ctx, c, None, None).await
}

/// Creates container `c` on this host, its image copied from `image_from`
/// if missing here, and restores its task from `checkpoint` (a checkpoint
/// directory the shim takes), or starts it cold without one; returns its
/// pid. Its spec is made from the record, as at its creation, never taken
/// from the checkpoint.
pub async fn recreate(
    ctx: &Context,
    c: &proto::Container,
    checkpoint: Option<&Path>,
    image_from: Option<AgentClient<Channel>>,
) -> Result<u32> {
    make(ctx, c, checkpoint, image_from).await
}

async fn make(
    ctx: &Context,
    c: &proto::Container,
    checkpoint: Option<&Path>,
    image_from: Option<AgentClient<Channel>>,
) -> Result<u32> {
    let spec = c.spec.as_ref().context("the request has no container spec")?;
    let identity = c.network.as_ref().context("the request has no network identity")?;
    let id = spec.id.as_str();
    images::ensure(&ctx.cd, &spec.image, &ctx.snapshotter, image_from).await?;
    let facts = image::facts(&ctx.cd, &spec.image).await?;
    let netns = blocking({
        let (id, identity, bridge) = (id.to_string(), identity.clone(), ctx.bridge()?);
        move || network::create(&id, &identity, &bridge, Link::Up)
    })
    .await?;
    let undo = Undo { cd: ctx.cd.clone(), id: id.to_string(), snapshotter: ctx.snapshotter.clone() };
    let made = async {
        let oci = spec::build(spec, facts.config.as_ref(), ctx.cd.namespace(), &netns)?;
        let oci = serde_json::to_vec(&oci).context("encode the spec")?;
        let (mounts, lease) = prepare(&ctx.cd, &ctx.snapshotter, id, &facts.chain_id.to_string()).await?;
        let mut labels = HashMap::from([(CLUSTER_LABEL.to_string(), "true".to_string())]);
        if let Some(policy) = spec.annotations.get(RESTORE_POLICY_LABEL) {
            labels.insert(RESTORE_POLICY_LABEL.to_string(), policy.clone());
        }
        let container = Container {
            id: id.to_string(),
            labels,
            image: spec.image.clone(),
            runtime: Some(Runtime { name: RUNTIME.to_string(), options: None }),
            spec: Some(Any { type_url: containerd::SPEC_TYPE_URL.to_string(), value: oci }),
            snapshotter: ctx.snapshotter.clone(),
            snapshot_key: id.to_string(),
            ..Default::default()
        };
        let created = ctx.cd.create_container(container).await;
        release(lease).await;
        if let Err(e) = created {
            undo.snapshot().await;
            return Err(e);
        }
        let created = ctx.cd.create_task(task_request(ctx, id, mounts, checkpoint)?).await;
        let pid = match created {
            Ok(pid) => pid,
            Err(e) => {
                undo.container().await;
                return Err(e);
            }
        };
        // With a checkpoint, containerd starts the restored task in the create.
        if checkpoint.is_some() {
            return Ok(pid);
        }
        match ctx.cd.start_task(id).await {
            Ok(pid) => Ok(pid),
            Err(e) => {
                undo.task().await;
                Err(e)
            }
        }
    }
    .await;
    match &made {
        // Its IP may have been another host's a moment ago: tell the
        // bridges where it is now rather than wait for them to learn it.
        Ok(_) => {
            let announced = id.to_string();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = network::announce(&announced) {
                    log::warn!("announcing the IP of {announced}: {e}");
                }
            });
        }
        Err(_) => destroy_network(id).await,
    }
    let doing = if checkpoint.is_some() { "restore" } else { "create" };
    made.with_context(|| format!("{doing} container {id} on {}", ctx.name))
}

/// Prepares snapshot `key` on `parent` under a lease: containerd's
/// collector would take a snapshot nothing refers to, so the caller
/// releases the lease ([`release`]) once the container that refers to it
/// exists.
pub async fn prepare(cd: &Containerd, snapshotter: &str, key: &str, parent: &str) -> Result<(Vec<Mount>, Lease)> {
    let (leased, lease) = cd.with_lease("cluster").await?;
    match leased.prepare_snapshot(snapshotter, key, parent).await {
        Ok(mounts) => Ok((mounts, lease)),
        Err(e) => {
            release(lease).await;
            Err(e)
        }
    }
}

pub async fn release(lease: Lease) {
    if let Err(e) = lease.release().await {
        log::warn!("{e:#} (it expires by itself within an hour)");
    }
}

/// A task of container `id` on `rootfs`, its output into the host's log
/// of it, restored from `checkpoint` (a CRIU image directory) if given.
pub fn task_request(
    ctx: &Context,
    id: &str,
    rootfs: Vec<Mount>,
    checkpoint: Option<&Path>,
) -> Result<CreateTaskRequest> {
    std::fs::create_dir_all(&ctx.logs).with_context(|| format!("create {}", ctx.logs.display()))?;
    let uri = containerd::file_log_uri(&ctx.logs.join(format!("{id}.log")));
    Ok(CreateTaskRequest {
        container_id: id.to_string(),
        rootfs,
        stdout: uri.clone(),
        stderr: uri,
        checkpoint: checkpoint.map(containerd::restore_from_path),
        ..Default::default()
    })
}

/// The cluster's containers on this host and their tasks' states.
pub async fn list(ctx: &Context) -> Result<Vec<proto::ContainerStatus>> {
    let containers = ctx.cd.containers_list(&format!("labels.\"{CLUSTER_LABEL}\"")).await?;
    let tasks: HashMap<String, (i32, u32)> =
        ctx.cd.tasks_list().await?.into_iter().map(|t| (t.id.clone(), (t.status, t.pid))).collect();
    Ok(containers
        .into_iter()
        .map(|c| {
            let (status, pid) = tasks.get(&c.id).copied().unwrap_or((0, 0));
            let state = state_of(status, tasks.contains_key(&c.id));
            proto::ContainerStatus { id: c.id, state: state.into(), pid }
        })
        .collect())
}

/// containerd's task status (`types.v1.Status`) as the cluster's state; no
/// task is a container created and not started, or stopped and deleted.
fn state_of(status: i32, has_task: bool) -> ContainerState {
    use containerd_client::types::v1::Status;
    if !has_task {
        return ContainerState::Stopped;
    }
    match Status::try_from(status) {
        Ok(Status::Created) => ContainerState::Created,
        Ok(Status::Running) => ContainerState::Running,
        Ok(Status::Paused | Status::Pausing) => ContainerState::Paused,
        Ok(Status::Stopped) => ContainerState::Stopped,
        Ok(Status::Unknown) | Err(_) => ContainerState::Unknown,
    }
}

/// Removes container `id` and everything of it on this host: its task
/// (killed; a frozen one is thawed after the kill so that it dies without
/// running again), container, snapshot and network. What is already gone
/// is skipped.
pub async fn remove(ctx: &Context, id: &str) -> Result<()> {
    if let Some(task) = ctx.cd.task(id).await? {
        use containerd_client::types::v1::Status;
        if task.status != Status::Stopped as i32 {
            ctx.cd.kill_task(id, nix::sys::signal::Signal::SIGKILL as u32).await?;
            // cgroup v2 lets SIGKILL end frozen processes, v1's freezer
            // does not: thaw them, but only if they are still there after
            // a moment. A thaw before they died would let a stale copy (a
            // fenced container) run for an instant beside the live one.
            let paused = matches!(Status::try_from(task.status), Ok(Status::Paused | Status::Pausing));
            let died = paused && tokio::time::timeout(FROZEN_KILL_WAIT, ctx.cd.wait_task(id)).await.is_ok();
            if paused
                && !died
                && let Err(e) = ctx.cd.resume_task(id).await
            {
                log::debug!("thawing {id} after its kill: {e:#}");
            }
            if !died {
                tokio::time::timeout(KILL_TIMEOUT, ctx.cd.wait_task(id))
                    .await
                    .map_err(|_| anyhow::anyhow!("container {id} did not die within {KILL_TIMEOUT:?} of SIGKILL"))??;
            }
        }
        ctx.cd.delete_task(id).await?;
    }
    let undo = Undo { cd: ctx.cd.clone(), id: id.to_string(), snapshotter: ctx.snapshotter.clone() };
    undo.container().await;
    destroy_network(id).await;
    Ok(())
}

async fn destroy_network(id: &str) {
    let id = id.to_string();
    if let Err(e) = blocking(move || network::destroy(&id)).await {
        log::warn!("cleaning up: {e:#}");
    }
}

/// Removes what a failed creation made, newest first; failures here are
/// logged but do not hide the original error.
pub struct Undo {
    pub cd: Containerd,
    pub id: String,
    pub snapshotter: String,
}

impl Undo {
    pub async fn task(&self) {
        if let Err(e) = self.cd.delete_task(&self.id).await {
            log::warn!("cleaning up: {e:#}");
        }
        self.container().await;
    }

    pub async fn container(&self) {
        if let Err(e) = self.cd.delete_container(&self.id).await
            && !containerd::is_code(&e, containerd_client::tonic::Code::NotFound)
        {
            log::warn!("cleaning up: {e:#}");
        }
        self.snapshot().await;
    }

    pub async fn snapshot(&self) {
        if let Err(e) = self.cd.remove_snapshot(&self.snapshotter, &self.id).await
            && !containerd::is_code(&e, containerd_client::tonic::Code::NotFound)
        {
            log::warn!("cleaning up: {e:#}");
        }
    }
}

/// Runs blocking work (commands, file walks) off the async runtime.
pub async fn blocking<T, E>(work: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T>
where
    T: Send + 'static,
    E: Into<anyhow::Error> + Send + 'static,
{
    tokio::task::spawn_blocking(work).await.context("a blocking task of the agent panicked")?.map_err(Into::into)
}
