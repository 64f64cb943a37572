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

use migrate_oci::RootfsInfo;

use crate::{image_origin::ImageOrigin, rootfs::Overlay};

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
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

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
