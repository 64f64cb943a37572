//! A version's manifest: which container and version it is, and each file of
//! the checkpoint as the ordered list of chunks it is made of. Stored last,
//! after every chunk it names, so that its presence alone makes a version
//! complete. It holds no key and no file contents; with encryption on, the
//! checkpoint's own manifest.json (hostnames, digests) is one of the
//! encrypted files.

use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;

use crate::{chunking::Chunking, crypto::ChunkId};
use migrate_oci::layout;

pub const VERSION_SCHEMA_VERSION: u32 = 1;
pub const VERSION_MEDIA_TYPE: &str = "application/vnd.containerd-migrate.version.manifest.v1+json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionManifest {
    pub schema_version: u32,
    pub media_type: String,
    pub namespace: String,
    pub container: String,
    pub version: u64,
    /// Versions `g * size .. g * size + size - 1` make up group `g`.
    pub group: u64,
    /// The first version of the group.
    pub base: u64,
    /// UTC, RFC 3339 on the wire.
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    pub mode: IncrementalMode,
    /// None: chunk ids are sha256 and blobs plaintext.
    pub encryption: Option<Encryption>,
    /// Every file of the checkpoint, manifest.json last.
    pub files: Vec<VersionFile>,
    /// In [`IncrementalMode::CriuParent`], the checkpoints whose CRIU images
    /// this one's build on, nearest first: its parent, the parent's parent,
    /// and so on to the group's pre-dump. Recorded whole in every version,
    /// which costs only these lists (the chunks are the ones the earlier
    /// versions stored), so that each version restores on its own. Empty,
    /// and not written, in [`IncrementalMode::StorageChunks`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<ParentCheckpoint>,
    /// The sum of the sizes of the files, the parents' included: what a
    /// restore of this version reads.
    pub bytes_total: u64,
    /// Bytes of the chunks this version added to the store (plaintext
    /// sizes); the rest were there already.
    pub bytes_new: u64,
    pub chunks_total: u64,
    pub chunks_new: u64,
}

/// How a version is incremental against the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IncrementalMode {
    /// Every version is a full checkpoint; the store keeps each distinct
    /// chunk once, so a version costs only the chunks that changed. Needs
    /// nothing from the kernel.
    StorageChunks,
    /// CRIU dumps only the pages dirtied since its parent's dump (a
    /// pre-dump or the previous version), which it finds through soft-dirty
    /// tracking in the kernel; the version records its chain of parents
    /// ([`VersionManifest::parents`]). Where the kernel has no soft-dirty
    /// tracking, CRIU cannot do this.
    CriuParent,
}

/// A checkpoint a version's CRIU images build on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentCheckpoint {
    /// Its id in the checkpoint store it was taken in, which is also the
    /// directory its child's `criu/parent` link leads to (`../../ID/criu`).
    #[serde(deserialize_with = "checkpoint_id")]
    pub id: String,
    /// Every file of it, manifest.json last.
    pub files: Vec<VersionFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Encryption {
    /// "xchacha20poly1305", chunk ids "hmac-sha256".
    pub algorithm: String,
    /// Names the key (see [`crate::ChunkCipher::key_id`]), so that a wrong
    /// key is told apart from a damaged chunk.
    pub key_id: String,
}

pub const ENCRYPTION_ALGORITHM: &str = "xchacha20poly1305";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionFile {
    /// Relative to the checkpoint directory, as in its manifest.
    #[serde(deserialize_with = "file_path")]
    pub path: String,
    pub size: u64,
    pub chunking: Chunking,
    pub chunks: Vec<ChunkRef>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub id: ChunkId,
    /// Plaintext bytes.
    pub size: u32,
}

impl VersionManifest {
    /// Every chunk a restore of this version reads, the parents' included.
    pub fn chunk_ids(&self) -> impl Iterator<Item = ChunkId> + '_ {
        let parents = self.parents.iter().flat_map(|p| &p.files);
        self.files.iter().chain(parents).flat_map(|f| f.chunks.iter().map(|c| c.id))
    }
}

/// A parent's id becomes a directory name when the version is rebuilt.
fn checkpoint_id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let id = String::deserialize(d)?;
    migrate_oci::validate_id(&id).map_err(|e| serde::de::Error::custom(format!("parent {e}")))?;
    Ok(id)
}

/// A manifest is read from a store others can write to: its paths are
/// checked before anything is created through them.
fn file_path<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let path = String::deserialize(d)?;
    if path != layout::MANIFEST_FILE {
        layout::check_rel(&path).map_err(|reason| serde::de::Error::custom(format!("file path {path:?}: {reason}")))?;
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunking::MEMORY_CHUNKING;

    fn sample() -> VersionManifest {
        let id = crate::crypto::chunk_id(None, b"x");
        VersionManifest {
            schema_version: VERSION_SCHEMA_VERSION,
            media_type: VERSION_MEDIA_TYPE.into(),
            namespace: "default".into(),
            container: "web".into(),
            version: 7,
            group: 1,
            base: 5,
            created: OffsetDateTime::UNIX_EPOCH,
            mode: IncrementalMode::StorageChunks,
            encryption: Some(Encryption { algorithm: ENCRYPTION_ALGORITHM.into(), key_id: "00ff".into() }),
            files: vec![VersionFile {
                path: "criu/pages-1.img".into(),
                size: 1,
                chunking: MEMORY_CHUNKING,
                chunks: vec![ChunkRef { id, size: 1 }],
            }],
            parents: Vec::new(),
            bytes_total: 1,
            bytes_new: 0,
            chunks_total: 1,
            chunks_new: 0,
        }
    }

    #[test]
    fn wire_format() {
        let m = sample();
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["mode"], "storage-chunks");
        assert_eq!(json["encryption"]["keyId"], "00ff");
        assert_eq!(json["files"][0]["chunking"]["kind"], "fastcdc");
        assert_eq!(json["files"][0]["chunks"][0]["id"].as_str().unwrap().len(), 64);
        assert_eq!(json["bytesNew"], 0);
        assert_eq!(serde_json::to_value(IncrementalMode::CriuParent).unwrap(), "criu-parent");
        assert_eq!(serde_json::from_value::<VersionManifest>(json).unwrap(), m);
    }

    #[test]
    fn parents_are_written_only_in_criu_parent_mode() {
        let plain = serde_json::to_value(sample()).unwrap();
        assert!(plain.get("parents").is_none(), "{plain}");

        let mut m = sample();
        m.mode = IncrementalMode::CriuParent;
        let id = crate::crypto::chunk_id(None, b"y");
        m.parents.push(ParentCheckpoint {
            id: "web-pre-0".into(),
            files: vec![VersionFile {
                path: "criu/pages-1.img".into(),
                size: 1,
                chunking: MEMORY_CHUNKING,
                chunks: vec![ChunkRef { id, size: 1 }],
            }],
        });
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["mode"], "criu-parent");
        assert_eq!(json["parents"][0]["id"], "web-pre-0");
        assert_eq!(serde_json::from_value::<VersionManifest>(json.clone()).unwrap(), m);
        assert_eq!(m.chunk_ids().count(), 2, "the parents' chunks are the version's too");

        // The id becomes a directory name on restore.
        let mut bad = json;
        bad["parents"][0]["id"] = "../../etc".into();
        let err = serde_json::from_value::<VersionManifest>(bad).unwrap_err();
        assert!(err.to_string().contains("parent checkpoint id \"../../etc\""), "{err}");
    }

    #[test]
    fn paths_must_stay_inside() {
        let mut json = serde_json::to_value(sample()).unwrap();
        json["files"][0]["path"] = "manifest.json".into();
        assert!(serde_json::from_value::<VersionManifest>(json.clone()).is_ok());
        json["files"][0]["path"] = "../../etc/cron.d/x".into();
        let err = serde_json::from_value::<VersionManifest>(json).unwrap_err();
        assert!(err.to_string().contains("../../etc/cron.d/x"), "{err}");
    }
}
