//! containerd's Snapshots gRPC service over [`Snapshotter`]: what containerd
//! calls on a `[proxy_plugins.NAME] type = "snapshot"` plugin. The
//! `snapshotter` field of each request names the plugin on containerd's
//! side and is ignored here: this process serves one snapshotter.

use std::collections::BTreeMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use tonic::{Request, Response, Status};

use crate::overlay::{Mount, Snapshotter};
use crate::proto::snapshots_server::{Snapshots, SnapshotsServer};
use crate::proto::*;
use crate::store::{self, Kind as StoreKind};

pub struct Service {
    snapshotter: Arc<Snapshotter>,
}

impl Service {
    pub fn new(snapshotter: Arc<Snapshotter>) -> SnapshotsServer<Service> {
        SnapshotsServer::new(Service { snapshotter })
    }

    /// Runs `f` on the snapshotter off the async threads: its calls touch
    /// the disk (fsync, walking a snapshot for its usage).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Snapshotter) -> crate::error::Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        let s = self.snapshotter.clone();
        match tokio::task::spawn_blocking(move || f(&s)).await {
            Ok(r) => r.map_err(Status::from),
            Err(e) => Err(Status::internal(format!("snapshotter task failed: {e}"))),
        }
    }
}

fn parent(p: String) -> Option<String> {
    if p.is_empty() { None } else { Some(p) }
}

fn labels(l: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    l.into_iter().collect()
}

fn mounts(m: Vec<Mount>) -> Vec<containerd_client::types::Mount> {
    m.into_iter()
        .map(|m| containerd_client::types::Mount {
            r#type: m.kind,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

fn info(i: store::Info) -> Info {
    let kind = match i.kind {
        StoreKind::View => Kind::View,
        StoreKind::Active => Kind::Active,
        StoreKind::Committed => Kind::Committed,
    };
    Info {
        name: i.name,
        parent: i.parent.unwrap_or_default(),
        kind: kind as i32,
        created_at: Some(i.created.into()),
        updated_at: Some(i.updated.into()),
        labels: i.labels.into_iter().collect(),
    }
}

/// What Update needs of the request's Info: the name and the labels (the
/// rest is immutable and ignored, as containerd does).
fn update_target(i: Info) -> store::Info {
    store::Info {
        name: i.name,
        parent: None,
        kind: StoreKind::Active,
        created: SystemTime::UNIX_EPOCH,
        updated: SystemTime::UNIX_EPOCH,
        labels: labels(i.labels),
    }
}

type ListStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<ListSnapshotsResponse, Status>> + Send>>;

/// How many snapshots one List message carries (containerd batches too).
const LIST_BATCH: usize = 100;

#[tonic::async_trait]
impl Snapshots for Service {
    async fn prepare(&self, r: Request<PrepareSnapshotRequest>) -> Result<Response<PrepareSnapshotResponse>, Status> {
        let r = r.into_inner();
        log::debug!("prepare {:?} on {:?}", r.key, r.parent);
        let m = self.blocking(move |s| s.prepare(&r.key, parent(r.parent).as_deref(), labels(r.labels))).await?;
        Ok(Response::new(PrepareSnapshotResponse { mounts: mounts(m) }))
    }

    async fn view(&self, r: Request<ViewSnapshotRequest>) -> Result<Response<ViewSnapshotResponse>, Status> {
        let r = r.into_inner();
        log::debug!("view {:?} on {:?}", r.key, r.parent);
        let m = self.blocking(move |s| s.view(&r.key, parent(r.parent).as_deref(), labels(r.labels))).await?;
        Ok(Response::new(ViewSnapshotResponse { mounts: mounts(m) }))
    }

    async fn mounts(&self, r: Request<MountsRequest>) -> Result<Response<MountsResponse>, Status> {
        let key = r.into_inner().key;
        let m = self.blocking(move |s| s.mounts(&key)).await?;
        Ok(Response::new(MountsResponse { mounts: mounts(m) }))
    }

    async fn commit(&self, r: Request<CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        let r = r.into_inner();
        log::debug!("commit {:?} as {:?}", r.key, r.name);
        self.blocking(move |s| s.commit(&r.name, &r.key, labels(r.labels))).await?;
        Ok(Response::new(()))
    }

    async fn remove(&self, r: Request<RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        let key = r.into_inner().key;
        log::debug!("remove {key:?}");
        self.blocking(move |s| s.remove(&key)).await?;
        Ok(Response::new(()))
    }

    async fn stat(&self, r: Request<StatSnapshotRequest>) -> Result<Response<StatSnapshotResponse>, Status> {
        let key = r.into_inner().key;
        let i = self.blocking(move |s| s.stat(&key)).await?;
        Ok(Response::new(StatSnapshotResponse { info: Some(info(i)) }))
    }

    async fn update(&self, r: Request<UpdateSnapshotRequest>) -> Result<Response<UpdateSnapshotResponse>, Status> {
        let r = r.into_inner();
        let target = update_target(r.info.ok_or_else(|| Status::invalid_argument("Update without an info"))?);
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let i = self.blocking(move |s| s.update(&target, &paths)).await?;
        Ok(Response::new(UpdateSnapshotResponse { info: Some(info(i)) }))
    }

    type ListStream = ListStream;

    async fn list(&self, r: Request<ListSnapshotsRequest>) -> Result<Response<ListStream>, Status> {
        let filters = r.into_inner().filters;
        if !filters.is_empty() {
            // containerd filters in its own metadata and lists a proxy
            // whole; a client calling this socket directly must do the same.
            return Err(Status::unimplemented(format!(
                "List with filters ({filters:?}) is not supported by this snapshotter: list all and filter"
            )));
        }
        let all = self.blocking(|s| Ok(s.list())).await?;
        let batches: Vec<Result<ListSnapshotsResponse, Status>> = all
            .chunks(LIST_BATCH)
            .map(|c| Ok(ListSnapshotsResponse { info: c.iter().cloned().map(info).collect() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn usage(&self, r: Request<UsageRequest>) -> Result<Response<UsageResponse>, Status> {
        let key = r.into_inner().key;
        let u = self.blocking(move |s| s.usage(&key)).await?;
        Ok(Response::new(UsageResponse { size: u.size, inodes: u.inodes }))
    }

    async fn cleanup(&self, _r: Request<CleanupRequest>) -> Result<Response<()>, Status> {
        self.blocking(|s| s.cleanup()).await?;
        Ok(Response::new(()))
    }
}

/// Serves the snapshotter on unix socket `socket` until `shutdown` resolves.
/// A socket file left by an earlier run is replaced.
pub async fn serve(
    snapshotter: Arc<Snapshotter>,
    socket: &Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove the old socket {}", socket.display())),
    }
    let listener = tokio::net::UnixListener::bind(socket)
        .with_context(|| format!("cannot listen on {} (is the path writable?)", socket.display()))?;
    log::info!("serving containerd's Snapshots API on {}", socket.display());
    tonic::transport::Server::builder()
        .add_service(Service::new(snapshotter))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::UnixListenerStream::new(listener), shutdown)
        .await
        .context("the gRPC server failed")?;
    Ok(())
}
