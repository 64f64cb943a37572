//! Sync of a container's writable layer (an overlay upper dir) to another
//! host, while the container runs and once more inside the freeze.
//!
//! The source [`scan`]s the upper dir against the [`SyncIndex`] of what it
//! sent before and [`write_delta`]s the changes; the target [`apply`]s them
//! to the upper dir of its prepared (unmounted) snapshot. Entries go over
//! verbatim, as overlay keeps them: whiteouts (character devices 0/0),
//! opaque directories and every other xattr (`trusted.overlay.*`,
//! `user.overlay.*`, capabilities), hard links (one inode, one copy), sparse
//! files (holes stay holes), owners, modes, mtimes, symlinks, fifos and
//! devices; paths gone since the last sync go as removals.
//!
//! A file written while it is being sent: the index keeps its stamp from
//! before its content was read, so the next scan sends it again. Inside the
//! freeze nothing changes, so the last delta leaves the target equal to the
//! source. The index is only valid once its delta was applied: after a
//! failed transfer scan again from the index before.
//!
//! The functions work on any overlay upper dir: the agent finds it in the
//! `upperdir=` option of the snapshot's mounts.

mod apply;
mod index;
mod scan;
mod send;
pub mod wire;

pub use apply::{ApplyStats, SyncError, apply};
pub use index::SyncIndex;
pub use scan::{Delta, scan};
pub use send::write_delta;

#[cfg(test)]
mod tests;
