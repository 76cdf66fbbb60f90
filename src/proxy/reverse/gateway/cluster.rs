//! What a cluster of instances adds to the gateway (`--cluster-key-file`, docs/scale-out.md):
//! the sealed id a client is given, what an id a client presents names, and the adoption of a
//! session another instance opened.

use std::sync::{Arc, PoisonError};

use crate::proxy::reverse::router::{Delivery, Router};
use crate::session::{SessionId, TransportKind, Unsealed};
use crate::stage::Client;

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
        let (Some(sealer), Upstream::Http(http)) = (&self.sealer, &link.upstream) else {
            return plain();
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
            return match self.link(&unsealed.id) {
                Some(link) => Named::Here(link),
                None => Named::Sealed(unsealed),
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
}
