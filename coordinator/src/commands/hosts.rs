//! `migratectl hosts`: the cluster's hosts as the coordinator knows them;
//! `migratectl hosts rm` forgets down ones.

use std::process::ExitCode;

use anyhow::{Context, Result};
use migrate_cluster::proto::{HostState, ListHostsRequest, RemoveHostRequest};
use serde::Serialize;

use crate::cluster_client::ClusterArgs;
use crate::output::{Table, human_ms, write_stdout};

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Forget hosts that are down (a decommissioned host stays listed until then)
    Rm {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Hosts to forget
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct HostRow {
    name: String,
    address: String,
    state: &'static str,
    containers: u32,
    last_heartbeat: String,
    last_heartbeat_age_ms: u64,
    state_since: String,
    state_age_ms: u64,
    /// Why it was declared down, while it is.
    #[serde(skip_serializing_if = "String::is_empty")]
    down_reason: String,
    labels: std::collections::BTreeMap<String, String>,
    /// Image names in the cluster's containerd namespace.
    images: Vec<String>,
    containerd_version: String,
    criu_version: String,
    kernel_version: String,
}

pub async fn run(args: Args) -> Result<ExitCode> {
    match args.command {
        Some(Command::Rm { cluster, names }) => remove(&cluster, &names).await,
        None => list(&args.cluster, args.json).await,
    }
}

async fn remove(cluster: &ClusterArgs, names: &[String]) -> Result<ExitCode> {
    let mut client = cluster.coordinator().await?;
    let mut code = ExitCode::SUCCESS;
    for name in names {
        match client.remove_host(RemoveHostRequest { name: name.clone() }).await {
            Ok(_) => write_stdout(&format!("{name}\n"))?,
            // One refusal (a ready host) does not stop the others.
            Err(s) => {
                eprintln!("migratectl: removing host {name}: {}", migrate_cluster::tls::status_chain(&s));
                code = ExitCode::FAILURE;
            }
        }
    }
    Ok(code)
}

async fn list(cluster: &ClusterArgs, json: bool) -> Result<ExitCode> {
    let mut client = cluster.coordinator().await?;
    let answer = client
        .list_hosts(ListHostsRequest {})
        .await
        .map_err(|s| anyhow::anyhow!(migrate_cluster::tls::status_chain(&s)))
        .with_context(|| format!("listing the hosts of {}", cluster.url()))?
        .into_inner();
    let now = answer.now_unix_ms;
    let rows: Vec<HostRow> = answer
        .hosts
        .into_iter()
        .map(|h| {
            let state = match h.state() {
                HostState::Ready => "ready",
                HostState::Down => "down",
                HostState::Unspecified => "unknown",
            };
            let info = h.info.unwrap_or_default();
            HostRow {
                name: info.name,
                address: info.address,
                state,
                containers: info.containers,
                last_heartbeat: rfc3339(h.last_heartbeat_unix_ms),
                last_heartbeat_age_ms: now.saturating_sub(h.last_heartbeat_unix_ms),
                state_since: rfc3339(h.state_since_unix_ms),
                state_age_ms: now.saturating_sub(h.state_since_unix_ms),
                down_reason: h.down_reason,
                labels: info.labels.into_iter().collect(),
                images: info.images,
                containerd_version: info.containerd_version,
                criu_version: info.criu_version,
                kernel_version: info.kernel_version,
            }
        })
        .collect();
    if json {
        write_stdout(&format!("{}\n", serde_json::to_string_pretty(&rows)?))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&["NAME", "ADDRESS", "STATE", "SINCE", "CONTAINERS", "LAST HEARTBEAT"]);
    for r in &rows {
        table.row(vec![
            r.name.clone(),
            r.address.clone(),
            r.state.to_string(),
            format!("{} ago", human_age(r.state_age_ms)),
            r.containers.to_string(),
            format!("{} ago", human_age(r.last_heartbeat_age_ms)),
        ]);
    }
    write_stdout(&table.render())?;
    for r in rows.iter().filter(|r| !r.down_reason.is_empty()) {
        write_stdout(&format!("{} is down: {}\n", r.name, r.down_reason))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// An age as a heartbeat's is read: milliseconds while it is fresh, then
/// the largest unit (a host down since yesterday is "26 h", not 93600 s).
pub fn human_age(ms: u64) -> String {
    match ms / 1000 {
        0..10 => human_ms(Some(ms as f64)),
        s @ 10..120 => format!("{s} s"),
        s @ 120..7200 => format!("{} min", s / 60),
        s @ 7200..172_800 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    }
}

fn rfc3339(unix_ms: u64) -> String {
    let nanos = i128::from(unix_ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_in_the_largest_unit() {
        assert_eq!(human_age(412), "412 ms");
        assert_eq!(human_age(3_250), "3.25 s");
        assert_eq!(human_age(14_200), "14 s");
        assert_eq!(human_age(300_000), "5 min");
        assert_eq!(human_age(26 * 3_600_000), "26 h");
        assert_eq!(human_age(3 * 86_400_000), "3 d");
        assert_eq!(rfc3339(1_796_601_600_123), "2026-12-07T00:00:00.123Z");
    }
}
