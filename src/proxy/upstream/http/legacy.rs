//! A 2024-11-05 HTTP+SSE upstream, found by the spec's back-compat probe (an initialize refused
//! with 400, 404 or 405): each session opens its stream there (the stream is the session), and
//! messages are POSTed to the endpoint its first event names.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::HeaderMap;
use http::header::CONTENT_TYPE;

use crate::protocol::error::ProxyError;
use crate::protocol::{ErrorCode, Message};
use crate::proxy::outbox::Deliver;
use crate::session::EndReason;
use crate::transport::http::{media_type, read_body, sse_events};
use crate::transport::sse::Item;

use super::streams::StreamPosition;
use super::{HttpSession, MAX_ERROR_BODY, ReplyTo, lock};

/// A session's stream at a 2024-11-05 HTTP+SSE upstream (read by a relay task) is the upstream
/// session; messages are POSTed to the endpoint its first event named.
#[derive(Debug)]
pub struct LegacyStream {
    /// Where to POST.
    pub endpoint: http::Uri,
    /// The task relaying the stream; aborting it closes the upstream session.
    pub relay: tokio_util::task::AbortOnDropHandle<()>,
}

impl<C: Deliver + 'static> HttpSession<C> {
    /// The spec's back-compat probe, after the upstream refused an initialize with 400, 404 or
    /// 405: perhaps it is a 2024-11-05 HTTP+SSE server. If so (remembered for every later
    /// session), the initialize goes there; false if not.
    pub(super) async fn probe_legacy(
        self: &Arc<Self>,
        msg: &Message,
        client_headers: &HeaderMap,
        reply: &ReplyTo,
    ) -> bool {
        match self.open_legacy().await {
            Ok(legacy) => {
                self.backend.legacy.store(true, Ordering::Relaxed);
                tracing::info!("the upstream speaks the 2024-11-05 HTTP+SSE transport");
                self.post_legacy(&legacy, msg.clone(), client_headers, reply)
                    .await;
                true
            }
            Err(e) => {
                tracing::debug!(%e, "not an HTTP+SSE upstream either");
                false
            }
        }
    }

    /// Opens this session's stream at a 2024-11-05 HTTP+SSE upstream: GET the upstream URL, wait
    /// for the `endpoint` event (within `--connect-timeout`), and relay the rest of the stream
    /// through the pipeline and the router until it ends, which ends the session.
    pub(super) async fn open_legacy(self: &Arc<Self>) -> Result<Arc<LegacyStream>, String> {
        use futures_util::StreamExt;
        let response = tokio::time::timeout(
            self.backend.limits.connect_timeout,
            self.client().get_stream(None, None, None),
        )
        .await
        .map_err(|_| "no answer to GET within --connect-timeout".to_owned())?
        .map_err(|e| e.to_string())?;
        let status = response.status();
        if !status.is_success()
            || media_type(response.headers()).as_deref() != Some("text/event-stream")
        {
            return Err(format!("GET answered HTTP {status}"));
        }
        let mut events = Box::pin(sse_events(
            response.into_body(),
            self.backend.limits.max_message_size,
        ));
        let endpoint = tokio::time::timeout(self.backend.limits.connect_timeout, async {
            while let Some(item) = events.next().await {
                if let Ok(Item::Event(event)) = item {
                    if event.event.as_deref() == Some("endpoint") {
                        return Some(String::from_utf8_lossy(&event.data).into_owned());
                    }
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .ok_or("no endpoint event")?;
        let endpoint = self
            .client()
            .resolve(&endpoint)
            .ok_or_else(|| format!("the endpoint {endpoint:?} is not on the upstream's origin"))?;
        let http = self.clone();
        let relay = self.backend.tasks.spawn(async move {
            let mut position = StreamPosition::default();
            http.relay_events(events, None, &mut position).await;
            // The stream is the upstream session: without it, the session is over.
            if http
                .backend
                .sessions
                .end(http.session.id(), EndReason::Error)
                .is_some()
            {
                tracing::warn!("the upstream closed its HTTP+SSE stream; session ended");
            }
        });
        let legacy = Arc::new(LegacyStream {
            endpoint,
            relay: tokio_util::task::AbortOnDropHandle::new(relay),
        });
        *lock(&self.legacy) = Some(legacy.clone());
        if self.session.closed_token().is_cancelled() {
            // The session ended while the stream was being opened, perhaps after its teardown
            // looked for it: close it here, or nothing would.
            legacy.relay.abort();
            lock(&self.legacy).take();
            return Err("the session ended".into());
        }
        Ok(legacy)
    }

    /// One message to a 2024-11-05 upstream: POSTed to its endpoint; the answer comes on the
    /// session's stream.
    pub(super) async fn post_legacy(
        &self,
        legacy: &LegacyStream,
        msg: Message,
        client_headers: &HeaderMap,
        reply: &ReplyTo,
    ) {
        let id = msg.request_id().cloned();
        match self
            .client()
            .post_to(&legacy.endpoint, msg.raw().clone(), None, client_headers)
            .await
        {
            Ok(response) if response.status().is_success() => {
                let _ = read_body(response.into_body(), MAX_ERROR_BODY).await;
            }
            Ok(response) => {
                let status = response.status();
                let content_type = response.headers().get(CONTENT_TYPE).cloned();
                let body = read_body(response.into_body(), MAX_ERROR_BODY)
                    .await
                    .unwrap_or_default();
                self.rejected(id, status, content_type, body, reply).await;
            }
            Err(e) => {
                self.backend.errors.count("unreachable");
                let error = ProxyError::new(ErrorCode::UpstreamUnreachable, e.to_string());
                self.fail(id.as_ref(), &error, Some(reply)).await;
            }
        }
    }
}
