//! `migratectl run` and `migratectl ps`: containers run through the
//! cluster (the coordinator places them, gives them an IP, and their
//! host's agent runs them under io.containerd.migrate.v1).

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use migrate_cluster::proto::{
    Container, ContainerSpec, ContainerState, ListContainersRequest, Placement, RunContainerRequest,
};
use migrate_cluster::scheduler::{self, Rules};
use serde::Serialize;

use crate::cluster_client::ClusterArgs;
use crate::output::{Table, write_stdout};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Run on this host instead of the one the scheduler picks
    #[arg(long)]
    host: Option<String>,
    /// A rule on the hosts' labels, KEY==VALUE or KEY!=VALUE (node.name is the host's name; repeatable)
    #[arg(long = "constraint")]
    constraints: Vec<String>,
    /// container==ID (on the host of container ID) or container!=ID (repeatable)
    #[arg(long = "affinity")]
    affinities: Vec<String>,
    /// How the scheduler picks among the hosts that fit: spread, binpack or random
    #[arg(long, default_value = "spread")]
    strategy: String,
    /// A host port the container claims (no two claiming one share a host; repeatable)
    #[arg(long = "port")]
    ports: Vec<u32>,
    /// An annotation of the container's OCI spec, KEY=VALUE (checkpoint tickers, ready points; repeatable)
    #[arg(long = "annotation", value_parser = key_value)]
    annotations: Vec<(String, String)>,
    /// An environment variable, KEY=VALUE (repeatable)
    #[arg(long = "env")]
    env: Vec<String>,
    /// What the cluster does when the container's host is lost: checkpoint
    /// (restore its newest version elsewhere; needs a ticker whose store
    /// every host reaches), restart (start it afresh elsewhere) or none
    #[arg(long, value_parser = ["checkpoint", "restart", "none"])]
    restore_policy: Option<String>,
    /// Print the container as JSON
    #[arg(long)]
    json: bool,
    /// The image, as containerd names it (imported on a host of the cluster, or in a registry)
    image: String,
    /// The container's id in the cluster
    id: String,
    /// The command and its arguments (default: the image's)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

#[derive(Debug, clap::Args)]
pub struct PsArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

/// A container as `ps` and `run` print it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    id: String,
    host: String,
    ip: String,
    mac: String,
    state: &'static str,
    image: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    migrating_to: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    recovering_to: String,
    /// How it came back the last time its host was lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    recovery: Option<RecoveryRow>,
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RecoveryRow {
    from_host: String,
    /// None: started cold.
    version: Option<u64>,
    /// The state lost: from the version's taking to the lost host's last
    /// heartbeat (its last sign of life).
    #[serde(skip_serializing_if = "Option::is_none")]
    version_age_ms: Option<u64>,
    skipped: Vec<SkippedRow>,
    #[serde(skip_serializing_if = "String::is_empty")]
    cold_reason: String,
    last_heartbeat_unix_ms: u64,
    down_unix_ms: u64,
    running_unix_ms: u64,
}

#[derive(Debug, Serialize)]
struct SkippedRow {
    version: u64,
    reason: String,
}

fn row(c: Container) -> Row {
    let spec = c.spec.clone().unwrap_or_default();
    let net = c.network.clone().unwrap_or_default();
    Row {
        id: spec.id,
        host: c.host.clone(),
        ip: net.ip,
        mac: net.mac,
        state: state_name(c.state()),
        image: spec.image,
        migrating_to: c.migrating_to,
        recovering_to: c.recovering_to,
        recovery: c.recovery.map(|r| RecoveryRow {
            from_host: r.from_host,
            version: r.version,
            version_age_ms: r.version.map(|_| r.last_heartbeat_unix_ms.saturating_sub(r.version_created_unix_ms)),
            skipped: r.skipped.into_iter().map(|s| SkippedRow { version: s.version, reason: s.reason }).collect(),
            cold_reason: r.cold_reason,
            last_heartbeat_unix_ms: r.last_heartbeat_unix_ms,
            down_unix_ms: r.down_unix_ms,
            running_unix_ms: r.running_unix_ms,
        }),
        annotations: spec.annotations.into_iter().collect(),
    }
}

/// How it came back, for the table: "v7 from h1", "cold from h1".
fn came_back(r: &Row) -> String {
    match &r.recovery {
        None => "-".into(),
        Some(RecoveryRow { version: Some(v), from_host, .. }) => format!("v{v} from {from_host}"),
        Some(RecoveryRow { version: None, from_host, .. }) => format!("cold from {from_host}"),
    }
}

fn state_name(s: ContainerState) -> &'static str {
    match s {
        ContainerState::Created => "created",
        ContainerState::Running => "running",
        ContainerState::Paused => "paused",
        ContainerState::Stopped => "stopped",
        ContainerState::Unknown | ContainerState::Unspecified => "unknown",
    }
}

pub async fn run(a: RunArgs) -> Result<ExitCode> {
    let placement = Placement {
        constraints: a.constraints,
        affinities: a.affinities,
        strategy: scheduler::parse_strategy(&a.strategy).map_err(|e| anyhow!("--strategy: {e}"))?.into(),
        ports: a.ports,
    };
    // The coordinator checks them too; here the mistake is named at once.
    Rules::parse(&placement).map_err(|e| anyhow!("{e}"))?;
    let mut annotations: std::collections::HashMap<String, String> = a.annotations.into_iter().collect();
    if let Some(policy) = a.restore_policy {
        annotations.insert(migrate_cluster::containers::RESTORE_POLICY_ANNOTATION.to_string(), policy);
    }
    let spec = ContainerSpec {
        id: a.id.clone(),
        image: a.image,
        args: a.command,
        env: a.env,
        annotations,
        placement: Some(placement),
    };
    let mut client = a.cluster.coordinator().await?;
    let container = client
        .run_container(RunContainerRequest { spec: Some(spec), host: a.host.unwrap_or_default() })
        .await
        .map_err(|s| anyhow!(migrate_cluster::tls::status_chain(&s)))
        .with_context(|| format!("running {}", a.id))?
        .into_inner();
    let r = row(container);
    if a.json {
        write_stdout(&format!("{}\n", serde_json::to_string_pretty(&r)?))?;
    } else {
        write_stdout(&format!("{} runs on {} at {}\n", r.id, r.host, r.ip))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn ps(a: PsArgs) -> Result<ExitCode> {
    let mut client = a.cluster.coordinator().await?;
    let containers = client
        .list_containers(ListContainersRequest {})
        .await
        .map_err(|s| anyhow!(migrate_cluster::tls::status_chain(&s)))
        .with_context(|| format!("listing the containers of {}", a.cluster.url()))?
        .into_inner()
        .containers;
    let rows: Vec<Row> = containers.into_iter().map(row).collect();
    if a.json {
        write_stdout(&format!("{}\n", serde_json::to_string_pretty(&rows)?))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&["ID", "HOST", "IP", "STATE", "IMAGE", "RESTORED"]);
    for r in &rows {
        let host = match (r.migrating_to.as_str(), r.recovering_to.as_str()) {
            ("", "") => r.host.clone(),
            (to, "") => format!("{} -> {to}", r.host),
            (_, to) => format!("{} (lost) -> {to}", r.host),
        };
        table.row(vec![r.id.clone(), host, r.ip.clone(), r.state.to_string(), r.image.clone(), came_back(r)]);
    }
    write_stdout(&table.render())?;
    Ok(ExitCode::SUCCESS)
}
