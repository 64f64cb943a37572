//! What a container's snapshot mounts say about its root file system: the
//! writable directory whose changes go into the checkpoint, and the image
//! layers under it.

use std::path::PathBuf;

use containerd_client::types::Mount;

/// A container's root file system as its snapshot mounts describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rootfs {
    /// overlayfs: changes in `upper`, image layers in `lower` (top first,
    /// as in the `lowerdir=` option).
    Overlay { upper: PathBuf, lower: Vec<PathBuf> },
    /// Something whose changes we cannot tell apart from the image (another
    /// snapshotter, a read-only view, several mounts).
    Unsupported { reason: String },
}

impl Rootfs {
    /// Reads the mounts of an active snapshot.
    ///
    /// The overlayfs snapshotter gives one `overlay` mount with `upperdir=`
    /// and `lowerdir=a:b:c`, or, for a snapshot without parent, one
    /// read-write bind mount of the snapshot's own directory (all of it is
    /// the container's changes).
    pub fn from_mounts(mounts: &[Mount]) -> Rootfs {
        let [mount] = mounts else {
            return Rootfs::Unsupported { reason: format!("{} mounts (expected one)", mounts.len()) };
        };
        match mount.r#type.as_str() {
            "overlay" => {
                let mut upper = None;
                let mut lower = Vec::new();
                for option in &mount.options {
                    if let Some(dir) = option.strip_prefix("upperdir=") {
                        upper = Some(PathBuf::from(dir));
                    } else if let Some(dirs) = option.strip_prefix("lowerdir=") {
                        lower = dirs.split(':').filter(|d| !d.is_empty()).map(PathBuf::from).collect();
                    }
                }
                match upper {
                    Some(upper) => Rootfs::Overlay { upper, lower },
                    None => {
                        Rootfs::Unsupported { reason: "an overlay mount without upperdir (a read-only view)".into() }
                    }
                }
            }
            "bind" | "rbind" if !mount.options.iter().any(|o| o == "ro") => {
                Rootfs::Overlay { upper: PathBuf::from(&mount.source), lower: Vec::new() }
            }
            other => Rootfs::Unsupported { reason: format!("a {other} mount of {}", mount.source) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(kind: &str, source: &str, options: &[&str]) -> Mount {
        Mount {
            r#type: kind.into(),
            source: source.into(),
            target: String::new(),
            options: options.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn overlay_gives_upper_and_lower_dirs_in_order() {
        let snaps = "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots";
        let m = mount(
            "overlay",
            "overlay",
            &[
                "index=off",
                &format!("workdir={snaps}/9/work"),
                &format!("upperdir={snaps}/9/fs"),
                &format!("lowerdir={snaps}/3/fs:{snaps}/2/fs:{snaps}/1/fs"),
            ],
        );
        assert_eq!(
            Rootfs::from_mounts(&[m]),
            Rootfs::Overlay {
                upper: format!("{snaps}/9/fs").into(),
                lower: vec![
                    format!("{snaps}/3/fs").into(),
                    format!("{snaps}/2/fs").into(),
                    format!("{snaps}/1/fs").into()
                ],
            }
        );
    }

    #[test]
    fn a_writable_bind_mount_is_all_changes() {
        let m = mount("bind", "/snap/1/fs", &["rw", "rbind"]);
        assert_eq!(Rootfs::from_mounts(&[m]), Rootfs::Overlay { upper: "/snap/1/fs".into(), lower: vec![] });
    }

    #[test]
    fn what_cannot_be_diffed_says_why() {
        let reason = |mounts: &[Mount]| match Rootfs::from_mounts(mounts) {
            Rootfs::Unsupported { reason } => reason,
            other => panic!("{other:?}"),
        };
        assert!(reason(&[]).contains("0 mounts"));
        assert!(reason(&[mount("overlay", "overlay", &["lowerdir=/a:/b"])]).contains("without upperdir"));
        assert!(reason(&[mount("bind", "/snap/1/fs", &["ro", "rbind"])]).contains("bind mount of /snap/1/fs"));
        assert!(reason(&[mount("btrfs", "/dev/sda1", &["subvolid=5"])]).contains("btrfs"));
    }
}
