//! memtick: a memory workload whose state can be checked after a checkpoint.
//!
//!   memtick --mib N [--interval-ms MS] [--dirty-percent P] [--out FILE] [--hold FILE]
//!
//! Fills N MiB with a pattern derived from (page index, generation), prints
//! `ready mib=N`, then ticks forever: dirties P% of the pages (a rotating
//! window, each page's generation bumped and its pattern rewritten), verifies a
//! rotating sample of pages, and prints
//! `tick=<n> gap_ms=<gap> max_gap_ms=<max> unix_ms=<wall clock>
//! wall_gap_ms=<gap> max_wall_gap_ms=<max>`.
//! The gap is measured on CLOCK_MONOTONIC, which keeps counting while the
//! process is frozen, so `max_gap_ms` minus the interval is the longest freeze
//! (e.g. a checkpoint). A restored process is another matter: CRIU restores it
//! in a time namespace whose offsets continue CLOCK_MONOTONIC from the dump,
//! so the time between dump and restore does not show in `gap_ms`. The wall
//! clock (CLOCK_REALTIME) has no namespace: `wall_gap_ms` is the same gap on
//! it, which does count the time a process spent checkpointed, moved and
//! restored (on hosts whose clocks agree). A page that does not hold its expected pattern is
//! reported as `CORRUPT page=..` on stderr, with exit status 3. SIGTERM ends it
//! with `exiting tick=<n>` and exit status 0.
//!
//! With `--hold FILE`, memtick keeps `FILE.0` open, and after every tick
//! that finds it was frozen (a gap over three intervals) renames the file it
//! holds, `FILE.<n>`, to FILE and holds a new `FILE.<n+1>`: a file that goes
//! the moment a checkpoint thaws the container, which its checkpoint must
//! hold as it was at the dump for CRIU to reopen it on restore.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use migrate_testapps::{flag_on_termination, flag_value, reject_unknown, terminated};

const PAGE_SIZE: usize = 4096;
const WORDS_PER_PAGE: usize = PAGE_SIZE / 8;
const PAGES_PER_MIB: usize = (1 << 20) / PAGE_SIZE;
/// Each tick verifies this share of all pages (at least MIN_SAMPLE), so a full
/// sweep takes about 100 ticks whatever the size.
const SAMPLE_PER_MILLE: usize = 10;
const MIN_SAMPLE: usize = 64;
const EXIT_CORRUPT: u8 = 3;

/// One page-aligned 4 KiB page, so each logical page is one real page.
#[repr(C, align(4096))]
struct Page([u64; WORDS_PER_PAGE]);

/// splitmix64's finaliser: a cheap, well-spread hash.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The expected content of word `word` of page `index` at `generation`.
fn pattern_word(index: usize, generation: u32, word: usize) -> u64 {
    let seed = mix(((index as u64) << 32) ^ u64::from(generation) ^ 0x6d65_6d74_6963_6b00);
    seed.wrapping_add((word as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn fill(page: &mut Page, index: usize, generation: u32) {
    for (w, slot) in page.0.iter_mut().enumerate() {
        *slot = pattern_word(index, generation, w);
    }
}

/// The first word that differs from the expected pattern, if any.
fn first_mismatch(page: &Page, index: usize, generation: u32) -> Option<(usize, u64, u64)> {
    page.0.iter().enumerate().find_map(|(w, &found)| {
        let expected = pattern_word(index, generation, w);
        (found != expected).then_some((w, expected, found))
    })
}

/// The memory under test: pages plus the generation each should hold.
struct Memory {
    pages: Vec<Page>,
    generations: Vec<u32>,
    dirty_cursor: usize,
    verify_cursor: usize,
}

#[derive(Debug, PartialEq)]
struct Corruption {
    page: usize,
    generation: u32,
    word: usize,
    expected: u64,
    found: u64,
}

impl Memory {
    fn new(page_count: usize) -> Memory {
        let mut pages = Vec::with_capacity(page_count);
        for index in 0..page_count {
            let mut page = Page([0; WORDS_PER_PAGE]);
            fill(&mut page, index, 0);
            pages.push(page);
        }
        Memory { pages, generations: vec![0; page_count], dirty_cursor: 0, verify_cursor: 0 }
    }

    /// Rewrites the next `count` pages of the rotating window with their next
    /// generation.
    fn dirty(&mut self, count: usize) {
        let n = self.pages.len();
        for _ in 0..count.min(n) {
            let i = self.dirty_cursor;
            self.generations[i] = self.generations[i].wrapping_add(1);
            fill(&mut self.pages[i], i, self.generations[i]);
            self.dirty_cursor = (i + 1) % n;
        }
    }

    /// Checks the next `count` pages of the rotating sample.
    fn verify(&mut self, count: usize) -> Result<(), Corruption> {
        let n = self.pages.len();
        for _ in 0..count.min(n) {
            let i = self.verify_cursor;
            let generation = self.generations[i];
            if let Some((word, expected, found)) = first_mismatch(&self.pages[i], i, generation) {
                return Err(Corruption { page: i, generation, word, expected, found });
            }
            self.verify_cursor = (i + 1) % n;
        }
        Ok(())
    }
}

/// How many of `pages` pages make `percent` per cent, rounded up so that any
/// non-zero percentage dirties at least one page.
fn pages_for_percent(pages: usize, percent: f64) -> usize {
    if percent <= 0.0 {
        return 0;
    }
    ((pages as f64 * percent / 100.0).ceil() as usize).min(pages)
}

fn sample_size(pages: usize) -> usize {
    (pages * SAMPLE_PER_MILLE / 1000).max(MIN_SAMPLE).min(pages)
}

struct Options {
    mib: usize,
    interval: Duration,
    dirty_percent: f64,
    out: Option<PathBuf>,
    hold: Option<PathBuf>,
}

const USAGE: &str = "usage: memtick --mib N [--interval-ms MS] [--dirty-percent P] [--out FILE] [--hold FILE]";

fn parse_options(args: &[String]) -> Result<Options, String> {
    reject_unknown(args, &["--mib", "--interval-ms", "--dirty-percent", "--out", "--hold"])?;
    let mib = flag_value(args, "--mib")?.ok_or("--mib is required")?;
    let interval_ms: u64 = flag_value(args, "--interval-ms")?.unwrap_or(100);
    let dirty_percent: f64 = flag_value(args, "--dirty-percent")?.unwrap_or(0.0);
    if !(0.0..=100.0).contains(&dirty_percent) {
        return Err(format!("--dirty-percent must be within 0..=100, not {dirty_percent}"));
    }
    let out = flag_value::<String>(args, "--out")?.map(PathBuf::from);
    let hold = flag_value::<String>(args, "--hold")?.map(PathBuf::from);
    Ok(Options { mib, interval: Duration::from_millis(interval_ms), dirty_percent, out, hold })
}

/// Replaces `path` with `line` atomically, so a reader never sees half a line.
fn write_atomically(path: &Path, line: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, line)?;
    std::fs::rename(&tmp, path)
}

/// `--hold`: the file held open, `<path>.<n>`.
struct Held {
    path: PathBuf,
    n: u64,
    _file: std::fs::File,
}

impl Held {
    fn open(path: &Path) -> std::io::Result<Held> {
        let file = std::fs::File::create(Held::numbered(path, 0))?;
        Ok(Held { path: path.to_owned(), n: 0, _file: file })
    }

    fn numbered(path: &Path, n: u64) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// Moves the held file to its path and holds the next one.
    fn rotate(&mut self) -> std::io::Result<()> {
        std::fs::rename(Held::numbered(&self.path, self.n), &self.path)?;
        self.n += 1;
        self._file = std::fs::File::create(Held::numbered(&self.path, self.n))?;
        Ok(())
    }
}

fn unix_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

/// The wall-clock gap between two `unix_ms` stamps; 0 if the clock went back.
fn wall_gap(now_ms: u128, last_ms: u128) -> u128 {
    now_ms.saturating_sub(last_ms)
}

/// Prints a line and flushes it. Errors are ignored: a container's stdout may
/// go away (its reader detached) while memtick must keep running.
fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse_options(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("memtick: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    flag_on_termination();
    let mut held = match opts.hold.as_deref().map(Held::open).transpose() {
        Ok(held) => held,
        Err(e) => {
            eprintln!("memtick: --hold: {e}");
            return ExitCode::from(2);
        }
    };

    let page_count = opts.mib * PAGES_PER_MIB;
    let mut memory = Memory::new(page_count);
    let dirty_count = pages_for_percent(page_count, opts.dirty_percent);
    let sample = sample_size(page_count);
    emit(&format!("ready mib={}\n", opts.mib));

    let mut tick: u64 = 0;
    let mut last = Instant::now();
    let mut max_gap = Duration::ZERO;
    let mut last_wall = unix_ms();
    let mut max_wall_gap: u128 = 0;
    loop {
        if terminated() {
            emit(&format!("exiting tick={tick}\n"));
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(opts.interval);
        let now = Instant::now(); // CLOCK_MONOTONIC on Linux
        let gap = now - last;
        last = now;
        max_gap = max_gap.max(gap);
        tick += 1;
        if gap > opts.interval * 3
            && let Some(held) = &mut held
            && let Err(e) = held.rotate()
        {
            eprintln!("memtick: --hold: {e}");
        }

        memory.dirty(dirty_count);
        if let Err(c) = memory.verify(sample) {
            eprintln!(
                "CORRUPT page={} generation={} word={} expected={:#018x} found={:#018x} tick={tick}",
                c.page, c.generation, c.word, c.expected, c.found
            );
            return ExitCode::from(EXIT_CORRUPT);
        }

        let now_wall = unix_ms();
        let wall = wall_gap(now_wall, last_wall);
        last_wall = now_wall;
        max_wall_gap = max_wall_gap.max(wall);
        let line = format!(
            "tick={tick} gap_ms={} max_gap_ms={} unix_ms={now_wall} wall_gap_ms={wall} max_wall_gap_ms={max_wall_gap}\n",
            gap.as_millis(),
            max_gap.as_millis(),
        );
        emit(&line);
        if let Some(path) = &opts.out
            && let Err(e) = write_atomically(path, &line)
        {
            eprintln!("memtick: writing {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_gap_never_goes_negative() {
        assert_eq!(wall_gap(1_000_250, 1_000_000), 250);
        assert_eq!(wall_gap(1_000_000, 1_000_250), 0);
    }

    #[test]
    fn pattern_differs_by_page_generation_and_word() {
        assert_ne!(pattern_word(0, 0, 0), pattern_word(1, 0, 0));
        assert_ne!(pattern_word(0, 0, 0), pattern_word(0, 1, 0));
        assert_ne!(pattern_word(0, 0, 0), pattern_word(0, 0, 1));
    }

    #[test]
    fn verify_finds_a_flipped_bit_and_nothing_else() {
        let mut m = Memory::new(8);
        assert_eq!(m.verify(8), Ok(()));
        m.pages[5].0[17] ^= 1 << 9;
        let c = m.verify(8).unwrap_err();
        assert_eq!((c.page, c.generation, c.word), (5, 0, 17));
        assert_eq!(c.found, c.expected ^ (1 << 9));
    }

    #[test]
    fn a_page_left_at_an_old_generation_is_caught() {
        let mut m = Memory::new(4);
        m.dirty(4);
        // Page 2 "restored" from before the dirtying: old content, new bookkeeping.
        fill(&mut m.pages[2], 2, 0);
        assert_eq!(m.verify(4).unwrap_err().page, 2);
    }

    #[test]
    fn dirty_window_rotates_and_wraps() {
        let mut m = Memory::new(5);
        m.dirty(3);
        assert_eq!(m.generations, [1, 1, 1, 0, 0]);
        m.dirty(3);
        assert_eq!(m.generations, [2, 1, 1, 1, 1]);
        assert_eq!(m.verify(5), Ok(()));
    }

    #[test]
    fn verify_cursor_rotates_through_all_pages() {
        let mut m = Memory::new(3);
        m.verify(2).unwrap();
        m.pages[2].0[0] ^= 1;
        assert_eq!(m.verify(1).unwrap_err().page, 2);
    }

    #[test]
    fn a_held_file_rotates_to_its_path() {
        let dir = std::env::temp_dir().join(format!("memtick-hold-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("held");
        let mut held = Held::open(&path).unwrap();
        assert!(dir.join("held.0").exists() && !path.exists());
        held.rotate().unwrap();
        assert!(!dir.join("held.0").exists() && dir.join("held.1").exists() && path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn percentages_round_up_and_clamp() {
        assert_eq!(pages_for_percent(256, 0.0), 0);
        assert_eq!(pages_for_percent(256, 0.1), 1);
        assert_eq!(pages_for_percent(256, 50.0), 128);
        assert_eq!(pages_for_percent(256, 100.0), 256);
        assert_eq!(sample_size(10), 10);
        assert_eq!(sample_size(262_144), 2621);
    }

    #[test]
    fn pages_are_page_aligned() {
        let m = Memory::new(2);
        assert_eq!(m.pages.as_ptr() as usize % PAGE_SIZE, 0);
        assert_eq!(std::mem::size_of::<Page>(), PAGE_SIZE);
    }

    #[test]
    fn options_have_defaults_and_bounds() {
        let a = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let o = parse_options(&a("--mib 4")).unwrap();
        assert_eq!((o.mib, o.interval, o.dirty_percent), (4, Duration::from_millis(100), 0.0));
        assert!(o.out.is_none());
        assert!(parse_options(&a("--interval-ms 5")).is_err());
        assert!(parse_options(&a("--mib 1 --dirty-percent 101")).is_err());
    }

    #[test]
    fn out_file_is_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("memtick-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tick");
        write_atomically(&path, "tick=1\n").unwrap();
        write_atomically(&path, "tick=2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "tick=2\n");
        assert!(!dir.join("tick.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
