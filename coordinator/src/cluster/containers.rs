//! The containers' records (`containers/<id>`): what the user asked to run,
//! where it runs, its place on the cluster network, and the migration
//! moving it, if one is. The record is the cluster's truth of where a
//! container belongs: a migration changes `host` only once the target runs
//! it, in the same write that ends the migration.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
        }
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
                Phase::Creating | Phase::Placed => String::new(),
            },
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
    }
}
