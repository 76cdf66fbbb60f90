//! What the live view's page reads: the feed as server-sent events, the sessions, the tapes.
//! Sessions are named by their digest (`s-…`), as logs show them: the id itself is the
//! client's credential and is never sent to the page.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Serialize;

use crate::session::store::StateFilter;
use crate::session::{SessionId, SessionRecord, SessionStore};
use crate::telemetry::feed::{FeedStats, MAX_FEED_BODY, Next};

use super::{Shared, refuse};

/// Ended sessions the page lists, newest first.
pub const MAX_ENDED_SESSIONS: usize = 200;
/// Messages of one tape the page is sent; a longer tape's first ones (and how many there are).
pub const MAX_TAPE_FRAMES: usize = 5_000;
/// The largest tape file the page may open (it is read whole): a larger one is refused, with
/// the command that reads it.
pub const MAX_TAPE_BYTES: u64 = 64 * 1024 * 1024;

/// `GET /api/events`: the live feed, one `message` event per message; `missed` (with a count)
/// when this page fell behind and lost some. 503 when [`crate::telemetry::feed::MAX_WATCHERS`]
/// pages already watch.
pub(super) async fn events(State(shared): State<Arc<Shared>>) -> Response {
    let Some(watcher) = shared.feed.watch() else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable: too many pages are watching; close one".to_owned(),
        );
    };
    let stream = futures_util::stream::unfold(watcher, |mut watcher| async move {
        let event = match watcher.next().await {
            Next::Event(event) => SseEvent::default()
                .event("message")
                .data(serde_json::to_string(&*event).unwrap_or_default()),
            Next::Missed(count) => SseEvent::default()
                .event("missed")
                .data(format!("{{\"count\":{count}}}")),
            Next::Closed => return None,
        };
        Some((Ok::<_, Infallible>(event), watcher))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `GET /api/stats`: the feed's counts.
pub(super) async fn stats(State(shared): State<Arc<Shared>>) -> Json<FeedStats> {
    Json(shared.feed.stats())
}

/// `GET /api/config`: what the page is configured with: where trace ids link to.
pub(super) async fn config(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "trace_url": shared.trace_url }))
}

/// A session id as the page names it: its digest (`s-…`).
fn digest(id: &str) -> String {
    SessionId::parse(id).map_or_else(|_| "s-?".to_owned(), |id| id.digest().to_string())
}

/// A session as the page shows it: its record, named by its digest instead of its id.
fn row(record: &SessionRecord) -> serde_json::Value {
    let session = digest(&record.id);
    let mut row = serde_json::to_value(record).unwrap_or_default();
    if let Some(fields) = row.as_object_mut() {
        fields.remove("id");
        fields.insert("session".to_owned(), session.into());
    }
    row
}

/// `GET /api/sessions`: the running sessions, and the ended ones the history store keeps (at
/// most [`MAX_ENDED_SESSIONS`], newest first).
pub(super) async fn sessions(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let mut records: Vec<SessionRecord> = shared
        .sessions
        .lru_order()
        .iter()
        .filter_map(|id| shared.sessions.get(id))
        .map(|session| session.record())
        .collect();
    records.sort_by_key(|r| std::cmp::Reverse(r.created_at_ms));
    let live: Vec<serde_json::Value> = records.iter().map(row).collect();
    let ended = match shared.history.clone() {
        Some(data_dir) => tokio::task::spawn_blocking(move || ended_sessions(&data_dir))
            .await
            .unwrap_or_default(),
        None => Vec::new(),
    };
    Json(serde_json::json!({ "live": live, "ended": ended }))
}

/// The ended sessions in the history store, if there is one.
fn ended_sessions(data_dir: &Path) -> Vec<serde_json::Value> {
    let path = data_dir.join(crate::session::store::sqlite::DB_FILE);
    if !path.exists() {
        return Vec::new();
    }
    let records = crate::session::store::SqliteStore::open_for_reading(&path)
        .and_then(|store| store.list(StateFilter::Ended));
    match records {
        Ok(mut records) => {
            records.sort_by_key(|r| std::cmp::Reverse(r.ended_at_ms));
            records
                .into_iter()
                .take(MAX_ENDED_SESSIONS)
                .map(|record| row(&record))
                .collect()
        }
        Err(e) => {
            tracing::warn!(%e, "the live view cannot read the session history");
            Vec::new()
        }
    }
}

/// A tape as the list shows it (its session by digest: a tape's header keeps the id).
#[derive(Debug, Serialize)]
struct TapeRow {
    file: String,
    name: Option<String>,
    created: String,
    session: String,
    frames: usize,
    duration_ms: u64,
    size: u64,
    end: Option<String>,
}

/// `GET /api/tapes`: the tapes in the tapes directory, newest first.
pub(super) async fn tapes(State(shared): State<Arc<Shared>>) -> Response {
    let dir = shared.tapes.clone();
    let listed = tokio::task::spawn_blocking(move || crate::cmd::tape::list(&dir)).await;
    match listed {
        Ok(Ok(rows)) => Json(
            rows.into_iter()
                .map(|r| TapeRow {
                    file: r
                        .path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    name: r.name,
                    created: r.created,
                    session: digest(&r.session),
                    frames: r.frames,
                    duration_ms: r.duration_ms,
                    size: r.size,
                    end: r.end,
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Ok(Err(e)) => refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        Err(_) => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the tape listing failed".to_owned(),
        ),
    }
}

#[derive(Debug, Serialize)]
struct TapeFrame {
    #[serde(flatten)]
    entry: crate::cmd::tape::Entry,
    /// The message (as recorded: tapes are masked when written), cut at [`MAX_FEED_BODY`].
    body: String,
    truncated: bool,
}

#[derive(Debug, Serialize)]
struct TapeView {
    file: String,
    name: Option<String>,
    created: String,
    session: String,
    upstream: Option<String>,
    /// How many messages the tape has (at most [`MAX_TAPE_FRAMES`] are sent).
    total: usize,
    frames: Vec<TapeFrame>,
}

/// `GET /api/tapes/{file}`: one tape's messages in order, with each answer's latency. `file`
/// is a `*.jsonl` name in the tapes directory, nothing else.
pub(super) async fn tape(
    State(shared): State<Arc<Shared>>,
    axum::extract::Path(file): axum::extract::Path<String>,
) -> Response {
    let plain = !file.is_empty()
        && Path::new(&file).extension().is_some_and(|e| e == "jsonl")
        && !file.starts_with('.')
        && !file.contains(['/', '\\']);
    if !plain {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("Bad Request: {file:?} is not a tape's file name"),
        );
    }
    let path = shared.tapes.join(&file);
    let size = tokio::fs::metadata(&path).await.map_or(0, |m| m.len());
    if size > MAX_TAPE_BYTES {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{file:?} is {} MiB, more than the live view opens ({} MiB): \
                 use `shadowcat tape show` on it",
                size / (1024 * 1024),
                MAX_TAPE_BYTES / (1024 * 1024)
            ),
        );
    }
    let read = tokio::task::spawn_blocking(move || crate::tape::read(&path)).await;
    let tape = match read {
        Ok(Ok(tape)) => tape,
        Ok(Err(crate::tape::TapeError::Io { source, .. }))
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return refuse(
                StatusCode::NOT_FOUND,
                format!("Not Found: no tape {file:?}"),
            );
        }
        Ok(Err(e)) => return refuse(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        Err(_) => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "reading the tape failed".to_owned(),
            );
        }
    };
    let total = tape.frames.len();
    let frames = crate::cmd::tape::timeline(&tape)
        .into_iter()
        .zip(&tape.frames)
        .take(MAX_TAPE_FRAMES)
        .map(|(entry, frame)| {
            let text = String::from_utf8_lossy(&frame.raw);
            let truncated = text.len() > MAX_FEED_BODY;
            let mut end = text.len().min(MAX_FEED_BODY);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            TapeFrame {
                entry,
                body: text[..end].to_owned(),
                truncated,
            }
        })
        .collect();
    Json(TapeView {
        file,
        name: tape.header.name.clone(),
        created: tape.header.created.clone(),
        session: digest(&tape.header.session),
        upstream: tape.header.upstream.clone(),
        total,
        frames,
    })
    .into_response()
}
