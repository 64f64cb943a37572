//! Running containers through the cluster and listing them: the record is
//! written first (the id and the IP are taken atomically), then the
//! chosen host's agent makes the container; if it cannot, the record and
//! the IP are given back.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use tonic::Status;
use tonic::transport::Channel;

use super::service::CoordinatorService;
use crate::containers::{ContainerRecord, Phase};
use crate::membership::{HostRecord, Liveness};
use crate::proto::agent_client::AgentClient;
use crate::proto::{
    AgentListContainersRequest, Container, ContainerState, CreateContainerRequest, RunContainerRequest,
};
use crate::records::{self, Change, RecordsError};
use crate::scheduler::{self, Candidate, Rules};
use crate::{hosts, ipam, random};

/// How long the coordinator waits to reach an agent.
const AGENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a host's agent may take to answer for its containers in a list.
const LIST_TIMEOUT: Duration = Duration::from_secs(3);

pub fn store_status(e: RecordsError) -> Status {
    match e {
        RecordsError::Contended { .. } => Status::aborted(e.to_string()),
        RecordsError::Store(_) | RecordsError::Corrupt { .. } => Status::internal(e.to_string()),
    }
}

impl CoordinatorService {
    /// A client of host `host`'s agent.
    pub(super) async fn agent(&self, host: &HostRecord) -> Result<AgentClient<Channel>, Status> {
        self.agent_of(host, false).await
    }

    /// A client of host `host`'s agent whose calls fail once the host stops
    /// answering ([`crate::tls::Tls::connect_watched`]): a migration's source.
    pub(super) async fn watched_agent(&self, host: &HostRecord) -> Result<AgentClient<Channel>, Status> {
        self.agent_of(host, true).await
    }

    async fn agent_of(&self, host: &HostRecord, watched: bool) -> Result<AgentClient<Channel>, Status> {
        let (name, address) = (&host.facts.name, &host.facts.address);
        let url = format!("https://{address}");
        let connected = if watched {
            self.tls.connect_watched(&url, name, AGENT_CONNECT_TIMEOUT).await
        } else {
            self.tls.connect_without_deadline(&url, name, AGENT_CONNECT_TIMEOUT).await
        };
        let channel = connected
            .map_err(|e| Status::unavailable(format!("cannot reach the agent of {name} at {address}: {e}")))?;
        Ok(AgentClient::new(channel))
    }

    /// The hosts and the containers, as the scheduler sees them.
    pub(super) async fn candidates(&self) -> Result<(Vec<HostRecord>, Vec<Candidate>), Status> {
        let hosts = hosts::list(&*self.store).await.map_err(store_status)?;
        let containers: Vec<ContainerRecord> = records::list(&*self.store).await.map_err(store_status)?;
        let candidates = hosts
            .iter()
            .map(|h| {
                let on_it: Vec<&ContainerRecord> = containers.iter().filter(|c| c.host == h.facts.name).collect();
                let ports: BTreeMap<u32, String> =
                    on_it.iter().flat_map(|c| c.placement.ports.iter().map(|p| (*p, c.id.clone()))).collect();
                Candidate {
                    name: h.facts.name.clone(),
                    labels: h.facts.labels.clone(),
                    ready: matches!(h.liveness, Liveness::Ready { .. }),
                    containers: u32::try_from(on_it.len()).unwrap_or(u32::MAX),
                    images: h.images.clone(),
                    ports,
                    container_ids: on_it.iter().map(|c| c.id.clone()).collect::<BTreeSet<_>>(),
                }
            })
            .collect();
        Ok((hosts, candidates))
    }

    pub(super) async fn run_container(&self, req: RunContainerRequest) -> Result<Container, Status> {
        let spec = req.spec.ok_or_else(|| Status::invalid_argument("the request has no container spec"))?;
        check_container_id(&spec.id)?;
        if spec.image.is_empty() {
            return Err(Status::invalid_argument("name the image to run"));
        }
        let pool = self.container_network.ok_or_else(|| {
            Status::failed_precondition(
                "this coordinator has no container network (--container-subnet and --container-range): it cannot \
                 run containers",
            )
        })?;
        let annotations = spec.annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        crate::containers::RestorePolicy::of(&annotations).map_err(Status::invalid_argument)?;
        let rules = Rules::parse(&spec.placement.clone().unwrap_or_default())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (hosts, candidates) = self.candidates().await?;
        let host = if req.host.is_empty() {
            let request = scheduler::Request { container: &spec.id, image: &spec.image, rules: &rules, exclude: None };
            scheduler::schedule(&request, &candidates, random::unit())
                .map_err(|e| Status::failed_precondition(e.to_string()))?
                .name
                .clone()
        } else {
            match candidates.iter().find(|c| c.name == req.host) {
                Some(c) if c.ready => req.host.clone(),
                Some(_) => return Err(Status::failed_precondition(format!("host {} is down", req.host))),
                None => return Err(Status::not_found(format!("no host {} in the cluster", req.host))),
            }
        };
        let host_record = hosts.iter().find(|h| h.facts.name == host).expect("the host was among the candidates");

        let identity = ipam::allocate(&*self.store, &pool, &spec.id)
            .await
            .map_err(|e| Status::resource_exhausted(e.to_string()))?;
        let record = ContainerRecord::new(&spec, &host, &identity);
        let created = records::update(&*self.store, &spec.id, |current: Option<&ContainerRecord>| match current {
            Some(_) => {
                Change::Refuse(Status::already_exists(format!("the cluster has a container {} already", spec.id)))
            }
            None => Change::Write(record.clone()),
        })
        .await
        .map_err(store_status)?;
        created?;
        let made = async {
            let mut agent = self.agent(host_record).await?;
            agent
                .create_container(CreateContainerRequest { container: Some(record.to_proto(ContainerState::Created)) })
                .await
        }
        .await;
        if let Err(status) = made {
            self.forget(&record).await;
            return Err(Status::new(
                status.code(),
                format!("running {} on {host} failed: {}", spec.id, status.message()),
            ));
        }
        let placed = ContainerRecord { phase: Phase::Placed, ..record };
        let written = records::update(&*self.store, &spec.id, |_: Option<&ContainerRecord>| {
            Change::<_, std::convert::Infallible>::Write(placed.clone())
        })
        .await
        .map_err(store_status)?;
        let Ok(_) = written;
        log::info!("container {} runs on {host} at {}", placed.id, placed.network.ip);
        Ok(placed.to_proto(ContainerState::Running))
    }

    /// Removes a container's record and gives its IP back.
    async fn forget(&self, record: &ContainerRecord) {
        let deleted = records::update(&*self.store, &record.id, |_: Option<&ContainerRecord>| {
            Change::<ContainerRecord, std::convert::Infallible>::Delete
        })
        .await;
        if let Err(e) = deleted {
            log::error!("could not remove the record of {}: {e}", record.id);
        }
        if let Ok(ip) = record.network.ip.parse::<Ipv4Addr>()
            && let Err(e) = ipam::release(&*self.store, ip, &record.id).await
        {
            log::error!("could not give back {ip} of {}: {e}", record.id);
        }
    }

    /// Every container, with the state its host reports (asked of every
    /// ready host at once).
    pub(super) async fn list_containers(&self) -> Result<Vec<Container>, Status> {
        let (hosts, _) = self.candidates().await?;
        let containers: Vec<ContainerRecord> = records::list(&*self.store).await.map_err(store_status)?;
        let mut asks = Vec::new();
        for h in hosts.iter().filter(|h| matches!(h.liveness, Liveness::Ready { .. })) {
            let name = h.facts.name.clone();
            let agent = self.agent(h).await;
            asks.push(async move {
                let states = match agent {
                    Ok(mut agent) => {
                        match tokio::time::timeout(LIST_TIMEOUT, agent.list_containers(AgentListContainersRequest {}))
                            .await
                        {
                            Ok(Ok(r)) => r.into_inner().containers,
                            _ => Vec::new(),
                        }
                    }
                    Err(_) => Vec::new(),
                };
                (name, states)
            });
        }
        let reported: BTreeMap<String, BTreeMap<String, i32>> = futures_join(asks)
            .await
            .into_iter()
            .map(|(host, states)| (host, states.into_iter().map(|s| (s.id, s.state)).collect()))
            .collect();
        Ok(containers
            .iter()
            .map(|c| {
                let state = reported
                    .get(&c.host)
                    .and_then(|on| on.get(&c.id))
                    .and_then(|s| ContainerState::try_from(*s).ok())
                    .unwrap_or(ContainerState::Unknown);
                c.to_proto(state)
            })
            .collect())
    }
}

/// Runs the futures at once and collects their outputs in order.
async fn futures_join<F>(futures: Vec<F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

/// containerd's rule for ids (a letter or digit, then letters, digits, `.`,
/// `_`, `-`, at most 76), which also keeps them safe as file and key names.
pub fn check_container_id(id: &str) -> Result<(), Status> {
    let ok = !id.is_empty()
        && id.len() <= 76
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "{id:?} is not a container id: a letter or digit, then letters, digits, '.', '_' or '-', at most 76"
        )))
    }
}
