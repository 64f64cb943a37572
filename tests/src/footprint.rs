//! Everything a task leaves on the host while it exists, so a scenario can
//! check that a delete removed all of it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::ctr::{Ctr, NAMESPACE};
use crate::host;
use crate::poll;
use crate::shim;

/// Where runc.v2 keeps runc's state (`runc --root /run/containerd/runc/NS`);
/// the shim under test is expected to use the same place.
pub const RUNC_ROOT: &str = "/run/containerd/runc";

/// cgroup v1 controllers whose directory for the container is checked.
const CGROUP_CONTROLLERS: [&str; 4] = ["memory", "pids", "freezer", "cpu"];

/// The bundle directory containerd creates for task `id` on the instance
/// whose socket is `address` (hack/containerd.sh puts the state directory
/// beside the socket).
pub fn bundle_dir(address: &str, id: &str) -> PathBuf {
    Path::new(address)
        .parent()
        .expect("socket path has a parent")
        .join("state/io.containerd.runtime.v2.task")
        .join(NAMESPACE)
        .join(id)
}

/// runc's state directory for container `id`.
pub fn runc_state_dir(id: &str) -> PathBuf {
    Path::new(RUNC_ROOT).join(NAMESPACE).join(id)
}

/// What a running task has on the host.
#[derive(Debug)]
pub struct Footprint {
    pub id: String,
    pub bundle: PathBuf,
    pub shim_pids: Vec<u32>,
    pub shim_socket: PathBuf,
    pub task_pids: Vec<u32>,
    pub cgroup_dirs: Vec<PathBuf>,
}

impl Footprint {
    /// Records the footprint of running task `id` and checks that it looks
    /// the way runc.v2's does: one shim process running in the bundle, the
    /// rootfs mounted in the bundle, the shim socket from bootstrap.json
    /// present, runc's state.json present, the task's cgroups present.
    #[track_caller]
    pub fn capture(ctr: &Ctr, id: &str) -> Footprint {
        let bundle = bundle_dir(ctr.address(), id);
        let shim_pids = host::shim_pids(id);
        assert_eq!(
            shim_pids.len(),
            1,
            "expected one shim process for {id}, found {shim_pids:?}"
        );
        assert_eq!(
            host::cwd(shim_pids[0]).as_deref(),
            Some(bundle.as_path()),
            "the shim of {id} should run in the bundle"
        );
        let rootfs = bundle.join("rootfs");
        assert!(
            host::mounts_under(&bundle)
                .iter()
                .any(|m| Path::new(m) == rootfs),
            "rootfs of {id} is not mounted at {}; mounts under the bundle: {:?}",
            rootfs.display(),
            host::mounts_under(&bundle)
        );
        let address = shim::socket_address(&bundle).unwrap_or_else(|e| panic!("{e}"));
        let shim_socket = shim::socket_path(&address);
        assert!(
            shim_socket.exists(),
            "shim socket {} of {id} does not exist",
            shim_socket.display()
        );
        let state = runc_state_dir(id).join("state.json");
        assert!(
            state.is_file(),
            "runc state {} of {id} does not exist",
            state.display()
        );
        let task_pids = ctr.task_pids(id);
        let init = ctr.task(id).unwrap_or_else(|| panic!("no task {id}")).pid;
        let cgroup_dirs: Vec<PathBuf> = CGROUP_CONTROLLERS
            .iter()
            .map(|c| host::cgroup_dir(init, c).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        for dir in &cgroup_dirs {
            assert!(
                dir.is_dir(),
                "cgroup {} of {id} does not exist",
                dir.display()
            );
        }
        Footprint {
            id: id.to_string(),
            bundle,
            shim_pids,
            shim_socket,
            task_pids,
            cgroup_dirs,
        }
    }

    /// Waits (bounded) until every part of the footprint is gone: no task,
    /// no process, no shim, no socket, no mount, no bundle, no runc state,
    /// no cgroup.
    #[track_caller]
    pub fn assert_gone(&self, ctr: &Ctr) {
        assert_nothing_left(ctr, &self.id);
        let id = &self.id;
        poll::until(
            Duration::from_secs(20),
            &format!("everything of {id} to be gone"),
            || {
                let mut left = Vec::new();
                for pid in self.task_pids.iter().filter(|p| host::pid_alive(**p)) {
                    left.push(format!("container process {pid}"));
                }
                for pid in self.shim_pids.iter().filter(|p| host::pid_alive(**p)) {
                    left.push(format!("shim process {pid} {:?}", host::cmdline(*pid)));
                }
                if self.shim_socket.exists() {
                    left.push(format!("shim socket {}", self.shim_socket.display()));
                }
                for dir in self.cgroup_dirs.iter().filter(|d| d.exists()) {
                    left.push(format!("cgroup {}", dir.display()));
                }
                if left.is_empty() {
                    Ok(())
                } else {
                    Err(left.join(", "))
                }
            },
        );
    }
}

/// Waits (bounded) until container `id` has nothing on the host: no task in
/// `ctr tasks ls`, no shim process, no mount under its bundle, no bundle
/// directory, no runc state.
#[track_caller]
pub fn assert_nothing_left(ctr: &Ctr, id: &str) {
    let bundle = bundle_dir(ctr.address(), id);
    let runc_state = runc_state_dir(id);
    poll::until(
        Duration::from_secs(20),
        &format!("nothing of {id} to be left"),
        || {
            let mut left = Vec::new();
            if let Some(task) = ctr.task(id) {
                left.push(format!("task {task:?}"));
            }
            for pid in host::shim_pids(id) {
                left.push(format!("shim process {pid} {:?}", host::cmdline(pid)));
            }
            let mounts = host::mounts_under(&bundle);
            if !mounts.is_empty() {
                left.push(format!("mounts {mounts:?}"));
            }
            if bundle.exists() {
                left.push(format!("bundle {}", bundle.display()));
            }
            if runc_state.exists() {
                left.push(format!("runc state {}", runc_state.display()));
            }
            if left.is_empty() {
                Ok(())
            } else {
                Err(left.join(", "))
            }
        },
    );
}
