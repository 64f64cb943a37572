//! The agent's side of membership: register with the coordinator, then beat
//! at the period it gives, for as long as the agent runs.
//!
//! A refused beat (the session ended: the coordinator lost the record, or
//! another process registered this host's name since) means register again.
//! A beat that gets no answer is only logged: the host's state is the
//! coordinator's to decide, and the next beat may get through (tonic's
//! channel reconnects by itself, also to a restarted coordinator, which
//! knows the session from its store).
//!
//! Each acknowledged registration or beat renews the agent's lease, from
//! when it was sent ([`super::fence`]); a registration first removes the
//! stale copies the coordinator names.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::Channel;

use super::context::Context;
use super::fence::{self, Lease};
use super::probe::Probe;
use crate::proto::coordinator_client::CoordinatorClient;
use crate::proto::{HeartbeatRequest, RegisterRequest};
use crate::tls::Tls;

/// How long one call to the coordinator may take. A registration includes
/// the coordinator's call back to this agent.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Retries of a failed registration back off from the first to the last.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// A period the coordinator could not mean (an older or broken one).
const MIN_PERIOD: Duration = Duration::from_millis(100);

/// Where the coordinator's replicas are and how to reach them.
pub struct Coordinator {
    pub endpoints: Vec<Endpoint>,
    pub tls: Tls,
}

/// One replica of the coordinator.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub url: String,
    /// The name its certificate must carry (the URL's host).
    pub server_name: String,
}

impl Coordinator {
    fn urls(&self) -> String {
        self.endpoints.iter().map(|e| e.url.as_str()).collect::<Vec<_>>().join(",")
    }

    /// A client of the first replica, from `first` on, that accepts a
    /// connection; which one it is.
    async fn connect(&self, first: usize, timeout: Duration) -> Result<(CoordinatorClient<Channel>, usize), String> {
        let mut errors = Vec::new();
        for k in 0..self.endpoints.len() {
            let i = (first + k) % self.endpoints.len();
            let e = &self.endpoints[i];
            match self.tls.connect(&e.url, &e.server_name, timeout).await {
                Ok(channel) => return Ok((CoordinatorClient::new(channel), i)),
                Err(err) => errors.push(format!("{}: {err}", e.url)),
            }
        }
        Err(errors.join("; "))
    }
}

/// Why registering failed.
enum RegisterError {
    /// Worth another try: the coordinator or containerd may be back soon.
    Retry(String),
    /// The coordinator refused this agent's certificate for its name: no
    /// retry can change that while the agent runs with it.
    Refused(String),
}

/// Runs while the agent runs; returns only when the coordinator refuses
/// the agent for good.
pub async fn run(
    probe: Arc<Probe>,
    ctx: Arc<Context>,
    coordinator: Coordinator,
    lease: watch::Sender<Lease>,
) -> String {
    let mut retry = RETRY_FIRST;
    loop {
        let (client, session, period) = match register(&probe, &ctx, &coordinator, &lease).await {
            Ok(registered) => registered,
            Err(RegisterError::Refused(e)) => {
                return format!("the coordinator at {} refuses this agent: {e}", coordinator.urls());
            }
            Err(RegisterError::Retry(e)) => {
                log::warn!(
                    "registering with the coordinator at {} failed: {e}; retrying in {retry:?}",
                    coordinator.urls()
                );
                // Waiting before a retry is the point here, not a guess at
                // when something else is done.
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
                continue;
            }
        };
        retry = RETRY_FIRST;
        let ended = beat(&coordinator, client, &probe, &session, period, &lease).await;
        log::warn!("{ended}; registering again");
    }
}

async fn register(
    probe: &Probe,
    ctx: &Context,
    coordinator: &Coordinator,
    lease: &watch::Sender<Lease>,
) -> Result<(Replica, String, Duration), RegisterError> {
    // Each host starts at a replica of its own (by its name), so that the
    // loss of one replica does not send every agent to the same next one.
    let first = probe.name().bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(usize::from(b)));
    let (client, at) = coordinator.connect(first, CALL_TIMEOUT).await.map_err(RegisterError::Retry)?;
    let mut client = client;
    let info = probe.info().await.map_err(|e| RegisterError::Retry(e.to_string()))?;
    let containers = fence::here(ctx).await.map_err(|e| RegisterError::Retry(format!("{e:#}")))?;
    let sent = Instant::now();
    let answer = client
        .register(RegisterRequest { info: Some(info), containers })
        .await
        .map_err(|s| match s.code() {
            Code::PermissionDenied | Code::Unauthenticated => RegisterError::Refused(s.message().to_string()),
            _ => RegisterError::Retry(crate::tls::status_chain(&s)),
        })?
        .into_inner();
    // Before the lease lets anything here go on, and before the first beat.
    fence::remove_stale(ctx, &answer.stale)
        .await
        .map_err(|e| RegisterError::Retry(format!("removing the stale copies {:?}: {e:#}", answer.stale)))?;
    renew(lease, sent, answer.lease_ms);
    log::info!("registered with the coordinator at {} as {}", coordinator.endpoints[at].url, probe.name());
    Ok((Replica { client, at }, answer.session_id, period(answer.heartbeat_period_ms)))
}

/// The replica beats go to, until it fails to answer one.
struct Replica {
    client: CoordinatorClient<Channel>,
    at: usize,
}

/// A lease of `ms` from `sent`; 0 is a coordinator that grants none.
fn renew(lease: &watch::Sender<Lease>, sent: Instant, ms: u64) {
    let until = (ms > 0).then(|| sent + Duration::from_millis(ms));
    lease.send_replace(until);
}

/// Beats until the coordinator ends the session; returns why it ended.
async fn beat(
    coordinator: &Coordinator,
    mut replica: Replica,
    probe: &Probe,
    session: &str,
    mut period: Duration,
    lease: &watch::Sender<Lease>,
) -> String {
    // Logged when it changes, not at every beat.
    let mut containerd_ok = true;
    let mut coordinator_ok = true;
    // Beats are due a period after the one before was sent, not after its
    // answer came: the lease counts from the sending, and a slow answer
    // must not stretch the time between renewals.
    let mut due = Instant::now() + period;
    loop {
        tokio::time::sleep_until(due).await;
        due = Instant::now() + period;
        let counted = async { Ok::<_, super::probe::ProbeError>((probe.containers().await?, probe.images().await?)) };
        let (containers, images) = match counted.await {
            Ok(n) => {
                if !containerd_ok {
                    log::info!("containerd answers again; heartbeats resume");
                }
                containerd_ok = true;
                n
            }
            Err(e) => {
                if containerd_ok {
                    log::warn!("no heartbeat while containerd does not answer (the host will turn down): {e}");
                }
                containerd_ok = false;
                continue;
            }
        };
        let request =
            HeartbeatRequest { name: probe.name().to_string(), session_id: session.to_string(), containers, images };
        // A replica that does not answer within a period is passed over
        // for the next at once: the session is in the shared store, so any
        // replica takes the beat, and the lease must not run out meanwhile.
        let mut answered = None;
        for _ in 0..coordinator.endpoints.len() {
            let sent = Instant::now();
            // Alone, the coordinator is waited for as long as any call.
            let patience = if coordinator.endpoints.len() > 1 { period } else { CALL_TIMEOUT };
            match tokio::time::timeout(patience, replica.client.heartbeat(request.clone())).await {
                Ok(Ok(answer)) => {
                    answered = Some((sent, answer.into_inner()));
                    break;
                }
                Ok(Err(s)) if matches!(s.code(), Code::FailedPrecondition | Code::NotFound) => {
                    return format!("the coordinator refused a heartbeat: {}", s.message());
                }
                failed => {
                    if coordinator_ok {
                        let why = match failed {
                            Ok(Err(s)) => crate::tls::status_chain(&s),
                            _ => format!("no answer within {patience:?}"),
                        };
                        log::warn!("a heartbeat got no answer from {}: {why}", coordinator.endpoints[replica.at].url);
                    }
                    if coordinator.endpoints.len() == 1 {
                        break;
                    }
                    match coordinator.connect(replica.at + 1, period).await {
                        Ok((client, at)) => replica = Replica { client, at },
                        Err(_) => break,
                    }
                }
            }
        }
        match answered {
            Some((sent, answer)) => {
                if !coordinator_ok {
                    log::info!(
                        "the coordinator answers heartbeats again, at {}",
                        coordinator.endpoints[replica.at].url
                    );
                }
                coordinator_ok = true;
                renew(lease, sent, answer.lease_ms);
                period = self::period(answer.heartbeat_period_ms);
                due = sent + period;
            }
            None => coordinator_ok = false,
        }
    }
}

fn period(ms: u64) -> Duration {
    Duration::from_millis(ms).max(MIN_PERIOD)
}
