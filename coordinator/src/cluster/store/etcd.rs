//! The [`Store`] on etcd, for replicated coordinators: the same keys under
//! one prefix, a revision being etcd's `mod_revision`, a conditional write
//! an etcd transaction comparing it.
//!
//! A store made for a leader ([`EtcdStore::leading`]) adds to every write a
//! comparison of the leader's election key: a coordinator that lost its
//! leadership without knowing it yet (its process paused past its lease)
//! cannot write anything, as etcd's own election recipe prescribes.
//!
//! [`Members`] talks to one member at a time and moves to the next that
//! answers when it fails: a member whose host is lost says nothing, and a
//! client balancing over every member kept sending a share of the calls to
//! it, each waiting out a connection timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KvClient, Txn, TxnOp, TxnOpResponse,
};

use super::{Expect, Revision, Store, StoreError, Swap, Versioned};

/// Under which prefix the cluster's records are kept in etcd.
pub const PREFIX: &str = "/containerd-migrate/";
/// How long connecting to a member and its first answer may take.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(1);
/// How often connections are pinged, and how long a ping may take: a
/// member gone without a word fails the calls on its connection.
const PING: Duration = Duration::from_millis(500);

/// etcd's members, and a client of the one in use.
#[derive(Clone)]
pub struct Members {
    endpoints: Arc<Vec<String>>,
    current: Arc<tokio::sync::Mutex<Option<Client>>>,
    /// The member to try first when a new client is needed.
    next: Arc<AtomicUsize>,
}

impl Members {
    /// The members at `endpoints`, one of which must answer now.
    pub async fn connect(endpoints: Vec<String>) -> Result<Members, etcd_client::Error> {
        let members =
            Members { endpoints: Arc::new(endpoints), current: Arc::default(), next: Arc::new(AtomicUsize::new(0)) };
        members.client().await?;
        Ok(members)
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// A client of the member in use, or of the first from the next one on
    /// that answers. No request timeout: it would also cut an election's
    /// campaign, which blocks until this replica leads.
    pub async fn client(&self) -> Result<Client, etcd_client::Error> {
        let mut current = self.current.lock().await;
        if let Some(c) = current.as_ref() {
            return Ok(c.clone());
        }
        let n = self.endpoints.len();
        let first = self.next.load(Ordering::Relaxed);
        let mut last = etcd_client::Error::InvalidArgs("no etcd endpoint given".into());
        for k in 0..n {
            let i = (first + k) % n;
            let options = ConnectOptions::new()
                .with_connect_timeout(MEMBER_TIMEOUT)
                .with_keep_alive(PING, PING)
                .with_keep_alive_while_idle(true);
            let tried = tokio::time::timeout(MEMBER_TIMEOUT * 2, async {
                let mut c = Client::connect([&self.endpoints[i]], Some(options)).await?;
                c.status().await?;
                Ok::<_, etcd_client::Error>(c)
            })
            .await;
            match tried {
                Ok(Ok(c)) => {
                    self.next.store((i + 1) % n, Ordering::Relaxed);
                    *current = Some(c.clone());
                    return Ok(c);
                }
                Ok(Err(e)) => last = e,
                Err(_) => last = etcd_client::Error::InvalidArgs(format!("{} did not answer", self.endpoints[i])),
            }
        }
        Err(last)
    }

    /// After `e`: if the member may be gone, the next call finds another.
    pub async fn failed(&self, e: &etcd_client::Error) {
        if is_unreachable(e) {
            *self.current.lock().await = None;
        }
    }
}

/// Whether `e` says the member (or the way to it) is gone, rather than
/// that the request was wrong.
fn is_unreachable(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => {
            matches!(s.code(), Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled)
        }
        etcd_client::Error::LeaseKeepAliveError(_) | etcd_client::Error::ElectError(_) => true,
        _ => false,
    }
}

#[derive(Clone)]
pub struct EtcdStore {
    members: Members,
    /// The leader's election key and its create revision.
    leader: Option<(Vec<u8>, i64)>,
}

/// A write refused because this coordinator is no longer the leader.
#[derive(Debug, thiserror::Error)]
#[error("this coordinator is no longer the leader (its election key is gone): the write was not made")]
pub struct NotLeader;

impl EtcdStore {
    pub fn new(members: Members) -> EtcdStore {
        EtcdStore { members, leader: None }
    }

    /// This store, each of whose writes happens only while `key` (created at
    /// `revision`) is the election's: while this coordinator leads.
    pub fn leading(&self, key: Vec<u8>, revision: i64) -> EtcdStore {
        EtcdStore { members: self.members.clone(), leader: Some((key, revision)) }
    }

    /// Runs `call` on a KV client, again on another member (each in turn)
    /// while the one asked is unreachable.
    async fn kv<T, F, Fut>(&self, doing: &str, call: F) -> Result<T, StoreError>
    where
        F: Fn(KvClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut attempts = self.members.endpoints().len().max(1);
        loop {
            let client = self.members.client().await.map_err(|e| backend(doing, e))?;
            match call(client.kv_client()).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    self.members.failed(&e).await;
                    attempts -= 1;
                    if attempts == 0 || !is_unreachable(&e) {
                        return Err(backend(doing, e));
                    }
                }
            }
        }
    }

    fn key(key: &str) -> String {
        format!("{PREFIX}{key}")
    }

    fn leader_compare(&self) -> Option<Compare> {
        self.leader.as_ref().map(|(key, rev)| Compare::create_revision(key.clone(), CompareOp::Equal, *rev))
    }

    /// Runs `compare` then `op`, as one transaction with the leader's
    /// comparison. Ok(Some(revision)): done; Ok(None): `compare` failed.
    async fn conditional(&self, doing: String, compare: Option<Compare>, op: TxnOp) -> Result<Option<i64>, StoreError> {
        let mut compares: Vec<Compare> = compare.into_iter().collect();
        compares.extend(self.leader_compare());
        // On failure, the leader key tells which comparison failed.
        let check = self.leader.as_ref().map(|(key, _)| TxnOp::get(key.clone(), None));
        let txn = Txn::new().when(compares).and_then(vec![op]).or_else(check.into_iter().collect::<Vec<_>>());
        let resp = self
            .kv(&doing, |mut kv| {
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            })
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        if resp.succeeded() {
            return Ok(Some(revision));
        }
        if let Some((_, want)) = &self.leader {
            let still = resp.op_responses().into_iter().any(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().is_some_and(|kv| kv.create_revision() == *want),
                _ => false,
            });
            if !still {
                return Err(StoreError::Backend { doing, source: Box::new(NotLeader) });
            }
        }
        Ok(None)
    }
}

fn backend(doing: &str, e: etcd_client::Error) -> StoreError {
    StoreError::Backend { doing: doing.to_string(), source: Box::new(e) }
}

fn revision(r: i64) -> Revision {
    u64::try_from(r).unwrap_or(0)
}

fn etcd_revision(r: Revision) -> i64 {
    i64::try_from(r).unwrap_or(i64::MAX)
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let resp =
            self.kv(&format!("reading {key}"), |mut kv| async move { kv.get(Self::key(key), None).await }).await?;
        Ok(resp.kvs().first().map(|kv| Versioned { value: kv.value().to_vec(), revision: revision(kv.mod_revision()) }))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        let resp = self
            .kv(&format!("listing {prefix}*"), |mut kv| async move {
                kv.get(Self::key(prefix), Some(GetOptions::new().with_prefix())).await
            })
            .await?;
        let mut out = Vec::with_capacity(resp.kvs().len());
        for kv in resp.kvs() {
            let Some(key) = kv.key_str().ok().and_then(|k| k.strip_prefix(PREFIX)) else { continue };
            out.push((
                key.to_string(),
                Versioned { value: kv.value().to_vec(), revision: revision(kv.mod_revision()) },
            ));
        }
        // etcd ranges are ordered bytewise already.
        Ok(out)
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
        let done = self.conditional(format!("writing {key}"), None, TxnOp::put(Self::key(key), value, None)).await?;
        Ok(revision(done.unwrap_or(0)))
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let k = Self::key(key);
        let exists = Compare::version(k.clone(), CompareOp::Greater, 0);
        let done =
            self.conditional(format!("deleting {key}"), Some(exists), TxnOp::delete(k, None::<DeleteOptions>)).await?;
        Ok(done.is_some())
    }

    async fn compare_and_swap(&self, key: &str, expect: Expect, value: Vec<u8>) -> Result<Swap, StoreError> {
        let k = Self::key(key);
        let compare = match expect {
            // A key that does not exist has version 0.
            Expect::Absent => Compare::version(k.clone(), CompareOp::Equal, 0),
            Expect::At(rev) => Compare::mod_revision(k.clone(), CompareOp::Equal, etcd_revision(rev)),
        };
        let done =
            self.conditional(format!("writing {key} conditionally"), Some(compare), TxnOp::put(k, value, None)).await?;
        Ok(done.map_or(Swap::Conflict, |r| Swap::Applied(revision(r))))
    }

    async fn compare_and_delete(&self, key: &str, at: Revision) -> Result<Swap, StoreError> {
        let k = Self::key(key);
        let compare = Compare::mod_revision(k.clone(), CompareOp::Equal, etcd_revision(at));
        let done = self
            .conditional(
                format!("deleting {key} conditionally"),
                Some(compare),
                TxnOp::delete(k, None::<DeleteOptions>),
            )
            .await?;
        Ok(done.map_or(Swap::Conflict, |r| Swap::Applied(revision(r))))
    }
}

#[cfg(test)]
pub mod testing {
    //! A private etcd for tests: Debian's etcd-server (hack/setup.sh).

    use std::net::TcpListener;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    pub struct Etcd {
        child: Child,
        _dir: tempfile::TempDir,
        pub endpoint: String,
    }

    impl Drop for Etcd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// A fresh etcd answering on 127.0.0.1; None (the test is skipped) where
    /// etcd is not installed, unless CI=true, where that fails the test.
    pub async fn start(test: &str) -> Option<Etcd> {
        if Command::new("etcd").arg("--version").stdout(Stdio::null()).status().is_err() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{test} needs etcd (Debian's etcd-server; hack/setup.sh installs it)"
            );
            eprintln!("skipping {test}: etcd is not installed (hack/setup.sh)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("http://127.0.0.1:{client}");
        let child = Command::new("etcd")
            .args(["--data-dir", &dir.path().join("data").to_string_lossy()])
            .args(["--listen-client-urls", &endpoint, "--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-cluster", &format!("default=http://127.0.0.1:{peer}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("etcd.log")).unwrap())
            .spawn()
            .unwrap();
        let etcd = Etcd { child, _dir: dir, endpoint };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = etcd_client::Client::connect([&etcd.endpoint], None).await
                && c.get("probe", None).await.is_ok()
            {
                return Some(etcd);
            }
            assert!(Instant::now() < deadline, "etcd did not answer at {} within 20 s", etcd.endpoint);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store(test: &str) -> Option<(testing::Etcd, EtcdStore)> {
        let etcd = testing::start(test).await?;
        let members = Members::connect(vec![etcd.endpoint.clone()]).await.unwrap();
        Some((etcd, EtcdStore::new(members)))
    }

    #[tokio::test]
    async fn records_are_versioned_and_swapped_as_expected() {
        let Some((_etcd, store)) = store("records_are_versioned_and_swapped_as_expected").await else { return };
        assert_eq!(store.get("hosts/h1").await.unwrap(), None);
        let r1 = store.put("hosts/h1", b"one".to_vec()).await.unwrap();
        store.put("hosts/h2", b"two".to_vec()).await.unwrap();
        store.put("hostsx", b"not a host".to_vec()).await.unwrap();
        let listed: Vec<String> = store.list("hosts/").await.unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(listed, ["hosts/h1", "hosts/h2"]);
        assert_eq!(store.get("hosts/h1").await.unwrap(), Some(Versioned { value: b"one".to_vec(), revision: r1 }));

        assert_eq!(store.compare_and_swap("hosts/h1", Expect::Absent, b"x".to_vec()).await.unwrap(), Swap::Conflict);
        let Swap::Applied(r2) = store.compare_and_swap("hosts/h1", Expect::At(r1), b"2".to_vec()).await.unwrap() else {
            panic!("the expected revision was not accepted");
        };
        assert!(r2 > r1);
        assert_eq!(store.compare_and_swap("hosts/h1", Expect::At(r1), b"y".to_vec()).await.unwrap(), Swap::Conflict);
        assert_eq!(store.compare_and_delete("hosts/h1", r1).await.unwrap(), Swap::Conflict);
        assert!(matches!(store.compare_and_delete("hosts/h1", r2).await.unwrap(), Swap::Applied(_)));
        assert!(matches!(
            store.compare_and_swap("new", Expect::Absent, b"n".to_vec()).await.unwrap(),
            Swap::Applied(_)
        ));
        assert!(store.delete("hosts/h2").await.unwrap());
        assert!(!store.delete("hosts/h2").await.unwrap());
    }

    #[tokio::test]
    async fn a_deposed_leader_writes_nothing() {
        let Some((etcd, store)) = store("a_deposed_leader_writes_nothing").await else { return };
        let mut client = Client::connect([&etcd.endpoint], None).await.unwrap();
        let lease = client.lease_grant(10, None).await.unwrap().id();
        let mut won = client.campaign("leader", "c1", lease).await.unwrap();
        let key = won.take_leader().unwrap();
        let leading = store.leading(key.key().to_vec(), key.rev());
        let Swap::Applied(r) = leading.compare_and_swap("k", Expect::Absent, b"1".to_vec()).await.unwrap() else {
            panic!("the leader could not write");
        };
        leading.put("k2", b"x".to_vec()).await.unwrap();

        // Its lease ends (as when its process stalls): the key is gone.
        client.lease_revoke(lease).await.unwrap();
        let err = leading.compare_and_swap("k", Expect::At(r), b"2".to_vec()).await.unwrap_err();
        assert!(err.to_string().contains("no longer the leader"), "{err}");
        assert!(leading.put("k2", b"y".to_vec()).await.is_err());
        assert!(leading.delete("k2").await.is_err());
        assert_eq!(store.get("k").await.unwrap().unwrap().value, b"1");
        // The plain store (heartbeats) still writes.
        store.put("k2", b"z".to_vec()).await.unwrap();
    }
}
