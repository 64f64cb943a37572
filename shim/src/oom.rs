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

use crate::events::Events;

/// Starts watching the memory cgroup of `pid`, the container's init.
pub fn watch(pid: u32, container_id: &str, events: Events) -> Option<JoinHandle<()>> {
    let id = container_id.to_string();
    let watched = match memory_cgroup(pid) {
        Some(Cgroup::V1(dir)) => v1(dir, id, events),
        Some(Cgroup::V2(dir)) => v2(dir, id, events),
        None => return None,
    };
    watched.inspect_err(|e| warn!("cannot watch OOM events of {container_id}: {e}")).ok()
}

enum Cgroup {
    V1(PathBuf),
    V2(PathBuf),
}

fn memory_cgroup(pid: u32) -> Option<Cgroup> {
    let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut unified = None;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.split(',').any(|c| c == "memory") {
            let root = mount_point(&mounts, "cgroup", Some("memory"))?;
            return Some(Cgroup::V1(root.join(path.trim_start_matches('/'))));
        }
        if controllers.is_empty() {
            unified = Some(path.to_string());
        }
    }
    let root = mount_point(&mounts, "cgroup2", None)?;
    Some(Cgroup::V2(root.join(unified?.trim_start_matches('/'))))
}

/// The mount point of a cgroup file system from mountinfo, for v1 the one
/// whose super options name `controller`.
fn mount_point(mountinfo: &str, fstype: &str, controller: Option<&str>) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut right = right.split(' ');
        if right.next()? != fstype {
            return None;
        }
        let super_opts = right.nth(1).unwrap_or("");
        if let Some(c) = controller
            && !super_opts.split(',').any(|o| o == c)
        {
            return None;
        }
        left.split(' ').nth(4).map(PathBuf::from)
    })
}

fn v1(dir: PathBuf, id: String, events: Events) -> std::io::Result<JoinHandle<()>> {
    let control = fs::File::open(dir.join("memory.oom_control"))?;
    let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
    fs::write(
        dir.join("cgroup.event_control"),
        format!("{} {}", efd.as_fd().as_raw_fd(), control.as_raw_fd()),
    )?;
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

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
25 1 0:23 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
30 25 0:28 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
31 25 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct";

    #[test]
    fn finds_v1_and_v2_mount_points() {
        assert_eq!(mount_point(MOUNTINFO, "cgroup", Some("memory")), Some("/sys/fs/cgroup/memory".into()));
        assert_eq!(mount_point(MOUNTINFO, "cgroup", Some("cpu")), Some("/sys/fs/cgroup/cpu,cpuacct".into()));
        assert_eq!(mount_point(MOUNTINFO, "cgroup2", None), Some("/sys/fs/cgroup/unified".into()));
        assert_eq!(mount_point(MOUNTINFO, "cgroup", Some("pids")), None);
    }
}
