//! containerd-shim-migrate-v1: the runtime `io.containerd.migrate.v1`.

mod annotations;
mod capture;
mod cgroups;
mod checkpoint;
mod console;
mod container;
mod error;
mod events;
mod exits;
mod fence;
mod hashed;
mod image_origin;
mod lazy_pages;
mod netns;
mod oom;
mod process;
mod ready;
mod restore_gate;
mod restore_source;
mod rootfs;
mod runc;
mod same_image;
mod service;
mod stats;
mod stdio;
mod task;
#[cfg(test)]
mod testing;
mod ticker;

/// The name containerd knows this runtime by; the binary's name follows from it.
pub const RUNTIME_ID: &str = "io.containerd.migrate.v1";

// One thread: a shim runs per container, and its work is waiting on runc,
// pipes and sockets, so a multi-threaded runtime would only cost memory.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    if std::env::args().skip(1).any(|a| matches!(a.as_str(), "-v" | "-version" | "--version")) {
        println!("containerd-shim-migrate-v1:\n  Runtime: {RUNTIME_ID}\n  Version: {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    containerd_shim::asynchronous::run::<service::Service>(RUNTIME_ID, None).await;
}
