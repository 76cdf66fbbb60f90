//! Writing tapes: [`Recorder`], the handle a session records through, and [`Recording`], what
//! `--record` asks for (where, how named, what masked), which starts one per session.

use std::io::IoSlice;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{
    End, FORMAT_VERSION, FrameLine, Header, Line, Meta, Redactor, TapeError, Transport,
    now_rfc3339, write_line,
};
use crate::protocol::Direction;
use crate::session::{Session, SessionId};

/// Lines queued for the writer before a session waits for it.
const QUEUE: usize = 1024;
/// Most lines the writer takes at a time.
const BATCH: usize = 256;

/// What the writer is sent.
#[derive(Debug)]
enum Item {
    /// A whole line.
    Line(Vec<u8>),
    /// A frame line in three parts, its message between (not copied).
    Frame(Vec<u8>, bytes::Bytes, Vec<u8>),
    /// Flush, then say so.
    Sync(tokio::sync::oneshot::Sender<()>),
}

/// The handle a session records through.
#[derive(Debug, Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Item>,
    started: Instant,
    /// The tape's file.
    path: Arc<Path>,
    /// What is masked before anything is written.
    redactor: Arc<Redactor>,
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
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        let mut out = std::io::BufWriter::new(file);
        write_line(&mut out, &Line::Header(header.clone())).map_err(io)?;
        let file = out.into_inner().map_err(|e| io(e.into_error()))?;
        let (tx, rx) = mpsc::channel::<Item>(QUEUE);
        let writer = tokio::spawn(write_tape(rx, file, path.to_owned()));
        Ok((
            Self {
                tx,
                started: Instant::now(),
                path: path.into(),
                redactor,
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
        self.tx
            .send(Item::Line(bytes))
            .await
            .map_err(|_| TapeError::Closed)
    }

    /// Records the session's `initialize` outcome.
    pub async fn meta(&self, meta: Meta) -> Result<(), TapeError> {
        self.send(&Line::Meta(meta)).await?;
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
        transport: Transport,
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
    /// known to be one JSON object is written without being parsed again.
    pub async fn message(
        &self,
        direction: Direction,
        session: &str,
        msg: &crate::protocol::Message,
        transport: &Transport,
    ) -> Result<(), TapeError> {
        let raw = match self.redactor.apply(msg.raw()) {
            std::borrow::Cow::Borrowed(_) => msg.raw().clone(),
            std::borrow::Cow::Owned(masked) => bytes::Bytes::from(masked),
        };
        // Masked secrets could in theory cut through JSON syntax: such lines are checked.
        let valid = !self.redactor.has_secrets();
        match frame_parts(self.micros(), direction, session, &raw, transport).filter(|_| valid) {
            Some((head, tail)) => self
                .tx
                .send(Item::Frame(head, raw, tail))
                .await
                .map_err(|_| TapeError::Closed),
            None => {
                self.frame(direction, session, &raw, transport.clone())
                    .await
            }
        }
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
        self.tx
            .send(Item::Sync(done))
            .await
            .map_err(|_| TapeError::Closed)?;
        flushed.await.map_err(|_| TapeError::Closed)
    }
}

/// Writes the lines queued on `rx` to `file`, every line queued at the time in one `write`,
/// whenever it has caught up: the tape on disk is current, and a killed process loses only
/// what was still queued.
///
/// The writes are plain `write(2)`s on the runtime's thread. A write to the page cache takes
/// microseconds, where a hop to tokio's blocking pool per batch cost a third of the proxy's
/// throughput (context switches on a 2-core machine; docs/performance.md). Under dirty-page
/// throttling a write blocks the thread: the backpressure lossless recording asks for.
async fn write_tape(
    mut rx: mpsc::Receiver<Item>,
    mut file: std::fs::File,
    path: PathBuf,
) -> Result<(), TapeError> {
    let io = |source| TapeError::Io {
        path: path.clone(),
        source,
    };
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        // Let the session's other tasks run once first: lines they queue meanwhile join this
        // write instead of costing one each.
        tokio::task::yield_now().await;
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let mut slices = Vec::with_capacity(3 * batch.len());
        for item in &batch {
            match item {
                Item::Line(line) => slices.push(IoSlice::new(line)),
                Item::Frame(head, msg, tail) => {
                    slices.extend([IoSlice::new(head), IoSlice::new(msg), IoSlice::new(tail)]);
                }
                Item::Sync(_) => {}
            }
        }
        write_all_vectored(&mut file, &mut slices).map_err(io)?;
        for item in batch.drain(..) {
            if let Item::Sync(done) = item {
                let _ = done.send(());
            }
        }
    }
    Ok(())
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

/// A `frame` line for `raw`, a message known to be valid JSON, built without serde; `None`
/// when `raw` is not one line of UTF-8 with nothing around the JSON value (then
/// [`FrameLine::new`] decides how to write it).
fn frame_parts(
    t: u64,
    direction: Direction,
    session: &str,
    raw: &[u8],
    transport: &Transport,
) -> Option<(Vec<u8>, Vec<u8>)> {
    let exact = raw.first().is_some_and(|b| !b.is_ascii_whitespace())
        && raw.last().is_some_and(|b| !b.is_ascii_whitespace());
    if !exact || memchr::memchr2(b'\n', b'\r', raw).is_some() || std::str::from_utf8(raw).is_err() {
        return None;
    }
    let mut line = Vec::with_capacity(session.len() + 64);
    line.extend_from_slice(br#"{"type":"frame","t":"#);
    line.extend_from_slice(t.to_string().as_bytes());
    line.extend_from_slice(match direction {
        Direction::ClientToServer => br#","dir":"c2s","session":"#,
        Direction::ServerToClient => br#","dir":"s2c","session":"#,
    });
    serde_json::to_writer(&mut line, session).ok()?;
    line.extend_from_slice(br#","msg":"#);
    let mut tail = Vec::new();
    if *transport != Transport::NONE {
        tail.extend_from_slice(br#","transport":"#);
        serde_json::to_writer(&mut tail, transport).ok()?;
    }
    tail.extend_from_slice(b"}\n");
    Some((line, tail))
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

impl Recording {
    /// Starts recording `session` to a new tape (an existing file is never overwritten), and
    /// links the session to it.
    pub fn start(&self, session: &Session) -> anyhow::Result<Recorder> {
        let created = now_rfc3339();
        let file = if self.target.is_dir() {
            self.target.join(file_name(&created, session.id()))
        } else {
            self.target.clone()
        };
        let upstream = session.upstream().map(|u| {
            String::from_utf8_lossy(&self.redactor.apply(without_userinfo(u).as_bytes()))
                .into_owned()
        });
        let header = Header {
            format: FORMAT_VERSION,
            id: SessionId::random().to_string(),
            name: self.name.clone(),
            created,
            mode: self.mode.to_owned(),
            client_transport: session.transport().as_str().to_owned(),
            server_transport: self.server_transport.to_owned(),
            upstream,
            session: session.id().to_string(),
        };
        let (recorder, _writer) = Recorder::create(&file, &header, self.redactor.clone())
            .with_context(|| format!("cannot record to {}", file.display()))?;
        tracing::info!(tape = %file.display(), session = %session.id(), "recording the session");
        session.record_to(recorder.clone());
        Ok(recorder)
    }
}

/// A tape's file name in a directory: its creation time, then its session.
fn file_name(created: &str, session: &SessionId) -> String {
    format!("{}-{session}.jsonl", created.replace([':', '.'], "-"))
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
mod tests {
    use super::*;

    #[test]
    fn the_fast_frame_line_is_the_serde_one() {
        let raw = br#"{"jsonrpc":"2.0","id":1,"result":{"t":"h\u00e9 \u2028"}}"#;
        let transport = Transport {
            status: Some(200),
            event_id: Some("get-1".into()),
            stream: Some("get".into()),
        };
        for (direction, transport) in [
            (Direction::ClientToServer, Transport::NONE),
            (Direction::ServerToClient, transport),
        ] {
            let (head, tail) = frame_parts(42, direction, "s\"1", raw, &transport).unwrap();
            let fast = [head, raw.to_vec(), tail].concat();
            let mut slow = Vec::new();
            let line = FrameLine::new(42, direction, "s\"1", raw, transport.clone());
            write_line(&mut slow, &Line::Frame(line)).unwrap();
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                String::from_utf8(slow).unwrap()
            );
        }
        // Not one exact line: left to the general path.
        assert!(frame_parts(0, Direction::ClientToServer, "s", b" {}", &Transport::NONE).is_none());
        assert!(
            frame_parts(0, Direction::ClientToServer, "s", b"{\n}", &Transport::NONE).is_none()
        );
        assert!(
            frame_parts(
                0,
                Direction::ClientToServer,
                "s",
                b"{\xff}",
                &Transport::NONE
            )
            .is_none()
        );
    }

    #[test]
    fn credentials_in_an_upstream_url_are_not_kept() {
        assert_eq!(
            without_userinfo("https://ann:pw@example.com/mcp?x=1"),
            "https://example.com/mcp?x=1"
        );
        assert_eq!(
            without_userinfo("https://example.com/a@b"),
            "https://example.com/a@b"
        );
        assert_eq!(without_userinfo("python server.py"), "python server.py");
    }
}
