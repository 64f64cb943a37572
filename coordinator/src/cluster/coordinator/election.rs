//! Which replica of the coordinator leads, by etcd's election (the second
//! half of etcd's `concurrency` recipe): each replica holds a lease, kept
//! alive a few times per TTL, and campaigns with it; the one whose key is
//! oldest leads until its lease ends (its process or host gone, or cut off
//! from etcd's quorum), and the next in line then leads within the TTL.
//!
//! Each replica also keeps a record of itself under the same lease
//! (`coordinators/NAME`), so that `migratectl coordinator` lists the live
//! ones.

use std::time::Duration;

use etcd_client::{GetOptions, PutOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::membership::{self, UnixMs};
use crate::store::etcd::{Members, PREFIX};

/// The election's name in etcd.
pub const ELECTION: &str = "/containerd-migrate/election/coordinator";
/// Where replicas record themselves.
fn replicas_prefix() -> String {
    format!("{PREFIX}coordinators/")
}

/// A replica as it records itself, and as it campaigns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Replica {
    pub name: String,
    pub url: String,
    pub started_unix_ms: UnixMs,
    /// When it was elected (in its campaign value only).
    #[serde(default)]
    pub leader_since_unix_ms: UnixMs,
}

/// This replica leads: its election key and the key's create revision,
/// which every write of the leader compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    pub key: Vec<u8>,
    pub revision: i64,
    pub since: UnixMs,
}

/// Campaigns for as long as the coordinator runs; `leading` says whether
/// this replica leads. `ttl` is the lease's, in seconds (etcd's minimum is
/// about 2).
pub async fn run(members: Members, me: Replica, ttl: i64, leading: watch::Sender<Option<Leadership>>) {
    let mut retry = Duration::from_millis(200);
    loop {
        match term(&members, &me, ttl, &leading).await {
            Ok(()) => retry = Duration::from_millis(200),
            Err(e) => {
                // A member gone: the next term talks to another at once.
                members.failed(&e).await;
                log::warn!("campaigning for the coordinator's leadership: {e}; again in {retry:?}");
                // A pause before the next try is the point, not a guess.
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(2));
            }
        }
        if leading.send_replace(None).is_some() {
            log::warn!("{} no longer leads the cluster (its lease ended)", me.name);
        }
    }
}

/// One lease's life: record, campaign, lead until the lease ends.
async fn term(
    members: &Members,
    me: &Replica,
    ttl: i64,
    leading: &watch::Sender<Option<Leadership>>,
) -> Result<(), etcd_client::Error> {
    let mut c = members.client().await?;
    let lease = c.lease_grant(ttl, None).await?.id();
    let (mut keeper, mut acks) = c.lease_keep_alive(lease).await?;
    // The lease lives while acknowledged; it ends when an acknowledgement
    // says so, or when none came within the TTL.
    let period = Duration::from_millis(u64::try_from(ttl).unwrap_or(2) * 1000 / 3);
    let keep = async {
        loop {
            keeper.keep_alive().await?;
            match tokio::time::timeout(Duration::from_secs(ttl.max(1) as u64), acks.message()).await {
                Ok(Ok(Some(ack))) if ack.ttl() > 0 => {}
                Ok(Ok(_)) => return Ok::<(), etcd_client::Error>(()),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(()),
            }
            tokio::time::sleep(period).await;
        }
    };
    let record = serde_json::to_vec(me).expect("plain data");
    c.put(format!("{}{}", replicas_prefix(), me.name), record, Some(PutOptions::new().with_lease(lease))).await?;
    let campaign = async {
        let mut value = me.clone();
        value.leader_since_unix_ms = membership::now();
        let mut won = c.clone().campaign(ELECTION, serde_json::to_vec(&value).expect("plain data"), lease).await?;
        let key = won.take_leader().expect("a campaign that returns has a leader key");
        // The campaign's value carries the time of its start: say when it won.
        let since = membership::now();
        value.leader_since_unix_ms = since;
        let mut proclaimer = c.clone();
        let options = etcd_client::ProclaimOptions::new().with_leader(key.clone());
        proclaimer.proclaim(serde_json::to_vec(&value).expect("plain data"), Some(options)).await?;
        log::info!("{} leads the cluster (election key {})", me.name, String::from_utf8_lossy(key.key()));
        leading.send_replace(Some(Leadership { key: key.key().to_vec(), revision: key.rev(), since }));
        std::future::pending::<Result<(), etcd_client::Error>>().await
    };
    tokio::select! {
        kept = keep => kept,
        campaigned = campaign => campaigned,
    }
}

/// The live replicas and the leader's record, as etcd has them.
pub async fn replicas(members: &Members) -> Result<(Vec<Replica>, Option<Replica>), etcd_client::Error> {
    let mut c = members.client().await?;
    let listed = c.get(replicas_prefix(), Some(GetOptions::new().with_prefix())).await?;
    let replicas = listed.kvs().iter().filter_map(|kv| serde_json::from_slice(kv.value()).ok()).collect();
    let leader = match c.leader(ELECTION).await {
        Ok(r) => r.kv().and_then(|kv| serde_json::from_slice(kv.value()).ok()),
        // No leader yet: etcd answers an error ("election: no leader").
        Err(_) => None,
    };
    Ok((replicas, leader))
}
