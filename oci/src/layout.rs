//! Names: of checkpoints in a store, and of files inside a checkpoint.

use std::path::PathBuf;

use crate::error::{Error, Result};

pub const MANIFEST_FILE: &str = "manifest.json";
pub const CRIU_DIR: &str = "criu";
/// The container's OCI runtime spec, added with [`crate::Staging::add_file`].
pub const CONFIG_FILE: &str = "config.json";
pub const ROOTFS_DIFF_FILE: &str = "rootfs-diff.tar";
/// The OCI annotation that starts a container from a checkpoint directory
/// ("file:///abs/path/to/checkpoint-dir"): the shim reads it, and
/// `migratectl restore` drops it from a clone's spec.
pub const RESTORE_FROM_ANNOTATION: &str = "io.containerd.migrate.restore-from";

/// CRIU reaches the images of a dump's parent (pre-dump, incremental dump)
/// through a symlink of this name in the images directory. The commit makes
/// it from the manifest's `parent`, relative, so that a store can be moved.
pub const PARENT_LINK: &str = "criu/parent";

pub fn parent_link_target(parent: &str) -> PathBuf {
    ["..", "..", parent, CRIU_DIR].iter().collect()
}

/// Checks a checkpoint id: `[A-Za-z0-9][A-Za-z0-9_.-]{0,127}`, which is also
/// a safe directory name (no `/`, never `.` or `..`, never hidden).
/// Whether `rel`, a path in a checkpoint, is one of CRIU's memory images
/// (`pages-N.img`), which hold nearly all of a checkpoint's bytes.
pub fn is_memory_image(rel: &str) -> bool {
    rel.strip_prefix(CRIU_DIR)
        .and_then(|r| r.strip_prefix("/pages-"))
        .and_then(|r| r.strip_suffix(".img"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

pub fn validate_id(id: &str) -> Result<()> {
    let mut bytes = id.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric());
    if first_ok && id.len() <= 128 && bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) {
        Ok(())
    } else {
        Err(Error::InvalidId { id: id.to_owned() })
    }
}

/// Why `rel` cannot name a file that a caller adds to a checkpoint or that a
/// manifest lists, if it cannot: such a path must stay inside the checkpoint
/// and must not be one of the names the commit itself writes.
pub fn check_rel(rel: &str) -> Result<(), &'static str> {
    if rel.is_empty() {
        return Err("it is empty");
    }
    if rel.starts_with('/') {
        return Err("it is absolute; name it relative to the checkpoint directory");
    }
    if rel.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err("it has an empty, '.' or '..' component");
    }
    if rel == MANIFEST_FILE || rel == PARENT_LINK {
        return Err("the commit writes that name itself");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["a", "web-20261122T143000Z", "A.b_c-9", &"x".repeat(128)] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "-x", "_x", "a/b", "..", "a b", "é", &"x".repeat(129)] {
            let err = validate_id(bad).unwrap_err();
            assert!(matches!(&err, Error::InvalidId { id } if id == bad), "{bad}");
        }
        assert!(validate_id("a/b").unwrap_err().to_string().contains("A-Z a-z 0-9 _ . -"));
    }

    #[test]
    fn memory_images() {
        for yes in ["criu/pages-1.img", "criu/pages-1234.img"] {
            assert!(is_memory_image(yes), "{yes}");
        }
        for no in [
            "criu/pages-.img",
            "criu/pagemap-1.img",
            "pages-1.img",
            "criu/pages-1.img.tap",
            "criu/pages-x.img",
            "criu/x/pages-1.img",
        ] {
            assert!(!is_memory_image(no), "{no}");
        }
    }

    #[test]
    fn relative_paths() {
        for ok in ["config.json", "criu/pages-1.img", "a/b/c"] {
            assert_eq!(check_rel(ok), Ok(()), "{ok}");
        }
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/", "manifest.json", "criu/parent"] {
            assert!(check_rel(bad).is_err(), "{bad}");
        }
    }
}
