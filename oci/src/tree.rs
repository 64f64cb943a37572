//! Walks a checkpoint-shaped directory tree without following symlinks.

use std::{
    fs::Metadata,
    path::{Path, PathBuf},
};

use crate::error::{Error, Result};

pub(crate) struct Entry {
    /// Relative to the walked root, `/`-separated, as manifests name files.
    pub rel: String,
    pub path: PathBuf,
    /// lstat: a symlink is seen as a symlink.
    pub meta: Metadata,
}

/// Every entry below `root` (not `root` itself), each directory before its
/// contents, names in byte order.
pub(crate) fn walk(root: &Path) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    walk_into(root, "", &mut out)?;
    Ok(out)
}

fn walk_into(dir: &Path, prefix: &str, out: &mut Vec<Entry>) -> Result<()> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(Error::io("read directory", dir))? {
        let entry = entry.map_err(Error::io("read directory", dir))?;
        names.push(entry.file_name());
    }
    names.sort();
    for name in names {
        let path = dir.join(&name);
        // Manifests are JSON strings; CRIU and this crate only write ASCII
        // names, so anything else is a stranger.
        let Some(name) = name.to_str() else {
            return Err(Error::InvalidPath {
                path: path.to_string_lossy().into_owned(),
                reason: "its name is not UTF-8",
            });
        };
        let rel = if prefix.is_empty() { name.to_owned() } else { format!("{prefix}/{name}") };
        let meta = path.symlink_metadata().map_err(Error::io("stat", &path))?;
        let is_dir = meta.is_dir();
        out.push(Entry { rel: rel.clone(), path: path.clone(), meta });
        if is_dir {
            walk_into(&path, &rel, out)?;
        }
    }
    Ok(())
}

/// What a checkpoint cannot hold, named for error messages.
pub(crate) fn kind_name(meta: &Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_symlink() {
        "symlink"
    } else if t.is_socket() {
        "socket"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_char_device() || t.is_block_device() {
        "device node"
    } else if t.is_dir() {
        "directory"
    } else {
        "regular file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_depth_first_in_name_order_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("b/c")).unwrap();
        std::fs::write(root.join("b/c/f"), b"x").unwrap();
        std::fs::write(root.join("a"), b"").unwrap();
        std::os::unix::fs::symlink("/", root.join("l")).unwrap();
        let entries = walk(root).unwrap();
        let rels: Vec<_> = entries.iter().map(|e| e.rel.as_str()).collect();
        assert_eq!(rels, ["a", "b", "b/c", "b/c/f", "l"]);
        assert_eq!(kind_name(&entries[4].meta), "symlink");
    }
}
