//! Reading extended attributes, which is how overlayfs marks opaque
//! directories and other things a plain stat does not show.

use std::{ffi::CString, io, os::unix::ffi::OsStrExt, path::Path};

/// The value of attribute `name` of `path` (not following a final symlink),
/// or None if it has none or the file system keeps no attributes.
pub(crate) fn get(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::ErrorKind::InvalidInput)?;
    let c_name = CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    // Overlay's values are a byte ("y") or a path: start small, and ask for
    // the size only when that is not enough.
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: both strings are NUL-terminated and live across the call,
        // and the buffer is valid for writes of its length (0 asks the size).
        let n = unsafe { libc::lgetxattr(c_path.as_ptr(), c_name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if let Ok(n) = usize::try_from(n) {
            buf.truncate(n);
            return Ok(Some(buf));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENODATA | libc::ENOTSUP) => return Ok(None),
            Some(libc::ERANGE) => {
                // SAFETY: as above; a null buffer of length 0 asks the size.
                let size = unsafe { libc::lgetxattr(c_path.as_ptr(), c_name.as_ptr(), std::ptr::null_mut(), 0) };
                let size = usize::try_from(size).map_err(|_| io::Error::last_os_error())?;
                buf = vec![0u8; size.max(1)];
            }
            _ => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_attribute_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(get(dir.path(), "user.containerd-migrate.none").unwrap(), None);
        assert!(get(&dir.path().join("nope"), "user.x").is_err());
    }
}
