//! A container's network interfaces, set up or down from the shim.
//!
//! After a restore: runc asks CRIU not to save a container's own network
//! namespace, so a restore recreates it bare, with the loopback interface
//! down: a restored server is then unreachable even from inside its
//! container (CRIU issue 590). runc and CNI always create containers with
//! loopback up, so the shim restores exactly that state.
//!
//! When the cluster fences a container (`fence`): its other interfaces go
//! down, so that the frozen copy holds no address another host now serves.

use std::{fs::File, os::fd::AsRawFd};

use nix::sched::{CloneFlags, setns};

use crate::error::{Error, Result};

/// Brings loopback up in the network namespace of `pid` if it is down.
pub fn loopback_up(pid: u32) -> Result<()> {
    in_namespace_of(pid, || set_link("lo", true))
}

/// Sets every interface but loopback in the network namespace of `pid` up
/// or down.
pub fn links(pid: u32, up: bool) -> Result<()> {
    let dev = format!("/proc/{pid}/net/dev");
    let text = std::fs::read_to_string(&dev).map_err(Error::io(format!("read {dev}")))?;
    // Two header lines, then "  NAME: counters...".
    let names: Vec<String> = text
        .lines()
        .skip(2)
        .filter_map(|line| Some(line.split_once(':')?.0.trim().to_string()))
        .filter(|name| name != "lo")
        .collect();
    in_namespace_of(pid, move || names.iter().try_for_each(|name| set_link(name, up)))
}

/// Runs `work` in a thread that has entered the network namespace of `pid`.
fn in_namespace_of(pid: u32, work: impl FnOnce() -> Result<()> + Send + 'static) -> Result<()> {
    let ns =
        File::open(format!("/proc/{pid}/ns/net")).map_err(Error::io(format!("open the network namespace of {pid}")))?;
    // setns changes only the calling thread; a thread of its own keeps the
    // shim's runtime threads in the shim's namespace.
    std::thread::spawn(move || -> Result<()> {
        setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| Error::io("enter the network namespace")(e.into()))?;
        work()
    })
    .join()
    .map_err(|_| Error::io("set the network namespace's links")(std::io::Error::other("the thread panicked")))?
}

/// Sets interface `name` up or down, if it is not already.
fn set_link(name: &str, up: bool) -> Result<()> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| Error::io(format!("open a socket to configure {name}"))(e.into()))?;
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
        let is_up = req.ifr_ifru.ifru_flags & libc::IFF_UP as libc::c_short != 0;
        if is_up == up {
            return Ok(());
        }
        req.ifr_ifru.ifru_flags ^= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            let what = if up { "up" } else { "down" };
            return Err(Error::io(format!("set {name} {what}"))(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}
