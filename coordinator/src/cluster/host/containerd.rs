//! The connection to containerd's gRPC API: every request carries the
//! namespace (and, inside a lease, the lease) as metadata, and every failed
//! call becomes an [`RpcError`] that says what was being done.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use anyhow::{Context, Result};
use containerd_client::services::v1::{
    AbortRequest, AddResourceRequest, ApplyRequest, Container, CreateContainerRequest, CreateImageRequest,
    CreateRequest as CreateLeaseRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteRequest as DeleteLeaseRequest, DeleteTaskRequest, GetContainerRequest, GetImageRequest, GetRequest, Image,
    Info as BlobInfo, InfoRequest, KillRequest, ListContainersRequest, ListImagesRequest, ListTasksRequest,
    PauseTaskRequest, ReadContentRequest, Resource, ResumeTaskRequest, StartRequest, TransferRequest,
    UpdateImageRequest, UpdateRequest, VersionResponse, WaitRequest, WaitResponse, WriteAction, WriteContentRequest,
    containers_client::ContainersClient,
    content_client::ContentClient,
    diff_client::DiffClient,
    images_client::ImagesClient,
    leases_client::LeasesClient,
    snapshots::{
        CommitSnapshotRequest, Info as SnapshotInfo, MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
        StatSnapshotRequest, snapshots_client::SnapshotsClient,
    },
    tasks_client::TasksClient,
    transfer_client::TransferClient,
    version_client::VersionClient,
};
use containerd_client::tonic::{Code, Request, Status, metadata::MetadataValue, transport::Channel};
use containerd_client::types::v1::Process;
use containerd_client::types::{Descriptor, Mount};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::pipe::Chunk;

const NAMESPACE_HEADER: &str = "containerd-namespace";
const LEASE_HEADER: &str = "containerd-lease";
/// Label that makes containerd's garbage collector drop a lease we failed to
/// delete (a killed migratectl), so nothing it protected is kept forever.
const LEASE_EXPIRE_LABEL: &str = "containerd.io/gc.expire";
/// Type URL containerd gives an OCI runtime spec in `Container.spec`.
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// A containerd call that failed: what we asked, and what containerd said.
#[derive(Debug)]
pub struct RpcError {
    pub what: String,
    pub code: Code,
    pub message: String,
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} ({:?})", self.what, self.message, self.code)
    }
}

impl std::error::Error for RpcError {}

fn rpc(what: impl Into<String>) -> impl FnOnce(Status) -> anyhow::Error {
    let what = what.into();
    move |s| RpcError { what, code: s.code(), message: s.message().to_string() }.into()
}

/// A content write whose data stopped before its end mark: its producer
/// failed (and says why), so nothing was committed.
#[derive(Debug)]
pub struct CutShort {
    pub reference: String,
}

impl fmt::Display for CutShort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the data for {} stopped before its end; nothing was committed", self.reference)
    }
}

impl std::error::Error for CutShort {}

/// Whether `err` is containerd answering with `code`.
pub fn is_code(err: &anyhow::Error, code: Code) -> bool {
    err.downcast_ref::<RpcError>().is_some_and(|e| e.code == code)
}

/// One connection to containerd, in one namespace.
#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    address: String,
    namespace: String,
    lease: Option<String>,
}

impl Containerd {
    /// Connects to the socket at `address` (a path, optionally `unix://`).
    pub async fn connect(address: &str, namespace: &str) -> Result<Containerd> {
        let path = address.strip_prefix("unix://").unwrap_or(address);
        let channel = containerd_client::connect(path).await.with_context(|| {
            format!(
                "cannot connect to containerd at {path}: is it running? (--address or CONTAINERD_ADDRESS \
                 name another socket)"
            )
        })?;
        // Fail here, with a clear message, if the namespace header is not
        // valid metadata, rather than in every request.
        MetadataValue::try_from(namespace).with_context(|| format!("bad namespace {namespace:?}"))?;
        Ok(Containerd { channel, address: path.to_string(), namespace: namespace.to_string(), lease: None })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut req = Request::new(message);
        let md = req.metadata_mut();
        md.insert(NAMESPACE_HEADER, MetadataValue::try_from(self.namespace.as_str()).expect("checked in connect"));
        if let Some(lease) = &self.lease {
            md.insert(LEASE_HEADER, MetadataValue::try_from(lease.as_str()).expect("lease ids are ASCII"));
        }
        req
    }

    fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone())
    }

    fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }

    fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }

    pub async fn version(&self) -> Result<VersionResponse> {
        let resp = VersionClient::new(self.channel.clone())
            .version(())
            .await
            .map_err(rpc(format!("ask containerd at {} for its version", self.address)))?;
        Ok(resp.into_inner())
    }

    /// The container `id`; a missing one is an error that says where we looked.
    pub async fn container(&self, id: &str) -> Result<Container> {
        let resp = self
            .containers()
            .get(self.request(GetContainerRequest { id: id.to_string() }))
            .await
            .map_err(rpc(format!("get container {id} in namespace {}", self.namespace)))?;
        resp.into_inner().container.with_context(|| format!("containerd returned no container for {id}"))
    }

    pub async fn create_container(&self, container: Container) -> Result<Container> {
        let id = container.id.clone();
        let resp = self
            .containers()
            .create(self.request(CreateContainerRequest { container: Some(container) }))
            .await
            .map_err(rpc(format!("create container {id} in namespace {}", self.namespace)))?;
        resp.into_inner().container.with_context(|| format!("containerd returned no container after creating {id}"))
    }

    pub async fn delete_container(&self, id: &str) -> Result<()> {
        self.containers()
            .delete(self.request(DeleteContainerRequest { id: id.to_string() }))
            .await
            .map_err(rpc(format!("delete container {id}")))?;
        Ok(())
    }

    /// The init process of container `id`'s task, `None` if it has no task.
    pub async fn task(&self, id: &str) -> Result<Option<Process>> {
        match self.tasks().get(self.request(GetRequest { container_id: id.to_string(), exec_id: String::new() })).await
        {
            Ok(resp) => Ok(resp.into_inner().process),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(rpc(format!("get the task of container {id}"))(s)),
        }
    }

    /// Creates the task of container `id`; returns its pid.
    pub async fn create_task(&self, req: CreateTaskRequest) -> Result<u32> {
        let id = req.container_id.clone();
        let resp =
            self.tasks().create(self.request(req)).await.map_err(rpc(format!("create the task of container {id}")))?;
        Ok(resp.into_inner().pid)
    }

    pub async fn kill_task(&self, id: &str, signal: u32) -> Result<()> {
        self.tasks()
            .kill(self.request(KillRequest { container_id: id.to_string(), exec_id: String::new(), signal, all: true }))
            .await
            .map_err(rpc(format!("send signal {signal} to container {id}")))?;
        Ok(())
    }

    /// Waits until the init of container `id` has exited.
    pub async fn wait_task(&self, id: &str) -> Result<WaitResponse> {
        let resp = self
            .tasks()
            .wait(self.request(WaitRequest { container_id: id.to_string(), exec_id: String::new() }))
            .await
            .map_err(rpc(format!("wait for the task of container {id}")))?;
        Ok(resp.into_inner())
    }

    pub async fn delete_task(&self, id: &str) -> Result<()> {
        self.tasks()
            .delete(self.request(DeleteTaskRequest { container_id: id.to_string() }))
            .await
            .map_err(rpc(format!("delete the task of container {id}")))?;
        Ok(())
    }

    pub async fn start_task(&self, id: &str) -> Result<u32> {
        let resp = self
            .tasks()
            .start(self.request(StartRequest { container_id: id.to_string(), exec_id: String::new() }))
            .await
            .map_err(rpc(format!("start the task of container {id}")))?;
        Ok(resp.into_inner().pid)
    }

    /// Freezes every process of container `id` (the cgroup freezer).
    pub async fn pause_task(&self, id: &str) -> Result<()> {
        self.tasks()
            .pause(self.request(PauseTaskRequest { container_id: id.to_string() }))
            .await
            .map_err(rpc(format!("pause the task of container {id}")))?;
        Ok(())
    }

    pub async fn resume_task(&self, id: &str) -> Result<()> {
        self.tasks()
            .resume(self.request(ResumeTaskRequest { container_id: id.to_string() }))
            .await
            .map_err(rpc(format!("resume the task of container {id}")))?;
        Ok(())
    }

    /// Every task of the namespace, by container id.
    pub async fn tasks_list(&self) -> Result<Vec<Process>> {
        let resp = self
            .tasks()
            .list(self.request(ListTasksRequest { filter: String::new() }))
            .await
            .map_err(rpc(format!("list the tasks of namespace {}", self.namespace)))?;
        Ok(resp.into_inner().tasks)
    }

    /// Every container of the namespace that containerd's `filter` selects
    /// (its filter syntax: `labels."KEY"==VALUE`).
    pub async fn containers_list(&self, filter: &str) -> Result<Vec<Container>> {
        let filters = if filter.is_empty() { Vec::new() } else { vec![filter.to_string()] };
        let resp = self
            .containers()
            .list(self.request(ListContainersRequest { filters }))
            .await
            .map_err(rpc(format!("list the containers of namespace {}", self.namespace)))?;
        Ok(resp.into_inner().containers)
    }

    /// The mounts of active snapshot `key`.
    pub async fn snapshot_mounts(&self, snapshotter: &str, key: &str) -> Result<Vec<Mount>> {
        let resp = self
            .snapshots()
            .mounts(self.request(MountsRequest { snapshotter: snapshotter.to_string(), key: key.to_string() }))
            .await
            .map_err(rpc(format!("get the mounts of snapshot {key} ({snapshotter})")))?;
        Ok(resp.into_inner().mounts)
    }

    pub async fn prepare_snapshot(&self, snapshotter: &str, key: &str, parent: &str) -> Result<Vec<Mount>> {
        self.prepare_labelled_snapshot(snapshotter, key, parent, HashMap::new()).await
    }

    /// Like [`Containerd::prepare_snapshot`], with labels on the new active
    /// snapshot (an unpacker's `containerd.io/snapshot.ref`, which a
    /// proxy snapshotter may act on).
    pub async fn prepare_labelled_snapshot(
        &self,
        snapshotter: &str,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        let resp = self
            .snapshots()
            .prepare(self.request(PrepareSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                key: key.to_string(),
                parent: parent.to_string(),
                labels,
            }))
            .await
            .map_err(rpc(format!("prepare snapshot {key} on {parent} ({snapshotter})")))?;
        Ok(resp.into_inner().mounts)
    }

    pub async fn remove_snapshot(&self, snapshotter: &str, key: &str) -> Result<()> {
        self.snapshots()
            .remove(self.request(RemoveSnapshotRequest { snapshotter: snapshotter.to_string(), key: key.to_string() }))
            .await
            .map_err(rpc(format!("remove snapshot {key} ({snapshotter})")))?;
        Ok(())
    }

    /// Snapshot `key` of `snapshotter`, `None` if there is none.
    pub async fn snapshot(&self, snapshotter: &str, key: &str) -> Result<Option<SnapshotInfo>> {
        let request = StatSnapshotRequest { snapshotter: snapshotter.to_string(), key: key.to_string() };
        match self.snapshots().stat(self.request(request)).await {
            Ok(resp) => Ok(resp.into_inner().info),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(rpc(format!("stat snapshot {key} ({snapshotter})"))(s)),
        }
    }

    /// Commits the active snapshot `key` as `name`.
    pub async fn commit_snapshot(
        &self,
        snapshotter: &str,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        self.snapshots()
            .commit(self.request(CommitSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                name: name.to_string(),
                key: key.to_string(),
                labels,
            }))
            .await
            .map_err(rpc(format!("commit snapshot {key} as {name} ({snapshotter})")))?;
        Ok(())
    }

    /// Applies the layer `layer` (a blob of the content store) onto
    /// `mounts` with containerd's differ; returns the applied descriptor,
    /// whose digest is the uncompressed layer's (its diff ID).
    pub async fn apply_layer(&self, layer: Descriptor, mounts: Vec<Mount>) -> Result<Descriptor> {
        let what = format!("apply layer {} ({})", layer.digest, layer.media_type);
        let resp = DiffClient::new(self.channel.clone())
            .apply(self.request(ApplyRequest { diff: Some(layer), mounts, payloads: HashMap::new(), sync_fs: false }))
            .await
            .map_err(rpc(what.clone()))?;
        resp.into_inner().applied.with_context(|| format!("{what}: containerd returned no descriptor"))
    }

    /// Runs a transfer (a registry pull, ...) through containerd's Transfer
    /// service; returns when it is done.
    pub async fn transfer(&self, what: &str, request: TransferRequest) -> Result<()> {
        TransferClient::new(self.channel.clone()).transfer(self.request(request)).await.map_err(rpc(what))?;
        Ok(())
    }

    /// The image records of this namespace.
    pub async fn images(&self) -> Result<Vec<Image>> {
        let resp = ImagesClient::new(self.channel.clone())
            .list(self.request(ListImagesRequest { filters: Vec::new() }))
            .await
            .map_err(rpc(format!("list the images of namespace {}", self.namespace)))?;
        Ok(resp.into_inner().images)
    }

    pub async fn image(&self, name: &str) -> Result<Image> {
        let resp = ImagesClient::new(self.channel.clone())
            .get(self.request(GetImageRequest { name: name.to_string() }))
            .await
            .map_err(rpc(format!("get image {name} in namespace {}", self.namespace)))?;
        resp.into_inner().image.with_context(|| format!("containerd returned no image for {name}"))
    }

    /// What the content store knows of blob `digest`, `None` if it does not
    /// have it.
    pub async fn blob_info(&self, digest: &str) -> Result<Option<BlobInfo>> {
        match ContentClient::new(self.channel.clone())
            .info(self.request(InfoRequest { digest: digest.to_string() }))
            .await
        {
            Ok(resp) => Ok(resp.into_inner().info),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(rpc(format!("get the info of blob {digest}"))(s)),
        }
    }

    /// Sets `labels` on blob `digest`, leaving its other labels as they are.
    pub async fn label_blob(&self, digest: &str, labels: HashMap<String, String>) -> Result<()> {
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        let info = BlobInfo { digest: digest.to_string(), labels, ..Default::default() };
        ContentClient::new(self.channel.clone())
            .update(
                self.request(UpdateRequest { info: Some(info), update_mask: Some(prost_types::FieldMask { paths }) }),
            )
            .await
            .map_err(rpc(format!("label blob {digest}")))?;
        Ok(())
    }

    /// Adds blob `digest` to this connection's lease (see
    /// [`Containerd::with_lease`]), so the garbage collector keeps a blob
    /// that was there already until something refers to it.
    pub async fn lease_blob(&self, digest: &str) -> Result<()> {
        let lease = self.lease.clone().context("lease_blob needs a connection made by with_lease")?;
        let resource = Resource { id: digest.to_string(), r#type: "content".to_string() };
        LeasesClient::new(self.channel.clone())
            .add_resource(self.request(AddResourceRequest { id: lease.clone(), resource: Some(resource) }))
            .await
            .map_err(rpc(format!("add blob {digest} to lease {lease}")))?;
        Ok(())
    }

    /// Drops the unfinished content write `reference`, so a retry starts
    /// afresh rather than finding "another write under way".
    pub async fn abort_write(&self, reference: &str) -> Result<()> {
        ContentClient::new(self.channel.clone())
            .abort(self.request(AbortRequest { r#ref: reference.to_string() }))
            .await
            .map_err(rpc(format!("abort the content write {reference}")))?;
        Ok(())
    }

    /// The whole blob `digest` from containerd's content store.
    pub async fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let what = || format!("read blob {digest} from the content store");
        let mut stream = ContentClient::new(self.channel.clone())
            .read(self.request(ReadContentRequest { digest: digest.to_string(), offset: 0, size: 0 }))
            .await
            .map_err(rpc(what()))?
            .into_inner();
        let mut data = Vec::new();
        while let Some(chunk) = stream.message().await.map_err(rpc(what()))? {
            data.extend_from_slice(&chunk.data);
        }
        Ok(data)
    }

    /// Streams blob `digest` from the content store to `tx`, checking its
    /// digest on the way; a failure is sent to `tx` as well, so the reading
    /// side stops. Returns early, without error, if the reading side hangs
    /// up: it failed, and its error tells why.
    pub async fn read_blob_to(&self, digest: &str, tx: mpsc::Sender<std::io::Result<Vec<u8>>>) -> Result<()> {
        let result = self.read_blob_checked(digest, &tx).await;
        if let Err(e) = &result {
            let _ = tx.send(Err(std::io::Error::other(format!("{e:#}")))).await;
        }
        result.map(drop)
    }

    async fn read_blob_checked(&self, digest: &str, tx: &mpsc::Sender<std::io::Result<Vec<u8>>>) -> Result<bool> {
        let what = || format!("read blob {digest} from the content store");
        let mut stream = ContentClient::new(self.channel.clone())
            .read(self.request(ReadContentRequest { digest: digest.to_string(), offset: 0, size: 0 }))
            .await
            .map_err(rpc(what()))?
            .into_inner();
        let mut hasher = Sha256::new();
        while let Some(chunk) = stream.message().await.map_err(rpc(what()))? {
            hasher.update(&chunk.data);
            if tx.send(Ok(chunk.data)).await.is_err() {
                return Ok(false);
            }
        }
        let found = format!("sha256:{}", hex(&hasher.finalize()));
        if found != digest {
            anyhow::bail!("blob {digest} in the content store is damaged: its data hashes to {found}");
        }
        Ok(true)
    }

    /// Writes a blob to the content store under the ingest reference
    /// `reference` from `chunks` ([`super::pipe::chunks`]), and commits it
    /// with `labels` if, and only if, the chunks end with their end mark
    /// (else the error is [`CutShort`]). Returns its digest and size. A blob
    /// that is already there counts as written. Run it inside a lease, or
    /// the garbage collector may take the blob before anything refers to it.
    pub async fn write_blob(
        &self,
        reference: &str,
        chunks: mpsc::Receiver<Chunk>,
        labels: HashMap<String, String>,
    ) -> Result<(String, i64)> {
        self.write_checked_blob(reference, None, chunks, labels).await
    }

    /// Like [`Containerd::write_blob`] for a blob whose digest is known
    /// beforehand (one that comes from another host): data that hashes to
    /// anything else is not committed, and the error names both digests.
    pub async fn write_known_blob(
        &self,
        reference: &str,
        digest: &str,
        chunks: mpsc::Receiver<Chunk>,
        labels: HashMap<String, String>,
    ) -> Result<i64> {
        Ok(self.write_checked_blob(reference, Some(digest), chunks, labels).await?.1)
    }

    async fn write_checked_blob(
        &self,
        reference: &str,
        expected: Option<&str>,
        mut chunks: mpsc::Receiver<Chunk>,
        labels: HashMap<String, String>,
    ) -> Result<(String, i64)> {
        let what = || format!("write {reference} to the content store");
        let (tx, rx) = mpsc::channel(2);
        let request = |action: WriteAction| WriteContentRequest {
            action: action as i32,
            r#ref: reference.to_string(),
            ..Default::default()
        };
        // Requests and answers go in lock step: containerd answers each.
        let sent = |_| anyhow::anyhow!("{}: containerd closed the stream", what());
        tx.send(request(WriteAction::Stat)).await.map_err(sent)?;
        let mut answers = ContentClient::new(self.channel.clone())
            .write(self.request(ReceiverStream::new(rx)))
            .await
            .map_err(rpc(what()))?
            .into_inner();
        let mut answer =
            async || answers.message().await.map_err(rpc(what()))?.with_context(|| format!("{}: no answer", what()));
        let status = answer().await?;
        if status.offset != 0 {
            anyhow::bail!("{}: another write of it is under way ({} bytes in)", what(), status.offset);
        }
        let mut hasher = Sha256::new();
        let mut offset: i64 = 0;
        loop {
            match chunks.recv().await {
                Some(Chunk::Data(data)) => {
                    hasher.update(&data);
                    let len = data.len() as i64;
                    tx.send(WriteContentRequest { offset, data, ..request(WriteAction::Write) }).await.map_err(sent)?;
                    offset += len;
                    let written = answer().await?;
                    if written.offset != offset {
                        anyhow::bail!("{}: containerd is at byte {} where {offset} were sent", what(), written.offset);
                    }
                }
                Some(Chunk::End) => break,
                None => return Err(CutShort { reference: reference.to_string() }.into()),
            }
        }
        let digest = format!("sha256:{}", hex(&hasher.finalize()));
        if let Some(expected) = expected
            && expected != digest
        {
            anyhow::bail!("{}: the data hashes to {digest}, not to {expected}; nothing was committed", what());
        }
        // The offset must be where the data ends: containerd truncates a
        // write that goes on at offset 0.
        let commit = WriteContentRequest {
            offset,
            total: offset,
            expected: digest.clone(),
            labels,
            ..request(WriteAction::Commit)
        };
        tx.send(commit).await.map_err(sent)?;
        match answers.message().await {
            Ok(_) => Ok((digest, offset)),
            Err(s) if s.code() == Code::AlreadyExists => Ok((digest, offset)),
            Err(s) => Err(rpc(what())(s)),
        }
    }

    /// Creates image record `name` pointing at `target`.
    pub async fn create_image(&self, name: &str, target: Descriptor, labels: HashMap<String, String>) -> Result<Image> {
        let image = Image { name: name.to_string(), labels, target: Some(target), created_at: None, updated_at: None };
        let resp = ImagesClient::new(self.channel.clone())
            .create(self.request(CreateImageRequest { image: Some(image), source_date_epoch: None }))
            .await
            .map_err(rpc(format!("create image {name} in namespace {}", self.namespace)))?;
        resp.into_inner().image.with_context(|| format!("containerd returned no image after creating {name}"))
    }

    /// Creates image record `name` pointing at `target`, or points the
    /// existing one there (with these labels).
    pub async fn put_image(&self, name: &str, target: Descriptor, labels: HashMap<String, String>) -> Result<Image> {
        match self.create_image(name, target.clone(), labels.clone()).await {
            Err(e) if is_code(&e, Code::AlreadyExists) => {}
            created => return created,
        }
        let image = Image { name: name.to_string(), labels, target: Some(target), created_at: None, updated_at: None };
        let resp = ImagesClient::new(self.channel.clone())
            .update(self.request(UpdateImageRequest { image: Some(image), update_mask: None, source_date_epoch: None }))
            .await
            .map_err(rpc(format!("update image {name} in namespace {}", self.namespace)))?;
        resp.into_inner().image.with_context(|| format!("containerd returned no image after updating {name}"))
    }

    /// A copy of this connection whose requests run inside a new lease, so
    /// containerd's garbage collector keeps what they create (a snapshot
    /// before its container exists) until [`Lease::release`]. The lease
    /// expires by itself in an hour should we die before releasing it.
    pub async fn with_lease(&self, purpose: &str) -> Result<(Containerd, Lease)> {
        let expire = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
        let expire =
            expire.format(&time::format_description::well_known::Rfc3339).context("format the lease expiry")?;
        let id = format!("migratectl-{purpose}-{}-{}", std::process::id(), super::ids::unique_suffix());
        let resp = LeasesClient::new(self.channel.clone())
            .create(self.request(CreateLeaseRequest {
                id: id.clone(),
                labels: HashMap::from([(LEASE_EXPIRE_LABEL.to_string(), expire)]),
            }))
            .await
            .map_err(rpc(format!("create lease {id}")))?;
        let id = resp.into_inner().lease.map(|l| l.id).unwrap_or(id);
        let mut leased = self.clone();
        leased.lease = Some(id.clone());
        Ok((leased, Lease { id, owner: self.clone() }))
    }
}

/// A containerd lease that [`Containerd::with_lease`] took.
pub struct Lease {
    id: String,
    owner: Containerd,
}

impl Lease {
    /// Deletes the lease; what it protected is then kept only by references.
    pub async fn release(self) -> Result<()> {
        LeasesClient::new(self.owner.channel.clone())
            .delete(self.owner.request(DeleteLeaseRequest { id: self.id.clone(), sync: false }))
            .await
            .map_err(rpc(format!("delete lease {}", self.id)))?;
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A stdio URI for a log file, as the shim (and containerd's) accept it.
pub fn file_log_uri(path: &Path) -> String {
    format!("file://{}", path.display())
}
/// The task's checkpoint: containerd passes a descriptor's `RestoreFromPath`
/// annotation to the shim as the path to restore from (the way CRI restores
/// from a directory), and writes nothing of its own.
pub fn restore_from_path(checkpoint_dir: &Path) -> Descriptor {
    Descriptor {
        media_type: CRIU_CHECKPOINT_MEDIA_TYPE.to_string(),
        annotations: HashMap::from([("RestoreFromPath".to_string(), checkpoint_dir.display().to_string())]),
        ..Default::default()
    }
}

const CRIU_CHECKPOINT_MEDIA_TYPE: &str = "application/vnd.containerd.container.criu.checkpoint.criu.tar";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checkpoint_travels_as_restore_from_path() {
        let d = restore_from_path(Path::new("/var/lib/cp/c1-1"));
        assert_eq!(d.annotations["RestoreFromPath"], "/var/lib/cp/c1-1");
        assert_eq!(d.media_type, CRIU_CHECKPOINT_MEDIA_TYPE);
    }
}
