//! Writing tapes: [`Recorder`], the handle a session records through, and [`Recording`], what
//! `--record` asks for (where, how named, what masked), which starts one per session.
//!
//! A session appends its lines to a queue under a short lock (no await inside it); a writer
//! task takes everything queued at once and writes it with one `writev`. Small messages are
//! copied into the queue's buffer, large ones are queued as they are (not copied).

use std::fmt::Write as _;
use std::io::IoSlice;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use anyhow::Context as _;
use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{
    End, FORMAT_VERSION, FrameLine, Header, Line, Meta, Redactor, TapeError, Wire, now_rfc3339,
    write_line,
};
use crate::protocol::Direction;

/// Bytes queued for the writer before a session waits for it (a line is taken whenever
/// fewer are queued, however long it is).
const QUEUED: usize = 1 << 20;
/// Messages shorter than this are copied into the queue; longer ones are queued as they are.
const COPIED: usize = 4096;
/// How a frame line starts.
const FRAME_START: &[u8] = br#"{"type":"frame","t":"#;

/// What is waiting to be written, in order.
#[derive(Debug, Default)]
struct Pending {
    /// Whole parts, oldest first; `open` follows them.
    parts: Vec<Bytes>,
    /// Copied lines after the last of `parts`.
    open: BytesMut,
    /// Bytes in `parts` and `open`.
    bytes: usize,
    /// Who waits for everything queued before them to be written.
    synced: Vec<tokio::sync::oneshot::Sender<()>>,
    /// Every [`Recorder`] is gone: the writer finishes once all is written.
    closed: bool,
    /// The writer failed: nothing more is taken.
    dead: bool,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.bytes == 0 && self.synced.is_empty()
    }

    fn copy(&mut self, bytes: &[u8]) {
        self.open.extend_from_slice(bytes);
        self.bytes += bytes.len();
    }

    /// Queues `bytes` without copying them.
    fn share(&mut self, bytes: Bytes) {
        if !self.open.is_empty() {
            self.parts.push(std::mem::take(&mut self.open).freeze());
        }
        self.bytes += bytes.len();
        self.parts.push(bytes);
    }
}

/// The queue between a tape's sessions and its writer.
#[derive(Debug, Default)]
struct Queue {
    pending: Mutex<Pending>,
    /// Wakes the writer: something was queued, or nothing more will be.
    ready: Notify,
    /// Wakes sessions waiting for room.
    room: Notify,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Nothing panics while the lock is held; a poisoned queue is still consistent.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `add` on the queue once there is room (waiting while the writer is behind), and
    /// wakes the writer.
    async fn push<F: FnOnce(&mut Pending)>(&self, mut add: F) -> Result<(), TapeError> {
        loop {
            match self.try_push(add)? {
                None => return Ok(()),
                Some(back) => add = back,
            }
            // Registered before looking again, so the writer's wake-up cannot be missed.
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            let full = {
                let pending = self.lock();
                !pending.dead && pending.bytes >= QUEUED
            };
            if full {
                room.await;
            }
        }
    }

    /// Runs `add` on the queue if there is room, and wakes the writer; gives `add` back if not.
    fn try_push<F: FnOnce(&mut Pending)>(&self, add: F) -> Result<Option<F>, TapeError> {
        let mut pending = self.lock();
        if pending.dead {
            return Err(TapeError::Closed);
        }
        if pending.bytes >= QUEUED {
            return Ok(Some(add));
        }
        let wake = pending.is_empty();
        add(&mut pending);
        drop(pending);
        if wake {
            self.ready.notify_one();
        }
        Ok(None)
    }
}

/// Held by every clone of a [`Recorder`]: when the last goes, the writer is told.
#[derive(Debug)]
struct Open(Arc<Queue>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.ready.notify_one();
    }
}

/// The handle a session records through.
#[derive(Debug, Clone)]
pub struct Recorder {
    queue: Arc<Queue>,
    _open: Arc<Open>,
    started: Instant,
    /// The tape's file.
    path: Arc<Path>,
    /// What is masked before anything is written.
    redactor: Arc<Redactor>,
    /// The header's session, and what a frame line of it has between `t` and `msg`, one per
    /// direction: written once, not per frame.
    session: Arc<(String, [Vec<u8>; 2])>,
    /// Whether the `meta` line was written.
    meta_written: Arc<AtomicBool>,
    /// Whether a failure was reported (it is, once).
    failed: Arc<AtomicBool>,
}

impl Recorder {
    /// Creates the tape at `path` (its directory must exist) and starts its writer task; the
    /// header is its first line. The writer's handle finishes when every
    /// [`Recorder`] clone is dropped, after the last line is flushed.
    pub fn create(
        path: &Path,
        header: &Header,
        redactor: Arc<Redactor>,
    ) -> Result<(Self, tokio::task::JoinHandle<Result<(), TapeError>>), TapeError> {
        let io = |source| TapeError::Io {
            path: path.to_owned(),
            source,
        };
        let file = crate::transport::files::create_private_new(path).map_err(io)?;
        let mut out = std::io::BufWriter::new(file);
        write_line(&mut out, &Line::Header(header.clone())).map_err(io)?;
        let file = out.into_inner().map_err(|e| io(e.into_error()))?;
        let queue = Arc::new(Queue::default());
        let writer = tokio::spawn(write_tape(queue.clone(), file, path.to_owned()));
        Ok((
            Self {
                _open: Arc::new(Open(queue.clone())),
                queue,
                started: Instant::now(),
                path: path.into(),
                redactor,
                session: Arc::new((
                    header.session.clone(),
                    [
                        frame_middle(Direction::ClientToServer, &header.session),
                        frame_middle(Direction::ServerToClient, &header.session),
                    ],
                )),
                meta_written: Arc::default(),
                failed: Arc::default(),
            },
            writer,
        ))
    }

    /// The tape's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn micros(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    async fn send(&self, line: &Line<'_>) -> Result<(), TapeError> {
        let mut bytes = Vec::new();
        write_line(&mut bytes, line).map_err(|_| TapeError::Closed)?;
        self.queue.push(|pending| pending.copy(&bytes)).await
    }

    /// Records the session's `initialize` outcome, masked as its messages are.
    pub async fn meta(&self, meta: Meta) -> Result<(), TapeError> {
        self.send(&Line::Meta(self.redactor.mask_meta(&meta)))
            .await?;
        self.meta_written.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Whether the `initialize` outcome is still to be recorded.
    pub fn wants_meta(&self) -> bool {
        !self.meta_written.load(Ordering::Relaxed)
    }

    /// Reports that recording failed (once per tape): the session goes on unrecorded.
    pub fn failed(&self, error: &TapeError) {
        if !self.failed.swap(true, Ordering::Relaxed) {
            tracing::error!(%error, "recording stopped: the tape can no longer be written");
        }
    }

    /// Records one message as it was carried; waits while the writer is behind.
    pub async fn frame(
        &self,
        direction: Direction,
        session: &str,
        raw: &[u8],
        transport: Wire,
    ) -> Result<(), TapeError> {
        let raw = self.redactor.apply(raw);
        let line = Line::Frame(FrameLine::new(
            self.micros(),
            direction,
            session,
            &raw,
            transport,
        ));
        self.send(&line).await
    }

    /// Records one parsed message as it was carried (the pipeline's path): a message already
    /// known to be JSON is written without being parsed again.
    pub async fn message(
        &self,
        direction: Direction,
        session: &str,
        msg: &crate::protocol::Message,
        transport: &Wire,
        trace: Option<&str>,
    ) -> Result<(), TapeError> {
        let (raw, utf8) = match self.redactor.apply(msg.raw()) {
            std::borrow::Cow::Borrowed(_) => (msg.raw().clone(), true),
            // Masked paths are written by serde (UTF-8), masked secrets by bytes.
            std::borrow::Cow::Owned(masked) => (Bytes::from(masked), false),
        };
        // Masked secrets could in theory cut through JSON syntax: such lines are checked.
        let fast =
            !self.redactor.has_secrets() && session == self.session.0 && is_one_line(&raw, utf8);
        let tail = fast.then(|| frame_tail(transport, trace)).flatten();
        let Some(tail) = tail else {
            let raw = self.redactor.apply(&raw);
            let mut line =
                FrameLine::new(self.micros(), direction, session, &raw, transport.clone());
            line.trace = trace.map(Into::into);
            return self.send(&Line::Frame(line)).await;
        };
        let middle = &self.session.1[usize::from(direction == Direction::ServerToClient)];
        self.queue
            .push(|pending| frame_line(pending, self.micros(), middle, raw, &tail))
            .await
    }

    /// Records that a server process took the session over.
    pub async fn server(&self, pid: u32, generation: u64) -> Result<(), TapeError> {
        let server = crate::tape::Server {
            micros: self.micros(),
            pid,
            generation,
        };
        self.send(&Line::Server(server)).await
    }

    /// Records how the session ended, and waits until everything so far is on disk. Frames
    /// may still follow (late answers) until the last clone is dropped.
    pub async fn end(&self, reason: &str) -> Result<(), TapeError> {
        let end = End {
            micros: self.micros(),
            reason: reason.to_owned(),
        };
        self.send(&Line::End(end)).await?;
        let (done, flushed) = tokio::sync::oneshot::channel();
        self.queue.push(|pending| pending.synced.push(done)).await?;
        flushed.await.map_err(|_| TapeError::Closed)
    }
}

/// Writes what is queued to `file`, everything queued at the time in one `writev`, whenever
/// it has caught up: the tape on disk is current, and a killed process loses only what was
/// still queued.
///
/// The writes are plain `write(2)`s on the runtime's thread. A write to the page cache takes
/// microseconds, where a hop to tokio's blocking pool per batch cost a third of the proxy's
/// throughput (context switches on a 2-core machine; docs/performance.md). Under dirty-page
/// throttling a write blocks the thread: the backpressure lossless recording asks for.
async fn write_tape(
    queue: Arc<Queue>,
    mut file: std::fs::File,
    path: PathBuf,
) -> Result<(), TapeError> {
    loop {
        queue.ready.notified().await;
        // Let the session's other tasks run once first: lines they queue meanwhile join this
        // write instead of costing one each.
        tokio::task::yield_now().await;
        loop {
            let (parts, synced, closed) = {
                let mut pending = queue.lock();
                let mut parts = std::mem::take(&mut pending.parts);
                if !pending.open.is_empty() {
                    parts.push(std::mem::take(&mut pending.open).freeze());
                }
                pending.bytes = 0;
                (parts, std::mem::take(&mut pending.synced), pending.closed)
            };
            if parts.is_empty() && synced.is_empty() {
                if closed {
                    return Ok(());
                }
                break;
            }
            let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
            if let Err(source) = write_all_vectored(&mut file, &mut slices) {
                let mut pending = queue.lock();
                pending.dead = true;
                pending.synced.clear();
                drop(pending);
                queue.room.notify_waiters();
                return Err(TapeError::Io {
                    path: path.clone(),
                    source,
                });
            }
            for done in synced {
                let _ = done.send(());
            }
            queue.room.notify_waiters();
        }
    }
}

/// Writes all of `slices` (`Write::write_all_vectored` is not stable yet).
fn write_all_vectored(
    file: &mut std::fs::File,
    mut slices: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    use std::io::Write as _;
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What a frame line of `session` going `direction` has between its time and its message.
fn frame_middle(direction: Direction, session: &str) -> Vec<u8> {
    let mut middle = match direction {
        Direction::ClientToServer => br#","dir":"c2s","session":"#.to_vec(),
        Direction::ServerToClient => br#","dir":"s2c","session":"#.to_vec(),
    };
    // A string always serializes.
    let _ = serde_json::to_writer(&mut middle, session);
    middle.extend_from_slice(br#","msg":"#);
    middle
}

/// Whether `raw`, a message known to be valid JSON (and UTF-8 if `utf8`), can be a frame
/// line's `msg` as it is: one line of UTF-8 with nothing around the JSON value (if not,
/// [`FrameLine::new`] decides how to write it).
fn is_one_line(raw: &[u8], utf8: bool) -> bool {
    raw.first().is_some_and(|b| !b.is_ascii_whitespace())
        && raw.last().is_some_and(|b| !b.is_ascii_whitespace())
        && memchr::memchr2(b'\n', b'\r', raw).is_none()
        && (utf8 || std::str::from_utf8(raw).is_ok())
}

/// How a frame line with `transport` ends, after its message.
fn frame_tail(transport: &Wire, trace: Option<&str>) -> Option<std::borrow::Cow<'static, [u8]>> {
    if *transport == Wire::NONE && trace.is_none() {
        return Some(b"}\n"[..].into());
    }
    let mut tail = Vec::new();
    if *transport != Wire::NONE {
        tail.extend_from_slice(br#","transport":"#);
        serde_json::to_writer(&mut tail, transport).ok()?;
    }
    if let Some(trace) = trace {
        tail.extend_from_slice(br#","trace":"#);
        serde_json::to_writer(&mut tail, trace).ok()?;
    }
    tail.extend_from_slice(b"}\n");
    Some(tail.into())
}

/// Queues a frame line for `raw` (see [`is_one_line`]) built without serde: its time `t`,
/// `middle` from [`frame_middle`], the message, and `tail` from [`frame_tail`].
fn frame_line(pending: &mut Pending, t: u64, middle: &[u8], raw: Bytes, tail: &[u8]) {
    pending
        .open
        .reserve(FRAME_START.len() + 20 + middle.len() + raw.len() + tail.len());
    pending.copy(FRAME_START);
    pending.copy(itoa::Buffer::new().format(t).as_bytes());
    pending.copy(middle);
    if raw.len() < COPIED {
        pending.copy(&raw);
    } else {
        pending.share(raw);
    }
    pending.copy(tail);
}

/// What `--record` asks for: where tapes go, what they say about themselves, what is masked.
#[derive(Debug, Clone)]
pub struct Recording {
    /// A tape file, or a directory to make one tape per session in.
    pub target: PathBuf,
    /// A name for the tapes (`record --name`).
    pub name: Option<String>,
    /// The mode recording: `forward`, `reverse`, `record`.
    pub mode: &'static str,
    /// The server's transport: `stdio`, `http`.
    pub server_transport: &'static str,
    /// What is masked before anything is written.
    pub redactor: Arc<Redactor>,
}

/// What a tape's header says of the session it records: plain facts, so that tapes need no
/// session type (the pipeline, which has the session, gives them).
#[derive(Debug, Clone, Copy)]
pub struct Recorded<'a> {
    /// The session's id (in the header only: the file name and the logs get `digest`).
    pub id: &'a str,
    /// The id's digest (`s-…`), which may be shown.
    pub digest: &'a str,
    /// How the client reached the proxy: `stdio`, `http`.
    pub client_transport: &'a str,
    /// The server: its URL or command line (masked before it is written).
    pub upstream: Option<&'a str>,
}

impl Recording {
    /// Starts recording the session `recorded` describes to a new tape (an existing file is
    /// never overwritten).
    pub fn start(&self, session: &Recorded<'_>) -> anyhow::Result<Recorder> {
        let created = now_rfc3339();
        let file = if self.target.is_dir() {
            self.target.join(file_name(&created, session.digest))
        } else {
            self.target.clone()
        };
        // Not a message: its secrets are masked, `--redact`'s paths are not for it.
        let upstream = session
            .upstream
            .map(|u| self.redactor.mask_text(&without_userinfo(u)));
        let header = Header {
            format: FORMAT_VERSION,
            id: tape_id()?,
            name: self.name.clone(),
            created,
            mode: self.mode.to_owned(),
            client_transport: session.client_transport.to_owned(),
            server_transport: self.server_transport.to_owned(),
            upstream,
            session: session.id.to_owned(),
        };
        let (recorder, _writer) = Recorder::create(&file, &header, self.redactor.clone())
            .with_context(|| format!("cannot record to {}", file.display()))?;
        tracing::info!(tape = %file.display(), session = %session.digest, "recording the session");
        Ok(recorder)
    }
}

/// A new tape's id: 128 random bits, in hex.
fn tape_id() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).context("the OS random number generator failed")?;
    let mut id = String::with_capacity(32);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(id, "{b:02x}");
    }
    Ok(id)
}

/// A tape's file name in a directory: its creation time, then its session's digest.
fn file_name(created: &str, digest: &str) -> String {
    format!("{}-{}.jsonl", created.replace([':', '.'], "-"), digest)
}

/// `upstream` without a URL's `user:password@`.
fn without_userinfo(upstream: &str) -> std::borrow::Cow<'_, str> {
    match url_userinfo(upstream) {
        Some((start, end)) => format!("{}{}", &upstream[..start], &upstream[end..]).into(),
        None => upstream.into(),
    }
}

/// Where a URL's `userinfo@` lies, if it has one.
fn url_userinfo(upstream: &str) -> Option<(usize, usize)> {
    let start = upstream.find("://")? + 3;
    let authority_end = upstream[start..]
        .find(['/', '?', '#'])
        .map_or(upstream.len(), |i| start + i);
    let at = upstream[start..authority_end].rfind('@')?;
    Some((start, start + at + 1))
}

#[cfg(test)]
mod tests;
