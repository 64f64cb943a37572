//! How a checkpoint's files are cut into chunks.
//!
//! Memory images (`criu/pages-*.img`) are cut with FastCDC at 8/32/128 KiB
//! (min/avg/max), every other file with FastCDC at 16/64/256 KiB.
//!
//! Why not a fixed grid for memory images: CRIU writes only the pages a
//! process has, mapping by mapping in address order, so between two dumps
//! most changes are in place, where a fixed 64 KiB grid does well; but the
//! first touch of a page in the middle of a mapping, a grown heap or a new
//! thread stack inserts pages, and every fixed chunk behind a shift that is
//! not a multiple of the chunk size changes. Measured on a 64 MiB image
//! (the `chunking_choice` test; bytes stored / bytes changed, lower is
//! better):
//!
//! | second dump                     | fixed 64K | cdc 4/16/64 | cdc 8/32/128 | cdc 16/64/256 |
//! |---------------------------------|-----------|-------------|--------------|---------------|
//! | 5% pages in place, runs <= 64   | 1.45      | 1.23        | 1.45         | 1.86          |
//! | 10% pages in place, runs <= 64  | 1.49      | 1.24        | 1.56         | 1.99          |
//! | 5% single pages in place        | 11.1      | 6.4         | 10.2         | 14.0          |
//! | 3 pages inserted at 1/3         | 3644      | 4.2         | 6.4          | 6.9           |
//! | chunks per 64 MiB               | 1024      | 3371        | 1678         | 848           |
//!
//! 8/32/128 matches the fixed grid where it is good and bounds the cost of
//! an insertion to a few chunks where the grid re-stores the rest of the
//! image; 4/16/64 dedups a little better but doubles the chunks (files on
//! the store, fsyncs, manifest size). Scattered single-page writes cost
//! about a chunk each with any chunking larger than a page.
//!
//! The rootfs diff is a tar whose entries shift when a file in it grows;
//! CRIU's other images are mostly smaller than 16 KiB and so one chunk each.

use std::io::{self, Read};

use serde::{Deserialize, Serialize};

use migrate_oci::layout::is_memory_image;

/// A way of cutting a file, recorded per file in the version manifest
/// (a fixed grid, measured above, is not one).
/// Restores do not need it (they concatenate the listed chunks); it tells
/// what a later version of the same file will dedup against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Chunking {
    /// FastCDC 2020, normalization level 1, seed 0.
    #[serde(rename = "fastcdc")]
    FastCdc { min: u32, avg: u32, max: u32 },
}

pub const MEMORY_CHUNKING: Chunking = Chunking::FastCdc { min: 8 << 10, avg: 32 << 10, max: 128 << 10 };
pub const OTHER_CHUNKING: Chunking = Chunking::FastCdc { min: 16 << 10, avg: 64 << 10, max: 256 << 10 };

/// The chunking for the file at `path` (relative to the checkpoint).
pub fn chunking_for(path: &str) -> Chunking {
    if is_memory_image(path) { MEMORY_CHUNKING } else { OTHER_CHUNKING }
}

/// The chunks of `reader`, in order; an empty file has none.
pub(crate) fn chunks<'r>(
    reader: impl Read + 'r,
    chunking: Chunking,
) -> Box<dyn Iterator<Item = io::Result<Vec<u8>>> + 'r> {
    let Chunking::FastCdc { min, avg, max } = chunking;
    Box::new(
        fastcdc::v2020::StreamCDC::new(reader, min as usize, avg as usize, max as usize)
            .map(|chunk| chunk.map(|c| c.data).map_err(io::Error::from)),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashSet;

    use super::*;

    /// A candidate of the measurement: a fixed grid, or what the store uses.
    #[derive(Clone, Copy)]
    enum Cut {
        Fixed(usize),
        Cdc(Chunking),
    }

    /// Chunks of `size` bytes from the start of the file; the last may be shorter.
    struct FixedChunks<R> {
        reader: R,
        size: usize,
        done: bool,
    }

    impl<R: Read> Iterator for FixedChunks<R> {
        type Item = io::Result<Vec<u8>>;

        fn next(&mut self) -> Option<Self::Item> {
            if self.done {
                return None;
            }
            let mut buf = vec![0; self.size];
            let mut len = 0;
            while len < self.size {
                match self.reader.read(&mut buf[len..]) {
                    Ok(0) => {
                        self.done = true;
                        break;
                    }
                    Ok(n) => len += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
            }
            buf.truncate(len);
            (len > 0).then_some(Ok(buf))
        }
    }

    /// A memory image of `pages` 4 KiB pages that compress about as badly as
    /// a heap does: each page is distinct, made by a small PRNG from `seed`.
    pub(crate) fn memory_image(pages: usize, seed: u64) -> Vec<u8> {
        let mut out = vec![0u8; pages * 4096];
        let mut rng = Rng(seed | 1);
        for word in out.chunks_exact_mut(8) {
            word.copy_from_slice(&rng.next().to_le_bytes());
        }
        out
    }

    /// xorshift64*: deterministic, and no dependency for tests.
    pub(crate) struct Rng(pub u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Rewrites `fraction` of the pages of `image` in place, in runs of 1 to
    /// `max_run` pages at random places, as a program dirtying parts of its
    /// heap does. Returns how many bytes changed.
    pub(crate) fn dirty_pages(image: &mut [u8], fraction: f64, max_run: usize, seed: u64) -> usize {
        let pages = image.len() / 4096;
        let target = (pages as f64 * fraction).round() as usize;
        let mut rng = Rng(seed | 1);
        let mut dirty = vec![false; pages];
        let mut count = 0;
        while count < target {
            let run = 1 + rng.below(max_run).min(target - count - 1);
            let start = rng.below(pages - run + 1);
            for p in start..start + run {
                if !dirty[p] {
                    dirty[p] = true;
                    count += 1;
                }
                for b in &mut image[p * 4096..p * 4096 + 4096] {
                    *b = !*b;
                }
                // A page inverted twice is back as it was; this keeps it changed.
                image[p * 4096] = rng.next() as u8;
            }
        }
        count * 4096
    }

    fn cut(data: &[u8], chunking: impl Into<Cut>) -> Vec<Vec<u8>> {
        let iter = match chunking.into() {
            Cut::Fixed(size) => Box::new(FixedChunks { reader: data, size, done: false }),
            Cut::Cdc(c) => chunks(data, c),
        };
        iter.collect::<io::Result<_>>().unwrap()
    }

    impl From<Chunking> for Cut {
        fn from(c: Chunking) -> Cut {
            Cut::Cdc(c)
        }
    }

    /// Bytes of `new` in chunks that `old` does not have.
    fn new_bytes(old: &[u8], new: &[u8], chunking: impl Into<Cut> + Copy) -> usize {
        let have: HashSet<Vec<u8>> = cut(old, chunking).into_iter().collect();
        cut(new, chunking).into_iter().filter(|c| !have.contains(c)).map(|c| c.len()).sum()
    }

    #[test]
    fn fixed_chunks_cover_the_file_in_order() {
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let parts = cut(&data, Cut::Fixed(65536));
        assert_eq!(parts.iter().map(Vec::len).collect::<Vec<_>>(), [65536, 65536, 65536, 3392]);
        assert_eq!(parts.concat(), data);
        assert!(cut(&[], Cut::Fixed(65536)).is_empty());
        assert_eq!(cut(&data[..65536], Cut::Fixed(65536)).len(), 1);
    }

    #[test]
    fn cdc_chunks_cover_the_file_within_bounds() {
        let data = memory_image(512, 3);
        let parts = cut(&data, OTHER_CHUNKING);
        assert_eq!(parts.concat(), data);
        assert!(parts[..parts.len() - 1].iter().all(|c| (16 << 10..=256 << 10).contains(&c.len())));
        assert_eq!(cut(b"small", OTHER_CHUNKING), [b"small".to_vec()]);
        assert!(cut(&[], OTHER_CHUNKING).is_empty());
    }

    #[test]
    fn memory_images_are_cut_finer() {
        assert_eq!(chunking_for("criu/pages-1.img"), MEMORY_CHUNKING);
        assert_eq!(chunking_for("criu/pagemap-1.img"), OTHER_CHUNKING);
        assert_eq!(chunking_for("rootfs-diff.tar"), OTHER_CHUNKING);
        let json = serde_json::to_value(OTHER_CHUNKING).unwrap();
        assert_eq!(json, serde_json::json!({"kind": "fastcdc", "min": 16384, "avg": 65536, "max": 262144}));
    }

    #[test]
    fn in_place_changes_cost_about_what_changed() {
        let old = memory_image(2048, 1);
        let mut new = old.clone();
        let changed = dirty_pages(&mut new, 0.05, 64, 2);
        let stored = new_bytes(&old, &new, MEMORY_CHUNKING);
        assert!(stored <= changed * 3 / 2 + (1 << 20), "{stored} new bytes for {changed} changed");
    }

    /// Prints how much each candidate chunking stores for a second dump of a
    /// memory image, in the cases a running container produces.
    #[test]
    #[ignore = "a measurement: run with --release --ignored --nocapture"]
    fn chunking_choice() {
        let candidates = [
            ("fixed 16 KiB", Cut::Fixed(16 << 10)),
            ("fixed 64 KiB", Cut::Fixed(64 << 10)),
            ("fixed 256 KiB", Cut::Fixed(256 << 10)),
            ("fastcdc 4/16/64 KiB", Cut::Cdc(Chunking::FastCdc { min: 4 << 10, avg: 16 << 10, max: 64 << 10 })),
            ("fastcdc 8/32/128 KiB", Cut::Cdc(MEMORY_CHUNKING)),
            ("fastcdc 16/64/256 KiB", Cut::Cdc(OTHER_CHUNKING)),
        ];
        let pages = 16384; // 64 MiB
        let old = memory_image(pages, 1);
        let mut cases: Vec<(String, Vec<u8>, usize)> = Vec::new();
        for (fraction, run) in [(0.01, 1), (0.05, 1), (0.05, 64), (0.10, 64), (0.50, 64)] {
            let mut new = old.clone();
            let changed = dirty_pages(&mut new, fraction, run, 7);
            cases.push((format!("{:>2}% pages in place, runs <= {run:>2}", fraction * 100.0), new, changed));
        }
        // A mapping grew by 64 pages in the middle: everything after shifts.
        let mut grown = old[..old.len() / 2].to_vec();
        grown.extend_from_slice(&memory_image(64, 99));
        grown.extend_from_slice(&old[old.len() / 2..]);
        cases.push(("64 pages inserted mid-image".into(), grown, 64 * 4096));
        let mut odd = old[..old.len() / 3].to_vec();
        odd.extend_from_slice(&memory_image(3, 98));
        odd.extend_from_slice(&old[old.len() / 3..]);
        cases.push(("3 pages inserted at 1/3".into(), odd, 3 * 4096));
        println!("chunks of the 64 MiB image:");
        for (cname, c) in &candidates {
            println!("  {cname}: {}", cut(&old, *c).len());
        }
        println!("new bytes stored / bytes changed, 64 MiB image");
        for (name, new, changed) in &cases {
            let row: Vec<String> = candidates
                .iter()
                .map(|(cname, c)| format!("{cname}: {:.2}", new_bytes(&old, new, *c) as f64 / *changed as f64))
                .collect();
            println!("{name:<36} {}", row.join("  "));
        }
    }
}
