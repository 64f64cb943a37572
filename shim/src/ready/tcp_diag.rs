//! A container's TCP sockets on a port, asked of the kernel with
//! sock_diag (NETLINK_SOCK_DIAG): whether anything listens (the tcp:
//! probe), and whether the app still holds a connection (the probe's own,
//! which must be closed before the dump).
//!
//! Reading /proc/PID/net/tcp instead scans every socket of the host's TCP
//! hash table, milliseconds per read; a sock_diag dump limited to a few
//! states walks only those sockets of the container's own network
//! namespace. It runs on the watch's thread, inside that namespace (see
//! `watch`).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_DONE: u16 = 3;
const NLMSG_ERROR: u16 = 2;
const TCP_ESTABLISHED: u32 = 1;
const TCP_SYN_RECV: u32 = 3;
const TCP_CLOSE_WAIT: u32 = 8;
const TCP_LISTEN: u32 = 10;
/// The states of a server's end of a connection while the server still has
/// it: not yet accepted, open, or closed by the client only. Once the
/// server closes it too, what is left belongs to the kernel alone, and
/// CRIU, which dumps what the processes hold, never sees it.
const HELD: u32 = (1 << TCP_SYN_RECV) | (1 << TCP_ESTABLISHED) | (1 << TCP_CLOSE_WAIT);
/// struct nlmsghdr.
const NLMSG_HDR: usize = 16;
/// struct inet_diag_req_v2: family, protocol, ext, pad, states, sockid (48).
const REQ_LEN: usize = 56;

/// One question at a time on a netlink socket opened in the calling
/// thread's network namespace (so opened after its setns).
pub struct TcpDiag {
    socket: OwnedFd,
}

impl TcpDiag {
    pub fn new() -> std::io::Result<TcpDiag> {
        Ok(TcpDiag { socket: diag_socket()? })
    }

    /// Whether anything listens on `port`, over IPv4 or IPv6.
    pub fn listening(&self, port: u16) -> std::io::Result<bool> {
        self.any(1 << TCP_LISTEN, port)
    }

    /// Whether a connection to `port` is still held by whoever serves it.
    pub fn connection_held(&self, port: u16) -> std::io::Result<bool> {
        self.any(HELD, port)
    }

    fn any(&self, states: u32, port: u16) -> std::io::Result<bool> {
        for family in [libc::AF_INET, libc::AF_INET6] {
            if found(&self.socket, family as u8, states, port)? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

fn diag_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Dumps the TCP sockets of `family` in `states` (a bit per state) and
/// looks for local port `port`.
fn found(socket: &OwnedFd, family: u8, states: u32, port: u16) -> std::io::Result<bool> {
    let request = request(family, states);
    // SAFETY: send(2) of a buffer we own, to the kernel (no address needed).
    if unsafe { libc::send(socket.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 32 * 1024];
    let mut found = false;
    loop {
        // SAFETY: recv(2) into a buffer we own, at most its length.
        let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        match scan(&buf[..n as usize], port) {
            Scan::More(hit) => found |= hit,
            Scan::Done(hit) => return Ok(found || hit),
            Scan::Error(errno) => return Err(std::io::Error::from_raw_os_error(errno)),
        }
    }
}

fn request(family: u8, states: u32) -> [u8; NLMSG_HDR + REQ_LEN] {
    let mut m = [0u8; NLMSG_HDR + REQ_LEN];
    m[0..4].copy_from_slice(&((NLMSG_HDR + REQ_LEN) as u32).to_ne_bytes());
    m[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    m[6..8].copy_from_slice(&flags.to_ne_bytes());
    // inet_diag_req_v2 after the header; the socket id stays zero: all ports.
    m[16] = family;
    m[17] = libc::IPPROTO_TCP as u8;
    m[20..24].copy_from_slice(&states.to_ne_bytes());
    m
}

#[derive(Debug, PartialEq, Eq)]
enum Scan {
    More(bool),
    Done(bool),
    Error(i32),
}

/// Walks the netlink messages of one datagram; each inet_diag_msg carries
/// the socket id right after 4 bytes of family/state/timer/retrans, source
/// port first, in network byte order.
fn scan(mut data: &[u8], port: u16) -> Scan {
    let mut hit = false;
    while data.len() >= NLMSG_HDR {
        let len = u32::from_ne_bytes(data[0..4].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(data[4..6].try_into().unwrap());
        if len < NLMSG_HDR || len > data.len() {
            break;
        }
        match kind {
            NLMSG_DONE => return Scan::Done(hit),
            NLMSG_ERROR => {
                let errno = data.get(16..20).map(|b| i32::from_ne_bytes(b.try_into().unwrap())).unwrap_or(0);
                return if errno == 0 { Scan::Done(hit) } else { Scan::Error(-errno) };
            }
            SOCK_DIAG_BY_FAMILY => {
                if let Some(sport) = data.get(NLMSG_HDR + 4..NLMSG_HDR + 6) {
                    hit |= u16::from_be_bytes([sport[0], sport[1]]) == port;
                }
            }
            _ => {}
        }
        // Messages are 4-byte aligned.
        let next = (len + 3) & !3;
        data = data.get(next..).unwrap_or(&[]);
    }
    Scan::More(hit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_real_listener_in_this_namespace() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let diag = TcpDiag::new().unwrap();
        assert!(diag.listening(port).unwrap());
        // A connected socket on another port is no listener.
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        drop(listener);
        assert!(!diag.listening(port).unwrap());
    }

    #[test]
    fn a_connection_is_held_until_the_server_closes_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let diag = TcpDiag::new().unwrap();
        assert!(!diag.connection_held(port).unwrap());
        // Not yet accepted, then accepted.
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert!(diag.connection_held(port).unwrap());
        let (served, _) = listener.accept().unwrap();
        assert!(diag.connection_held(port).unwrap());
        // Closed by the client only: the server still holds it.
        drop(client);
        assert!(diag.connection_held(port).unwrap());
        drop(served);
        assert!(!diag.connection_held(port).unwrap());
    }

    #[test]
    fn scan_reads_ports_and_the_end_of_the_dump() {
        let mut msg = vec![0u8; NLMSG_HDR + 72];
        let len = msg.len() as u32;
        msg[0..4].copy_from_slice(&len.to_ne_bytes());
        msg[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        msg[NLMSG_HDR + 4..NLMSG_HDR + 6].copy_from_slice(&8080u16.to_be_bytes());
        let mut done = vec![0u8; NLMSG_HDR + 4];
        let len = done.len() as u32;
        done[0..4].copy_from_slice(&len.to_ne_bytes());
        done[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        assert_eq!(scan(&msg, 8080), Scan::More(true));
        assert_eq!(scan(&msg, 9090), Scan::More(false));
        assert_eq!(scan(&[msg.clone(), done].concat(), 8080), Scan::Done(true));
    }
}
