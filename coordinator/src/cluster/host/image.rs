//! An image's root file system as containerd's snapshotters know it: the
//! chain ID of its layers, read from the image config in the content store.

use anyhow::{Context, Result, anyhow, bail};
use migrate_oci::ChainId;
use oci_spec::image::{ImageIndex, ImageManifest, Platform};
use serde::Deserialize;

use super::containerd::Containerd;

pub const INDEX_TYPES: [&str; 2] =
    ["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];
pub const MANIFEST_TYPES: [&str; 2] =
    ["application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"];

#[derive(Debug, Deserialize)]
struct ImageConfig {
    rootfs: ConfigRootfs,
    #[serde(default)]
    config: Option<oci_spec::image::Config>,
}

#[derive(Debug, Deserialize)]
struct ConfigRootfs {
    diff_ids: Vec<String>,
}

/// The digest of the manifest of an index that fits `platform` (its OS and
/// architecture).
pub fn pick_manifest(index: &[u8], platform: &Platform) -> Result<String> {
    let index: ImageIndex = serde_json::from_slice(index).context("the image index does not parse")?;
    let fits = |p: &Platform| p.os() == platform.os() && p.architecture() == platform.architecture();
    index
        .manifests()
        .iter()
        .find(|m| m.platform().as_ref().is_some_and(fits))
        .or_else(|| index.manifests().iter().find(|m| m.platform().is_none()))
        .map(|m| m.digest().to_string())
        .with_context(|| format!("the image index has no manifest for {}/{}", platform.os(), platform.architecture()))
}

fn config_digest(manifest: &[u8]) -> Result<String> {
    let manifest: ImageManifest = serde_json::from_slice(manifest).context("the image manifest does not parse")?;
    Ok(manifest.config().digest().to_string())
}

pub fn diff_ids(config: &[u8]) -> Result<Vec<String>> {
    let config: ImageConfig = serde_json::from_slice(config).context("the image config does not parse")?;
    Ok(config.rootfs.diff_ids)
}

/// The chain ID of image `name`'s layers, the parent to prepare a
/// container's snapshot on.
pub async fn rootfs_chain_id(cd: &Containerd, name: &str) -> Result<ChainId> {
    Ok(facts(cd, name).await?.chain_id)
}

/// What running a container of an image needs to know of it.
pub struct ImageFacts {
    pub chain_id: ChainId,
    /// Its command, environment, working directory and user; None if the
    /// image config has none.
    pub config: Option<oci_spec::image::Config>,
}

/// Image `name`'s [`ImageFacts`], from its config in the content store.
pub async fn facts(cd: &Containerd, name: &str) -> Result<ImageFacts> {
    let image = cd.image(name).await?;
    let target = image.target.with_context(|| format!("image {name} has no target"))?;
    let mut digest = target.digest;
    let mut media_type = target.media_type;
    let mut blob = cd.read_blob(&digest).await?;
    if INDEX_TYPES.contains(&media_type.as_str()) {
        digest = pick_manifest(&blob, &migrate_oci::platform::platform()).with_context(|| format!("image {name}"))?;
        blob = cd.read_blob(&digest).await?;
        media_type = MANIFEST_TYPES[0].to_string();
    }
    if !MANIFEST_TYPES.contains(&media_type.as_str()) {
        bail!("image {name}: its target {digest} is a {media_type}, not an image manifest or index");
    }
    let config = config_digest(&blob).with_context(|| format!("image {name}, manifest {digest}"))?;
    let parsed: ImageConfig = serde_json::from_slice(&cd.read_blob(&config).await?)
        .with_context(|| format!("image {name}: its config {config} does not parse"))?;
    let chain_id =
        ChainId::of_layers(&parsed.rootfs.diff_ids).map_err(|e| anyhow!("image {name}, config {config}: {e}"))?;
    Ok(ImageFacts { chain_id, config: parsed.config })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn linux(arch: &str) -> Platform {
        oci_spec::image::PlatformBuilder::default().os("linux").architecture(arch).build().unwrap()
    }

    #[test]
    fn index_picks_linux_on_this_arch() {
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{A}","size":1,"platform":{{"os":"linux","architecture":"arm64"}}}},
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{B}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#
        );
        assert_eq!(pick_manifest(index.as_bytes(), &linux("amd64")).unwrap(), B);
        assert_eq!(pick_manifest(index.as_bytes(), &linux("arm64")).unwrap(), A);
        assert!(pick_manifest(index.as_bytes(), &linux("s390x")).unwrap_err().to_string().contains("linux/s390x"));
    }

    #[test]
    fn manifest_and_config_fields() {
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{A}","size":1}},"layers":[]}}"#
        );
        assert_eq!(config_digest(m.as_bytes()).unwrap(), A);
        let c = format!(r#"{{"architecture":"amd64","rootfs":{{"type":"layers","diff_ids":["{A}","{B}"]}}}}"#);
        let parsed: ImageConfig = serde_json::from_str(&c).unwrap();
        assert_eq!(parsed.rootfs.diff_ids, [A, B]);
        assert!(parsed.config.is_none());
        assert!(serde_json::from_slice::<ImageConfig>(b"{}").is_err());
    }
}
