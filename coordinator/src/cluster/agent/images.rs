//! Getting a container's image onto this host and into a snapshotter
//! (issue 14, images): from its registry when that answers, else from the
//! content store of the host the container comes from, through the agents'
//! `ExportImage`; then unpacked as containerd's unpacker does.
//!
//! - [`export`]: the `ExportImage` RPC's body, on the source;
//! - [`fetch_from_agent`]: the other end, on the target;
//! - [`pull`]: from a registry, through containerd's Transfer service;
//! - [`unpack`]: the layers into a snapshotter, under their chain IDs;
//! - [`ensure`]: all of it for a target, doing only what is missing.

mod export;
mod fetch;
mod platform;
mod pull;
mod unpack;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::Mutex;
use tonic::transport::Channel;

pub use export::{MissingBlob, export};
pub use fetch::{ImageFetch, fetch_from_agent};
pub use platform::PlatformImage;
pub use pull::{pull, registry_answers, registry_of};
pub use unpack::{is_unpacked, unpack};

use crate::host::containerd::{Containerd, is_code};
use crate::proto::agent_client::AgentClient;

/// How long a registry may take to accept a connection before the source
/// agent is asked instead.
const REGISTRY_PROBE: Duration = Duration::from_secs(2);

/// One [`ensure`] at a time in this process: two migrations of containers
/// of one image (or of images sharing layers) would otherwise write the
/// same blobs at once, and one of them fail on the other's write.
static ENSURING: Mutex<()> = Mutex::const_new(());

/// Where [`ensure`] got the image from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFrom {
    /// It was here (perhaps not yet unpacked into that snapshotter).
    Present,
    Registry,
    /// From the source host's agent: the blob bytes that came.
    Source {
        bytes: u64,
    },
}

impl ImageFrom {
    /// As `PrepareTargetResponse.image_from` says it.
    pub fn as_str(&self) -> &'static str {
        match self {
            ImageFrom::Present => "present",
            ImageFrom::Registry => "registry",
            ImageFrom::Source { .. } => "source",
        }
    }
}

/// Makes image `reference` usable by containers on `snapshotter`: if it
/// is not here completely, pulls it from its registry when that answers,
/// else fetches it from the agent `source`; then unpacks what is not
/// unpacked yet.
pub async fn ensure(
    cd: &Containerd,
    reference: &str,
    snapshotter: &str,
    source: Option<AgentClient<Channel>>,
) -> Result<ImageFrom> {
    let _one_at_a_time = ENSURING.lock().await;
    let from = match missing(cd, reference, snapshotter).await? {
        None => ImageFrom::Present,
        Some(what) => get(cd, reference, snapshotter, source).await.with_context(|| format!("{reference}: {what}"))?,
    };
    unpack(cd, reference, snapshotter).await?;
    Ok(from)
}

/// Whether image `reference` is here, unpacked into `snapshotter` or
/// ready to be: a caller then needs no other host to copy it from.
pub async fn present(cd: &Containerd, reference: &str, snapshotter: &str) -> Result<bool> {
    Ok(missing(cd, reference, snapshotter).await?.is_none())
}

/// What keeps image `reference` from being unpacked into `snapshotter`
/// here, if anything: no record, a missing manifest or config, or a layer
/// missing from both the content store and the snapshotter.
async fn missing(cd: &Containerd, reference: &str, snapshotter: &str) -> Result<Option<String>> {
    let image = match PlatformImage::read(cd, reference).await {
        Ok(image) => image,
        Err(e) if is_code(&e, tonic::Code::NotFound) => return Ok(Some(format!("not complete on this host ({e:#})"))),
        Err(e) => return Err(e),
    };
    let chain_ids = image.chain_ids()?;
    for (layer, chain_id) in image.layers.iter().zip(&chain_ids).rev() {
        if is_unpacked(cd, snapshotter, chain_id).await? {
            // This layer and all below it are unpacked.
            return Ok(None);
        }
        if cd.blob_info(&layer.digest).await?.is_none() {
            return Ok(Some(format!("layer {} is neither in the content store nor unpacked", layer.digest)));
        }
    }
    Ok(None)
}

async fn get(
    cd: &Containerd,
    reference: &str,
    snapshotter: &str,
    source: Option<AgentClient<Channel>>,
) -> Result<ImageFrom> {
    let registry = registry_of(reference);
    let pulled = if registry_answers(reference, REGISTRY_PROBE).await {
        match pull(cd, reference, snapshotter).await {
            Ok(()) => return Ok(ImageFrom::Registry),
            Err(e) => format!("{e:#}"),
        }
    } else {
        format!("its registry {registry} does not answer within {REGISTRY_PROBE:?}")
    };
    let Some(source) = source else {
        bail!("{pulled}, and no source host was given to copy it from");
    };
    log::info!("image {reference}: {pulled}; copying it from the source host");
    let fetched = fetch_from_agent(cd, source, reference).await.with_context(|| format!("{pulled}; and then"))?;
    Ok(ImageFrom::Source { bytes: fetched.bytes })
}
