//! Membership by heartbeats: when a host is ready and when it is down.
//!
//! The rules are pure functions of a host's record and the time, so tests
//! drive them with a clock of their own. The idea is swarmkit's dispatcher:
//! the coordinator tells each agent its heartbeat period with some jitter
//! (so agents started together do not beat in step), and a host is down
//! only after a grace of several periods without a beat, never after one
//! late beat. A registration opens a session; only beats of the host's
//! latest session count, so an agent's old process cannot keep a host
//! ready after a new one registered.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch. Records are kept across coordinator
/// restarts, so times in them are wall-clock times.
pub type UnixMs = u64;

/// The wall clock as [`UnixMs`]. Only the daemons read it; the rules below
/// take the time as an argument.
pub fn now() -> UnixMs {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What the agent says about its host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    pub name: String,
    pub address: String,
    pub labels: BTreeMap<String, String>,
    pub containerd_version: String,
    pub criu_version: String,
    pub kernel_version: String,
}

/// Whether a host can be used, and since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Liveness {
    Ready { since: UnixMs },
    Down { since: UnixMs },
}

/// A host as the cluster's store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub facts: HostFacts,
    pub containers: u32,
    /// The image names of the cluster's namespace, as of the last beat
    /// (none in records written before hosts reported them).
    #[serde(default)]
    pub images: Vec<String>,
    /// The session of the agent's latest registration.
    pub session: String,
    pub last_heartbeat: UnixMs,
    pub liveness: Liveness,
}

/// How often agents beat and how many periods a host may miss.
#[derive(Debug, Clone, Copy)]
pub struct HeartbeatPolicy {
    pub period: Duration,
    /// Each period is shortened by up to this fraction, at random.
    pub jitter: f64,
    /// Periods without a beat before a host is down.
    pub grace_periods: u32,
}

impl Default for HeartbeatPolicy {
    /// 1 s beats and down after 3 s without one, as swarmkit's defaults
    /// scaled down: a dead host should be noticed within seconds (a
    /// migration waits on it), and three beats lost in a row on a LAN is not
    /// a hiccup.
    fn default() -> Self {
        HeartbeatPolicy { period: Duration::from_secs(1), jitter: 0.1, grace_periods: 3 }
    }
}

impl HeartbeatPolicy {
    pub fn grace(&self) -> Duration {
        self.period * self.grace_periods
    }

    /// The period to give an agent, `random` being uniform in [0, 1).
    /// Jitter only shortens it, so a beat on time is never late for the grace.
    pub fn jittered_period(&self, random: f64) -> Duration {
        self.period.mul_f64(1.0 - self.jitter * random.clamp(0.0, 1.0))
    }
}

/// A beat the host's record cannot accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "session {given} of host {host} has ended (the host registered again since, as session {current}); \
     the agent must register again"
)]
pub struct StaleSession {
    pub host: String,
    pub given: String,
    pub current: String,
}

/// A (re-)registration: the host is ready from now on, in a new session.
/// Its previous record, if any, only keeps the time it became ready when it
/// was ready already.
pub fn register(
    previous: Option<&HostRecord>,
    facts: HostFacts,
    containers: u32,
    images: Vec<String>,
    session: String,
    now: UnixMs,
) -> HostRecord {
    let since = match previous.map(|p| p.liveness) {
        Some(Liveness::Ready { since }) => since,
        Some(Liveness::Down { .. }) | None => now,
    };
    HostRecord { facts, containers, images, session, last_heartbeat: now, liveness: Liveness::Ready { since } }
}

/// A beat of `session`: the host is ready (again, if it was down: a
/// partition that healed needs no new registration).
pub fn heartbeat(
    record: &HostRecord,
    session: &str,
    containers: u32,
    images: Vec<String>,
    now: UnixMs,
) -> Result<HostRecord, StaleSession> {
    if record.session != session {
        return Err(StaleSession {
            host: record.facts.name.clone(),
            given: session.to_string(),
            current: record.session.clone(),
        });
    }
    let liveness = match record.liveness {
        Liveness::Ready { since } => Liveness::Ready { since },
        Liveness::Down { .. } => Liveness::Ready { since: now },
    };
    Ok(HostRecord { containers, images, last_heartbeat: now.max(record.last_heartbeat), liveness, ..record.clone() })
}

/// The record with the host down, if its grace has run out at `now`.
///
/// `watching_since` is when this coordinator started: beats missed while no
/// coordinator listened are not the host's fault, so after a restart every
/// host gets a full grace before it counts as down. Hosts keep their last
/// known state meanwhile, rather than all turning down at once and back
/// (which, once containers are rescheduled on a host's loss, would move
/// every container for a coordinator restart).
pub fn expire(
    record: &HostRecord,
    policy: &HeartbeatPolicy,
    watching_since: UnixMs,
    now: UnixMs,
) -> Option<HostRecord> {
    match record.liveness {
        Liveness::Down { .. } => None,
        Liveness::Ready { .. } => {
            let grace = u64::try_from(policy.grace().as_millis()).unwrap_or(u64::MAX);
            let last_seen = record.last_heartbeat.max(watching_since);
            (now >= last_seen.saturating_add(grace))
                .then(|| HostRecord { liveness: Liveness::Down { since: now }, ..record.clone() })
        }
    }
}

/// A host that cannot be forgotten: it is ready, so its agent would
/// register it again at its next beat anyway.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("host {host} is ready; stop its agent first, and remove it once it is down")]
pub struct StillReady {
    pub host: String,
}

/// Whether the cluster may forget this host: only once it is down.
pub fn may_forget(record: &HostRecord) -> Result<(), StillReady> {
    match record.liveness {
        Liveness::Down { .. } => Ok(()),
        Liveness::Ready { .. } => Err(StillReady { host: record.facts.name.clone() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(name: &str) -> HostFacts {
        HostFacts {
            name: name.into(),
            address: "127.0.0.1:7001".into(),
            labels: BTreeMap::new(),
            containerd_version: "2.1.9".into(),
            criu_version: "4.2.1".into(),
            kernel_version: "6.18".into(),
        }
    }

    const POLICY: HeartbeatPolicy = HeartbeatPolicy { period: Duration::from_secs(1), jitter: 0.1, grace_periods: 3 };
    const START: UnixMs = 1_000_000;

    #[test]
    fn a_host_is_down_only_after_the_whole_grace() {
        let h = register(None, facts("h1"), 0, vec![], "s1".into(), START);
        assert_eq!(h.liveness, Liveness::Ready { since: START });
        assert_eq!(expire(&h, &POLICY, START, START + 2_999), None);
        let down = expire(&h, &POLICY, START, START + 3_000).expect("not down after 3 s without a beat");
        assert_eq!(down.liveness, Liveness::Down { since: START + 3_000 });
        assert_eq!(expire(&down, &POLICY, START, START + 10_000), None, "a down host went down again");
    }

    #[test]
    fn beats_keep_a_host_ready_and_bring_it_back() {
        let h = register(None, facts("h1"), 0, vec![], "s1".into(), START);
        let h = heartbeat(&h, "s1", 4, vec![], START + 1_000).unwrap();
        assert_eq!((h.containers, h.last_heartbeat), (4, START + 1_000));
        assert_eq!(h.liveness, Liveness::Ready { since: START }, "a beat reset the time it became ready");
        assert_eq!(expire(&h, &POLICY, START, START + 3_999), None);

        let down = expire(&h, &POLICY, START, START + 4_000).unwrap();
        let back = heartbeat(&down, "s1", 4, vec![], START + 4_500).unwrap();
        assert_eq!(back.liveness, Liveness::Ready { since: START + 4_500 });
    }

    #[test]
    fn only_the_latest_session_beats() {
        let old = register(None, facts("h1"), 0, vec![], "s1".into(), START);
        let new = register(Some(&old), facts("h1"), 0, vec![], "s2".into(), START + 500);
        assert_eq!(new.liveness, Liveness::Ready { since: START }, "re-registering a ready host changed its since");
        let err = heartbeat(&new, "s1", 0, vec![], START + 600).unwrap_err();
        assert_eq!(err.current, "s2");
        assert!(err.to_string().contains("register again"), "{err}");

        let down = expire(&new, &POLICY, START, START + 3_500).unwrap();
        let again = register(Some(&down), facts("h1"), 0, vec![], "s3".into(), START + 9_000);
        assert_eq!(again.liveness, Liveness::Ready { since: START + 9_000 });
    }

    #[test]
    fn a_restarted_coordinator_gives_every_host_a_full_grace() {
        let h = register(None, facts("h1"), 0, vec![], "s1".into(), START);
        // The coordinator was away for a minute and starts again.
        let restart = START + 60_000;
        assert_eq!(expire(&h, &POLICY, restart, restart + 2_999), None);
        assert!(expire(&h, &POLICY, restart, restart + 3_000).is_some());
    }

    #[test]
    fn only_a_down_host_is_forgotten() {
        let h = register(None, facts("h1"), 0, vec![], "s1".into(), START);
        assert!(may_forget(&h).unwrap_err().to_string().contains("stop its agent first"));
        assert_eq!(may_forget(&expire(&h, &POLICY, START, START + 3_000).unwrap()), Ok(()));
    }

    #[test]
    fn jitter_only_shortens_the_period() {
        assert_eq!(POLICY.jittered_period(0.0), Duration::from_secs(1));
        assert_eq!(POLICY.jittered_period(0.5), Duration::from_millis(950));
        assert!(POLICY.jittered_period(0.999_999) > Duration::from_millis(900));
        assert_eq!(POLICY.grace(), Duration::from_secs(3));
    }

    #[test]
    fn beats_carry_the_images_and_old_records_have_none() {
        let h = register(None, facts("h1"), 0, vec!["a:1".into()], "s1".into(), START);
        assert_eq!(h.images, ["a:1"]);
        let h = heartbeat(&h, "s1", 0, vec!["a:1".into(), "b:2".into()], START + 1_000).unwrap();
        assert_eq!(h.images, ["a:1", "b:2"]);

        let mut old = serde_json::to_value(&h).unwrap();
        old.as_object_mut().unwrap().remove("images");
        assert_eq!(serde_json::from_value::<HostRecord>(old).unwrap().images, Vec::<String>::new());
    }

    #[test]
    fn records_round_trip_through_json() {
        let h = register(None, facts("h1"), 2, vec![], "s1".into(), START);
        let json = serde_json::to_string(&h).unwrap();
        assert!(json.contains(r#""liveness":{"state":"ready","since":1000000}"#), "{json}");
        assert_eq!(serde_json::from_str::<HostRecord>(&json).unwrap(), h);
    }
}
