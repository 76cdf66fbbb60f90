//! The outgoing half of a line-framed link.
//!
//! Messages queue on a bounded channel; one task drains it into a buffered writer and flushes
//! only when the queue is empty. Under load that is one `write` for many messages; when idle it
//! is one `write` per message, with nothing added to its latency.

use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How many queued messages one drain takes before writing.
const DRAIN_BATCH: usize = 64;
/// Size of the write buffer.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// Writes every frame received on `rx`, newline-terminated, until the channel closes, `close` is
/// cancelled (then what is already queued is still written), or a write fails. The writer is
/// dropped on return, which closes the link. Returns the write error, if any.
pub async fn write_lines<T, W>(
    mut rx: mpsc::Receiver<T>,
    writer: W,
    close: CancellationToken,
) -> std::io::Result<()>
where
    T: AsRef<[u8]>,
    W: AsyncWrite + Unpin,
{
    let mut out = BufWriter::with_capacity(WRITE_BUFFER_BYTES, writer);
    let mut batch = Vec::with_capacity(DRAIN_BATCH);
    let mut closing = false;
    loop {
        let received = tokio::select! {
            biased;
            n = rx.recv_many(&mut batch, DRAIN_BATCH) => n,
            () = close.cancelled(), if !closing => {
                // Refuse new messages but keep draining the queued ones.
                rx.close();
                closing = true;
                continue;
            }
        };
        if received == 0 {
            break;
        }
        for frame in batch.drain(..) {
            out.write_all(frame.as_ref()).await?;
            out.write_all(b"\n").await?;
        }
        if rx.is_empty() {
            out.flush().await?;
        }
    }
    out.flush().await?;
    out.shutdown().await
}
