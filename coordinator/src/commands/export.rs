//! `migratectl checkpoint export`: a checkpoint of the store as containerd's
//! checkpoint image, so that `ctr container restore` (and containerd's Go
//! client) can restore it; see [`crate::checkpoint_image`] for the format.
//!
//! Every part is streamed into containerd's content store inside a lease,
//! checked against the checkpoint's manifest as it is read; the index and
//! the image record come last, so a failure leaves no image and the lease's
//! end lets the garbage collector take what was written.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use containerd_client::tonic::Code;
use migrate_oci::Checkpoint;
use oci_spec::image::Descriptor;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::Global;
use crate::checkpoint_image::{
    self as image, LABEL_CHECKPOINT, MEDIA_TYPE_CONFIG, MEDIA_TYPE_CRIU, MEDIA_TYPE_INDEX, MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_OPTIONS, Parts,
};
use crate::commands::checkpoint::{RootArg, blocking, existing_store};
use crate::containerd::{self, Containerd, CutShort};
use crate::output::{self, human_bytes, human_ms, round_ms};
use crate::pipe::{self, ChunkWriter};
use crate::runc_options::CheckpointOptions;

/// The runtime a checkpoint that names none was taken with.
const DEFAULT_RUNTIME: &str = "io.containerd.migrate.v1";

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    root: RootArg,
    /// Snapshotter that `ctr container restore` prepares the new root file
    /// system with (the checkpoint image names it)
    #[arg(long, default_value = "overlayfs")]
    snapshotter: String,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
    /// The checkpoint to export
    id: String,
    /// Name of the image to create in containerd, e.g. example.com/checkpoints/web:1
    image_ref: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Exported {
    checkpoint: String,
    image: String,
    digest: String,
    /// The index and every part but the container's image.
    size_bytes: u64,
    runtime: String,
    total_ms: f64,
}

pub async fn export(g: &Global, a: ExportArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let (store_dir, id) = (a.root.root.clone(), a.id.clone());
    let checkpoint = blocking(move || {
        let store = existing_store(&store_dir)?
            .with_context(|| format!("there is no checkpoint store at {}", store_dir.display()))?;
        Ok(store.get(&id)?)
    })
    .await?;
    let m = checkpoint.manifest().clone();
    if let Some(parent) = &m.parent {
        bail!(
            "checkpoint {} builds on checkpoint {parent} (an incremental dump): containerd's checkpoint image \
             holds one complete set of images, so only a full checkpoint can be exported",
            m.id
        );
    }
    let image_name = m.container.image.clone().with_context(|| {
        format!(
            "checkpoint {} names no image, and ctr container restore needs one to prepare the root file system from",
            m.id
        )
    })?;
    let runtime = Some(m.container.runtime.clone()).filter(|r| !r.is_empty()).unwrap_or(DEFAULT_RUNTIME.into());
    let spec = {
        let checkpoint = checkpoint.clone();
        blocking(move || read_listed(&checkpoint, migrate_oci::CONFIG_FILE)).await?
    }
    .with_context(|| format!("checkpoint {} holds no container spec (config.json) to restore with", m.id))?;

    let cd = Containerd::connect(&g.address, &g.namespace).await?;
    let target = cd
        .image(&image_name)
        .await
        .with_context(|| format!("the image of checkpoint {} must be in containerd", m.id))?
        .target
        .with_context(|| format!("image {image_name} has no target"))?;
    let (leased, lease) = cd.with_lease("export").await?;
    let written =
        write_parts(&leased, &checkpoint, &a, spec, (image_name, image::from_containerd(&target)?), runtime.clone())
            .await;
    if let Err(e) = lease.release().await {
        log::warn!("{e:#} (it expires by itself within an hour)");
    }
    let (digest, size_bytes) = written?;

    let exported = Exported {
        checkpoint: m.id.clone(),
        image: a.image_ref.clone(),
        digest,
        size_bytes,
        runtime,
        total_ms: round_ms(started.elapsed()),
    };
    if a.json {
        output::print_json(&exported)?;
    } else {
        println!(
            "{}  exported as {} ({}, {})  total {}",
            exported.checkpoint,
            exported.image,
            exported.digest,
            human_bytes(exported.size_bytes),
            human_ms(Some(exported.total_ms))
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the parts, the index and the image record; returns the index's
/// digest and the size of all that was written.
async fn write_parts(
    cd: &Containerd,
    checkpoint: &Checkpoint,
    a: &ExportArgs,
    spec: Vec<u8>,
    image: (String, Descriptor),
    runtime: String,
) -> Result<(String, u64)> {
    let id = &checkpoint.manifest().id;
    // Ingest references only need to be unique while the write lasts.
    let reference = |part: &str| format!("migratectl-export-{id}-{part}-{}", std::process::id());

    let cp = checkpoint.clone();
    let criu = write_part(cd, &reference("criu"), HashMap::new(), move |mut w| {
        cp.write_criu_tar(&mut w)?;
        Ok(w.finish()?)
    })
    .await
    .with_context(|| format!("write the CRIU images of checkpoint {id} to containerd"))?;

    let rw = match checkpoint.rootfs_diff() {
        None => None,
        Some(_) => {
            let cp = checkpoint.clone();
            let layer = write_part(cd, &reference("rw"), HashMap::new(), move |w| gzip_rootfs_diff(&cp, w))
                .await
                .with_context(|| format!("write the rootfs diff of checkpoint {id} to containerd"))?;
            Some(image::blob(MEDIA_TYPE_LAYER_GZIP, &layer.0, layer.1)?)
        }
    };

    let config = write_bytes(cd, &reference("config"), image::encode_spec(&spec)).await?;
    let options = CheckpointOptions { exit: !checkpoint.manifest().leave_running, ..Default::default() };
    let options = write_bytes(cd, &reference("options"), image::encode_options(&options)).await?;

    let parts = Parts {
        image,
        runtime,
        snapshotter: a.snapshotter.clone(),
        rw,
        criu: image::blob(MEDIA_TYPE_CRIU, &criu.0, criu.1)?,
        config: image::blob(MEDIA_TYPE_CONFIG, &config.0, config.1)?,
        options: image::blob(MEDIA_TYPE_OPTIONS, &options.0, options.1)?,
    };
    let index = image::build_index(&parts);
    let json = image::index_json(&index);
    let (digest, size) = write_part(cd, &reference("index"), image::gc_labels(&index), move |w| send_bytes(w, &json))
        .await
        .context("write the checkpoint image's index to containerd")?;

    let target = containerd_client::types::Descriptor {
        media_type: MEDIA_TYPE_INDEX.into(),
        digest: digest.clone(),
        size,
        annotations: HashMap::new(),
    };
    let labels = HashMap::from([(LABEL_CHECKPOINT.to_string(), "true".to_string())]);
    if let Err(e) = cd.create_image(&a.image_ref, target, labels).await {
        if containerd::is_code(&e, Code::AlreadyExists) {
            bail!(
                "an image named {} already exists in namespace {}: remove it (ctr image rm) or choose another name",
                a.image_ref,
                cd.namespace()
            );
        }
        return Err(e);
    }
    let parts_size: u64 = index.manifests()[1..].iter().map(|d| d.size()).sum();
    Ok((digest, parts_size + size as u64))
}

/// Streams what `produce` writes (on a blocking thread) into the content
/// store as one blob with `labels`; returns its digest and size.
async fn write_part(
    cd: &Containerd,
    reference: &str,
    labels: HashMap<String, String>,
    produce: impl FnOnce(ChunkWriter) -> Result<()> + Send + 'static,
) -> Result<(String, i64)> {
    let (w, rx) = pipe::chunks();
    let producer = tokio::task::spawn_blocking(move || produce(w));
    let written = cd.write_blob(reference, rx, labels).await;
    let produced = producer.await.context("a worker thread panicked")?;
    match (produced, written) {
        (Ok(()), written) => written,
        // The stream stopped because the producer failed: its error says why.
        (Err(p), Err(w)) if w.is::<CutShort>() => Err(p),
        (Err(_), Err(w)) => Err(w),
        (Err(p), Ok(_)) => Err(p),
    }
}

async fn write_bytes(cd: &Containerd, reference: &str, bytes: Vec<u8>) -> Result<(String, i64)> {
    write_part(cd, reference, HashMap::new(), move |w| send_bytes(w, &bytes)).await
}

fn send_bytes(mut w: ChunkWriter, bytes: &[u8]) -> Result<()> {
    w.write_all(bytes)?;
    Ok(w.finish()?)
}

/// `rootfs-diff.tar` gzipped into `w` (what `ctr container restore --rw`
/// looks for), checked against the manifest as it is read.
fn gzip_rootfs_diff(cp: &Checkpoint, w: ChunkWriter) -> Result<()> {
    let path = cp.rootfs_diff().context("the checkpoint has no rootfs diff")?;
    let mut file = std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?;
    // Fastest level: the layer is restored once, usually next door.
    let mut gz = flate2::write::GzEncoder::new(w, flate2::Compression::fast());
    let mut hasher = Sha256::new();
    let mut buf = vec![0; pipe::CHUNK];
    loop {
        let n = file.read(&mut buf).with_context(|| format!("read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        gz.write_all(&buf[..n])?;
    }
    check_listed(cp, &path, hasher)?;
    Ok(gz.finish()?.finish()?)
}

/// Compares what was read of `path` with the manifest's sha256 for it.
fn check_listed(cp: &Checkpoint, path: &std::path::Path, hasher: Sha256) -> Result<()> {
    let rel = path.strip_prefix(cp.dir()).unwrap_or(path).to_string_lossy().into_owned();
    let found = hex(&hasher.finalize());
    let listed = cp.manifest().files.iter().find(|f| f.path == rel).with_context(|| format!("{rel} is not listed"))?;
    if listed.sha256.to_string() != found {
        bail!(
            "checkpoint {}: {rel} is damaged (sha256 mismatch: expected {}, found {found}); it cannot be exported",
            cp.manifest().id,
            listed.sha256
        );
    }
    Ok(())
}

/// The bytes of file `rel` if the checkpoint lists it, checked.
fn read_listed(cp: &Checkpoint, rel: &str) -> Result<Option<Vec<u8>>> {
    if !cp.manifest().files.iter().any(|f| f.path == rel) {
        return Ok(None);
    }
    let path: PathBuf = cp.dir().join(rel);
    let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
    check_listed(cp, &path, Sha256::new_with_prefix(&bytes))?;
    Ok(Some(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
