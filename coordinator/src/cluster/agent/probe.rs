//! What the agent reports about its host: containerd's version, its
//! containers (over every namespace) and the images of the cluster's
//! namespace, CRIU's version, the kernel's.
//!
//! containerd is asked afresh at every heartbeat: a host whose containerd
//! does not answer cannot run containers, so the agent sends no heartbeat
//! then and the host turns down.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::namespaces_client::NamespacesClient;
use containerd_client::services::v1::version_client::VersionClient;
use containerd_client::services::v1::{ListContainersRequest, ListImagesRequest, ListNamespacesRequest};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Request, Status};

use crate::proto::HostInfo;

/// A call to containerd that takes longer than this counts as no answer.
const CONTAINERD_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot connect to containerd at {address}: {source}; is containerd running there (--containerd)?")]
    Connect { address: PathBuf, source: containerd_client::tonic::transport::Error },
    #[error("containerd at {address} did not answer {what}: {}", .status.message())]
    Call { address: PathBuf, what: &'static str, status: Status },
    #[error("containerd at {address} did not answer {what} within {CONTAINERD_TIMEOUT:?}")]
    Timeout { address: PathBuf, what: &'static str },
}

/// The host's fixed facts, and a connection to ask containerd the rest.
pub struct Probe {
    name: String,
    address: String,
    labels: BTreeMap<String, String>,
    criu_version: String,
    kernel_version: String,
    containerd_address: PathBuf,
    containerd: Channel,
}

impl Probe {
    /// Connects to containerd (it must be there: the agent drives it).
    pub async fn new(
        name: String,
        address: String,
        labels: BTreeMap<String, String>,
        containerd_address: &Path,
    ) -> Result<Probe, ProbeError> {
        let containerd = containerd_client::connect(containerd_address)
            .await
            .map_err(|source| ProbeError::Connect { address: containerd_address.to_path_buf(), source })?;
        Ok(Probe {
            name,
            address,
            labels,
            criu_version: criu_version(),
            kernel_version: kernel_version(),
            containerd_address: containerd_address.to_path_buf(),
            containerd,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host as it is now; fails if containerd does not answer.
    pub async fn info(&self) -> Result<HostInfo, ProbeError> {
        let version =
            self.call("Version", VersionClient::new(self.containerd.clone()).version(())).await?.into_inner().version;
        Ok(HostInfo {
            name: self.name.clone(),
            address: self.address.clone(),
            labels: self.labels.clone().into_iter().collect(),
            containerd_version: version,
            criu_version: self.criu_version.clone(),
            kernel_version: self.kernel_version.clone(),
            containers: self.containers().await?,
            images: self.images().await?,
        })
    }

    /// Containers over all of containerd's namespaces (ctr's default one,
    /// Kubernetes' k8s.io, moby's, ...).
    pub async fn containers(&self) -> Result<u32, ProbeError> {
        let namespaces = self
            .call(
                "ListNamespaces",
                NamespacesClient::new(self.containerd.clone()).list(ListNamespacesRequest::default()),
            )
            .await?
            .into_inner()
            .namespaces;
        let mut total = 0usize;
        for ns in namespaces {
            let mut request = Request::new(ListContainersRequest::default());
            let Ok(value) = ns.name.parse() else { continue };
            request.metadata_mut().insert("containerd-namespace", value);
            let listed =
                self.call("ListContainers", ContainersClient::new(self.containerd.clone()).list(request)).await?;
            total += listed.into_inner().containers.len();
        }
        Ok(u32::try_from(total).unwrap_or(u32::MAX))
    }

    /// The image names of the cluster's namespace, sorted: the scheduler
    /// prefers hosts that have a container's image.
    pub async fn images(&self) -> Result<Vec<String>, ProbeError> {
        let mut request = Request::new(ListImagesRequest::default());
        request.metadata_mut().insert("containerd-namespace", super::NAMESPACE.parse().expect("an ASCII name"));
        let listed = self.call("ListImages", ImagesClient::new(self.containerd.clone()).list(request)).await?;
        let mut names: Vec<String> = listed.into_inner().images.into_iter().map(|i| i.name).collect();
        names.sort();
        Ok(names)
    }

    async fn call<T>(
        &self,
        what: &'static str,
        call: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, ProbeError> {
        let address = self.containerd_address.clone();
        match tokio::time::timeout(CONTAINERD_TIMEOUT, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(status)) => Err(ProbeError::Call { address, what, status }),
            Err(_) => Err(ProbeError::Timeout { address, what }),
        }
    }
}

/// `criu --version`'s "Version: 4.2.1", or empty without CRIU: such a host
/// still runs containers, only cannot checkpoint them.
fn criu_version() -> String {
    let Ok(out) = std::process::Command::new("criu").arg("--version").output() else {
        return String::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Version:").map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

fn kernel_version() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}
