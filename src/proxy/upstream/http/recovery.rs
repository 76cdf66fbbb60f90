//! Getting a lost upstream session back: the client's handshake replayed when the upstream
//! answers 404 (it restarted, or expired the session); and, in the stateless era, abandoning a
//! request (closing its connection is that era's cancellation).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use tokio_util::sync::CancellationToken;

use crate::protocol::headers::{MCP_PROTOCOL_VERSION, MCP_SESSION_ID};
use crate::protocol::{Message, RequestId};
use crate::proxy::outbox::Deliver;
use crate::transport::http::read_body;

use super::{Abandon, HttpSession, MAX_ERROR_BODY, lock};

/// What re-establishing a lost upstream session takes.
#[derive(Debug, Default)]
pub struct Recovery {
    /// The client's handshake, to replay.
    pub handshake: std::sync::Mutex<Handshake>,
    /// Held while the session is re-established, so that is done once.
    pub running: tokio::sync::Mutex<()>,
}

/// The client's `initialize`, and whether it went on to send `notifications/initialized`.
#[derive(Debug, Default)]
pub struct Handshake {
    /// The client's `initialize` request, as the upstream accepted it.
    pub initialize: Option<Message>,
    /// Whether the client's `notifications/initialized` reached the upstream.
    pub initialized: bool,
}

/// A stateless-era request that can be abandoned, forgotten when its exchange is over.
pub(super) struct AbandonOnDrop {
    abandon: Abandon,
    id: RequestId,
    pub(super) token: CancellationToken,
}

impl AbandonOnDrop {
    pub(super) fn register<C>(http: &HttpSession<C>, id: &RequestId) -> Self {
        let token = CancellationToken::new();
        lock(&http.abandon).insert(id.clone(), token.clone());
        Self {
            abandon: http.abandon.clone(),
            id: id.clone(),
            token,
        }
    }
}

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        lock(&self.abandon).remove(&self.id);
    }
}

/// Longest a lost upstream session's re-initialization may take.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);

impl<C: Deliver + 'static> HttpSession<C> {
    /// Re-establishes a session the upstream no longer knows (it answered 404 for `lost`: it
    /// restarted, or expired the session): replays the client's `initialize` (and
    /// `notifications/initialized` if the client sent it) without a session id, and maps the new
    /// upstream session id to ours. The client's session is untouched. Done once however many
    /// requests meet the 404 at the same time; true if the session is (now) re-established.
    pub(super) async fn recover(&self, lost: Option<&HeaderValue>) -> bool {
        let _once = self.recovery.running.lock().await;
        let current = self.upstream_session();
        if current.as_ref() != lost {
            // Another request re-established it meanwhile.
            return current.is_some();
        }
        let (initialize, initialized) = {
            let handshake = lock(&self.recovery.handshake);
            (handshake.initialize.clone(), handshake.initialized)
        };
        let Some(initialize) = initialize else {
            return false;
        };
        let replay = async {
            let response = self
                .client()
                .post(initialize.raw().clone(), None, &HeaderMap::new())
                .await
                .ok()?;
            let status = response.status();
            let new_id = response.headers().get(&MCP_SESSION_ID).cloned();
            // The answer is ours, not the client's (it has its own): read and dropped.
            let _ = read_body(response.into_body(), self.backend.limits.max_message_size).await;
            let new_id = new_id.filter(|_| status.is_success())?;
            if initialized {
                let mut headers = HeaderMap::new();
                if let Some(version) = self.protocol_version() {
                    headers.insert(MCP_PROTOCOL_VERSION.clone(), version);
                }
                let note = Bytes::from_static(
                    br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
                );
                let response = self
                    .client()
                    .post(note, Some(&new_id), &headers)
                    .await
                    .ok()?;
                let _ = read_body(response.into_body(), MAX_ERROR_BODY).await;
            }
            Some(new_id)
        };
        let Ok(Some(new_id)) = tokio::time::timeout(RECOVERY_TIMEOUT, replay).await else {
            tracing::warn!("the upstream lost this session and re-initializing it failed");
            return false;
        };
        tracing::warn!(
            "the upstream no longer knew this session (HTTP 404: it restarted or expired it); re-established it with the client's initialize"
        );
        self.backend.errors.count("session_recovered");
        *lock(&self.session_id) = Some(new_id);
        true
    }
}
