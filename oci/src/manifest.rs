//! `manifest.json`: what a checkpoint is, where it was taken and what it
//! holds, down to each file's sha256. Written last by the commit, so that its
//! presence alone marks a complete checkpoint.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;

use crate::{hashing::Sha256, layout};

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

/// Which image layers the rootfs diff applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RootfsInfo {
    pub lower_dirs: Vec<PathBuf>,
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
            rootfs: Some(RootfsInfo { lower_dirs: vec!["/s/12/fs".into()] }),
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
