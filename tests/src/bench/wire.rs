//! A file copied between two cluster hosts over TCP, for the stock
//! migration path of the `migrate` benchmark: `ctr` has no way to move a
//! checkpoint between hosts, and copying through the machine's file system
//! would not cross the shaped link. The bench binary itself is the sender
//! and the receiver (hidden subcommands run inside the hosts with
//! `hack/cluster.sh exec`), so no tool beyond the workspace is needed.
//!
//! The protocol: the sender sends the file's length (8 bytes, big endian)
//! and its bytes, then waits for the receiver's acknowledgement (the same
//! 8 bytes back once everything is written), so the sender returns only
//! when the copy is complete on the other host.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;

/// How long the sender retries connecting while the receiver starts.
const CONNECT_RETRY: Duration = Duration::from_secs(15);

#[derive(Args, Debug)]
pub struct SendOptions {
    /// The receiver, IP:PORT.
    #[arg(long)]
    pub to: String,
    /// The file to send.
    pub file: PathBuf,
}

#[derive(Args, Debug)]
pub struct ReceiveOptions {
    /// Where to listen, IP:PORT.
    #[arg(long)]
    pub listen: String,
    /// Where the received file goes (created or truncated).
    pub file: PathBuf,
}

/// Sends `opts.file` to a receiver; prints `bytes=N ms=T` once the
/// receiver has acknowledged all of it.
pub fn send(opts: SendOptions) -> Result<()> {
    let mut file =
        File::open(&opts.file).with_context(|| format!("opening {}", opts.file.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("reading the size of {}", opts.file.display()))?
        .len();
    let t0 = Instant::now();
    let mut stream = connect(&opts.to)?;
    stream.write_all(&len.to_be_bytes())?;
    let sent = std::io::copy(&mut file, &mut stream)
        .with_context(|| format!("sending {} to {}", opts.file.display(), opts.to))?;
    if sent != len {
        bail!(
            "{} changed size while being sent ({len} -> {sent} bytes)",
            opts.file.display()
        );
    }
    let mut ack = [0u8; 8];
    stream
        .read_exact(&mut ack)
        .with_context(|| format!("waiting for {} to acknowledge the file", opts.to))?;
    if u64::from_be_bytes(ack) != len {
        bail!(
            "the receiver at {} acknowledged {} of {len} bytes",
            opts.to,
            u64::from_be_bytes(ack)
        );
    }
    println!("bytes={len} ms={}", t0.elapsed().as_millis());
    Ok(())
}

/// Connects to `to`, retrying while nothing listens there yet.
fn connect(to: &str) -> Result<TcpStream> {
    let deadline = Instant::now() + CONNECT_RETRY;
    loop {
        match TcpStream::connect(to) {
            Ok(s) => return Ok(s),
            Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("connecting to the receiver at {to} (is `bench wire-receive` running there?)")
                });
            }
        }
    }
}

/// Accepts one sender, writes what it sends to `opts.file`, acknowledges it
/// and prints `bytes=N`.
pub fn receive(opts: ReceiveOptions) -> Result<()> {
    let listener =
        TcpListener::bind(&opts.listen).with_context(|| format!("listening on {}", opts.listen))?;
    let (mut stream, peer) = listener.accept().context("accepting the sender")?;
    let mut header = [0u8; 8];
    stream
        .read_exact(&mut header)
        .with_context(|| format!("reading the length from {peer}"))?;
    let len = u64::from_be_bytes(header);
    let file =
        File::create(&opts.file).with_context(|| format!("creating {}", opts.file.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let got = std::io::copy(&mut (&mut stream).take(len), &mut out)
        .with_context(|| format!("receiving from {peer} into {}", opts.file.display()))?;
    out.flush()
        .with_context(|| format!("writing {}", opts.file.display()))?;
    if got != len {
        bail!("{peer} sent {got} of the {len} bytes it announced");
    }
    stream
        .write_all(&got.to_be_bytes())
        .context("acknowledging the file")?;
    println!("bytes={got}");
    Ok(())
}
