//! Request timeouts: a request unanswered for too long gets an error, and the peer that was to
//! answer it gets `notifications/cancelled`, so both sides move on. "Too long" is
//! `--request-timeout` without an answer or a progress notification for it (a long call that
//! reports progress lives on), and at most `--request-timeout-max` in all.
//!
//! One watcher per session and direction. It sleeps until the earliest deadline in the pending
//! table, takes everything due, and sleeps again; with nothing pending it waits to be told a
//! request arrived. Nothing is added to the per-message path but the progress bookkeeping.

use std::sync::Arc;

use tokio::time::Instant;

use crate::protocol::error::ProxyError;
use crate::protocol::{Direction, ErrorCode, Message};
use crate::session::Session;
use crate::session::pending::Timeouts;

use super::outbox::Deliver;
#[cfg(test)]
use super::outbox::Outbox;

/// Enforces `limits` on requests travelling in `direction` until the session ends.
pub async fn enforce<Q: Deliver, A: Deliver>(
    session: Arc<Session>,
    direction: Direction,
    limits: Timeouts,
    to_requester: Arc<Q>,
    to_answerer: Arc<A>,
) {
    let pending = session.pending(direction);
    let ended = session.closed_token().clone();
    loop {
        if pending.is_closed() {
            return;
        }
        let Some(deadline) = pending.next_deadline(limits) else {
            tokio::select! {
                () = pending.added() => {}
                () = ended.cancelled() => return,
            }
            continue;
        };
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {}
            () = ended.cancelled() => return,
            // A new request may have an earlier deadline only if the table was empty, and then
            // this branch is not taken; later requests time out later.
        }
        let now = Instant::now();
        for (id, request) in pending.take_expired(now, limits) {
            let (limit, flag, what) = match limits.max {
                Some(max) if request.sent_at + max <= now => {
                    (max, "--request-timeout-max", "no answer")
                }
                _ => (
                    limits.idle.unwrap_or_default(),
                    "--request-timeout",
                    "no answer or progress",
                ),
            };
            tracing::warn!(%id, method = %request.method, ?limit, direction = direction.as_str(), "request timed out ({flag})");
            let error = ProxyError::new(
                ErrorCode::RequestTimedOut,
                format!(
                    "{what} for {} within {} ({flag})",
                    request.method,
                    humantime::format_duration(limit)
                ),
            )
            .with(
                "timeoutMs",
                u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
            );
            if to_requester
                .deliver(Message::error_response(Some(&id), &error))
                .await
                .is_err()
            {
                return;
            }
            let _ = to_answerer
                .deliver(Message::cancelled(
                    &id,
                    &format!("timed out in shadowcat ({flag})"),
                ))
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Method, RequestId};
    use crate::session::TransportKind;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_request_gets_an_error_and_its_receiver_a_cancellation() {
        let session = Arc::new(Session::standalone(TransportKind::Stdio, 10));
        let (to_client, mut client_rx, _) = Outbox::new(8, 1 << 20);
        let (to_server, mut server_rx, _) = Outbox::new(8, 1 << 20);
        let watcher = tokio::spawn(enforce(
            session.clone(),
            Direction::ClientToServer,
            Timeouts {
                idle: Some(Duration::from_secs(30)),
                max: None,
            },
            Arc::new(to_client),
            Arc::new(to_server),
        ));
        let pending = session.pending(Direction::ClientToServer);
        pending
            .insert(RequestId::Number(1), Method::ToolsCall)
            .unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        pending
            .insert(RequestId::Number(2), Method::ToolsCall)
            .unwrap();
        // Answered in time: never times out.
        pending.insert(RequestId::Number(3), Method::Ping).unwrap();
        pending.remove(&RequestId::Number(3));
        tokio::time::sleep(Duration::from_secs(21)).await;
        let error: serde_json::Value =
            serde_json::from_slice(client_rx.recv().await.unwrap().as_ref()).unwrap();
        assert_eq!(error["id"], 1);
        assert_eq!(error["error"]["code"], -32086);
        assert_eq!(error["error"]["data"]["timeoutMs"], 30_000);
        let cancel: serde_json::Value =
            serde_json::from_slice(server_rx.recv().await.unwrap().as_ref()).unwrap();
        assert_eq!(cancel["method"], "notifications/cancelled");
        assert_eq!(cancel["params"]["requestId"], 1);
        assert!(
            pending.contains(&RequestId::Number(2)),
            "request 2 still has 9 s"
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        let error: serde_json::Value =
            serde_json::from_slice(client_rx.recv().await.unwrap().as_ref()).unwrap();
        assert_eq!(error["id"], 2);
        assert!(pending.is_empty());
        assert!(
            client_rx.try_recv().is_err(),
            "request 3 was answered and must not time out"
        );
        session.closed_token().cancel();
        watcher.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_arriving_at_an_idle_watcher_is_timed_from_its_arrival_both_ways() {
        let session = Arc::new(Session::standalone(TransportKind::Stdio, 10));
        let (to_client, mut client_rx, _) = Outbox::new(8, 1 << 20);
        let (to_server, mut server_rx, _) = Outbox::new(8, 1 << 20);
        // Server→client: the server is the requester.
        let watcher = tokio::spawn(enforce(
            session.clone(),
            Direction::ServerToClient,
            Timeouts {
                idle: Some(Duration::from_secs(5)),
                max: None,
            },
            Arc::new(to_server),
            Arc::new(to_client),
        ));
        // Let the watcher find the table empty and wait.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(server_rx.try_recv().is_err());
        session
            .pending(Direction::ServerToClient)
            .insert(RequestId::from("s-1"), Method::SamplingCreateMessage)
            .unwrap();
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(server_rx.try_recv().is_err(), "timed out early");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let error: serde_json::Value =
            serde_json::from_slice(server_rx.recv().await.unwrap().as_ref()).unwrap();
        assert_eq!(
            (error["id"].as_str(), error["error"]["code"].as_i64()),
            (Some("s-1"), Some(-32086))
        );
        let cancel: serde_json::Value =
            serde_json::from_slice(client_rx.recv().await.unwrap().as_ref()).unwrap();
        assert_eq!(cancel["params"]["requestId"], "s-1");
        session.closed_token().cancel();
        watcher.await.unwrap();
    }
}
