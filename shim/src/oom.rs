//! Telling containerd when the kernel's OOM killer acts in a container.
//!
//! cgroup v1 signals through an eventfd registered on `memory.oom_control`;
//! cgroup v2 counts `oom_kill` in `memory.events`, watched with inotify.
//! Either watcher ends when the cgroup goes away with the container.

use std::{
    fs,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
};

use containerd_shim::protos::events::task::TaskOOM;
use log::{debug, warn};
use nix::sys::{
    eventfd::{EfdFlags, EventFd},
    inotify::{AddWatchFlags, InitFlags, Inotify},
};
use tokio::{io::unix::AsyncFd, task::JoinHandle};

use crate::{cgroups::Cgroups, events::Events};

/// Starts watching the memory cgroup of `pid`, the container's init.
pub fn watch(pid: u32, container_id: &str, events: Events) -> Option<JoinHandle<()>> {
    let id = container_id.to_string();
    let watched = match Cgroups::of(pid)? {
        Cgroups::V1(dirs) => v1(dirs.get("memory")?.clone(), id, events),
        Cgroups::V2(dir) => v2(dir, id, events),
    };
    watched.inspect_err(|e| warn!("cannot watch OOM events of {container_id}: {e}")).ok()
}

fn v1(dir: PathBuf, id: String, events: Events) -> std::io::Result<JoinHandle<()>> {
    let control = fs::File::open(dir.join("memory.oom_control"))?;
    let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
    fs::write(dir.join("cgroup.event_control"), format!("{} {}", efd.as_fd().as_raw_fd(), control.as_raw_fd()))?;
    let efd = reactor(efd)?;
    Ok(tokio::spawn(async move {
        let _control = control;
        loop {
            let Ok(mut ready) = efd.readable().await else { return };
            match ready.get_inner().0.read() {
                Ok(_) => {}
                Err(nix::errno::Errno::EAGAIN) => {
                    ready.clear_ready();
                    continue;
                }
                Err(e) => {
                    warn!("OOM eventfd of {id}: {e}");
                    return;
                }
            }
            // The eventfd also fires when the cgroup is removed.
            if !dir.exists() {
                debug!("memory cgroup of {id} is gone, OOM watch ends");
                return;
            }
            events.publish(TaskOOM { container_id: id.clone(), ..Default::default() }).await;
        }
    }))
}

fn v2(dir: PathBuf, id: String, events: Events) -> std::io::Result<JoinHandle<()>> {
    let file = dir.join("memory.events");
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)?;
    inotify.add_watch(&file, AddWatchFlags::IN_MODIFY)?;
    let mut seen = oom_kills(&file).unwrap_or(0);
    let inotify = reactor(inotify)?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok(mut ready) = inotify.readable().await else { return };
            match ready.get_inner().0.read_events() {
                Ok(_) => {}
                Err(nix::errno::Errno::EAGAIN) => {
                    ready.clear_ready();
                    continue;
                }
                Err(e) => {
                    warn!("OOM watch of {id}: {e}");
                    return;
                }
            }
            let Some(count) = oom_kills(&file) else {
                debug!("memory cgroup of {id} is gone, OOM watch ends");
                return;
            };
            if count > seen {
                seen = count;
                events.publish(TaskOOM { container_id: id.clone(), ..Default::default() }).await;
            }
        }
    }))
}

/// A descriptor the reactor can wait on, for nix types that only offer `AsFd`.
struct Watched<T>(T);

impl<T: AsFd> AsRawFd for Watched<T> {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

fn reactor<T: AsFd>(inner: T) -> std::io::Result<AsyncFd<Watched<T>>> {
    // SAFETY: the AsyncFd owns `inner`, so the descriptor stays open and
    // unchanged for as long as it is registered.
    unsafe { AsyncFd::register(Watched(inner)) }.map_err(std::io::Error::from)
}

fn oom_kills(file: &Path) -> Option<u64> {
    let text = fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok())
}
