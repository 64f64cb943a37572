//! `migratectl migrate`: moves a running container to another host, with
//! the steps shown as they happen (on a terminal) and the figures at the
//! end (`--json`: mode and why, hosts, total and downtime, bytes before,
//! during and after the freeze, post-copy's faults and time to the last
//! page, per-step times).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, anyhow};
use indicatif::{ProgressBar, ProgressStyle};
use migrate_cluster::proto::{MigrateRequest, MigrationMode, MigrationResult, migrate_event};
use serde::Serialize;

use crate::cluster_client::ClusterArgs;
use crate::output::{human_bytes, human_ms, write_stdout};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The host to move it to (default: the one the scheduler picks, never its own)
    #[arg(long)]
    to: Option<String>,
    /// How: stop-and-copy (frozen while its memory crosses the link),
    /// post-copy (runs on the target at once, its memory follows), pre-copy
    /// (memory copied while it runs; needs soft-dirty tracking), or auto
    /// (the smallest predicted downtime the hosts allow)
    #[arg(long, default_value = "auto", value_parser = ["auto", "stop-and-copy", "post-copy", "pre-copy"])]
    mode: String,
    /// Print the result as JSON (and no progress)
    #[arg(long)]
    json: bool,
    /// The container's id in the cluster
    id: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    id: String,
    mode: String,
    source: String,
    target: String,
    ip: String,
    total_ms: f64,
    downtime_ms: f64,
    memory_bytes: u64,
    filesystem_bytes: u64,
    steps: Vec<StepReport>,
    /// Why this mode (for auto, what it compared).
    mode_reason: String,
    iterations: Vec<IterationReport>,
    bytes_before_freeze: u64,
    bytes_during_freeze: u64,
    bytes_after_freeze: u64,
    pages_faulted: u64,
    all_pages_ms: f64,
}

#[derive(Debug, Serialize)]
struct IterationReport {
    round: u32,
    bytes: u64,
    ms: f64,
}

#[derive(Debug, Serialize)]
struct StepReport {
    step: String,
    ms: f64,
}

pub async fn run(a: Args) -> Result<ExitCode> {
    let mut client = a.cluster.coordinator().await?;
    let mode = match a.mode.as_str() {
        "stop-and-copy" => MigrationMode::StopAndCopy,
        "post-copy" => MigrationMode::PostCopy,
        "pre-copy" => MigrationMode::PreCopy,
        _ => MigrationMode::Auto,
    };
    let request = MigrateRequest { id: a.id.clone(), to: a.to.unwrap_or_default(), mode: mode.into() };
    let mut stream = client
        .migrate(request)
        .await
        .map_err(|s| anyhow!("moving {}: {}", a.id, migrate_cluster::tls::status_chain(&s)))?
        .into_inner();
    let progress = Progress::new(a.json);
    let result = loop {
        match stream.message().await {
            Ok(Some(event)) => match event.event {
                Some(migrate_event::Event::Step(step)) if step.finished => {
                    progress.finished(&step.step, step.ms, &step.detail)
                }
                Some(migrate_event::Event::Step(step)) => progress.began(&step.step),
                Some(migrate_event::Event::Progress(p)) => progress.moved(&p.step, p.bytes),
                None => {}
                Some(migrate_event::Event::Done(result)) => break result,
            },
            Ok(None) => {
                progress.clear();
                return Err(anyhow!("the coordinator ended the migration of {} without a result", a.id));
            }
            Err(s) => {
                progress.clear();
                return Err(anyhow!(migrate_cluster::tls::status_chain(&s)));
            }
        }
    };
    progress.clear();
    let report = report(&a.id, result);
    if a.json {
        write_stdout(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
    } else {
        write_stdout(&format!(
            "{} moved from {} to {} ({}) by {}: downtime {}, total {}, {} of memory and {} of files moved\n",
            report.id,
            report.source,
            report.target,
            report.ip,
            report.mode,
            human_ms(Some(report.downtime_ms)),
            human_ms(Some(report.total_ms)),
            human_bytes(report.memory_bytes),
            human_bytes(report.filesystem_bytes)
        ))?;
        write_stdout(&format!(
            "  moved before the freeze {}, during it {}, after it {}{}\n  {}\n",
            human_bytes(report.bytes_before_freeze),
            human_bytes(report.bytes_during_freeze),
            human_bytes(report.bytes_after_freeze),
            match report.mode.as_str() {
                "post-copy" => format!(
                    "; every page on the target after {}, {} faults served on demand",
                    human_ms(Some(report.all_pages_ms)),
                    report.pages_faulted
                ),
                "pre-copy" => {
                    let rounds: Vec<String> = report
                        .iterations
                        .iter()
                        .map(|i| format!("{} in {}", human_bytes(i.bytes), human_ms(Some(i.ms))))
                        .collect();
                    format!("; rounds while it ran: {}", rounds.join(", "))
                }
                _ => String::new(),
            },
            report.mode_reason
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn report(id: &str, r: MigrationResult) -> Report {
    Report {
        id: id.to_string(),
        mode: r.mode,
        source: r.source,
        target: r.target,
        ip: r.ip,
        total_ms: r.total_ms,
        downtime_ms: r.downtime_ms,
        memory_bytes: r.memory_bytes,
        filesystem_bytes: r.filesystem_bytes,
        steps: r.steps.into_iter().map(|s| StepReport { step: s.step, ms: s.ms }).collect(),
        mode_reason: r.mode_reason,
        iterations: r
            .iterations
            .into_iter()
            .map(|i| IterationReport { round: i.round, bytes: i.bytes, ms: i.ms })
            .collect(),
        bytes_before_freeze: r.bytes_before_freeze,
        bytes_during_freeze: r.bytes_during_freeze,
        bytes_after_freeze: r.bytes_after_freeze,
        pages_faulted: r.pages_faulted,
        all_pages_ms: r.all_pages_ms,
    }
}

/// The steps on stderr: a spinner on the running one when stderr is a
/// terminal, one line per finished step either way (unless `--json`).
struct Progress {
    bar: Option<ProgressBar>,
    quiet: bool,
}

impl Progress {
    fn new(json: bool) -> Progress {
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("a valid template"));
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        Progress { bar, quiet: json }
    }

    fn began(&self, step: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(step.to_string());
        }
    }

    /// Bytes moved so far by the running step (the pages of a post-copy).
    fn moved(&self, step: &str, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{step}: {} on the target", human_bytes(bytes)));
        }
    }

    fn finished(&self, step: &str, ms: f64, detail: &str) {
        let line = format!("{step:<8} {:>9}  {detail}", human_ms(Some(ms)));
        match &self.bar {
            Some(bar) => bar.println(line),
            None if !self.quiet => eprintln!("{line}"),
            None => {}
        }
    }

    fn clear(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
