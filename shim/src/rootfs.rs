//! A container's root file system: mounted from the mounts containerd hands
//! the shim, behind a guard that unmounts it ([`MountedRootfs`]), and what
//! those mounts say of it: for overlay, the writable upper directory (whose
//! contents are the container's changes) and the lower directories (the
//! image's layers, which identify the image on this host).

use std::path::{Path, PathBuf};

use containerd_shim::{mount::umount_recursive, protos::types::mount::Mount, util::mount_rootfs};
use log::warn;

use crate::error::{Error, Result};

/// The container's root file system mounted at `target`, unmounted when
/// dropped: on every error path after the mount, and when the container is
/// deleted.
#[derive(Debug)]
pub struct MountedRootfs {
    target: PathBuf,
}

impl MountedRootfs {
    /// Mounts `mounts` at `target`, one on top of the other.
    pub async fn mount(mounts: &[Mount], target: &Path) -> Result<MountedRootfs> {
        let mounted = MountedRootfs { target: target.to_owned() };
        for m in mounts {
            mount_rootfs(m, target)
                .await
                .map_err(Error::shim(format!("mount the rootfs ({} {})", m.type_, m.source)))?;
        }
        Ok(mounted)
    }

    pub fn path(&self) -> &Path {
        &self.target
    }
}

impl Drop for MountedRootfs {
    fn drop(&mut self) {
        if let Err(e) = umount_recursive(self.target.to_str(), libc::MNT_DETACH) {
            warn!("failed to unmount {}: {e}", self.target.display());
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overlay {
    pub upper: Option<PathBuf>,
    pub lowers: Vec<PathBuf>,
}

impl Overlay {
    /// The overlay layers of `mounts`, if the root file system is an overlay.
    pub fn of(mounts: &[Mount]) -> Option<Overlay> {
        let m = mounts.iter().find(|m| m.type_ == "overlay")?;
        let mut overlay = Overlay::default();
        for option in &m.options {
            if let Some(upper) = option.strip_prefix("upperdir=") {
                overlay.upper = Some(PathBuf::from(upper));
            } else if let Some(lower) = option.strip_prefix("lowerdir=") {
                overlay.lowers = lower.split(':').map(PathBuf::from).collect();
            }
        }
        Some(overlay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_upper_and_lower_dirs() {
        let m = Mount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                "index=off".into(),
                "workdir=/s/14/work".into(),
                "upperdir=/s/14/fs".into(),
                "lowerdir=/s/3/fs:/s/2/fs".into(),
            ],
            ..Default::default()
        };
        let o = Overlay::of(&[m]).unwrap();
        assert_eq!(o.upper, Some(PathBuf::from("/s/14/fs")));
        assert_eq!(o.lowers, vec![PathBuf::from("/s/3/fs"), PathBuf::from("/s/2/fs")]);
        assert_eq!(Overlay::of(&[Mount { type_: "bind".into(), ..Default::default() }]), None);
    }
}
