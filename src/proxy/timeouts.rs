//! Request timeouts (`--request-timeout`): a request unanswered for that long gets an error, and
//! the peer that was to answer it gets `notifications/cancelled`, so both sides move on.
//!
//! One watcher per session and direction. Pending tables keep requests in the order they were
//! sent, which with one timeout for all is the order they expire in: the watcher sleeps until the
//! oldest request's deadline, takes everything due, and sleeps again; with nothing pending it
//! waits to be told a request arrived. Nothing is added to the per-message path.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::protocol::error::ProxyError;
use crate::protocol::{Direction, ErrorCode, Message};
use crate::session::Session;
use crate::session::pending::next_timeout;

use super::outbox::Outbox;

/// Enforces `timeout` on requests travelling in `direction` until the session ends.
pub async fn enforce(
    session: Arc<Session>,
    direction: Direction,
    timeout: Duration,
    to_requester: Arc<Outbox>,
    to_answerer: Arc<Outbox>,
) {
    let pending = session.pending(direction);
    let ended = session.closed_token().clone();
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    loop {
        if pending.is_closed() {
            return;
        }
        let Some(deadline) = next_timeout(pending, timeout) else {
            tokio::select! {
                () = pending.added() => {}
                () = ended.cancelled() => return,
            }
            continue;
        };
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {}
            () = ended.cancelled() => return,
        }
        let Some(cutoff) = Instant::now().checked_sub(timeout) else {
            continue;
        };
        for (id, request) in pending.take_sent_before(cutoff) {
            tracing::warn!(%id, method = %request.method, ?timeout, direction = direction.as_str(), "request timed out");
            let error = ProxyError::new(
                ErrorCode::RequestTimedOut,
                format!(
                    "no answer to {} within {} (--request-timeout)",
                    request.method,
                    humantime::format_duration(timeout)
                ),
            )
            .with("timeoutMs", timeout_ms);
            if to_requester
                .send(Message::error_response(Some(&id), &error))
                .await
                .is_err()
            {
                return;
            }
            let _ = to_answerer
                .send(Message::cancelled(
                    &id,
                    "timed out in shadowcat (--request-timeout)",
                ))
                .await;
        }
    }
}
