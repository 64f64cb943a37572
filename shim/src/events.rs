//! Publishing task events to containerd, in order, across containerd
//! restarts.
//!
//! containerd-shim's own publisher reconnects only on some errors; after a
//! containerd restart its connection fails with "channel closed" and every
//! later event is lost, so containerd never learns that a container it
//! reconnected to has exited. This one sends from a single queue, in order,
//! and on any failure reconnects and retries until containerd is back.

use std::{os::fd::RawFd, time::Duration};

use containerd_shim::{
    event::Event,
    protos::{
        protobuf::MessageDyn,
        shim::{event::Envelope, events::ForwardRequest},
        shim_async::{Client, EventsClient},
        ttrpc::context::with_timeout,
    },
    util::{connect, convert_to_any, timestamp},
};
use log::{debug, warn};
use tokio::sync::mpsc;

/// Events queued while containerd is away; beyond that, publish waits.
const QUEUE: usize = 1024;
/// How long one event may wait for containerd to come back before it is
/// dropped with a warning: a containerd gone for longer is restarting from
/// scratch and will ask the shim for the state anyway.
const GIVE_UP_AFTER: Duration = Duration::from_secs(120);
const RETRY_MAX: Duration = Duration::from_secs(2);
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Events {
    queue: mpsc::Sender<Envelope>,
    namespace: String,
}

impl Events {
    /// Publishes to containerd's ttrpc `address` (TTRPC_ADDRESS).
    pub fn new(address: &str, namespace: &str) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(deliver(address.to_string(), rx));
        Self { queue, namespace: namespace.to_string() }
    }

    pub async fn publish<E: Event + 'static>(&self, event: E) {
        let topic = event.topic();
        let event: Box<dyn MessageDyn> = Box::new(event);
        let envelope = match (timestamp(), convert_to_any(event)) {
            (Ok(ts), Ok(any)) => Envelope {
                timestamp: Some(ts).into(),
                namespace: self.namespace.clone(),
                topic: topic.clone(),
                event: Some(any).into(),
                ..Default::default()
            },
            (Err(e), _) | (_, Err(e)) => {
                warn!("cannot encode event {topic}: {e}");
                return;
            }
        };
        if self.queue.send(envelope).await.is_err() {
            warn!("event {topic} not published: the publisher has stopped");
        }
    }
}

async fn deliver(address: String, mut rx: mpsc::Receiver<Envelope>) {
    let mut client: Option<EventsClient> = None;
    while let Some(envelope) = rx.recv().await {
        let request = ForwardRequest { envelope: Some(envelope).into(), ..Default::default() };
        let mut retry = Duration::from_millis(50);
        let started = tokio::time::Instant::now();
        loop {
            if client.is_none() {
                client = reconnect(&address).await;
            }
            if let Some(c) = &client {
                match c.forward(with_timeout(FORWARD_TIMEOUT.as_nanos() as i64), &request).await {
                    Ok(_) => break,
                    Err(e) => {
                        debug!("publishing {} failed, reconnecting: {e}", request.envelope.topic);
                        client = None;
                    }
                }
            }
            if started.elapsed() > GIVE_UP_AFTER {
                warn!("event {} dropped: containerd did not take it within {GIVE_UP_AFTER:?}", request.envelope.topic);
                break;
            }
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(RETRY_MAX);
        }
    }
}

async fn reconnect(address: &str) -> Option<EventsClient> {
    let addr = address.to_string();
    let fd: RawFd = tokio::task::spawn_blocking(move || connect(addr)).await.ok()?.ok()?;
    // SAFETY: `connect` returned a connected unix socket that nothing else owns.
    let client = unsafe { Client::from_raw_unix_socket_fd(fd) };
    Some(EventsClient::new(client))
}
