//! The OCI chain ID: a stack of image layers named by what they hold.
//!
//! containerd's unpacker commits the snapshot of each layer of an image
//! under the chain ID of the layers up to it, and a container's snapshot is
//! prepared on the one of the image's top layer. So the parent of a
//! container's snapshot names its image's layers by content, the same on
//! every host, where the snapshot directories an overlay mounts (its
//! lowerdirs) are numbered by each host's snapshotter and differ from host
//! to host, and even on one host once the image is unpacked again.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Digest;

use crate::hashing::Sha256;

const PREFIX: &str = "sha256:";

/// The chain ID of a stack of layers: `sha256:` and 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChainId(Sha256);

impl ChainId {
    /// The chain ID of the layers whose diff IDs (the sha256 of each
    /// uncompressed layer, as an image config's `rootfs.diff_ids` lists
    /// them, bottom first) are `diff_ids`: `ChainID(L0) = DiffID(L0)`,
    /// `ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1) + " " + DiffID(Ln))`.
    pub fn of_layers<S: AsRef<str>>(diff_ids: &[S]) -> Result<ChainId, String> {
        let mut layers = diff_ids.iter().map(|d| d.as_ref().parse::<ChainId>().map_err(|e| format!("diff ID {e}")));
        let mut chain = layers.next().ok_or("an image without layers has no chain ID")??;
        for diff in layers {
            let next = sha2::Sha256::digest(format!("{chain} {}", diff?));
            chain = ChainId(hex::encode(next).parse().expect("hex of a sha256 is a Sha256"));
        }
        Ok(chain)
    }
}

impl fmt::Display for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", self.0)
    }
}

impl fmt::Debug for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainId({self})")
    }
}

impl FromStr for ChainId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not sha256: and 64 lowercase hex digits");
        let hex = s.strip_prefix(PREFIX).ok_or_else(bad)?;
        hex.parse().map(ChainId).map_err(|_| bad())
    }
}

impl Serialize for ChainId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ChainId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|e| serde::de::Error::custom(format!("chain ID {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn one_layer_is_its_diff_id() {
        assert_eq!(ChainId::of_layers(&[A]).unwrap().to_string(), A);
        assert!(ChainId::of_layers::<&str>(&[]).unwrap_err().contains("without layers"));
    }

    /// A value computed outside this code: `printf '%s %s' $A $B | sha256sum`.
    #[test]
    fn two_layers_known_value() {
        assert_eq!(
            ChainId::of_layers(&[A, B]).unwrap().to_string(),
            "sha256:ccd722928bd92476ba1745586fed6e45a102504185ad88cd89e01ff116fd146c"
        );
    }

    #[test]
    fn each_layer_hashes_the_chain_below_it() {
        let two = ChainId::of_layers(&[A, B]).unwrap();
        let three = ChainId::of_layers(&[A, B, A]).unwrap();
        let expected = format!("sha256:{}", hex::encode(sha2::Sha256::digest(format!("{two} {A}"))));
        assert_eq!(three.to_string(), expected);
        assert_ne!(ChainId::of_layers(&[B, A]).unwrap(), two, "the order of the layers counts");
    }

    #[test]
    fn only_sha256_digests_parse() {
        assert_eq!(A.parse::<ChainId>().unwrap().to_string(), A);
        for bad in ["", "sha256:", &A[7..], &A.to_uppercase(), "sha512:aa", "sha256:aaaa-0-1000"] {
            let err = bad.parse::<ChainId>().unwrap_err();
            assert!(err.contains("64 lowercase hex digits"), "{bad}: {err}");
        }
        let err = ChainId::of_layers(&[A, "layer.tar"]).unwrap_err();
        assert!(err.contains("diff ID \"layer.tar\""), "{err}");
    }

    #[test]
    fn wire_format_is_the_digest_string() {
        let id: ChainId = A.parse().unwrap();
        assert_eq!(serde_json::to_value(id).unwrap(), A);
        assert_eq!(serde_json::from_value::<ChainId>(A.into()).unwrap(), id);
        let err = serde_json::from_value::<ChainId>("sha256:xyz".into()).unwrap_err();
        assert!(err.to_string().contains("chain ID"), "{err}");
    }
}
