//! The containers' records (`containers/<id>`): what the user asked to run,
//! where it runs, its place on the cluster network, and the migration
//! moving it, if one is. The record is the cluster's truth of where a
//! container belongs: a migration changes `host` only once the target runs
//! it, in the same write that ends the migration, and so does the recovery
//! of a container whose host was lost.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::membership::UnixMs;
use crate::proto;
use crate::records::Record;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub image: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub annotations: BTreeMap<String, String>,
    pub placement: Placement,
    pub host: String,
    pub network: Network,
    pub phase: Phase,
    /// How it came back the last time its host was lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<Recovery>,
}

/// The annotation that says what the cluster does with a container whose
/// host is lost (seed 001's label R_i).
pub const RESTORE_POLICY_ANNOTATION: &str = "io.containerd.migrate.restore-policy";
/// The ticker's store annotation, which a `checkpoint` policy needs.
pub const STORE_ANNOTATION: &str = "io.containerd.migrate.checkpoint.store";
/// The ticker's version group size annotation.
pub const VERSION_GROUP_ANNOTATION: &str = "io.containerd.migrate.checkpoint.version-group";

/// What happens to a container when its host is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RestorePolicy {
    /// Nothing: it stays recorded on its host, shown as unknown.
    None,
    /// Started afresh on another host, its state lost (Swarm's rescheduling).
    Restart,
    /// Restored on another host from the newest version its ticker stored,
    /// falling back to older ones, then started afresh.
    Checkpoint,
}

impl RestorePolicy {
    pub const ALL: &'static str = "checkpoint, restart or none";

    /// The policy `annotations` ask for, checked against the rest of them:
    /// a `checkpoint` policy without a ticker's store could only ever
    /// restart cold, which is not what its user asked for.
    pub fn of(annotations: &BTreeMap<String, String>) -> Result<RestorePolicy, String> {
        let policy = match annotations.get(RESTORE_POLICY_ANNOTATION).map(String::as_str) {
            None | Some("none") => RestorePolicy::None,
            Some("restart") => RestorePolicy::Restart,
            Some("checkpoint") => RestorePolicy::Checkpoint,
            Some(other) => {
                return Err(format!(
                    "{RESTORE_POLICY_ANNOTATION}={other:?} is not a restore policy: use {}",
                    Self::ALL
                ));
            }
        };
        if policy == RestorePolicy::Checkpoint && !annotations.contains_key(STORE_ANNOTATION) {
            return Err(format!(
                "{RESTORE_POLICY_ANNOTATION}=checkpoint needs a checkpoint ticker whose store every host reaches: \
                 add {STORE_ANNOTATION}=oci://HOST:PORT/REPOSITORY (hack/cluster.sh store prints the local \
                 cluster's) and {}=INTERVAL",
                "io.containerd.migrate.checkpoint.interval"
            ));
        }
        Ok(policy)
    }

    pub fn name(self) -> &'static str {
        match self {
            RestorePolicy::None => "none",
            RestorePolicy::Restart => "restart",
            RestorePolicy::Checkpoint => "checkpoint",
        }
    }
}

/// How a container came back after its host was lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recovery {
    pub from_host: String,
    /// None: started cold.
    pub version: Option<u64>,
    pub version_created_unix_ms: u64,
    /// Newer versions tried, and why each was skipped.
    pub skipped: Vec<(u64, String)>,
    pub cold_reason: String,
    pub down_unix_ms: UnixMs,
    pub running_unix_ms: UnixMs,
    /// The lost host's last heartbeat.
    #[serde(default)]
    pub last_heartbeat_unix_ms: UnixMs,
}

impl Record for ContainerRecord {
    const PREFIX: &'static str = "containers/";
    const WHAT: &'static str = "container";
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub constraints: Vec<String>,
    pub affinities: Vec<String>,
    /// "spread", "binpack" or "random".
    pub strategy: String,
    pub ports: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub ip: String,
    pub prefix_len: u32,
    pub mac: String,
}

/// Where the container is in its life in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "kebab-case")]
pub enum Phase {
    /// Its host's agent is creating it: the id and the IP are taken.
    Creating,
    /// It runs (or ran) on `host`.
    Placed,
    /// Being moved to `to`; `host` is still the source.
    Migrating { migration: String, to: String },
    /// Its host (`host`, still) was lost and it is being brought back on
    /// `to`, whose agent may already run it: a coordinator that finds this
    /// after a restart asks `to` before it tries anywhere else.
    Recovering { to: String, down_since: UnixMs },
}

impl ContainerRecord {
    /// A new record for `spec` on `host`.
    pub fn new(spec: &proto::ContainerSpec, host: &str, network: &proto::NetworkIdentity) -> ContainerRecord {
        let placement = spec.placement.clone().unwrap_or_default();
        let strategy = strategy_name(placement.strategy()).to_string();
        ContainerRecord {
            id: spec.id.clone(),
            image: spec.image.clone(),
            args: spec.args.clone(),
            env: spec.env.clone(),
            annotations: spec.annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            placement: Placement {
                constraints: placement.constraints,
                affinities: placement.affinities,
                strategy,
                ports: placement.ports,
            },
            host: host.to_string(),
            network: Network { ip: network.ip.clone(), prefix_len: network.prefix_len, mac: network.mac.clone() },
            phase: Phase::Creating,
            recovery: None,
        }
    }

    /// Whether its copy on `host` is the cluster's: on its host unless
    /// being restored elsewhere, or where a migration or a recovery is
    /// bringing it. Any other copy on a host is stale.
    pub fn belongs_on(&self, host: &str) -> bool {
        match &self.phase {
            Phase::Creating | Phase::Placed => self.host == host,
            Phase::Migrating { to, .. } => self.host == host || to == host,
            Phase::Recovering { to, .. } => to == host,
        }
    }

    /// Its restore policy; a record made before policies were checked at
    /// run counts an unusable one as none.
    pub fn restore_policy(&self) -> RestorePolicy {
        RestorePolicy::of(&self.annotations).unwrap_or(RestorePolicy::None)
    }

    /// How many versions a recovery tries before it starts cold: one
    /// version group's worth (the ticker keeps at least that many).
    pub fn max_versions(&self) -> u32 {
        self.annotations
            .get(VERSION_GROUP_ANNOTATION)
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(migrate_version_store::DEFAULT_GROUP_SIZE as u32)
    }

    pub fn spec(&self) -> proto::ContainerSpec {
        proto::ContainerSpec {
            id: self.id.clone(),
            image: self.image.clone(),
            args: self.args.clone(),
            env: self.env.clone(),
            annotations: self.annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            placement: Some(proto::Placement {
                constraints: self.placement.constraints.clone(),
                affinities: self.placement.affinities.clone(),
                strategy: strategy_of(&self.placement.strategy).into(),
                ports: self.placement.ports.clone(),
            }),
        }
    }

    pub fn network(&self) -> proto::NetworkIdentity {
        proto::NetworkIdentity {
            ip: self.network.ip.clone(),
            prefix_len: self.network.prefix_len,
            mac: self.network.mac.clone(),
        }
    }

    /// The record as the API shows it, with the state its host reports.
    pub fn to_proto(&self, state: proto::ContainerState) -> proto::Container {
        proto::Container {
            spec: Some(self.spec()),
            host: self.host.clone(),
            network: Some(self.network()),
            state: state.into(),
            migrating_to: match &self.phase {
                Phase::Migrating { to, .. } => to.clone(),
                Phase::Creating | Phase::Placed | Phase::Recovering { .. } => String::new(),
            },
            recovering_to: match &self.phase {
                Phase::Recovering { to, .. } => to.clone(),
                Phase::Creating | Phase::Placed | Phase::Migrating { .. } => String::new(),
            },
            recovery: self.recovery.as_ref().map(|r| proto::Recovery {
                from_host: r.from_host.clone(),
                version: r.version,
                version_created_unix_ms: r.version_created_unix_ms,
                skipped: r
                    .skipped
                    .iter()
                    .map(|(version, reason)| proto::SkippedVersion { version: *version, reason: reason.clone() })
                    .collect(),
                cold_reason: r.cold_reason.clone(),
                down_unix_ms: r.down_unix_ms,
                running_unix_ms: r.running_unix_ms,
                last_heartbeat_unix_ms: r.last_heartbeat_unix_ms,
            }),
        }
    }
}

pub fn strategy_name(s: proto::Strategy) -> &'static str {
    match s {
        proto::Strategy::Unspecified | proto::Strategy::Spread => "spread",
        proto::Strategy::Binpack => "binpack",
        proto::Strategy::Random => "random",
    }
}

pub fn strategy_of(name: &str) -> proto::Strategy {
    match name {
        "binpack" => proto::Strategy::Binpack,
        "random" => proto::Strategy::Random,
        _ => proto::Strategy::Spread,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_gives_back_the_spec_it_was_made_from() {
        let spec = proto::ContainerSpec {
            id: "web-1".into(),
            image: "docker.io/library/busybox:latest".into(),
            args: vec!["sh".into()],
            env: vec!["A=1".into()],
            annotations: [("k".to_string(), "v".to_string())].into(),
            placement: Some(proto::Placement {
                constraints: vec!["disk==ssd".into()],
                affinities: vec![],
                strategy: proto::Strategy::Binpack.into(),
                ports: vec![8080],
            }),
        };
        let net = proto::NetworkIdentity { ip: "10.88.3.100".into(), prefix_len: 24, mac: "02:42:0a:58:03:64".into() };
        let record = ContainerRecord::new(&spec, "h1", &net);
        assert_eq!(record.spec(), spec);
        assert_eq!(record.network(), net);
        let json = serde_json::to_string(&record).unwrap();
        assert!(json.contains(r#""phase":"creating""#), "{json}");
        let moving = ContainerRecord { phase: Phase::Migrating { migration: "m1".into(), to: "h2".into() }, ..record };
        assert_eq!(moving.to_proto(proto::ContainerState::Running).migrating_to, "h2");
        // Records written before recoveries existed have none.
        let mut old = serde_json::to_value(&moving).unwrap();
        old.as_object_mut().unwrap().remove("recovery");
        assert_eq!(serde_json::from_value::<ContainerRecord>(old).unwrap(), moving);
    }

    #[test]
    fn restore_policies_are_checked_against_the_ticker() {
        let with = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        assert_eq!(RestorePolicy::of(&with(&[])), Ok(RestorePolicy::None));
        assert_eq!(RestorePolicy::of(&with(&[(RESTORE_POLICY_ANNOTATION, "restart")])), Ok(RestorePolicy::Restart));
        let err = RestorePolicy::of(&with(&[(RESTORE_POLICY_ANNOTATION, "always")])).unwrap_err();
        assert!(err.contains("checkpoint, restart or none"), "{err}");
        let err = RestorePolicy::of(&with(&[(RESTORE_POLICY_ANNOTATION, "checkpoint")])).unwrap_err();
        assert!(err.contains(STORE_ANNOTATION) && err.contains("hack/cluster.sh store"), "{err}");
        let ticked = with(&[(RESTORE_POLICY_ANNOTATION, "checkpoint"), (STORE_ANNOTATION, "oci://r:5000/c")]);
        assert_eq!(RestorePolicy::of(&ticked), Ok(RestorePolicy::Checkpoint));
    }
}
