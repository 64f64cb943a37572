//! Random bits from the kernel, for session ids and heartbeat jitter.

use std::io::Read;

fn bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    // /dev/urandom never blocks once the kernel's pool is seeded (long
    // before any daemon starts) and cannot run dry.
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).expect("reading /dev/urandom");
    buf
}

/// 128 random bits as hex: unguessable, so a session cannot be taken over
/// by guessing its id.
pub fn session_id() -> String {
    bytes::<16>().iter().map(|b| format!("{b:02x}")).collect()
}

/// Uniform in [0, 1).
pub fn unit() -> f64 {
    (u64::from_le_bytes(bytes::<8>()) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_differ_and_units_stay_in_range() {
        assert_ne!(super::session_id(), super::session_id());
        assert_eq!(super::session_id().len(), 32);
        for _ in 0..100 {
            assert!((0.0..1.0).contains(&super::unit()));
        }
    }
}
