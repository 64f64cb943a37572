//! The source's steps: describe the container, send its writable layer
//! while it runs, then lock its network, freeze it and dump it to the
//! target; and at the end either remove it or let it run on.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use tonic::transport::Channel;

use super::layer::LayerSync;
use super::page_server::PageServer;
use super::{Migration, criu_images, dir, features, parent_of, round_dir, transfer};
use crate::agent::containers::{self, blocking};
use crate::agent::context::Context;
use crate::agent::network::{self, Link};
use crate::host::image;
use crate::host::shim::Shim;
use crate::proto::agent_client::AgentClient;
use crate::proto::{
    DescribeResponse, DumpResponse, Iteration, MigrationMode, MigrationRef, ProbeLinkResponse, StopPagesResponse,
    SyncLayerResponse, TransferChunk, TransferKind,
};

/// What the source keeps between its steps.
pub struct Source {
    container: String,
    /// None while a send has it.
    layer: Option<LayerSync>,
    /// Whether this migration froze the container and cut its link (and
    /// so must undo both if it fails).
    frozen: bool,
    /// Post-copy: the page server the target pulls the memory from.
    pages: Option<PageServer>,
    /// Pre-copy: the rounds the target has.
    rounds: u32,
}

/// The container as the target must recreate it.
pub async fn describe(ctx: &Context, id: &str) -> Result<DescribeResponse> {
    let c = ctx.cd.container(id).await?;
    if !c.labels.contains_key(containers::CLUSTER_LABEL) {
        bail!("container {id} on {} was not run through the cluster (migratectl run); it cannot be moved", ctx.name);
    }
    let spec = c.spec.map(|s| s.value).context("the container has no spec")?;
    let chain_id = image::rootfs_chain_id(&ctx.cd, &c.image).await?;
    let task = ctx.cd.task(id).await?.with_context(|| format!("container {id} has no task on {}", ctx.name))?;
    let dirty_tracking_unavailable = features::dirty_tracking().await.unwrap_or_default();
    let dirty_bytes_per_second = if dirty_tracking_unavailable.is_empty() && !has_ticker(&spec) {
        let pid = task.pid;
        match blocking(move || features::dirty_rate(pid)).await {
            Ok(rate) => rate,
            Err(e) => {
                log::warn!("measuring how fast {id} dirties its memory: {e:#}");
                0.0
            }
        }
    } else {
        0.0
    };
    Ok(DescribeResponse {
        memory_bytes: features::memory_bytes(task.pid).unwrap_or(0),
        post_copy_unavailable: features::post_copy_source().unwrap_or_default(),
        dirty_tracking_unavailable,
        dirty_bytes_per_second,
        spec,
        image: c.image,
        snapshotter: c.snapshotter,
        snapshot_key: c.snapshot_key,
        runtime: c.runtime.map(|r| r.name).unwrap_or_default(),
        labels: c.labels,
        chain_id: chain_id.to_string(),
    })
}

/// Whether OCI spec `spec` (JSON) runs a checkpoint ticker, whose
/// increments rely on the memory tracking's bits: nothing else may clear
/// them behind its back.
fn has_ticker(spec: &[u8]) -> bool {
    const TICKER: &str = "io.containerd.migrate.checkpoint.interval";
    serde_json::from_slice::<serde_json::Value>(spec).ok().is_some_and(|s| s["annotations"].get(TICKER).is_some())
}

/// Sends the changes of the writable layer since the last sync (all of it
/// the first time) while the container runs.
pub async fn sync_layer(
    ctx: &Context,
    m: &MigrationRef,
    mut target: AgentClient<Channel>,
) -> Result<SyncLayerResponse> {
    let layer = take_layer(ctx, m).await?;
    let (sent, layer) = layer.send(&mut target, m).await?;
    ctx.migrations.lock().await.insert(
        m.migration_id.clone(),
        Migration::Source(Source {
            container: m.container_id.clone(),
            layer: Some(layer),
            frozen: false,
            pages: None,
            rounds: 0,
        }),
    );
    Ok(SyncLayerResponse { bytes: sent.bytes, files: sent.files })
}

/// How much the link to the target carries: this many bytes of nothing
/// sent to its Receive, which counts and drops them.
pub async fn probe_link(m: &MigrationRef, mut target: AgentClient<Channel>) -> Result<ProbeLinkResponse> {
    const PROBE_BYTES: usize = 8 << 20;
    let started = Instant::now();
    let bytes = transfer::send(&mut target, m, TransferKind::Probe, |w| {
        let block = vec![0u8; 1 << 20];
        for _ in 0..PROBE_BYTES / block.len() {
            w.write_all(&block)?;
        }
        Ok(())
    })
    .await?;
    Ok(ProbeLinkResponse { bytes, ms: started.elapsed().as_secs_f64() * 1000.0 })
}

/// The layer's sync state of migration `m`, or a new one.
async fn take_layer(ctx: &Context, m: &MigrationRef) -> Result<LayerSync> {
    match ctx.migrations.lock().await.remove(&m.migration_id) {
        Some(Migration::Source(Source { layer: Some(layer), .. })) => Ok(layer),
        Some(Migration::Source(_)) => bail!("migration {} is sending its layer already", m.migration_id),
        Some(Migration::Target(_)) => bail!("migration {} is this host's as its target", m.migration_id),
        None => LayerSync::new(&ctx.cd, &ctx.snapshotter, &m.container_id).await,
    }
}

/// This runtime's checkpoint options for a dump into a directory (decoded
/// by the shim's checkpoint.rs), the container paused around it; for
/// pre-copy, a pre-dump or a dump on the rounds before.
#[derive(Serialize)]
struct DirectoryDump {
    image_path: PathBuf,
    work_path: PathBuf,
    tcp_established: bool,
    file_locks: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pre_dump: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_path: Option<PathBuf>,
}

/// Pre-copy's round `round`: the memory that changed since the round
/// before (all of it, the first time) dumped into RAM while the container
/// runs on, on the round before, and streamed to the target as CRIU writes
/// it. A failed round leaves the container running as it was.
///
/// Not CRIU's page server: its client corks the socket and sends its
/// closing command unpushed, so every dump through it waits the kernel's
/// 200 ms cork ceiling, which the final dump would add to the downtime.
pub async fn pre_dump(
    ctx: &Context,
    m: &MigrationRef,
    round: u32,
    mut target: AgentClient<Channel>,
) -> Result<Iteration> {
    if let Some(why) = features::dirty_tracking().await {
        bail!("{} cannot pre-copy: {why}", ctx.name);
    }
    let id = m.container_id.clone();
    match ctx.migrations.lock().await.get(&m.migration_id) {
        Some(Migration::Source(s)) if !s.frozen && s.rounds + 1 == round => {}
        Some(Migration::Source(s)) if s.frozen => bail!("{id} is frozen for its dump already"),
        Some(Migration::Source(s)) => {
            bail!("migration {} has had {} rounds; round {round} cannot come next", m.migration_id, s.rounds)
        }
        _ => bail!("{} has no migration {} of {id} (its layer is synced first)", ctx.name, m.migration_id),
    }
    let task = ctx.cd.task(&id).await?.with_context(|| format!("container {id} has no task on {}", ctx.name))?;
    let shim = Shim::of_task(task.pid, ctx.cd.namespace())?;
    let base = dir(ctx, &m.migration_id);
    let (images, work) = (round_dir(&base, round), base.join("pre-dump-work"));
    for d in [&images, &work] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    let started = Instant::now();
    let options = DirectoryDump {
        image_path: images.clone(),
        work_path: work,
        tcp_established: false,
        file_locks: false,
        pre_dump: true,
        parent_path: parent_of(round, 0),
    };
    let options = serde_json::to_vec(&options).context("encode the checkpoint options")?;
    let signals = criu_images::signals();
    let dumped = {
        let signals = signals.clone();
        tokio::task::spawn_blocking(move || {
            let dumped = shim.checkpoint_with(&id, options);
            signals.dumped.store(true, Ordering::SeqCst);
            dumped
        })
    };
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let follower = {
        let signals = signals.clone();
        tokio::task::spawn_blocking(move || criu_images::follow(&images, &signals, &tx))
    };
    let head = TransferChunk { round, ..transfer::head(m, TransferKind::Round) };
    let streaming = async {
        let streamed = transfer::send_chunks(&mut target, head, rx).await;
        signals.stream_ended.store(true, Ordering::SeqCst);
        streamed
    };
    let (streamed, dumped) = tokio::join!(streaming, dumped);
    dumped.context("the pre-dump panicked")?.with_context(|| format!("pre-dump round {round}"))?;
    streamed.with_context(|| format!("send round {round}"))?;
    let bytes = follower.await.context("the image stream panicked")??;
    if let Some(Migration::Source(s)) = ctx.migrations.lock().await.get_mut(&m.migration_id) {
        s.rounds = round;
    }
    Ok(Iteration { round, bytes, ms: started.elapsed().as_secs_f64() * 1000.0 })
}

/// Locks the container's network (its link down: the frozen kernel must
/// not answer its TCP peers, whose packets belong to the target from now
/// on), freezes it and dumps it into RAM, streaming the images to the
/// target as CRIU writes them ([`super::criu_images`]) and, meanwhile, the
/// layer's last changes (the files cannot change while it is frozen). It
/// stays frozen and cut off: [`finish`] or [`resume`] decides.
///
/// Post-copy dumps everything but the memory, which stays in the frozen
/// processes behind a page server ([`PageServer`]) until the target has
/// pulled it all.
pub async fn dump(
    ctx: &Context,
    m: &MigrationRef,
    mode: MigrationMode,
    target: AgentClient<Channel>,
) -> Result<DumpResponse> {
    let lazy = match mode {
        MigrationMode::StopAndCopy | MigrationMode::PreCopy => false,
        MigrationMode::PostCopy => {
            if let Some(why) = features::post_copy_source() {
                bail!("{} cannot serve a post-copy: {why}", ctx.name);
            }
            true
        }
        other => bail!("a dump by {} is not supported by this agent", other.as_str_name()),
    };
    let id = m.container_id.clone();
    let rounds = match ctx.migrations.lock().await.get(&m.migration_id) {
        Some(Migration::Source(s)) => s.rounds,
        _ => 0,
    };
    if mode == MigrationMode::PreCopy && rounds == 0 {
        bail!("a pre-copy's dump comes after its rounds (PreDump); migration {} has had none", m.migration_id);
    }
    let layer = take_layer(ctx, m).await?;
    let task = ctx.cd.task(&id).await?.with_context(|| format!("container {id} has no task on {}", ctx.name))?;
    let images = round_dir(&dir(ctx, &m.migration_id), 0);
    let work = dir(ctx, &m.migration_id).join("dump-work");
    for d in [&images, &work] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    // From here on, a failure must thaw it and bring its link back.
    ctx.migrations.lock().await.insert(
        m.migration_id.clone(),
        Migration::Source(Source { container: id.clone(), layer: None, frozen: true, pages: None, rounds }),
    );
    let link_id = id.clone();
    blocking(move || network::set_link(&link_id, Link::Down)).await.context("lock the container's network")?;
    let frozen = Instant::now();
    let frozen_unix_ms = crate::membership::now();
    ctx.cd.pause_task(&id).await.context("freeze the container")?;
    let shim = Shim::of_task(task.pid, ctx.cd.namespace())?;

    let signals = criu_images::signals();
    let (dumped, page_server) = if lazy {
        let server = PageServer::start(shim, &id, ctx.host, &ctx.tls_files, &images, &work).await;
        let server = server.context("dump the container for post-copy")?;
        // The images are complete: only the page server goes on.
        signals.dumped.store(true, Ordering::SeqCst);
        let address = server.address.clone();
        if let Some(Migration::Source(s)) = ctx.migrations.lock().await.get_mut(&m.migration_id) {
            s.pages = Some(server);
        }
        (tokio::task::spawn(async { Ok(()) }), address)
    } else {
        let options = DirectoryDump {
            image_path: images.clone(),
            work_path: work,
            tcp_established: true,
            file_locks: true,
            pre_dump: false,
            parent_path: parent_of(0, rounds),
        };
        let options = serde_json::to_vec(&options).context("encode the checkpoint options")?;
        let (id, signals) = (id.clone(), signals.clone());
        let dumped = tokio::task::spawn_blocking(move || {
            let dumped = shim.checkpoint_with(&id, options);
            signals.dumped.store(true, Ordering::SeqCst);
            dumped
        });
        (dumped, String::new())
    };
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let follower = {
        let (dir, signals) = (images.clone(), signals.clone());
        tokio::task::spawn_blocking(move || criu_images::follow(&dir, &signals, &tx))
    };
    let mut images_target = target.clone();
    let mut layer_target = target;
    let streaming = async {
        let streamed = transfer::send_chunks(&mut images_target, transfer::head(m, TransferKind::Images), rx).await;
        signals.stream_ended.store(true, Ordering::SeqCst);
        streamed
    };
    let (streamed, last, dumped) = tokio::join!(streaming, layer.send(&mut layer_target, m), dumped);
    dumped.context("the dump panicked")?.context("dump the container")?;
    let dump_ms = frozen.elapsed().as_secs_f64() * 1000.0;
    // The receiver's error says more than the follower's "ended early".
    let images_bytes = streamed.context("send the images")?;
    let memory_bytes = follower.await.context("the image stream panicked")??;
    let (last, layer) = last.context("send the layer's last changes")?;
    if let Some(Migration::Source(s)) = ctx.migrations.lock().await.get_mut(&m.migration_id) {
        s.layer = Some(layer);
    }
    Ok(DumpResponse {
        frozen_unix_ms,
        memory_bytes,
        images_bytes,
        layer_bytes: last.bytes,
        dump_ms,
        send_ms: frozen.elapsed().as_secs_f64() * 1000.0 - dump_ms,
        page_server,
    })
}

/// Ends a post-copy's page server unless the transfer is over, and says
/// whether the target had every page by then (the source's processes are
/// gone then; otherwise they are frozen here, whole). Safe to call more
/// than once, and for a migration that had no page server.
pub async fn stop_pages(ctx: &Context, m: &MigrationRef) -> Result<StopPagesResponse> {
    let server = match ctx.migrations.lock().await.get_mut(&m.migration_id) {
        Some(Migration::Source(s)) => s.pages.take(),
        _ => None,
    };
    let Some(server) = server else { return Ok(StopPagesResponse { complete: false }) };
    let complete = match server.stop_now().await {
        Ok(()) => true,
        Err(e) => {
            log::info!("migration {}: the page server ended without a complete transfer: {e:#}", m.migration_id);
            false
        }
    };
    if complete {
        // Nothing of the container is left here to resume.
        if let Some(Migration::Source(s)) = ctx.migrations.lock().await.get_mut(&m.migration_id) {
            s.frozen = false;
        }
    }
    Ok(StopPagesResponse { complete })
}

/// The target runs the container: remove it here, frozen and cut off as
/// it is (killed before it is thawed, it never runs again).
pub async fn finish(ctx: &Context, m: &MigrationRef) -> Result<()> {
    let mut state = ctx.migrations.lock().await.remove(&m.migration_id);
    if let Some(Migration::Source(Source { pages, .. })) = &mut state
        && let Some(server) = pages.take()
    {
        // The target has every page, so the page server ends by itself.
        if let Err(e) = server.wait().await {
            log::warn!("migration {}: the page server ended with: {e:#}", m.migration_id);
        }
    }
    containers::remove(ctx, &m.container_id).await?;
    let _ = std::fs::remove_dir_all(dir(ctx, &m.migration_id));
    drop(state);
    Ok(())
}

/// The migration failed: thaw the container and bring its link back, if
/// this migration took them. Safe to call more than once.
pub async fn resume(ctx: &Context, m: &MigrationRef) -> Result<()> {
    // A page server still running holds the processes: end it first.
    if stop_pages(ctx, m).await?.complete {
        bail!(
            "{} cannot run on {} again: the target had every page of it when its page server ended",
            m.container_id,
            ctx.name
        );
    }
    let state = ctx.migrations.lock().await.remove(&m.migration_id);
    let _ = std::fs::remove_dir_all(dir(ctx, &m.migration_id));
    let froze = match &state {
        Some(Migration::Source(s)) => s.frozen,
        // An agent that restarted forgot: look at the task itself.
        _ => true,
    };
    if !froze {
        return Ok(());
    }
    let id = m.container_id.clone();
    if let Some(task) = ctx.cd.task(&id).await? {
        use containerd_client::types::v1::Status;
        if matches!(Status::try_from(task.status), Ok(Status::Paused | Status::Pausing)) {
            ctx.cd.resume_task(&id).await.context("thaw the container")?;
        }
    }
    blocking(move || network::set_link(&id, Link::Up)).await.context("unlock the container's network")?;
    if let Some(Migration::Source(s)) = state {
        log::info!("migration {}: {} runs on here again", m.migration_id, s.container);
    }
    Ok(())
}
