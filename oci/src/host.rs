//! Facts about this machine that decide where a checkpoint can be restored.

use crate::manifest::HostInfo;

impl HostInfo {
    /// This machine, with the version of the CRIU that made the images as
    /// its caller found it (the shim asks CRIU once per boot; None where it
    /// is not known). Never fails: a fact that cannot be found is recorded
    /// empty, because a checkpoint is worth more than its label.
    pub fn this_machine(criu_version: Option<String>) -> HostInfo {
        let hostname = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
        let kernel = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
        HostInfo { hostname, kernel, criu_version, arch: crate::platform::arch().to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_host_is_described() {
        let h = HostInfo::this_machine(Some("4.2.1".into()));
        assert!(!h.kernel.is_empty());
        assert!(!h.arch.is_empty());
        assert_eq!(h.criu_version.as_deref(), Some("4.2.1"));
    }
}
