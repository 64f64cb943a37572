//! The target's steps: make everything the container needs but its task
//! (image, network with its link down, snapshot, container), take what the source sends, restore the task and give
//! it the network; or undo all of it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, Result, anyhow, bail};
use containerd_client::services::v1::Container;
use containerd_client::services::v1::container::Runtime;
use containerd_client::types::Mount;
use prost_types::Any;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tonic::Streaming;
use tonic::transport::Channel;

use super::{Migration, criu_images, dir, features, layer, pages, parent_of, round_dir};
use crate::agent::containers::{self, Undo, blocking};
use crate::agent::context::Context;
use crate::agent::images::{self, ImageFrom};
use crate::agent::network::{self, Link};
use crate::host::containerd;
use crate::host::image;
use crate::host::pipe;
use crate::proto::agent_client::AgentClient;
use crate::proto::{
    MigrationRef, PagesProgress, PrepareTargetRequest, PrepareTargetResponse, ReceiveResponse, RestoreTargetResponse,
    TransferChunk, TransferKind,
};

/// The label naming the migration that made a container on its target:
/// an abort removes only a container it made.
pub const MIGRATION_LABEL: &str = "io.containerd.migrate.migration";

/// What the target keeps between its steps.
pub struct Target {
    container: String,
    upper: PathBuf,
    rootfs: Vec<Mount>,
    images: PathBuf,
    /// Post-copy: restored, its memory arriving ([`pages::watch`]).
    pulling: Option<watch::Receiver<PagesProgress>>,
    /// Pre-copy: the rounds in.
    rounds: u32,
}

impl Target {
    pub fn container(&self) -> &str {
        &self.container
    }
}

/// Gets everything ready for the restore but the task.
pub async fn prepare(
    ctx: &Context,
    req: &PrepareTargetRequest,
    source: AgentClient<Channel>,
) -> Result<PrepareTargetResponse> {
    let m = req.migration.as_ref().context("the request names no migration")?;
    let c = req.container.as_ref().context("the request has no container")?;
    let described = req.source.as_ref().context("the request has no description of the source's container")?;
    let identity = c.network.as_ref().context("the container has no network identity")?;
    let id = m.container_id.clone();
    if ctx.cd.container(&id).await.is_ok() {
        bail!("{} has a container {id} already", ctx.name);
    }

    let from = images::ensure(&ctx.cd, &described.image, &ctx.snapshotter, Some(source)).await?;
    let chain_id = image::rootfs_chain_id(&ctx.cd, &described.image).await?.to_string();
    if chain_id != described.chain_id {
        bail!(
            "image {} is not the same here: its layers' chain ID is {chain_id} on {}, {} on the source",
            described.image,
            ctx.name,
            described.chain_id
        );
    }
    let netns = {
        let (id, identity, bridge) = (id.clone(), identity.clone(), ctx.bridge()?);
        blocking(move || network::create(&id, &identity, &bridge, Link::Down)).await?
    };
    let made = make(ctx, m, described, &chain_id).await;
    let target = match made {
        Ok(target) => target,
        Err(e) => {
            let id = id.clone();
            let _ = blocking(move || network::destroy(&id)).await;
            return Err(e);
        }
    };
    log::info!("migration {}: {id} prepared here (network namespace {})", m.migration_id, netns.display());
    ctx.migrations.lock().await.insert(m.migration_id.clone(), Migration::Target(target));
    let (image_from, image_bytes) = match from {
        ImageFrom::Present => ("present", 0),
        ImageFrom::Registry => ("registry", 0),
        ImageFrom::Source { bytes } => ("source", bytes),
    };
    Ok(PrepareTargetResponse {
        image_from: image_from.to_string(),
        image_bytes,
        post_copy_unavailable: features::post_copy_target().await.unwrap_or_default(),
    })
}

/// The snapshot, the container (the source's spec, which names the
/// network namespace at the same path here) and the images' directory.
async fn make(
    ctx: &Context,
    m: &MigrationRef,
    described: &crate::proto::DescribeResponse,
    chain_id: &str,
) -> Result<Target> {
    let id = m.container_id.as_str();
    let (rootfs, lease) = containers::prepare(&ctx.cd, &ctx.snapshotter, id, chain_id).await?;
    let undo = Undo { cd: ctx.cd.clone(), id: id.to_string(), snapshotter: ctx.snapshotter.clone() };
    let upper = match layer::upper_dir(&ctx.cd, &ctx.snapshotter, id).await {
        Ok(upper) => upper,
        Err(e) => {
            containers::release(lease).await;
            undo.snapshot().await;
            return Err(e);
        }
    };
    let mut labels: HashMap<String, String> = described.labels.clone();
    labels.insert(containers::CLUSTER_LABEL.to_string(), "true".to_string());
    labels.insert(MIGRATION_LABEL.to_string(), m.migration_id.clone());
    let container = Container {
        id: id.to_string(),
        labels,
        image: described.image.clone(),
        runtime: Some(Runtime { name: containers::RUNTIME.to_string(), options: None }),
        spec: Some(Any { type_url: containerd::SPEC_TYPE_URL.to_string(), value: described.spec.clone() }),
        snapshotter: ctx.snapshotter.clone(),
        snapshot_key: id.to_string(),
        ..Default::default()
    };
    let created = ctx.cd.create_container(container).await;
    containers::release(lease).await;
    if let Err(e) = created {
        undo.snapshot().await;
        return Err(e);
    }
    let images = dir(ctx, &m.migration_id).join("images");
    let _ = std::fs::remove_dir_all(&images);
    if let Err(e) = std::fs::create_dir_all(&images) {
        undo.container().await;
        return Err(anyhow!("create {}: {e}", images.display()));
    }
    Ok(Target { container: id.to_string(), upper, rootfs, images, pulling: None, rounds: 0 })
}

/// Takes one stream from the source: layer changes or images.
pub async fn receive(ctx: &Context, mut stream: Streaming<TransferChunk>) -> Result<ReceiveResponse> {
    let head = stream.next().await.context("the stream ended before its first chunk")??;
    let m = head.migration.clone().context("the stream's first chunk names no migration")?;
    let kind = TransferKind::try_from(head.kind).map_err(|_| anyhow!("unknown transfer kind {}", head.kind))?;
    let (upper, images, rounds) = match ctx.migrations.lock().await.get(&m.migration_id) {
        Some(Migration::Target(t)) if t.container == m.container_id => (t.upper.clone(), t.images.clone(), t.rounds),
        _ => bail!("{} prepares no migration {} of {}", ctx.name, m.migration_id, m.container_id),
    };
    match kind {
        TransferKind::Layer => receive_layer(upper, head, stream).await,
        TransferKind::Images => receive_images(images, head, stream).await,
        TransferKind::Round => receive_round(ctx, &m, rounds, head, stream).await,
        TransferKind::Probe => {
            let mut bytes = head.data.len() as u64;
            while let Some(chunk) = stream.next().await {
                bytes += chunk?.data.len() as u64;
            }
            Ok(ReceiveResponse { bytes })
        }
        TransferKind::Unspecified => bail!("the stream does not say what it carries"),
    }
}

/// A layer delta, applied as it arrives (blocking, through a pipe).
async fn receive_layer(
    upper: PathBuf,
    head: TransferChunk,
    mut stream: Streaming<TransferChunk>,
) -> Result<ReceiveResponse> {
    let (tx, reader) = pipe::reader();
    // Spawned now, not when awaited: it must drain the channel meanwhile.
    let consumer = tokio::task::spawn_blocking(move || layer::apply(&upper, reader));
    let mut bytes = head.data.len() as u64;
    let mut forwarded = Ok(());
    if !head.data.is_empty() {
        let _ = tx.send(Ok(head.data)).await;
    }
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                bytes += chunk.data.len() as u64;
                if tx.send(Ok(chunk.data)).await.is_err() {
                    break;
                }
            }
            Err(status) => {
                let _ = tx.send(Err(std::io::Error::other(status.message().to_string()))).await;
                forwarded = Err(anyhow!("the source's stream broke: {}", status.message()));
                break;
            }
        }
    }
    drop(tx);
    consumer.await.context("applying the layer panicked")??;
    forwarded?;
    Ok(ReceiveResponse { bytes })
}

/// CRIU's images, each chunk written where it says.
async fn receive_images(
    dir: PathBuf,
    head: TransferChunk,
    mut stream: Streaming<TransferChunk>,
) -> Result<ReceiveResponse> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<TransferChunk>(8);
    // Spawned now, not when awaited: it must drain the channel meanwhile.
    let writer = tokio::task::spawn_blocking(move || {
        let mut bytes = 0u64;
        while let Some(chunk) = rx.blocking_recv() {
            bytes += chunk.data.len() as u64;
            criu_images::write(&dir, &chunk)?;
        }
        anyhow::Ok(bytes)
    });
    let mut forwarded = Ok(());
    if !head.file.is_empty() {
        let _ = tx.send(head).await;
    }
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                if tx.send(chunk).await.is_err() {
                    break;
                }
            }
            Err(status) => {
                forwarded = Err(anyhow!("the source's stream broke: {}", status.message()));
                break;
            }
        }
    }
    drop(tx);
    let bytes = writer.await.context("writing the images panicked")??;
    forwarded?;
    Ok(ReceiveResponse { bytes })
}

/// A pre-copy round's images, into their own directory with the round
/// before as its parent.
async fn receive_round(
    ctx: &Context,
    m: &MigrationRef,
    rounds: u32,
    head: TransferChunk,
    stream: Streaming<TransferChunk>,
) -> Result<ReceiveResponse> {
    let round = head.round;
    if round != rounds + 1 {
        bail!("migration {} has had {rounds} rounds on {}; round {round} cannot come next", m.migration_id, ctx.name);
    }
    let dir = round_dir(&dir(ctx, &m.migration_id), round);
    // Left over from a round that failed: never build on it.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    link_parent(&dir, round, rounds)?;
    let received = receive_images(dir, head, stream).await?;
    if let Some(Migration::Target(t)) = ctx.migrations.lock().await.get_mut(&m.migration_id) {
        t.rounds = round;
    }
    Ok(received)
}

/// Links round `round`'s directory `dir` to the one it builds on, as CRIU
/// did on the source (none for the first round).
fn link_parent(dir: &Path, round: u32, rounds: u32) -> Result<()> {
    let Some(parent) = parent_of(round, rounds) else { return Ok(()) };
    let link = dir.join("parent");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&parent, &link)
        .with_context(|| format!("link {} to {}", link.display(), parent.display()))
}

/// Restores the task from what arrived, then gives it the network: link
/// up (the source's is down since its freeze) and the IP announced. For a
/// post-copy (`page_server` not empty), the runtime pulls the memory from
/// the source's page server meanwhile ([`pages`]).
pub async fn restore(ctx: &Arc<Context>, m: &MigrationRef, page_server: &str) -> Result<RestoreTargetResponse> {
    let started = Instant::now();
    let (rootfs, images, rounds) = match ctx.migrations.lock().await.get(&m.migration_id) {
        Some(Migration::Target(t)) if t.container == m.container_id => (t.rootfs.clone(), t.images.clone(), t.rounds),
        _ => bail!("{} prepares no migration {} of {}", ctx.name, m.migration_id, m.container_id),
    };
    // A pre-copy's dump holds what changed since its last round; the rest
    // of the memory is in the rounds.
    link_parent(&images, 0, rounds)?;
    let lazy = !page_server.is_empty();
    if lazy {
        pages::name_source(&images, page_server, &ctx.tls_files)?;
    }
    let id = m.container_id.clone();
    let task = containers::task_request(ctx, &id, rootfs, Some(&images))?;
    // With a checkpoint, containerd starts the restored task in the create.
    let pid = ctx.cd.create_task(task).await.context("restore the container")?;
    let running_unix_ms = crate::membership::now();
    let restore_ms = started.elapsed().as_secs_f64() * 1000.0;
    let link_id = id.clone();
    blocking(move || network::set_link(&link_id, Link::Up)).await.context("give the restored container its network")?;
    // It runs and its link is up: peers that retransmit reach it once the
    // bridges learn where it is, which the announcement (a few ARP
    // replies, 50 ms apart) speeds up but need not hold the answer for.
    let announced = id.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = network::announce(&announced) {
            log::warn!("announcing the IP of {announced}: {e}");
        }
    });
    if lazy {
        // The images stay until every page is here; a transfer that fails
        // leaves nothing behind here, whoever is listening.
        let (tx, rx) = watch::channel(PagesProgress::default());
        if let Some(Migration::Target(t)) = ctx.migrations.lock().await.get_mut(&m.migration_id) {
            t.pulling = Some(rx);
        }
        let (ctx, m, images) = (ctx.clone(), m.clone(), images.clone());
        tokio::spawn(async move {
            match pages::watch(images, pid, tx).await {
                // The entry stays for AwaitPages to read the last report.
                pages::Watched::Complete => {
                    let _ = std::fs::remove_dir_all(dir(&ctx, &m.migration_id));
                }
                pages::Watched::Failed => {
                    log::warn!(
                        "migration {}: the memory did not all arrive (the runtime killed {}); removing it here",
                        m.migration_id,
                        m.container_id
                    );
                    if let Err(e) = abort(&ctx, &m).await {
                        log::error!("migration {}: removing {}: {e:#}", m.migration_id, m.container_id);
                    }
                }
                // The coordinator decides, from what the source says.
                pages::Watched::Unknown => {}
            }
        });
    } else {
        ctx.migrations.lock().await.remove(&m.migration_id);
        let _ = std::fs::remove_dir_all(dir(ctx, &m.migration_id));
    }
    Ok(RestoreTargetResponse { pid, running_unix_ms, restore_ms })
}

/// Reports on `tx` how the memory of post-copy `m` arrives, until it is
/// all here (the migration's files go then) or the transfer failed (the
/// runtime killed the container; the abort cleans up).
pub async fn await_pages(ctx: &Context, m: &MigrationRef, tx: mpsc::Sender<Result<PagesProgress, tonic::Status>>) {
    let rx = match ctx.migrations.lock().await.get(&m.migration_id) {
        Some(Migration::Target(t)) if t.container == m.container_id => t.pulling.clone(),
        _ => None,
    };
    match rx {
        Some(rx) => {
            pages::forward(rx.clone(), tx).await;
            if rx.borrow().complete {
                ctx.migrations.lock().await.remove(&m.migration_id);
            }
        }
        None => {
            let said = format!(
                "{} pulls no memory for migration {} of {} (any more)",
                ctx.name, m.migration_id, m.container_id
            );
            let _ = tx.send(Err(tonic::Status::failed_precondition(said))).await;
        }
    }
}

/// Undoes everything the target made for migration `m`: no copy of the
/// container is left here. Safe to call more than once.
pub async fn abort(ctx: &Context, m: &MigrationRef) -> Result<()> {
    ctx.migrations.lock().await.remove(&m.migration_id);
    pages::stop(&dir(ctx, &m.migration_id).join("images"));
    // By id, so that an agent that restarted mid-migration cleans up too;
    // but never a container this migration did not make.
    match ctx.cd.container(&m.container_id).await {
        Ok(c) if c.labels.get(MIGRATION_LABEL) == Some(&m.migration_id) => {
            containers::remove(ctx, &m.container_id).await?;
        }
        Ok(_) => {}
        Err(_) => {
            let id = m.container_id.clone();
            let _ = blocking(move || network::destroy(&id)).await;
        }
    }
    let _ = std::fs::remove_dir_all(dir(ctx, &m.migration_id));
    Ok(())
}
