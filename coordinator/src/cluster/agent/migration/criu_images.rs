//! CRIU's images from the source's RAM to the target's, while CRIU still
//! writes them: the memory images (`pages-*.img`) are appended to and
//! never rewritten, so each is followed as it grows and its new bytes go
//! at once; every other image is sent whole once the dump is over. The
//! link is busy from the first page on, and the dump's own time is hidden
//! behind the transfer rather than added to it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use tokio::sync::mpsc;

use crate::proto::TransferChunk;

/// The largest piece of a file in one chunk.
const CHUNK: usize = 1 << 20;
/// How long the follower waits when CRIU has written nothing new.
const IDLE: Duration = Duration::from_millis(2);

/// Whether `name` is a memory image, which CRIU only appends to.
fn is_memory(name: &str) -> bool {
    name.starts_with("pages-") && name.ends_with(".img")
}

/// What the dump tells the follower: CRIU is done, or the stream ended
/// (the follower must stop then, not wait for room forever: the stream's
/// end does not always drop its receiver at once).
#[derive(Default)]
pub struct Signals {
    pub dumped: AtomicBool,
    pub stream_ended: AtomicBool,
}

/// Follows `dir` until CRIU is done, sending what it writes into it as
/// chunks on `tx`; then sends the rest and every other file. Returns the
/// bytes of memory images sent. Blocking.
pub fn follow(dir: &Path, signals: &Signals, tx: &mpsc::Sender<TransferChunk>) -> Result<u64> {
    let mut sent: Vec<(PathBuf, u64)> = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        // Read before the pass: a pass after CRIU finished sees everything.
        let finished = signals.dumped.load(Ordering::SeqCst);
        let mut moved = false;
        for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_memory(&name) {
                continue;
            }
            let at = match sent.iter_mut().find(|(p, _)| *p == entry.path()) {
                Some((_, at)) => at,
                None => {
                    sent.push((entry.path(), 0));
                    &mut sent.last_mut().expect("just pushed").1
                }
            };
            moved |= send_new(&entry.path(), &name, at, &mut buf, signals, tx)?;
        }
        if finished {
            break;
        }
        if !moved {
            std::thread::sleep(IDLE);
        }
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_memory(&name) && entry.file_type()?.is_file() {
            let mut at = 0;
            send_new(&entry.path(), &name, &mut at, &mut buf, signals, tx)?;
            if at == 0 {
                // An empty image is an image too.
                put(tx, TransferChunk { file: name, offset: 0, ..Default::default() }, signals)?;
            }
        }
    }
    Ok(sent.iter().map(|(_, at)| at).sum())
}

/// Sends what `path` holds beyond `at`; whether there was anything.
fn send_new(
    path: &Path,
    name: &str,
    at: &mut u64,
    buf: &mut [u8],
    signals: &Signals,
    tx: &mpsc::Sender<TransferChunk>,
) -> Result<bool> {
    let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut moved = false;
    loop {
        let n = file.read_at(buf, *at).with_context(|| format!("read {}", path.display()))?;
        if n == 0 {
            return Ok(moved);
        }
        let chunk =
            TransferChunk { file: name.to_string(), offset: *at, data: buf[..n].to_vec(), ..Default::default() };
        put(tx, chunk, signals)?;
        *at += n as u64;
        moved = true;
    }
}

fn put(tx: &mpsc::Sender<TransferChunk>, mut chunk: TransferChunk, signals: &Signals) -> Result<()> {
    loop {
        match tx.try_send(chunk) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Full(back)) if !signals.stream_ended.load(Ordering::SeqCst) => {
                chunk = back;
                std::thread::sleep(IDLE);
            }
            Err(_) => bail!("the stream of images to the target ended early"),
        }
    }
}

/// The target's side: writes a chunk where it belongs in `dir`.
pub fn write(dir: &Path, chunk: &TransferChunk) -> Result<()> {
    let name = chunk.file.as_str();
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        bail!("{name:?} is not an image file name");
    }
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    file.write_all_at(&chunk.data, chunk.offset).with_context(|| format!("write {}", path.display()))
}

/// The signals a dump shares with its follower.
pub fn signals() -> Arc<Signals> {
    Arc::new(Signals::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growing_memory_images_and_the_rest_arrive_whole() {
        let (src_dir, dst_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (src, dst) = (src_dir.path().to_path_buf(), dst_dir.path().to_path_buf());
        std::fs::write(src.join("pages-1.img"), vec![7u8; 3 * CHUNK + 5]).unwrap();
        std::fs::write(src.join("inventory.img"), b"inv").unwrap();
        std::fs::write(src.join("empty.img"), b"").unwrap();
        let signals = signals();
        let (tx, mut rx) = mpsc::channel(1024);
        let writer = {
            let (src, signals) = (src.clone(), signals.clone());
            std::thread::spawn(move || follow(&src, &signals, &tx))
        };
        // CRIU appends more while the follower runs, then finishes.
        std::thread::sleep(Duration::from_millis(20));
        let mut f = std::fs::OpenOptions::new().append(true).open(src.join("pages-1.img")).unwrap();
        std::io::Write::write_all(&mut f, &[9u8; 100]).unwrap();
        signals.dumped.store(true, Ordering::SeqCst);
        let memory = writer.join().unwrap().unwrap();
        assert_eq!(memory, (3 * CHUNK + 105) as u64);
        while let Ok(chunk) = rx.try_recv() {
            write(&dst, &chunk).unwrap();
        }
        for name in ["pages-1.img", "inventory.img", "empty.img"] {
            assert_eq!(std::fs::read(dst.join(name)).unwrap(), std::fs::read(src.join(name)).unwrap(), "{name}");
        }
        let bad = TransferChunk { file: "../x".into(), ..Default::default() };
        assert!(write(&dst, &bad).is_err());
    }
}
