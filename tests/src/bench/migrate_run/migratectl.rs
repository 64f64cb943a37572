//! A migration by `migratectl`: the workload started with `migratectl run
//! --host SOURCE`, moved with `migratectl migrate --to TARGET --mode MODE
//! --json`, its clients loading it throughout.

use std::time::Instant;

use serde_json::Value;

use super::{Rig, Sample, Spec, read_migration_json};
use crate::bench::{ms_since, unix_ms};

impl Rig<'_> {
    pub(super) fn migratectl(&self, mode: &str, spec: &Spec, s: &mut Sample) -> Result<(), String> {
        let (src, dst) = (self.source, self.target);
        let id = s.id.clone();
        let mut run = vec![
            "migratectl",
            "run",
            "--json",
            "--host",
            src.name.as_str(),
            spec.image.name,
            &id,
            "--",
        ];
        run.extend(spec.argv.iter().map(String::as_str));
        let out = self.on(src, &run, "starting the workload with migratectl run")?;
        let ip = serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v["ip"].as_str().map(String::from))
            .ok_or_else(|| format!("migratectl run --json printed no ip: {}", out.stdout_str()))?;
        let before = self.ready(s, spec, src, &id)?;

        let watch = self.watch(spec, Some(&ip))?;
        let counters = self.counters()?;
        let started = unix_ms();
        let t0 = Instant::now();
        let out = self.on(
            src,
            &[
                "migratectl",
                "migrate",
                "--to",
                dst.name.as_str(),
                "--mode",
                mode,
                "--json",
                &id,
            ],
            "migratectl migrate",
        );
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                self.unwatch(watch, s, unix_ms());
                return Err(e);
            }
        };
        s.steps.insert("migratectl-migrate".into(), ms_since(t0));
        let t = Instant::now();
        let after = self.ticking_after(dst, &id, started);
        s.steps.insert("until-ticking".into(), ms_since(t));
        s.total_ms = Some(ms_since(t0));
        let wire = self.count_wire(s, counters);
        let end_ms = unix_ms();
        let t0_ms = watch.t0_ms;
        self.unwatch(watch, s, end_ms);
        let (after, ()) = (after?, wire?);
        let json: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "migratectl migrate --json printed no JSON ({e}): {}",
                out.stdout_str()
            )
        })?;
        read_migration_json(s, &json);
        s.detail = json;
        self.downtime(s, &id, (&before, &after), (t0_ms, end_ms));
        Ok(())
    }
}
