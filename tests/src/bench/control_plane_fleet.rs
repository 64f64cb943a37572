//! Simulated hosts for `bench control-plane`: agents without containers,
//! all in this process, each with its own certificate (issued for its name)
//! and its own Agent server on 127.0.0.1 (the coordinator calls Info back
//! at every registration; every other Agent call is UNIMPLEMENTED), which
//! register and beat as `migrate-agent` does (coordinator/src/cluster/agent/
//! heartbeat.rs, mirrored here): beats at the period each answer gives,
//! a replica that does not answer within a period passed over for the
//! next, a refused beat answered by registering again. Every beat is
//! recorded: when it was sent, how long its answer took, the deadline it
//! had, and whether the host's lease (from each acknowledged beat's
//! sending) ran out before the next acknowledgement.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use migrate_cluster::proto::agent_server::{Agent, AgentServer};
use migrate_cluster::proto::coordinator_client::CoordinatorClient;
use migrate_cluster::proto::*;
use migrate_cluster::tls::Tls;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status, Streaming};

/// As heartbeat.rs: one call to the coordinator at most (a registration
/// includes the call back), the registration's retries, the shortest period.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);
const MIN_PERIOD: Duration = Duration::from_millis(100);

/// One simulated host.
pub struct SimHost {
    pub index: usize,
    pub name: String,
    /// Where its Agent server listens.
    pub address: String,
    pub tls: Tls,
}

/// The Agent service of a host without containers.
struct FakeAgent {
    info: HostInfo,
}

fn unimplemented<T>(what: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!(
        "{what}: a simulated host (bench control-plane) has no containers"
    )))
}

type BoxStream<T> =
    Pin<Box<dyn tonic::codegen::tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Agent for FakeAgent {
    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<HostInfo>, Status> {
        Ok(Response::new(self.info.clone()))
    }
    async fn create_container(
        &self,
        _: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        unimplemented("CreateContainer")
    }
    async fn list_containers(
        &self,
        _: Request<AgentListContainersRequest>,
    ) -> Result<Response<AgentListContainersResponse>, Status> {
        Ok(Response::new(AgentListContainersResponse::default()))
    }
    async fn recover(
        &self,
        _: Request<RecoverRequest>,
    ) -> Result<Response<RecoverResponse>, Status> {
        unimplemented("Recover")
    }
    type ExportImageStream = BoxStream<ImageChunk>;
    async fn export_image(
        &self,
        _: Request<ExportImageRequest>,
    ) -> Result<Response<Self::ExportImageStream>, Status> {
        unimplemented("ExportImage")
    }
    async fn describe(
        &self,
        _: Request<DescribeRequest>,
    ) -> Result<Response<DescribeResponse>, Status> {
        unimplemented("Describe")
    }
    async fn probe_link(
        &self,
        _: Request<SyncLayerRequest>,
    ) -> Result<Response<ProbeLinkResponse>, Status> {
        unimplemented("ProbeLink")
    }
    async fn sync_layer(
        &self,
        _: Request<SyncLayerRequest>,
    ) -> Result<Response<SyncLayerResponse>, Status> {
        unimplemented("SyncLayer")
    }
    async fn dump(&self, _: Request<DumpRequest>) -> Result<Response<DumpResponse>, Status> {
        unimplemented("Dump")
    }
    async fn stop_pages(
        &self,
        _: Request<MigrationRef>,
    ) -> Result<Response<StopPagesResponse>, Status> {
        unimplemented("StopPages")
    }
    async fn pre_dump(&self, _: Request<PreDumpRequest>) -> Result<Response<Iteration>, Status> {
        unimplemented("PreDump")
    }
    async fn finish_source(&self, _: Request<MigrationRef>) -> Result<Response<Done>, Status> {
        unimplemented("FinishSource")
    }
    async fn resume_source(&self, _: Request<MigrationRef>) -> Result<Response<Done>, Status> {
        unimplemented("ResumeSource")
    }
    async fn prepare_target(
        &self,
        _: Request<PrepareTargetRequest>,
    ) -> Result<Response<PrepareTargetResponse>, Status> {
        unimplemented("PrepareTarget")
    }
    async fn receive(
        &self,
        _: Request<Streaming<TransferChunk>>,
    ) -> Result<Response<ReceiveResponse>, Status> {
        unimplemented("Receive")
    }
    async fn restore_target(
        &self,
        _: Request<RestoreTargetRequest>,
    ) -> Result<Response<RestoreTargetResponse>, Status> {
        unimplemented("RestoreTarget")
    }
    type AwaitPagesStream = BoxStream<PagesProgress>;
    async fn await_pages(
        &self,
        _: Request<MigrationRef>,
    ) -> Result<Response<Self::AwaitPagesStream>, Status> {
        unimplemented("AwaitPages")
    }
    async fn abort_target(&self, _: Request<MigrationRef>) -> Result<Response<Done>, Status> {
        unimplemented("AbortTarget")
    }
}

fn host_info(name: &str, address: &str, containers: u32) -> HostInfo {
    HostInfo {
        name: name.to_string(),
        address: address.to_string(),
        labels: Default::default(),
        containerd_version: "simulated".into(),
        criu_version: String::new(),
        kernel_version: "simulated".into(),
        containers,
        images: Vec::new(),
    }
}

/// Starts the Agent servers of hosts `names`, each on its own port of
/// 127.0.0.1 with its own certificate (read from `tls_dir`), as the
/// product's agent serves (mutual TLS, the listener as `daemon::listen`
/// makes it). They run until the process ends.
pub async fn serve(
    tls_dir: &std::path::Path,
    names: &[String],
    containers: u32,
) -> Result<Vec<Arc<SimHost>>> {
    let mut hosts = Vec::with_capacity(names.len());
    for (index, name) in names.iter().enumerate() {
        let tls = Tls::load(tls_dir, name)?;
        let incoming = migrate_cluster::daemon::listen("127.0.0.1:0".parse()?).await?;
        let address = incoming.local_addr()?.to_string();
        let agent = FakeAgent {
            info: host_info(name, &address, containers),
        };
        let server = tonic::transport::Server::builder()
            .tls_config(tls.server())?
            .add_service(AgentServer::new(agent));
        tokio::spawn(serve_one(server, incoming, name.clone()));
        hosts.push(Arc::new(SimHost {
            index,
            name: name.clone(),
            address,
            tls,
        }));
    }
    Ok(hosts)
}

async fn serve_one(server: tonic::transport::server::Router, incoming: TcpIncoming, name: String) {
    if let Err(e) = server.serve_with_incoming(incoming).await {
        eprintln!("bench: the Agent server of simulated host {name} stopped: {e}");
    }
}

/// How a beat (one call; a beat passed on to the next replica is two)
/// ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// No answer within the agent's patience (a period with replicas, 5 s alone).
    Timeout,
    /// An error status or a broken connection.
    Error,
    /// FAILED_PRECONDITION or NOT_FOUND: the session ended; the host registers again.
    Refused,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
            Outcome::Refused => "refused",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Beat {
    pub host: u32,
    /// Milliseconds since the recorder's t0.
    pub sent_ms: f64,
    pub latency_ms: f64,
    /// When the beat's first call was sent: earlier than `sent_ms` when
    /// this call is the beat passed on to the next replica.
    pub beat_sent_ms: f64,
    /// A failed call whose beat was passed on to the next replica.
    pub passed_on: bool,
    /// The period the agent waited before it: its next beat is due that
    /// long after this one was sent (the deadline of "late").
    pub period_ms: f64,
    /// The lease its answer granted (0: no answer).
    pub lease_ms: f64,
    /// Which replica (index of the endpoints) it went to.
    pub replica: u8,
    pub outcome: Outcome,
}

/// A host's lease ran out: from its end until the next acknowledgement
/// (or the end of the run, when `open`).
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Lapse {
    pub host: u32,
    pub from_ms: f64,
    pub to_ms: f64,
}

#[derive(Clone, Debug)]
pub struct Registration {
    pub host: u32,
    pub sent_ms: f64,
    pub latency_ms: f64,
    /// None when it was accepted.
    pub error: Option<String>,
    /// A registration after a refused beat (not the host's first).
    pub again: bool,
}

/// Everything one fleet's run recorded.
pub struct Recorder {
    pub t0: Instant,
    /// `t0` on the wall clock, to line up with the daemons' logs.
    pub t0_unix_ms: u64,
    pub beats: Mutex<Vec<Beat>>,
    pub lapses: Mutex<Vec<Lapse>>,
    pub registrations: Mutex<Vec<Registration>>,
    /// Distinct failure messages and how often each came.
    pub errors: Mutex<BTreeMap<String, usize>>,
    /// Hosts registered at least once.
    pub registered: AtomicUsize,
    /// Each host's lease end, µs since t0 (u64::MAX: none yet).
    leases: Vec<AtomicU64>,
    ever_registered: Vec<AtomicBool>,
}

impl Recorder {
    pub fn new(hosts: usize) -> Recorder {
        Recorder {
            t0: Instant::now(),
            t0_unix_ms: super::unix_ms(),
            beats: Mutex::new(Vec::with_capacity(1 << 20)),
            lapses: Mutex::new(Vec::new()),
            registrations: Mutex::new(Vec::new()),
            errors: Mutex::new(BTreeMap::new()),
            registered: AtomicUsize::new(0),
            leases: (0..hosts).map(|_| AtomicU64::new(u64::MAX)).collect(),
            ever_registered: (0..hosts).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    pub fn ms(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.t0).as_secs_f64() * 1000.0
    }

    pub fn now_ms(&self) -> f64 {
        self.ms(Instant::now())
    }

    fn error(&self, text: String) {
        *self.errors.lock().unwrap().entry(text).or_default() += 1;
    }

    /// An acknowledgement at `answered` of a call sent at `sent` granting
    /// `lease_ms`: a lapse if the lease it renews had run out.
    fn renew(&self, host: usize, sent: Instant, answered: Instant, lease_ms: u64) {
        let answered_us = (self.ms(answered) * 1000.0) as u64;
        let until = self.leases[host].load(Ordering::Relaxed);
        if until != u64::MAX && answered_us > until {
            self.lapses.lock().unwrap().push(Lapse {
                host: host as u32,
                from_ms: until as f64 / 1000.0,
                to_ms: answered_us as f64 / 1000.0,
            });
        }
        let new = if lease_ms == 0 {
            u64::MAX
        } else {
            (self.ms(sent) * 1000.0) as u64 + lease_ms * 1000
        };
        self.leases[host].store(new, Ordering::Relaxed);
    }

    /// Leases that had run out at `at_ms` and were not renewed by then.
    pub fn open_lapses(&self, at_ms: f64) -> Vec<Lapse> {
        let at_us = (at_ms * 1000.0) as u64;
        self.leases
            .iter()
            .enumerate()
            .filter_map(|(host, l)| {
                let until = l.load(Ordering::Relaxed);
                (until != u64::MAX && until < at_us).then(|| Lapse {
                    host: host as u32,
                    from_ms: until as f64 / 1000.0,
                    to_ms: at_ms,
                })
            })
            .collect()
    }
}

/// The simulated hosts' agents against one control plane.
pub struct Fleet {
    hosts: Vec<Arc<SimHost>>,
    endpoints: Arc<Vec<String>>,
    pub rec: Arc<Recorder>,
    permits: Arc<Semaphore>,
    containers: u32,
    tasks: Vec<JoinHandle<()>>,
}

impl Fleet {
    /// `endpoints`: the coordinator's replicas' URLs, in the order each
    /// agent tries them (`migrate-agent --coordinator URL,URL,...`);
    /// `concurrency`: registrations at once.
    pub fn new(
        hosts: Vec<Arc<SimHost>>,
        endpoints: Vec<String>,
        containers: u32,
        concurrency: usize,
    ) -> Fleet {
        let rec = Arc::new(Recorder::new(hosts.len()));
        Fleet {
            hosts,
            endpoints: Arc::new(endpoints),
            rec,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            containers,
            tasks: Vec::new(),
        }
    }

    /// Starts the agents of the hosts up to `n`.
    pub fn grow(&mut self, n: usize) {
        for host in self.hosts[self.tasks.len()..n.min(self.hosts.len())].iter() {
            let agent = AgentLoop {
                host: host.clone(),
                endpoints: self.endpoints.clone(),
                rec: self.rec.clone(),
                permits: self.permits.clone(),
                containers: self.containers,
            };
            self.tasks.push(tokio::spawn(agent.run()));
        }
    }

    pub fn running(&self) -> usize {
        self.tasks.len()
    }

    /// Stops every agent (their connections close).
    pub fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}

struct AgentLoop {
    host: Arc<SimHost>,
    endpoints: Arc<Vec<String>>,
    rec: Arc<Recorder>,
    permits: Arc<Semaphore>,
    containers: u32,
}

/// The replica beats go to.
struct Replica {
    client: CoordinatorClient<Channel>,
    at: usize,
}

impl AgentLoop {
    async fn run(self) {
        let mut retry = RETRY_FIRST;
        let mut again = false;
        loop {
            let registered = {
                let _permit = self.permits.acquire().await;
                self.register(again).await
            };
            let Some((replica, session, period)) = registered else {
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
                continue;
            };
            retry = RETRY_FIRST;
            if !self.rec.ever_registered[self.host.index].swap(true, Ordering::Relaxed) {
                self.rec.registered.fetch_add(1, Ordering::Relaxed);
            }
            self.beat(replica, &session, period).await;
            again = true;
        }
    }

    /// The first replica, from `first` on, that accepts a connection.
    async fn connect(&self, first: usize, timeout: Duration) -> Result<Replica, String> {
        let mut errors = Vec::new();
        for k in 0..self.endpoints.len() {
            let at = (first + k) % self.endpoints.len();
            match self
                .host
                .tls
                .connect(&self.endpoints[at], "127.0.0.1", timeout)
                .await
            {
                Ok(channel) => {
                    return Ok(Replica {
                        client: CoordinatorClient::new(channel),
                        at,
                    });
                }
                Err(e) => errors.push(format!("{}: {e}", self.endpoints[at])),
            }
        }
        Err(errors.join("; "))
    }

    async fn register(&self, again: bool) -> Option<(Replica, String, Duration)> {
        let rec = &self.rec;
        let host = self.host.index as u32;
        let started = Instant::now();
        let failed = |error: String| {
            rec.error(format!("register: {}", first_words(&error)));
            rec.registrations.lock().unwrap().push(Registration {
                host,
                sent_ms: rec.ms(started),
                latency_ms: started.elapsed().as_secs_f64() * 1000.0,
                error: Some(error),
                again,
            });
            None
        };
        let mut replica = match self.connect(0, CALL_TIMEOUT).await {
            Ok(r) => r,
            Err(e) => return failed(e),
        };
        let info = host_info(&self.host.name, &self.host.address, self.containers);
        let sent = Instant::now();
        let answer = match replica
            .client
            .register(RegisterRequest {
                info: Some(info),
                containers: Vec::new(),
            })
            .await
        {
            Ok(a) => a.into_inner(),
            Err(s) => return failed(migrate_cluster::tls::status_chain(&s)),
        };
        let answered = Instant::now();
        rec.renew(self.host.index, sent, answered, answer.lease_ms);
        rec.registrations.lock().unwrap().push(Registration {
            host,
            sent_ms: rec.ms(started),
            latency_ms: (answered - started).as_secs_f64() * 1000.0,
            error: None,
            again,
        });
        Some((
            replica,
            answer.session_id,
            period(answer.heartbeat_period_ms),
        ))
    }

    /// Beats until the coordinator refuses one (the session ended).
    async fn beat(&self, mut replica: Replica, session: &str, mut period: Duration) {
        let rec = &self.rec;
        let many = self.endpoints.len() > 1;
        loop {
            tokio::time::sleep(period).await;
            let request = HeartbeatRequest {
                name: self.host.name.clone(),
                session_id: session.to_string(),
                containers: self.containers,
                images: Vec::new(),
            };
            let mut answered = None;
            let beat_sent_ms = rec.now_ms();
            for attempt in 0..self.endpoints.len() {
                let sent = Instant::now();
                let patience = if many { period } else { CALL_TIMEOUT };
                let result =
                    tokio::time::timeout(patience, replica.client.heartbeat(request.clone())).await;
                let now = Instant::now();
                let mut beat = Beat {
                    host: self.host.index as u32,
                    sent_ms: rec.ms(sent),
                    latency_ms: (now - sent).as_secs_f64() * 1000.0,
                    beat_sent_ms,
                    passed_on: false,
                    period_ms: period.as_secs_f64() * 1000.0,
                    lease_ms: 0.0,
                    replica: replica.at as u8,
                    outcome: Outcome::Ok,
                };
                match result {
                    Ok(Ok(answer)) => {
                        let answer = answer.into_inner();
                        beat.lease_ms = answer.lease_ms as f64;
                        rec.beats.lock().unwrap().push(beat);
                        rec.renew(self.host.index, sent, now, answer.lease_ms);
                        answered = Some(answer);
                        break;
                    }
                    Ok(Err(s)) if matches!(s.code(), Code::FailedPrecondition | Code::NotFound) => {
                        beat.outcome = Outcome::Refused;
                        rec.beats.lock().unwrap().push(beat);
                        rec.error(format!("heartbeat refused: {}", first_words(s.message())));
                        return;
                    }
                    failed => {
                        beat.outcome = if failed.is_err() {
                            Outcome::Timeout
                        } else {
                            Outcome::Error
                        };
                        rec.error(match failed {
                            Ok(Err(s)) => format!(
                                "heartbeat: {}",
                                first_words(&migrate_cluster::tls::status_chain(&s))
                            ),
                            _ => format!("heartbeat: no answer within {patience:?}"),
                        });
                        // As heartbeat.rs: alone, wait for the next beat;
                        // with replicas, on to the next that connects (kept
                        // for the next beat, also after the last try).
                        let next = if many {
                            self.connect(replica.at + 1, period).await.ok()
                        } else {
                            None
                        };
                        beat.passed_on = next.is_some() && attempt + 1 < self.endpoints.len();
                        rec.beats.lock().unwrap().push(beat);
                        match next {
                            Some(next) => replica = next,
                            None => break,
                        }
                    }
                }
            }
            if let Some(answer) = answered {
                period = self::period(answer.heartbeat_period_ms);
            }
        }
    }
}

fn period(ms: u64) -> Duration {
    Duration::from_millis(ms).max(MIN_PERIOD)
}

/// An error message without what varies from host to host (names, ports,
/// sessions), so that alike failures count as one.
fn first_words(text: &str) -> String {
    let short: String = text.chars().take(200).collect();
    short
        .split_whitespace()
        .map(|w| {
            if w.len() > 3 && w.chars().any(|c| c.is_ascii_digit()) {
                "#"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
