//! An image as this host's platform sees it: its target, and below it (the
//! platform's manifest of an index, or the target itself) the manifest, its
//! config and its layers. Exporting, importing, unpacking and the check
//! whether an image is usable all walk this chain, and only this one: the
//! other platforms of an index are not needed here and usually not present.

use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result, bail};
use containerd_client::types::Descriptor;
use migrate_oci::ChainId;
use oci_spec::image::{ImageIndex, ImageManifest};

use crate::host::containerd::Containerd;
use crate::host::image::{INDEX_TYPES, MANIFEST_TYPES, diff_ids, pick_manifest};

/// containerd's garbage collector follows these labels from a blob to the
/// blobs it names (containerd's `images.ChildGCLabels`).
const GC_CONFIG: &str = "containerd.io/gc.ref.content.config";
const GC_LAYER: &str = "containerd.io/gc.ref.content.l.";
const GC_MANIFEST: &str = "containerd.io/gc.ref.content.m.";

/// The chain from an image's target down to the layers of this platform.
#[derive(Debug, Clone)]
pub struct PlatformImage {
    pub name: String,
    /// The image record's target: `manifest`, or an index above it.
    pub target: Descriptor,
    pub manifest: Descriptor,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    /// The uncompressed digests of `layers`, from the config.
    pub diff_ids: Vec<String>,
}

impl PlatformImage {
    /// Reads image `name`'s record, index (if any), manifest and config
    /// from `cd`; its layers need not be present.
    pub async fn read(cd: &Containerd, name: &str) -> Result<PlatformImage> {
        let image = cd.image(name).await?;
        let target = image.target.with_context(|| format!("image {name} has no target"))?;
        let manifest = if is_index(&target.media_type) {
            let index = cd.read_blob(&target.digest).await.with_context(|| format!("image {name}: its index"))?;
            let digest =
                pick_manifest(&index, &migrate_oci::platform::platform()).with_context(|| format!("image {name}"))?;
            let parsed: ImageIndex = serde_json::from_slice(&index).context("the image index does not parse")?;
            let entry = parsed.manifests().iter().find(|m| m.digest().to_string() == digest);
            descriptor(entry.expect("pick_manifest picks one of the index's manifests"))
        } else {
            target.clone()
        };
        if !MANIFEST_TYPES.contains(&manifest.media_type.as_str()) {
            bail!(
                "image {name}: {} is a {}, not an image manifest (nested indexes are not supported)",
                manifest.digest,
                manifest.media_type
            );
        }
        let parsed = cd.read_blob(&manifest.digest).await.with_context(|| format!("image {name}: its manifest"))?;
        let parsed: ImageManifest = serde_json::from_slice(&parsed)
            .with_context(|| format!("image {name}: manifest {} does not parse", manifest.digest))?;
        let config = descriptor(parsed.config());
        let layers: Vec<Descriptor> = parsed.layers().iter().map(descriptor).collect();
        let diff_ids =
            diff_ids(&cd.read_blob(&config.digest).await.with_context(|| format!("image {name}: its config"))?)
                .with_context(|| format!("image {name}, config {}", config.digest))?;
        if diff_ids.len() != layers.len() {
            bail!(
                "image {name}: its manifest {} has {} layers but its config {} lists {} diff IDs",
                manifest.digest,
                layers.len(),
                config.digest,
                diff_ids.len()
            );
        }
        Ok(PlatformImage { name: name.to_string(), target, manifest, config, layers, diff_ids })
    }

    /// Every blob of the chain, each before the blobs that name it: the
    /// layers, the config, the manifest, then the index if there is one.
    pub fn blobs(&self) -> Vec<Descriptor> {
        let mut blobs = self.layers.clone();
        blobs.push(self.config.clone());
        blobs.push(self.manifest.clone());
        if self.target.digest != self.manifest.digest {
            blobs.push(self.target.clone());
        }
        blobs
    }

    /// The chain ID of the layers up to each layer, bottom first: the names
    /// of the snapshots an unpacked image consists of.
    pub fn chain_ids(&self) -> Result<Vec<ChainId>> {
        (1..=self.diff_ids.len())
            .map(|n| {
                ChainId::of_layers(&self.diff_ids[..n])
                    .map_err(|e| anyhow::anyhow!("image {}, config {}: {e}", self.name, self.config.digest))
            })
            .collect()
    }
}

pub fn is_index(media_type: &str) -> bool {
    INDEX_TYPES.contains(&media_type)
}

pub fn is_manifest(media_type: &str) -> bool {
    MANIFEST_TYPES.contains(&media_type)
}

fn descriptor(d: &oci_spec::image::Descriptor) -> Descriptor {
    Descriptor {
        media_type: d.media_type().to_string(),
        digest: d.digest().to_string(),
        size: i64::try_from(d.size()).unwrap_or(i64::MAX),
        annotations: d.annotations().clone().unwrap_or_default(),
    }
}

/// The labels by which a manifest or index (`data`, of `media_type`) keeps
/// its children from containerd's garbage collector, as containerd's pull
/// sets them: `config` and `l.N` on a manifest, `m.N` on an index for the
/// manifests that came with it (`carried`; the others, of other platforms,
/// are not on this host, as after a pull of one platform).
pub fn gc_labels(media_type: &str, data: &[u8], carried: &HashSet<String>) -> Result<HashMap<String, String>> {
    let mut labels = HashMap::new();
    if is_manifest(media_type) {
        let manifest: ImageManifest = serde_json::from_slice(data).context("the image manifest does not parse")?;
        labels.insert(GC_CONFIG.to_string(), manifest.config().digest().to_string());
        for (i, layer) in manifest.layers().iter().enumerate() {
            labels.insert(format!("{GC_LAYER}{i}"), layer.digest().to_string());
        }
    } else if is_index(media_type) {
        let index: ImageIndex = serde_json::from_slice(data).context("the image index does not parse")?;
        let kept = index.manifests().iter().map(|m| m.digest().to_string()).filter(|d| carried.contains(d));
        for (i, digest) in kept.enumerate() {
            labels.insert(format!("{GC_MANIFEST}{i}"), digest);
        }
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";
    const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

    fn desc(media_type: &str, digest: &str) -> Descriptor {
        Descriptor { media_type: media_type.into(), digest: digest.into(), size: 1, annotations: HashMap::new() }
    }

    #[test]
    fn manifest_labels_name_its_config_and_layers() {
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{A}","size":1}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{B}","size":1}},
                      {{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{C}","size":1}}]}}"#
        );
        let labels = gc_labels(OCI_MANIFEST, m.as_bytes(), &HashSet::new()).unwrap();
        assert_eq!(
            labels,
            HashMap::from([
                ("containerd.io/gc.ref.content.config".to_string(), A.to_string()),
                ("containerd.io/gc.ref.content.l.0".to_string(), B.to_string()),
                ("containerd.io/gc.ref.content.l.1".to_string(), C.to_string()),
            ])
        );
    }

    #[test]
    fn index_labels_only_the_manifests_that_came_along() {
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[
            {{"mediaType":"{OCI_MANIFEST}","digest":"{A}","size":1,"platform":{{"os":"linux","architecture":"arm64"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"{B}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#
        );
        let carried = HashSet::from([B.to_string(), C.to_string()]);
        let labels = gc_labels(OCI_INDEX, index.as_bytes(), &carried).unwrap();
        assert_eq!(labels, HashMap::from([("containerd.io/gc.ref.content.m.0".to_string(), B.to_string())]));
        assert!(gc_labels("application/vnd.oci.image.layer.v1.tar", b"not json", &carried).unwrap().is_empty());
        assert!(gc_labels(OCI_INDEX, b"{", &carried).is_err());
    }

    #[test]
    fn blobs_come_before_what_names_them_and_chain_ids_stack() {
        let mut image = PlatformImage {
            name: "x".into(),
            target: desc(OCI_MANIFEST, A),
            manifest: desc(OCI_MANIFEST, A),
            config: desc("application/vnd.oci.image.config.v1+json", B),
            layers: vec![desc("application/vnd.oci.image.layer.v1.tar", C)],
            diff_ids: vec![B.into(), C.into()],
        };
        let digests = |i: &PlatformImage| i.blobs().into_iter().map(|d| d.digest).collect::<Vec<_>>();
        assert_eq!(digests(&image), [C, B, A]);
        image.target = desc(OCI_INDEX, "sha256:index");
        assert_eq!(digests(&image), [C, B, A, "sha256:index"]);

        let ids = image.chain_ids().unwrap();
        assert_eq!(ids[0].to_string(), B);
        assert_eq!(ids[1], ChainId::of_layers(&[B, C]).unwrap());
    }
}
