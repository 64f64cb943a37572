//! The Coordinator gRPC service: registrations, heartbeats and the host
//! list, each a change of the hosts' records in the store.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use crate::containers::ContainerRecord;
use crate::hosts::{self, Change, HostsError};
use crate::ipam::Pool;
use crate::membership::{self, HeartbeatPolicy, HostFacts, HostRecord, Liveness};
use crate::proto::agent_client::AgentClient;
use crate::proto::{
    HeartbeatRequest, HeartbeatResponse, Host, HostInfo, HostState, InfoRequest, ListHostsRequest, ListHostsResponse,
    RegisterRequest, RegisterResponse, RemoveHostRequest, RemoveHostResponse,
};
use crate::records;
use crate::store::Store;
use crate::tls::Tls;
use crate::{peer, random};

/// How long the coordinator waits for an agent that registers to answer
/// its call back.
const AGENT_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub struct CoordinatorService {
    pub(super) store: Arc<dyn Store>,
    policy: HeartbeatPolicy,
    /// To call agents back, as a client of theirs.
    pub(super) tls: Tls,
    /// Where containers get their IPs; None: this coordinator runs none.
    pub(super) container_network: Option<Pool>,
}

impl CoordinatorService {
    pub fn new(
        store: Arc<dyn Store>,
        policy: HeartbeatPolicy,
        tls: Tls,
        container_network: Option<Pool>,
    ) -> CoordinatorService {
        CoordinatorService { store, policy, tls, container_network }
    }

    fn lease_ms(&self) -> u64 {
        u64::try_from(self.policy.lease().as_millis()).unwrap_or(u64::MAX)
    }

    fn period_ms(&self) -> u64 {
        u64::try_from(self.policy.jittered_period(random::unit()).as_millis()).unwrap_or(u64::MAX)
    }

    /// Calls the agent back at the address it gave, expecting a certificate
    /// issued for the name it gave: the address is right (the other agents
    /// and the coordinator will use it), and the agent's server takes the
    /// cluster's certificates.
    async fn check_agent(&self, facts: &HostFacts) -> Result<(), Status> {
        let (name, address) = (&facts.name, &facts.address);
        let unreachable = |e: String| {
            Status::failed_precondition(format!(
                "the coordinator cannot reach agent {name} at {address} ({e}); is the agent's advertised address \
                 reachable from the coordinator, and its certificate issued for {name} by this cluster's CA?"
            ))
        };
        let channel = self
            .tls
            .connect(&format!("https://{address}"), name, AGENT_CHECK_TIMEOUT)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let info = AgentClient::new(channel)
            .info(InfoRequest {})
            .await
            .map_err(|s| unreachable(format!("Info: {}", s.message())))?
            .into_inner();
        if info.name != *name {
            return Err(Status::failed_precondition(format!(
                "the agent at {address} says it is {:?}, not {name:?}",
                info.name
            )));
        }
        Ok(())
    }
}

/// The calls any replica serves, and removing a host (the leader's).
impl CoordinatorService {
    pub(super) async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let Some(name) = request.get_ref().info.as_ref().map(|i| i.name.clone()) else {
            return Err(Status::invalid_argument("RegisterRequest has no info"));
        };
        peer::check_is(&request, &name)?;
        // There, as checked above (the certificate is read off the request first).
        let request = request.into_inner();
        let here = request.containers;
        let info = request.info.unwrap_or_default();
        let (containers, images) = (info.containers, info.images.clone());
        let facts = facts_of(info)?;
        self.check_agent(&facts).await?;
        let session = random::session_id();
        let now = membership::now();
        let mut was = None;
        let Ok(_) = hosts::update(&*self.store, &facts.name, |previous| {
            was = previous.map(|p| p.liveness);
            Change::<_, std::convert::Infallible>::Write(membership::register(
                previous,
                facts.clone(),
                containers,
                images.clone(),
                session.clone(),
                now,
            ))
        })
        .await
        .map_err(store_status)?;
        match was {
            None => log::info!("host {} registered at {}", facts.name, facts.address),
            Some(_) => log::info!("host {} registered again at {} (new session)", facts.name, facts.address),
        }
        let records: Vec<ContainerRecord> =
            records::list(&*self.store).await.map_err(super::containers::store_status)?;
        let stale: Vec<String> = records
            .iter()
            .filter(|c| here.contains(&c.id) && !c.belongs_on(&facts.name))
            .map(|c| c.id.clone())
            .collect();
        if !stale.is_empty() {
            log::warn!("host {} still has {}, which run elsewhere now: it removes them", facts.name, stale.join(", "));
        }
        Ok(Response::new(RegisterResponse {
            session_id: session,
            heartbeat_period_ms: self.period_ms(),
            stale,
            lease_ms: self.lease_ms(),
        }))
    }

    pub(super) async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        peer::check_is(&request, &request.get_ref().name)?;
        let beat = request.into_inner();
        let now = membership::now();
        let mut was = None;
        let outcome = hosts::update(&*self.store, &beat.name, |current| match current {
            None => Change::Refuse(Status::not_found(format!(
                "host {} is not registered; the agent must register",
                beat.name
            ))),
            Some(record) => {
                was = Some(record.liveness);
                match membership::heartbeat(record, &beat.session_id, beat.containers, beat.images.clone(), now) {
                    Ok(new) => Change::Write(new),
                    Err(refused) => Change::Refuse(Status::failed_precondition(refused.to_string())),
                }
            }
        })
        .await
        .map_err(store_status)?;
        if let (Err(_), Some(Liveness::Down { since })) = (&outcome, was) {
            log::info!(
                "host {} beats again, {} ms after it was declared down: it must register again",
                beat.name,
                now.saturating_sub(since)
            );
        }
        outcome?;
        Ok(Response::new(HeartbeatResponse { heartbeat_period_ms: self.period_ms(), lease_ms: self.lease_ms() }))
    }

    pub(super) async fn remove_host(
        &self,
        request: Request<RemoveHostRequest>,
    ) -> Result<Response<RemoveHostResponse>, Status> {
        let name = request.into_inner().name;
        let removed = hosts::update(&*self.store, &name, |current| match current {
            None => Change::Refuse(Status::not_found(format!("no host {name:?} in the cluster"))),
            Some(record) => match membership::may_forget(record) {
                Ok(()) => Change::Delete,
                Err(ready) => Change::Refuse(Status::failed_precondition(ready.to_string())),
            },
        })
        .await
        .map_err(store_status)?;
        removed?;
        log::info!("host {name} removed from the cluster");
        Ok(Response::new(RemoveHostResponse {}))
    }

    pub(super) async fn list_hosts(&self, _: Request<ListHostsRequest>) -> Result<Response<ListHostsResponse>, Status> {
        let records = hosts::list(&*self.store).await.map_err(store_status)?;
        Ok(Response::new(ListHostsResponse {
            hosts: records.into_iter().map(host_of).collect(),
            now_unix_ms: membership::now(),
        }))
    }
}

fn facts_of(info: HostInfo) -> Result<HostFacts, Status> {
    if info.name.is_empty() {
        return Err(Status::invalid_argument("a host needs a name"));
    }
    if info.address.is_empty() {
        return Err(Status::invalid_argument(format!("host {} gave no address", info.name)));
    }
    Ok(HostFacts {
        name: info.name,
        address: info.address,
        labels: info.labels.into_iter().collect(),
        containerd_version: info.containerd_version,
        criu_version: info.criu_version,
        kernel_version: info.kernel_version,
    })
}

fn host_of(record: HostRecord) -> Host {
    let (state, since) = match record.liveness {
        Liveness::Ready { since } => (HostState::Ready, since),
        Liveness::Down { since } => (HostState::Down, since),
    };
    let down_reason = record.down_reason.unwrap_or_default();
    let f = record.facts;
    Host {
        info: Some(HostInfo {
            name: f.name,
            address: f.address,
            labels: f.labels.into_iter().collect(),
            containerd_version: f.containerd_version,
            criu_version: f.criu_version,
            kernel_version: f.kernel_version,
            containers: record.containers,
            images: record.images,
        }),
        state: state.into(),
        last_heartbeat_unix_ms: record.last_heartbeat,
        state_since_unix_ms: since,
        down_reason,
    }
}

fn store_status(e: HostsError) -> Status {
    match e {
        HostsError::Contended { .. } => Status::aborted(e.to_string()),
        HostsError::Store(_) | HostsError::Corrupt { .. } => Status::internal(e.to_string()),
    }
}
