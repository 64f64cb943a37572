//! The version stores that checkpoint tickers fill (`--store URL`):
//! `checkpoint ls --store` lists versions, and `restore --store` rebuilds
//! them newest first until one restores (the inner loop of seed 001's
//! Algorithm 2), reporting why it skipped the newer ones.

use std::process::ExitCode;

use anyhow::Result;
pub use migrate_cluster::host::versions::{Choice, candidates, is_key_problem, open, rebuild};
use migrate_version_store::{ContainerRef, StoreLocation, VersionError, VersionStore};
use serde::Serialize;

use crate::output::{self, Table, human_bytes};

/// For clap: a store location, with the parser's own message.
pub fn parse_location(s: &str) -> Result<StoreLocation, String> {
    s.parse().map_err(|e: VersionError| e.to_string())
}

// ---------------------------------------------------------------- ls

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Listed {
    namespace: String,
    container: String,
    version: u64,
    #[serde(flatten)]
    summary: Option<Summary>,
    valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Summary {
    group: u64,
    base: u64,
    created: String,
    mode: migrate_version_store::IncrementalMode,
    key_id: Option<String>,
    bytes_total: u64,
    bytes_new: u64,
    chunks_total: u64,
    chunks_new: u64,
}

/// `checkpoint ls --store URL [--container ID]`; with `verify`, every
/// chunk a version names must be in the store.
pub fn ls(location: &StoreLocation, container: Option<ContainerRef>, verify: bool, json: bool) -> Result<ExitCode> {
    let store = open(location)?;
    let targets = match container {
        Some(c) => vec![c],
        None => store.list_containers()?,
    };
    let mut rows = Vec::new();
    for target in targets {
        for version in store.list_versions(&target)? {
            rows.push(listed(store.as_ref(), &target, version, verify));
        }
    }
    if json {
        output::print_json(&rows)?;
    } else {
        print!("{}", table(&rows).render());
        for r in rows.iter().filter(|r| !r.valid) {
            eprintln!(
                "{}/{} version {}: {}",
                r.namespace,
                r.container,
                r.version,
                r.problem.as_deref().unwrap_or("invalid")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn listed(store: &dyn VersionStore, target: &ContainerRef, version: u64, verify: bool) -> Listed {
    let mut row = Listed {
        namespace: target.namespace.clone(),
        container: target.id.clone(),
        version,
        summary: None,
        valid: false,
        problem: None,
    };
    let manifest = match migrate_version_store::read_manifest(store, target, version) {
        Ok(m) => m,
        Err(e) => {
            row.problem = Some(e.to_string());
            return row;
        }
    };
    row.summary = Some(Summary {
        group: manifest.group,
        base: manifest.base,
        created: manifest.created.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        mode: manifest.mode,
        key_id: manifest.encryption.as_ref().map(|e| e.key_id.clone()),
        bytes_total: manifest.bytes_total,
        bytes_new: manifest.bytes_new,
        chunks_total: manifest.chunks_total,
        chunks_new: manifest.chunks_new,
    });
    if verify {
        let ids: std::collections::BTreeSet<_> = manifest.chunk_ids().collect();
        for id in ids {
            match store.has_chunk(&id) {
                Ok(true) => {}
                Ok(false) => {
                    row.problem = Some(format!("chunk {id} is missing from the store"));
                    return row;
                }
                Err(e) => {
                    row.problem = Some(e.to_string());
                    return row;
                }
            }
        }
    }
    row.valid = true;
    row
}

fn table(rows: &[Listed]) -> Table {
    let mut t = Table::new(&["CONTAINER", "VERSION", "GROUP", "CREATED", "MODE", "SIZE", "NEW", "ENCRYPTED", "VALID"]);
    for r in rows {
        let s = r.summary.as_ref();
        t.row(vec![
            format!("{}/{}", r.namespace, r.container),
            r.version.to_string(),
            s.map_or("-".into(), |s| s.group.to_string()),
            s.map_or("-".into(), |s| output::human_time(&s.created)),
            s.map_or("-".into(), |s| {
                serde_json::to_value(s.mode).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
            }),
            s.map_or("-".into(), |s| human_bytes(s.bytes_total)),
            s.map_or("-".into(), |s| human_bytes(s.bytes_new)),
            s.and_then(|s| s.key_id.clone()).map_or("no".into(), |k| format!("key {k}")),
            if r.valid { "yes" } else { "NO" }.into(),
        ]);
    }
    t
}
