//! The `ExportImage` RPC's body: an image out of this host's content store,
//! as one `ImageHeader` and then every blob of this platform's chain (a
//! `BlobHeader` and its data), children before the manifests naming them,
//! so the importer can label each manifest for containerd's garbage
//! collector as it commits it.
//!
//! An image whose target is an index goes with that index as its target:
//! the image keeps its name and digest on every host (`ctr images ls`
//! shows the same), and the index's other platforms, absent here as after
//! any pull, are simply not sent; containerd's unpacker and ours pick this
//! platform's manifest out of the index.

use anyhow::{Context, Result};
use containerd_client::types::Descriptor;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use super::platform::PlatformImage;
use crate::host::containerd::{Containerd, RpcError};
use crate::host::pipe::CHUNK;
use crate::proto::image_chunk::Part;
use crate::proto::{BlobHeader, ImageChunk, ImageHeader};

/// A blob of the image that this host does not have, so the image cannot
/// be sent (a layer discarded after unpacking, say).
#[derive(Debug, thiserror::Error)]
#[error(
    "image {image}: blob {digest} ({media_type}) is not in this host's content store, so the image cannot be \
     exported from here (were its layers discarded after unpacking?)"
)]
pub struct MissingBlob {
    pub image: String,
    pub digest: String,
    pub media_type: String,
}

/// Streams image `reference` of `cd`'s namespace. The stream ends with an
/// error status if anything fails on the way (the importer then commits
/// nothing of the blob under way).
pub fn export(cd: Containerd, reference: &str) -> ReceiverStream<Result<ImageChunk, Status>> {
    let (tx, rx) = mpsc::channel(4);
    let reference = reference.to_string();
    tokio::spawn(async move {
        if let Err(e) = send_image(&cd, &reference, &tx).await {
            log::warn!("exporting image {reference} failed: {e:#}");
            // Nobody to tell if the importer hung up.
            let _ = tx.send(Err(status_of(&e))).await;
        }
    });
    ReceiverStream::new(rx)
}

type Sender = mpsc::Sender<Result<ImageChunk, Status>>;

/// The importer went away: nothing more to send.
#[derive(Debug, thiserror::Error)]
#[error("the importer closed the stream")]
struct Gone;

async fn send(tx: &Sender, part: Part) -> Result<()> {
    tx.send(Ok(ImageChunk { part: Some(part) })).await.map_err(|_| Gone.into())
}

fn header(d: &Descriptor) -> BlobHeader {
    BlobHeader { media_type: d.media_type.clone(), digest: d.digest.clone(), size: d.size }
}

async fn send_image(cd: &Containerd, reference: &str, tx: &Sender) -> Result<()> {
    let image = PlatformImage::read(cd, reference).await?;
    let blobs = image.blobs();
    // Checked before the first byte goes, so a missing layer is a clear
    // error rather than a stream that breaks halfway.
    for blob in &blobs {
        if cd.blob_info(&blob.digest).await?.is_none() {
            return Err(MissingBlob {
                image: reference.to_string(),
                digest: blob.digest.clone(),
                media_type: blob.media_type.clone(),
            }
            .into());
        }
    }
    let count = u32::try_from(blobs.len()).context("an image with more than 2^32 blobs")?;
    send(
        tx,
        Part::Image(ImageHeader { name: reference.to_string(), target: Some(header(&image.target)), blobs: count }),
    )
    .await?;
    for blob in &blobs {
        send(tx, Part::Blob(header(blob))).await?;
        send_blob(cd, blob, tx).await.with_context(|| format!("image {reference}: blob {}", blob.digest))?;
    }
    Ok(())
}

/// Sends blob `blob`'s data in pieces of at most [`CHUNK`] bytes, checking
/// its size here and its digest as it is read.
async fn send_blob(cd: &Containerd, blob: &Descriptor, tx: &Sender) -> Result<()> {
    let (data_tx, mut data_rx) = mpsc::channel(4);
    let read = cd.read_blob_to(&blob.digest, data_tx);
    let forward = async {
        let mut sent = 0i64;
        while let Some(chunk) = data_rx.recv().await {
            let chunk = chunk?;
            for piece in chunk.chunks(CHUNK) {
                send(tx, Part::Data(piece.to_vec())).await?;
                sent += piece.len() as i64;
            }
        }
        anyhow::ensure!(sent == blob.size, "its data has {sent} bytes where its descriptor says {}", blob.size);
        Ok(())
    };
    let (read, forward) = tokio::join!(read, forward);
    // The reader's error says why the data stopped; the forwarder's only
    // that it did (or that the importer went away).
    read?;
    forward
}

/// The status the importer sees: containerd's own code where containerd
/// refused (an unknown image is NOT_FOUND), else what went wrong here.
fn status_of(e: &anyhow::Error) -> Status {
    let message = format!("{e:#}");
    if e.downcast_ref::<MissingBlob>().is_some() {
        return Status::failed_precondition(message);
    }
    match e.downcast_ref::<RpcError>() {
        Some(rpc) => Status::new(rpc.code, message),
        None => Status::new(Code::Internal, message),
    }
}
