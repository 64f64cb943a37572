//! The coordinator daemon: serves the Coordinator API over mutual TLS,
//! keeps the cluster's state in its store, and marks hosts down when their
//! heartbeats stop.

mod containers;
mod expiry;
mod migration;
mod recovery;
mod service;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use tonic::transport::Server;

use crate::ipam::Pool;
use crate::membership::{self, HeartbeatPolicy};
use crate::proto::coordinator_server::CoordinatorServer;
use crate::store::Store;
use crate::store::redb::RedbStore;
use crate::tls::Tls;

/// Everything the daemon is told (flags or environment).
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub tls_dir: PathBuf,
    /// Its certificate's name in `tls_dir`.
    pub tls_name: String,
    pub state: PathBuf,
    pub policy: HeartbeatPolicy,
    /// The addresses containers get on the cluster network ([`crate::ipam`]);
    /// None: the cluster runs no containers.
    pub container_network: Option<Pool>,
}

/// Runs until SIGINT or SIGTERM.
pub async fn run(config: Config) -> Result<()> {
    let tls = Tls::load(&config.tls_dir, &config.tls_name)?;
    if let Some(parent) = config.state.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating the state directory {}", parent.display()))?;
    }
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&config.state)?);
    let started = membership::now();
    let service = service::CoordinatorService::new(store.clone(), config.policy, tls.clone(), config.container_network);

    let incoming = crate::daemon::listen(config.listen).await?;
    let known = crate::hosts::list(&*store).await?;
    log::info!(
        "coordinator listening on {}, state in {} ({} hosts known)",
        config.listen,
        config.state.display(),
        known.len()
    );
    let sweep = tokio::spawn(expiry::run(store, config.policy, started));
    let recoveries = tokio::spawn(recovery::run(service.clone(), config.policy));
    let served = Server::builder()
        .tls_config(tls.server())
        .context("configuring the server's TLS")?
        .add_service(CoordinatorServer::new(service))
        .serve_with_incoming_shutdown(incoming, crate::daemon::shutdown_signal())
        .await
        .with_context(|| format!("serving on {}", config.listen));
    sweep.abort();
    recoveries.abort();
    served
}
