//! An image's layers into a snapshotter, as containerd's unpacker
//! (`core/unpack`) leaves them: layer N committed under the chain ID of
//! layers 0..=N, on the one below; containerd's labels on each snapshot
//! (`containerd.io/snapshot.ref`, the diff ID, the parent chain ID), which a
//! proxy snapshotter such as `migrate` may act on; and the config blob
//! labelled `containerd.io/gc.ref.snapshot.<snapshotter>` with the top chain
//! ID, so the garbage collector keeps the snapshots as long as the image.
//!
//! Layers whose snapshot is there already are skipped, so unpacking again
//! is cheap, and an image another unpacker (`ctr run`, a pull) unpacked is
//! used as it is.

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use containerd_client::services::v1::snapshots::Kind;
use migrate_oci::ChainId;

use super::platform::PlatformImage;
use crate::host::containerd::{Containerd, is_code};
use crate::host::ids::unique_suffix;

const LABEL_SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";
const LABEL_DIFF_ID: &str = "containerd.io/snapshot/diff-id";
const LABEL_PARENT: &str = "containerd.io/snapshot/parent-chain-id";
/// On a layer blob: its uncompressed digest, verified by applying it.
const LABEL_UNCOMPRESSED: &str = "containerd.io/uncompressed";

/// Unpacks image `reference` (this platform's manifest) into `snapshotter`;
/// returns the chain ID of its top layer, the parent of a container's
/// snapshot.
pub async fn unpack(cd: &Containerd, reference: &str, snapshotter: &str) -> Result<ChainId> {
    let image = PlatformImage::read(cd, reference).await?;
    let chain_ids = image.chain_ids()?;
    let top = *chain_ids.last().with_context(|| format!("image {reference} has no layers"))?;
    // Snapshots made here are the lease's until the config's label keeps them.
    let (leased, lease) = cd.with_lease("unpack").await?;
    let result = unpack_layers(&leased, &image, &chain_ids, snapshotter).await;
    let result = match result {
        Ok(()) => {
            let label = HashMap::from([(format!("containerd.io/gc.ref.snapshot.{snapshotter}"), top.to_string())]);
            leased.label_blob(&image.config.digest, label).await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = lease.release().await {
        log::warn!("releasing the lease of the unpacking of {reference}: {e:#}");
    }
    result.with_context(|| format!("unpacking image {reference} into snapshotter {snapshotter}"))?;
    Ok(top)
}

/// Whether layer snapshot `chain_id` is committed in `snapshotter`.
pub async fn is_unpacked(cd: &Containerd, snapshotter: &str, chain_id: &ChainId) -> Result<bool> {
    Ok(cd.snapshot(snapshotter, &chain_id.to_string()).await?.is_some_and(|info| info.kind() == Kind::Committed))
}

async fn unpack_layers(cd: &Containerd, image: &PlatformImage, chain_ids: &[ChainId], snapshotter: &str) -> Result<()> {
    let mut parent: Option<&ChainId> = None;
    for (i, chain_id) in chain_ids.iter().enumerate() {
        if !is_unpacked(cd, snapshotter, chain_id).await? {
            let layer = &image.layers[i];
            unpack_layer(cd, snapshotter, layer, &image.diff_ids[i], chain_id, parent)
                .await
                .with_context(|| format!("layer {i} ({})", layer.digest))?;
        }
        parent = Some(chain_id);
    }
    Ok(())
}

async fn unpack_layer(
    cd: &Containerd,
    snapshotter: &str,
    layer: &containerd_client::types::Descriptor,
    diff_id: &str,
    chain_id: &ChainId,
    parent: Option<&ChainId>,
) -> Result<()> {
    if cd.blob_info(&layer.digest).await?.is_none() {
        bail!("its blob is not in the content store, and its snapshot {chain_id} is not in {snapshotter}");
    }
    let chain = chain_id.to_string();
    let mut labels = HashMap::from([
        (LABEL_SNAPSHOT_REF.to_string(), chain.clone()),
        (LABEL_DIFF_ID.to_string(), diff_id.to_string()),
    ]);
    if let Some(parent) = parent {
        labels.insert(LABEL_PARENT.to_string(), parent.to_string());
    }
    // containerd's unpack key format, "extract-<unique> <chain ID>".
    let key = format!("extract-{}-{} {chain}", std::process::id(), unique_suffix());
    let parent = parent.map(ToString::to_string).unwrap_or_default();
    let mounts = match cd.prepare_labelled_snapshot(snapshotter, &key, &parent, labels.clone()).await {
        Ok(mounts) => mounts,
        // Another unpacker got there first (the chain ID as the ref).
        Err(e) if is_code(&e, tonic::Code::AlreadyExists) && is_unpacked(cd, snapshotter, chain_id).await? => {
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let applied = match cd.apply_layer(layer.clone(), mounts).await {
        Ok(applied) if applied.digest == diff_id => Ok(()),
        Ok(applied) => Err(anyhow::anyhow!(
            "it unpacks to {} where the image's config says {diff_id}: the layer is not the image's",
            applied.digest
        )),
        Err(e) => Err(e),
    };
    let committed = match applied {
        Ok(()) => cd.commit_snapshot(snapshotter, &chain, &key, labels).await,
        Err(e) => Err(e),
    };
    match committed {
        Ok(()) => {
            let uncompressed = HashMap::from([(LABEL_UNCOMPRESSED.to_string(), diff_id.to_string())]);
            cd.label_blob(&layer.digest, uncompressed).await
        }
        Err(e) => {
            if let Err(removal) = cd.remove_snapshot(snapshotter, &key).await {
                log::warn!("removing the unfinished snapshot {key:?}: {removal:#}");
            }
            // Committed meanwhile by another unpacker: as good.
            if is_code(&e, tonic::Code::AlreadyExists) { Ok(()) } else { Err(e) }
        }
    }
}
