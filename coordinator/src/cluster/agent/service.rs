//! The Agent gRPC service. For now it answers Info, which the coordinator
//! calls when the agent registers, and ExportImage, which another agent
//! calls for an image; moving containers adds to it.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::images;
use super::probe::Probe;
use crate::host::containerd::Containerd;
use crate::proto::agent_server::Agent;
use crate::proto::{HostInfo, InfoRequest};

pub struct AgentService {
    probe: Arc<Probe>,
    /// In the cluster's namespace.
    containerd: Containerd,
}

impl AgentService {
    pub fn new(probe: Arc<Probe>, containerd: Containerd) -> AgentService {
        AgentService { probe, containerd }
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<HostInfo>, Status> {
        self.probe.info().await.map(Response::new).map_err(|e| Status::unavailable(e.to_string()))
    }

    async fn create_container(
        &self,
        _: Request<crate::proto::CreateContainerRequest>,
    ) -> Result<Response<crate::proto::CreateContainerResponse>, Status> {
        Err(Status::unimplemented("create_container: not built yet"))
    }

    async fn list_containers(
        &self,
        _: Request<crate::proto::AgentListContainersRequest>,
    ) -> Result<Response<crate::proto::AgentListContainersResponse>, Status> {
        Err(Status::unimplemented("list_containers: not built yet"))
    }

    async fn describe(
        &self,
        _: Request<crate::proto::DescribeRequest>,
    ) -> Result<Response<crate::proto::DescribeResponse>, Status> {
        Err(Status::unimplemented("describe: not built yet"))
    }

    async fn sync_layer(
        &self,
        _: Request<crate::proto::SyncLayerRequest>,
    ) -> Result<Response<crate::proto::SyncLayerResponse>, Status> {
        Err(Status::unimplemented("sync_layer: not built yet"))
    }

    async fn dump(
        &self,
        _: Request<crate::proto::DumpRequest>,
    ) -> Result<Response<crate::proto::DumpResponse>, Status> {
        Err(Status::unimplemented("dump: not built yet"))
    }

    async fn finish_source(
        &self,
        _: Request<crate::proto::MigrationRef>,
    ) -> Result<Response<crate::proto::Done>, Status> {
        Err(Status::unimplemented("finish_source: not built yet"))
    }

    async fn resume_source(
        &self,
        _: Request<crate::proto::MigrationRef>,
    ) -> Result<Response<crate::proto::Done>, Status> {
        Err(Status::unimplemented("resume_source: not built yet"))
    }

    async fn prepare_target(
        &self,
        _: Request<crate::proto::PrepareTargetRequest>,
    ) -> Result<Response<crate::proto::PrepareTargetResponse>, Status> {
        Err(Status::unimplemented("prepare_target: not built yet"))
    }

    async fn receive(
        &self,
        _: Request<tonic::Streaming<crate::proto::TransferChunk>>,
    ) -> Result<Response<crate::proto::ReceiveResponse>, Status> {
        Err(Status::unimplemented("receive: not built yet"))
    }

    async fn restore_target(
        &self,
        _: Request<crate::proto::MigrationRef>,
    ) -> Result<Response<crate::proto::RestoreTargetResponse>, Status> {
        Err(Status::unimplemented("restore_target: not built yet"))
    }

    async fn abort_target(
        &self,
        _: Request<crate::proto::MigrationRef>,
    ) -> Result<Response<crate::proto::Done>, Status> {
        Err(Status::unimplemented("abort_target: not built yet"))
    }

    type ExportImageStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<crate::proto::ImageChunk, Status>> + Send>>;

    async fn export_image(
        &self,
        request: Request<crate::proto::ExportImageRequest>,
    ) -> Result<Response<Self::ExportImageStream>, Status> {
        let reference = request.into_inner().reference;
        Ok(Response::new(Box::pin(images::export(self.containerd.clone(), &reference))))
    }
}
