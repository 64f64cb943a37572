//! What both daemons do around their work: the log, and stopping on a signal.
//!
//! The log: `log` records on stderr as
//! `2026-12-07T08:02:18.123Z INFO host h1 registered`, info and above
//! (debug with `MIGRATE_DEBUG` set). Whoever starts the daemon keeps stderr
//! (a file, journald).

struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let now = time::OffsetDateTime::now_utc();
        let ts = format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            now.second(),
            now.millisecond()
        );
        eprintln!("{ts} {} {}", r.level(), r.args());
    }

    fn flush(&self) {}
}

pub fn init() {
    static LOGGER: Stderr = Stderr;
    let level =
        if std::env::var_os("MIGRATE_DEBUG").is_some() { log::LevelFilter::Debug } else { log::LevelFilter::Info };
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

/// Resolves on SIGINT or SIGTERM: the server stops taking connections and
/// the daemon exits. Nothing needs flushing, since every change of the
/// cluster's state was committed to the store before it was answered.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        // Without handlers the default action (exit) still stops the daemon.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => log::info!("SIGINT: stopping"),
        _ = term.recv() => log::info!("SIGTERM: stopping"),
    }
}

/// Binds the server's address now, so that a taken port fails the start
/// with a clear error and the server accepts connections before the daemon
/// tells anyone where it is.
pub async fn listen(address: std::net::SocketAddr) -> anyhow::Result<tonic::transport::server::TcpIncoming> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} (is another daemon using it?)"))?;
    Ok(tonic::transport::server::TcpIncoming::from(listener))
}
