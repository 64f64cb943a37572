//! The stock path of a migration: runc.v2 and plain `ctr` on each host,
//! the checkpoint image exported to an archive that the bench binary itself
//! sends over the cluster network ([`crate::bench::wire`]: ctr has no way to
//! move a checkpoint between hosts), imported and restored on the target.

use std::time::{Duration, Instant};

use containerd_migrate_tests::cluster::Host;
use containerd_migrate_tests::fixture::RUNC_V2;
use containerd_migrate_tests::process::{self, Background, Output};

use super::{ARCHIVE_DIR, Rig, Sample, Spec, WIRE_PORT_BASE, last_lines};
use crate::bench::{ms_since, unix_ms};

impl Rig<'_> {
    pub(super) fn stock(&self, spec: &Spec, s: &mut Sample) -> Result<(), String> {
        let (src, dst) = (self.source, self.target);
        let id = s.id.clone();
        let reference = Self::reference(&id);
        let archive = format!("{ARCHIVE_DIR}/{id}.tar");
        let mut run = vec![
            "ctr",
            "run",
            "-d",
            "--runtime",
            RUNC_V2,
            spec.image.name,
            &id,
        ];
        run.extend(spec.argv.iter().map(String::as_str));
        self.on(src, &run, "starting the workload under runc.v2")?;
        let before = self.ready(s, spec, src, &id)?;

        let watch = self.watch(spec, None)?;
        let counters = self.counters()?;
        let t0 = Instant::now();
        let mut step = |name: &str, host: &Host, argv: &[&str]| -> Result<Output, String> {
            let t = Instant::now();
            let out = self.on(host, argv, name)?;
            s.steps.insert(name.to_string(), ms_since(t));
            Ok(out)
        };
        step(
            "checkpoint",
            src,
            &[
                "ctr",
                "containers",
                "checkpoint",
                "--task",
                "--rw",
                &id,
                &reference,
            ],
        )?;
        step(
            "stop-source",
            src,
            &["ctr", "tasks", "delete", "--force", &id],
        )?;
        // Without --skip-manifest-json, ctr 2.1.9 fails on a checkpoint image
        // ("unable to create manifests file": its Docker manifest.json writer
        // reads the checkpoint's layers as JSON).
        step(
            "export",
            src,
            &[
                "ctr",
                "images",
                "export",
                "--skip-manifest-json",
                &archive,
                &reference,
            ],
        )?;
        s.payload_bytes = std::fs::metadata(src.on_disk(&archive))
            .ok()
            .map(|m| m.len() as f64);
        let t = Instant::now();
        self.copy(&archive)?;
        // Each archive goes once used (a few ms, within the step): a 1 GiB
        // migration then needs 3 GiB of disk at most, not 5.
        let _ = std::fs::remove_file(src.on_disk(&archive));
        s.steps.insert("copy".into(), ms_since(t));
        let restore_started = unix_ms();
        let mut step = |name: &str, argv: &[&str]| -> Result<Output, String> {
            let t = Instant::now();
            let out = self.on(dst, argv, name)?;
            s.steps.insert(name.to_string(), ms_since(t));
            Ok(out)
        };
        step("import", &["ctr", "images", "import", &archive])?;
        let _ = std::fs::remove_file(dst.on_disk(&archive));
        step(
            "restore",
            &[
                "ctr",
                "containers",
                "restore",
                "--live",
                "--rw",
                &id,
                &reference,
            ],
        )?;
        let t = Instant::now();
        let after = self.ticking_after(dst, &id, restore_started)?;
        s.steps.insert("until-ticking".into(), ms_since(t));
        s.total_ms = Some(ms_since(t0));
        self.count_wire(s, counters)?;
        let end_ms = unix_ms();
        let t0_ms = watch.t0_ms;
        self.unwatch(watch, s, end_ms);
        self.downtime(s, &id, (&before, &after), (t0_ms, end_ms));
        Ok(())
    }

    /// Sends the stock path's archive from the source to the target over
    /// the cluster network.
    fn copy(&self, archive: &str) -> Result<(), String> {
        let port = self.wire_port.get();
        self.wire_port.set(port.wrapping_add(1).max(WIRE_PORT_BASE));
        let address = format!("{}:{port}", self.target.ip);
        let bin = self.bench_bin.display().to_string();
        let mut receiver = Background::spawn(
            self.target
                .command(&[&bin, "wire-receive", "--listen", &address, archive]),
            None,
        );
        let sent = process::run_within(
            self.source
                .command(&[&bin, "wire-send", "--to", &address, archive]),
            self.timeout,
        )?;
        if !sent.success() {
            return Err(format!(
                "sending the archive to {} failed: {} / receiver: {}",
                self.target.name,
                last_lines(&sent.stderr_str(), 3),
                last_lines(&String::from_utf8_lossy(&receiver.stderr_so_far()), 3)
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = receiver.try_status() {
                if status.success() {
                    return Ok(());
                }
                return Err(format!(
                    "receiving the archive on {} failed: {}",
                    self.target.name,
                    last_lines(&String::from_utf8_lossy(&receiver.stderr_so_far()), 3)
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(format!(
            "the receiver on {} did not end within 10 s of the sender",
            self.target.name
        ))
    }
}
