//! Workload 3, a dynamic service under load: Debian bookworm's redis-server
//! (hack/bench/redis-image.sh) filled to the size with `DEBUG POPULATE`,
//! loaded by a client that alternates `INCR` of a counter (each answer must
//! be the last plus one: the state carried on) and `GET` of a filled key
//! (its value must have its size: the memory came across), over one kept
//! connection. A 1 MiB memtick beside the server is its clock.

use std::time::Duration;

use super::super::load::Protocol;
use super::{ClientSpec, Image, Spec, memtick, shell};

pub const IMAGE: Image = Image {
    name: "localhost/containerd-migrate/redis:latest",
    script: "bench/redis-image.sh",
};
const PORT: u16 = 6379;
/// Bytes per value; the key count follows from the size.
const VALUE_BYTES: usize = 1000;

/// Keys that fill about `mib` MiB with values and Redis's own overhead
/// (about 100 bytes a key).
fn keys(mib: u64) -> u64 {
    mib * 1_048_576 / (VALUE_BYTES as u64 + 100)
}

pub fn spec(mib: u64) -> Spec {
    // No persistence (a migration must carry the memory, not a dump file);
    // DEBUG is off by default since Redis 7 and POPULATE needs it. --dir
    // /tmp: Debian's /var/lib/redis belongs to the user redis (0750), and a
    // container of `migratectl run` has no CAP_DAC_OVERRIDE (its root gets
    // only kill, net_bind_service and audit_write), so the server, which
    // looks for a dump file at start, would exit with "Permission denied".
    let script = format!(
        "{{ {}& }} && exec /usr/bin/redis-server --bind 0.0.0.0 --port {PORT} --dir /tmp \
         --protected-mode no --save '' --appendonly no --enable-debug-command yes",
        memtick(1, None)
    );
    let n = keys(mib);
    Spec {
        image: IMAGE,
        argv: shell(script),
        fill: Some(
            [
                "/usr/bin/redis-cli",
                "-p",
                &PORT.to_string(),
                "DEBUG",
                "POPULATE",
                &n.to_string(),
                "key",
                &VALUE_BYTES.to_string(),
            ]
            .map(String::from)
            .to_vec(),
        ),
        client: Some(ClientSpec {
            protocol: Protocol::Redis {
                keys: n,
                value_bytes: VALUE_BYTES,
            },
            port: PORT,
            pause: Duration::from_millis(2),
        }),
        described: format!(
            "redis-server with {n} keys of {VALUE_BYTES} bytes (DEBUG POPULATE); INCR and GET, every answer checked; memtick --mib 1 as the clock"
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_fill_the_size() {
        assert_eq!(super::keys(64), 61_008);
    }
}
