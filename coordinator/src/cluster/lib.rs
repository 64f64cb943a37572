//! The cluster's control plane: a coordinator that keeps the cluster's
//! state, and an agent on every host, talking gRPC (`proto/cluster/v1`)
//! over mutual TLS. `migratectl` is a client of the coordinator; the
//! daemons are `migrate-coordinator` and `migrate-agent` (`src/bin/`).
//!
//! What is built so far: hosts and their membership by heartbeats.
//!
//! - the daemons: [`coordinator`], [`agent`], and what both do around their
//!   work ([`daemon`]: log, signals, listening);
//! - the rules: [`membership`] (ready and down, pure), [`hosts`] (their
//!   records in the [`store`], changed with retries on conflict),
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
