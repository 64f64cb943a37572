//! The probe loop: attempts at the plan's period, from a thread of its own
//! inside the container's network namespace (setns changes only the
//! calling thread, and the shim's runtime never waits on a probe), until
//! enough consecutive attempts succeed, the container stops, or the probe
//! gives up.

use std::{fs::File, time::Instant};

use nix::sched::{CloneFlags, setns};

use super::{ProbeSettings, http_probe, listen_probe::ListenProbe};
use crate::annotations::ReadyProbe;

/// How a watch ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `success_threshold` attempts in a row succeeded.
    Ready,
    /// The container's init is gone.
    Stopped,
    /// No success within `give_up`; the last attempt's failure.
    GaveUp { last_failure: String },
}

/// Probes the container whose init is `pid` as `probe` and `settings` say.
/// An error is a probe that could not be set up at all.
pub async fn wait(pid: u32, probe: ReadyProbe, settings: ProbeSettings) -> std::io::Result<Outcome> {
    let ns = File::open(format!("/proc/{pid}/ns/net"))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("ready-probe".into()).spawn(move || {
        let _ = tx.send(run(ns, pid, &probe, &settings));
    })?;
    rx.await.unwrap_or_else(|_| Err(std::io::Error::other("the probe thread panicked")))
}

fn run(ns: File, pid: u32, probe: &ReadyProbe, settings: &ProbeSettings) -> std::io::Result<Outcome> {
    let start = Instant::now();
    setns(&ns, CloneFlags::CLONE_NEWNET)?;
    // Opened in the container's namespace, so after the setns.
    let check = match probe {
        ReadyProbe::Tcp { port } => Check::Listen(ListenProbe::new(*port)?),
        ReadyProbe::Http { port, path } => Check::Http { port: *port, path },
    };
    let attempt = || -> std::io::Result<Result<(), String>> {
        Ok(match &check {
            Check::Listen(probe) => {
                if probe.listening()? {
                    Ok(())
                } else {
                    Err(format!("nothing listens on port {}", probe.port))
                }
            }
            Check::Http { port, path } => http_probe::get(*port, path, settings.timeout),
        })
    };
    attempts(pid, start, settings, attempt)
}

/// A probe ready to attempt, inside the container's namespace.
enum Check<'a> {
    Listen(ListenProbe),
    Http { port: u16, path: &'a str },
}

/// The loop itself, apart from what an attempt is, so that it can be tested
/// without a container.
fn attempts(
    pid: u32,
    start: Instant,
    settings: &ProbeSettings,
    mut attempt: impl FnMut() -> std::io::Result<Result<(), String>>,
) -> std::io::Result<Outcome> {
    std::thread::sleep(settings.initial_delay.saturating_sub(start.elapsed()));
    let mut successes = 0;
    let mut last_failure = String::from("no attempt was made");
    loop {
        // The init being gone ends the container, and the watch with it.
        if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_err() {
            return Ok(Outcome::Stopped);
        }
        match attempt()? {
            Ok(()) => {
                successes += 1;
                if successes >= settings.success_threshold {
                    return Ok(Outcome::Ready);
                }
            }
            Err(failure) => {
                successes = 0;
                last_failure = failure;
            }
        }
        if start.elapsed() + settings.period > settings.give_up {
            return Ok(Outcome::GaveUp { last_failure });
        }
        std::thread::sleep(settings.period);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn settings(success_threshold: u64, give_up: Duration) -> ProbeSettings {
        ProbeSettings {
            period: Duration::from_millis(1),
            initial_delay: Duration::ZERO,
            timeout: Duration::from_secs(1),
            success_threshold,
            give_up,
        }
    }

    #[test]
    fn ready_after_consecutive_successes() {
        // fail, ok, fail, ok, ok: a threshold of 2 is met at the fifth attempt.
        let mut answers = [false, true, false, true, true].into_iter();
        let mut made = 0;
        let outcome = attempts(std::process::id(), Instant::now(), &settings(2, Duration::from_secs(10)), || {
            made += 1;
            Ok(if answers.next().unwrap() { Ok(()) } else { Err("not yet".into()) })
        });
        assert_eq!(outcome.unwrap(), Outcome::Ready);
        assert_eq!(made, 5);
    }

    #[test]
    fn gives_up_with_the_last_failure() {
        let mut n = 0;
        let outcome = attempts(std::process::id(), Instant::now(), &settings(1, Duration::from_millis(30)), || {
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
        let start = Instant::now();
        let outcome = attempts(std::process::id(), start, &s, || Ok(Ok(())));
        assert_eq!(outcome.unwrap(), Outcome::Ready);
        assert!(start.elapsed() >= Duration::from_millis(50));
    }
}
