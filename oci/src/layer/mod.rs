//! The container's writable layer as an OCI image layer tar, in both
//! directions: an overlay upperdir becomes a tar, and a tar is applied onto a
//! directory. Whiteouts follow the OCI image spec ("Representing Changes").

mod apply;
mod write;

pub use apply::apply_layer;
pub(crate) use write::write_layer;
pub use write::write_rootfs_diff;

/// `.wh.NAME` in a layer deletes NAME from the layers below.
const WHITEOUT_PREFIX: &str = ".wh.";
/// `DIR/.wh..wh..opq` hides everything the layers below have in DIR.
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

#[cfg(test)]
mod tests;
