//! The probe loop: attempts at the plan's period, from a thread of its own,
//! until enough consecutive attempts succeed, the container stops, or the
//! probe gives up. tcp: and http: attempts are made inside the container's
//! network namespace (setns changes only the calling thread, and the
//! shim's runtime never waits on a probe); an exec: attempt is a `runc
//! exec`, which joins the container's namespaces itself.

use std::{
    fs::File,
    time::{Duration, Instant},
};

use nix::sched::{CloneFlags, setns};

use super::{ProbeSettings, exec_probe::ExecProbe, http_probe, tcp_diag::TcpDiag};
use crate::annotations::ReadyProbe;

/// How a watch ended.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// The condition fired (and the warm-up, if any, went through).
    Ready(Fired),
    /// The container's init is gone.
    Stopped,
    /// No success within `give_up`; the last attempt's failure.
    GaveUp { last_failure: String },
}

/// What the manifest of the ready point records of its probe.
#[derive(Debug, Clone, PartialEq)]
pub struct Fired {
    /// From the container's start to the last success that made it ready.
    pub after: Duration,
    pub attempts: u64,
    pub last_failure: Option<String>,
    /// Requests made once ready, and how long they took.
    pub warm_up: Option<(u64, Duration)>,
    /// Whether the app still held a connection of the probe's when the
    /// watch stopped waiting for it.
    pub left_open: bool,
}

/// How often, and for how long at most, the app is given to close the
/// probe's connections before the dump goes ahead anyway.
const CLOSE_POLL: Duration = Duration::from_millis(1);

/// Probes the container whose init is `pid`, started at `start`, as
/// `probe` and `settings` say; `exec` runs the commands of an exec: probe.
/// An error is a probe that could not be set up at all.
pub async fn wait(
    pid: u32,
    start: Instant,
    probe: ReadyProbe,
    settings: ProbeSettings,
    exec: Option<ExecProbe>,
) -> std::io::Result<Outcome> {
    let ns = File::open(format!("/proc/{pid}/ns/net"))?;
    let runtime = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("ready-probe".into()).spawn(move || {
        let outcome = match (&probe, exec) {
            (ReadyProbe::Exec { .. }, Some(exec)) => {
                Probe { pid, start, settings: &settings }.run(|| Ok(runtime.block_on(exec.attempt(settings.timeout))))
            }
            _ => in_namespace(ns, pid, start, &probe, &settings),
        };
        let _ = tx.send(outcome);
    })?;
    rx.await.unwrap_or_else(|_| Err(std::io::Error::other("the probe thread panicked")))
}

fn in_namespace(
    ns: File,
    pid: u32,
    start: Instant,
    probe: &ReadyProbe,
    settings: &ProbeSettings,
) -> std::io::Result<Outcome> {
    setns(&ns, CloneFlags::CLONE_NEWNET)?;
    // Opened in the container's namespace, so after the setns.
    let diag = TcpDiag::new()?;
    let watch = Probe { pid, start, settings };
    match probe {
        ReadyProbe::Tcp { port } => watch
            .run(|| Ok(if diag.listening(*port)? { Ok(()) } else { Err(format!("nothing listens on port {port}")) })),
        ReadyProbe::Http { port, path } => {
            let mut outcome = watch
                .run_then(|| Ok(http_probe::get(*port, path, settings.timeout)), || warm_up(*port, path, settings))?;
            if let Outcome::Ready(fired) = &mut outcome {
                fired.left_open = !closed_in_time(&diag, *port, settings.timeout)?;
            }
            Ok(outcome)
        }
        ReadyProbe::Exec { .. } | ReadyProbe::Notify => {
            Err(std::io::Error::other(format!("the probe {probe} is not one made from the network namespace")))
        }
    }
}

/// `settings.warm_up` more GETs of the probe's path, one after the other;
/// the first failure is the app not being ready after all.
fn warm_up(port: u16, path: &str, settings: &ProbeSettings) -> Result<Option<(u64, Duration)>, String> {
    if settings.warm_up == 0 {
        return Ok(None);
    }
    let started = Instant::now();
    for n in 1..=settings.warm_up {
        http_probe::get(port, path, settings.timeout)
            .map_err(|e| format!("warm-up request {n} of {}: {e}", settings.warm_up))?;
    }
    Ok(Some((settings.warm_up, started.elapsed())))
}

/// Waits for the app to close the probe's connections, which its clones
/// would otherwise inherit: they were closed on the probe's side, the app
/// closes its side once it has answered. Whether it did within `timeout`.
fn closed_in_time(diag: &TcpDiag, port: u16, timeout: Duration) -> std::io::Result<bool> {
    let deadline = Instant::now() + timeout;
    while diag.connection_held(port)? {
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(CLOSE_POLL);
    }
    Ok(true)
}

/// Whether the process `pid` (the container's init) still exists.
pub fn init_alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

/// The loop itself, apart from what an attempt is, so that it can be tested
/// without a container.
struct Probe<'a> {
    pid: u32,
    start: Instant,
    settings: &'a ProbeSettings,
}

impl Probe<'_> {
    fn run(&self, attempt: impl FnMut() -> std::io::Result<Result<(), String>>) -> std::io::Result<Outcome> {
        self.run_then(attempt, || Ok(None))
    }

    /// Attempts until `success_threshold` in a row succeed, then `confirm`
    /// (the warm-up); a confirmation that fails counts as a failed attempt
    /// and the attempts go on.
    fn run_then(
        &self,
        mut attempt: impl FnMut() -> std::io::Result<Result<(), String>>,
        mut confirm: impl FnMut() -> Result<Option<(u64, Duration)>, String>,
    ) -> std::io::Result<Outcome> {
        let settings = self.settings;
        std::thread::sleep(settings.initial_delay.saturating_sub(self.start.elapsed()));
        let mut successes = 0;
        let mut attempts = 0;
        let mut last_failure = None;
        loop {
            // The init being gone ends the container, and the watch with it.
            if !init_alive(self.pid) {
                return Ok(Outcome::Stopped);
            }
            attempts += 1;
            match attempt()? {
                Ok(()) => {
                    successes += 1;
                    if successes >= settings.success_threshold {
                        let after = self.start.elapsed();
                        match confirm() {
                            Ok(warm_up) => {
                                let fired = Fired { after, attempts, last_failure, warm_up, left_open: false };
                                return Ok(Outcome::Ready(fired));
                            }
                            Err(failure) => {
                                successes = 0;
                                last_failure = Some(failure);
                            }
                        }
                    }
                }
                Err(failure) => {
                    successes = 0;
                    last_failure = Some(failure);
                }
            }
            if self.start.elapsed() + settings.period > settings.give_up {
                let last_failure = last_failure.unwrap_or_else(|| "no attempt failed".into());
                return Ok(Outcome::GaveUp { last_failure });
            }
            std::thread::sleep(settings.period);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(success_threshold: u64, give_up: Duration) -> ProbeSettings {
        ProbeSettings {
            period: Duration::from_millis(1),
            initial_delay: Duration::ZERO,
            timeout: Duration::from_secs(1),
            success_threshold,
            give_up,
            warm_up: 0,
        }
    }

    fn probe(settings: &ProbeSettings) -> Probe<'_> {
        Probe { pid: std::process::id(), start: Instant::now(), settings }
    }

    #[test]
    fn ready_after_consecutive_successes() {
        // fail, ok, fail, ok, ok: a threshold of 2 is met at the fifth attempt.
        let mut answers = [false, true, false, true, true].into_iter();
        let s = settings(2, Duration::from_secs(10));
        let outcome = probe(&s).run(|| Ok(if answers.next().unwrap() { Ok(()) } else { Err("not yet".into()) }));
        match outcome.unwrap() {
            Outcome::Ready(fired) => {
                assert_eq!(fired.attempts, 5);
                assert_eq!(fired.last_failure.as_deref(), Some("not yet"));
                assert_eq!(fired.warm_up, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn gives_up_with_the_last_failure() {
        let mut n = 0;
        let s = settings(1, Duration::from_millis(30));
        let outcome = probe(&s).run(|| {
            n += 1;
            Ok(Err(format!("failure {n}")))
        });
        match outcome.unwrap() {
            Outcome::GaveUp { last_failure } => assert_eq!(last_failure, format!("failure {n}")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_initial_delay_comes_first() {
        let s = ProbeSettings { initial_delay: Duration::from_millis(50), ..settings(1, Duration::from_secs(10)) };
        let watch = probe(&s);
        let outcome = watch.run(|| Ok(Ok(())));
        assert!(matches!(outcome.unwrap(), Outcome::Ready(Fired { attempts: 1, .. })));
        assert!(watch.start.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn a_failed_warm_up_sends_the_probe_back_to_its_attempts() {
        let s = settings(1, Duration::from_secs(10));
        let mut warm_ups =
            [Err("warm-up request 2 of 3: GET / answered 503".to_string()), Ok(Some((3, Duration::ZERO)))].into_iter();
        let outcome = probe(&s).run_then(|| Ok(Ok(())), || warm_ups.next().unwrap());
        match outcome.unwrap() {
            Outcome::Ready(fired) => {
                assert_eq!(fired.attempts, 2);
                assert_eq!(fired.last_failure.as_deref(), Some("warm-up request 2 of 3: GET / answered 503"));
                assert_eq!(fired.warm_up, Some((3, Duration::ZERO)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn warm_up_requests_the_probe_path() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let mut paths = Vec::new();
            for _ in 0..3 {
                let (mut conn, _) = listener.accept().unwrap();
                let mut buf = [0u8; 1024];
                let n = conn.read(&mut buf).unwrap();
                paths.push(String::from_utf8_lossy(&buf[..n]).split(' ').nth(1).unwrap().to_owned());
                conn.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n").unwrap();
            }
            paths
        });
        let s = ProbeSettings { warm_up: 3, ..settings(1, Duration::from_secs(10)) };
        let (n, _) = warm_up(port, "/hello", &s).unwrap().unwrap();
        assert_eq!(n, 3);
        assert_eq!(server.join().unwrap(), ["/hello", "/hello", "/hello"]);
        assert_eq!(warm_up(port, "/", &settings(1, Duration::from_secs(1))), Ok(None));
    }
}
