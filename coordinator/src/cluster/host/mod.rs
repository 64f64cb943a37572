//! What runs on a host and is driven from it: its containerd (over gRPC),
//! the `io.containerd.migrate.v1` shims (over ttrpc), and the images in
//! its content store. `migratectl`'s single-host commands and the agent
//! both drive a host through these.

pub mod containerd;
pub mod ids;
pub mod image;
pub mod pipe;
pub mod scratch;
pub mod shim;
pub mod versions;
