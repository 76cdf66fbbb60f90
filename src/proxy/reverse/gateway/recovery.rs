//! Getting a lost upstream session back: the client's handshake replayed when the upstream
//! answers 404 (it restarted, or expired the session); and, in the stateless era, abandoning a
//! request (closing its connection is that era's cancellation).

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};

use crate::protocol::RequestId;
use crate::transport::http::{HttpUpstream, MCP_PROTOCOL_VERSION, MCP_SESSION_ID, read_body};

use super::{Gateway, LinkUpstream, MAX_ERROR_BODY, SessionLink};

/// A stateless-era request that can be abandoned, forgotten when its exchange is over.
pub(super) struct AbandonOnDrop {
    link: Arc<SessionLink>,
    id: RequestId,
    pub(super) token: tokio_util::sync::CancellationToken,
}

impl AbandonOnDrop {
    pub(super) fn register(link: &Arc<SessionLink>, id: &RequestId) -> Self {
        let token = tokio_util::sync::CancellationToken::new();
        link.abandon
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone(), token.clone());
        Self {
            link: link.clone(),
            id: id.clone(),
            token,
        }
    }
}

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.link
            .abandon
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

/// Longest a lost upstream session's re-initialization may take.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);

impl Gateway {
    /// Re-establishes a session the upstream no longer knows (it answered 404 for `lost`: it
    /// restarted, or expired the session): replays the client's `initialize` (and
    /// `notifications/initialized` if the client sent it) without a session id, and maps the new
    /// upstream session id to ours. The client's session is untouched. Done once however many
    /// requests meet the 404 at the same time; true if the session is (now) re-established.
    pub(super) async fn recover(
        &self,
        link: &SessionLink,
        client: &HttpUpstream,
        lost: Option<&HeaderValue>,
    ) -> bool {
        let LinkUpstream::Http {
            session_id,
            recovery,
            ..
        } = &link.upstream
        else {
            return false;
        };
        let _once = recovery.running.lock().await;
        let current = link.upstream_session();
        if current.as_ref() != lost {
            // Another request re-established it meanwhile.
            return current.is_some();
        }
        let (initialize, initialized) = {
            let handshake = recovery
                .handshake
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            (handshake.initialize.clone(), handshake.initialized)
        };
        let Some(initialize) = initialize else {
            return false;
        };
        let replay = async {
            let response = client
                .post(initialize.raw().clone(), None, &HeaderMap::new())
                .await
                .ok()?;
            let status = response.status();
            let new_id = response.headers().get(&MCP_SESSION_ID).cloned();
            // The answer is ours, not the client's (it has its own): read and dropped.
            let _ = read_body(response.into_body(), self.config.max_message_size).await;
            let new_id = new_id.filter(|_| status.is_success())?;
            if initialized {
                let mut headers = HeaderMap::new();
                if let Some(version) = link.protocol_version() {
                    headers.insert(MCP_PROTOCOL_VERSION.clone(), version);
                }
                let note = Bytes::from_static(
                    br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
                );
                let response = client.post(note, Some(&new_id), &headers).await.ok()?;
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
        self.metrics.upstream_error("session_recovered");
        *session_id.lock().unwrap_or_else(PoisonError::into_inner) = Some(new_id);
        true
    }
}
