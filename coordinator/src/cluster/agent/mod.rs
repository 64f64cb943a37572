//! The agent daemon, one per host: serves the Agent API over mutual TLS,
//! and keeps its host registered with the coordinator by heartbeats.

pub mod containers;
pub mod context;
mod failpoints;
mod fence;
mod heartbeat;
pub mod images;
pub mod migration;
pub mod network;
mod probe;
mod recovery;
mod service;
mod spec;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use tokio::sync::Mutex;
use tonic::transport::Server;

use self::context::Context;
use crate::host::containerd::Containerd;

use crate::proto::agent_server::AgentServer;
use crate::tls::{self, Tls};

/// The containerd namespace of the cluster's containers and images.
pub const NAMESPACE: &str = "default";

/// Everything the daemon is told (flags or environment).
#[derive(Debug, Clone)]
pub struct Config {
    /// The host's name in the cluster; also its certificate's in `tls_dir`.
    pub name: String,
    pub listen: SocketAddr,
    /// host:port the coordinator and other agents reach this agent at.
    pub advertise: Option<String>,
    /// The coordinator's replicas, https://HOST:PORT each (one, or several
    /// on etcd: the agent beats through whichever answers).
    pub coordinator: Vec<String>,
    pub tls_dir: PathBuf,
    pub containerd: PathBuf,
    pub labels: BTreeMap<String, String>,
    pub snapshotter: String,
    /// The host's bridge over its NIC, which containers' veths join
    /// ([`network`]); None: this host runs no container of the cluster.
    pub bridge: Option<String>,
    /// Where migrations keep their files, and the containers' logs.
    pub state_dir: PathBuf,
    /// A file of failures to inject into migration steps (tests only).
    pub failpoints: Option<PathBuf>,
}

/// Runs until SIGINT or SIGTERM.
pub async fn run(config: Config) -> Result<()> {
    let tls = Tls::load(&config.tls_dir, &config.name)?;
    let mut endpoints = Vec::new();
    for url in &config.coordinator {
        let Some(server_name) = tls::url_host(url) else {
            bail!("--coordinator {url} is not an https://HOST:PORT URL");
        };
        endpoints.push(heartbeat::Endpoint { url: url.clone(), server_name: server_name.to_string() });
    }
    if endpoints.is_empty() {
        bail!("name the coordinator: --coordinator https://HOST:PORT[,https://HOST:PORT...]");
    }
    let advertise = match &config.advertise {
        Some(a) => a.clone(),
        None if config.listen.ip().is_unspecified() => {
            bail!(
                "--listen {} is every address: name the one others reach this agent at with --advertise HOST:PORT",
                config.listen
            )
        }
        None => config.listen.to_string(),
    };
    let probe = probe::Probe::new(config.name.clone(), advertise.clone(), config.labels.clone(), &config.containerd)
        .await
        .context("the agent drives this host's containerd")?;
    let probe = Arc::new(probe);
    let cd = Containerd::connect(&config.containerd.to_string_lossy(), NAMESPACE).await?;
    let host = std::net::ToSocketAddrs::to_socket_addrs(&advertise)
        .ok()
        .and_then(|mut a| a.next())
        .map(|a| a.ip())
        .with_context(|| format!("the advertised address {advertise} is not HOST:PORT of this host"))?;
    let ctx = Arc::new(Context {
        name: config.name.clone(),
        cd,
        snapshotter: config.snapshotter.clone(),
        bridge: config.bridge.clone(),
        tls: tls.clone(),
        tls_files: context::TlsFiles::of(&config.tls_dir, &config.name),
        host,
        work: config.state_dir.clone(),
        logs: config.state_dir.join("logs"),
        migrations: Mutex::new(HashMap::new()),
        failpoints: failpoints::Failpoints::new(config.failpoints.clone()),
        recoveries: recovery::Recoveries::default(),
    });
    let coordinator = heartbeat::Coordinator { endpoints, tls: tls.clone() };

    // Bound before registering: the coordinator calls back at once.
    let incoming = crate::daemon::listen(config.listen).await?;
    log::info!("agent {} listening on {} (advertised as {advertise})", config.name, config.listen);
    let server = Server::builder()
        .tls_config(tls.server())
        .context("configuring the server's TLS")?
        .add_service(AgentServer::new(service::AgentService::new(probe.clone(), ctx.clone())))
        .serve_with_incoming_shutdown(incoming, crate::daemon::shutdown_signal());
    let (lease, leased) = tokio::sync::watch::channel(None);
    let fencing = tokio::spawn(fence::run(ctx.clone(), leased));
    let ended = tokio::select! {
        served = server => served.with_context(|| format!("serving on {}", config.listen)),
        refused = heartbeat::run(probe, ctx, coordinator, lease) => Err(anyhow::anyhow!("{refused}")),
    };
    fencing.abort();
    ended
}
