//! Where a process's cgroups are, for metrics and OOM events.
//!
//! Paths come from /proc/PID/cgroup and the cgroup mounts in
//! /proc/self/mountinfo, so they hold on cgroup v1, hybrid and v2 hosts
//! alike, whatever cgroup driver runc used.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroups {
    /// One directory per v1 controller ("memory", "cpuacct", ...).
    V1(HashMap<String, PathBuf>),
    /// The one directory of the unified hierarchy.
    V2(PathBuf),
}

impl Cgroups {
    pub fn of(pid: u32) -> Option<Cgroups> {
        let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
        Self::parse(&cgroups, &mounts)
    }

    fn parse(cgroups: &str, mountinfo: &str) -> Option<Cgroups> {
        let mut v1 = HashMap::new();
        let mut unified = None;
        for line in cgroups.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let path = path.trim_start_matches('/');
            if controllers.is_empty() {
                unified = Some(path.to_string());
                continue;
            }
            for controller in controllers.split(',').filter(|c| !c.starts_with("name=")) {
                if let Some(root) = mount_point(mountinfo, "cgroup", Some(controller)) {
                    v1.insert(controller.to_string(), root.join(path));
                }
            }
        }
        if !v1.is_empty() {
            return Some(Cgroups::V1(v1));
        }
        Some(Cgroups::V2(mount_point(mountinfo, "cgroup2", None)?.join(unified?)))
    }

    /// How many processes the cgroup of v1 `controller` (or the unified
    /// one) holds, from its cgroup.procs: a file read, where `runc ps`
    /// starts a process.
    pub fn process_count(&self, controller: &str) -> Option<usize> {
        let procs = fs::read_to_string(self.dir(controller)?.join("cgroup.procs")).ok()?;
        Some(procs.lines().count())
    }

    /// The directory of v1 `controller`, or the unified one on v2.
    pub fn dir(&self, controller: &str) -> Option<&Path> {
        match self {
            Cgroups::V1(dirs) => dirs.get(controller).map(PathBuf::as_path),
            Cgroups::V2(dir) => Some(dir),
        }
    }
}

/// The mount point of a cgroup file system from mountinfo; for v1 the one
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_processes_of_a_cgroup() {
        let dir = tempfile::tempdir().unwrap();
        let cgroups = Cgroups::V2(dir.path().to_owned());
        assert_eq!(cgroups.process_count("memory"), None, "no cgroup.procs");
        fs::write(dir.path().join("cgroup.procs"), "12\n34\n56\n").unwrap();
        assert_eq!(cgroups.process_count("memory"), Some(3));
        assert_eq!(Cgroups::V1(HashMap::new()).process_count("memory"), None, "no such controller");
    }

    const MOUNTINFO: &str = "\
25 1 0:23 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
30 25 0:28 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
31 25 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct";

    #[test]
    fn hybrid_hosts_use_the_v1_controllers() {
        let cg = "12:memory:/default/c1\n4:cpu,cpuacct:/default/c1\n1:name=systemd:/default/c1\n0::/default/c1\n";
        let c = Cgroups::parse(cg, MOUNTINFO).unwrap();
        assert_eq!(c.dir("memory"), Some(Path::new("/sys/fs/cgroup/memory/default/c1")));
        assert_eq!(c.dir("cpuacct"), Some(Path::new("/sys/fs/cgroup/cpu,cpuacct/default/c1")));
        assert_eq!(c.dir("pids"), None);
    }

    #[test]
    fn unified_hosts_use_one_directory() {
        let c = Cgroups::parse("0::/default/c1\n", MOUNTINFO).unwrap();
        assert_eq!(c, Cgroups::V2(PathBuf::from("/sys/fs/cgroup/unified/default/c1")));
    }
}
