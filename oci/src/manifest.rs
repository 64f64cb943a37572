//! `manifest.json`: what a checkpoint is, where it was taken and what it
//! holds, down to each file's sha256. Written last by the commit, so that its
//! presence alone marks a complete checkpoint.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;

use crate::{chain_id::ChainId, hashing::Sha256, layout};

pub const MANIFEST_SCHEMA_VERSION: u32 = 1;
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.containerd-migrate.checkpoint.manifest.v1+json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointManifest {
    pub schema_version: u32,
    pub media_type: String,
    pub id: String,
    pub container: ContainerInfo,
    /// UTC, millisecond precision, RFC 3339 on the wire.
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    pub host: HostInfo,
    /// The sum of the sizes of the CRIU memory images (`criu/pages-*.img`).
    pub memory_bytes: u64,
    /// The checkpoint whose images this one's pages build on.
    pub parent: Option<String>,
    pub leave_running: bool,
    pub rootfs: Option<RootfsInfo>,
    pub timings: Timings,
    /// Why a ready point was taken when it was; absent in other checkpoints
    /// (and in those of versions before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<ReadyInfo>,
    /// Every file but manifest.json, sorted by path.
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerInfo {
    pub id: String,
    pub namespace: String,
    pub image: Option<String>,
    /// The containerd runtime that took the checkpoint, e.g. `io.containerd.migrate.v1`.
    pub runtime: String,
}

/// The machine a checkpoint was taken on: CRIU restores only onto a
/// compatible kernel, CRIU and architecture, so a restorer compares these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostInfo {
    pub hostname: String,
    pub kernel: String,
    /// None when `criu --version` could not be run.
    pub criu_version: Option<String>,
    /// GOARCH spelling ("amd64", "arm64"), as OCI image platforms use.
    pub arch: String,
}

/// Which image layers the rootfs diff applies to, and the restored
/// container's root file system must be made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RootfsInfo {
    /// The layers by content, the same on every host: the parent of the
    /// container's snapshot, where that is an unpacked image's. None where
    /// the taker could not learn it (no snapshot, or one on something else:
    /// a snapshot committed by hand, a user-namespace remapped copy), and
    /// in checkpoints taken before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_id: Option<ChainId>,
    /// The overlay's lower directories on the host that took it: numbered
    /// by that host's snapshotter, so they tell images apart only there.
    /// Compared where either side lacks a chain ID; empty where the root
    /// file system is no overlay. Always written, since readers from before
    /// the chain ID need the field.
    pub lower_dirs: Vec<PathBuf>,
}

impl RootfsInfo {
    /// What a root file system with these layers records; None where
    /// neither is known, as nothing could be compared.
    pub fn of(chain_id: Option<ChainId>, lower_dirs: Vec<PathBuf>) -> Option<RootfsInfo> {
        (chain_id.is_some() || !lower_dirs.is_empty()).then_some(RootfsInfo { chain_id, lower_dirs })
    }
}

/// Milliseconds spent in each phase, where the taker measured it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timings {
    pub frozen_ms: Option<f64>,
    pub dump_ms: Option<f64>,
    pub persist_ms: Option<f64>,
}

/// What made a ready point (a checkpoint taken when the app became ready)
/// be taken, so that whoever restores it can tell what state it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadyInfo {
    /// The condition that fired, as its annotation writes it:
    /// "http:8080/healthz", "tcp:5432", "exec:pg_isready", "notify".
    pub condition: String,
    /// From the container's start to the condition's firing.
    pub after_ms: f64,
    /// Probe attempts made, the successful ones among them; none for
    /// "notify", where the app said so itself.
    pub attempts: u64,
    /// The last failed attempt's reason, if any attempt failed.
    pub last_failure: Option<String>,
    /// The requests made once ready and before the dump, if any.
    pub warm_up: Option<WarmUpInfo>,
}

/// Requests of the probe's path made once the app was ready, so that the
/// code serving them ran before the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WarmUpInfo {
    pub requests: u64,
    pub ms: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative to the checkpoint directory, `/`-separated; never leaves it.
    #[serde(deserialize_with = "relative_path")]
    pub path: String,
    pub size: u64,
    pub sha256: Sha256,
}

/// A manifest is read from a directory anyone could have written; its paths
/// are checked before anything is opened through them.
fn relative_path<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let path = String::deserialize(d)?;
    layout::check_rel(&path).map_err(|reason| serde::de::Error::custom(format!("file path {path:?}: {reason}")))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAIN: &str = "sha256:824d5223ba17a05b1c8ca452f0eeaa2d6696c445514fb38bdb89560ca77bb289";

    fn sample() -> CheckpointManifest {
        CheckpointManifest {
            schema_version: MANIFEST_SCHEMA_VERSION,
            media_type: MANIFEST_MEDIA_TYPE.into(),
            id: "web-20261122T143000Z".into(),
            container: ContainerInfo {
                id: "web".into(),
                namespace: "default".into(),
                image: None,
                runtime: "io.containerd.migrate.v1".into(),
            },
            created: OffsetDateTime::parse("2026-11-22T14:30:00.123Z", &time::format_description::well_known::Rfc3339)
                .unwrap(),
            host: HostInfo {
                hostname: "h".into(),
                kernel: "6.18.44".into(),
                criu_version: Some("4.2.1".into()),
                arch: "amd64".into(),
            },
            memory_bytes: 4096,
            parent: None,
            leave_running: true,
            rootfs: RootfsInfo::of(Some(CHAIN.parse().unwrap()), vec!["/s/12/fs".into()]),
            timings: Timings { frozen_ms: Some(812.5), dump_ms: None, persist_ms: None },
            ready: None,
            files: vec![FileEntry {
                path: "criu/pages-1.img".into(),
                size: 4096,
                sha256: crate::hashing::hash_bytes(b"").sha256,
            }],
        }
    }

    #[test]
    fn wire_format_is_camel_case_and_round_trips() {
        let m = sample();
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["schemaVersion"], 1);
        assert_eq!(json["created"], "2026-11-22T14:30:00.123Z");
        assert_eq!(json["host"]["criuVersion"], "4.2.1");
        assert_eq!(json["container"]["image"], serde_json::Value::Null);
        assert_eq!(json["rootfs"]["chainId"], CHAIN);
        assert_eq!(json["rootfs"]["lowerDirs"][0], "/s/12/fs");
        assert_eq!(json["timings"]["frozenMs"], 812.5);
        assert_eq!(json["timings"]["dumpMs"], serde_json::Value::Null);
        assert_eq!(json["memoryBytes"], 4096);
        assert_eq!(json["leaveRunning"], true);
        assert_eq!(json["files"][0]["sha256"].as_str().unwrap().len(), 64);
        assert!(json.get("ready").is_none(), "only ready points record a condition");
        assert_eq!(serde_json::from_value::<CheckpointManifest>(json).unwrap(), m);
    }

    #[test]
    fn a_manifest_from_before_the_chain_id_still_reads() {
        let mut json = serde_json::to_value(sample()).unwrap();
        json["rootfs"].as_object_mut().unwrap().remove("chainId");
        let m = serde_json::from_value::<CheckpointManifest>(json).unwrap();
        let rootfs = m.rootfs.unwrap();
        assert_eq!(rootfs.chain_id, None);
        assert_eq!(rootfs.lower_dirs, vec![PathBuf::from("/s/12/fs")]);
    }

    #[test]
    fn rootfs_without_a_chain_id_or_an_overlay_is_written_as_before() {
        let mut m = sample();
        m.rootfs = RootfsInfo::of(None, vec!["/s/12/fs".into()]);
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["rootfs"], serde_json::json!({"lowerDirs": ["/s/12/fs"]}));
        // Readers from before the chain ID need lowerDirs, even empty.
        m.rootfs = RootfsInfo::of(Some(CHAIN.parse().unwrap()), Vec::new());
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["rootfs"], serde_json::json!({"chainId": CHAIN, "lowerDirs": []}));
        assert_eq!(RootfsInfo::of(None, Vec::new()), None, "nothing known, nothing recorded");
    }

    #[test]
    fn a_chain_id_that_is_no_digest_is_refused() {
        let mut json = serde_json::to_value(sample()).unwrap();
        json["rootfs"]["chainId"] = "sha256:0-1000".into();
        let err = serde_json::from_value::<CheckpointManifest>(json).unwrap_err();
        assert!(err.to_string().contains("chain ID"), "{err}");
    }

    #[test]
    fn a_ready_point_records_what_fired() {
        let mut m = sample();
        m.ready = Some(ReadyInfo {
            condition: "http:8080/healthz".into(),
            after_ms: 2150.5,
            attempts: 43,
            last_failure: Some("GET /healthz answered 503".into()),
            warm_up: Some(WarmUpInfo { requests: 20, ms: 310.0 }),
        });
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["ready"]["condition"], "http:8080/healthz");
        assert_eq!(json["ready"]["afterMs"], 2150.5);
        assert_eq!(json["ready"]["lastFailure"], "GET /healthz answered 503");
        assert_eq!(json["ready"]["warmUp"]["requests"], 20);
        assert_eq!(serde_json::from_value::<CheckpointManifest>(json).unwrap(), m);
    }

    #[test]
    fn file_paths_must_stay_inside() {
        let mut json = serde_json::to_value(sample()).unwrap();
        json["files"][0]["path"] = "../../etc/shadow".into();
        let err = serde_json::from_value::<CheckpointManifest>(json).unwrap_err();
        assert!(err.to_string().contains("../../etc/shadow"), "{err}");
    }
}
