//! Facts about this machine that decide where a checkpoint can be restored.

use std::{
    io::Read,
    process::{Command, Stdio},
    sync::OnceLock,
};

use crate::manifest::HostInfo;

impl HostInfo {
    /// This machine. Never fails: a fact that cannot be found is recorded
    /// empty (or None), because a checkpoint is worth more than its label.
    pub fn current() -> HostInfo {
        let hostname = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
        let kernel = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
        HostInfo { hostname, kernel, criu_version: criu_version(), arch: crate::platform::arch().to_string() }
    }
}

/// CRIU's version, asked once per process: it does not change under a
/// running shim, and spawning CRIU for every checkpoint costs milliseconds.
///
/// The answer is read from CRIU's output, whatever becomes of its exit
/// status: in a shim, a subreaper whose SIGCHLD loop reaps every child,
/// the status is usually taken before this process can wait for it (the
/// wait then fails with ECHILD), and `Command::output` would throw the
/// printed version away with it.
fn criu_version() -> Option<String> {
    static VERSION: OnceLock<Option<String>> = OnceLock::new();
    VERSION
        .get_or_init(|| {
            let mut child = Command::new("criu")
                .arg("--version")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| log::warn!("cannot run criu --version ({e}); checkpoints record no CRIU version"))
                .ok()?;
            let mut out = String::new();
            let read = child.stdout.take().map(|mut o| o.read_to_string(&mut out));
            match child.wait() {
                Ok(status) if !status.success() => {
                    log::warn!("criu --version failed ({status}); checkpoints record no CRIU version");
                    return None;
                }
                Ok(_) | Err(_) => {}
            }
            read?.ok()?;
            parse_criu_version(&out)
        })
        .clone()
}

/// `criu --version` prints "Version: 4.2.1", then "GitID: ..." for builds
/// from git.
fn parse_criu_version(output: &str) -> Option<String> {
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix("Version:"))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criu_version_output() {
        assert_eq!(parse_criu_version("Version: 4.2.1\n"), Some("4.2.1".into()));
        assert_eq!(parse_criu_version("Version: 3.19\nGitID: v3.19-12-gabc\n"), Some("3.19".into()));
        assert_eq!(parse_criu_version("criu: command not found\n"), None);
        assert_eq!(parse_criu_version("Version:\n"), None);
    }

    #[test]
    fn current_host_is_described() {
        let h = HostInfo::current();
        assert!(!h.kernel.is_empty());
        assert!(!h.arch.is_empty());
    }
}
