//! The errors of the version store. Each names the container, the version
//! and the file or chunk it is about (a registry's, the store, the request
//! and what the registry answered), and says what to do next: the ticker
//! logs them as they are, and a restore that gets one falls back to the
//! previous version.

use std::{io, path::PathBuf};

use crate::{ContainerRef, crypto::ChunkId};
use migrate_oci::Sha256;

pub type Result<T, E = VersionError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{url:?} is not a version store location: {reason}")]
    BadLocation { url: String, reason: &'static str },

    #[error(
        "{what} {name:?} is not valid: use 1 to 128 characters from A-Z a-z 0-9 _ . -, \
         starting with a letter or a digit"
    )]
    InvalidName { what: &'static str, name: String },

    #[error("version group size must be at least 1, not 0")]
    ZeroGroupSize,

    #[error("{} cannot be stored as a version: {source}", dir.display())]
    Checkpoint {
        dir: PathBuf,
        #[source]
        source: Box<migrate_oci::Error>,
    },

    #[error(
        "{} builds on checkpoint {parent}, which cannot be read beside it ({source}); a version in \
         mode criu-parent records its whole chain of parents, so keep them in the checkpoint store \
         until the version is stored",
        dir.display()
    )]
    ParentUnavailable {
        dir: PathBuf,
        parent: String,
        #[source]
        source: Box<migrate_oci::Error>,
    },

    #[error("{}: its chain of parents comes back to checkpoint {parent}; CRIU's parent images cannot form a loop", dir.display())]
    ParentLoop { dir: PathBuf, parent: String },

    #[error(
        "{} holds another checkpoint than parent {parent} of version {version} of {container}, which must \
         be rebuilt there (CRIU reaches a parent by its id, beside its child): materialize into a directory \
         without it",
        path.display()
    )]
    ParentInTheWay { container: ContainerRef, version: u64, parent: String, path: PathBuf },

    #[error(
        "{} changed while it was stored (sha256 {found}, its manifest says {expected}): \
         nothing may write into a committed checkpoint; take a new checkpoint",
        path.display()
    )]
    FileChanged { path: PathBuf, expected: Sha256, found: Sha256 },

    #[error(
        "cannot read key file {}: {source}; create it with 32 random bytes, e.g. \
         `head -c 32 /dev/urandom > {}` (mode 0600), and keep a copy: without it no encrypted \
         version can be read",
        path.display(), path.display()
    )]
    KeyFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "key file {} holds {len} bytes: a key file holds exactly 32 raw bytes, or 64 hex digits \
         (a trailing newline allowed)",
        path.display()
    )]
    BadKey { path: PathBuf, len: usize },

    #[error("version {version} of {container} already exists: versions are never overwritten, use the next number")]
    VersionExists { container: ContainerRef, version: u64 },

    #[error("no version {version} of {container} in the store: list its versions to see which it holds")]
    VersionNotFound { container: ContainerRef, version: u64 },

    #[error("version {version} of {container}: its manifest cannot be read ({reason}); use the previous version")]
    BadVersionManifest { container: ContainerRef, version: u64, reason: String },

    #[error("version {version} of {container} is encrypted (key id {key_id}): pass the key file it was stored with")]
    KeyNeeded { container: ContainerRef, version: u64, key_id: String },

    #[error("version {version} of {container} is not encrypted, yet a key was given: read it without a key")]
    NotEncrypted { container: ContainerRef, version: u64 },

    #[error(
        "version {version} of {container} was encrypted with key id {expected}, but the key given \
         has key id {found}: pass the key file it was stored with"
    )]
    WrongKey { container: ContainerRef, version: u64, expected: String, found: String },

    #[error(
        "version {version} of {container}: {path}: chunk {id} is missing from the store; \
         this version cannot be restored — use the previous version"
    )]
    ChunkMissing { container: ContainerRef, version: u64, path: String, id: ChunkId },

    #[error(
        "version {version} of {container}: {path}: chunk {id} is damaged or was encrypted with \
         another key; this version cannot be restored — use the previous version"
    )]
    ChunkDamaged { container: ContainerRef, version: u64, path: String, id: ChunkId },

    #[error(
        "version {version} of {container} was rebuilt but is not a sound checkpoint ({source}); \
         use the previous version"
    )]
    Rebuilt {
        container: ContainerRef,
        version: u64,
        #[source]
        source: Box<migrate_oci::Error>,
    },

    #[error("{} already exists: materialize into a new directory", path.display())]
    DestinationExists { path: PathBuf },

    #[error("{store}: {what}: cannot reach the registry ({source}); is the registry running at {authority}?")]
    RegistryUnreachable {
        store: String,
        authority: String,
        what: String,
        #[source]
        source: io::Error,
    },

    #[error("{store}: {what}: {request} answered HTTP {status}{registry_said}; {hint}")]
    RegistryRefused {
        store: String,
        what: String,
        /// `METHOD URL`
        request: String,
        status: u16,
        /// ` (CODE: message)` from the registry's JSON error body, the start
        /// of a body that is not JSON, or nothing.
        registry_said: String,
        hint: &'static str,
    },

    #[error("{store}: {what}: {request}: {problem}; is {authority} an OCI distribution registry?")]
    RegistryBadAnswer { store: String, authority: String, what: String, request: String, problem: String },

    #[error(
        "{store}: {what}: the registry has deletion disabled (HTTP 405 UNSUPPORTED); start it with \
         REGISTRY_STORAGE_DELETE_ENABLED=true, or storage.delete.enabled: true in its config.yml, \
         so that retention can drop old versions"
    )]
    RegistryDeleteDisabled { store: String, what: String },

    #[error(
        "{store}: version {version} of {container} is not stored: chunk {id} it references is not in the \
         registry (did `registry garbage-collect` run while the registry was writable?); the next version \
         uploads it again"
    )]
    RegistryChunkMissing { store: String, container: ContainerRef, version: u64, id: ChunkId },

    #[error(
        "{store}: version {version} of {container} is not stored: what was given is not a version \
         manifest ({reason}), and a registry needs the chunks it lists"
    )]
    NotAVersionManifest { store: String, container: ContainerRef, version: u64, reason: String },
}

impl VersionError {
    /// For `map_err`: an I/O failure of `op` on `path`.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> VersionError {
        let path = path.into();
        move |source| VersionError::Io { op, path, source }
    }
}
