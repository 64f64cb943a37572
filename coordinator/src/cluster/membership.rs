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
//!
//! Fencing. A host declared down may be alive behind a partition, and its
//! containers are about to be restored elsewhere. Each acknowledged beat
//! therefore grants the agent a lease, shorter than the grace, counted from
//! when the agent sent the beat: an agent whose lease runs out stops its
//! containers that have a restore policy, before the coordinator, counting
//! the grace from when it received the beat, may declare the host down.
//! Both count durations on their own clocks, so no clock agreement between
//! hosts is needed. A host declared down has lost its session: its next
//! beat is refused, and it registers again, removing its stale copies.

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
    /// Why it was declared down (the evidence), while it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_reason: Option<String>,
}

/// How often agents beat and how many periods a host may miss.
#[derive(Debug, Clone, Copy)]
pub struct HeartbeatPolicy {
    pub period: Duration,
    /// Each period is shortened by up to this fraction, at random.
    pub jitter: f64,
    /// How long a host may be without a beat before it is down: several
    /// periods, so that one late or lost beat is not a loss.
    pub timeout: Duration,
}

impl Default for HeartbeatPolicy {
    /// 1 s beats and down after 3 s without one, as swarmkit's defaults
    /// scaled down: a dead host should be noticed within seconds (a
    /// migration waits on it), and three beats lost in a row on a LAN is not
    /// a hiccup.
    fn default() -> Self {
        HeartbeatPolicy { period: Duration::from_secs(1), jitter: 0.1, timeout: Duration::from_secs(3) }
    }
}

impl HeartbeatPolicy {
    /// A policy of `period` and `timeout`, refused unless the timeout
    /// spans at least two periods (one lost beat must not lose the host)
    /// and the period is at least 100 ms.
    pub fn new(period: Duration, timeout: Duration) -> Result<HeartbeatPolicy, String> {
        if period < Duration::from_millis(100) {
            return Err(format!("a heartbeat period of {period:?} is too short: at least 100 ms"));
        }
        if timeout < period * 2 {
            return Err(format!(
                "a heartbeat timeout of {timeout:?} is less than two periods of {period:?}: one lost beat would \
                 declare a host down"
            ));
        }
        Ok(HeartbeatPolicy { period, timeout, ..HeartbeatPolicy::default() })
    }

    pub fn grace(&self) -> Duration {
        self.timeout
    }

    /// The lease an acknowledged beat grants its agent: half a period
    /// short of the grace, so that the agent has stopped its containers
    /// before the host can be declared down, whatever the network's delay
    /// (the lease counts from the beat's sending, the grace from its
    /// arrival).
    pub fn lease(&self) -> Duration {
        self.grace().saturating_sub(self.period / 2)
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

/// A beat of a host that was declared down since its session began.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "host {host} was declared down at {since} (Unix ms): {reason}; its containers may run elsewhere now, so its \
     session has ended: the agent must remove its stale copies and register again"
)]
pub struct DeclaredDown {
    pub host: String,
    pub since: UnixMs,
    pub reason: String,
}

/// Why a beat was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(transparent)]
    Stale(#[from] StaleSession),
    #[error(transparent)]
    Down(#[from] DeclaredDown),
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
    HostRecord {
        facts,
        containers,
        images,
        session,
        last_heartbeat: now,
        liveness: Liveness::Ready { since },
        down_reason: None,
    }
}

/// A beat of `session` keeps the host ready. A host declared down does not
/// come back by a beat (a partition that healed): its containers may have
/// been restored elsewhere, so its agent must register again, and learn
/// which of its containers are still its own.
pub fn heartbeat(
    record: &HostRecord,
    session: &str,
    containers: u32,
    images: Vec<String>,
    now: UnixMs,
) -> Result<HostRecord, Refused> {
    if record.session != session {
        return Err(StaleSession {
            host: record.facts.name.clone(),
            given: session.to_string(),
            current: record.session.clone(),
        }
        .into());
    }
    match record.liveness {
        Liveness::Ready { .. } => {
            Ok(HostRecord { containers, images, last_heartbeat: now.max(record.last_heartbeat), ..record.clone() })
        }
        Liveness::Down { since } => Err(DeclaredDown {
            host: record.facts.name.clone(),
            since,
            reason: record.down_reason.clone().unwrap_or_default(),
        }
        .into()),
    }
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
            (now >= last_seen.saturating_add(grace)).then(|| {
                let reason = if record.last_heartbeat >= watching_since {
                    format!(
                        "no heartbeat for {} ms (the last at {}, the grace is {grace} ms)",
                        now.saturating_sub(record.last_heartbeat),
                        record.last_heartbeat
                    )
                } else {
                    format!(
                        "no heartbeat in the {} ms since this coordinator began watching (the last at {}, the \
                         grace is {grace} ms)",
                        now.saturating_sub(watching_since),
                        record.last_heartbeat
                    )
                };
                HostRecord { liveness: Liveness::Down { since: now }, down_reason: Some(reason), ..record.clone() }
            })
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

    const POLICY: HeartbeatPolicy =
        HeartbeatPolicy { period: Duration::from_secs(1), jitter: 0.1, timeout: Duration::from_secs(3) };
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
    fn beats_keep_a_host_ready_but_do_not_bring_it_back() {
        let h = register(None, facts("h1"), 0, vec![], "s1".into(), START);
        let h = heartbeat(&h, "s1", 4, vec![], START + 1_000).unwrap();
        assert_eq!((h.containers, h.last_heartbeat), (4, START + 1_000));
        assert_eq!(h.liveness, Liveness::Ready { since: START }, "a beat reset the time it became ready");
        assert_eq!(expire(&h, &POLICY, START, START + 3_999), None);

        let down = expire(&h, &POLICY, START, START + 4_000).unwrap();
        assert_eq!(
            down.down_reason.as_deref(),
            Some("no heartbeat for 3000 ms (the last at 1001000, the grace is 3000 ms)")
        );
        // A partition heals: the host's containers may run elsewhere now.
        let Err(Refused::Down(refused)) = heartbeat(&down, "s1", 4, vec![], START + 4_500) else {
            panic!("a beat brought a host declared down back");
        };
        assert!(refused.to_string().contains("register again"), "{refused}");
        let back = register(Some(&down), facts("h1"), 4, vec![], "s2".into(), START + 4_600);
        assert_eq!((back.liveness, back.down_reason), (Liveness::Ready { since: START + 4_600 }, None));
    }

    #[test]
    fn a_policy_needs_two_periods_of_timeout() {
        let p = HeartbeatPolicy::new(Duration::from_millis(500), Duration::from_secs(2)).unwrap();
        assert_eq!((p.grace(), p.lease()), (Duration::from_secs(2), Duration::from_millis(1_750)));
        let err = HeartbeatPolicy::new(Duration::from_secs(1), Duration::from_millis(1_500)).unwrap_err();
        assert!(err.contains("less than two periods"), "{err}");
        assert!(HeartbeatPolicy::new(Duration::from_millis(10), Duration::from_secs(1)).is_err());
    }

    #[test]
    fn the_lease_ends_before_the_grace() {
        assert_eq!(POLICY.lease(), Duration::from_millis(2_500));
        let slow = HeartbeatPolicy { period: Duration::from_secs(2), jitter: 0.0, timeout: Duration::from_secs(10) };
        assert_eq!(slow.lease(), Duration::from_secs(9));
    }

    #[test]
    fn only_the_latest_session_beats() {
        let old = register(None, facts("h1"), 0, vec![], "s1".into(), START);
        let new = register(Some(&old), facts("h1"), 0, vec![], "s2".into(), START + 500);
        assert_eq!(new.liveness, Liveness::Ready { since: START }, "re-registering a ready host changed its since");
        let Err(Refused::Stale(err)) = heartbeat(&new, "s1", 0, vec![], START + 600) else {
            panic!("an old session's beat was taken");
        };
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
