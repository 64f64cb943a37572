//! `migratectl cluster init|cert`: the cluster's CA and its certificates,
//! made once by whoever sets the cluster up (hack/cluster.sh, an operator).

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use migrate_cluster::certs;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Make the cluster's CA in DIR (ca.pem, ca-key.pem); refuses if there is one
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Make a key and certificate for NAME (a host, the coordinator, a client), signed by DIR's CA
    Cert {
        #[arg(long)]
        dir: PathBuf,
        /// Also an IP address the certificate is valid for (repeatable); the coordinator's needs the address in its URL
        #[arg(long = "ip")]
        ips: Vec<IpAddr>,
        /// Names the certificate (common name and DNS name); files NAME.pem and NAME-key.pem
        name: String,
    },
}

pub fn run(cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Init { dir } => {
            let files = certs::init_ca(&dir)?;
            println!("{}", files.cert.display());
            println!("{}", files.key.display());
        }
        Command::Cert { dir, ips, name } => {
            let files = certs::issue(&dir, &name, &ips)?;
            println!("{}", files.cert.display());
            println!("{}", files.key.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
