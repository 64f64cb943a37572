//! CRIU's own account of a dump: how long the tasks were frozen, how many
//! pages it scanned and wrote. CRIU writes it as `stats-dump` into its work
//! directory (`--work-dir`, which defaults to the images directory).
//!
//! The image format, from CRIU's sources (criu/include/magic.h,
//! criu/image.c, criu/protobuf.c, images/stats.proto): two 32-bit magics,
//! IMG_SERVICE_MAGIC (0x55105940, the head of CRIU's service images) and
//! STATS_MAGIC (0x57093306); then one entry, a 32-bit length and that many
//! bytes of a protobuf `StatsEntry`. The numbers are in the host's byte
//! order; every architecture this runtime supports is little-endian.
//! The protobuf is small enough to read by hand rather than generate code.

use std::path::Path;

use crate::error::{Error, Result};

pub const STATS_DUMP_FILE: &str = "stats-dump";

const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;
const STATS_MAGIC: u32 = 0x5709_3306;

/// `dump_stats_entry`, times in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DumpStats {
    /// Freezing the tasks (the cgroup freezer or ptrace seizing).
    pub freezing_time_us: u64,
    /// From frozen to released: the downtime a dump causes.
    pub frozen_time_us: u64,
    /// Collecting memory into pipes while frozen.
    pub memdump_time_us: u64,
    /// Writing those pages out.
    pub memwrite_time_us: u64,
    pub pages_scanned: u64,
    /// Pages found unchanged in the parent images (incremental dumps).
    pub pages_skipped_parent: u64,
    pub pages_written: u64,
}

/// Why a stats image does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatsFormatError {
    #[error("it ends after {0} bytes, inside its {1}")]
    Truncated(usize, &'static str),
    #[error("its magic is {found:#010x}, expected {expected:#010x}")]
    BadMagic { found: u32, expected: u32 },
    #[error("its protobuf is malformed: {0}")]
    Malformed(&'static str),
    #[error("it holds no dump statistics (field {0} is missing)")]
    Missing(&'static str),
}

/// Reads `stats-dump` from `dir` (CRIU's work directory), or None if CRIU
/// left none there.
pub fn read_dump_stats(dir: &Path) -> Result<Option<DumpStats>> {
    let path = dir.join(STATS_DUMP_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(Error::Io { op: "read", path, source }),
    };
    parse_dump_stats(&bytes).map(Some).map_err(|source| Error::CriuStats { path, source })
}

fn parse_dump_stats(bytes: &[u8]) -> Result<DumpStats, StatsFormatError> {
    let mut r = Reader { bytes, pos: 0 };
    for expected in [IMG_SERVICE_MAGIC, STATS_MAGIC] {
        let found = r.u32_le("magic")?;
        if found != expected {
            return Err(StatsFormatError::BadMagic { found, expected });
        }
    }
    let len = r.u32_le("entry length")? as usize;
    let entry = r.take(len, "entry")?;
    // StatsEntry { optional DumpStatsEntry dump = 1; optional RestoreStatsEntry restore = 2; }
    let mut dump = None;
    for_each_field(entry, |field, value| {
        if let (1, Value::Bytes(b)) = (field, value) {
            dump = Some(b);
        }
    })?;
    parse_dump_entry(dump.ok_or(StatsFormatError::Missing("dump"))?)
}

fn parse_dump_entry(bytes: &[u8]) -> Result<DumpStats, StatsFormatError> {
    // Field numbers of dump_stats_entry; all of these are `required`.
    let mut v: [Option<u64>; 7] = [None; 7];
    for_each_field(bytes, |field, value| {
        if let (1..=7, Value::Varint(n)) = (field, value) {
            v[field as usize - 1] = Some(n);
        }
    })?;
    let get = |i: usize, name| v[i].ok_or(StatsFormatError::Missing(name));
    Ok(DumpStats {
        freezing_time_us: get(0, "freezing_time")?,
        frozen_time_us: get(1, "frozen_time")?,
        memdump_time_us: get(2, "memdump_time")?,
        memwrite_time_us: get(3, "memwrite_time")?,
        pages_scanned: get(4, "pages_scanned")?,
        pages_skipped_parent: get(5, "pages_skipped_parent")?,
        pages_written: get(6, "pages_written")?,
    })
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// Calls `f` with each field of a protobuf message, in order; unknown
/// fields are handed over too, for the caller to ignore.
fn for_each_field<'a>(bytes: &'a [u8], mut f: impl FnMut(u64, Value<'a>)) -> Result<(), StatsFormatError> {
    let mut r = Reader { bytes, pos: 0 };
    while !r.done() {
        let key = r.varint()?;
        let (field, wire_type) = (key >> 3, key & 7);
        let value = match wire_type {
            0 => Value::Varint(r.varint()?),
            1 => r.take(8, "fixed64 field").map(|_| Value::Fixed)?,
            2 => {
                let len = usize::try_from(r.varint()?).map_err(|_| StatsFormatError::Malformed("length too big"))?;
                Value::Bytes(r.take(len, "length-delimited field")?)
            }
            5 => r.take(4, "fixed32 field").map(|_| Value::Fixed)?,
            _ => return Err(StatsFormatError::Malformed("unknown wire type")),
        };
        f(field, value);
    }
    Ok(())
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], StatsFormatError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or(StatsFormatError::Truncated(self.bytes.len(), what))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u32_le(&mut self, what: &'static str) -> Result<u32, StatsFormatError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A base-128 varint: 7 bits a byte, low bits first, high bit set on all
    /// but the last byte; at most 10 bytes for 64 bits.
    fn varint(&mut self) -> Result<u64, StatsFormatError> {
        let mut value = 0u64;
        for i in 0..10 {
            let b = self.take(1, "varint")?[0];
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(StatsFormatError::Malformed("varint longer than 10 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by CRIU 4.2.1 (`criu dump -t PID -D d -W w --leave-running`
    /// of a `sleep`, on Linux 6.18, amd64); it appeared in the work dir w/.
    const REAL: &[u8] = include_bytes!("testdata/stats-dump");

    #[test]
    fn parses_a_real_stats_dump() {
        let stats = parse_dump_stats(REAL).unwrap();
        assert_eq!(
            stats,
            DumpStats {
                freezing_time_us: 2719,
                frozen_time_us: 26619,
                memdump_time_us: 18345,
                memwrite_time_us: 385,
                pages_scanned: 58,
                pages_skipped_parent: 0,
                pages_written: 31,
            }
        );
    }

    #[test]
    fn reads_from_a_directory_and_tolerates_its_absence() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_dump_stats(dir.path()).unwrap(), None);
        std::fs::write(dir.path().join(STATS_DUMP_FILE), REAL).unwrap();
        assert_eq!(read_dump_stats(dir.path()).unwrap().unwrap().pages_written, 31);
        std::fs::write(dir.path().join(STATS_DUMP_FILE), &REAL[..20]).unwrap();
        let err = read_dump_stats(dir.path()).unwrap_err();
        assert!(matches!(err, Error::CriuStats { source: StatsFormatError::Truncated(..), .. }), "{err}");
    }

    #[test]
    fn refuses_other_images() {
        let mut other = REAL.to_vec();
        other[4..8].copy_from_slice(&0x5710_5940u32.to_le_bytes());
        assert_eq!(
            parse_dump_stats(&other),
            Err(StatsFormatError::BadMagic { found: 0x5710_5940, expected: STATS_MAGIC })
        );
        // A restore's stats: field 2 only.
        let mut restore = REAL[..8].to_vec();
        restore.extend_from_slice(&4u32.to_le_bytes());
        restore.extend_from_slice(&[0x12, 0x02, 0x08, 0x01]);
        assert_eq!(parse_dump_stats(&restore), Err(StatsFormatError::Missing("dump")));
    }

    #[test]
    fn varints() {
        let mut r = Reader { bytes: &[0x96, 0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], pos: 0 };
        assert_eq!(r.varint().unwrap(), 150);
        assert_eq!(r.varint().unwrap(), u64::MAX);
        assert!(r.done());
        let mut r = Reader { bytes: &[0x80; 11], pos: 0 };
        assert!(r.varint().is_err());
    }
}
