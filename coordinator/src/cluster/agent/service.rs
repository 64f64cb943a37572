//! The Agent gRPC service: what the coordinator asks of this host (its
//! facts, its containers, the steps of a migration), and the streams other
//! agents send or take (images, layers, CRIU images).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::Stream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use super::context::Context;
use super::migration::{self, source, target};
use super::probe::Probe;
use super::{containers, images, recovery};
use crate::proto::agent_client::AgentClient;
use crate::proto::agent_server::Agent;
use crate::proto::{
    AgentListContainersRequest, AgentListContainersResponse, CreateContainerRequest, CreateContainerResponse,
    DescribeRequest, DescribeResponse, Done, DumpRequest, DumpResponse, ExportImageRequest, HostInfo, ImageChunk,
    InfoRequest, Iteration, MigrationMode, MigrationRef, PagesProgress, PreDumpRequest, PrepareTargetRequest,
    PrepareTargetResponse, ProbeLinkResponse, ReceiveResponse, RecoverRequest, RecoverResponse, RestoreTargetRequest,
    RestoreTargetResponse, StopPagesResponse, SyncLayerRequest, SyncLayerResponse, TransferChunk,
};

/// How long this agent waits to reach another.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct AgentService {
    probe: Arc<Probe>,
    ctx: Arc<Context>,
}

impl AgentService {
    pub fn new(probe: Arc<Probe>, ctx: Arc<Context>) -> AgentService {
        AgentService { probe, ctx }
    }

    /// A client of the agent of host `name` at `address`.
    async fn peer(&self, address: &str, name: &str) -> Result<AgentClient<Channel>, Status> {
        let channel = self
            .ctx
            .tls
            .connect_without_deadline(&format!("https://{address}"), name, PEER_CONNECT_TIMEOUT)
            .await
            .map_err(|e| {
                Status::unavailable(format!("{} cannot reach agent {name} at {address}: {e}", self.ctx.name))
            })?;
        Ok(AgentClient::new(channel))
    }
}

/// An error of this host's work as a status that says which host failed;
/// logged here too, since the caller may be gone.
fn failed(host: &str) -> impl Fn(anyhow::Error) -> Status + '_ {
    move |e| {
        log::warn!("{e:#}");
        Status::internal(format!("{host}: {e:#}"))
    }
}

fn migration_ref(m: Option<MigrationRef>) -> Result<MigrationRef, Status> {
    let m = m.ok_or_else(|| Status::invalid_argument("the request names no migration"))?;
    migration::check_id(&m.migration_id)?;
    Ok(m)
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<HostInfo>, Status> {
        self.probe.info().await.map(Response::new).map_err(|e| Status::unavailable(e.to_string()))
    }

    async fn create_container(
        &self,
        req: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        let c = req.into_inner().container.ok_or_else(|| Status::invalid_argument("no container"))?;
        let pid = containers::create(&self.ctx, &c).await.map_err(failed(&self.ctx.name))?;
        Ok(Response::new(CreateContainerResponse { pid }))
    }

    async fn recover(&self, req: Request<RecoverRequest>) -> Result<Response<RecoverResponse>, Status> {
        let req = req.into_inner();
        let spec = req.container.as_ref().and_then(|c| c.spec.as_ref());
        let (id, image) = spec.map(|s| (s.id.clone(), s.image.clone())).unwrap_or_default();
        let mut turn = self.ctx.recoveries.turn(&id).await;
        if let Some(done) = turn.already_back(&self.ctx).await.map_err(failed(&self.ctx.name))? {
            log::info!("recovery of {id}: asked again, and it runs here already");
            return Ok(Response::new(done));
        }
        self.ctx.failpoints.check("recover").await.map_err(failed(&self.ctx.name))?;
        // Reached only if the image is missing here: the host named may be
        // about to be declared down itself (a second host lost), and a
        // connection to it waits out its timeout.
        let image_from = match req.image_source_agent.as_str() {
            "" => None,
            address => match images::present(&self.ctx.cd, &image, &self.ctx.snapshotter).await {
                Ok(true) => None,
                Ok(false) => Some(self.peer(address, &req.image_source_name).await?),
                Err(e) => return Err(failed(&self.ctx.name)(e)),
            },
        };
        let response = recovery::recover(&self.ctx, &req, image_from).await.map_err(failed(&self.ctx.name))?;
        turn.finished(&response);
        Ok(Response::new(response))
    }

    async fn list_containers(
        &self,
        _: Request<AgentListContainersRequest>,
    ) -> Result<Response<AgentListContainersResponse>, Status> {
        let containers = containers::list(&self.ctx).await.map_err(failed(&self.ctx.name))?;
        Ok(Response::new(AgentListContainersResponse { containers }))
    }

    type ExportImageStream = Pin<Box<dyn Stream<Item = Result<ImageChunk, Status>> + Send>>;

    async fn export_image(
        &self,
        req: Request<ExportImageRequest>,
    ) -> Result<Response<Self::ExportImageStream>, Status> {
        let stream = images::export(self.ctx.cd.clone(), &req.into_inner().reference);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn describe(&self, req: Request<DescribeRequest>) -> Result<Response<DescribeResponse>, Status> {
        let id = req.into_inner().container_id;
        self.ctx.failpoints.check("prepare").await.map_err(failed(&self.ctx.name))?;
        source::describe(&self.ctx, &id).await.map(Response::new).map_err(failed(&self.ctx.name))
    }

    async fn sync_layer(&self, req: Request<SyncLayerRequest>) -> Result<Response<SyncLayerResponse>, Status> {
        let req = req.into_inner();
        let m = migration_ref(req.migration)?;
        self.ctx.failpoints.check("sync").await.map_err(failed(&self.ctx.name))?;
        let target = self.peer(&req.target_agent, &req.target_name).await?;
        source::sync_layer(&self.ctx, &m, target).await.map(Response::new).map_err(failed(&self.ctx.name))
    }

    async fn dump(&self, req: Request<DumpRequest>) -> Result<Response<DumpResponse>, Status> {
        let req = req.into_inner();
        let m = migration_ref(req.migration)?;
        self.ctx.failpoints.check("dump").await.map_err(failed(&self.ctx.name))?;
        let mode = MigrationMode::try_from(req.mode)
            .map_err(|_| Status::invalid_argument(format!("unknown migration mode {}", req.mode)))?;
        let target = self.peer(&req.target_agent, &req.target_name).await?;
        source::dump(&self.ctx, &m, mode, target).await.map(Response::new).map_err(failed(&self.ctx.name))
    }

    async fn probe_link(&self, req: Request<SyncLayerRequest>) -> Result<Response<ProbeLinkResponse>, Status> {
        let req = req.into_inner();
        let m = migration_ref(req.migration)?;
        let target = self.peer(&req.target_agent, &req.target_name).await?;
        source::probe_link(&m, target).await.map(Response::new).map_err(failed(&self.ctx.name))
    }

    async fn stop_pages(&self, req: Request<MigrationRef>) -> Result<Response<StopPagesResponse>, Status> {
        let m = migration_ref(Some(req.into_inner()))?;
        source::stop_pages(&self.ctx, &m).await.map(Response::new).map_err(failed(&self.ctx.name))
    }

    async fn pre_dump(&self, req: Request<PreDumpRequest>) -> Result<Response<Iteration>, Status> {
        let req = req.into_inner();
        let m = migration_ref(req.migration)?;
        self.ctx.failpoints.check("pre-dump").await.map_err(failed(&self.ctx.name))?;
        let target = self.peer(&req.target_agent, &req.target_name).await?;
        source::pre_dump(&self.ctx, &m, req.round, target).await.map(Response::new).map_err(failed(&self.ctx.name))
    }

    async fn finish_source(&self, req: Request<MigrationRef>) -> Result<Response<Done>, Status> {
        let m = migration_ref(Some(req.into_inner()))?;
        source::finish(&self.ctx, &m).await.map(|()| Response::new(Done {})).map_err(failed(&self.ctx.name))
    }

    async fn resume_source(&self, req: Request<MigrationRef>) -> Result<Response<Done>, Status> {
        let m = migration_ref(Some(req.into_inner()))?;
        source::resume(&self.ctx, &m).await.map(|()| Response::new(Done {})).map_err(failed(&self.ctx.name))
    }

    async fn prepare_target(
        &self,
        req: Request<PrepareTargetRequest>,
    ) -> Result<Response<PrepareTargetResponse>, Status> {
        let req = req.into_inner();
        migration_ref(req.migration.clone())?;
        self.ctx.failpoints.check("prepare").await.map_err(failed(&self.ctx.name))?;
        let source = self.peer(&req.source_agent, &req.source_name).await?;
        target::prepare(&self.ctx, &req, source).await.map(Response::new).map_err(failed(&self.ctx.name))
    }

    async fn receive(&self, req: Request<Streaming<TransferChunk>>) -> Result<Response<ReceiveResponse>, Status> {
        target::receive(&self.ctx, req.into_inner()).await.map(Response::new).map_err(failed(&self.ctx.name))
    }

    async fn restore_target(
        &self,
        req: Request<RestoreTargetRequest>,
    ) -> Result<Response<RestoreTargetResponse>, Status> {
        let req = req.into_inner();
        let m = migration_ref(req.migration)?;
        self.ctx.failpoints.check("restore").await.map_err(failed(&self.ctx.name))?;
        target::restore(&self.ctx, &m, &req.page_server).await.map(Response::new).map_err(failed(&self.ctx.name))
    }

    type AwaitPagesStream = Pin<Box<dyn Stream<Item = Result<PagesProgress, Status>> + Send>>;

    async fn await_pages(&self, req: Request<MigrationRef>) -> Result<Response<Self::AwaitPagesStream>, Status> {
        let m = migration_ref(Some(req.into_inner()))?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let ctx = self.ctx.clone();
        tokio::spawn(async move { target::await_pages(&ctx, &m, tx).await });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn abort_target(&self, req: Request<MigrationRef>) -> Result<Response<Done>, Status> {
        let m = migration_ref(Some(req.into_inner()))?;
        target::abort(&self.ctx, &m).await.map(|()| Response::new(Done {})).map_err(failed(&self.ctx.name))
    }
}
