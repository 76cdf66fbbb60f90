//! What a cluster of instances adds to the gateway (`--cluster-key-file`, `--redis-url`,
//! docs/scale-out.md): the sealed id a client is given, what an id a client presents names, the
//! adoption of a session another instance opened, and word (through Redis) of sessions their
//! clients ended through another instance.
//!
//! An ended session is announced on a Redis channel, which every instance hears (one that
//! serves the session ends it there, leaving the upstream alone), and marked with a key that
//! outlives it by the idle timeout, for instances that were not listening then (asked before
//! a session is adopted). Without Redis, or while it is down, an instance that still holds the
//! session serves it until its idle timeout.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use crate::proxy::reverse::router::{Delivery, Router};
use crate::session::{EndReason, SessionId, TransportKind, Unsealed};
use crate::stage::Client;
use crate::transport::redis::Use;

use super::{Gateway, OpenError, Server, SessionLink, Upstream};

/// What a client's `Mcp-Session-Id` names.
#[derive(Debug)]
pub enum Named {
    /// A session open here.
    Here(Arc<SessionLink>),
    /// A session an instance of the cluster opened (perhaps this one, before it ended here).
    Sealed(Unsealed),
    /// Nothing any instance sharing our keys handed out, or a session that is over.
    Unknown,
}

impl Gateway {
    /// The id `link`'s client is given: in a cluster, sealed with what any instance needs to
    /// serve the session (for a session at the HTTP upstream); else the session's own.
    pub fn client_id(&self, link: &SessionLink) -> Option<http::HeaderValue> {
        let plain = || http::HeaderValue::from_str(link.session.id().as_str()).ok();
        let Some(sealer) = &self.sealer else {
            return plain();
        };
        let Upstream::Http(http) = &link.upstream else {
            // A process's session: sealed with this instance as its owner, if the others can
            // reach it.
            let Some(peers) = self.peers.get() else {
                return plain();
            };
            let unsealed = Unsealed {
                id: link.session.id().clone(),
                upstream: None,
                protocol_version: link.session.read_metadata(|m| m.protocol_version.clone()),
                principal: link.owner_digest(),
                owner: Some(peers.me().to_owned()),
            };
            return match sealer.seal(&unsealed) {
                Ok(token) => http::HeaderValue::from_str(&token).ok(),
                Err(e) => {
                    tracing::warn!(session = %link.session.id().digest(), %e, "the session stays on this instance");
                    plain()
                }
            };
        };
        if http.legacy().is_some() {
            // A 2024-11-05 upstream's session lives in its stream, held here.
            return plain();
        }
        let unsealed = Unsealed {
            id: link.session.id().clone(),
            upstream: http.upstream_id(),
            protocol_version: link.session.read_metadata(|m| m.protocol_version.clone()),
            principal: link.owner_digest(),
            owner: None,
        };
        match sealer.seal(&unsealed) {
            Ok(token) => {
                link.session.set_roaming();
                http::HeaderValue::from_str(&token).ok()
            }
            Err(e) => {
                tracing::warn!(session = %link.session.id().digest(), %e, "the session stays on this instance");
                plain()
            }
        }
    }

    /// What a client's `Mcp-Session-Id` (`text`) names: in a cluster a sealed id opens to the
    /// session it was given for (open here or not); else, or for an id that is not sealed,
    /// the session open here under it.
    pub fn named(&self, text: &str) -> Named {
        if let Some(unsealed) = self.sealer.as_ref().and_then(|s| s.unseal(text)) {
            return match (self.link(&unsealed.id), &unsealed.owner) {
                (Some(link), _) => Named::Here(link),
                // A process's session: served only by the instance that owns it (a request
                // for it elsewhere is passed there before it gets here).
                (None, Some(_)) => Named::Unknown,
                (None, None) => Named::Sealed(unsealed),
            };
        }
        SessionId::parse(text)
            .ok()
            .and_then(|id| self.link(&id))
            .map_or(Named::Unknown, Named::Here)
    }

    /// Serves here from now on the session another instance of the cluster opened (`sealed`):
    /// initialized, at the upstream session its seal names, bound to its principal. Done once
    /// however many requests for it arrive together. `None` if it cannot be served here: its
    /// server is a process (owned by another instance), or it is bound to a principal and this
    /// instance checks none.
    pub fn reopen(
        self: &Arc<Self>,
        sealed: &Unsealed,
        client: Client<'_>,
    ) -> Option<Result<Arc<SessionLink>, OpenError>> {
        let Server::Http(backend) = &self.server else {
            return None;
        };
        if sealed.principal.is_some() && self.auth.is_none() {
            tracing::warn!(session = %sealed.id.digest(), "refused a session bound to a principal: this instance checks no tokens (give every instance the same --auth-issuer / --api-key-file)");
            return None;
        }
        // Synchronous from here on: no await while it is held.
        let _once = self
            .reopening
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(link) = self.link(&sealed.id) {
            return Some(Ok(link));
        }
        if self.stopping.is_cancelled() {
            return Some(Err(OpenError::ShuttingDown));
        }
        let opened = (|| {
            let client_slot = self.client_slot(client)?;
            let session = self.sessions.create_as(
                sealed.id.clone(),
                TransportKind::Http,
                Some(self.upstream_label()),
            )?;
            session.set_roaming();
            session.update_metadata(|m| m.protocol_version.clone_from(&sealed.protocol_version));
            self.sessions.activate(&session);
            self.record(&session);
            let router = Arc::new(Router::new(
                session.clone(),
                Some(self.event_log()),
                Delivery::Streamable,
                None,
            ));
            let http = backend.session(session.clone(), router.clone());
            http.adopt(sealed.upstream.as_deref());
            let link = Arc::new(SessionLink::new(
                session,
                router,
                Upstream::Http(http),
                client_slot,
                self.reverse.sse_replay_events,
            ));
            if let Some(digest) = sealed.principal {
                link.bind_digest(digest);
            }
            tracing::info!(session = %link.session.id().digest(), "serving a session another instance of the cluster opened");
            self.metrics.session_reopened();
            self.install(&link, None);
            Ok(link)
        })();
        Some(opened)
    }

    /// Tells the other instances that the client ended session `id` (if they share Redis).
    pub(in crate::proxy::reverse) async fn announce_end(&self, id: &SessionId) {
        let Some(redis) = &self.redis else {
            return;
        };
        let kept = self
            .config
            .sessions
            .idle_timeout
            .unwrap_or(ENDED_KEPT)
            .as_secs()
            .max(1);
        let mut pipeline = redis::pipe();
        pipeline
            .cmd("SET")
            .arg(ended_key(id))
            .arg(1)
            .arg("EX")
            .arg(kept)
            .ignore()
            .cmd("PUBLISH")
            .arg(ENDED_CHANNEL)
            .arg(id.as_str())
            .ignore();
        if redis
            .pipeline::<()>(Use::Session, &pipeline)
            .await
            .is_none()
        {
            tracing::warn!(session = %id.digest(), "could not tell the other instances the session ended (Redis did not answer): one that holds it serves it until its idle timeout");
        }
    }

    /// Whether session `id`'s client ended it through another instance (as far as Redis
    /// says: not when it does not answer).
    pub(in crate::proxy::reverse) async fn ended_elsewhere(&self, id: &SessionId) -> bool {
        let Some(redis) = &self.redis else {
            return false;
        };
        redis
            .query::<bool>(Use::Session, redis::cmd("EXISTS").arg(ended_key(id)))
            .await
            .unwrap_or(false)
    }

    /// Listens (while the gateway runs) for sessions ended through other instances.
    pub(super) fn listen_for_ends(self: &Arc<Self>) {
        let Some(redis) = &self.redis else {
            return;
        };
        let gateway = Arc::downgrade(self);
        let task = redis.subscribe(
            ENDED_CHANNEL.to_owned(),
            self.stopping.clone(),
            move |payload| {
                let id = std::str::from_utf8(payload)
                    .ok()
                    .and_then(|text| SessionId::parse(text).ok());
                if let (Some(gateway), Some(id)) = (gateway.upgrade(), id) {
                    gateway.end_ended_elsewhere(&id);
                }
            },
        );
        *self
            .subscriber
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(task);
    }

    /// Ends session `id` here, if it is served here, because its client ended it through
    /// another instance (which ended it at the upstream).
    fn end_ended_elsewhere(&self, id: &SessionId) {
        let Some(link) = self.link(id) else {
            return;
        };
        if link.session.closed_token().is_cancelled() {
            // Ended here (this instance's own announcement, or it was ending anyway).
            return;
        }
        link.set_ended_elsewhere();
        tracing::info!(session = %id.digest(), "its client ended the session through another instance of the cluster");
        self.sessions.begin_closing(&link.session);
        self.sessions.end(id, EndReason::Closed);
    }
}

impl Gateway {
    /// This instance as the others reach it: set once it listens, for the sessions at its
    /// processes (a cluster whose server is a command, with an address to advertise).
    pub fn advertise(&self, url: &str) {
        if self.sealer.is_some() && matches!(self.server, Server::Command(_)) {
            let peers = super::super::peer::Peers::new(url);
            tracing::info!(
                url,
                "the other instances of the cluster pass requests for this instance's sessions to it here"
            );
            let _ = self.peers.set(peers);
        }
    }

    /// The peers, if requests may be passed between instances.
    pub(in crate::proxy::reverse) fn peers(&self) -> Option<&super::super::peer::Peers> {
        self.peers.get()
    }

    /// The owner (as sealed ids name it) of the session `text` names, if another instance
    /// owns it.
    pub(in crate::proxy::reverse) fn foreign_owner(&self, text: &str, me: &str) -> Option<String> {
        let owner = self.sealer.as_ref()?.unseal(text)?.owner?;
        (owner != me).then_some(owner)
    }
}

/// The channel on which an instance says a client ended its session.
const ENDED_CHANNEL: &str = "shadowcat:ended";

/// How long the mark of an ended session is kept when sessions never expire for idleness.
const ENDED_KEPT: Duration = Duration::from_secs(24 * 60 * 60);

/// The key that marks session `id` as ended by its client.
fn ended_key(id: &SessionId) -> String {
    ["shadowcat:ended:", id.as_str()].concat()
}
