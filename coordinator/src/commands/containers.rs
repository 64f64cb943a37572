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
    annotations: BTreeMap<String, String>,
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
        annotations: spec.annotations.into_iter().collect(),
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
    let spec = ContainerSpec {
        id: a.id.clone(),
        image: a.image,
        args: a.command,
        env: a.env,
        annotations: a.annotations.into_iter().collect(),
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
    let mut table = Table::new(&["ID", "HOST", "IP", "STATE", "IMAGE"]);
    for r in &rows {
        let host = if r.migrating_to.is_empty() { r.host.clone() } else { format!("{} -> {}", r.host, r.migrating_to) };
        table.row(vec![r.id.clone(), host, r.ip.clone(), r.state.to_string(), r.image.clone()]);
    }
    write_stdout(&table.render())?;
    Ok(ExitCode::SUCCESS)
}
