//! Chunk ids and encryption at rest.
//!
//! Without a key a chunk's id is the sha256 of its bytes and its blob is the
//! bytes themselves. With a key, the id is an HMAC-SHA256 of the bytes, so
//! ids tell a reader of the store nothing about the contents while identical
//! chunks still share one id (and one blob), and the blob is
//! `nonce (24 bytes) || XChaCha20-Poly1305(bytes)` with the id as associated
//! data, so a blob moved under another id fails to open.
//!
//! The key file holds 32 bytes: raw, or as 64 hex digits (a trailing newline
//! allowed). The HMAC and the cipher use two keys derived from it with
//! HMAC-SHA256 under fixed labels rather than the key itself, so that one
//! key never serves two algorithms; a third derived value, truncated to 8
//! bytes, is the key id that manifests record to tell a wrong key from a
//! damaged chunk. Nothing else of the key is ever written.

use std::{fmt, path::Path, str::FromStr};

use chacha20poly1305::{
    XChaCha20Poly1305, XNonce,
    aead::{Aead, Generate, KeyInit, Payload},
};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::error::{Result, VersionError};

pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;

/// A chunk's address in the store: 32 bytes, lowercase hex on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId([u8; 32]);

impl ChunkId {
    /// The first two hex digits: the store's shard directory.
    pub fn shard(&self) -> String {
        hex::encode(&self.0[..1])
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({self})")
    }
}

impl FromStr for ChunkId {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const WHAT: &str = "a chunk id is 64 lowercase hex digits";
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(WHAT);
        }
        let mut out = [0; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| WHAT)?;
        Ok(ChunkId(out))
    }
}

impl Serialize for ChunkId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ChunkId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// The key of an encrypted store, in the forms the chunks use. Its `Debug`
/// shows the key id only.
#[derive(Clone)]
pub struct ChunkCipher {
    id_mac: Hmac<Sha256>,
    aead: XChaCha20Poly1305,
    key_id: String,
}

impl fmt::Debug for ChunkCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkCipher").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

impl ChunkCipher {
    pub fn from_key(key: &[u8; KEY_LEN]) -> ChunkCipher {
        let derive = |label: &[u8]| -> [u8; 32] {
            let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
            mac.update(label);
            mac.finalize().into_bytes().into()
        };
        let id_key = derive(b"containerd-migrate versions v1: chunk id");
        let enc_key = derive(b"containerd-migrate versions v1: chunk encryption");
        let key_id = hex::encode(&derive(b"containerd-migrate versions v1: key id")[..8]);
        ChunkCipher {
            id_mac: <Hmac<Sha256> as KeyInit>::new_from_slice(&id_key).expect("HMAC takes keys of any length"),
            aead: XChaCha20Poly1305::new(&enc_key.into()),
            key_id,
        }
    }

    /// Reads a key file: 32 raw bytes, or 64 hex digits.
    pub fn from_key_file(path: &Path) -> Result<ChunkCipher> {
        let bytes = std::fs::read(path).map_err(|source| VersionError::KeyFile { path: path.to_owned(), source })?;
        let bad = || VersionError::BadKey { path: path.to_owned(), len: bytes.len() };
        let mut key = [0; KEY_LEN];
        if bytes.len() == KEY_LEN {
            key.copy_from_slice(&bytes);
        } else {
            let text = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
            if text.len() != 2 * KEY_LEN {
                return Err(bad());
            }
            hex::decode_to_slice(text, &mut key).map_err(|_| bad())?;
        }
        Ok(ChunkCipher::from_key(&key))
    }

    /// Names the key without revealing it; recorded in manifests.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }
}

/// The id of a chunk holding `plain`.
pub(crate) fn chunk_id(cipher: Option<&ChunkCipher>, plain: &[u8]) -> ChunkId {
    match cipher {
        None => ChunkId(Sha256::digest(plain).into()),
        Some(c) => {
            let mut mac = c.id_mac.clone();
            mac.update(plain);
            ChunkId(mac.finalize().into_bytes().into())
        }
    }
}

/// What the store keeps of chunk `id`.
pub(crate) fn seal(cipher: Option<&ChunkCipher>, id: &ChunkId, plain: Vec<u8>) -> Vec<u8> {
    let Some(c) = cipher else { return plain };
    let nonce = XNonce::generate();
    let sealed =
        c.aead.encrypt(&nonce, Payload { msg: &plain, aad: &id.0 }).expect("XChaCha20-Poly1305 takes any chunk size");
    let mut blob = Vec::with_capacity(NONCE_LEN + sealed.len());
    blob.extend_from_slice(&nonce);
    blob.extend_from_slice(&sealed);
    blob
}

/// The bytes of chunk `id` from its blob, or None when the blob is not what
/// `seal` made of a chunk with that id under this key: damaged, or sealed
/// with another key.
pub(crate) fn open(cipher: Option<&ChunkCipher>, id: &ChunkId, blob: Vec<u8>) -> Option<Vec<u8>> {
    let plain = match cipher {
        None => blob,
        Some(c) => {
            if blob.len() < NONCE_LEN {
                return None;
            }
            let (nonce, sealed) = blob.split_at(NONCE_LEN);
            let nonce = XNonce::try_from(nonce).ok()?;
            c.aead.decrypt(&nonce, Payload { msg: sealed, aad: &id.0 }).ok()?
        }
    };
    (chunk_id(cipher, &plain) == *id).then_some(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher(byte: u8) -> ChunkCipher {
        ChunkCipher::from_key(&[byte; KEY_LEN])
    }

    #[test]
    fn plain_ids_are_sha256_and_blobs_the_bytes() {
        let id = chunk_id(None, b"abc");
        assert_eq!(id.to_string(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(id.shard(), "ba");
        assert_eq!(seal(None, &id, b"abc".to_vec()), b"abc");
        assert_eq!(open(None, &id, b"abc".to_vec()).unwrap(), b"abc");
        assert_eq!(open(None, &id, b"abd".to_vec()), None);
        assert_eq!(id.to_string().parse::<ChunkId>().unwrap(), id);
        assert!("BA7816".parse::<ChunkId>().is_err());
    }

    #[test]
    fn keyed_ids_hide_the_contents_but_still_dedup() {
        let (a, b) = (cipher(1), cipher(2));
        let id = chunk_id(Some(&a), b"abc");
        assert_ne!(id, chunk_id(None, b"abc"));
        assert_ne!(id, chunk_id(Some(&b), b"abc"));
        assert_eq!(id, chunk_id(Some(&cipher(1)), b"abc"));
        assert_ne!(a.key_id(), b.key_id());
        assert_eq!(a.key_id().len(), 16);
    }

    #[test]
    fn sealed_blobs_open_only_with_their_key_and_id() {
        let c = cipher(1);
        let plain = vec![5u8; 5000];
        let id = chunk_id(Some(&c), &plain);
        let blob = seal(Some(&c), &id, plain.clone());
        assert_eq!(blob.len(), NONCE_LEN + plain.len() + 16);
        assert!(!blob.windows(64).any(|w| w == &plain[..64]), "the blob holds the plaintext");
        // Two seals of one chunk differ (random nonces) and both open.
        let again = seal(Some(&c), &id, plain.clone());
        assert_ne!(blob, again);
        assert_eq!(open(Some(&c), &id, again).unwrap(), plain);
        assert_eq!(open(Some(&c), &id, blob.clone()).unwrap(), plain);
        assert_eq!(open(Some(&cipher(2)), &id, blob.clone()), None);
        let other = chunk_id(Some(&c), b"other");
        assert_eq!(open(Some(&c), &other, blob.clone()), None);
        for i in [0, NONCE_LEN, blob.len() / 2, blob.len() - 1] {
            let mut flipped = blob.clone();
            flipped[i] ^= 0x40;
            assert_eq!(open(Some(&c), &id, flipped), None, "flip at {i}");
        }
        assert_eq!(open(Some(&c), &id, blob[..10].to_vec()), None);
    }

    #[test]
    fn key_files_raw_or_hex() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw");
        std::fs::write(&raw, [7u8; 32]).unwrap();
        let hexed = dir.path().join("hex");
        std::fs::write(&hexed, format!("{}\n", hex::encode([7u8; 32]))).unwrap();
        let a = ChunkCipher::from_key_file(&raw).unwrap();
        let b = ChunkCipher::from_key_file(&hexed).unwrap();
        assert_eq!(a.key_id(), b.key_id());
        assert_eq!(a.key_id(), cipher(7).key_id());
        assert!(!format!("{a:?}").contains(&hex::encode([7u8; 32])));

        let short = dir.path().join("short");
        std::fs::write(&short, b"0123").unwrap();
        let err = ChunkCipher::from_key_file(&short).unwrap_err();
        assert!(matches!(err, VersionError::BadKey { len: 4, .. }), "{err}");
        std::fs::write(&short, "zz".repeat(32)).unwrap();
        assert!(ChunkCipher::from_key_file(&short).unwrap_err().to_string().contains("64 hex digits"));

        let missing = dir.path().join("missing");
        let msg = ChunkCipher::from_key_file(&missing).unwrap_err().to_string();
        assert!(msg.starts_with(&format!("cannot read key file {}", missing.display())), "{msg}");
        assert!(msg.contains("head -c 32 /dev/urandom"), "{msg}");
    }
}
