//! Asking a task's shim directly, over its ttrpc socket, for what
//! containerd's Task API cannot carry: a checkpoint committed into a store.
//! The shim takes it with its one capture pipeline; containerd's
//! Tasks.Checkpoint would refuse the request, since it decodes checkpoint
//! options with its type registry, which knows only runc's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use containerd_shim_protos::TaskClient;
use containerd_shim_protos::shim::shim::CheckpointTaskRequest;
use protobuf::well_known_types::any::Any;
use serde::Serialize;

/// This runtime's own checkpoint options (decoded in the shim's
/// `checkpoint.rs`).
const MIGRATE_OPTIONS_TYPE: &str = "io.containerd.migrate.v1.CheckpointOptions";
/// The metadata key containerd names the namespace with in every request
/// it sends a shim.
const NAMESPACE_KEY: &str = "containerd-namespace-ttrpc";
/// A dump of gigabytes and its commit take a while; the call only ends
/// early if the shim is gone.
const CALL_TIMEOUT: Duration = Duration::from_secs(3600);

/// A checkpoint committed into a store, as `checkpoint create` asks for it.
#[derive(Debug, Clone, Serialize)]
pub struct StoreCheckpoint {
    pub store: PathBuf,
    pub id: String,
    pub exit: bool,
    pub tcp_established: bool,
    pub file_locks: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub staging: Option<PathBuf>,
    pub direct: bool,
}

/// The shim serving a task.
#[derive(Debug)]
pub struct Shim {
    address: String,
    namespace: String,
}

impl Shim {
    /// The shim of the task whose init is `pid`: the init's parent (a shim
    /// is the subreaper of its containers' processes), which runs in the
    /// task's bundle, where containerd keeps the shim's address.
    pub fn of_task(pid: u32, namespace: &str) -> Result<Shim> {
        let status_file = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&status_file).with_context(|| format!("read {status_file}"))?;
        let ppid: u32 = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .and_then(|p| p.trim().parse().ok())
            .with_context(|| format!("{status_file} names no parent"))?;
        let exe = std::fs::read_link(format!("/proc/{ppid}/exe")).unwrap_or_default();
        if !exe.file_name().is_some_and(|n| n.to_string_lossy().starts_with("containerd-shim")) {
            bail!("the parent of the task's init (pid {pid}) is {}, not its shim", exe.display());
        }
        let bundle = std::fs::read_link(format!("/proc/{ppid}/cwd"))
            .with_context(|| format!("find the bundle of the shim (pid {ppid})"))?;
        Ok(Shim { address: address_in(&bundle)?, namespace: namespace.to_string() })
    }

    /// Asks the shim to checkpoint `container` into a store, and waits
    /// until the checkpoint is committed (or the dump failed, leaving the
    /// container running). Blocking.
    pub fn checkpoint_into_store(&self, container: &str, request: &StoreCheckpoint) -> Result<()> {
        self.checkpoint_with(container, serde_json::to_vec(request).expect("plain options serialise"))
    }

    /// Asks the shim for a checkpoint of `container` with this runtime's
    /// own options (JSON, as the shim's `checkpoint.rs` decodes them), and
    /// waits until it is taken. Blocking.
    pub fn checkpoint_with(&self, container: &str, options: Vec<u8>) -> Result<()> {
        let client = ttrpc::Client::connect(&self.address)
            .with_context(|| format!("connect to the shim of container {container} at {}", self.address))?;
        let tasks = TaskClient::new(client);
        let mut ctx = ttrpc::context::with_duration(CALL_TIMEOUT);
        ctx.add(NAMESPACE_KEY.into(), self.namespace.clone());
        let req = CheckpointTaskRequest {
            id: container.to_string(),
            options: protobuf::MessageField::some(Any {
                type_url: MIGRATE_OPTIONS_TYPE.to_string(),
                value: options,
                ..Default::default()
            }),
            ..Default::default()
        };
        tasks.checkpoint(ctx, &req).map(drop).map_err(|e| match e {
            ttrpc::Error::RpcStatus(s) => anyhow::anyhow!("{}", s.message),
            other => anyhow::anyhow!("the shim of container {container} did not answer: {other}"),
        })
    }
}

/// The shim's socket address as containerd wrote it into the bundle:
/// `bootstrap.json` (containerd 2.x) or the older `address` file.
fn address_in(bundle: &Path) -> Result<String> {
    let bootstrap = bundle.join("bootstrap.json");
    if let Ok(text) = std::fs::read_to_string(&bootstrap) {
        let json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not JSON", bootstrap.display()))?;
        return json["address"]
            .as_str()
            .map(String::from)
            .with_context(|| format!("{} names no address", bootstrap.display()));
    }
    let legacy = bundle.join("address");
    std::fs::read_to_string(&legacy)
        .map(|s| s.trim().to_string())
        .with_context(|| format!("neither {} nor {} is readable", bootstrap.display(), legacy.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_comes_from_bootstrap_json_or_the_address_file() {
        let bundle = tempfile::tempdir().unwrap();
        assert!(address_in(bundle.path()).is_err());
        std::fs::write(bundle.path().join("address"), "unix:///run/containerd/s/abc\n").unwrap();
        assert_eq!(address_in(bundle.path()).unwrap(), "unix:///run/containerd/s/abc");
        std::fs::write(
            bundle.path().join("bootstrap.json"),
            r#"{"version":3,"address":"unix:///run/containerd/s/def","protocol":"ttrpc"}"#,
        )
        .unwrap();
        assert_eq!(address_in(bundle.path()).unwrap(), "unix:///run/containerd/s/def");
    }

    #[test]
    fn options_are_the_shims_json() {
        let request = StoreCheckpoint {
            store: "/var/lib/cp".into(),
            id: "web-1".into(),
            exit: false,
            tcp_established: true,
            file_locks: false,
            staging: None,
            direct: false,
        };
        let json = serde_json::to_value(&request).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"store": "/var/lib/cp", "id": "web-1",
                "exit": false, "tcp_established": true, "file_locks": false, "direct": false})
        );
    }
}
