//! The image a container's root file system came from, as containerd
//! records it: the image reference of the container's record, and the
//! chain ID of the layers its snapshot was prepared on (the snapshot's
//! parent: containerd commits each unpacked layer under its chain ID, see
//! [`ChainId`]). Every checkpoint records both, so that a checkpoint names
//! its image on any host, and a restore compares images by content rather
//! than by this host's snapshot directories.
//!
//! Neither is in what containerd hands the shim (the bundle's spec, the
//! rootfs mounts), so the shim asks containerd's Containers and Snapshots
//! APIs, over the gRPC socket containerd started it with (`-address`), once
//! per container, when first needed: at create if the container is
//! restored from a checkpoint (beside the checkpoint's verification), else
//! when its first checkpoint starts (beside the dump). Asking takes 1-3 ms
//! here, but gRPC's code, once run, stays in the shim's resident memory
//! (about 450 KiB): a container that is never checkpointed nor restored
//! never asks.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use containerd_client::{
    services::v1::{
        GetContainerRequest,
        containers_client::ContainersClient,
        snapshots::{StatSnapshotRequest, snapshots_client::SnapshotsClient},
    },
    tonic::{
        Request,
        metadata::{Ascii, MetadataValue},
        transport::Channel,
    },
};
use log::{debug, warn};
use migrate_oci::ChainId;
use tokio::sync::OnceCell;

/// containerd answers two lookups over a local socket in milliseconds; a
/// containerd that takes longer is in trouble, and the container must not
/// wait on it.
const LIMIT: Duration = Duration::from_secs(5);

/// The image of a container's root file system, as far as containerd knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageOrigin {
    /// The image reference the container was created from, e.g.
    /// `docker.io/library/redis:7`.
    pub reference: Option<String>,
    /// Its layers by content; None without a snapshot, or for a snapshot
    /// prepared on anything but an unpacked image (a snapshot committed
    /// by hand, a user-namespace remapped copy).
    pub chain_id: Option<ChainId>,
}

/// What containerd says of one container's image, asked once.
#[derive(Debug, Clone)]
pub struct Lookup(Arc<Question>);

#[derive(Debug)]
struct Question {
    containerd: String,
    namespace: String,
    id: String,
    answer: OnceCell<ImageOrigin>,
}

impl Lookup {
    /// The question for container `id` of `namespace`, to containerd at
    /// `containerd`; nothing is asked yet.
    pub fn new(containerd: &str, namespace: &str, id: &str) -> Lookup {
        Lookup(Arc::new(Question {
            containerd: containerd.to_string(),
            namespace: namespace.to_string(),
            id: id.to_string(),
            answer: OnceCell::new(),
        }))
    }

    /// Starts asking, if nobody has, for an [`Lookup::answer`] to come.
    pub fn start(&self) {
        if !self.0.answer.initialized() {
            let lookup = self.clone();
            tokio::spawn(async move { lookup.answer().await });
        }
    }

    /// containerd's answer, asked now unless it was given before. A
    /// lookup that fails answers with nothing known, says why in the log,
    /// and is asked again next time: containerd may have been restarting.
    pub async fn answer(&self) -> ImageOrigin {
        let q = &self.0;
        q.answer.get_or_try_init(|| q.ask()).await.cloned().unwrap_or_default()
    }
}

impl Question {
    async fn ask(&self) -> Result<ImageOrigin, ()> {
        let (address, id) = (&self.containerd, &self.id);
        let started = Instant::now();
        match tokio::time::timeout(LIMIT, lookup(address, &self.namespace, id)).await {
            Ok(Ok(origin)) => {
                debug!("{id}: image {origin:?} learnt from containerd in {:?}", started.elapsed());
                Ok(origin)
            }
            Ok(Err(e)) => {
                warn!("{id}: {e}; {CONSEQUENCE}");
                Err(())
            }
            Err(_) => {
                warn!(
                    "{id}: containerd at {address} did not say within {LIMIT:?} which image the container runs; \
                     {CONSEQUENCE}"
                );
                Err(())
            }
        }
    }
}

const CONSEQUENCE: &str = "until containerd answers, its checkpoints name no image, and a restore compares image \
                           layers by this host's snapshot directories only";

async fn lookup(address: &str, namespace: &str, id: &str) -> Result<ImageOrigin, String> {
    let path = address.strip_prefix("unix://").unwrap_or(address);
    let channel =
        containerd_client::connect(path).await.map_err(|e| format!("cannot connect to containerd at {path}: {e}"))?;
    let namespace = MetadataValue::try_from(namespace).map_err(|e| format!("namespace {namespace:?}: {e}"))?;
    let record = ContainersClient::new(channel.clone())
        .get(request(&namespace, GetContainerRequest { id: id.to_string() }))
        .await
        .map_err(|s| format!("containerd's record of the container is unreadable: {}", s.message()))?
        .into_inner()
        .container
        .ok_or("containerd returned no record of the container")?;
    let chain_id = match record.snapshot_key.as_str() {
        "" => None,
        key => snapshot_parent(channel, &namespace, &record.snapshotter, key).await?.and_then(|parent| {
            parent.parse().map_err(|e| debug!("{id}: snapshot {key}'s parent names no layers: {e}")).ok()
        }),
    };
    Ok(ImageOrigin { reference: Some(record.image).filter(|i| !i.is_empty()), chain_id })
}

/// The name of the snapshot `key` of `snapshotter` was prepared on, if any.
async fn snapshot_parent(
    channel: Channel,
    namespace: &MetadataValue<Ascii>,
    snapshotter: &str,
    key: &str,
) -> Result<Option<String>, String> {
    let info = SnapshotsClient::new(channel)
        .stat(request(namespace, StatSnapshotRequest { snapshotter: snapshotter.to_string(), key: key.to_string() }))
        .await
        .map_err(|s| format!("containerd cannot say what snapshot {key} ({snapshotter}) sits on: {}", s.message()))?
        .into_inner()
        .info;
    Ok(info.map(|i| i.parent).filter(|p| !p.is_empty()))
}

fn request<T>(namespace: &MetadataValue<Ascii>, message: T) -> Request<T> {
    let mut req = Request::new(message);
    req.metadata_mut().insert("containerd-namespace", namespace.clone());
    req
}
