//! The cluster's control plane: a coordinator that keeps the cluster's
//! state, and an agent on every host, talking gRPC (`proto/cluster/v1`)
//! over mutual TLS. `migratectl` is a client of the coordinator; the
//! daemons are `migrate-coordinator` and `migrate-agent` (`src/bin/`).
//!
//! Hosts and their membership by heartbeats, containers run through the
//! cluster, and their migration between hosts (stop-and-copy).
//!
//! - the daemons: [`coordinator`] (its API, the expiry sweep, the
//!   migration's orchestration), [`agent`] (this host's containers, their
//!   network, images and migration steps), and what both do around their
//!   work ([`daemon`]: log, signals, listening); [`host`] is how a host is
//!   driven (containerd, the shim), also by `migratectl`;
//! - the state: [`records`] (every record in the [`store`], changed with
//!   retries on conflict) of [`hosts`] and [`containers`];
//! - the rules: [`membership`] (ready and down, pure),
//!   [`scheduler`] (which host runs a container, pure), [`ipam`] (the
//!   containers' addresses on the cluster network, in the store);
//! - the wire: [`proto`] (generated), [`tls`] (mutual TLS), [`certs`] (the
//!   CA and its certificates), [`peer`] (whom a caller's certificate names),
//!   [`random`] (session ids, jitter).

pub mod agent;
pub mod certs;
pub mod containers;
pub mod coordinator;
pub mod daemon;
pub mod host;
pub mod hosts;
pub mod ipam;
pub mod membership;
pub mod peer;
pub mod proto;
pub mod random;
pub mod records;
pub mod scheduler;
pub mod store;
pub mod tls;
