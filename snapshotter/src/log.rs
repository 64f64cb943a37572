//! The daemon's log and its stop on a signal, as the cluster's daemons do
//! (coordinator/src/cluster/daemon.rs): records on stderr as
//! `2026-12-07T08:02:18.123Z INFO ...`, debug with `MIGRATE_DEBUG` set.

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

/// Resolves on SIGINT or SIGTERM. Nothing needs flushing: every change of
/// the metadata was saved before it was answered.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => log::info!("SIGINT: stopping"),
        _ = term.recv() => log::info!("SIGTERM: stopping"),
    }
}
