//! The coordinator daemon: serves the Coordinator API over mutual TLS,
//! keeps the cluster's state in its store, marks hosts down when their
//! heartbeats stop and brings their containers back elsewhere.
//!
//! Alone, its state is one redb file and it always leads. Replicated, the
//! state is in etcd, every replica serves registrations, heartbeats and
//! lists, and the one etcd's election makes leader ([`election`]) also
//! runs the expiry sweep, the recoveries and the calls that change the
//! cluster's plan ([`replica`]).

mod containers;
mod election;
mod expiry;
mod migration;
mod recovery;
mod replica;
mod service;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Server;

use crate::ipam::Pool;
use crate::membership::{self, HeartbeatPolicy};
use crate::proto::coordinator_server::CoordinatorServer;
use crate::store::Store;
use crate::store::etcd::{EtcdStore, Members};
use crate::store::redb::RedbStore;
use crate::tls::Tls;

/// Where the cluster's state is.
#[derive(Debug, Clone)]
pub enum StateStore {
    /// One file, for a coordinator alone.
    Redb(PathBuf),
    /// etcd, for replicas: its client URLs.
    Etcd(Vec<String>),
}

/// Everything the daemon is told (flags or environment).
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub tls_dir: PathBuf,
    /// Its certificate's name in `tls_dir`.
    pub tls_name: String,
    pub state: StateStore,
    /// This replica's name, and the URL agents and migratectl reach it at.
    pub name: String,
    pub url: String,
    /// The TTL of a replica's lease in etcd, in seconds: how long the
    /// cluster may be without a leader when the leader's host dies.
    pub leader_ttl: i64,
    pub policy: HeartbeatPolicy,
    /// The addresses containers get on the cluster network ([`crate::ipam`]);
    /// None: the cluster runs no containers.
    pub container_network: Option<Pool>,
}

/// Runs until SIGINT or SIGTERM.
pub async fn run(config: Config) -> Result<()> {
    let tls = Tls::load(&config.tls_dir, &config.tls_name)?;
    let me = election::Replica {
        name: config.name.clone(),
        url: config.url.clone(),
        started_unix_ms: membership::now(),
        leader_since_unix_ms: 0,
    };
    let (leader_tx, _) = watch::channel(None);
    let service_of = {
        let (policy, tls, network) = (config.policy, tls.clone(), config.container_network);
        move |store: Arc<dyn Store>| service::CoordinatorService::new(store, policy, tls.clone(), network)
    };
    let (any, peers, campaign) = match &config.state {
        StateStore::Redb(path) => {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating the state directory {}", parent.display()))?;
            }
            let store: Arc<dyn Store> = Arc::new(RedbStore::open(path)?);
            let known = crate::hosts::list(&*store).await?;
            log::info!("state in {} ({} hosts known)", path.display(), known.len());
            let any = service_of(store);
            // Alone, it leads from the start, with the same store.
            leader_tx.send_replace(Some((any.clone(), membership::now())));
            (any, replica::Peers::Alone(me.clone()), None)
        }
        StateStore::Etcd(endpoints) => {
            let members = Members::connect(endpoints.clone())
                .await
                .with_context(|| format!("connecting to etcd at {}", endpoints.join(",")))?;
            let store = EtcdStore::new(members.clone());
            let any = service_of(Arc::new(store.clone()));
            let (elected_tx, elected_rx) = watch::channel(None);
            let campaign = tokio::spawn(election::run(members.clone(), me.clone(), config.leader_ttl, elected_tx));
            // Leading, the replica writes through a store that compares its
            // election key: void once it no longer leads.
            tokio::spawn(follow(elected_rx, leader_tx.clone(), move |l: &election::Leadership| {
                service_of(Arc::new(store.leading(l.key.clone(), l.revision)))
            }));
            log::info!("state in etcd at {}; campaigning as {}", endpoints.join(","), me.name);
            (any, replica::Peers::Etcd(members), Some(campaign))
        }
    };
    let duties = tokio::spawn(lead(leader_tx.subscribe(), config.policy));
    let api = replica::ReplicaService::new(any, leader_tx.subscribe(), peers);

    let incoming = crate::daemon::listen(config.listen).await?;
    log::info!("coordinator {} listening on {} ({})", config.name, config.listen, config.url);
    let served = Server::builder()
        .tls_config(tls.server())
        .context("configuring the server's TLS")?
        .add_service(CoordinatorServer::new(api))
        .serve_with_incoming_shutdown(incoming, crate::daemon::shutdown_signal())
        .await
        .with_context(|| format!("serving on {}", config.listen));
    duties.abort();
    if let Some(campaign) = campaign {
        campaign.abort();
    }
    served
}

/// Turns the election's outcome into the leader's service.
async fn follow(
    mut elected: watch::Receiver<Option<election::Leadership>>,
    leader: watch::Sender<Option<(service::CoordinatorService, membership::UnixMs)>>,
    make: impl Fn(&election::Leadership) -> service::CoordinatorService,
) {
    loop {
        let now = elected.borrow_and_update().as_ref().map(|l| (make(l), l.since));
        leader.send_replace(now);
        if elected.changed().await.is_err() {
            return;
        }
    }
}

/// From when a new leader counts the hosts' silence. Where most hosts'
/// beats are fresh in the store, the beats were being taken all along (by
/// the other replicas, while the old leader was lost): the records are
/// right, and a host silent for the grace is down now, without a second
/// grace on top of the election. Where most are stale, nobody took beats
/// (a lone coordinator restarted, or etcd was away): every host gets a full
/// grace from `since`, rather than all turning down at once. The same
/// caution as Kubernetes' node lifecycle controller, which stops evicting
/// when most nodes look unhealthy at once.
async fn watching_since(store: &dyn Store, policy: &HeartbeatPolicy, since: membership::UnixMs) -> membership::UnixMs {
    let Ok(hosts) = crate::hosts::list(store).await else { return since };
    let grace = u64::try_from(policy.grace().as_millis()).unwrap_or(u64::MAX);
    let now = membership::now();
    let fresh = hosts.iter().filter(|h| now.saturating_sub(h.last_heartbeat) < grace).count();
    if !hosts.is_empty() && fresh * 2 > hosts.len() {
        log::info!("{fresh} of {} hosts beat within the grace: their records are current", hosts.len());
        0
    } else {
        since
    }
}

/// The leader's duties, for as long as this replica leads: the expiry
/// sweep and the recoveries, started afresh at each election, each
/// watching from then on (a new leader gives every host a full grace).
async fn lead(
    mut leader: watch::Receiver<Option<(service::CoordinatorService, membership::UnixMs)>>,
    policy: HeartbeatPolicy,
) {
    let mut running: Vec<JoinHandle<()>> = Vec::new();
    loop {
        for task in running.drain(..) {
            task.abort();
        }
        let current = leader.borrow_and_update().clone();
        if let Some((service, since)) = current {
            let watching = watching_since(&*service.store, &policy, since).await;
            running.push(tokio::spawn(expiry::run(service.store.clone(), policy, watching)));
            running.push(tokio::spawn(recovery::run(service, policy, since)));
        }
        if leader.changed().await.is_err() {
            return;
        }
    }
}
