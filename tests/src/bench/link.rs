//! The link between cluster hosts as the `migrate` benchmark needs it:
//! limited to a bandwidth with `tc ... tbf` (this kernel has no netem), and
//! its byte counters read before and after a migration.
//!
//! tbf shapes egress only, so every host's `eth0` (its end of the veth to
//! the cluster's bridge) gets the limit inside the host's network namespace
//! (`cm-CLUSTER-HOST`, hack/cluster.sh): data from h1 to h2 is limited
//! leaving h1, data from h2 to h1 leaving h2. `hack/cluster.sh down`
//! deletes the namespaces, and the qdiscs with them.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use containerd_migrate_tests::process;

/// The host's interface on the cluster's bridge.
const DEVICE: &str = "eth0";

/// The tbf settings (PLATFORM.md: they work in a network namespace here).
const BURST: &str = "256k";
const LATENCY: &str = "10ms";

/// The network namespace of `host` in cluster `cluster`.
pub fn netns(cluster: &str, host: &str) -> String {
    format!("cm-{cluster}-{host}")
}

/// `ip ARGS` in `host`'s network namespace.
fn ip(cluster: &str, host: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.arg("-n").arg(netns(cluster, host)).args(args);
    cmd
}

/// Limits what `host` sends to the other hosts to `rate` (tc's units:
/// `1gbit`).
pub fn shape(cluster: &str, host: &str, rate: &str) -> Result<()> {
    let mut tc = Command::new("ip");
    tc.args([
        "netns",
        "exec",
        &netns(cluster, host),
        "tc",
        "qdisc",
        "replace",
    ])
    .args(["dev", DEVICE, "root", "tbf", "rate", rate])
    .args(["burst", BURST, "latency", LATENCY]);
    let out = process::run_within(tc, Duration::from_secs(10)).map_err(anyhow::Error::msg)?;
    if !out.success() {
        bail!(
            "limiting {host}'s {DEVICE} to {rate} with tc tbf failed (iproute2's tc, sch_tbf):\n{out}"
        );
    }
    Ok(())
}

/// The qdisc on `host`'s link, as `tc qdisc show` prints it (for the
/// results file: proof of what was measured).
pub fn qdisc(cluster: &str, host: &str) -> String {
    let mut tc = Command::new("ip");
    tc.args([
        "netns",
        "exec",
        &netns(cluster, host),
        "tc",
        "qdisc",
        "show",
    ])
    .args(["dev", DEVICE]);
    process::run_within(tc, Duration::from_secs(10))
        .map(|o| o.stdout_str().trim().to_string())
        .unwrap_or_else(|e| format!("unknown: {e}"))
}

/// Bytes `host` has sent and received on its link so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub tx: u64,
    pub rx: u64,
}

impl Counters {
    /// Reads `host`'s counters (`ip -s -j link show dev eth0`).
    pub fn read(cluster: &str, host: &str) -> Result<Counters> {
        let out = process::run_within(
            ip(cluster, host, &["-s", "-j", "link", "show", "dev", DEVICE]),
            Duration::from_secs(10),
        )
        .map_err(anyhow::Error::msg)?;
        if !out.success() {
            bail!("reading {host}'s link counters failed:\n{out}");
        }
        parse_counters(&out.stdout_str()).with_context(|| format!("reading {host}'s link counters"))
    }

    /// What was counted between `before` and `self`.
    pub fn since(self, before: Counters) -> Counters {
        Counters {
            tx: self.tx.saturating_sub(before.tx),
            rx: self.rx.saturating_sub(before.rx),
        }
    }
}

/// The tx and rx bytes of the one link in `ip -s -j link show` output.
fn parse_counters(json: &str) -> Result<Counters> {
    let v: serde_json::Value =
        serde_json::from_str(json).with_context(|| format!("`ip -j` printed {json:?}"))?;
    let stats = &v[0]["stats64"];
    let field = |dir: &str| {
        stats[dir]["bytes"]
            .as_u64()
            .with_context(|| format!("no stats64.{dir}.bytes in {json:?}"))
    };
    Ok(Counters {
        tx: field("tx")?,
        rx: field("rx")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_from_ip_json() {
        let json = r#"[{"ifindex":2,"ifname":"eth0","stats64":{"rx":{"bytes":1200,"packets":3},"tx":{"bytes":3400,"packets":5}}}]"#;
        let c = parse_counters(json).unwrap();
        assert_eq!(c, Counters { tx: 3400, rx: 1200 });
        let later = Counters { tx: 5400, rx: 1300 };
        assert_eq!(later.since(c), Counters { tx: 2000, rx: 100 });
        assert!(parse_counters("[]").is_err());
    }
}
