//! Publishing task events to containerd.

use std::sync::Arc;

use containerd_shim::{Context, event::Event, protos::protobuf::MessageDyn, publisher::RemotePublisher};
use log::warn;

#[derive(Clone)]
pub struct Events {
    publisher: Arc<RemotePublisher>,
    namespace: String,
}

impl Events {
    pub fn new(publisher: RemotePublisher, namespace: &str) -> Self {
        Self { publisher: Arc::new(publisher), namespace: namespace.to_string() }
    }

    /// Queues `event`; the publisher retries delivery, so a failure here only
    /// means the queue is full, which is logged rather than failing the RPC
    /// that caused the event.
    pub async fn publish<E: Event + 'static>(&self, event: E) {
        let topic = event.topic();
        let event: Box<dyn MessageDyn> = Box::new(event);
        if let Err(e) = self.publisher.publish(Context::default(), &topic, &self.namespace, event).await {
            warn!("failed to publish {topic}: {e}");
        }
    }
}
