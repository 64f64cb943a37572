//! The cluster's control plane: a coordinator that keeps the cluster's
//! state, and an agent on every host, talking gRPC (`proto/cluster/v1`)
//! over mutual TLS. `migratectl` is a client of the coordinator; the
//! daemons are `migrate-coordinator` and `migrate-agent` (`src/bin/`).
//!
//! What is built so far: hosts and their membership by heartbeats.

pub mod certs;
pub mod daemon;
pub mod hosts;
pub mod membership;
pub mod peer;
pub mod proto;
pub mod random;
pub mod store;
pub mod tls;

pub mod coordinator;

pub mod agent;
