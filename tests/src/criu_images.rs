//! Facts CRIU recorded in its images, for tests that must see how a dump
//! was taken. CRIU has no command for them short of `crit`, which needs
//! Python; the few fields needed are read from the protobuf directly.

use std::path::Path;

/// CRIU's `NETWORK_LOCK_METHOD` values (criu/include/cr_options.h); 0 is
/// iptables.
pub const NETWORK_LOCK_NFTABLES: u64 = 1;
pub const NETWORK_LOCK_SKIP: u64 = 2;

/// The network lock method recorded in an `inventory.img` (field 11 of
/// `inventory_entry`), which CRIU's restores of the dump follow.
pub fn network_lock_method(inventory: &Path) -> Result<Option<u64>, String> {
    let bytes =
        std::fs::read(inventory).map_err(|e| format!("read {}: {e}", inventory.display()))?;
    lock_method_in(&bytes).map_err(|e| format!("{}: {e}", inventory.display()))
}

fn lock_method_in(bytes: &[u8]) -> Result<Option<u64>, String> {
    // A magic number, then one entry prefixed with its length.
    let len = bytes.get(4..8).ok_or("too short for an image")?;
    let len = u32::from_le_bytes(len.try_into().unwrap()) as usize;
    let entry = bytes.get(8..8 + len).ok_or("entry cut short")?;
    let mut at = 0;
    while at < entry.len() {
        let key = varint(entry, &mut at)?;
        match key & 7 {
            0 => {
                let value = varint(entry, &mut at)?;
                if key >> 3 == 11 {
                    return Ok(Some(value));
                }
            }
            1 => at += 8,
            2 => at += varint(entry, &mut at)? as usize,
            5 => at += 4,
            wire => return Err(format!("unexpected wire type {wire}")),
        }
    }
    Ok(None)
}

fn varint(bytes: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at).ok_or("varint cut short")?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint too long".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// inventory.img of a CRIU 4.2.1 dump with `--network-lock skip`. Its
    /// `root_ids` holds a field 11 of its own (with value 8), which is not
    /// the lock method.
    const SKIP_INVENTORY: &[u8] = &[
        0x16, 0x31, 0x31, 0x58, 0x4e, 0x00, 0x00, 0x00, 0x08, 0x02, 0x10, 0x01, 0x1a, 0x18, 0x08,
        0x01, 0x10, 0x01, 0x18, 0x01, 0x20, 0x01, 0x28, 0x01, 0x30, 0x02, 0x38, 0x03, 0x40, 0x04,
        0x48, 0x06, 0x50, 0x07, 0x58, 0x08, 0x60, 0x05, 0x20, 0x01, 0x28, 0x01, 0x30, 0x00, 0x58,
        0x02, 0x62, 0x00, 0x6a, 0x24, 0x37, 0x35, 0x66, 0x32, 0x30, 0x66, 0x63, 0x38, 0x2d, 0x65,
        0x66, 0x30, 0x30, 0x2d, 0x34, 0x63, 0x64, 0x39, 0x2d, 0x39, 0x39, 0x35, 0x34, 0x2d, 0x61,
        0x61, 0x63, 0x31, 0x63, 0x30, 0x61, 0x36, 0x31, 0x64, 0x66, 0x64,
    ];

    #[test]
    fn reads_the_lock_method_of_a_real_inventory() {
        assert_eq!(lock_method_in(SKIP_INVENTORY), Ok(Some(NETWORK_LOCK_SKIP)));
    }

    #[test]
    fn a_cut_image_is_an_error() {
        assert!(lock_method_in(&SKIP_INVENTORY[..40]).is_err());
        assert!(lock_method_in(&SKIP_INVENTORY[..6]).is_err());
    }
}
