//! Whether a checkpoint may be restored onto a container's root file
//! system: the restored processes' open and mapped files, and the
//! checkpoint's rootfs diff, must find the image layers they were taken on.
//!
//! Images are compared by content, by the chain ID of their layers, where
//! both sides know it: that holds across hosts, and on one host after the
//! image was unpacked again. Where either side does not (a checkpoint from
//! before the chain ID was recorded, a container whose image containerd
//! could not tell), they are compared as before, by the overlay's lower
//! directories, which name the layers on the host that took the checkpoint
//! only. With nothing on both sides to compare, the restore goes ahead, as
//! it always did for a root file system that is no overlay.

use migrate_oci::{ChainId, RootfsInfo};

use crate::{
    error::{Error, Result},
    image_origin::ImageOrigin,
    rootfs::Overlay,
};

/// A root file system's image: what a checkpoint's manifest records of the
/// container it was taken from, and what a restore compares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Image {
    /// As the container's record names it, e.g. `docker.io/library/redis:7`.
    pub reference: Option<String>,
    pub rootfs: Option<RootfsInfo>,
}

impl Image {
    /// The image of a container that containerd says runs `origin`, on
    /// `overlay`.
    pub fn of(origin: ImageOrigin, overlay: Option<&Overlay>) -> Image {
        let lowers = overlay.map(|o| o.lowers.clone()).unwrap_or_default();
        Image { reference: origin.reference, rootfs: RootfsInfo::of(origin.chain_id, lowers) }
    }

    fn chain_id(&self) -> Option<&ChainId> {
        self.rootfs.as_ref()?.chain_id.as_ref()
    }

    fn lower_dirs(&self) -> &[std::path::PathBuf] {
        self.rootfs.as_ref().map_or(&[], |r| &r.lower_dirs)
    }

    /// "docker.io/library/redis:7 (layers sha256:…)", as far as it is known.
    fn describe(&self) -> String {
        match (&self.reference, self.chain_id()) {
            (Some(r), Some(c)) => format!("{r} (layers {c})"),
            (None, Some(c)) => format!("an unnamed image (layers {c})"),
            (Some(r), None) => format!("{r} (layers unknown by content)"),
            (None, None) => "an unnamed image (layers unknown by content)".into(),
        }
    }
}

/// Ok if checkpoint `id`, taken from a container of image `saved`, may be
/// restored onto a root file system of image `ours`; else an error naming
/// both.
pub fn check(id: &str, saved: &Image, ours: &Image) -> Result<()> {
    if let (Some(a), Some(b)) = (saved.chain_id(), ours.chain_id()) {
        return if a == b {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "checkpoint {id} was taken from a different image: {}, where this container runs {}; create the \
                 container from the checkpoint's image",
                saved.describe(),
                ours.describe()
            )))
        };
    }
    let (a, b) = (saved.lower_dirs(), ours.lower_dirs());
    if a.is_empty() || b.is_empty() || a == b {
        return Ok(());
    }
    let why = match saved.chain_id() {
        None => {
            "the checkpoint records no chain ID (it was taken before checkpoints recorded one: restore it on the host \
             that took it, or take a new one)"
        }
        Some(_) => "containerd did not say which layers this container's snapshot sits on (the shim's log says why)",
    };
    Err(Error::InvalidArgument(format!(
        "checkpoint {id} was taken from a different image: {}, whose layers were at {a:?} where it was taken, \
         where this container runs {} with its layers at {b:?}; {why}, so only this host's snapshot directories \
         could be compared (they differ on another host, and after the image is unpacked again)",
        saved.describe(),
        ours.describe()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn image(reference: &str, chain: Option<&str>, lowers: &[&str]) -> Image {
        Image {
            reference: Some(reference.into()),
            rootfs: RootfsInfo::of(chain.map(|c| c.parse().unwrap()), lowers.iter().map(Into::into).collect()),
        }
    }

    #[test]
    fn same_chain_id_is_the_same_image_wherever_its_layers_are() {
        let saved = image("redis:7", Some(A), &["/host1/snapshots/3/fs"]);
        let ours = image("redis:7", Some(A), &["/host2/snapshots/41/fs"]);
        check("c1", &saved, &ours).unwrap();
        // Another name for the same content is the same image.
        check("c1", &saved, &image("registry.local/redis:stable", Some(A), &[])).unwrap();
    }

    #[test]
    fn another_chain_id_is_another_image_even_at_the_same_paths() {
        let saved = image("redis:7", Some(A), &["/s/3/fs"]);
        let ours = image("redis:8", Some(B), &["/s/3/fs"]);
        let err = check("c1", &saved, &ours).unwrap_err().to_string();
        assert!(err.contains("checkpoint c1 was taken from a different image"), "{err}");
        assert!(err.contains(&format!("redis:7 (layers {A})")), "{err}");
        assert!(err.contains(&format!("this container runs redis:8 (layers {B})")), "{err}");
    }

    #[test]
    fn an_old_checkpoint_is_compared_by_paths() {
        let old = image("redis:7", None, &["/s/3/fs", "/s/2/fs"]);
        check("c1", &old, &image("redis:7", Some(A), &["/s/3/fs", "/s/2/fs"])).unwrap();
        let err = check("c1", &old, &image("redis:7", Some(A), &["/s/9/fs"])).unwrap_err().to_string();
        assert!(err.contains(r#"["/s/3/fs", "/s/2/fs"]"#) && err.contains(r#"["/s/9/fs"]"#), "{err}");
        assert!(err.contains("records no chain ID"), "{err}");
    }

    #[test]
    fn a_container_of_unknown_layers_is_compared_by_paths() {
        let saved = image("redis:7", Some(A), &["/s/3/fs"]);
        let unknown = Image::of(ImageOrigin::default(), Some(&Overlay { upper: None, lowers: vec!["/s/4/fs".into()] }));
        let err = check("c1", &saved, &unknown).unwrap_err().to_string();
        assert!(err.contains("containerd did not say"), "{err}");
        assert!(err.contains("an unnamed image (layers unknown by content)"), "{err}");
        let same_host =
            Image::of(ImageOrigin::default(), Some(&Overlay { upper: None, lowers: vec!["/s/3/fs".into()] }));
        check("c1", &saved, &same_host).unwrap();
    }

    #[test]
    fn nothing_to_compare_goes_ahead() {
        let saved = image("redis:7", Some(A), &["/s/3/fs"]);
        check("c1", &saved, &Image::default()).unwrap();
        check("c1", &Image::default(), &saved).unwrap();
        // A chain ID on one side only, no overlay on the other.
        check("c1", &image("redis:7", Some(A), &[]), &image("redis:7", None, &["/s/3/fs"])).unwrap();
    }

    #[test]
    fn the_image_of_a_container_records_what_is_known() {
        let overlay = Overlay { upper: Some("/s/5/fs".into()), lowers: vec!["/s/3/fs".into()] };
        let origin = ImageOrigin { reference: Some("redis:7".into()), chain_id: Some(A.parse().unwrap()) };
        let image = Image::of(origin, Some(&overlay));
        assert_eq!(image.reference.as_deref(), Some("redis:7"));
        let rootfs = image.rootfs.unwrap();
        assert_eq!(rootfs.chain_id.unwrap().to_string(), A);
        assert_eq!(rootfs.lower_dirs, vec![std::path::PathBuf::from("/s/3/fs")]);
        assert_eq!(Image::of(ImageOrigin::default(), None).rootfs, None, "nothing known, nothing recorded");
    }
}
