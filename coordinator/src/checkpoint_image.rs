//! containerd's checkpoint image: what `ctr container checkpoint` writes to
//! the content store and `ctr container restore` reads, built and read here
//! without I/O.
//!
//! It is an OCI image index (containerd's Go client `writeIndex`: the
//! `encoding/json` form of `ocispec.Index`) whose manifests are the parts:
//!
//! | media type | what |
//! | --- | --- |
//! | `application/vnd.containerd.container.criu.checkpoint.criu.tar` | the CRIU images, a tar of the image directory |
//! | `application/vnd.oci.image.layer.v1.tar+gzip` | the writable layer's changes (`--rw`): containerd's diff service's default |
//! | `application/vnd.containerd.container.checkpoint.config.v1+proto` | the container's spec: a protobuf `Any` of the spec JSON |
//! | `application/vnd.containerd.container.checkpoint.options.v1+proto` | an `Any` of `containerd.runc.v1.CheckpointOptions` |
//! | the image's own (`--image`) | the container's image target, as it is |
//!
//! and whose annotations name the image (`org.opencontainers.image.ref.name`),
//! the runtime (`io.containerd.checkpoint.runtime`) and the snapshotter
//! (`io.containerd.checkpoint.snapshotter`): `ctr container restore` takes
//! the new container's image, runtime and snapshotter from there, its spec
//! from the config part, its task from the CRIU tar (`--live`) and its
//! files from the layer (`--rw`, found by the gzip layer media type only).

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result, bail};
use oci_spec::image::{Descriptor, Digest, ImageIndex, ImageIndexBuilder, MediaType, Platform};
use prost::Message;
use prost_types::Any;
use serde::Serialize;

use crate::containerd::SPEC_TYPE_URL;
use crate::runc_options::{CHECKPOINT_OPTIONS_TYPE_URL, CheckpointOptions};

pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_CRIU: &str = "application/vnd.containerd.container.criu.checkpoint.criu.tar";
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.containerd.container.checkpoint.config.v1+proto";
pub const MEDIA_TYPE_OPTIONS: &str = "application/vnd.containerd.container.checkpoint.options.v1+proto";
/// What containerd's diff service makes of the rw snapshot, and the only
/// type `ctr container restore --rw` looks for.
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Other spellings of a layer a checkpoint's rw part may have, all read on
/// import (`MEDIA_TYPE_RW` is containerd's own constant for it, unused by
/// its client today).
const MEDIA_TYPE_RW: &str = "application/vnd.containerd.container.rw.tar";
const LAYER_TYPES: [&str; 5] = [
    MEDIA_TYPE_LAYER_GZIP,
    "application/vnd.oci.image.layer.v1.tar",
    MEDIA_TYPE_RW,
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
];

pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const ANNOTATION_RUNTIME: &str = "io.containerd.checkpoint.runtime";
pub const ANNOTATION_SNAPSHOTTER: &str = "io.containerd.checkpoint.snapshotter";
/// What the Go client's task checkpoint names the image with.
pub const ANNOTATION_IMAGE_NAME: &str = "image.name";
/// The label containerd puts on checkpoint images.
pub const LABEL_CHECKPOINT: &str = "containerd.io/checkpoint";

/// A blob of this machine's platform, as containerd describes the parts it
/// makes; `digest` and `size` as the content store reports them.
pub fn blob(media_type: &str, digest: &str, size: i64) -> Result<Descriptor> {
    let mut d = descriptor(media_type, digest, size)?;
    d.set_platform(Some(migrate_oci::platform::platform()));
    Ok(d)
}

/// The descriptor of an image as containerd's image store holds it.
pub fn from_containerd(d: &containerd_client::types::Descriptor) -> Result<Descriptor> {
    let mut out = descriptor(&d.media_type, &d.digest, d.size)?;
    if !d.annotations.is_empty() {
        out.set_annotations(Some(d.annotations.clone()));
    }
    Ok(out)
}

fn descriptor(media_type: &str, digest: &str, size: i64) -> Result<Descriptor> {
    let digest: Digest = digest.parse().with_context(|| format!("{digest:?} is not a digest"))?;
    let size = u64::try_from(size).with_context(|| format!("blob {digest} has a negative size {size}"))?;
    Ok(Descriptor::new(MediaType::from(media_type), size, digest))
}

/// The parts of a checkpoint image, written to the content store already.
#[derive(Debug, Clone)]
pub struct Parts {
    /// The container's image: its name and its target descriptor.
    pub image: (String, Descriptor),
    pub runtime: String,
    pub snapshotter: String,
    pub rw: Option<Descriptor>,
    pub criu: Descriptor,
    pub config: Descriptor,
    pub options: Descriptor,
}

/// The index `ctr container checkpoint --image --rw --task` would write for
/// these parts, in its order: image, rw layer, then what the task
/// checkpoint adds (images, spec, options).
pub fn build_index(parts: &Parts) -> ImageIndex {
    let (image_name, image_target) = &parts.image;
    let mut manifests = vec![image_target.clone()];
    manifests.extend(parts.rw.clone());
    manifests.extend([parts.criu.clone(), parts.config.clone(), parts.options.clone()]);
    let annotations = HashMap::from([
        (ANNOTATION_REF_NAME.to_string(), image_name.clone()),
        (ANNOTATION_IMAGE_NAME.to_string(), image_name.clone()),
        (ANNOTATION_RUNTIME.to_string(), parts.runtime.clone()),
        (ANNOTATION_SNAPSHOTTER.to_string(), parts.snapshotter.clone()),
    ]);
    ImageIndexBuilder::default()
        .schema_version(2u32)
        .manifests(manifests)
        .annotations(annotations)
        .build()
        .expect("schema version and manifests are set")
}

/// The index as `encoding/json` writes it (no indentation, `<>&` escaped).
pub fn index_json(index: &ImageIndex) -> Vec<u8> {
    let json = serde_json::to_string(&GoIndex::of(index)).expect("an index always serialises");
    json.replace('<', "\\u003c").replace('>', "\\u003e").replace('&', "\\u0026").into_bytes()
}

/// `ocispec.Index` as Go's `encoding/json` writes it: fields in the Go
/// structs' order, map keys sorted, empty fields left out. oci-spec's
/// types hold annotations in a `HashMap`, whose order would change the
/// index's bytes, and so its digest, from one export to the next.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GoIndex<'a> {
    schema_version: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    media_type: Option<&'a MediaType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    artifact_type: Option<&'a MediaType>,
    manifests: Vec<GoDescriptor<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<GoDescriptor<'a>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<&'a str, &'a str>,
}

/// `ocispec.Descriptor`, as [`GoIndex`].
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GoDescriptor<'a> {
    media_type: &'a MediaType,
    digest: &'a Digest,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    urls: Option<&'a Vec<String>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<&'a str, &'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<&'a Platform>,
    #[serde(skip_serializing_if = "Option::is_none")]
    artifact_type: Option<&'a MediaType>,
}

fn sorted(map: &Option<HashMap<String, String>>) -> BTreeMap<&str, &str> {
    map.iter().flatten().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

impl<'a> GoIndex<'a> {
    fn of(index: &'a ImageIndex) -> GoIndex<'a> {
        GoIndex {
            schema_version: index.schema_version(),
            media_type: index.media_type().as_ref(),
            artifact_type: index.artifact_type().as_ref(),
            manifests: index.manifests().iter().map(GoDescriptor::of).collect(),
            subject: index.subject().as_ref().map(GoDescriptor::of),
            annotations: sorted(index.annotations()),
        }
    }
}

impl<'a> GoDescriptor<'a> {
    fn of(d: &'a Descriptor) -> GoDescriptor<'a> {
        GoDescriptor {
            media_type: d.media_type(),
            digest: d.digest(),
            size: d.size(),
            urls: d.urls().as_ref(),
            annotations: sorted(d.annotations()),
            data: d.data().as_ref(),
            platform: d.platform().as_ref(),
            artifact_type: d.artifact_type().as_ref(),
        }
    }
}

/// The labels `writeIndex` gives the index blob, so that containerd's
/// garbage collector keeps every part as long as the index.
pub fn gc_labels(index: &ImageIndex) -> HashMap<String, String> {
    index
        .manifests()
        .iter()
        .enumerate()
        .map(|(i, m)| (format!("containerd.io/gc.ref.content.{i}"), m.digest().to_string()))
        .collect()
}

/// The config part: the spec JSON in an `Any`, protobuf-encoded, as
/// containerd's task service stores `container.Spec`.
pub fn encode_spec(spec_json: &[u8]) -> Vec<u8> {
    Any { type_url: SPEC_TYPE_URL.to_string(), value: spec_json.to_vec() }.encode_to_vec()
}

/// The options part: the checkpoint options in an `Any`, protobuf-encoded.
pub fn encode_options(options: &CheckpointOptions) -> Vec<u8> {
    options.to_any().encode_to_vec()
}

/// The spec JSON of a config part.
pub fn decode_spec(blob: &[u8]) -> Result<Vec<u8>> {
    let any = Any::decode(blob).context("the checkpoint's config is not a protobuf Any")?;
    if any.type_url.trim_start_matches("type.googleapis.com/") != SPEC_TYPE_URL {
        bail!("the checkpoint's config is a {:?}, not an OCI runtime spec ({SPEC_TYPE_URL})", any.type_url);
    }
    serde_json::from_slice::<serde_json::Value>(&any.value).context("the checkpoint's spec is not JSON")?;
    Ok(any.value)
}

/// The checkpoint options of an options part.
pub fn decode_options(blob: &[u8]) -> Result<CheckpointOptions> {
    let any = Any::decode(blob).context("the checkpoint's options are not a protobuf Any")?;
    if any.type_url.trim_start_matches("type.googleapis.com/") != CHECKPOINT_OPTIONS_TYPE_URL {
        bail!("the checkpoint's options are a {:?}, not {CHECKPOINT_OPTIONS_TYPE_URL}", any.type_url);
    }
    CheckpointOptions::decode(any.value.as_slice()).context("the checkpoint's options do not decode")
}

/// What an import takes from a checkpoint image's index.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub criu: Descriptor,
    pub rw: Option<Descriptor>,
    pub config: Option<Descriptor>,
    pub options: Option<Descriptor>,
    pub image: Option<String>,
    pub runtime: Option<String>,
}

impl Found {
    /// Whether the rw part must be gunzipped.
    pub fn rw_is_gzip(&self) -> bool {
        self.rw.as_ref().is_some_and(|d| d.media_type().as_ref().ends_with("gzip"))
    }
}

/// Finds the parts in an index blob; the CRIU images must be there (a
/// checkpoint taken without `--task` has none, nothing to restore a process
/// from).
pub fn find_parts(index_blob: &[u8]) -> Result<Found> {
    let index: ImageIndex = serde_json::from_slice(index_blob).context("the checkpoint's index does not parse")?;
    let find = |types: &[&str]| index.manifests().iter().find(|m| types.contains(&m.media_type().as_ref())).cloned();
    let criu = find(&[MEDIA_TYPE_CRIU]).with_context(|| {
        format!(
            "the checkpoint holds no CRIU images ({MEDIA_TYPE_CRIU}): it was taken without the task \
             (ctr container checkpoint --task)"
        )
    })?;
    if let Some(zstd) = index
        .manifests()
        .iter()
        .find(|m| m.media_type().as_ref().starts_with("application/vnd.oci.image.layer.v1.tar+"))
        && !LAYER_TYPES.contains(&zstd.media_type().as_ref())
    {
        bail!("the checkpoint's rw layer is a {}, which migratectl cannot decompress", zstd.media_type());
    }
    let annotation = |k: &str| index.annotations().as_ref()?.get(k).filter(|v| !v.is_empty()).cloned();
    Ok(Found {
        criu,
        rw: find(&LAYER_TYPES),
        config: find(&[MEDIA_TYPE_CONFIG]),
        options: find(&[MEDIA_TYPE_OPTIONS]),
        image: annotation(ANNOTATION_REF_NAME).or_else(|| annotation(ANNOTATION_IMAGE_NAME)),
        runtime: annotation(ANNOTATION_RUNTIME),
    })
}

/// The id of the container a spec was made for, as far as the spec tells:
/// containerd's clients name the cgroup `/<namespace>/<id>` (or
/// `slice:prefix:<id>` for systemd).
pub fn container_id_from_spec(spec_json: &[u8]) -> Option<String> {
    let spec: serde_json::Value = serde_json::from_slice(spec_json).ok()?;
    let path = spec.get("linux")?.get("cgroupsPath")?.as_str()?;
    let id = path.rsplit(['/', ':']).next()?;
    (!id.is_empty()).then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn parts(rw: bool) -> Parts {
        let layer = blob(MEDIA_TYPE_LAYER_GZIP, D2, 20).unwrap();
        Parts {
            image: (
                "localhost/testbox:latest".into(),
                Descriptor::new(MediaType::ImageManifest, 500, D1.parse::<Digest>().unwrap()),
            ),
            runtime: "io.containerd.migrate.v1".into(),
            snapshotter: "overlayfs".into(),
            rw: rw.then_some(layer),
            criu: blob(MEDIA_TYPE_CRIU, D1, 1024).unwrap(),
            config: blob(MEDIA_TYPE_CONFIG, D2, 30).unwrap(),
            options: blob(MEDIA_TYPE_OPTIONS, D1, 40).unwrap(),
        }
    }

    /// Byte for byte what Go's json.Marshal makes of the same ocispec.Index
    /// (field order of the structs, map keys sorted, empty fields omitted).
    #[test]
    fn index_json_is_what_go_writes() {
        let arch = migrate_oci::platform::arch();
        let json = String::from_utf8(index_json(&build_index(&parts(false)))).unwrap();
        let expected = format!(
            concat!(
                r#"{{"schemaVersion":2,"manifests":["#,
                r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d1}","size":500}},"#,
                r#"{{"mediaType":"application/vnd.containerd.container.criu.checkpoint.criu.tar","digest":"{d1}","size":1024,"platform":{{"architecture":"{arch}","os":"linux"}}}},"#,
                r#"{{"mediaType":"application/vnd.containerd.container.checkpoint.config.v1+proto","digest":"{d2}","size":30,"platform":{{"architecture":"{arch}","os":"linux"}}}},"#,
                r#"{{"mediaType":"application/vnd.containerd.container.checkpoint.options.v1+proto","digest":"{d1}","size":40,"platform":{{"architecture":"{arch}","os":"linux"}}}}"#,
                r#"],"annotations":{{"image.name":"localhost/testbox:latest","io.containerd.checkpoint.runtime":"io.containerd.migrate.v1","#,
                r#""io.containerd.checkpoint.snapshotter":"overlayfs","org.opencontainers.image.ref.name":"localhost/testbox:latest"}}}}"#
            ),
            d1 = D1,
            d2 = D2,
            arch = arch
        );
        assert_eq!(json, expected);
        let mut odd = build_index(&parts(false));
        let mut annotations = odd.annotations().clone().unwrap_or_default();
        annotations.insert("k".into(), "<a&b>".into());
        odd.set_annotations(Some(annotations));
        assert!(String::from_utf8(index_json(&odd)).unwrap().contains(r#""k":"\u003ca\u0026b\u003e""#));
    }

    #[test]
    fn rw_layer_comes_after_the_image_and_gc_labels_count_every_part() {
        let index = build_index(&parts(true));
        let types: Vec<&str> = index.manifests().iter().map(|m| m.media_type().as_ref()).collect();
        assert_eq!(
            types,
            [
                "application/vnd.oci.image.manifest.v1+json",
                MEDIA_TYPE_LAYER_GZIP,
                MEDIA_TYPE_CRIU,
                MEDIA_TYPE_CONFIG,
                MEDIA_TYPE_OPTIONS
            ]
        );
        let labels = gc_labels(&index);
        assert_eq!(labels.len(), 5);
        assert_eq!(labels["containerd.io/gc.ref.content.0"], D1);
        assert_eq!(labels["containerd.io/gc.ref.content.1"], D2);
    }

    #[test]
    fn the_parts_are_found_again() {
        let found = find_parts(&index_json(&build_index(&parts(true)))).unwrap();
        assert_eq!(found.criu.size(), 1024);
        assert_eq!(found.rw.as_ref().unwrap().digest().as_ref(), D2);
        assert!(found.rw_is_gzip());
        assert_eq!(found.config.unwrap().size(), 30);
        assert_eq!(found.options.unwrap().size(), 40);
        assert_eq!(found.image.as_deref(), Some("localhost/testbox:latest"));
        assert_eq!(found.runtime.as_deref(), Some("io.containerd.migrate.v1"));
    }

    /// The index `ctr c checkpoint --task --rw` wrote for a runc.v2
    /// container on containerd 2.1.9: no image entry, the layer first.
    #[test]
    fn reads_an_index_containerd_wrote() {
        let index = concat!(
            r#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","#,
            r#""digest":"sha256:4916a8fbda489607114b6e7af9c7d07635aacfed2e7557be36e98252248bb7c2","size":168,"#,
            r#""platform":{"architecture":"amd64","os":"linux"}},{"mediaType":"application/vnd.containerd.container.criu.checkpoint.criu.tar","#,
            r#""digest":"sha256:1f34e9bbcf4c9c1bc21e574bd5c89d8e507acb9f6d338a2702bdc7c00dcfcfd5","size":8532992,"#,
            r#""platform":{"architecture":"amd64","os":"linux"}},{"mediaType":"application/vnd.containerd.container.checkpoint.config.v1+proto","#,
            r#""digest":"sha256:950b12cc3f072226ce7245680ca4d560e9445885d7a0d64c8fac838b44b61446","size":2935,"#,
            r#""platform":{"architecture":"amd64","os":"linux"}},{"mediaType":"application/vnd.containerd.container.checkpoint.options.v1+proto","#,
            r#""digest":"sha256:7d3151453569712d136c98a8cce017f677b6a39c5114c6f570c0ea2f5a4bce68","size":42,"#,
            r#""platform":{"architecture":"amd64","os":"linux"}}],"annotations":{"io.containerd.checkpoint.runtime":"io.containerd.runc.v2","#,
            r#""io.containerd.checkpoint.snapshotter":"overlayfs","org.opencontainers.image.ref.name":"localhost/containerd-migrate/testbox:latest"}}"#
        );
        let found = find_parts(index.as_bytes()).unwrap();
        assert_eq!(found.criu.size(), 8532992);
        assert_eq!(found.rw.as_ref().unwrap().size(), 168);
        assert!(found.rw_is_gzip());
        assert_eq!(found.options.unwrap().size(), 42);
        assert_eq!(found.runtime.as_deref(), Some("io.containerd.runc.v2"));
        assert_eq!(found.image.as_deref(), Some("localhost/containerd-migrate/testbox:latest"));
        // Its options blob: file_locks, ctr's default.
        let options = [&[0x0a, 0x24][..], b"containerd.runc.v1.CheckpointOptions", &[0x12, 0x02, 0x28, 0x01]].concat();
        let options = decode_options(&options).unwrap();
        assert!(options.file_locks && !options.exit);
        // Re-serialised, it is the same bytes: the Go form round-trips.
        let parsed: ImageIndex = serde_json::from_str(index).unwrap();
        assert_eq!(String::from_utf8(index_json(&parsed)).unwrap(), index);
    }

    #[test]
    fn an_index_without_images_or_with_zstd_is_refused() {
        let no_task = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(find_parts(no_task).unwrap_err().to_string().contains("--task"));
        let zstd = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{MEDIA_TYPE_CRIU}","digest":"{D1}","size":1}},
            {{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"{D2}","size":1}}]}}"#
        );
        assert!(find_parts(zstd.as_bytes()).unwrap_err().to_string().contains("zstd"));
        assert!(find_parts(b"[]").is_err());
    }

    /// The wire format of google.protobuf.Any: field 1 the type URL, field
    /// 2 the value, both length-delimited.
    #[test]
    fn spec_any_wire_format_and_round_trip() {
        let spec = br#"{"ociVersion":"1.1.0"}"#;
        let blob = encode_spec(spec);
        let mut expected = vec![0x0a, SPEC_TYPE_URL.len() as u8];
        expected.extend_from_slice(SPEC_TYPE_URL.as_bytes());
        expected.extend_from_slice(&[0x12, spec.len() as u8]);
        expected.extend_from_slice(spec);
        assert_eq!(blob, expected);
        assert_eq!(decode_spec(&blob).unwrap(), spec);
        let wrong = encode_options(&CheckpointOptions::default());
        assert!(decode_spec(&wrong).unwrap_err().to_string().contains("containerd.runc.v1.CheckpointOptions"));
    }

    #[test]
    fn options_round_trip() {
        let opts = CheckpointOptions { exit: true, file_locks: true, ..Default::default() };
        let blob = encode_options(&opts);
        assert_eq!(&blob[2..2 + CHECKPOINT_OPTIONS_TYPE_URL.len()], CHECKPOINT_OPTIONS_TYPE_URL.as_bytes());
        assert_eq!(decode_options(&blob).unwrap(), opts);
        assert!(decode_options(&encode_spec(b"{}")).is_err());
    }

    #[test]
    fn container_id_from_the_cgroups_path() {
        let spec = |p: &str| format!(r#"{{"linux":{{"cgroupsPath":"{p}"}}}}"#).into_bytes();
        assert_eq!(container_id_from_spec(&spec("/default/web")).as_deref(), Some("web"));
        assert_eq!(container_id_from_spec(&spec("system.slice:cri:web")).as_deref(), Some("web"));
        assert_eq!(container_id_from_spec(&spec("/default/")), None);
        assert_eq!(container_id_from_spec(b"{}"), None);
    }
}
