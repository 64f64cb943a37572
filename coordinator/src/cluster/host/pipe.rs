//! Byte streams between a blocking thread (tar, gzip and file work) and the
//! async side that talks to containerd, in chunks over a bounded channel:
//! gigabytes of CRIU images go through without being held in memory, and
//! the slower side sets the pace.

use std::io::{self, Read, Write};

use tokio::sync::mpsc;

/// The size of one chunk: what one content write or read message carries.
/// Well below containerd's 16 MiB gRPC message limit.
pub const CHUNK: usize = 1 << 20;
/// Chunks in flight between the two sides.
const DEPTH: usize = 4;

/// What the writing side sends: data, and at the end a mark that it
/// finished. A stream that stops without the mark was abandoned (its
/// producer failed) and must not be committed.
#[derive(Debug)]
pub enum Chunk {
    Data(Vec<u8>),
    End,
}

/// A channel for a [`ChunkWriter`] and its receiving end.
pub fn chunks() -> (ChunkWriter, mpsc::Receiver<Chunk>) {
    let (tx, rx) = mpsc::channel(DEPTH);
    (ChunkWriter { tx, buf: Vec::with_capacity(CHUNK) }, rx)
}

/// A [`Write`] for blocking threads that sends what it is given in chunks.
pub struct ChunkWriter {
    tx: mpsc::Sender<Chunk>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn send(&mut self, chunk: Chunk) -> io::Result<()> {
        self.tx
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the receiving side of the stream went away"))
    }

    /// Sends what is buffered and the end mark: the stream is complete.
    pub fn finish(mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let data = std::mem::take(&mut self.buf);
            self.send(Chunk::Data(data))?;
        }
        self.send(Chunk::End)
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            let full = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
            self.send(Chunk::Data(full))?;
        }
        Ok(n)
    }

    /// Chunks go out when full; flushing a partial one would only make
    /// more, smaller messages.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A channel for a [`ChunkReader`] and its sending end; the sender sends an
/// error to make the reader fail, and simply closes at the end.
pub fn reader() -> (mpsc::Sender<io::Result<Vec<u8>>>, ChunkReader) {
    let (tx, rx) = mpsc::channel(DEPTH);
    (tx, ChunkReader { rx, chunk: Vec::new(), pos: 0 })
}

/// A [`Read`] for blocking threads over chunks sent from the async side.
pub struct ChunkReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn writer_sends_full_chunks_then_the_rest_then_the_end() {
        let (mut w, mut rx) = chunks();
        let producer = tokio::task::spawn_blocking(move || {
            w.write_all(&vec![1u8; CHUNK + 10]).unwrap();
            w.finish().unwrap();
        });
        let mut sizes = Vec::new();
        let mut ended = false;
        while let Some(c) = rx.recv().await {
            match c {
                Chunk::Data(d) => sizes.push(d.len()),
                Chunk::End => ended = true,
            }
        }
        producer.await.unwrap();
        assert_eq!(sizes, [CHUNK, 10]);
        assert!(ended);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_abandoned_writer_sends_no_end_mark() {
        let (mut w, mut rx) = chunks();
        tokio::task::spawn_blocking(move || {
            w.write_all(b"partial").unwrap();
            drop(w); // a producer that failed
        })
        .await
        .unwrap();
        assert!(rx.recv().await.is_none(), "nothing was full, nothing was sent, and no end mark");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reader_reads_across_chunks_and_passes_errors_on() {
        let (tx, mut r) = reader();
        let consumer = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let err = r.read_to_end(&mut out).unwrap_err();
            (out, err.to_string())
        });
        tx.send(Ok(b"ab".to_vec())).await.unwrap();
        tx.send(Ok(Vec::new())).await.unwrap();
        tx.send(Ok(b"cde".to_vec())).await.unwrap();
        tx.send(Err(io::Error::other("containerd went away"))).await.unwrap();
        let (out, err) = consumer.await.unwrap();
        assert_eq!(out, b"abcde");
        assert_eq!(err, "containerd went away");

        let (tx, mut r) = reader();
        drop(tx);
        let mut out = Vec::new();
        tokio::task::spawn_blocking(move || r.read_to_end(&mut out).map(|_| out)).await.unwrap().unwrap();
    }
}
