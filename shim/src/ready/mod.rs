//! Ready-point checkpoints (seed 003, issue 13): the shim probes the
//! container as a Kubernetes readiness probe would, or hears from the app
//! itself, and the moment it is ready checkpoints it, leaving it running.
//!
//! A `tcp:` probe asks the kernel whether the app listens (sock_diag, in
//! the container's network namespace: see `tcp_diag`); no event exists
//! for "a socket started listening", so it asks at a short period. An
//! `http:` probe GETs a path (`http_probe`), for servers that bind their
//! port before they are ready, and can warm the path up before the dump.
//! An `exec:` probe runs a command in the container (`exec_probe`).
//! `watch` runs any of them until it succeeds, the container stops, or it
//! gives up. `notify` needs no probe: the app sends READY=1 (`notify`).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use containerd_shim::protos::events::task::TaskCheckpointed;
use log::{debug, info, warn};
use migrate_oci::{ReadyInfo, WarmUpInfo};

mod exec_probe;
mod http_probe;
mod notify;
mod tcp_diag;
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
use notify::NotifySocket;
use watch::{Fired, Outcome};

/// A tcp attempt is one small netlink dump, asked of the kernel: short
/// enough that the checkpoint is taken right when the app listens, long
/// enough that the watch costs nothing measurable.
const TCP_PERIOD: Duration = Duration::from_millis(5);
/// An HTTP attempt is a connection and a request the app itself must
/// serve while it is still starting: ten times the tcp period keeps that
/// to 20 requests a second, at the price of at most 50 ms between the app
/// becoming ready and its ready point.
const HTTP_PERIOD: Duration = Duration::from_millis(50);
/// A `runc exec` of a small command took 22 ms here, 16 ms of it CPU
/// (runc's start, joining the namespaces, the command; 20 of `redis-cli
/// ping`): every 250 ms that is 6% of a core taken from the start the probe
/// waits for. The ready point comes at most 250 ms after the app is ready,
/// which delays the checkpoint, never a start from it.
const EXEC_PERIOD: Duration = Duration::from_millis(250);
/// Kubernetes' default timeout of one attempt.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// An app not ready after five minutes is stuck, not slow.
const DEFAULT_GIVE_UP: Duration = Duration::from_secs(300);

/// A ready plan with what its container's creation prepared for it.
#[derive(Debug)]
pub struct Armed {
    plan: ReadyPlan,
    /// The socket a `notify` app sends READY=1 to.
    notify: Option<NotifySocket>,
}

/// Prepares `plan` for the container being created in `bundle`: for
/// `notify`, binds the socket in `rootfs` (the container's root as the
/// shim sees it) and names it in the spec's environment, before runc reads
/// the spec. A container restored from a checkpoint takes no ready point,
/// so nothing is prepared for it.
pub async fn arm(plan: ReadyPlan, bundle: &Path, rootfs: &Path, restoring: bool) -> Result<Armed> {
    let notify =
        match plan.probe {
            ReadyProbe::Notify if !restoring => {
                let (bundle, rootfs) = (bundle.to_owned(), rootfs.to_owned());
                let bound = tokio::task::spawn_blocking(move || -> std::io::Result<NotifySocket> {
                    let socket = NotifySocket::bind(&rootfs)?;
                    notify::name_in_spec(&bundle)?;
                    Ok(socket)
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                Some(bound.map_err(Error::io(
                    "bind the notify socket in the container's root and name it in NOTIFY_SOCKET",
                ))?)
            }
            _ => None,
        };
    Ok(Armed { plan, notify })
}

/// Waits until the container is ready as the plan says, then checkpoints
/// it into the store as `<container id>-ready`, replacing an older one.
/// Ends quietly if the container stops first, and with a warning if the
/// probe gives up.
pub async fn checkpoint_when_ready(container: Arc<Container>, armed: Armed, events: Events) {
    let start = Instant::now();
    let Armed { plan, notify } = armed;
    let pid = match container.init.state() {
        InitState::Running { pid } | InitState::Paused { pid } => pid,
        InitState::Created { .. } | InitState::CreatedFromCheckpoint { .. } | InitState::Stopped { .. } => return,
    };
    let probe = plan.probe.to_string();
    let outcome = match notify {
        Some(socket) => {
            let give_up = plan.settings.give_up;
            // The socket's file goes with it, before the dump.
            tokio::task::spawn_blocking(move || socket.wait(pid, start, give_up))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        }
        None => {
            let exec = match &plan.probe {
                ReadyProbe::Exec { argv } => Some(exec_probe::ExecProbe {
                    runc: container.runc().clone(),
                    id: container.id.clone(),
                    argv: argv.clone(),
                    pid_file: container.bundle.join("ready-probe.pid"),
                }),
                _ => None,
            };
            watch::wait(pid, start, plan.probe.clone(), plan.settings.clone(), exec).await
        }
    };
    let fired = match outcome {
        Ok(Outcome::Ready(fired)) => fired,
        Ok(Outcome::Stopped) => return,
        Ok(Outcome::GaveUp { last_failure }) => {
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
    };
    if fired.left_open {
        warn!(
            "{}: the app still holds a connection of probe {probe} {:?} after the probe closed its end; \
             the ready point records it as closed",
            container.id, plan.settings.timeout
        );
    }
    let id = format!("{}-ready", container.id);
    let record = record(&probe, fired);
    match checkpoint_for_new_containers(&container, &plan.store, &id, record).await {
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

/// What the manifest says of the condition that fired.
fn record(condition: &str, fired: Fired) -> ReadyInfo {
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    ReadyInfo {
        condition: condition.to_owned(),
        after_ms: ms(fired.after),
        attempts: fired.attempts,
        last_failure: fired.last_failure,
        warm_up: fired.warm_up.map(|(requests, took)| WarmUpInfo { requests, ms: ms(took) }),
    }
}

/// A leave-running checkpoint for new containers to start from, taken the
/// moment the app is ready, before it has served anyone, and restored as
/// containers with network identities of their own. Nothing connected to
/// the source could carry on with a restored copy, so:
/// - the network lock protects nothing here. Skipping it shortens the
///   freeze and every restore, which take the dump's method: unlocking the
///   restored network costs about 20 ms here, on the path of each start.
/// - a connection the app still holds is dumped without its state and
///   restored closed (CRIU's tcp-close, recorded for the restores). The
///   watch waits for the app to close the probe's connections, but cannot
///   see them all: Java's NIO, Tomcat's default connector, keeps a socket
///   whose peer is gone (TCP_CLOSE, which sock_diag does not list) until
///   its selector's next round, up to a second later; without tcp-close
///   every clone of such a ready point failed with "Connected TCP socket in
///   image".
async fn checkpoint_for_new_containers(
    container: &Container,
    store: &Path,
    id: &str,
    ready: ReadyInfo,
) -> Result<PathBuf> {
    let (mut request, mut target) = capture::own(container, store, id, Increment::Full);
    request.network_lock = runc::network_lock_skip().await.then_some(NetworkLock::Skip);
    request.criu.tcp_close = true;
    target.ready = Some(ready);
    let checkpoint = capture::into_store(container, &request, &target).await?;
    let dir = checkpoint.dir().to_path_buf();
    // Its clones will be restored from it on this host, many times over:
    // its memory images need no hashing before them, this shim hashed
    // them as it wrote them; and they are read back into the page cache.
    let _ = tokio::task::spawn_blocking(move || {
        hashed::written(&checkpoint);
        read_ahead(&checkpoint);
    })
    .await;
    Ok(dir)
}

/// Reads the memory images of `checkpoint` into the page cache. They were
/// written around it (the store writes big images with O_DIRECT, see
/// `migrate_oci::direct_copy`), so the first clone's restore read them from
/// disk: with Tomcat's 110 MiB that start took 310-400 ms against 165-200
/// ms for the next ones. A ready point is there to be restored soon, so
/// its pages are worth the cache they take, which the kernel reclaims as it
/// needs. Read, not advised: POSIX_FADV_WILLNEED brought in 8 of the 110 MiB.
fn read_ahead(checkpoint: &migrate_oci::Checkpoint) {
    let memory = checkpoint.manifest().files.iter().filter(|f| migrate_oci::layout::is_memory_image(&f.path));
    for file in memory {
        let path = checkpoint.dir().join(&file.path);
        let read = std::fs::File::open(&path).and_then(|mut f| std::io::copy(&mut f, &mut std::io::sink()));
        if let Err(e) = read {
            debug!("cannot read {} ahead: {e}", path.display());
        }
    }
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
    /// Requests of an http: probe's path once it succeeded, before the dump.
    pub warm_up: u64,
}

/// The probe settings' annotations, all of which need a probe.
const SETTINGS: [&str; 6] = [
    annotations::READY_PERIOD,
    annotations::READY_INITIAL_DELAY,
    annotations::READY_TIMEOUT,
    annotations::READY_SUCCESS_THRESHOLD,
    annotations::READY_GIVE_UP,
    annotations::READY_WARM_UP,
];

/// The settings of attempts, which the app's own signal makes none of.
const ATTEMPT_SETTINGS: [&str; 5] = [
    annotations::READY_PERIOD,
    annotations::READY_INITIAL_DELAY,
    annotations::READY_TIMEOUT,
    annotations::READY_SUCCESS_THRESHOLD,
    annotations::READY_WARM_UP,
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
    /// Settings the probe has no use for are refused, not ignored.
    pub fn from_annotations(annotations: &HashMap<String, String>, probe: &ReadyProbe) -> Result<ProbeSettings> {
        let unused = |names: &[&'static str], why: &str| match names.iter().find(|n| annotations.contains_key(**n)) {
            None => Ok(()),
            Some(name) => Err(Error::InvalidArgument(format!(
                "{name} is set but the probe {probe} {why}: remove {name}{}",
                if *name == annotations::READY_WARM_UP { " or use an http: probe" } else { "" }
            ))),
        };
        match probe {
            ReadyProbe::Notify => unused(&ATTEMPT_SETTINGS, "makes no attempts, the app says when it is ready")?,
            ReadyProbe::Tcp { .. } | ReadyProbe::Exec { .. } => {
                unused(&[annotations::READY_WARM_UP], "has no request to warm up with")?
            }
            ReadyProbe::Http { .. } => {}
        }
        let duration = |name, zero_allowed, default| {
            annotations.get(name).map_or(Ok(default), |v| annotations::probe_duration(name, v, zero_allowed))
        };
        let default_period = match probe {
            ReadyProbe::Tcp { .. } | ReadyProbe::Notify => TCP_PERIOD,
            ReadyProbe::Http { .. } => HTTP_PERIOD,
            ReadyProbe::Exec { .. } => EXEC_PERIOD,
        };
        Ok(ProbeSettings {
            period: duration(annotations::READY_PERIOD, false, default_period)?,
            initial_delay: duration(annotations::READY_INITIAL_DELAY, true, Duration::ZERO)?,
            timeout: duration(annotations::READY_TIMEOUT, false, DEFAULT_TIMEOUT)?,
            success_threshold: annotations
                .get(annotations::READY_SUCCESS_THRESHOLD)
                .map_or(Ok(1), |v| annotations::count(annotations::READY_SUCCESS_THRESHOLD, v))?,
            give_up: duration(annotations::READY_GIVE_UP, false, DEFAULT_GIVE_UP)?,
            warm_up: annotations
                .get(annotations::READY_WARM_UP)
                .map_or(Ok(0), |v| annotations::count_or_zero(annotations::READY_WARM_UP, v))?,
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
                warm_up: 0,
            }
        );
        let http = ReadyProbe::Http { port: 80, path: "/".into() };
        assert_eq!(ProbeSettings::from_annotations(&HashMap::new(), &http).unwrap().period, HTTP_PERIOD);
        let exec = ReadyProbe::Exec { argv: vec!["true".into()] };
        assert_eq!(ProbeSettings::from_annotations(&HashMap::new(), &exec).unwrap().period, EXEC_PERIOD);
    }

    #[test]
    fn settings_the_probe_has_no_use_for_are_refused() {
        let warm = annotations(&[(annotations::READY_WARM_UP, "10")]);
        let http = ReadyProbe::Http { port: 80, path: "/".into() };
        assert_eq!(ProbeSettings::from_annotations(&warm, &http).unwrap().warm_up, 10);
        let err = ProbeSettings::from_annotations(&warm, &ReadyProbe::Tcp { port: 80 }).unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid argument: io.containerd.migrate.checkpoint-when-ready.warm-up is set but the probe tcp:80 has \
             no request to warm up with: remove io.containerd.migrate.checkpoint-when-ready.warm-up or use an http: probe"
        );
        let period = annotations(&[(annotations::READY_PERIOD, "1s")]);
        let err = ProbeSettings::from_annotations(&period, &ReadyProbe::Notify).unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid argument: io.containerd.migrate.checkpoint-when-ready.period is set but the probe notify makes no \
             attempts, the app says when it is ready: remove io.containerd.migrate.checkpoint-when-ready.period"
        );
        let give_up = annotations(&[(annotations::READY_GIVE_UP, "1m")]);
        assert_eq!(
            ProbeSettings::from_annotations(&give_up, &ReadyProbe::Notify).unwrap().give_up,
            Duration::from_secs(60)
        );
        let bad = annotations(&[(annotations::READY_WARM_UP, "-1")]);
        let err = ProbeSettings::from_annotations(&bad, &http).unwrap_err().to_string();
        assert!(err.contains(r#"warm-up="-1" is not valid: expected a whole number"#), "{err}");
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
                warm_up: 0,
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
