//! A version as an OCI artifact, and the tags that name versions (see
//! [`super::registry_store`] for the layout).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::{
    ContainerRef, VERSION_MEDIA_TYPE,
    crypto::ChunkId,
    registry_api::{Blob, Digest, OCI_MANIFEST},
};

/// A chunk blob: plaintext, or sealed as the version manifest's
/// `encryption` says.
pub(super) const CHUNK_MEDIA_TYPE: &str = "application/vnd.containerd-migrate.chunk.v1";
/// On each layer: the id of the chunk it holds.
pub(super) const CHUNK_ANNOTATION: &str = "io.containerd.migrate.chunk";
pub(super) const NAMESPACE_ANNOTATION: &str = "io.containerd.migrate.namespace";
pub(super) const CONTAINER_ANNOTATION: &str = "io.containerd.migrate.container";
pub(super) const VERSION_ANNOTATION: &str = "io.containerd.migrate.version";
const CREATED_ANNOTATION: &str = "org.opencontainers.image.created";

/// Hex digits of the container hash in a tag: 128 bits, so that two
/// containers never share one.
const HASH_HEX: usize = 32;

/// The part of a version's tag that names its container: the first 128
/// bits of sha256("NAMESPACE/ID"), in hex. Neither name holds a `/`, so
/// the hashed string is unambiguous.
pub(super) fn container_hash(container: &ContainerRef) -> String {
    let digest = sha2::Sha256::digest(format!("{}/{}", container.namespace, container.id));
    hex::encode(digest)[..HASH_HEX].to_owned()
}

/// `<container hash>-<version>`: at most 53 characters of the tag grammar
/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub(super) fn version_tag(container: &ContainerRef, version: u64) -> String {
    format!("{}-{version}", container_hash(container))
}

/// The container hash and version of a version tag; None for a tag of any
/// other shape (another artifact in the repository), and for a version
/// written with leading zeros, which `version_tag` never makes.
pub(super) fn parse_version_tag(tag: &str) -> Option<(&str, u64)> {
    let (hash, version) = tag.split_once('-')?;
    let hash_ok = hash.len() == HASH_HEX && hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let canonical = version.bytes().all(|b| b.is_ascii_digit()) && (version == "0" || !version.starts_with('0'));
    if !hash_ok || !canonical {
        return None;
    }
    Some((hash, version.parse().ok()?))
}

/// An OCI image manifest: the fields this store writes and reads. Unknown
/// fields of other artifacts are ignored.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct OciManifest {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl OciManifest {
    /// The artifact of version `version` of `container`: `config` is its
    /// version manifest, `chunks` its distinct chunks with their blobs.
    /// `created` is the version manifest's time, RFC 3339.
    pub(super) fn version(
        container: &ContainerRef,
        version: u64,
        created: String,
        config: Blob,
        chunks: impl IntoIterator<Item = (ChunkId, Blob)>,
    ) -> OciManifest {
        let layers = chunks
            .into_iter()
            .map(|(id, blob)| Descriptor {
                media_type: CHUNK_MEDIA_TYPE.into(),
                digest: blob.digest,
                size: blob.size,
                annotations: BTreeMap::from([(CHUNK_ANNOTATION.into(), id.to_string())]),
            })
            .collect();
        OciManifest {
            schema_version: 2,
            media_type: OCI_MANIFEST.into(),
            artifact_type: Some(VERSION_MEDIA_TYPE.into()),
            config: Descriptor {
                media_type: VERSION_MEDIA_TYPE.into(),
                digest: config.digest,
                size: config.size,
                annotations: BTreeMap::new(),
            },
            layers,
            // The version number makes every version's manifest, and so
            // its digest, its own: deleting one version by digest can never
            // take another's tag with it.
            annotations: BTreeMap::from([
                (NAMESPACE_ANNOTATION.into(), container.namespace.clone()),
                (CONTAINER_ANNOTATION.into(), container.id.clone()),
                (VERSION_ANNOTATION.into(), version.to_string()),
                (CREATED_ANNOTATION.into(), created),
            ]),
        }
    }

    /// Whether this is a version of this store rather than another
    /// artifact that happens to have a tag of that shape.
    pub(super) fn is_version(&self) -> bool {
        self.config.media_type == VERSION_MEDIA_TYPE
    }

    /// The container the annotations name.
    pub(super) fn container(&self) -> Option<ContainerRef> {
        let namespace = self.annotations.get(NAMESPACE_ANNOTATION)?;
        let id = self.annotations.get(CONTAINER_ANNOTATION)?;
        ContainerRef::new(namespace, id).ok()
    }

    /// The chunk ids the layers' annotations name, with their blobs.
    pub(super) fn chunk_blobs(&self) -> impl Iterator<Item = (ChunkId, Blob)> + '_ {
        self.layers.iter().filter_map(|layer| {
            let id = layer.annotations.get(CHUNK_ANNOTATION)?.parse().ok()?;
            Some((id, Blob { digest: layer.digest.clone(), size: layer.size }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::versions::crypto::chunk_id;

    /// The distribution spec's tag grammar.
    fn valid_tag(tag: &str) -> bool {
        let b = tag.as_bytes();
        (1..=128).contains(&b.len())
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
    }

    #[test]
    fn tags_fit_the_grammar_and_parse_back() {
        let longest = ContainerRef::new(&"n".repeat(128), &"i".repeat(128)).unwrap();
        let tag = version_tag(&longest, u64::MAX);
        assert!(valid_tag(&tag) && tag.len() == 53, "{tag}");
        assert_eq!(parse_version_tag(&tag), Some((container_hash(&longest).as_str(), u64::MAX)));

        // Names that a separator would make ambiguous hash apart.
        let a = ContainerRef::new("a-b", "c").unwrap();
        let b = ContainerRef::new("a", "b-c").unwrap();
        assert_ne!(container_hash(&a), container_hash(&b));
        let tag = version_tag(&a, 7);
        assert!(valid_tag(&tag));
        assert_eq!(parse_version_tag(&tag), Some((container_hash(&a).as_str(), 7)));
    }

    #[test]
    fn other_tags_are_not_versions() {
        let hash = container_hash(&ContainerRef::new("default", "web").unwrap());
        for tag in ["latest", "v1", &format!("{hash}-"), &format!("{hash}-07"), &format!("{hash}-1-2")] {
            assert_eq!(parse_version_tag(tag), None, "{tag}");
        }
        assert_eq!(parse_version_tag(&format!("{}-1", hash.to_uppercase())), None);
        assert_eq!(parse_version_tag(&format!("{hash}-0")), Some((hash.as_str(), 0)));
    }

    #[test]
    fn a_version_artifact_reads_back() {
        let web = ContainerRef::new("default", "web").unwrap();
        let id = chunk_id(None, b"chunk");
        let chunk = Blob { digest: Digest::of(b"chunk"), size: 5 };
        let config = Blob { digest: Digest::of(b"{}"), size: 2 };
        let m = OciManifest::version(&web, 3, "2026-11-22T14:30:00.123Z".into(), config, [(id, chunk.clone())]);
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["mediaType"], OCI_MANIFEST);
        assert_eq!(json["artifactType"], VERSION_MEDIA_TYPE);
        assert_eq!(json["config"]["mediaType"], VERSION_MEDIA_TYPE);
        assert_eq!(json["layers"][0]["annotations"][CHUNK_ANNOTATION], id.to_string());
        assert_eq!(json["annotations"][VERSION_ANNOTATION], "3");
        assert!(json["config"].get("annotations").is_none());

        let back: OciManifest = serde_json::from_value(json).unwrap();
        assert!(back.is_version());
        assert_eq!(back.container(), Some(web));
        assert_eq!(back.chunk_blobs().collect::<Vec<_>>(), [(id, chunk)]);

        // An image is not a version, and its layers name no chunks.
        let image = r#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json",
            "digest":"sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","size":3},
            "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip",
            "digest":"sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","size":3}]}"#;
        let image: OciManifest = serde_json::from_str(image).unwrap();
        assert!(!image.is_version() && image.container().is_none());
        assert_eq!(image.chunk_blobs().count(), 0);
    }
}
