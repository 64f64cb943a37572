//! The cluster network's addresses: which container has which IP, kept in
//! the store under `ipam/<IP>` (the value is the owning container's id), so
//! a restarted coordinator (or another one over etcd) hands out no address
//! twice. An address is claimed by a write that succeeds only if the key
//! is absent; two coordinators racing for one address see one win and the
//! other move on to the next. A container keeps its address, and the MAC
//! derived from it, for its whole life, across migrations.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::proto::NetworkIdentity;
use crate::store::{Expect, Store, StoreError, Swap};

const PREFIX: &str = "ipam/";

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("every address of the container network {pool} is taken; remove containers or widen --container-range")]
    Exhausted { pool: Pool },
    #[error(
        "the stored record {key} does not name a container ({source}); was the state file written by a newer version?"
    )]
    Corrupt { key: String, source: std::string::FromUtf8Error },
    #[error("address {ip} changed under {attempts} writes in a row; try again")]
    Contended { ip: Ipv4Addr, attempts: u32 },
}

/// A malformed `--container-subnet` or `--container-range`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PoolError(String);

/// The addresses containers get: host numbers `first..=last` of `subnet`.
/// The rest of the subnet is for the hosts themselves (and the machine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    network: Ipv4Addr,
    prefix_len: u8,
    first: u32,
    last: u32,
}

impl Pool {
    /// `subnet` as `10.88.3.0/24`, `range` as host numbers `100-249` (so
    /// 10.88.3.100 to 10.88.3.249). The range may not hold the subnet's
    /// network or broadcast address.
    pub fn new(subnet: &str, range: &str) -> Result<Pool, PoolError> {
        let bad_subnet =
            || PoolError(format!("container subnet {subnet:?} is not an IPv4 network such as 10.88.3.0/24"));
        let (addr, len) = subnet.split_once('/').ok_or_else(bad_subnet)?;
        let addr = Ipv4Addr::from_str(addr).map_err(|_| bad_subnet())?;
        let prefix_len = len.parse::<u8>().ok().filter(|l| (8..=30).contains(l)).ok_or_else(|| {
            PoolError(format!("container subnet {subnet:?}: the prefix length must be 8 to 30 (a /24 is usual)"))
        })?;
        let mask = u32::MAX << (32 - prefix_len);
        if u32::from(addr) & !mask != 0 {
            return Err(PoolError(format!(
                "container subnet {subnet:?} has host bits set; did you mean {}/{prefix_len}?",
                Ipv4Addr::from(u32::from(addr) & mask)
            )));
        }
        let bad_range =
            || PoolError(format!("container range {range:?} is not FIRST-LAST host numbers such as 100-249"));
        let (first, last) = range.split_once('-').ok_or_else(bad_range)?;
        let first = first.trim().parse::<u32>().map_err(|_| bad_range())?;
        let last = last.trim().parse::<u32>().map_err(|_| bad_range())?;
        let broadcast = !mask;
        if first == 0 || first > last || last >= broadcast {
            return Err(PoolError(format!(
                "container range {range:?} must run upwards within 1-{} of {subnet} (0 is the network, {broadcast} the broadcast address)",
                broadcast - 1
            )));
        }
        Ok(Pool { network: addr, prefix_len, first, last })
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let host = u32::from(ip).wrapping_sub(u32::from(self.network));
        (self.first..=self.last).contains(&host)
    }

    fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        (self.first..=self.last).map(|h| Ipv4Addr::from(u32::from(self.network) + h))
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = |h: u32| Ipv4Addr::from(u32::from(self.network) + h);
        write!(f, "{}/{} ({} to {})", self.network, self.prefix_len, at(self.first), at(self.last))
    }
}

/// A locally administered unicast MAC that is a function of the IP, as
/// Docker makes them (02:42 and the address's four bytes): the container
/// keeps it wherever it runs, and two containers never share one.
pub fn mac_for(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("02:42:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// The address of container `container_id`: the one it already holds (a
/// retried request), else the first free one of `pool`.
pub async fn allocate(store: &dyn Store, pool: &Pool, container_id: &str) -> Result<NetworkIdentity, IpamError> {
    let identity =
        |ip: Ipv4Addr| NetworkIdentity { ip: ip.to_string(), prefix_len: u32::from(pool.prefix_len), mac: mac_for(ip) };
    let mut taken = std::collections::HashSet::new();
    for (key, v) in store.list(PREFIX).await? {
        let owner = decode(&key, v.value)?;
        let Ok(ip) = key[PREFIX.len()..].parse::<Ipv4Addr>() else { continue };
        if owner == container_id && pool.contains(ip) {
            return Ok(identity(ip));
        }
        taken.insert(ip);
    }
    for ip in pool.addresses().filter(|ip| !taken.contains(ip)) {
        // A conflict means another allocation took it since the list: on
        // to the next.
        let claimed = store.compare_and_swap(&key(ip), Expect::Absent, container_id.into()).await?;
        if let Swap::Applied(_) = claimed {
            return Ok(identity(ip));
        }
    }
    Err(IpamError::Exhausted { pool: *pool })
}

/// Frees `ip` if `container_id` still holds it. False if it held nothing
/// there (already released, or the address went to another container):
/// releasing is safe to repeat.
pub async fn release(store: &dyn Store, ip: Ipv4Addr, container_id: &str) -> Result<bool, IpamError> {
    const MAX_ATTEMPTS: u32 = 16;
    let key = key(ip);
    for _ in 0..MAX_ATTEMPTS {
        let Some(current) = store.get(&key).await? else { return Ok(false) };
        if decode(&key, current.value)? != container_id {
            return Ok(false);
        }
        match store.compare_and_delete(&key, current.revision).await? {
            Swap::Applied(_) => return Ok(true),
            Swap::Conflict => continue,
        }
    }
    Err(IpamError::Contended { ip, attempts: MAX_ATTEMPTS })
}

fn key(ip: Ipv4Addr) -> String {
    format!("{PREFIX}{ip}")
}

fn decode(key: &str, value: Vec<u8>) -> Result<String, IpamError> {
    String::from_utf8(value).map_err(|source| IpamError::Corrupt { key: key.to_string(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redb::RedbStore;
    use crate::store::testing::RacedOnce;

    fn store() -> (tempfile::TempDir, RedbStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("state.redb")).unwrap();
        (dir, store)
    }

    fn pool(range: &str) -> Pool {
        Pool::new("10.88.3.0/24", range).unwrap()
    }

    #[test]
    fn pools_are_checked() {
        assert_eq!(pool("100-249").to_string(), "10.88.3.0/24 (10.88.3.100 to 10.88.3.249)");
        assert!(Pool::new("10.88.3.0/16", "100-249").unwrap_err().to_string().contains("did you mean 10.88.0.0/16"));
        assert!(Pool::new("10.88.3.0", "100-249").is_err());
        assert!(Pool::new("10.88.3.0/31", "1-1").is_err());
        for range in ["0-10", "10-5", "100-255", "100", "a-b"] {
            assert!(Pool::new("10.88.3.0/24", range).is_err(), "{range} accepted");
        }
        // Host numbers beyond one octet in a wider subnet.
        let wide = Pool::new("10.88.0.0/16", "256-300").unwrap();
        assert!(wide.contains("10.88.1.0".parse().unwrap()));
        assert!(!wide.contains("10.88.0.255".parse().unwrap()));
    }

    #[test]
    fn macs_follow_the_address() {
        assert_eq!(mac_for("10.88.3.100".parse().unwrap()), "02:42:0a:58:03:64");
    }

    #[tokio::test]
    async fn hands_out_the_first_free_address_and_the_same_one_again() {
        let (_dir, store) = store();
        let p = pool("100-249");
        let a = allocate(&store, &p, "a").await.unwrap();
        assert_eq!((a.ip.as_str(), a.prefix_len, a.mac.as_str()), ("10.88.3.100", 24, "02:42:0a:58:03:64"));
        assert_eq!(allocate(&store, &p, "b").await.unwrap().ip, "10.88.3.101");
        // A retried request for a gets the address it holds.
        assert_eq!(allocate(&store, &p, "a").await.unwrap(), a);
        // A released address is the first free one again.
        assert!(release(&store, "10.88.3.100".parse().unwrap(), "a").await.unwrap());
        assert_eq!(allocate(&store, &p, "c").await.unwrap().ip, "10.88.3.100");
    }

    #[tokio::test]
    async fn release_frees_only_the_owners_address() {
        let (_dir, store) = store();
        let p = pool("100-249");
        allocate(&store, &p, "a").await.unwrap();
        let ip = "10.88.3.100".parse().unwrap();
        assert!(!release(&store, ip, "b").await.unwrap());
        assert!(release(&store, ip, "a").await.unwrap());
        assert!(!release(&store, ip, "a").await.unwrap(), "a second release is a no-op");
    }

    #[tokio::test]
    async fn an_exhausted_range_says_so() {
        let (_dir, store) = store();
        let p = pool("100-101");
        allocate(&store, &p, "a").await.unwrap();
        allocate(&store, &p, "b").await.unwrap();
        let err = allocate(&store, &p, "c").await.unwrap_err().to_string();
        assert!(
            err.contains("every address of the container network 10.88.3.0/24 (10.88.3.100 to 10.88.3.101) is taken"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_address_claimed_meanwhile_is_skipped() {
        let (_dir, inner) = store();
        // Another coordinator claims the address we are about to write.
        let store = RacedOnce::new(inner, b"other".to_vec());
        assert_eq!(allocate(&store, &pool("100-249"), "a").await.unwrap().ip, "10.88.3.101");
        assert_eq!(store.get("ipam/10.88.3.100").await.unwrap().unwrap().value, b"other");
    }
}
