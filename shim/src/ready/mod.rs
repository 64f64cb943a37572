//! Ready-point checkpoints (seed 003, issue 13): the shim probes the
//! container as a Kubernetes readiness probe would and, the moment it is
//! ready, checkpoints it, leaving it running. Nothing is asked of the
//! application.
//!
//! A `tcp:` probe asks the kernel whether the app listens (sock_diag, in
//! the container's network namespace: see `listen_probe`); no event exists
//! for "a socket started listening", so it asks at a short period. An
//! `http:` probe GETs a path (`http_probe`), for servers that bind their
//! port before they are ready. `watch` runs either until it succeeds, the
//! container stops, or it gives up.

use std::{collections::HashMap, sync::Arc, time::Duration};

use containerd_shim::protos::events::task::TaskCheckpointed;
use log::{info, warn};

mod http_probe;
mod listen_probe;
mod watch;

use crate::{
    annotations::{self, ReadyProbe},
    capture::{self, Increment},
    container::Container,
    error::{Error, Result},
    events::Events,
    hashed,
    process::InitState,
    runc::{self, NetworkLock},
};

/// A tcp attempt is one small netlink dump, asked of the kernel: short
/// enough that the checkpoint is taken right when the app listens, long
/// enough that the watch costs nothing measurable.
const TCP_PERIOD: Duration = Duration::from_millis(5);
/// An HTTP attempt is a connection and a request the app itself must
/// serve while it is still starting: ten times the tcp period keeps that
/// to 20 requests a second, at the price of at most 50 ms between the app
/// becoming ready and its ready point.
const HTTP_PERIOD: Duration = Duration::from_millis(50);
/// Kubernetes' default timeout of one attempt.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// An app not ready after five minutes is stuck, not slow.
const DEFAULT_GIVE_UP: Duration = Duration::from_secs(300);

/// Waits until the container is ready as the plan's probe says, then
/// checkpoints it into the store as `<container id>-ready`, replacing an
/// older one. Ends quietly if the container stops first, and with a
/// warning if the probe gives up.
pub async fn checkpoint_when_ready(container: Arc<Container>, plan: ReadyPlan, events: Events) {
    let pid = match container.init.state() {
        InitState::Running { pid } | InitState::Paused { pid } => pid,
        InitState::Created { .. } | InitState::CreatedFromCheckpoint { .. } | InitState::Stopped { .. } => return,
    };
    let probe = plan.probe.to_string();
    match watch::wait(pid, plan.probe.clone(), plan.settings.clone()).await {
        Ok(watch::Outcome::Ready) => {}
        Ok(watch::Outcome::Stopped) => return,
        Ok(watch::Outcome::GaveUp { last_failure }) => {
            warn!(
                "{}: probe {probe} did not succeed within {:?}, no ready-point checkpoint, the container runs on; \
                 last failure: {last_failure}",
                container.id, plan.settings.give_up
            );
            return;
        }
        Err(e) => {
            warn!("{}: cannot run probe {probe}, no ready-point checkpoint: {e}", container.id);
            return;
        }
    }
    let id = format!("{}-ready", container.id);
    match checkpoint_for_new_containers(&container, &plan.store, &id).await {
        Ok(dir) => {
            info!("{}: probe {probe} succeeded; ready-point checkpoint {}", container.id, dir.display());
            events
                .publish(TaskCheckpointed {
                    container_id: container.id.clone(),
                    checkpoint: dir.display().to_string(),
                    ..Default::default()
                })
                .await;
        }
        Err(e) => warn!("{}: ready-point checkpoint failed, the container runs on: {e}", container.id),
    }
}

/// A leave-running checkpoint for new containers to start from, taken the
/// moment the app listens, before it has served anyone, and restored as
/// containers with network identities of their own. Nothing connected to
/// the source could carry on with a restored copy (and CRIU refuses to
/// dump established connections unless told to keep them), so the network
/// lock protects nothing here. Skipping it shortens the freeze and every
/// restore, which take the dump's method: unlocking the restored network
/// costs about 20 ms here, on the path of each start.
async fn checkpoint_for_new_containers(
    container: &Container,
    store: &std::path::Path,
    id: &str,
) -> Result<std::path::PathBuf> {
    let (mut request, target) = capture::own(container, store, id, Increment::Full);
    request.network_lock = runc::network_lock_skip().await.then_some(NetworkLock::Skip);
    let checkpoint = capture::into_store(container, &request, &target).await?;
    let dir = checkpoint.dir().to_path_buf();
    // Its clones will be restored from it on this host, many times over:
    // its memory images need no hashing before them, this shim hashed
    // them as it wrote them.
    let _ = tokio::task::spawn_blocking(move || hashed::written(&checkpoint)).await;
    Ok(dir)
}

/// A ready-point checkpoint to take: when `probe` succeeds as `settings`
/// say, into the store at `store`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyPlan {
    pub probe: ReadyProbe,
    pub settings: ProbeSettings,
    pub store: std::path::PathBuf,
}

/// When and how often the probe is tried, as in a Kubernetes probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSettings {
    pub period: Duration,
    pub initial_delay: Duration,
    /// Of one attempt; a tcp probe asks the kernel and never waits.
    pub timeout: Duration,
    pub success_threshold: u64,
    /// From the container's start; no ready point after it.
    pub give_up: Duration,
}

/// The probe settings' annotations, all of which need a probe.
const SETTINGS: [&str; 5] = [
    annotations::READY_PERIOD,
    annotations::READY_INITIAL_DELAY,
    annotations::READY_TIMEOUT,
    annotations::READY_SUCCESS_THRESHOLD,
    annotations::READY_GIVE_UP,
];

impl ProbeSettings {
    /// Refuses probe settings without a probe: they would silently do
    /// nothing, and whoever set them expects a ready point.
    pub fn refuse_without_probe(annotations: &HashMap<String, String>) -> Result<()> {
        match SETTINGS.into_iter().find(|name| annotations.contains_key(*name)) {
            None => Ok(()),
            Some(name) => Err(Error::InvalidArgument(format!(
                "{name} is set but {} is not: set the probe (e.g. http:8080/healthz) to take a ready point, \
                 or remove {name}",
                annotations::CHECKPOINT_WHEN_READY
            ))),
        }
    }

    /// The `…checkpoint-when-ready.*` settings, with defaults for `probe`.
    pub fn from_annotations(
        annotations: &HashMap<String, String>,
        probe: &ReadyProbe,
    ) -> annotations::Result<ProbeSettings> {
        let duration = |name, zero_allowed, default| {
            annotations.get(name).map_or(Ok(default), |v| annotations::probe_duration(name, v, zero_allowed))
        };
        let default_period = match probe {
            ReadyProbe::Tcp { .. } => TCP_PERIOD,
            ReadyProbe::Http { .. } => HTTP_PERIOD,
        };
        Ok(ProbeSettings {
            period: duration(annotations::READY_PERIOD, false, default_period)?,
            initial_delay: duration(annotations::READY_INITIAL_DELAY, true, Duration::ZERO)?,
            timeout: duration(annotations::READY_TIMEOUT, false, DEFAULT_TIMEOUT)?,
            success_threshold: annotations
                .get(annotations::READY_SUCCESS_THRESHOLD)
                .map_or(Ok(1), |v| annotations::count(annotations::READY_SUCCESS_THRESHOLD, v))?,
            give_up: duration(annotations::READY_GIVE_UP, false, DEFAULT_GIVE_UP)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_depend_on_the_probe() {
        let tcp = ProbeSettings::from_annotations(&HashMap::new(), &ReadyProbe::Tcp { port: 80 }).unwrap();
        assert_eq!(
            tcp,
            ProbeSettings {
                period: TCP_PERIOD,
                initial_delay: Duration::ZERO,
                timeout: Duration::from_secs(1),
                success_threshold: 1,
                give_up: Duration::from_secs(300),
            }
        );
        let http = ReadyProbe::Http { port: 80, path: "/".into() };
        assert_eq!(ProbeSettings::from_annotations(&HashMap::new(), &http).unwrap().period, HTTP_PERIOD);
    }

    #[test]
    fn settings_need_a_probe() {
        assert!(ProbeSettings::refuse_without_probe(&HashMap::new()).is_ok());
        let err = ProbeSettings::refuse_without_probe(&annotations(&[(annotations::READY_GIVE_UP, "1m")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "io.containerd.migrate.checkpoint-when-ready.give-up is set but \
                 io.containerd.migrate.checkpoint-when-ready is not"
            ),
            "{err}"
        );
    }

    #[test]
    fn settings_from_annotations() {
        let a = annotations(&[
            (annotations::READY_PERIOD, "100ms"),
            (annotations::READY_INITIAL_DELAY, "2s"),
            (annotations::READY_TIMEOUT, "250ms"),
            (annotations::READY_SUCCESS_THRESHOLD, "3"),
            (annotations::READY_GIVE_UP, "1m"),
        ]);
        let s = ProbeSettings::from_annotations(&a, &ReadyProbe::Tcp { port: 80 }).unwrap();
        assert_eq!(
            s,
            ProbeSettings {
                period: Duration::from_millis(100),
                initial_delay: Duration::from_secs(2),
                timeout: Duration::from_millis(250),
                success_threshold: 3,
                give_up: Duration::from_secs(60),
            }
        );
        let bad = annotations(&[(annotations::READY_SUCCESS_THRESHOLD, "0")]);
        let err = ProbeSettings::from_annotations(&bad, &ReadyProbe::Tcp { port: 80 }).unwrap_err().to_string();
        assert_eq!(
            err,
            r#"io.containerd.migrate.checkpoint-when-ready.success-threshold="0" is not valid: expected a whole number of at least 1"#
        );
        let bad = annotations(&[(annotations::READY_GIVE_UP, "5min")]);
        let err = ProbeSettings::from_annotations(&bad, &ReadyProbe::Tcp { port: 80 }).unwrap_err().to_string();
        assert!(err.starts_with(r#"io.containerd.migrate.checkpoint-when-ready.give-up="5min" is not valid"#), "{err}");
    }
}
