//! The containerd-migrate snapshotter: an overlay snapshotter that
//! containerd uses as a proxy plugin (`overlay`, `store`, `service`), and
//! the sync of a container's writable layer to another host (`sync`). See
//! snapshotter/README.md.

pub mod error;
pub mod log;
pub mod overlay;
pub mod proto;
pub mod service;
pub mod store;
pub mod sync;
