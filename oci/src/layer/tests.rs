//! Both directions of the layer format, on synthetic upperdirs and on one
//! the kernel's overlayfs wrote, and the refusal of entries that would land
//! outside the root.

use std::{
    collections::BTreeMap,
    ffi::CString,
    fs,
    os::unix::{
        ffi::OsStrExt,
        fs::{FileTypeExt, MetadataExt, PermissionsExt, symlink},
    },
    path::{Path, PathBuf},
    time::{Duration, UNIX_EPOCH},
};

use nix::sys::stat::{Mode, SFlag, makedev, mknod};

use super::{apply_layer, write_layer};
use crate::{
    error::{Error, UnsafeEntry},
    testing::root_or_skip,
};

fn write(path: &Path, bytes: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

fn whiteout(path: &Path) {
    mknod(path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).unwrap();
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: NUL-terminated strings and a valid buffer, all alive for the call.
    let rc = unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(rc, 0, "setxattr {name} on {}: {}", path.display(), std::io::Error::last_os_error());
}

fn set_mtime(path: &Path, secs: u64) {
    fs::File::open(path).unwrap().set_modified(UNIX_EPOCH + Duration::from_secs(secs)).unwrap();
}

fn tar_of(upper: &Path, out: &Path) {
    let mut file = fs::File::create(out).unwrap();
    write_layer(upper, &mut file).unwrap();
}

/// (path, entry type) of every entry of a tar, in order.
fn entries(tar: &Path) -> Vec<(String, tar::EntryType)> {
    let mut archive = tar::Archive::new(fs::File::open(tar).unwrap());
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.path().unwrap().to_string_lossy().into_owned(), e.header().entry_type())
        })
        .collect()
}

/// What a tree looks like: path -> kind, content or link target, mode.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    for e in walkdir(root) {
        let m = e.symlink_metadata().unwrap();
        let what = if m.is_symlink() {
            format!("link {}", fs::read_link(&e).unwrap().display())
        } else if m.is_dir() {
            "dir".into()
        } else {
            format!("file {:?}", fs::read_to_string(&e).unwrap())
        };
        out.insert(e.strip_prefix(root).unwrap().to_owned(), format!("{what} {:o}", m.mode() & 0o7777));
    }
    out
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.clone());
        if p.symlink_metadata().unwrap().is_dir() {
            out.extend(walkdir(&p));
        }
    }
    out
}

#[test]
fn upperdir_round_trips_with_whiteouts_opaque_dirs_and_metadata() {
    if !root_or_skip("upperdir_round_trips_with_whiteouts_opaque_dirs_and_metadata") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (lower, upper, tar) = (tmp.path().join("lower"), tmp.path().join("upper"), tmp.path().join("diff.tar"));
    write(&lower.join("gone"), "deleted in the container");
    write(&lower.join("d/keep"), "kept");
    write(&lower.join("o/old"), "hidden by the opaque dir");
    write(&lower.join("o/sub/deep"), "hidden too");
    write(&lower.join("replaced"), "a file that becomes a directory");

    fs::create_dir_all(upper.join("d")).unwrap();
    whiteout(&upper.join("gone"));
    write(&upper.join("o/new"), "new in the opaque dir");
    set_xattr(&upper.join("o"), "trusted.overlay.opaque", b"y");
    write(&upper.join("d/added"), "added");
    write(&upper.join("new.txt"), "setuid, owned by 1234");
    std::os::unix::fs::chown(upper.join("new.txt"), Some(1234), Some(5678)).unwrap();
    fs::set_permissions(upper.join("new.txt"), fs::Permissions::from_mode(0o4755)).unwrap();
    set_mtime(&upper.join("new.txt"), 1_000_000_000);
    symlink("/etc/hostname", upper.join("sym")).unwrap();
    write(&upper.join("hl1"), "linked");
    fs::hard_link(upper.join("hl1"), upper.join("hl2")).unwrap();
    mknod(&upper.join("fifo"), SFlag::S_IFIFO, Mode::from_bits_truncate(0o640), 0).unwrap();
    write(&upper.join("replaced/inside"), "in the new directory");
    set_mtime(&upper.join("d"), 1_100_000_000);

    tar_of(&upper, &tar);
    let names = entries(&tar);
    let find = |p: &str| names.iter().position(|(n, _)| n.trim_end_matches('/') == p);
    assert!(find(".wh.gone").is_some(), "{names:?}");
    assert!(find("gone").is_none(), "{names:?}");
    assert_eq!(find("o/.wh..wh..opq"), find("o").map(|i| i + 1), "{names:?}");
    assert_eq!(names[find("hl2").unwrap()].1, tar::EntryType::Link);
    assert_eq!(names[find("fifo").unwrap()].1, tar::EntryType::Fifo);

    apply_layer(&tar, &lower).unwrap();
    assert!(!lower.join("gone").exists());
    assert!(!lower.join("o/old").exists() && !lower.join("o/sub").exists());
    assert_eq!(fs::read_to_string(lower.join("o/new")).unwrap(), "new in the opaque dir");
    assert_eq!(fs::read_to_string(lower.join("d/keep")).unwrap(), "kept");
    assert_eq!(fs::read_to_string(lower.join("d/added")).unwrap(), "added");
    let m = fs::metadata(lower.join("new.txt")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid(), m.mtime()), (0o4755, 1234, 5678, 1_000_000_000));
    assert_eq!(fs::metadata(lower.join("d")).unwrap().mtime(), 1_100_000_000);
    assert_eq!(fs::read_link(lower.join("sym")).unwrap(), Path::new("/etc/hostname"));
    assert_eq!(fs::metadata(lower.join("hl1")).unwrap().ino(), fs::metadata(lower.join("hl2")).unwrap().ino());
    assert!(fs::symlink_metadata(lower.join("fifo")).unwrap().file_type().is_fifo());
    assert_eq!(fs::read_to_string(lower.join("replaced/inside")).unwrap(), "in the new directory");
    // The whiteouts themselves never land.
    assert!(walkdir(&lower).iter().all(|p| !p.file_name().unwrap().to_string_lossy().starts_with(".wh.")));
}

#[test]
fn overlay_features_a_tar_cannot_carry_are_refused() {
    if !root_or_skip("overlay_features_a_tar_cannot_carry_are_refused") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let upper = tmp.path().join("upper");
    fs::create_dir_all(upper.join("moved")).unwrap();
    set_xattr(&upper.join("moved"), "trusted.overlay.redirect", b"/original");
    let err = write_layer(&upper, &mut std::io::sink()).unwrap_err();
    assert!(matches!(err, Error::UnsupportedOverlay { feature: "redirect_dir", .. }), "{err}");
}

/// The same, on an upperdir that the kernel wrote: what the container saw
/// through its overlay is what the lower layer plus the diff gives.
#[test]
fn kernel_overlay_upperdir_round_trips() {
    if !root_or_skip("kernel_overlay_upperdir_round_trips") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = |n: &str| {
        let p = tmp.path().join(n);
        fs::create_dir_all(&p).unwrap();
        p
    };
    let (lower, upper, work, merged, target) = (dir("lower"), dir("upper"), dir("work"), dir("merged"), dir("target"));
    for root in [&lower, &target] {
        write(&root.join("etc/gone"), "a");
        write(&root.join("etc/kept"), "b");
        write(&root.join("var/cache/x/old"), "c");
        write(&root.join("bin/tool"), "d");
    }
    let opts = format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), work.display());
    nix::mount::mount(Some("overlay"), &merged, Some("overlay"), nix::mount::MsFlags::empty(), Some(opts.as_str()))
        .expect("mount overlay (root on Linux can)");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = nix::mount::umount(self.0);
        }
    }
    let mounted = Unmount(&merged);
    fs::remove_file(merged.join("etc/gone")).unwrap();
    fs::remove_dir_all(merged.join("var/cache")).unwrap();
    write(&merged.join("var/cache/fresh"), "e");
    fs::set_permissions(merged.join("bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    write(&merged.join("home/app/data"), "f");
    symlink("../etc/kept", merged.join("home/link")).unwrap();
    let expected = snapshot(&merged);
    drop(mounted);

    let tar = tmp.path().join("diff.tar");
    tar_of(&upper, &tar);
    let names: Vec<_> = entries(&tar).into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"etc/.wh.gone".to_owned()), "{names:?}");
    assert!(names.contains(&"var/cache/.wh..wh..opq".to_owned()), "{names:?}");
    apply_layer(&tar, &target).unwrap();
    assert_eq!(snapshot(&target), expected);
}

/// Builds a tar entry by hand: the tar crate refuses to write `..`, and these
/// tests need exactly what a hostile layer would hold.
fn raw_entry(out: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, name: &str, link: Option<&str>, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    let gnu = h.as_gnu_mut().unwrap();
    gnu.name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_uid(nix::unistd::geteuid().as_raw().into());
    h.set_gid(nix::unistd::getegid().as_raw().into());
    h.set_size(data.len() as u64);
    if let Some(link) = link {
        h.set_link_name_literal(link).unwrap();
    }
    h.set_cksum();
    out.append(&h, data).unwrap();
}

fn apply_raw(build: impl FnOnce(&mut tar::Builder<Vec<u8>>), root: &Path) -> crate::Result<()> {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    let bytes = b.into_inner().unwrap();
    let tar = root.parent().unwrap().join("hostile.tar");
    fs::write(&tar, bytes).unwrap();
    apply_layer(&tar, root)
}

fn reason(r: crate::Result<()>) -> UnsafeEntry {
    match r {
        Err(Error::UnsafeLayerEntry { reason, .. }) => reason,
        other => panic!("expected an unsafe entry, got {other:?}"),
    }
}

#[test]
fn entries_that_escape_the_root_are_refused() {
    use tar::EntryType::{Link, Regular, Symlink};
    let tmp = tempfile::tempdir().unwrap();
    let (root, outside) = (tmp.path().join("root"), tmp.path().join("outside"));
    fs::create_dir_all(&root).unwrap();
    write(&outside.join("victim"), "must survive");
    let outside_str = outside.to_str().unwrap().to_owned();

    let r = apply_raw(|b| raw_entry(b, Regular, "a/../../evil", None, b"x"), &root);
    assert_eq!(reason(r), UnsafeEntry::ParentDir);
    assert!(!tmp.path().join("evil").exists());

    let r = apply_raw(
        |b| {
            raw_entry(b, Symlink, "a", Some(&outside_str), b"");
            raw_entry(b, Regular, "a/passwd", None, b"x");
        },
        &root,
    );
    assert_eq!(reason(r), UnsafeEntry::ThroughSymlink { link: "a".into() });
    assert!(!outside.join("passwd").exists());

    let r = apply_raw(|b| raw_entry(b, Regular, "a/.wh.victim", None, b""), &root);
    assert_eq!(reason(r), UnsafeEntry::ThroughSymlink { link: "a".into() });
    let r = apply_raw(|b| raw_entry(b, Regular, "a/.wh..wh..opq", None, b""), &root);
    assert_eq!(reason(r), UnsafeEntry::ThroughSymlink { link: "a".into() });
    assert_eq!(fs::read_to_string(outside.join("victim")).unwrap(), "must survive");

    let r = apply_raw(|b| raw_entry(b, Link, "h", Some("../outside/victim"), b""), &root);
    assert!(matches!(reason(r), UnsafeEntry::LinkTarget { reason, .. } if *reason == UnsafeEntry::ParentDir));
    let r = apply_raw(|b| raw_entry(b, Link, "h", Some("a/victim"), b""), &root);
    assert!(
        matches!(reason(r), UnsafeEntry::LinkTarget { reason, .. } if matches!(*reason, UnsafeEntry::ThroughSymlink { .. }))
    );

    let r = apply_raw(|b| raw_entry(b, Regular, "d/.wh.", None, b""), &root);
    assert_eq!(reason(r), UnsafeEntry::EmptyWhiteout);

    let err = apply_raw(|b| raw_entry(b, Regular, "a/../../evil", None, b"x"), &root).unwrap_err().to_string();
    assert!(err.contains("entry a/../../evil climbs out of the root with '..'"), "{err}");
}

#[test]
fn absolute_names_and_links_stay_inside() {
    use tar::EntryType::{Regular, Symlink};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs::create_dir_all(&root).unwrap();
    apply_raw(
        |b| {
            raw_entry(b, Regular, "/etc/abs", None, b"inside");
            raw_entry(b, Regular, "./rel", None, b"also");
            // An absolute target is the container's business, not a path here.
            raw_entry(b, Symlink, "etc/link", Some("/etc/passwd"), b"");
        },
        &root,
    )
    .unwrap();
    assert_eq!(fs::read_to_string(root.join("etc/abs")).unwrap(), "inside");
    assert_eq!(fs::read_to_string(root.join("rel")).unwrap(), "also");
    assert_eq!(fs::read_link(root.join("etc/link")).unwrap(), Path::new("/etc/passwd"));
}

#[test]
fn a_damaged_tar_is_reported_as_such() {
    let tmp = tempfile::tempdir().unwrap();
    let tar = tmp.path().join("bad.tar");
    fs::write(&tar, vec![0x41; 1024]).unwrap();
    let err = apply_layer(&tar, tmp.path()).unwrap_err();
    assert!(matches!(err, Error::LayerRead { .. }), "{err}");
}
