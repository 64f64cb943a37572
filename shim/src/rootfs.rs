//! What the shim knows of a container's root file system from the mounts
//! containerd hands it: for overlay, the writable upper directory (whose
//! contents are the container's changes) and the lower directories (the
//! image's layers, which identify the image on this host).

use std::path::PathBuf;

use containerd_shim::protos::types::mount::Mount;

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
