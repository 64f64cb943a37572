//! Packs: how the registry store keeps chunks. A registry answers a request
//! in a few milliseconds whatever its size (3.3 ms for a 32 KiB blob, 8 ms
//! for 8 MiB, on loopback here), so a blob per chunk made a gibibyte of
//! checkpoint 27,000 uploads and as many downloads. Chunks are gathered
//! instead into packs of about [`PACK_BYTES`], each uploaded as one blob
//! with a small index blob saying which chunk is where in it; a restore
//! reads the chunks it needs with a few ranged GETs per pack.
//!
//! A chunk is in exactly one pack of the store that uploaded it, and a
//! version's parts list every pack holding one of its chunks, so a pack
//! lives while any version uses any of its chunks (the registry's garbage
//! collector keeps whole blobs): a pack whose chunks were mostly replaced
//! keeps the rest of its bytes until its last user goes.

use std::collections::HashSet;

use oci_spec::image::Digest;
use serde::{Deserialize, Serialize};

use crate::{
    crypto::ChunkId,
    registry_api::{Blob, sha256_of},
};

pub(super) const PACK_MEDIA_TYPE: &str = "application/vnd.containerd-migrate.pack.v1";
pub(super) const PACK_INDEX_MEDIA_TYPE: &str = "application/vnd.containerd-migrate.pack-index.v1+json";

/// Bytes of chunk blobs gathered before a pack is uploaded: a second of
/// requests is then about 1 GiB in either direction, and a version that
/// dirties a little adds one or two packs.
pub(super) const PACK_BYTES: usize = 8 << 20;

/// A pack's table of contents, stored as its own blob beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PackIndex {
    pub media_type: String,
    /// The pack it describes, so that an index is never read against
    /// another pack.
    pub pack: Digest,
    pub chunks: Vec<PackedChunk>,
}

/// Where one chunk's blob (sealed or plaintext) is in its pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct PackedChunk {
    pub id: ChunkId,
    pub offset: u64,
    pub size: u32,
}

impl PackIndex {
    /// Parses the index blob `bytes` of `pack`; Err says what is wrong with
    /// it.
    pub(super) fn parse(bytes: &[u8], pack: &Blob) -> Result<PackIndex, String> {
        let index: PackIndex = serde_json::from_slice(bytes).map_err(|e| format!("it is not a pack index: {e}"))?;
        if index.media_type != PACK_INDEX_MEDIA_TYPE {
            return Err(format!("it is a {}, not a {PACK_INDEX_MEDIA_TYPE}", index.media_type));
        }
        if index.pack != pack.digest {
            return Err(format!("it describes pack {}, not {}", index.pack, pack.digest));
        }
        let outside =
            index.chunks.iter().find(|c| c.offset.checked_add(u64::from(c.size)).is_none_or(|end| end > pack.size));
        if let Some(chunk) = outside {
            return Err(format!("chunk {} lies past the pack's {} bytes", chunk.id, pack.size));
        }
        Ok(index)
    }
}

/// The chunks gathered for the next pack.
#[derive(Debug, Default)]
pub(super) struct PackBuilder {
    bytes: Vec<u8>,
    chunks: Vec<PackedChunk>,
    ids: HashSet<ChunkId>,
}

/// A pack ready to upload, and its index.
pub(super) struct FinishedPack {
    pub bytes: Vec<u8>,
    pub index: PackIndex,
    pub index_bytes: Vec<u8>,
}

impl PackBuilder {
    pub(super) fn contains(&self, id: &ChunkId) -> bool {
        self.ids.contains(id)
    }

    /// Adds chunk `id` as `blob`, unless it is in already.
    pub(super) fn push(&mut self, id: ChunkId, blob: &[u8]) {
        if !self.ids.insert(id) {
            return;
        }
        let size = u32::try_from(blob.len()).expect("a chunk blob is far smaller than 4 GiB");
        self.chunks.push(PackedChunk { id, offset: self.bytes.len() as u64, size });
        self.bytes.extend_from_slice(blob);
    }

    pub(super) fn len(&self) -> usize {
        self.bytes.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    pub(super) fn finish(self) -> FinishedPack {
        let index =
            PackIndex { media_type: PACK_INDEX_MEDIA_TYPE.into(), pack: sha256_of(&self.bytes), chunks: self.chunks };
        let index_bytes = serde_json::to_vec(&index).expect("a pack index serializes");
        FinishedPack { bytes: self.bytes, index, index_bytes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::chunk_id;

    #[test]
    fn a_pack_holds_each_chunk_once_at_its_offset() {
        let mut builder = PackBuilder::default();
        let (a, b) = (chunk_id(None, b"aaa"), chunk_id(None, b"bb"));
        builder.push(a, b"aaa");
        builder.push(b, b"bb");
        builder.push(a, b"aaa");
        assert!(builder.contains(&a) && builder.len() == 5);
        let pack = builder.finish();
        assert_eq!(pack.bytes, b"aaabb");
        let blob = Blob { digest: sha256_of(&pack.bytes), size: 5 };
        let index = PackIndex::parse(&pack.index_bytes, &blob).unwrap();
        assert_eq!(index, pack.index);
        assert_eq!(
            index.chunks,
            [PackedChunk { id: a, offset: 0, size: 3 }, PackedChunk { id: b, offset: 3, size: 2 }]
        );
    }

    #[test]
    fn an_index_is_refused_for_another_pack_or_past_its_end() {
        let mut builder = PackBuilder::default();
        builder.push(chunk_id(None, b"aaa"), b"aaa");
        let pack = builder.finish();
        let other = Blob { digest: sha256_of(b"other"), size: 3 };
        assert!(PackIndex::parse(&pack.index_bytes, &other).unwrap_err().contains("describes pack"));
        let short = Blob { digest: pack.index.pack.clone(), size: 2 };
        assert!(PackIndex::parse(&pack.index_bytes, &short).unwrap_err().contains("past the pack's 2 bytes"));
        let whole = Blob { digest: pack.index.pack.clone(), size: 3 };
        assert!(PackIndex::parse(b"{}", &whole).unwrap_err().contains("not a pack index"));
    }
}
