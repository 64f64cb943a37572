//! containerd-migrate's checkpoint format.
//!
//! A checkpoint is a directory in a [`CheckpointStore`]:
//!
//! ```text
//! <store>/<id>/
//!     manifest.json     written last; without it there is no checkpoint
//!     criu/...          CRIU's image set, as runc and CRIU wrote it
//!     config.json       the container's OCI runtime spec (optional)
//!     rootfs-diff.tar   the writable layer's changes, an OCI layer (optional)
//! ```
//!
//! It is built in a [`Staging`] directory inside the store and committed
//! with one rename(2), so a checkpoint is complete or does not exist; the
//! manifest records every file's size and sha256, which
//! [`Checkpoint::verify`] checks before a restore.

mod chain_id;
mod checkpoint;
pub mod criu_stats;
mod criu_tar;
mod direct_copy;
pub mod durable;
mod error;
mod hashing;
mod host;
mod layer;
pub mod layout;
pub mod lease;
mod manifest;
mod parallel;
pub mod platform;
pub mod ram;
mod staging;
mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod tree;
mod xattr;

pub use chain_id::ChainId;
pub use checkpoint::{Checkpoint, DeferredDigests, FilesStamp};
pub use direct_copy::write_around_page_cache;
pub use error::{Error, FileProblem, ProblemKind, Result, UnsafeEntry};
pub use hashing::Sha256;
pub use layer::{apply_layer, write_rootfs_diff};
pub use layout::{CONFIG_FILE, RESTORE_FROM_ANNOTATION, ROOTFS_DIFF_FILE, validate_id};
pub use manifest::{
    CheckpointManifest, ContainerInfo, FileEntry, HostInfo, MANIFEST_MEDIA_TYPE, MANIFEST_SCHEMA_VERSION, ReadyInfo,
    RootfsInfo, Timings, WarmUpInfo,
};
pub use staging::{CommitInfo, PendingFile, Staging, WrittenFile};
pub use store::{CheckpointStore, DEFAULT_STORE_ROOT};
