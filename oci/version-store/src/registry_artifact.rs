//! A version as OCI artifacts (an index and its parts), and the tags that
//! name them (see [`crate::registry_store`] for the layout).

use std::collections::{BTreeMap, HashMap};

use oci_spec::image::{Descriptor, ImageIndex, ImageIndexBuilder, ImageManifest, ImageManifestBuilder, MediaType};
use sha2::Digest as _;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::{
    ContainerRef, VERSION_MEDIA_TYPE,
    registry_api::Blob,
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

/// What names a version's index and each of its parts. The container and
/// the version number make every version's artifacts, and so their
/// digests, its own: deleting one version by digest can never take
/// another's tag with it.
fn version_annotations(container: &ContainerRef, version: u64, created: &str) -> HashMap<String, String> {
    HashMap::from([
        (NAMESPACE_ANNOTATION.into(), container.namespace.clone()),
        (CONTAINER_ANNOTATION.into(), container.id.clone()),
        (VERSION_ANNOTATION.into(), version.to_string()),
        (CREATED_ANNOTATION.into(), created.to_owned()),
    ])
}

fn descriptor(media_type: MediaType, blob: &Blob) -> Descriptor {
    Descriptor::new(media_type, blob.size, blob.digest.clone())
}

/// Part `part` of version `version` of `container`, an OCI image manifest:
/// `config` is the version manifest, `packs` some of the packs holding its
/// chunks. `pushed` is now, RFC 3339: how old a part left without its index
/// is.
pub(super) fn part_manifest(
    container: &ContainerRef,
    version: u64,
    part: usize,
    pushed: &str,
    config: &Blob,
    packs: &[PackBlobs],
) -> ImageManifest {
    let layers: Vec<Descriptor> = packs
        .iter()
        .flat_map(|PackBlobs { pack, index }| {
            let index_layer = descriptor(PACK_INDEX_MEDIA_TYPE.into(), index);
            let mut pack_layer = descriptor(PACK_MEDIA_TYPE.into(), pack);
            pack_layer.set_annotations(Some(HashMap::from([(PACK_INDEX_ANNOTATION.into(), index.digest.to_string())])));
            [index_layer, pack_layer]
        })
        .collect();
    let mut annotations = version_annotations(container, version, pushed);
    annotations.insert(PART_ANNOTATION.into(), part.to_string());
    ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .artifact_type(MediaType::from(VERSION_MEDIA_TYPE))
        .config(descriptor(VERSION_MEDIA_TYPE.into(), config))
        .layers(layers)
        .annotations(annotations)
        .build()
        .expect("every required field is set")
}

/// Whether an image manifest is a part of a version of this store rather
/// than another artifact.
pub(super) fn is_part(manifest: &ImageManifest) -> bool {
    manifest.config().media_type().as_ref() == VERSION_MEDIA_TYPE
}

/// When a part was pushed, if it says.
pub(super) fn pushed(part: &ImageManifest) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(part.annotations().as_ref()?.get(CREATED_ANNOTATION)?, &Rfc3339).ok()
}

/// The packs a part's layers list with their indexes; a pack layer whose
/// index is not a layer of this part too (which the registry's garbage
/// collector would not keep) is left out.
pub(super) fn packs(part: &ImageManifest) -> impl Iterator<Item = PackBlobs> + '_ {
    let blob = |layer: &Descriptor| Blob { digest: layer.digest().clone(), size: layer.size() };
    let of_type = |media_type: &'static str| move |layer: &&Descriptor| layer.media_type().as_ref() == media_type;
    let indexes: BTreeMap<String, Blob> = part
        .layers()
        .iter()
        .filter(of_type(PACK_INDEX_MEDIA_TYPE))
        .map(|layer| (layer.digest().to_string(), blob(layer)))
        .collect();
    part.layers().iter().filter(of_type(PACK_MEDIA_TYPE)).filter_map(move |layer| {
        let index = indexes.get(layer.annotations().as_ref()?.get(PACK_INDEX_ANNOTATION)?)?.clone();
        Some(PackBlobs { pack: blob(layer), index })
    })
}

/// Version `version` of `container`, an OCI image index of `parts` in
/// order. `created` is the version manifest's time, RFC 3339. An image
/// manifest, having no `manifests`, does not parse as one.
pub(super) fn version_index(container: &ContainerRef, version: u64, created: &str, parts: &[Blob]) -> ImageIndex {
    let manifests: Vec<Descriptor> = parts.iter().map(|part| descriptor(MediaType::ImageManifest, part)).collect();
    ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .artifact_type(MediaType::from(VERSION_MEDIA_TYPE))
        .manifests(manifests)
        .annotations(version_annotations(container, version, created))
        .build()
        .expect("every required field is set")
}

/// Whether an image index is a version of this store rather than another
/// artifact that happens to have a tag of that shape.
pub(super) fn is_version(index: &ImageIndex) -> bool {
    index.artifact_type().as_ref().is_some_and(|t| t.as_ref() == VERSION_MEDIA_TYPE)
}

/// The container a version's annotations name.
pub(super) fn version_container(index: &ImageIndex) -> Option<ContainerRef> {
    let annotations = index.annotations().as_ref()?;
    let namespace = annotations.get(NAMESPACE_ANNOTATION)?;
    let id = annotations.get(CONTAINER_ANNOTATION)?;
    ContainerRef::new(namespace, id).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry_api::sha256_of;

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
            pack: Blob { digest: sha256_of(b"pack"), size: 4 },
            index: Blob { digest: sha256_of(b"index"), size: 5 },
        };
        let config = Blob { digest: sha256_of(b"{}"), size: 2 };
        let pushed_at = "2026-11-22T14:30:01.5Z";
        let part = part_manifest(&web, 3, 1, pushed_at, &config, std::slice::from_ref(&packed));
        let json = serde_json::to_value(&part).unwrap();
        assert_eq!(json["mediaType"], MediaType::ImageManifest.as_ref());
        assert_eq!(json["artifactType"], VERSION_MEDIA_TYPE);
        assert_eq!(json["config"]["mediaType"], VERSION_MEDIA_TYPE);
        assert_eq!(json["layers"][0]["mediaType"], PACK_INDEX_MEDIA_TYPE);
        assert_eq!(json["layers"][1]["mediaType"], PACK_MEDIA_TYPE);
        assert_eq!(json["layers"][1]["annotations"][PACK_INDEX_ANNOTATION], packed.index.digest.to_string());
        assert_eq!(json["annotations"][VERSION_ANNOTATION], "3");
        assert_eq!(json["annotations"][PART_ANNOTATION], "1");
        assert!(json["config"].get("annotations").is_none());
        let back: ImageManifest = serde_json::from_value(json).unwrap();
        assert!(is_part(&back));
        assert_eq!(pushed(&back), Some(OffsetDateTime::parse(pushed_at, &Rfc3339).unwrap()));
        assert_eq!(packs(&back).collect::<Vec<_>>(), [packed]);

        let part_bytes = serde_json::to_vec(&back).unwrap();
        let part = Blob { digest: sha256_of(&part_bytes), size: part_bytes.len() as u64 };
        let index = version_index(&web, 3, "2026-11-22T14:30:00.123Z", std::slice::from_ref(&part));
        let json = serde_json::to_value(&index).unwrap();
        assert_eq!(json["mediaType"], MediaType::ImageIndex.as_ref());
        assert_eq!(json["artifactType"], VERSION_MEDIA_TYPE);
        assert_eq!(json["manifests"][0]["mediaType"], MediaType::ImageManifest.as_ref());
        assert_eq!(json["manifests"][0]["digest"], part.digest.to_string());
        assert_eq!(json["annotations"][VERSION_ANNOTATION], "3");
        assert_eq!(json["annotations"][CREATED_ANNOTATION], "2026-11-22T14:30:00.123Z");
        let back: ImageIndex = serde_json::from_value(json).unwrap();
        assert!(is_version(&back));
        assert_eq!(version_container(&back), Some(web));
        // Neither reads as the other.
        assert!(serde_json::from_slice::<ImageManifest>(&serde_json::to_vec(&back).unwrap()).is_err());
        assert!(serde_json::from_slice::<ImageIndex>(&part_bytes).is_err());

        // An image is not a part, and its layers are no packs.
        let image = r#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json",
            "digest":"sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","size":3},
            "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip",
            "digest":"sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","size":3}]}"#;
        let image: ImageManifest = serde_json::from_str(image).unwrap();
        assert!(!is_part(&image) && pushed(&image).is_none());
        assert_eq!(packs(&image).count(), 0);
    }

    /// A part and an index as this store wrote them before it used
    /// oci-spec's types (its own structs, annotations sorted): registries
    /// hold versions in this form, which must still read.
    #[test]
    fn versions_written_before_read_back() {
        let (config, index, pack) = (sha256_of(b"{}"), sha256_of(b"index"), sha256_of(b"pack"));
        let part = format!(
            concat!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","#,
                r#""artifactType":"{version}","config":{{"mediaType":"{version}","digest":"{config}","size":2}},"#,
                r#""layers":[{{"mediaType":"{index_type}","digest":"{index}","size":5}},"#,
                r#"{{"mediaType":"{pack_type}","digest":"{pack}","size":4,"annotations":{{"{pack_index}":"{index}"}}}}],"#,
                r#""annotations":{{"io.containerd.migrate.container":"web","io.containerd.migrate.namespace":"default","#,
                r#""io.containerd.migrate.part":"0","io.containerd.migrate.version":"3","#,
                r#""org.opencontainers.image.created":"2026-11-22T14:30:01.5Z"}}}}"#
            ),
            version = VERSION_MEDIA_TYPE,
            index_type = PACK_INDEX_MEDIA_TYPE,
            pack_type = PACK_MEDIA_TYPE,
            pack_index = PACK_INDEX_ANNOTATION,
            config = config,
            index = index,
            pack = pack,
        );
        let part: ImageManifest = serde_json::from_str(&part).unwrap();
        assert!(is_part(&part));
        assert_eq!(pushed(&part), Some(OffsetDateTime::parse("2026-11-22T14:30:01.5Z", &Rfc3339).unwrap()));
        let expected =
            PackBlobs { pack: Blob { digest: pack, size: 4 }, index: Blob { digest: index.clone(), size: 5 } };
        assert_eq!(packs(&part).collect::<Vec<_>>(), [expected]);
        assert_eq!(*part.config().digest(), config);

        let version = format!(
            concat!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","#,
                r#""artifactType":"{version}","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","#,
                r#""digest":"{index}","size":800}}],"annotations":{{"io.containerd.migrate.container":"web","#,
                r#""io.containerd.migrate.namespace":"default","io.containerd.migrate.version":"3","#,
                r#""org.opencontainers.image.created":"2026-11-22T14:30:00.123Z"}}}}"#
            ),
            version = VERSION_MEDIA_TYPE,
            index = index,
        );
        let version: ImageIndex = serde_json::from_str(&version).unwrap();
        assert!(is_version(&version));
        assert_eq!(version_container(&version), Some(ContainerRef::new("default", "web").unwrap()));
        assert_eq!(version.manifests()[0].size(), 800);
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
                    pack: Blob { digest: sha256_of(&bytes), size: 1 << 30 },
                    index: Blob { digest: sha256_of(&[&bytes[..], b"index"].concat()), size: 1 << 20 },
                }
            })
            .collect();
        let config = Blob { digest: sha256_of(b"{}"), size: 3 << 20 };
        let part = part_manifest(&longest, u64::MAX, usize::MAX, "2026-11-22T14:30:00.123Z", &config, &packs);
        let size = serde_json::to_vec(&part).unwrap().len();
        assert!(size < 1 << 21, "a full part takes {size} bytes");
        let per_pack = size / PART_PACKS;
        assert!((440..=490).contains(&per_pack), "{per_pack} bytes per pack: update PART_PACKS' doc");
    }
}
