//! A container's writable layer on the move: the source sends the changes
//! of its snapshot's upper directory since the last sync (the snapshotter
//! crate's sync format), the target applies them to its prepared snapshot's
//! upper directory. Both find the directory through containerd's
//! `Snapshots.Mounts`, so any overlay snapshotter's layers can be moved.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use containerd_client::types::Mount;
use migrate_snapshotter::sync::{self, SyncIndex};
use tonic::transport::Channel;

use super::transfer;
use crate::agent::containers::blocking;
use crate::host::containerd::Containerd;
use crate::proto::agent_client::AgentClient;
use crate::proto::{MigrationRef, TransferKind};

/// The source's side: the upper directory and what was sent of it.
pub struct LayerSync {
    upper: PathBuf,
    sent: Option<SyncIndex>,
}

/// What one send moved.
pub struct Sent {
    pub bytes: u64,
    pub files: u64,
}

impl LayerSync {
    pub async fn new(cd: &Containerd, snapshotter: &str, key: &str) -> Result<LayerSync> {
        Ok(LayerSync { upper: upper_dir(cd, snapshotter, key).await?, sent: None })
    }

    /// Sends what changed since the last send to `target`.
    pub async fn send(self, target: &mut AgentClient<Channel>, m: &MigrationRef) -> Result<(Sent, LayerSync)> {
        let (upper, previous) = (self.upper.clone(), self.sent);
        let scanned = upper.clone();
        let (delta, index) = blocking(move || {
            sync::scan(&scanned, previous.as_ref()).with_context(|| format!("scan {}", scanned.display()))
        })
        .await?;
        let files = (delta.changed().count() + delta.removed().count()) as u64;
        let source = upper.clone();
        let bytes = transfer::send(target, m, TransferKind::Layer, move |out| {
            sync::write_delta(&source, &delta, out).map(drop).context("write the layer's changes")
        })
        .await?;
        Ok((Sent { bytes, files }, LayerSync { upper, sent: Some(index) }))
    }
}

/// Applies a stream of changes to `upper` (blocking).
pub fn apply(upper: &Path, input: impl Read) -> Result<()> {
    sync::apply(upper, input).map(drop).with_context(|| format!("apply the layer's changes to {}", upper.display()))
}

/// The upper directory of active snapshot `key`: overlay's `upperdir=`,
/// or a bind mount's source (a snapshot without parent).
pub async fn upper_dir(cd: &Containerd, snapshotter: &str, key: &str) -> Result<PathBuf> {
    let mounts = cd.snapshot_mounts(snapshotter, key).await?;
    upper_of(&mounts).with_context(|| format!("snapshot {key} of {snapshotter}"))
}

fn upper_of(mounts: &[Mount]) -> Result<PathBuf> {
    let [mount] = mounts else { bail!("it has {} mounts; one overlay or bind mount was expected", mounts.len()) };
    match mount.r#type.as_str() {
        "overlay" => mount
            .options
            .iter()
            .find_map(|o| o.strip_prefix("upperdir="))
            .map(PathBuf::from)
            .context("its overlay mount has no upperdir: is it a view (read-only)?"),
        "bind" => Ok(PathBuf::from(&mount.source)),
        other => bail!("its mount is of type {other}; only overlay and bind mounts can be synced"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(kind: &str, source: &str, options: &[&str]) -> Mount {
        Mount {
            r#type: kind.into(),
            source: source.into(),
            options: options.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_upper_directory_comes_from_the_mount() {
        let overlay =
            mount("overlay", "overlay", &["index=off", "workdir=/s/2/work", "upperdir=/s/2/fs", "lowerdir=/s/1/fs"]);
        assert_eq!(upper_of(&[overlay]).unwrap(), Path::new("/s/2/fs"));
        assert_eq!(upper_of(&[mount("bind", "/s/1/fs", &["rbind", "rw"])]).unwrap(), Path::new("/s/1/fs"));
        let view = mount("overlay", "overlay", &["lowerdir=/s/2/fs:/s/1/fs"]);
        assert!(upper_of(&[view]).unwrap_err().to_string().contains("no upperdir"));
        assert!(upper_of(&[]).is_err());
    }
}
