//! The sync end to end: scan, encode, apply into another directory, and
//! the two trees compared entry by entry. Needs root (devices, owners,
//! trusted.* xattrs), as the snapshotter does.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{FileType, Mode, XattrFlags};

use super::send::read_xattrs;
use super::wire::{self, Enc, Meta};
use super::*;

struct Pair {
    _tmp: tempfile::TempDir,
    src: PathBuf,
    dst: PathBuf,
    index: Option<SyncIndex>,
}

impl Pair {
    fn new() -> Pair {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
        fs::create_dir(&src).unwrap();
        fs::create_dir(&dst).unwrap();
        Pair { _tmp: tmp, src, dst, index: None }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.src.join(rel)
    }

    /// One sync: returns the paths sent, the stream's size and the stats.
    fn sync(&mut self) -> (Vec<PathBuf>, Vec<PathBuf>, u64, ApplyStats) {
        // Past the racy window, so only real changes are sent again.
        std::thread::sleep(Duration::from_millis(120));
        let (delta, index) = scan(&self.src, self.index.as_ref()).unwrap();
        let mut stream = Vec::new();
        let n = write_delta(&self.src, &delta, &mut stream).unwrap();
        assert_eq!(n, stream.len() as u64);
        let stats = apply(&self.dst, &stream[..]).unwrap();
        self.index = Some(index);
        (delta.changed().map(Into::into).collect(), delta.removed().map(Into::into).collect(), n, stats)
    }

    fn assert_same(&self) {
        let (a, b) = (tree(&self.src), tree(&self.dst));
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "the same paths");
        for (path, ea) in &a {
            assert_eq!(ea, &b[path], "entry {path:?}");
        }
        assert_eq!(links(&self.src), links(&self.dst), "hard links");
    }
}

/// What must be equal of an entry on both sides.
#[derive(Debug, PartialEq)]
struct Entry {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    size: u64,
    rdev: u64,
    content: Option<Vec<u8>>,
    target: Option<PathBuf>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn tree(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = root.join(&rel);
        let m = fs::symlink_metadata(&full).unwrap();
        let mut xattrs = read_xattrs(&full).unwrap();
        xattrs.sort();
        out.insert(
            rel.clone(),
            Entry {
                mode: m.mode(),
                uid: m.uid(),
                gid: m.gid(),
                mtime: (m.mtime(), m.mtime_nsec()),
                size: if m.is_dir() { 0 } else { m.size() },
                rdev: m.rdev(),
                content: m.is_file().then(|| fs::read(&full).unwrap()),
                target: m.is_symlink().then(|| fs::read_link(&full).unwrap()),
                xattrs,
            },
        );
        if m.is_dir() {
            for e in fs::read_dir(&full).unwrap() {
                stack.push(rel.join(e.unwrap().file_name()));
            }
        }
    }
    out
}

/// Paths grouped by inode (groups of two or more).
fn links(root: &Path) -> Vec<Vec<PathBuf>> {
    let mut by_ino: HashMap<u64, Vec<PathBuf>> = HashMap::new();
    for rel in tree(root).keys() {
        let m = fs::symlink_metadata(root.join(rel)).unwrap();
        if !m.is_dir() {
            by_ino.entry(m.ino()).or_default().push(rel.clone());
        }
    }
    let mut groups: Vec<Vec<PathBuf>> = by_ino.into_values().filter(|g| g.len() > 1).collect();
    groups.iter_mut().for_each(|g| g.sort());
    groups.sort();
    groups
}

fn mknod(path: &Path, kind: FileType, mode: u32, dev: u64) {
    rustix::fs::mknodat(rustix::fs::CWD, path, kind, Mode::from_raw_mode(mode), dev).unwrap();
}

fn setxattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, XattrFlags::empty()).unwrap();
}

fn whiteout(path: &Path) {
    mknod(path, FileType::CharacterDevice, 0, 0);
}

#[test]
fn every_kind_of_entry_arrives() {
    let mut t = Pair::new();
    fs::create_dir(t.p("etc")).unwrap();
    fs::write(t.p("etc/conf"), b"key=value\n").unwrap();
    fs::set_permissions(t.p("etc/conf"), fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::lchown(t.p("etc/conf"), Some(1234), Some(5678)).unwrap();
    fs::write(t.p("etc/setuid"), b"#!/bin/sh\n").unwrap();
    std::os::unix::fs::lchown(t.p("etc/setuid"), Some(1), Some(1)).unwrap();
    fs::set_permissions(t.p("etc/setuid"), fs::Permissions::from_mode(0o4755)).unwrap();
    setxattr(
        &t.p("etc/setuid"),
        "security.capability",
        &[1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    );
    setxattr(&t.p("etc/conf"), "user.note", b"hello");
    symlink("conf", t.p("etc/link")).unwrap();
    symlink("/nowhere/at/all", t.p("dangling")).unwrap();
    std::os::unix::fs::lchown(t.p("dangling"), Some(42), Some(43)).unwrap();
    mknod(&t.p("fifo"), FileType::Fifo, 0o620, 0);
    mknod(&t.p("null"), FileType::CharacterDevice, 0o666, rustix::fs::makedev(1, 3));
    mknod(&t.p("loop9"), FileType::BlockDevice, 0o660, rustix::fs::makedev(7, 9));
    whiteout(&t.p("deleted-file"));
    fs::create_dir_all(t.p("var/opaque/sub")).unwrap();
    setxattr(&t.p("var/opaque"), "trusted.overlay.opaque", b"y");
    setxattr(&t.p("var/opaque/sub"), "user.overlay.opaque", b"y");
    fs::set_permissions(t.p("var"), fs::Permissions::from_mode(0o1777)).unwrap();
    std::os::unix::fs::lchown(t.p("var/opaque"), Some(7), Some(8)).unwrap();
    fs::write(t.p("etc/a"), b"linked").unwrap();
    fs::hard_link(t.p("etc/a"), t.p("var/b")).unwrap();
    fs::hard_link(t.p("etc/a"), t.p("c")).unwrap();
    fs::write(t.p("empty"), b"").unwrap();
    fs::set_permissions(&t.src, fs::Permissions::from_mode(0o755)).unwrap();
    setxattr(&t.src, "trusted.overlay.origin", b"root");

    let (sent, removed, _, stats) = t.sync();
    assert!(removed.is_empty());
    assert_eq!(sent.len() as u64, stats.entries);
    t.assert_same();
    assert_eq!(fs::symlink_metadata(t.dst.join("etc/setuid")).unwrap().mode() & 0o7777, 0o4755, "set-uid kept");
}

#[test]
fn sparse_files_keep_their_holes() {
    let mut t = Pair::new();
    let f = fs::File::create(t.p("sparse")).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[0xab; 3 << 20], 0).unwrap(); // 3 MiB of data (more than a chunk)
    f.write_all_at(b"tail", 200 << 20).unwrap(); // then a 197 MiB hole
    f.set_len(300 << 20).unwrap(); // and a hole at the end
    drop(f);
    let (_, _, bytes, stats) = t.sync();
    assert!(bytes < 4 << 20, "holes are not sent ({bytes} bytes)");
    assert_eq!(stats.file_bytes, (3 << 20) + 4096, "the data extents only (the tail's block)");
    t.assert_same();
    let (s, d) = (fs::metadata(t.p("sparse")).unwrap(), fs::metadata(t.dst.join("sparse")).unwrap());
    assert_eq!(d.len(), 300 << 20);
    assert_eq!(d.blocks(), s.blocks(), "the same blocks allocated");
}

#[test]
fn a_second_scan_sends_only_what_changed() {
    let mut t = Pair::new();
    fs::create_dir(t.p("data")).unwrap();
    fs::write(t.p("data/big"), vec![7u8; 16 << 20]).unwrap();
    fs::write(t.p("data/small"), b"v1").unwrap();
    fs::write(t.p("other"), b"same").unwrap();
    let (_, _, first, _) = t.sync();
    assert!(first > 16 << 20);

    let (sent, removed, bytes, _) = t.sync();
    assert!(sent.is_empty() && removed.is_empty(), "nothing changed: {sent:?} {removed:?}");
    assert!(bytes < 64, "an empty delta is small ({bytes} bytes)");

    fs::write(t.p("data/small"), b"version two").unwrap();
    let (sent, _, bytes, _) = t.sync();
    assert_eq!(sent, [PathBuf::from("data/small")]);
    assert!(bytes < 4096, "the big file is not sent again ({bytes} bytes)");
    t.assert_same();

    fs::set_permissions(t.p("other"), fs::Permissions::from_mode(0o600)).unwrap();
    setxattr(&t.p("data/big"), "user.tag", b"x");
    let (sent, _, bytes, _) = t.sync();
    assert_eq!(sent, [PathBuf::from("data/big"), PathBuf::from("other")]);
    assert!(bytes > 16 << 20, "an inode whose ctime moved is sent whole");
    t.assert_same();
}

#[test]
fn removals_whiteouts_and_an_opaque_dir() {
    let mut t = Pair::new();
    fs::create_dir_all(t.p("d/deep/er")).unwrap();
    fs::write(t.p("d/x"), b"x").unwrap();
    fs::write(t.p("d/deep/er/y"), b"y").unwrap();
    fs::write(t.p("f"), b"f").unwrap();
    fs::write(t.p("gone"), b"g").unwrap();
    fs::create_dir(t.p("dir-then-file")).unwrap();
    fs::write(t.p("dir-then-file/inner"), b"i").unwrap();
    t.sync();

    // What overlay does for `rm -rf d; mkdir d; touch d/z; rm f; rm gone`
    // where d and f are in a lower layer too; and a directory replaced by a file.
    fs::remove_dir_all(t.p("d")).unwrap();
    fs::create_dir(t.p("d")).unwrap();
    setxattr(&t.p("d"), "trusted.overlay.opaque", b"y");
    fs::write(t.p("d/z"), b"z").unwrap();
    fs::remove_file(t.p("f")).unwrap();
    whiteout(&t.p("f"));
    fs::remove_file(t.p("gone")).unwrap();
    fs::remove_dir_all(t.p("dir-then-file")).unwrap();
    fs::write(t.p("dir-then-file"), b"now a file").unwrap();
    let (_, removed, _, stats) = t.sync();
    let removed: Vec<&str> = removed.iter().map(|p| p.to_str().unwrap()).collect();
    assert_eq!(removed, ["d/deep", "d/x", "dir-then-file/inner", "gone"], "the highest gone paths");
    assert_eq!(stats.removed, 4);
    t.assert_same();
    assert!(!t.dst.join("d/x").exists());
}

#[test]
fn hard_links_stay_one_inode_across_syncs() {
    let mut t = Pair::new();
    fs::write(t.p("a"), b"shared").unwrap();
    fs::hard_link(t.p("a"), t.p("b")).unwrap();
    let (_, _, bytes, _) = t.sync();
    assert!(bytes < 200, "the content once ({bytes} bytes)");
    t.assert_same();
    // A new name for the inode, and overlay-style whiteouts sharing one inode.
    fs::hard_link(t.p("a"), t.p("c")).unwrap();
    whiteout(&t.p("w1"));
    fs::hard_link(t.p("w1"), t.p("w2")).unwrap();
    t.sync();
    t.assert_same();
    // One name changed into a file of its own.
    fs::remove_file(t.p("b")).unwrap();
    fs::write(t.p("b"), b"own").unwrap();
    t.sync();
    t.assert_same();
}

#[test]
fn a_change_after_the_scan_is_caught_by_the_next_one() {
    let mut t = Pair::new();
    fs::write(t.p("log"), b"line 1\n").unwrap();
    std::thread::sleep(Duration::from_millis(120));
    let (delta, index) = scan(&t.src, None).unwrap();
    // Written between the scan and the send: the stream has the new
    // content or not, but the index has the stamp from before.
    fs::write(t.p("log"), b"line 1\nline 2\n").unwrap();
    let mut stream = Vec::new();
    write_delta(&t.src, &delta, &mut stream).unwrap();
    apply(&t.dst, &stream[..]).unwrap();
    t.index = Some(index);
    let (sent, _, _, _) = t.sync();
    assert_eq!(sent, [PathBuf::from("log")]);
    t.assert_same();
}

#[test]
fn a_change_in_the_same_clock_tick_is_sent_again() {
    let t = Pair::new();
    std::thread::sleep(Duration::from_millis(120));
    fs::write(t.p("hot"), b"1").unwrap();
    // Scanned at once: its ctime (and its directory's) is too recent to trust.
    let (_, index) = scan(&t.src, None).unwrap();
    let (delta, index) = scan(&t.src, Some(&index)).unwrap();
    assert_eq!(delta.changed().collect::<Vec<_>>(), [Path::new(""), Path::new("hot")]);
    std::thread::sleep(Duration::from_millis(120));
    let (_, index) = scan(&t.src, Some(&index)).unwrap();
    let (delta, _) = scan(&t.src, Some(&index)).unwrap();
    assert!(delta.is_empty(), "settled: {:?}", delta.changed().collect::<Vec<_>>());
}

/// A stream of hand-made records, as a hostile or broken sender could send.
fn stream(records: impl FnOnce(&mut Enc<&mut Vec<u8>>) -> u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut e = Enc::new(&mut out);
    e.raw(wire::MAGIC).unwrap();
    let n = records(&mut e);
    e.u8(wire::END).unwrap();
    e.u64(n).unwrap();
    out
}

fn file_record(e: &mut Enc<&mut Vec<u8>>, path: &[u8]) {
    e.u8(wire::FILE).unwrap();
    e.bytes(path).unwrap();
    e.meta(&Meta { mode: 0o100644, ..Meta::default() }).unwrap();
    e.u64(1).unwrap();
    e.u64(0).unwrap();
    e.u32(1).unwrap();
    e.raw(b"!").unwrap();
    e.u64(0).unwrap();
    e.u32(0).unwrap();
}

#[test]
fn paths_that_leave_the_upper_dir_are_refused() {
    let t = Pair::new();
    let outside = t._tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let refused = |s: Vec<u8>, what: &str| {
        let err = apply(&t.dst, &s[..]).unwrap_err();
        assert!(matches!(err, SyncError::Unsafe { .. }), "{what}: {err}");
        err.to_string()
    };
    let msg = refused(stream(|e| (file_record(e, b"../outside/x"), 1).1), "dot-dot");
    assert!(msg.contains("../outside/x") && msg.contains(".."), "{msg}");
    refused(stream(|e| (file_record(e, outside.join("y").as_os_str().as_encoded_bytes()), 1).1), "absolute");
    refused(stream(|e| (file_record(e, b"a//b"), 1).1), "empty component");
    refused(stream(|e| (file_record(e, b""), 1).1), "empty path of a file");
    // A symlink the stream made, then a path through it.
    let msg = refused(
        stream(|e| {
            e.u8(wire::SYMLINK).unwrap();
            e.bytes(b"evil").unwrap();
            e.meta(&Meta { mode: 0o120777, ..Meta::default() }).unwrap();
            e.bytes(outside.as_os_str().as_encoded_bytes()).unwrap();
            file_record(e, b"evil/z");
            2
        }),
        "through a symlink",
    );
    assert!(msg.contains("evil/z") && msg.contains("symlink"), "{msg}");
    // A symlink already in the target's upper dir.
    symlink(&outside, t.dst.join("pre")).unwrap();
    refused(stream(|e| (file_record(e, b"pre/w"), 1).1), "through an existing symlink");
    // A hard link to a file outside.
    fs::write(outside.join("secret"), b"s").unwrap();
    refused(
        stream(|e| {
            e.u8(wire::LINK).unwrap();
            e.bytes(b"copy").unwrap();
            e.bytes(b"../outside/secret").unwrap();
            1
        }),
        "a link out",
    );
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 1, "nothing written outside");
    // Removing through the existing symlink leaves the outside alone.
    apply(
        &t.dst,
        &stream(|e| {
            e.u8(wire::REMOVE).unwrap();
            e.bytes(b"pre/secret").unwrap();
            1
        })[..],
    )
    .unwrap();
    assert!(outside.join("secret").exists());
}

#[test]
fn a_cut_or_foreign_stream_is_an_error() {
    let mut t = Pair::new();
    fs::write(t.p("f"), vec![1u8; 10000]).unwrap();
    let (delta, _) = scan(&t.src, None).unwrap();
    let mut s = Vec::new();
    write_delta(&t.src, &delta, &mut s).unwrap();
    let err = apply(&t.dst, &s[..s.len() - 20]).unwrap_err();
    assert!(matches!(err, SyncError::Stream(_)), "{err}");
    assert!(err.to_string().contains("ended in the middle"), "{err}");
    let err = apply(&t.dst, &b"GET / HTTP/1.1\r\n"[..]).unwrap_err();
    assert!(matches!(err, SyncError::Format(_)), "{err}");
    t.index = None;
    t.sync();
    t.assert_same();
}

#[test]
fn an_error_names_the_path_and_the_cause() {
    let t = Pair::new();
    fs::create_dir(t.dst.join("ro")).unwrap();
    // A file where a chunk claims more than its size.
    let s = stream(|e| {
        e.u8(wire::FILE).unwrap();
        e.bytes(b"ro/f").unwrap();
        e.meta(&Meta { mode: 0o100644, ..Meta::default() }).unwrap();
        e.u64(1).unwrap();
        e.u64(0).unwrap();
        e.u32(5).unwrap();
        1
    });
    let msg = apply(&t.dst, &s[..]).unwrap_err().to_string();
    assert!(msg.contains("ro/f") && msg.contains("size is 1"), "{msg}");
    // A name too long for the file system.
    let long = "n".repeat(300);
    let s = stream(|e| (file_record(e, long.as_bytes()), 1).1);
    let msg = apply(&t.dst, &s[..]).unwrap_err().to_string();
    assert!(msg.starts_with("cannot ") && msg.contains(&long) && msg.contains("too long"), "{msg}");
}
