//! Workload 4, a CPU benchmark: a shell loop hashing 8 MiB of zeros with
//! busybox sha256sum, round after round (one core busy; the round count in
//! /tmp/cpu), with memtick holding the memory of the size as ballast and as
//! the clock, and echo-server for a pinging client.

use super::{Spec, TESTBOX, echo_client, memtick, shell};

pub fn spec(mib: u64) -> Spec {
    let script = format!(
        "{{ {}& }} && {{ /usr/local/bin/echo-server --port {}& }} && \
         i=0; while :; do head -c 8388608 /dev/zero | sha256sum >/dev/null; i=$((i+1)); echo $i >/tmp/cpu; done",
        memtick(mib, None),
        super::ECHO_PORT
    );
    Spec {
        image: TESTBOX,
        argv: shell(script),
        fill: None,
        client: Some(echo_client()),
        described: format!(
            "sha256sum of 8 MiB in a loop (one core); memtick --mib {mib} as ballast; echo-server pinged"
        ),
    }
}
