//! Workload 1, idle: memtick with its memory touched once (the workload of
//! issue 14's benchmark), beside echo-server so that a client can ping the
//! container through the migration (a few hundred bytes a second: the
//! container stays idle for all the memory cares).

use super::{Spec, TESTBOX, echo_client, memtick, shell};

pub fn spec(mib: u64) -> Spec {
    let script = format!(
        "/usr/local/bin/echo-server --port {} >/dev/null & exec {}",
        super::ECHO_PORT,
        memtick(mib, None)
    );
    Spec {
        image: TESTBOX,
        argv: shell(script),
        fill: None,
        client: Some(echo_client()),
        described: format!("memtick --mib {mib}, memory written once; echo-server pinged"),
    }
}
