//! A version as OCI artifacts (an index and its parts), and the tags that
//! name them (see [`crate::registry_store`] for the layout).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::{
    ContainerRef, VERSION_MEDIA_TYPE,
    registry_api::{Blob, Digest, OCI_INDEX, OCI_MANIFEST},
    registry_pack::{PACK_INDEX_MEDIA_TYPE, PACK_MEDIA_TYPE},
};

/// A pack in the registry and the blob of its index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PackBlobs {
    pub pack: Blob,
    pub index: Blob,
}

/// On each pack layer: the digest of its index, a layer of the same part.
pub(super) const PACK_INDEX_ANNOTATION: &str = "io.containerd.migrate.pack-index";
pub(super) const NAMESPACE_ANNOTATION: &str = "io.containerd.migrate.namespace";
pub(super) const CONTAINER_ANNOTATION: &str = "io.containerd.migrate.container";
pub(super) const VERSION_ANNOTATION: &str = "io.containerd.migrate.version";
/// On each part: its place in the version's index, from 0.
pub(super) const PART_ANNOTATION: &str = "io.containerd.migrate.part";
pub(super) const CREATED_ANNOTATION: &str = "org.opencontainers.image.created";

/// Packs per part at most, each two layers (the pack and its index). A
/// pair's descriptors take about 470 bytes, so a full part is about 1.8
/// MiB, under half the 4 MiB that the distribution registry takes in one
/// manifest (see the test `parts_stay_well_under_the_registry_limit`),
/// and lists 31 GiB of checkpoint in 8 MiB packs.
pub(super) const PART_PACKS: usize = 4_000;

/// Hex digits of the container hash in a tag: 128 bits, so that two
/// containers never share one.
const HASH_HEX: usize = 32;

/// Between a version's tag and its parts' numbers.
const PART_SEPARATOR: &str = ".part";

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

/// `<version tag>.part<part>`: at most 78 characters.
pub(super) fn part_tag(container: &ContainerRef, version: u64, part: usize) -> String {
    format!("{}{PART_SEPARATOR}{part}", version_tag(container, version))
}

/// The container hash and version of a version tag; None for a tag of any
/// other shape (a part's, another artifact in the repository), and for a
/// version written with leading zeros, which `version_tag` never makes.
pub(super) fn parse_version_tag(tag: &str) -> Option<(&str, u64)> {
    let (hash, version) = tag.split_once('-')?;
    let hash_ok = hash.len() == HASH_HEX && hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hash_ok {
        return None;
    }
    Some((hash, canonical_number(version)?))
}

/// The version tag and part number of a part's tag; None for a tag of any
/// other shape.
pub(super) fn parse_part_tag(tag: &str) -> Option<(&str, usize)> {
    let (version_tag, part) = tag.rsplit_once(PART_SEPARATOR)?;
    parse_version_tag(version_tag)?;
    Some((version_tag, canonical_number(part)?))
}

/// Digits without leading zeros, as `format!` writes numbers.
fn canonical_number<N: std::str::FromStr>(s: &str) -> Option<N> {
    let canonical = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if !canonical {
        return None;
    }
    s.parse().ok()
}

/// An OCI image manifest, a version's part: the fields this store writes
/// and reads. Unknown fields of other artifacts are ignored.
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

/// An OCI image index, a version: the fields this store writes and reads.
/// An image manifest, having no `manifests`, does not parse as one.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct OciIndex {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub manifests: Vec<Descriptor>,
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

/// What names a version's index and each of its parts. The container and
/// the version number make every version's artifacts, and so their
/// digests, its own: deleting one version by digest can never take
/// another's tag with it.
fn version_annotations(container: &ContainerRef, version: u64, created: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAMESPACE_ANNOTATION.into(), container.namespace.clone()),
        (CONTAINER_ANNOTATION.into(), container.id.clone()),
        (VERSION_ANNOTATION.into(), version.to_string()),
        (CREATED_ANNOTATION.into(), created.to_owned()),
    ])
}

impl OciManifest {
    /// Part `part` of version `version` of `container`: `config` is the
    /// version manifest, `packs` some of the packs holding its chunks.
    /// `pushed` is now, RFC 3339: how old a part left without its index is.
    pub(super) fn part(
        container: &ContainerRef,
        version: u64,
        part: usize,
        pushed: &str,
        config: &Blob,
        packs: &[PackBlobs],
    ) -> OciManifest {
        let layers = packs
            .iter()
            .flat_map(|PackBlobs { pack, index }| {
                let index_layer = Descriptor {
                    media_type: PACK_INDEX_MEDIA_TYPE.into(),
                    digest: index.digest.clone(),
                    size: index.size,
                    annotations: BTreeMap::new(),
                };
                let pack_layer = Descriptor {
                    media_type: PACK_MEDIA_TYPE.into(),
                    digest: pack.digest.clone(),
                    size: pack.size,
                    annotations: BTreeMap::from([(PACK_INDEX_ANNOTATION.into(), index.digest.to_string())]),
                };
                [index_layer, pack_layer]
            })
            .collect();
        let mut annotations = version_annotations(container, version, pushed);
        annotations.insert(PART_ANNOTATION.into(), part.to_string());
        OciManifest {
            schema_version: 2,
            media_type: OCI_MANIFEST.into(),
            artifact_type: Some(VERSION_MEDIA_TYPE.into()),
            config: Descriptor {
                media_type: VERSION_MEDIA_TYPE.into(),
                digest: config.digest.clone(),
                size: config.size,
                annotations: BTreeMap::new(),
            },
            layers,
            annotations,
        }
    }

    /// Whether this is a part of a version of this store rather than
    /// another artifact.
    pub(super) fn is_part(&self) -> bool {
        self.config.media_type == VERSION_MEDIA_TYPE
    }

    /// When the part was pushed, if it says.
    pub(super) fn pushed(&self) -> Option<OffsetDateTime> {
        OffsetDateTime::parse(self.annotations.get(CREATED_ANNOTATION)?, &Rfc3339).ok()
    }

    /// The packs the layers list with their indexes; a pack layer whose
    /// index is not a layer of this part too (which the registry's garbage
    /// collector would not keep) is left out.
    pub(super) fn packs(&self) -> impl Iterator<Item = PackBlobs> + '_ {
        let blob = |layer: &Descriptor| Blob { digest: layer.digest.clone(), size: layer.size };
        let indexes: BTreeMap<String, Blob> = self
            .layers
            .iter()
            .filter(|layer| layer.media_type == PACK_INDEX_MEDIA_TYPE)
            .map(|layer| (layer.digest.to_string(), blob(layer)))
            .collect();
        self.layers.iter().filter(|layer| layer.media_type == PACK_MEDIA_TYPE).filter_map(move |layer| {
            let index = indexes.get(layer.annotations.get(PACK_INDEX_ANNOTATION)?)?.clone();
            Some(PackBlobs { pack: blob(layer), index })
        })
    }
}

impl OciIndex {
    /// Version `version` of `container`, made of `parts` in order.
    /// `created` is the version manifest's time, RFC 3339.
    pub(super) fn version(container: &ContainerRef, version: u64, created: &str, parts: &[Blob]) -> OciIndex {
        let manifests = parts
            .iter()
            .map(|part| Descriptor {
                media_type: OCI_MANIFEST.into(),
                digest: part.digest.clone(),
                size: part.size,
                annotations: BTreeMap::new(),
            })
            .collect();
        OciIndex {
            schema_version: 2,
            media_type: OCI_INDEX.into(),
            artifact_type: Some(VERSION_MEDIA_TYPE.into()),
            manifests,
            annotations: version_annotations(container, version, created),
        }
    }

    /// Whether this is a version of this store rather than another
    /// artifact that happens to have a tag of that shape.
    pub(super) fn is_version(&self) -> bool {
        self.artifact_type.as_deref() == Some(VERSION_MEDIA_TYPE)
    }

    /// The container the annotations name.
    pub(super) fn container(&self) -> Option<ContainerRef> {
        let namespace = self.annotations.get(NAMESPACE_ANNOTATION)?;
        let id = self.annotations.get(CONTAINER_ANNOTATION)?;
        ContainerRef::new(namespace, id).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let part = part_tag(&longest, u64::MAX, usize::MAX);
        assert!(valid_tag(&part) && part.len() == 78, "{part}");
        assert_eq!(parse_part_tag(&part), Some((tag.as_str(), usize::MAX)));
        assert_eq!(parse_version_tag(&part), None, "a part's tag is not a version's");

        // Names that a separator would make ambiguous hash apart.
        let a = ContainerRef::new("a-b", "c").unwrap();
        let b = ContainerRef::new("a", "b-c").unwrap();
        assert_ne!(container_hash(&a), container_hash(&b));
        let tag = version_tag(&a, 7);
        assert!(valid_tag(&tag));
        assert_eq!(parse_version_tag(&tag), Some((container_hash(&a).as_str(), 7)));
        assert_eq!(parse_part_tag(&part_tag(&a, 7, 0)), Some((tag.as_str(), 0)));
    }

    #[test]
    fn other_tags_are_not_versions_or_parts() {
        let hash = container_hash(&ContainerRef::new("default", "web").unwrap());
        for tag in ["latest", "v1", &format!("{hash}-"), &format!("{hash}-07"), &format!("{hash}-1-2")] {
            assert_eq!(parse_version_tag(tag), None, "{tag}");
        }
        assert_eq!(parse_version_tag(&format!("{}-1", hash.to_uppercase())), None);
        assert_eq!(parse_version_tag(&format!("{hash}-0")), Some((hash.as_str(), 0)));
        let v = format!("{hash}-3");
        for tag in [&format!("{v}.part"), &format!("{v}.part01"), &format!("{v}.partx"), "latest.part0", &v] {
            assert_eq!(parse_part_tag(tag), None, "{tag}");
        }
    }

    #[test]
    fn a_version_index_and_its_parts_read_back() {
        let web = ContainerRef::new("default", "web").unwrap();
        let packed = PackBlobs {
            pack: Blob { digest: Digest::of(b"pack"), size: 4 },
            index: Blob { digest: Digest::of(b"index"), size: 5 },
        };
        let config = Blob { digest: Digest::of(b"{}"), size: 2 };
        let pushed = "2026-11-22T14:30:01.5Z";
        let part = OciManifest::part(&web, 3, 1, pushed, &config, std::slice::from_ref(&packed));
        let json = serde_json::to_value(&part).unwrap();
        assert_eq!(json["mediaType"], OCI_MANIFEST);
        assert_eq!(json["artifactType"], VERSION_MEDIA_TYPE);
        assert_eq!(json["config"]["mediaType"], VERSION_MEDIA_TYPE);
        assert_eq!(json["layers"][0]["mediaType"], PACK_INDEX_MEDIA_TYPE);
        assert_eq!(json["layers"][1]["mediaType"], PACK_MEDIA_TYPE);
        assert_eq!(json["layers"][1]["annotations"][PACK_INDEX_ANNOTATION], packed.index.digest.to_string());
        assert_eq!(json["annotations"][VERSION_ANNOTATION], "3");
        assert_eq!(json["annotations"][PART_ANNOTATION], "1");
        assert!(json["config"].get("annotations").is_none());
        let back: OciManifest = serde_json::from_value(json).unwrap();
        assert!(back.is_part());
        assert_eq!(back.pushed(), Some(OffsetDateTime::parse(pushed, &Rfc3339).unwrap()));
        assert_eq!(back.packs().collect::<Vec<_>>(), [packed]);

        let part_bytes = serde_json::to_vec(&back).unwrap();
        let part = Blob { digest: Digest::of(&part_bytes), size: part_bytes.len() as u64 };
        let index = OciIndex::version(&web, 3, "2026-11-22T14:30:00.123Z", std::slice::from_ref(&part));
        let json = serde_json::to_value(&index).unwrap();
        assert_eq!(json["mediaType"], OCI_INDEX);
        assert_eq!(json["artifactType"], VERSION_MEDIA_TYPE);
        assert_eq!(json["manifests"][0]["mediaType"], OCI_MANIFEST);
        assert_eq!(json["manifests"][0]["digest"], part.digest.to_string());
        assert_eq!(json["annotations"][VERSION_ANNOTATION], "3");
        assert_eq!(json["annotations"][CREATED_ANNOTATION], "2026-11-22T14:30:00.123Z");
        let back: OciIndex = serde_json::from_value(json).unwrap();
        assert!(back.is_version());
        assert_eq!(back.container(), Some(web));
        // Neither reads as the other.
        assert!(serde_json::from_slice::<OciManifest>(&serde_json::to_vec(&back).unwrap()).is_err());
        assert!(serde_json::from_slice::<OciIndex>(&part_bytes).is_err());

        // An image is not a part, and its layers are no packs.
        let image = r#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json",
            "digest":"sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","size":3},
            "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip",
            "digest":"sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","size":3}]}"#;
        let image: OciManifest = serde_json::from_str(image).unwrap();
        assert!(!image.is_part() && image.pushed().is_none());
        assert_eq!(image.packs().count(), 0);
    }

    /// The distribution registry refuses manifests over 4 MiB; a full part
    /// of packs with sizes of ten digits at the longest names stays under
    /// half of that.
    #[test]
    fn parts_stay_well_under_the_registry_limit() {
        let longest = ContainerRef::new(&"n".repeat(128), &"i".repeat(128)).unwrap();
        let packs: Vec<PackBlobs> = (0..PART_PACKS)
            .map(|i| {
                let bytes = i.to_le_bytes();
                PackBlobs {
                    pack: Blob { digest: Digest::of(&bytes), size: 1 << 30 },
                    index: Blob { digest: Digest::of(&[&bytes[..], b"index"].concat()), size: 1 << 20 },
                }
            })
            .collect();
        let config = Blob { digest: Digest::of(b"{}"), size: 3 << 20 };
        let part = OciManifest::part(&longest, u64::MAX, usize::MAX, "2026-11-22T14:30:00.123Z", &config, &packs);
        let size = serde_json::to_vec(&part).unwrap().len();
        assert!(size < 1 << 21, "a full part takes {size} bytes");
        let per_pack = size / PART_PACKS;
        assert!((440..=490).contains(&per_pack), "{per_pack} bytes per pack: update PART_PACKS' doc");
    }
}
