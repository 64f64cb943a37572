//! Network namespace repairs after a restore.
//!
//! runc asks CRIU not to save a container's own network namespace, so a
//! restore recreates it bare, with the loopback interface down: a restored
//! server is then unreachable even from inside its container (CRIU issue
//! 590). runc and CNI always create containers with loopback up, so the shim
//! restores exactly that state.

use std::{fs::File, os::fd::AsRawFd};

use nix::sched::{CloneFlags, setns};

use crate::error::{Error, Result};

/// Brings loopback up in the network namespace of `pid` if it is down.
pub fn loopback_up(pid: u32) -> Result<()> {
    let ns =
        File::open(format!("/proc/{pid}/ns/net")).map_err(Error::io(format!("open the network namespace of {pid}")))?;
    // setns changes only the calling thread; a thread of its own keeps the
    // shim's runtime threads in the shim's namespace.
    std::thread::spawn(move || -> Result<()> {
        setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| Error::io("enter the network namespace")(e.into()))?;
        set_up("lo")
    })
    .join()
    .map_err(|_| Error::io("bring loopback up")(std::io::Error::other("the thread panicked")))?
}

fn set_up(name: &str) -> Result<()> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| Error::io("open a socket to configure loopback")(e.into()))?;
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(Error::io(format!("read the flags of {name}"))(std::io::Error::last_os_error()));
        }
        if req.ifr_ifru.ifru_flags & libc::IFF_UP as libc::c_short != 0 {
            return Ok(());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(Error::io(format!("bring {name} up"))(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}
