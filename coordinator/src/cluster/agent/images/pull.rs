//! An image from its registry, through containerd's Transfer service
//! (containerd 2.x): containerd resolves, fetches (with the host's registry
//! configuration, `hosts.toml` mirrors and credentials helpers included)
//! and unpacks into the snapshotter, as `ctr image pull` does.
//!
//! Whether a registry is worth asking is decided first, by a short TCP
//! connect to it: an image imported from a tarball usually names one that
//! is unreachable from here (`docker.io/library/…` on a host without
//! Internet access), and a pull of it must fail at once rather than after
//! containerd's own timeouts, so that the source agent is asked instead.

use std::time::Duration;

use anyhow::{Context, Result};
use containerd_client::services::v1::{TransferOptions, TransferRequest};
use containerd_client::to_any;
use containerd_client::types::Platform;
use containerd_client::types::transfer::{ImageStore, OciRegistry, UnpackConfiguration};

use crate::host::containerd::Containerd;

/// The registry of references without one, as containerd normalises them.
const DEFAULT_REGISTRY: &str = "docker.io";
/// Where `docker.io` is served.
const DOCKER_HUB: &str = "registry-1.docker.io";

/// Pulls `reference` from its registry into `cd`'s namespace and unpacks
/// it into `snapshotter`.
pub async fn pull(cd: &Containerd, reference: &str, snapshotter: &str) -> Result<()> {
    let request = pull_request(reference, snapshotter, &this_platform());
    cd.transfer(&format!("pull {reference} from {}", registry_of(reference)), request)
        .await
        .with_context(|| format!("pulling image {reference} from its registry {}", registry_of(reference)))
}

/// Whether `reference`'s registry accepts a TCP connection within
/// `timeout` (no image is asked for: containerd does that).
pub async fn registry_answers(reference: &str, timeout: Duration) -> bool {
    let address = registry_address(registry_of(reference));
    matches!(tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&address)).await, Ok(Ok(_)))
}

/// The registry part of a reference, as containerd's (and Docker's)
/// reference grammar reads it: the first path component when it has a dot
/// or a port or is `localhost`, else Docker Hub.
pub fn registry_of(reference: &str) -> &str {
    match reference.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => DEFAULT_REGISTRY,
    }
}

/// host:port to connect to for `registry` (HTTPS unless a port is named).
fn registry_address(registry: &str) -> String {
    let host = if registry == DEFAULT_REGISTRY { DOCKER_HUB } else { registry };
    if host.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok()) {
        host.to_string()
    } else {
        format!("{host}:443")
    }
}

fn this_platform() -> Platform {
    let p = migrate_oci::platform::platform();
    Platform {
        os: p.os().to_string(),
        architecture: p.architecture().to_string(),
        variant: p.variant().clone().unwrap_or_default(),
        os_version: String::new(),
    }
}

/// The Transfer request of a pull: from the registry (default resolver:
/// the host's configuration), into the image store under the same name,
/// this platform only, unpacked into `snapshotter`.
fn pull_request(reference: &str, snapshotter: &str, platform: &Platform) -> TransferRequest {
    let source = OciRegistry { reference: reference.to_string(), resolver: None };
    let destination = ImageStore {
        name: reference.to_string(),
        platforms: vec![platform.clone()],
        unpacks: vec![UnpackConfiguration { platform: Some(platform.clone()), snapshotter: snapshotter.to_string() }],
        ..Default::default()
    };
    TransferRequest {
        source: Some(to_any(&source)),
        destination: Some(to_any(&destination)),
        options: Some(TransferOptions::default()),
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn the_registry_is_the_first_component_with_a_dot_a_port_or_localhost() {
        assert_eq!(registry_of("docker.io/library/busybox:latest"), "docker.io");
        assert_eq!(registry_of("busybox"), "docker.io");
        assert_eq!(registry_of("library/busybox:1"), "docker.io");
        assert_eq!(registry_of("localhost/containerd-migrate/testbox:latest"), "localhost");
        assert_eq!(registry_of("10.0.0.5:5000/app@sha256:abc"), "10.0.0.5:5000");
        assert_eq!(registry_of("ghcr.io/org/app:v1"), "ghcr.io");
        assert_eq!(registry_address("docker.io"), "registry-1.docker.io:443");
        assert_eq!(registry_address("10.0.0.5:5000"), "10.0.0.5:5000");
        assert_eq!(registry_address("localhost"), "localhost:443");
    }

    #[test]
    fn a_pull_is_a_registry_to_image_store_transfer_unpacked_into_the_snapshotter() {
        let platform = Platform { os: "linux".into(), architecture: "amd64".into(), ..Default::default() };
        let request = pull_request("ghcr.io/org/app:v1", "migrate", &platform);
        let source = request.source.unwrap();
        assert_eq!(source.type_url, "containerd.types.transfer.OCIRegistry");
        let source = OciRegistry::decode(source.value.as_slice()).unwrap();
        assert_eq!(source.reference, "ghcr.io/org/app:v1");
        let destination = request.destination.unwrap();
        assert_eq!(destination.type_url, "containerd.types.transfer.ImageStore");
        let store = ImageStore::decode(destination.value.as_slice()).unwrap();
        assert_eq!(store.name, "ghcr.io/org/app:v1");
        assert_eq!(store.platforms, std::slice::from_ref(&platform));
        assert_eq!(store.unpacks, [UnpackConfiguration { platform: Some(platform), snapshotter: "migrate".into() }]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_unreachable_registry_is_told_at_once() {
        // A port nothing listens on, on loopback: refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let started = std::time::Instant::now();
        assert!(!registry_answers(&format!("127.0.0.1:{port}/app:v1"), Duration::from_secs(5)).await);
        assert!(started.elapsed() < Duration::from_secs(2));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(registry_answers(&format!("127.0.0.1:{port}/app:v1"), Duration::from_secs(5)).await);
    }
}
