//! The Coordinator API as one replica serves it. Any replica takes the
//! agents' registrations and heartbeats and answers lists: each is a read
//! or a conditional write of one record in the shared store, safe from
//! any replica, so an agent whose replica dies beats on through another
//! without losing its lease. What changes the cluster's plan (run,
//! migrate, remove a host) the leader alone does, with a store whose
//! writes are void once it no longer leads; the others refuse it, naming
//! the leader.

use std::pin::Pin;

use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::election;
use super::service::CoordinatorService;
use crate::membership;
use crate::proto::coordinator_server::Coordinator;
use crate::proto::{
    Container, CoordinatorReplica, HeartbeatRequest, HeartbeatResponse, ListContainersRequest, ListContainersResponse,
    ListCoordinatorsRequest, ListCoordinatorsResponse, ListHostsRequest, ListHostsResponse, MigrateEvent,
    MigrateRequest, RegisterRequest, RegisterResponse, RemoveHostRequest, RemoveHostResponse, RunContainerRequest,
};

/// How the replicas are known.
#[derive(Clone)]
pub enum Peers {
    /// One coordinator: it always leads.
    Alone(election::Replica),
    /// Replicas on etcd.
    Etcd(crate::store::etcd::Members),
}

pub struct ReplicaService {
    /// For what any replica does.
    any: CoordinatorService,
    /// The leader's service and since when, while this replica leads.
    leader: watch::Receiver<Option<(CoordinatorService, membership::UnixMs)>>,
    peers: Peers,
}

impl ReplicaService {
    pub fn new(
        any: CoordinatorService,
        leader: watch::Receiver<Option<(CoordinatorService, membership::UnixMs)>>,
        peers: Peers,
    ) -> ReplicaService {
        ReplicaService { any, leader, peers }
    }

    /// The leader's service, or why this replica cannot serve the call.
    async fn leading(&self, what: &str) -> Result<CoordinatorService, Status> {
        if let Some((service, _)) = self.leader.borrow().clone() {
            return Ok(service);
        }
        let named = match &self.peers {
            Peers::Alone(_) => None,
            Peers::Etcd(members) => election::replicas(members).await.ok().and_then(|(_, leader)| leader),
        };
        Err(Status::unavailable(match named {
            Some(l) => format!("{what}: this replica does not lead the cluster; the leader is {} at {}", l.name, l.url),
            None => format!("{what}: no replica leads the cluster at the moment (an election is under way); try again"),
        }))
    }
}

#[tonic::async_trait]
impl Coordinator for ReplicaService {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<RegisterResponse>, Status> {
        self.any.register(request).await
    }

    async fn heartbeat(&self, request: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        self.any.heartbeat(request).await
    }

    async fn list_hosts(&self, request: Request<ListHostsRequest>) -> Result<Response<ListHostsResponse>, Status> {
        self.any.list_hosts(request).await
    }

    async fn remove_host(&self, request: Request<RemoveHostRequest>) -> Result<Response<RemoveHostResponse>, Status> {
        self.leading("removing a host").await?.remove_host(request).await
    }

    async fn run_container(&self, request: Request<RunContainerRequest>) -> Result<Response<Container>, Status> {
        let leader = self.leading("running a container").await?;
        leader.run_container(request.into_inner()).await.map(Response::new)
    }

    async fn list_containers(
        &self,
        _: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        let containers = self.any.list_containers().await?;
        Ok(Response::new(ListContainersResponse { containers }))
    }

    type MigrateStream = Pin<Box<dyn Stream<Item = Result<MigrateEvent, Status>> + Send>>;

    async fn migrate(&self, request: Request<MigrateRequest>) -> Result<Response<Self::MigrateStream>, Status> {
        let leader = self.leading("migrating a container").await?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        // The migration goes on if the client goes away: stopping halfway
        // would leave the container frozen.
        tokio::spawn(async move { leader.migrate(request.into_inner(), tx).await });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn list_coordinators(
        &self,
        _: Request<ListCoordinatorsRequest>,
    ) -> Result<Response<ListCoordinatorsResponse>, Status> {
        let now_unix_ms = membership::now();
        let answer = match &self.peers {
            Peers::Alone(me) => ListCoordinatorsResponse {
                replicas: vec![replica(me, Some(me.started_unix_ms))],
                store: "redb".into(),
                now_unix_ms,
            },
            Peers::Etcd(members) => {
                let (replicas, leader) = election::replicas(members)
                    .await
                    .map_err(|e| Status::unavailable(format!("etcd does not answer: {e}")))?;
                let replicas = replicas
                    .iter()
                    .map(|r| {
                        let since = leader.as_ref().filter(|l| l.name == r.name).map(|l| l.leader_since_unix_ms);
                        replica(r, since)
                    })
                    .collect();
                ListCoordinatorsResponse { replicas, store: "etcd".into(), now_unix_ms }
            }
        };
        Ok(Response::new(answer))
    }
}

fn replica(r: &election::Replica, leader_since: Option<u64>) -> CoordinatorReplica {
    CoordinatorReplica {
        name: r.name.clone(),
        url: r.url.clone(),
        started_unix_ms: r.started_unix_ms,
        leader: leader_since.is_some(),
        leader_since_unix_ms: leader_since.unwrap_or(0),
    }
}
