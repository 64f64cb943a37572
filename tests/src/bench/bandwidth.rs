//! Bandwidth over time during a migration: both hosts' transmit counters
//! sampled every ~50 ms by a thread.
//!
//! A host's `eth0` is one end of a veth whose other end, named after the
//! host's network namespace (`cm-CLUSTER-HOST`, hack/cluster.sh), sits on the
//! cluster's bridge in the machine's namespace. What the host sends, its
//! peer receives, byte for byte, so the peer's `rx_bytes` in the machine's
//! sysfs is the host's tx counter, read without entering the namespace or
//! running `ip` twenty times a second.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use super::{link, unix_ms};

/// One sample: when, and what each host had sent so far.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Point {
    pub at_ms: u64,
    pub source_tx: u64,
    pub target_tx: u64,
}

/// A running sampler; [`Sampler::stop`] hands back its points.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<Point>>,
}

/// The file holding the bytes `host` has sent.
fn tx_file(cluster: &str, host: &str) -> PathBuf {
    PathBuf::from("/sys/class/net")
        .join(link::netns(cluster, host))
        .join("statistics/rx_bytes")
}

fn read(path: &PathBuf) -> Result<u64> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("{} holds {text:?}", path.display()))
}

impl Sampler {
    /// Starts sampling the source's and the target's counters every `every`.
    pub fn start(cluster: &str, source: &str, target: &str, every: Duration) -> Result<Sampler> {
        let (src, dst) = (tx_file(cluster, source), tx_file(cluster, target));
        // Fail here, not silently in the thread.
        read(&src)?;
        read(&dst)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut points = Vec::new();
            loop {
                if let (Ok(source_tx), Ok(target_tx)) = (read(&src), read(&dst)) {
                    points.push(Point {
                        at_ms: unix_ms(),
                        source_tx,
                        target_tx,
                    });
                }
                // Checked after the sample: the last one is taken at stop.
                if s.load(Ordering::Relaxed) {
                    return points;
                }
                std::thread::sleep(every);
            }
        });
        Ok(Sampler { stop, handle })
    }

    pub fn stop(self) -> Vec<Point> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

/// Mbit/s both hosts sent between consecutive points, at the later point's
/// time in seconds after `t0_ms`: the series a bandwidth plot draws.
pub fn rates(points: &[Point], t0_ms: u64) -> Vec<(f64, f64)> {
    points
        .windows(2)
        .filter(|w| w[1].at_ms > w[0].at_ms)
        .map(|w| {
            let bytes =
                (w[1].source_tx + w[1].target_tx).saturating_sub(w[0].source_tx + w[0].target_tx);
            let secs = (w[1].at_ms - w[0].at_ms) as f64 / 1000.0;
            (
                (w[1].at_ms as f64 - t0_ms as f64) / 1000.0,
                bytes as f64 * 8.0 / secs / 1e6,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_between_points() {
        let p = |at_ms, source_tx, target_tx| Point {
            at_ms,
            source_tx,
            target_tx,
        };
        let r = rates(
            &[p(1000, 0, 0), p(1050, 6_000_000, 250_000), p(1050, 1, 1)],
            1000,
        );
        assert_eq!(r, vec![(0.05, 1000.0)]);
    }
}
