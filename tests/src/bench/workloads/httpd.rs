//! Workload 2, a static web server under load: busybox httpd serving a
//! 16 KiB file, GET back to back by a client on the machine (another host of
//! the cluster network, through its bridge), with memtick holding the
//! memory of the size as ballast and as the clock.

use std::time::Duration;

use super::super::load::Protocol;
use super::{ClientSpec, Spec, TESTBOX, memtick, shell};

const PORT: u16 = 80;
const FILE_BYTES: u64 = 16 * 1024;

pub fn spec(mib: u64) -> Spec {
    // The file is made before httpd starts, so the first GET finds it.
    let script = format!(
        "mkdir -p /www && head -c {FILE_BYTES} /dev/urandom >/www/f && \
         {{ {}& }} && exec httpd -f -p {PORT} -h /www",
        memtick(mib, None)
    );
    Spec {
        image: TESTBOX,
        argv: shell(script),
        fill: None,
        client: Some(ClientSpec {
            protocol: Protocol::Http { path: "/f".into() },
            port: PORT,
            pause: Duration::from_millis(5),
        }),
        described: format!(
            "busybox httpd serving a {FILE_BYTES}-byte file, one connection per GET; memtick --mib {mib} as ballast"
        ),
    }
}
