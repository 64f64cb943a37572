//! Streams from this agent to another's `Receive`: the first chunk names
//! the migration and what follows, every chunk carries data. The bytes are
//! made by a blocking writer (a tar, a layer delta) through a bounded
//! channel, so gigabytes never sit in memory and the link sets the pace.

use std::io::Write;

use anyhow::{Context as _, Result, anyhow};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::host::pipe::{self, Chunk};
use crate::proto::agent_client::AgentClient;
use crate::proto::{MigrationRef, TransferChunk, TransferKind};

/// Sends what `produce` writes to `client`'s Receive as `kind` of
/// migration `migration`; returns the bytes the receiver took.
pub async fn send(
    client: &mut AgentClient<Channel>,
    migration: &MigrationRef,
    kind: TransferKind,
    produce: impl FnOnce(&mut dyn Write) -> Result<()> + Send + 'static,
) -> Result<u64> {
    let (mut writer, rx) = pipe::chunks();
    let producer = tokio::task::spawn_blocking(move || -> Result<()> {
        produce(&mut writer)?;
        writer.finish().context("finish the stream")
    });
    let head = TransferChunk { migration: Some(migration.clone()), kind: kind.into(), ..Default::default() };
    let body = ReceiverStream::new(rx).map_while(|chunk| match chunk {
        Chunk::Data(data) => Some(TransferChunk { data, ..Default::default() }),
        Chunk::End => None,
    });
    let stream = tokio_stream::iter([head]).chain(body);
    let sent = client.receive(stream).await;
    // The producer's error says more than the receiver's broken stream.
    let produced = producer.await.map_err(|e| anyhow!("the sending side panicked: {e}"))?;
    produced?;
    Ok(sent.map_err(|s| anyhow!("{}", s.message()))?.into_inner().bytes)
}

/// Sends the chunks that arrive on `chunks` (made whole by their sender,
/// such as [`super::criu_images::follow`]) after `head`, the stream's
/// first chunk ([`head`]); returns the bytes the receiver took.
pub async fn send_chunks(
    client: &mut AgentClient<Channel>,
    head: TransferChunk,
    chunks: mpsc::Receiver<TransferChunk>,
) -> Result<u64> {
    let stream = tokio_stream::iter([head]).chain(ReceiverStream::new(chunks));
    let sent = client.receive(stream).await.map_err(|s| anyhow!("{}", s.message()))?;
    Ok(sent.into_inner().bytes)
}

/// The first chunk of a stream of `kind` for migration `migration`.
pub fn head(migration: &MigrationRef, kind: TransferKind) -> TransferChunk {
    TransferChunk { migration: Some(migration.clone()), kind: kind.into(), ..Default::default() }
}
