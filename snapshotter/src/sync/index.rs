//! What was sent of an upper dir: per path, the inode's stamp at the time
//! it was read. The next scan sends a path again when its stamp differs.

use std::collections::BTreeMap;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What was sent of an upper dir so far. Serializable (paths as strings,
/// bytes that are not UTF-8 escaped), so the agent can keep it between
/// syncs of one container; it is only meaningful for the upper dir it was
/// scanned from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncIndex {
    #[serde(with = "escaped_paths")]
    pub(super) entries: BTreeMap<PathBuf, Stamp>,
}

impl SyncIndex {
    /// How many paths (the root included) were sent.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// An inode's state as `lstat` gave it before its content was read. Any
/// change of content, metadata or xattrs moves its ctime, which nothing but
/// the kernel sets; the other fields catch a replaced inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Stamp {
    pub ino: u64,
    pub mode: u32,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    /// Stat'ed so soon after a change that a further change within the same
    /// tick of the kernel's coarse clock would leave the same ctime (git's
    /// "racy" entries): sent again by the next scan whatever its stamp.
    pub racy: bool,
}

impl Stamp {
    pub fn of(m: &std::fs::Metadata) -> Stamp {
        Stamp {
            ino: m.ino(),
            mode: m.mode(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            racy: false,
        }
    }

    /// Whether the inode may have changed since `self` was recorded.
    pub fn changed_since(&self, sent: &Stamp) -> bool {
        sent.racy || Stamp { racy: false, ..*self } != Stamp { racy: false, ..*sent }
    }
}

/// Paths as JSON strings: UTF-8 as it is, a backslash as `\\`, any other
/// byte as `\xNN`, so a name that is not UTF-8 survives.
mod escaped_paths {
    use super::*;
    use serde::de::Error;

    pub fn serialize<S: serde::Serializer>(m: &BTreeMap<PathBuf, Stamp>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(m.iter().map(|(p, st)| (escape(p), st)))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<PathBuf, Stamp>, D::Error> {
        let m = BTreeMap::<String, Stamp>::deserialize(d)?;
        m.into_iter().map(|(k, v)| Ok((unescape(&k).map_err(D::Error::custom)?, v))).collect()
    }

    pub fn escape(p: &Path) -> String {
        let mut out = String::new();
        for chunk in p.as_os_str().as_bytes().utf8_chunks() {
            out.push_str(&chunk.valid().replace('\\', "\\\\"));
            for b in chunk.invalid() {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
        out
    }

    pub fn unescape(s: &str) -> Result<PathBuf, String> {
        let mut out = Vec::with_capacity(s.len());
        let mut rest = s.as_bytes();
        while let Some((&b, tail)) = rest.split_first() {
            rest = tail;
            if b != b'\\' {
                out.push(b);
                continue;
            }
            match rest {
                [b'\\', tail @ ..] => {
                    out.push(b'\\');
                    rest = tail;
                }
                [b'x', h, l, tail @ ..] => {
                    let hex = std::str::from_utf8(&[*h, *l]).ok().and_then(|x| u8::from_str_radix(x, 16).ok());
                    out.push(hex.ok_or_else(|| format!("bad escape in index path {s:?}"))?);
                    rest = tail;
                }
                _ => return Err(format!("bad escape in index path {s:?}")),
            }
        }
        Ok(PathBuf::from(std::ffi::OsString::from_vec(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_are_not_utf8_survive_json() {
        let stamp = Stamp { ino: 1, mode: 0o100644, size: 2, mtime: (3, 4), ctime: (5, 6), racy: true };
        let odd = PathBuf::from(std::ffi::OsString::from_vec(b"a\\b/\xff\xfe-\xc3\xa9".to_vec()));
        let index = SyncIndex { entries: [(odd, stamp), (PathBuf::new(), stamp)].into_iter().collect() };
        let json = serde_json::to_string(&index).unwrap();
        assert_eq!(serde_json::from_str::<SyncIndex>(&json).unwrap(), index);
    }
}
