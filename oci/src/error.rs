//! The crate's one error type. Every variant carries the paths and ids it is
//! about, and its message says what to do next, because migratectl and the
//! shim show these messages to people as they are.

use std::{fmt, io, path::PathBuf};

use crate::{criu_stats::StatsFormatError, hashing::Sha256, manifest::MANIFEST_MEDIA_TYPE};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("rename {} to {}: {source}", from.display(), to.display())]
    Rename {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "checkpoint id {id:?} is not valid: use 1 to 128 characters from A-Z a-z 0-9 _ . -, \
         starting with a letter or a digit"
    )]
    InvalidId { id: String },

    #[error("{path:?} cannot name a file in a checkpoint: {reason}")]
    InvalidPath { path: String, reason: &'static str },

    #[error("no checkpoint {id} in {}: list the store to see which checkpoints it holds", store.display())]
    NotFound { id: String, store: PathBuf },

    #[error(
        "checkpoint {id} already exists in {}: choose another id or remove the old checkpoint first",
        store.display()
    )]
    AlreadyExists { id: String, store: PathBuf },

    #[error(
        "{} has no manifest.json, so it is not a committed checkpoint (a checkpoint that was \
         interrupted before its commit); it cannot be restored — remove it",
        dir.display()
    )]
    Incomplete { dir: PathBuf },

    #[error("{} is not a valid checkpoint manifest ({source}); the checkpoint cannot be used — remove it", path.display())]
    BadManifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error(
        "{} is a manifest of schemaVersion {schema_version}, mediaType {media_type:?}, but this \
         version of containerd-migrate reads schemaVersion 1 of {MANIFEST_MEDIA_TYPE}; use the \
         containerd-migrate that wrote it",
        path.display()
    )]
    UnsupportedManifest { path: PathBuf, schema_version: u32, media_type: String },

    #[error(
        "{} holds the manifest of checkpoint {manifest_id}; a checkpoint's directory must be named \
         after its id — rename it to {manifest_id}",
        dir.display()
    )]
    IdMismatch { dir: PathBuf, manifest_id: String },

    #[error(
        "checkpoint {id} in {}: {}; it cannot be restored — use an older checkpoint",
        dir.display(),
        Problems(problems)
    )]
    Damaged { id: String, dir: PathBuf, problems: Vec<FileProblem> },

    #[error(
        "staging directory {} holds no CRIU images in criu/: dump or import them before the commit",
        dir.display()
    )]
    NoImages { dir: PathBuf },

    #[error(
        "{} is a {kind}; a checkpoint holds only regular files and directories — remove it \
         before the commit",
        path.display()
    )]
    UnsupportedFile { path: PathBuf, kind: &'static str },

    #[error(
        "{} links to {}, a parent image set, but the commit names no parent checkpoint: \
         pass the parent's id in CommitInfo::parent",
        path.display(),
        target.display()
    )]
    UnexpectedParentLink { path: PathBuf, target: PathBuf },

    #[error(
        "checkpoint {id} in {} is the parent of {}: their restore needs its images, remove them first",
        store.display(),
        children.join(", ")
    )]
    HasChildren { id: String, store: PathBuf, children: Vec<String> },

    #[error("{} is not a valid OCI runtime spec: {source}", path.display())]
    BadSpec {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error(
        "{} uses overlayfs {feature}, which a layer tar cannot carry: mount the container's \
         overlay without it to checkpoint its root file system",
        path.display()
    )]
    UnsupportedOverlay { path: PathBuf, feature: &'static str },

    #[error(
        "layer {}: entry {} {reason}; the layer was refused and the target directory is only \
         partly written — discard it",
        tar.display(),
        entry.display()
    )]
    UnsafeLayerEntry { tar: PathBuf, entry: PathBuf, reason: UnsafeEntry },

    #[error("layer {} cannot be read ({source}); it is damaged or not a tar archive", tar.display())]
    LayerRead {
        tar: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{} is not a CRIU stats image: {source}", path.display())]
    CriuStats {
        path: PathBuf,
        #[source]
        source: StatsFormatError,
    },
}

impl Error {
    /// For `map_err`: an I/O failure of `op` on `path`.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }
}

/// One thing wrong with one file of a committed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblem {
    /// Relative to the checkpoint directory, as in the manifest.
    pub path: String,
    pub kind: ProblemKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemKind {
    Missing,
    SizeMismatch {
        expected: u64,
        found: u64,
    },
    Sha256Mismatch {
        expected: Sha256,
        found: Sha256,
    },
    /// Present but not in the manifest: something wrote into the checkpoint
    /// after its commit.
    Unexpected,
    /// The parent link CRIU follows to the parent's images is not the one
    /// the manifest implies.
    BadParentLink {
        expected: PathBuf,
        found: Option<PathBuf>,
    },
    /// The parent link is right, but the parent checkpoint is gone.
    ParentMissing {
        parent: String,
    },
}

impl fmt::Display for FileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = &self.path;
        match &self.kind {
            ProblemKind::Missing => write!(f, "{path} is missing"),
            ProblemKind::SizeMismatch { expected, found } => {
                write!(f, "{path} is damaged (size mismatch: expected {expected} bytes, found {found})")
            }
            ProblemKind::Sha256Mismatch { expected, found } => {
                write!(f, "{path} is damaged (sha256 mismatch: expected {expected}, found {found})")
            }
            ProblemKind::Unexpected => write!(f, "unexpected file {path}"),
            ProblemKind::BadParentLink { expected, found: Some(found) } => {
                write!(f, "{path} links to {} instead of {}", found.display(), expected.display())
            }
            ProblemKind::BadParentLink { expected, found: None } => {
                write!(f, "{path} is missing (it must link to {})", expected.display())
            }
            ProblemKind::ParentMissing { parent } => {
                write!(f, "{path} leads to parent checkpoint {parent}, which is gone")
            }
        }
    }
}

/// Why a layer entry was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnsafeEntry {
    /// A `..` component, which could climb out of the root.
    ParentDir,
    /// A component of its parent is a symlink, which could lead anywhere.
    ThroughSymlink { link: PathBuf },
    /// A component of its parent exists and is not a directory.
    NotADirectory { path: PathBuf },
    /// A whiteout that names nothing (`.wh.` alone).
    EmptyWhiteout,
    /// A hard link whose target is not inside the root.
    LinkTarget { target: PathBuf, reason: Box<UnsafeEntry> },
}

impl fmt::Display for UnsafeEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnsafeEntry::ParentDir => f.write_str("climbs out of the root with '..'"),
            UnsafeEntry::ThroughSymlink { link } => write!(f, "goes through symlink {}", link.display()),
            UnsafeEntry::NotADirectory { path } => {
                write!(f, "needs {} to be a directory, and it is not", path.display())
            }
            UnsafeEntry::EmptyWhiteout => f.write_str("is a whiteout that names no file"),
            UnsafeEntry::LinkTarget { target, reason } => {
                write!(f, "is a hard link to {}, which {reason}", target.display())
            }
        }
    }
}

struct Problems<'a>(&'a [FileProblem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}
