//! Talking to a task's shim directly over its ttrpc socket.
//!
//! `ctr` 2.x has no `tasks update`, so the update scenario sends the same
//! `UpdateTaskRequest` containerd's `Tasks.Update` forwards to the shim
//! (resources as JSON `LinuxResources` in an `Any`), to the socket
//! containerd itself uses, as written in the bundle's `bootstrap.json`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_shim_protos::TaskClient;
use containerd_shim_protos::shim::shim::UpdateTaskRequest;
use protobuf::well_known_types::any::Any;

use crate::ctr::NAMESPACE;

/// The type URL containerd's typeurl registry gives `specs.LinuxResources`.
pub const LINUX_RESOURCES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

/// The shim socket of the task whose bundle is `bundle`: the `address` of
/// `bootstrap.json` (containerd 2.x) or of the older `address` file.
pub fn socket_address(bundle: &Path) -> Result<String, String> {
    let bootstrap = bundle.join("bootstrap.json");
    if let Ok(text) = std::fs::read_to_string(&bootstrap) {
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not JSON: {e}: {text}", bootstrap.display()))?;
        return json["address"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| format!("{} has no address: {text}", bootstrap.display()));
    }
    let legacy = bundle.join("address");
    std::fs::read_to_string(&legacy)
        .map(|s| s.trim().to_string())
        .map_err(|e| {
            format!(
                "neither {} nor {} is readable: {e}",
                bootstrap.display(),
                legacy.display()
            )
        })
}

/// The filesystem path of a `unix://` shim address.
pub fn socket_path(address: &str) -> PathBuf {
    PathBuf::from(address.strip_prefix("unix://").unwrap_or(address))
}

/// Sends `Update` for task `id` with `resources` (an OCI `LinuxResources`
/// as JSON) to the shim at `address`, as containerd would.
pub fn update_resources(
    address: &str,
    id: &str,
    resources: &serde_json::Value,
) -> Result<(), String> {
    let client = ttrpc::Client::connect(address)
        .map_err(|e| format!("cannot connect to shim at {address}: {e}"))?;
    let tasks = TaskClient::new(client);
    let mut ctx = ttrpc::context::with_duration(Duration::from_secs(30));
    // containerd names the namespace in every request it sends a shim.
    ctx.add("containerd-namespace-ttrpc".into(), NAMESPACE.into());
    let req = UpdateTaskRequest {
        id: id.to_string(),
        resources: protobuf::MessageField::some(Any {
            type_url: LINUX_RESOURCES_TYPE_URL.to_string(),
            value: serde_json::to_vec(resources).expect("JSON"),
            ..Default::default()
        }),
        ..Default::default()
    };
    tasks
        .update(ctx, &req)
        .map(drop)
        .map_err(|e| format!("Update({id}, {resources}) to shim at {address} failed: {e}"))
}
