//! An image from another agent's `ExportImage` into this host's content
//! store: each blob written under a lease and committed only if its data
//! hashes to the digest it was sent under, blobs this host has already
//! skipped, manifests and indexes labelled for containerd's garbage
//! collector as a pull labels them, then the image record.

use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result, bail};
use containerd_client::types::Descriptor;
use tokio::sync::mpsc;
use tonic::Streaming;
use tonic::transport::Channel;

use super::platform::{gc_labels, is_index, is_manifest};
use crate::host::containerd::{Containerd, CutShort};
use crate::host::pipe::Chunk;
use crate::proto::agent_client::AgentClient;
use crate::proto::image_chunk::Part;
use crate::proto::{BlobHeader, ExportImageRequest, ImageChunk, ImageHeader};

/// Manifests and indexes are held in memory to be parsed for their labels;
/// containerd's own limit for a manifest is 4 MiB.
const MAX_MANIFEST: i64 = 8 << 20;

/// What an import moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageFetch {
    /// Bytes of blob data received (also of blobs this host had).
    pub bytes: u64,
    /// Blobs written into the content store (the others were here).
    pub blobs: u32,
}

/// Fetches image `reference` from the agent behind `client` into `cd`'s
/// namespace, and points the image record `reference` at its target.
pub async fn fetch_from_agent(
    cd: &Containerd,
    mut client: AgentClient<Channel>,
    reference: &str,
) -> Result<ImageFetch> {
    let failed = |s: tonic::Status| anyhow::anyhow!("{}", crate::tls::status_chain(&s));
    let mut stream = client
        .export_image(ExportImageRequest { reference: reference.to_string() })
        .await
        .map_err(failed)
        .with_context(|| format!("asking the source agent for image {reference}"))?
        .into_inner();
    let header = match stream.message().await.map_err(failed)? {
        Some(ImageChunk { part: Some(Part::Image(header)) }) => header,
        other => bail!("the source agent's export of {reference} began with {other:?}, not an image header"),
    };
    if header.name != reference {
        bail!("asked the source agent for image {reference}, it sent {}", header.name);
    }
    let (leased, lease) = cd.with_lease("image-import").await?;
    let result = receive(&leased, Incoming { stream, reference }, &header).await;
    // The image record keeps the blobs from now on; without one (an error)
    // the lease's end lets the garbage collector take what came.
    if let Err(e) = lease.release().await {
        log::warn!("releasing the lease of the import of {reference}: {e:#}");
    }
    result.with_context(|| format!("importing image {reference} from the source agent"))
}

async fn receive(cd: &Containerd, mut incoming: Incoming<'_>, header: &ImageHeader) -> Result<ImageFetch> {
    let target = header.target.clone().context("the image header has no target")?;
    let mut fetch = ImageFetch { bytes: 0, blobs: 0 };
    let mut carried = HashSet::new();
    for _ in 0..header.blobs {
        let blob = incoming.blob_header().await?;
        if blob.size < 0 {
            bail!("blob {} has a negative size {}", blob.digest, blob.size);
        }
        carried.insert(blob.digest.clone());
        fetch.bytes += blob.size as u64;
        if let Some(info) = cd.blob_info(&blob.digest).await? {
            if info.size != blob.size {
                bail!("blob {} is {} bytes here but {} at the source", blob.digest, info.size, blob.size);
            }
            incoming.skip(blob.size).await?;
            cd.lease_blob(&blob.digest).await?;
            continue;
        }
        if is_manifest(&blob.media_type) || is_index(&blob.media_type) {
            write_manifest(cd, &blob, &mut incoming, &carried).await?;
        } else {
            write_streamed(cd, &blob, &mut incoming).await?;
        }
        fetch.blobs += 1;
    }
    if let Some(extra) = incoming.stream.message().await.map_err(|s| incoming.failed(s))? {
        bail!("the source agent sent more than the {} blobs it announced: {extra:?}", header.blobs);
    }
    if !carried.contains(&target.digest) {
        bail!("the source agent did not send the image's target {}", target.digest);
    }
    let target = Descriptor {
        media_type: target.media_type,
        digest: target.digest,
        size: target.size,
        annotations: HashMap::new(),
    };
    cd.put_image(incoming.reference, target, HashMap::new()).await?;
    Ok(fetch)
}

/// A manifest or index: held whole, so its labels can be made from it.
async fn write_manifest(
    cd: &Containerd,
    blob: &BlobHeader,
    incoming: &mut Incoming<'_>,
    carried: &HashSet<String>,
) -> Result<()> {
    if blob.size > MAX_MANIFEST {
        bail!(
            "{} {} is {} bytes, more than a manifest may be ({MAX_MANIFEST})",
            blob.media_type,
            blob.digest,
            blob.size
        );
    }
    let mut data = Vec::with_capacity(blob.size as usize);
    let mut left = blob.size;
    while left > 0 {
        let piece = incoming.data(left).await?;
        left -= piece.len() as i64;
        data.extend_from_slice(&piece);
    }
    let labels = gc_labels(&blob.media_type, &data, carried).with_context(|| format!("blob {}", blob.digest))?;
    let (tx, rx) = mpsc::channel(2);
    let feed = async move {
        // The receiving end only goes if the write failed, which says why.
        let _ = tx.send(Chunk::Data(data)).await;
        let _ = tx.send(Chunk::End).await;
    };
    let ingest = ingest_ref(&blob.digest);
    let (written, ()) = tokio::join!(cd.write_known_blob(&ingest, &blob.digest, rx, labels), feed);
    finish(cd, blob, written).await
}

/// Any other blob: its data goes on to containerd as it arrives.
async fn write_streamed(cd: &Containerd, blob: &BlobHeader, incoming: &mut Incoming<'_>) -> Result<()> {
    let (tx, rx) = mpsc::channel(4);
    let feed = async move {
        let mut left = blob.size;
        while left > 0 {
            let piece = incoming.data(left).await?;
            left -= piece.len() as i64;
            if tx.send(Chunk::Data(piece)).await.is_err() {
                // The write failed; its error says why.
                return Ok(());
            }
        }
        let _ = tx.send(Chunk::End).await;
        Ok::<_, anyhow::Error>(())
    };
    let ingest = ingest_ref(&blob.digest);
    let write = cd.write_known_blob(&ingest, &blob.digest, rx, HashMap::new());
    let (written, fed) = tokio::join!(write, feed);
    match (written, fed) {
        // The stream broke: the write was cut short because of it.
        (Err(e), Err(cause)) if e.is::<CutShort>() => {
            abort(cd, blob).await;
            Err(cause)
        }
        (written, _) => finish(cd, blob, written).await,
    }
}

async fn finish(cd: &Containerd, blob: &BlobHeader, written: Result<i64>) -> Result<()> {
    match written {
        Ok(size) if size == blob.size => Ok(()),
        Ok(size) => bail!("blob {} arrived with {size} bytes where {} were announced", blob.digest, blob.size),
        Err(e) => {
            abort(cd, blob).await;
            Err(e)
        }
    }
}

/// Drops the unfinished write of `blob`, so the next try starts afresh.
async fn abort(cd: &Containerd, blob: &BlobHeader) {
    if let Err(e) = cd.abort_write(&ingest_ref(&blob.digest)).await {
        log::debug!("aborting the write of {}: {e:#}", blob.digest);
    }
}

/// The content store's name for the write of `digest` under way.
fn ingest_ref(digest: &str) -> String {
    format!("migrate-image-{digest}")
}

/// The export stream, read in the order the exporter sends it.
struct Incoming<'a> {
    stream: Streaming<ImageChunk>,
    reference: &'a str,
}

impl Incoming<'_> {
    fn failed(&self, s: tonic::Status) -> anyhow::Error {
        anyhow::anyhow!("the source agent's export of {} failed: {}", self.reference, crate::tls::status_chain(&s))
    }

    async fn next(&mut self) -> Result<Part> {
        match self.stream.message().await.map_err(|s| self.failed(s))? {
            Some(ImageChunk { part: Some(part) }) => Ok(part),
            Some(ImageChunk { part: None }) => bail!("the source agent sent an empty chunk"),
            None => bail!("the source agent's export of {} ended before its last blob", self.reference),
        }
    }

    async fn blob_header(&mut self) -> Result<BlobHeader> {
        match self.next().await? {
            Part::Blob(header) => Ok(header),
            other => bail!("expected a blob header from the source agent, got {}", describe(&other)),
        }
    }

    /// The next piece of a blob's data, of at most `left` bytes.
    async fn data(&mut self, left: i64) -> Result<Vec<u8>> {
        match self.next().await? {
            Part::Data(data) if data.len() as i64 <= left => Ok(data),
            Part::Data(data) => bail!("the source agent sent {} bytes where {left} were left of a blob", data.len()),
            other => bail!("expected {left} more bytes of a blob, got {}", describe(&other)),
        }
    }

    async fn skip(&mut self, mut left: i64) -> Result<()> {
        while left > 0 {
            left -= self.data(left).await?.len() as i64;
        }
        Ok(())
    }
}

fn describe(part: &Part) -> String {
    match part {
        Part::Image(h) => format!("an image header ({})", h.name),
        Part::Blob(h) => format!("the header of blob {}", h.digest),
        Part::Data(d) => format!("{} bytes of data", d.len()),
    }
}
