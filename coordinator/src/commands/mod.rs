//! One module per verb group; each takes its clap arguments and the global
//! flags and returns the process exit code.

pub mod checkpoint;
pub mod cluster;
pub mod containers;
pub mod coordinators;
pub mod export;
pub mod hosts;
pub mod import;
pub mod migrate;
pub mod restore;
pub mod versions;

use std::process::ExitCode;

use anyhow::Result;

use crate::Global;
use crate::containerd::Containerd;

/// `migratectl version`: ours, then the server's, in `ctr version`'s shape.
pub async fn version(g: &Global) -> Result<ExitCode> {
    println!("Client:");
    println!("  Version:  {}", env!("CARGO_PKG_VERSION"));
    println!();
    let server = async {
        let cd = Containerd::connect(&g.address, &g.namespace).await?;
        cd.version().await
    }
    .await?;
    println!("Server:");
    println!("  Version:  {}", server.version);
    println!("  Revision: {}", server.revision);
    Ok(ExitCode::SUCCESS)
}
