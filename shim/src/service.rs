//! The shim binary's lifecycle as containerd drives it: `start` spawns the
//! long-running shim server, `delete` cleans up after a shim that died.

use std::{path::Path, sync::Arc};

use async_trait::async_trait;
use containerd_shim::{
    Config, DeleteResponse, ExitSignal, Flags, Shim, StartOpts,
    publisher::RemotePublisher,
    util::{read_options, read_spec, timestamp, write_str_to_file},
};
use log::warn;
use nix::sys::signal::Signal;

use crate::{events::Events, runc::Runc, task::TaskService};

/// containerd groups the containers of a Kubernetes pod into one shim by
/// this annotation, as it does for runc.v2.
const SANDBOX_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

pub struct Service {
    namespace: String,
    id: String,
    /// containerd's gRPC socket, which the shim asks what image a
    /// container runs (`image_origin`).
    containerd: String,
    exit: Arc<ExitSignal>,
}

#[async_trait]
impl Shim for Service {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Service {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            containerd: args.address.clone(),
            exit: Arc::default(),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let grouping = read_spec(".")
            .await
            .ok()
            .and_then(|spec| spec.annotations().as_ref()?.get(SANDBOX_ANNOTATION).cloned())
            .unwrap_or_else(|| opts.id.clone());
        let address = containerd_shim::spawn(opts, &grouping, Vec::new()).await?;
        write_str_to_file("address", &address).await?;
        Ok(address)
    }

    /// Called with the bundle as working directory after a shim is gone:
    /// remove whatever it left of the container.
    async fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let bundle = std::env::current_dir().map_err(|e| containerd_shim::Error::IoError {
            context: "find the bundle (the working directory)".into(),
            err: e,
        })?;
        let options = read_options(&bundle).await.unwrap_or_default();
        let runc = Runc::new(&options.binary_name, &options.root, &self.namespace, options.systemd_cgroup, &bundle);
        if let Err(e) = runc.delete(&self.id, true).await {
            warn!("cleanup of {}: {e}", self.id);
        }
        let rootfs = bundle.join("rootfs");
        if Path::new(&rootfs).exists()
            && let Err(e) = containerd_shim::mount::umount_recursive(rootfs.to_str(), libc::MNT_DETACH)
        {
            warn!("cleanup of {}: unmount {}: {e}", self.id, rootfs.display());
        }
        Ok(DeleteResponse {
            exit_status: 128 + Signal::SIGKILL as u32,
            exited_at: Some(timestamp()?).into(),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        // Only its address is used: see events.rs for why the shim publishes itself.
        let events = Events::new(&publisher.address, &self.namespace);
        drop(publisher);
        TaskService::new(&self.namespace, &self.containerd, events, self.exit.clone()).await
    }
}
