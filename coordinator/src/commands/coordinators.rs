//! `migratectl coordinator`: the coordinator's replicas, which one leads
//! and since when.

use std::process::ExitCode;

use anyhow::{Context, Result};
use migrate_cluster::proto::ListCoordinatorsRequest;
use serde::Serialize;

use crate::cluster_client::ClusterArgs;
use crate::output::{Table, write_stdout};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Row {
    name: String,
    url: String,
    leader: bool,
    /// Since when it leads, if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    leader_since_unix_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    leader_for_ms: Option<u64>,
    started_unix_ms: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    store: String,
    replicas: Vec<Row>,
}

pub async fn run(a: Args) -> Result<ExitCode> {
    let mut client = a.cluster.coordinator().await?;
    let answer = client
        .list_coordinators(ListCoordinatorsRequest {})
        .await
        .map_err(|s| anyhow::anyhow!(migrate_cluster::tls::status_chain(&s)))
        .with_context(|| format!("listing the coordinators of {}", a.cluster.url()))?
        .into_inner();
    let now = answer.now_unix_ms;
    let replicas: Vec<Row> = answer
        .replicas
        .into_iter()
        .map(|r| Row {
            leader_since_unix_ms: r.leader.then_some(r.leader_since_unix_ms),
            leader_for_ms: r.leader.then(|| now.saturating_sub(r.leader_since_unix_ms)),
            name: r.name,
            url: r.url,
            leader: r.leader,
            started_unix_ms: r.started_unix_ms,
        })
        .collect();
    let report = Report { store: answer.store, replicas };
    if a.json {
        write_stdout(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&["NAME", "URL", "LEADER", "SINCE"]);
    for r in &report.replicas {
        table.row(vec![
            r.name.clone(),
            r.url.clone(),
            if r.leader { "yes" } else { "no" }.into(),
            r.leader_for_ms.map_or("-".into(), |ms| format!("{} ago", crate::commands::hosts::human_age(ms))),
        ]);
    }
    write_stdout(&table.render())?;
    if !report.replicas.iter().any(|r| r.leader) {
        write_stdout("no replica leads at the moment (an election is under way)\n")?;
    }
    Ok(ExitCode::SUCCESS)
}
