//! The Agent gRPC service. For now it answers Info, which the coordinator
//! calls when the agent registers; moving containers adds to it.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::probe::Probe;
use crate::proto::agent_server::Agent;
use crate::proto::{HostInfo, InfoRequest};

pub struct AgentService {
    probe: Arc<Probe>,
}

impl AgentService {
    pub fn new(probe: Arc<Probe>) -> AgentService {
        AgentService { probe }
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<HostInfo>, Status> {
        self.probe.info().await.map(Response::new).map_err(|e| Status::unavailable(e.to_string()))
    }
}
