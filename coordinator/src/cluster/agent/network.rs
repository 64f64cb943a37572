//! A cluster container's network on this host, made before the container
//! (whose OCI spec then joins [`netns_path`]) and independent of the shim:
//! a named network namespace whose `eth0` has the container's IP and MAC,
//! one end of a veth pair whose other end is a port of the host's bridge,
//! over the host's NIC. So every container of the cluster is on one L2
//! segment with the hosts, and keeps its address wherever it runs.
//!
//! The host's end of the veth is the migration's network lock. Down, no
//! frame reaches the container, so a frozen source's kernel answers no
//! segment of its established connections (an RST would kill them) while
//! the target restores them; and the container's own side keeps its
//! address and routes (the link only loses carrier), so a restore into a
//! namespace created [`Link::Down`] and a resume after an abort find it as
//! it was. The target brings its end up after the restore and
//! [`announce`]s, so that the bridges and peers learn the new place at
//! once instead of after their caches expire.
//!
//! Namespaces are made and joined with iproute2's `ip`, as an operator
//! would; the functions block (for milliseconds): from async code, call
//! them on a blocking thread.

use std::ffi::CString;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::proto::NetworkIdentity;

/// Where `ip netns` keeps the namespaces it names.
const NETNS_DIR: &str = "/run/netns";
/// The container's interface, as in any container.
const CONTAINER_IF: &str = "eth0";
/// Gratuitous ARP rounds (a request and a reply each) and their spacing:
/// one lost frame must not leave a peer on the old host.
const ANNOUNCE_ROUNDS: u32 = 3;
const ANNOUNCE_INTERVAL: Duration = Duration::from_millis(50);

/// The state of the container's link to the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Up,
    Down,
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(
        "{id:?} cannot name a network namespace: a container id is letters and digits, \
         separated by single . _ or -, at most 76 characters"
    )]
    BadId { id: String },
    #[error("container {id}'s network identity {identity:?} is not an IPv4 address, prefix length and MAC")]
    BadIdentity { id: String, identity: NetworkIdentity },
    #[error("container {id} already has a network on this host ({path}); destroy it first")]
    Exists { id: String, path: PathBuf },
    #[error("`{command}` failed: {stderr}{hint}")]
    Command { command: String, stderr: String, hint: String },
    #[error("`{command}` gave output this agent cannot read ({reason}): {output}")]
    Output { command: String, reason: String, output: String },
    #[error("container {id} has no IPv4 address on {CONTAINER_IF} to announce")]
    NoAddress { id: String },
    #[error("announcing container {id}'s address ({doing}): {source}")]
    Announce { id: String, doing: &'static str, source: std::io::Error },
}

/// The network namespace file of container `id`, for the OCI spec's
/// `linux.namespaces` entry of type `network`.
pub fn netns_path(id: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(netns_name(id))
}

fn netns_name(id: &str) -> String {
    format!("cmc-{id}")
}

/// The host's end of the veth. Interface names have at most 15 bytes and
/// ids up to 76: a hash of the id, short enough and unique in practice
/// (40 bits).
fn host_veth(id: &str) -> String {
    let hash = Sha256::digest(id.as_bytes());
    let hex: String = hash[..5].iter().map(|b| format!("{b:02x}")).collect();
    format!("cmv{hex}")
}

/// containerd's rule for identifiers, which also keeps the namespace's
/// file name plain.
fn check_id(id: &str) -> Result<(), NetworkError> {
    let parts_ok = id.split(['.', '_', '-']).all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric()));
    if id.is_empty() || id.len() > 76 || !parts_ok {
        return Err(NetworkError::BadId { id: id.to_string() });
    }
    Ok(())
}

/// Makes container `id`'s network namespace, its `eth0` with `identity`,
/// and its veth on `bridge` with the host's end `link`; returns the
/// namespace's path. Refuses if the container has one already; on failure
/// nothing of it is left.
pub fn create(id: &str, identity: &NetworkIdentity, bridge: &str, link: Link) -> Result<PathBuf, NetworkError> {
    check_id(id)?;
    let bad_identity = || NetworkError::BadIdentity { id: id.to_string(), identity: identity.clone() };
    let address: Ipv4Addr = identity.ip.parse().map_err(|_| bad_identity())?;
    if !(1..=32).contains(&identity.prefix_len) || parse_mac(&identity.mac).is_none() {
        return Err(bad_identity());
    }
    let path = netns_path(id);
    if path.exists() {
        return Err(NetworkError::Exists { id: id.to_string(), path });
    }
    let ns = netns_name(id);
    ip(&["netns", "add", &ns], "")?;
    let veth = host_veth(id);
    let address = format!("{address}/{}", identity.prefix_len);
    let made = (|| {
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", CONTAINER_IF, "netns", &ns], "")?;
        ip(&["-n", &ns, "link", "set", CONTAINER_IF, "address", &identity.mac], "")?;
        ip(&["-n", &ns, "addr", "add", &address, "dev", CONTAINER_IF], "")?;
        ip(&["-n", &ns, "link", "set", "lo", "up"], "")?;
        ip(&["-n", &ns, "link", "set", CONTAINER_IF, "up"], "")?;
        let hint = format!("; is {bridge} (the agent's --bridge) a bridge on this host?");
        ip(&["link", "set", &veth, "master", bridge], &hint)?;
        set_link(id, link)
    })();
    if let Err(e) = made {
        if let Err(cleanup) = destroy(id) {
            log::warn!("could not remove the half-made network of container {id}: {cleanup}");
        }
        return Err(e);
    }
    Ok(path)
}

/// Brings the host's end of container `id`'s veth up or down.
pub fn set_link(id: &str, link: Link) -> Result<(), NetworkError> {
    check_id(id)?;
    let state = match link {
        Link::Up => "up",
        Link::Down => "down",
    };
    ip(&["link", "set", &host_veth(id), state], "")
}

/// Removes container `id`'s veth and network namespace; nothing to remove
/// is no error.
pub fn destroy(id: &str) -> Result<(), NetworkError> {
    check_id(id)?;
    // The veth first: deleting the namespace's name leaves the namespace
    // (and its end of the veth) alive while a process is still in it.
    match ip(&["link", "del", &host_veth(id)], "") {
        Err(NetworkError::Command { stderr, .. }) if stderr.contains("Cannot find device") => {}
        other => other?,
    }
    match ip(&["netns", "del", &netns_name(id)], "") {
        Err(NetworkError::Command { stderr, .. }) if stderr.contains("No such file") => Ok(()),
        other => other,
    }
}

/// Sends gratuitous ARP (requests and replies for its own address) from
/// container `id`'s `eth0`, so that every bridge on the way moves the MAC
/// to this port and peers that cached it update their entry. Call it once
/// the link is up.
pub fn announce(id: &str) -> Result<(), NetworkError> {
    check_id(id)?;
    let ns = netns_name(id);
    let (mac, ip) = eth0_address(id, &ns)?;
    let netns = File::open(netns_path(id)).map_err(|source| NetworkError::Announce {
        id: id.to_string(),
        doing: "opening its namespace",
        source,
    })?;
    let owner = id.to_string();
    // Joining a network namespace changes the calling thread's: a thread
    // of its own, which ends with it.
    std::thread::spawn(move || -> Result<(), NetworkError> {
        let fail = |doing, source| NetworkError::Announce { id: owner.clone(), doing, source };
        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| fail("joining its namespace", e.into()))?;
        let socket = arp_socket().map_err(|e| fail("opening a packet socket", e))?;
        let ifindex = interface_index(CONTAINER_IF).map_err(|e| fail("finding eth0", e))?;
        for round in 0..ANNOUNCE_ROUNDS {
            if round > 0 {
                std::thread::sleep(ANNOUNCE_INTERVAL);
            }
            for op in [ARP_REQUEST, ARP_REPLY] {
                send_broadcast(&socket, ifindex, &garp_frame(mac, ip.octets(), op)).map_err(|e| fail("sending", e))?;
            }
        }
        Ok(())
    })
    .join()
    .expect("the announcing thread does not panic")
}

/// The MAC and first IPv4 address of the container's eth0.
fn eth0_address(id: &str, ns: &str) -> Result<([u8; 6], Ipv4Addr), NetworkError> {
    #[derive(serde::Deserialize)]
    struct Interface {
        address: String,
        #[serde(default)]
        addr_info: Vec<Addr>,
    }
    #[derive(serde::Deserialize)]
    struct Addr {
        family: String,
        local: String,
    }
    let args = ["-n", ns, "-j", "addr", "show", "dev", CONTAINER_IF];
    let output = ip_output(&args, "")?;
    let unreadable =
        |reason: String| NetworkError::Output { command: command_line(&args), reason, output: output.clone() };
    let links: Vec<Interface> = serde_json::from_str(&output).map_err(|e| unreadable(e.to_string()))?;
    let link = links.first().ok_or_else(|| unreadable("no interface".into()))?;
    let mac = parse_mac(&link.address).ok_or_else(|| unreadable(format!("MAC {:?}", link.address)))?;
    let ip = link
        .addr_info
        .iter()
        .find(|a| a.family == "inet")
        .ok_or_else(|| NetworkError::NoAddress { id: id.to_string() })?;
    let ip = ip.local.parse().map_err(|_| unreadable(format!("address {:?}", ip.local)))?;
    Ok((mac, ip))
}

fn parse_mac(mac: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = mac.split(':');
    for byte in &mut out {
        let part = parts.next().filter(|p| p.len() == 2)?;
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

const ETH_P_ARP: u16 = 0x0806;
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;
const BROADCAST: [u8; 6] = [0xff; 6];

/// An Ethernet frame with an ARP packet in which `mac` says it has `ip`:
/// sender and target address both `ip` (RFC 5227's announcement, as
/// `arping -U` and `-A` send).
fn garp_frame(mac: [u8; 6], ip: [u8; 4], op: u16) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&op.to_be_bytes());
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip);
    // The target hardware address: unknown in a request, ours in a reply.
    if op == ARP_REPLY {
        f[32..38].copy_from_slice(&mac);
    }
    f[38..42].copy_from_slice(&ip);
    f
}

fn arp_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the descriptor is owned
    // by the OwnedFd from here on.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, ETH_P_ARP.to_be() as i32) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn interface_index(name: &str) -> std::io::Result<i32> {
    let name = CString::new(name).expect("interface names have no NUL");
    // SAFETY: name is a valid C string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(index as i32)
}

fn send_broadcast(socket: &OwnedFd, ifindex: i32, frame: &[u8]) -> std::io::Result<()> {
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = ETH_P_ARP.to_be();
    to.sll_ifindex = ifindex;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&BROADCAST);
    // SAFETY: frame and to are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&to as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn command_line(args: &[&str]) -> String {
    format!("ip {}", args.join(" "))
}

/// Runs `ip ARGS`; its stderr (and `hint`) in the error if it fails.
fn ip(args: &[&str], hint: &str) -> Result<(), NetworkError> {
    ip_output(args, hint).map(drop)
}

fn ip_output(args: &[&str], hint: &str) -> Result<String, NetworkError> {
    let failed = |stderr: String| NetworkError::Command { command: command_line(args), stderr, hint: hint.to_string() };
    let output =
        Command::new("ip").args(args).output().map_err(|e| failed(format!("cannot run ip (iproute2): {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        return Err(failed(if stderr.is_empty() { output.status.to_string() } else { stderr }));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests;
