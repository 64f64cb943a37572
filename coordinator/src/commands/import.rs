//! `migratectl checkpoint import`: containerd's checkpoint image (made by
//! `ctr container checkpoint --task`, with runc.v2 or this project's shim,
//! or by `checkpoint export`) committed into the store as a checkpoint of
//! this project's format, which `migratectl restore` restores.
//!
//! The CRIU tar is unpacked into `criu/` and the rw layer (gunzipped) kept
//! as `rootfs-diff.tar` as they stream from the content store, each file
//! hashed as it is written; the spec becomes `config.json`; the index's
//! annotations name the image and the runtime. The checkpoint is verified
//! once committed, like any other.

use std::io::Read;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use migrate_oci::{CheckpointStore, CommitInfo, ContainerInfo, HostInfo, Staging, Timings};
use oci_spec::image::Descriptor;
use serde::Serialize;

use crate::Global;
use crate::checkpoint_image::{self as image, MEDIA_TYPE_INDEX};
use crate::commands::checkpoint::{RootArg, blocking};
use crate::containerd::Containerd;
use crate::ids;
use crate::output::{self, human_bytes, human_ms, round_ms};
use crate::pipe::{self, ChunkReader};

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    #[command(flatten)]
    root: RootArg,
    /// Checkpoint id [default: <container>-<UTC time>]
    #[arg(long)]
    id: Option<String>,
    /// The id of the checkpointed container, which restores default to
    /// [default: the last part of the spec's cgroup path]
    #[arg(long, value_name = "ID")]
    container: Option<String>,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
    /// The checkpoint image in containerd, e.g. example.com/checkpoints/web:1
    image_ref: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Imported {
    id: String,
    image: String,
    container: String,
    runtime: String,
    size_bytes: u64,
    memory_bytes: u64,
    total_ms: f64,
}

pub async fn import(g: &Global, a: ImportArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let cd = Containerd::connect(&g.address, &g.namespace).await?;
    let target =
        cd.image(&a.image_ref).await?.target.with_context(|| format!("image {} has no target", a.image_ref))?;
    if target.media_type != MEDIA_TYPE_INDEX {
        bail!(
            "{} is a {}, not a checkpoint image (an OCI index, as ctr container checkpoint makes)",
            a.image_ref,
            target.media_type
        );
    }
    let index = cd.read_blob(&target.digest).await?;
    let found = image::find_parts(&index).with_context(|| format!("image {}", a.image_ref))?;
    let spec = match &found.config {
        Some(d) => Some(image::decode_spec(&cd.read_blob(d.digest().as_ref()).await?)?),
        None => None,
    };
    let options = match &found.options {
        Some(d) => image::decode_options(&cd.read_blob(d.digest().as_ref()).await?)?,
        None => Default::default(),
    };
    let container = a
        .container
        .clone()
        .or_else(|| spec.as_deref().and_then(image::container_id_from_spec))
        .unwrap_or_else(|| name_of(&a.image_ref));
    let id = match a.id.clone() {
        Some(id) => id,
        None => ids::default_checkpoint_id(&container, time::OffsetDateTime::now_utc()),
    };
    ids::validate_checkpoint_id(&id)?;

    let store_root = a.root.root.clone();
    let staging = blocking({
        let id = id.clone();
        move || {
            let store = CheckpointStore::open(&store_root)
                .with_context(|| format!("open the checkpoint store {}", store_root.display()))?;
            Ok(store.staging(&id)?)
        }
    })
    .await?;
    let staging = stream_into(&cd, staging, &found.criu, |staging, r| Ok(staging.import_criu_tar(r)?))
        .await
        .with_context(|| format!("unpack the CRIU images of {}", a.image_ref))?;
    let staging = match &found.rw {
        None => staging,
        Some(rw) => {
            let gzip = found.rw_is_gzip();
            stream_into(&cd, staging, rw, move |staging, r| {
                let r: Box<dyn Read> = if gzip { Box::new(flate2::read::GzDecoder::new(r)) } else { Box::new(r) };
                Ok(staging.add_file_from(migrate_oci::ROOTFS_DIFF_FILE, r)?)
            })
            .await
            .with_context(|| format!("write the rootfs diff of {}", a.image_ref))?
        }
    };

    let info = CommitInfo {
        container: ContainerInfo {
            id: container.clone(),
            namespace: cd.namespace().to_string(),
            image: found.image.clone(),
            runtime: found.runtime.clone().unwrap_or_default(),
        },
        parent: None,
        leave_running: !options.exit,
        // Which snapshot directories held the image's layers where the
        // checkpoint was taken is not in the image; the shim compares
        // recorded ones with the restored container's, so record none (the
        // rw layer, if any, is still applied: it is in the file list).
        rootfs: None,
        timings: Timings::default(),
        // The images were made by whichever CRIU runc.v2 ran, which the
        // image does not say: none is recorded rather than this host's.
        host: HostInfo::this_machine(None),
        // A checkpoint of runc.v2 or Podman was taken on request, never at
        // a ready point of this runtime's.
        ready: None,
    };
    let checkpoint = blocking(move || {
        let mut staging = staging;
        if let Some(spec) = spec {
            staging.add_file(migrate_oci::CONFIG_FILE, &spec)?;
        }
        let checkpoint = staging.commit(info)?;
        checkpoint.verify()?;
        Ok(checkpoint)
    })
    .await
    .with_context(|| format!("commit checkpoint {id}"))?;

    let m = checkpoint.manifest();
    let imported = Imported {
        id: m.id.clone(),
        image: a.image_ref.clone(),
        container,
        runtime: m.container.runtime.clone(),
        size_bytes: checkpoint.size_bytes(),
        memory_bytes: m.memory_bytes,
        total_ms: round_ms(started.elapsed()),
    };
    if a.json {
        output::print_json(&imported)?;
    } else {
        println!(
            "{}  imported from {}  size {}  total {}",
            imported.id,
            imported.image,
            human_bytes(imported.size_bytes),
            human_ms(Some(imported.total_ms))
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Streams blob `d` from the content store into `consume`, which runs on a
/// blocking thread with the staging checkpoint and hands it back.
async fn stream_into(
    cd: &Containerd,
    staging: Staging,
    d: &Descriptor,
    consume: impl FnOnce(&mut Staging, ChunkReader) -> Result<()> + Send + 'static,
) -> Result<Staging> {
    let (tx, reader) = pipe::reader();
    let consumer = tokio::task::spawn_blocking(move || {
        let mut staging = staging;
        consume(&mut staging, reader).map(|()| staging)
    });
    let read = cd.read_blob_to(d.digest().as_ref(), tx).await;
    let consumed = consumer.await.context("a worker thread panicked")?;
    // A failed read fails the consumer too; the read's error is the cause.
    read?;
    consumed
}

/// `example.com/checkpoints/web:1` → `web`.
fn name_of(reference: &str) -> String {
    let path = reference.rsplit('/').next().unwrap_or(reference);
    let name = path.split([':', '@']).next().unwrap_or(path);
    if name.is_empty() { "checkpoint".into() } else { name.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_from_the_image_reference() {
        assert_eq!(name_of("example.com/checkpoints/web:1"), "web");
        assert_eq!(name_of("web"), "web");
        assert_eq!(name_of("localhost:5000/a/b@sha256:00"), "b");
        assert_eq!(name_of(":1"), "checkpoint");
    }
}
