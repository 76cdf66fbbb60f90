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

use super::super::peer::{Peers, Route};
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
                Ok(token) => {
                    link.set_sealed();
                    http::HeaderValue::from_str(&token).ok()
                }
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
                link.set_sealed();
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
        // A plain id names only a session whose client was given it: the plain id of a sealed
        // session (kept in Redis and the history) opens nothing.
        SessionId::parse(text)
            .ok()
            .and_then(|id| self.link(&id))
            .filter(|link| !link.is_sealed())
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
            let naming = self.naming(session.id());
            let router = Arc::new(Router::new(
                session.clone(),
                Some(self.event_log(&naming)),
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
                self.post_streams(&naming),
            ));
            link.set_sealed();
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
        let kept = self.ended_kept();
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
        let (Some(members), Server::Command(_)) = (&self.members, &self.server) else {
            return;
        };
        let peers = Arc::new(Peers::new(members.clone(), url));
        tracing::info!(
            url,
            "the other instances of the cluster pass requests for this instance's sessions to it here"
        );
        let _ = self.peers.set(peers);
    }

    /// Keeps this instance on the cluster's list of those up while it runs (in a cluster with
    /// Redis): the others take its process sessions over, and stop following its streams,
    /// once it is off the list.
    pub(super) fn keep_listed(self: &Arc<Self>) {
        let (Some(members), Some(redis)) = (&self.members, &self.redis) else {
            return;
        };
        let gateway = Arc::downgrade(self);
        let relisted = Box::new(move || {
            if let Some(gateway) = gateway.upgrade() {
                let again = gateway.clone();
                gateway.spawn(async move { again.let_go_of_taken_over().await });
            }
        });
        let task = members.keep_listed(redis.clone(), self.stopping.clone(), relisted);
        *self
            .heartbeat
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(task);
    }

    /// This run among the cluster's instances (in a cluster).
    pub(in crate::proxy::reverse) fn members(&self) -> Option<&Arc<super::super::peer::Members>> {
        self.members.as_ref()
    }

    /// The peers, if requests may be passed between instances.
    pub(in crate::proxy::reverse) fn peers(&self) -> Option<&Arc<Peers>> {
        self.peers.get()
    }

    /// What the sealed id `text` carries, if it names a session at a process that is not open
    /// here: another instance's, or (with Redis) this one's that another took over while
    /// this one was off the cluster's list.
    pub(in crate::proxy::reverse) fn owned_elsewhere(
        &self,
        text: &str,
        me: &str,
    ) -> Option<Unsealed> {
        let sealed = self.sealer.as_ref()?.unseal(text)?;
        let elsewhere = sealed
            .owner
            .as_deref()
            .is_some_and(|owner| owner != me || self.redis.is_some());
        (elsewhere && self.link(&sealed.id).is_none()).then_some(sealed)
    }

    /// The instance that owns session `id`'s process now, as Redis says (`None` without
    /// Redis, if it does not answer, or if nobody does).
    pub(in crate::proxy::reverse) async fn owner_now(&self, id: &SessionId) -> Option<String> {
        self.redis
            .as_ref()?
            .query::<Option<String>>(
                Use::Session,
                redis::cmd("GET").arg(record_key(OWNER_KEY, id)),
            )
            .await
            .flatten()
    }

    /// Ends here the sessions at this instance's processes that another instance took over
    /// while this one was off the cluster's list (its heartbeats failed): the client's
    /// requests go to their new owner, and only one process serves each session.
    async fn let_go_of_taken_over(self: Arc<Self>) {
        let Some(peers) = self.peers() else {
            return;
        };
        let links: Vec<Arc<SessionLink>> = self
            .links
            .iter()
            .filter(|l| l.upstream.is_process() && l.is_sealed())
            .map(|l| l.value().clone())
            .collect();
        for link in links {
            let id = link.session.id();
            if self
                .owner_now(id)
                .await
                .is_some_and(|owner| owner != peers.me())
            {
                tracing::warn!(session = %id.digest(), "another instance of the cluster took the session over while this one was off the list: its process here is stopped, and its requests go there");
                self.sessions.begin_closing(&link.session);
                self.sessions.end(id, EndReason::Evicted);
            }
        }
    }

    /// Keeps (in Redis) what another instance needs to take the session at `link`'s process
    /// over should this one go: this instance as its owner and the client's `initialize`.
    pub(in crate::proxy::reverse) async fn remember_handshake(
        &self,
        link: &SessionLink,
        initialize: &crate::protocol::Message,
    ) {
        let (Some(redis), Some(peers), true) =
            (&self.redis, self.peers(), link.upstream.is_process())
        else {
            return;
        };
        let id = link.session.id();
        // Deleted when the session ends here; this is for an owner that never says so.
        let kept = HANDSHAKE_KEPT.as_secs();
        let mut pipeline = redis::pipe();
        pipeline
            .cmd("SET")
            .arg(record_key(OWNER_KEY, id))
            .arg(peers.me())
            .arg("EX")
            .arg(kept)
            .ignore()
            .cmd("SET")
            .arg(record_key(HANDSHAKE_KEY, id))
            .arg(&initialize.raw()[..])
            .arg("EX")
            .arg(kept)
            .ignore();
        if redis
            .pipeline::<()>(Use::Session, &pipeline)
            .await
            .is_none()
        {
            tracing::warn!(session = %id.digest(), "could not keep the session's handshake in Redis: should this instance go, the session goes with it");
        }
    }

    /// Where a request for `sealed`'s session goes now that the instance that started it
    /// seems gone (off this instance's copy of the list, or unreachable): to whichever
    /// instance took it over, or here, taking it over (a new process given the client's
    /// handshake, as `--restart on-failure` does); gone without Redis, or if nothing was kept
    /// for it. The claim is made on Redis's own list of the instances up: an owner still on
    /// it keeps its session.
    pub(in crate::proxy::reverse) async fn take_over(
        self: &Arc<Self>,
        sealed: &Unsealed,
        client: Client<'static>,
    ) -> Route {
        let (Some(redis), Some(peers)) = (&self.redis, self.peers()) else {
            return Route::Gone;
        };
        if self.ended_elsewhere(&sealed.id).await {
            return Route::Gone;
        }
        let owner_key = record_key(OWNER_KEY, &sealed.id);
        for _ in 0..2 {
            let Some(owner) = redis
                .query::<Option<String>>(Use::Session, redis::cmd("GET").arg(&owner_key))
                .await
                .flatten()
            else {
                return Route::Gone;
            };
            if owner != peers.me() && !peers.is_gone(&owner) {
                return Route::To(owner);
            }
            // Read before the claim, so that once it is ours the session opens at once.
            let Some(initialize) = self.kept_handshake(&sealed.id).await else {
                return Route::Gone;
            };
            if owner == peers.me() {
                // Ours (taken over by another request a moment ago, or being): the one that
                // opens it first wins, the other finds it open.
                return self.recover(sealed, initialize, client);
            }
            let script = redis::Script::new(CLAIM);
            let mut claim = script.prepare_invoke();
            claim
                .key(&owner_key)
                .key(super::super::peer::MEMBERS)
                .arg(&owner)
                .arg(peers.me())
                .arg(owner.split(' ').next().unwrap_or_default());
            match redis.script::<i64>(Use::Session, &claim).await {
                Some(CLAIMED) => return self.recover(sealed, initialize, client),
                // Still on the list (this instance's copy was behind): it serves it.
                Some(OWNER_UP) => return Route::To(owner),
                // Another instance took it first: ask again who.
                Some(_) => {}
                None => return Route::Gone,
            }
        }
        Route::Gone
    }

    /// The client's `initialize` of session `id`, as its owner kept it in Redis.
    async fn kept_handshake(&self, id: &SessionId) -> Option<crate::protocol::Message> {
        let raw = self
            .redis
            .as_ref()?
            .query::<Option<Vec<u8>>>(
                Use::Session,
                redis::cmd("GET").arg(record_key(HANDSHAKE_KEY, id)),
            )
            .await
            .flatten()?;
        crate::protocol::Message::parse(bytes::Bytes::from(raw)).ok()
    }

    /// Serves `sealed`'s session here from now on: a process given `initialize` first.
    fn recover(
        self: &Arc<Self>,
        sealed: &Unsealed,
        initialize: crate::protocol::Message,
        client: Client<'static>,
    ) -> Route {
        match self.open_recovered(sealed, initialize, client) {
            Ok((_, false)) => Route::Here,
            Ok((_, true)) => {
                tracing::info!(session = %sealed.id.digest(), "took over a session whose instance is gone: a new MCP server process is given its handshake");
                self.metrics.session_reopened();
                Route::Here
            }
            Err(e) => {
                tracing::warn!(session = %sealed.id.digest(), %e, "could not take over a session whose instance is gone");
                Route::Gone
            }
        }
    }

    /// Forgets (in Redis) what was kept to take the session at `link`'s process over, once it
    /// ended here for good (not at this instance's shutdown, when the others take it over).
    pub(in crate::proxy::reverse) async fn forget_handshake(&self, link: &SessionLink) {
        let (Some(redis), Some(peers), true) =
            (&self.redis, self.peers(), link.upstream.is_process())
        else {
            return;
        };
        let id = link.session.id();
        let script = redis::Script::new(FORGET);
        let mut forget = script.prepare_invoke();
        forget
            .key(record_key(OWNER_KEY, id))
            .key(record_key(HANDSHAKE_KEY, id))
            .arg(peers.me());
        let _: Option<i64> = redis.script(Use::Session, &forget).await;
    }

    /// How long what the cluster keeps of a session lasts: the idle timeout, or a day.
    fn ended_kept(&self) -> u64 {
        self.config
            .sessions
            .idle_timeout
            .unwrap_or(ENDED_KEPT)
            .as_secs()
            .max(1)
    }
}

/// What [`CLAIM`] answers: the session is now this instance's.
const CLAIMED: i64 = 1;
/// What [`CLAIM`] answers: its owner is still up (on Redis's clock).
const OWNER_UP: i64 = 2;

/// Makes `ARGV[2]` the owner in `KEYS[1]` if it still names `ARGV[1]`, whose run `ARGV[3]` is
/// not up in the members hash `KEYS[2]` (as `Peers::keep_listed` keeps it): 1 if it did, 2 if
/// that owner is up, 0 if another owner is named now. Keeps the key's time to live.
const CLAIM: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = tonumber(redis.call('HGET', KEYS[2], ARGV[3]))
if until_ms and until_ms > now then return 2 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return 1
";

/// Deletes `KEYS[1]` and `KEYS[2]` if `KEYS[1]` names `ARGV[1]` (this instance) as the owner.
const FORGET: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1], KEYS[2])
end
return 0
";

/// How long a session at a process can be taken over when its owner goes without a word (a
/// week: longer than any session is expected to run).
const HANDSHAKE_KEPT: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Prefix of the key naming the instance that runs a session's process.
const OWNER_KEY: &str = "shadowcat:owner:";

/// Prefix of the key holding a session's `initialize`, for an instance that takes it over.
const HANDSHAKE_KEY: &str = "shadowcat:handshake:";

/// `prefix` + `id`.
fn record_key(prefix: &str, id: &SessionId) -> String {
    [prefix, id.as_str()].concat()
}

/// The channel on which an instance says a client ended its session.
const ENDED_CHANNEL: &str = "shadowcat:ended";

/// How long the mark of an ended session is kept when sessions never expire for idleness.
const ENDED_KEPT: Duration = Duration::from_secs(24 * 60 * 60);

/// The key that marks session `id` as ended by its client.
fn ended_key(id: &SessionId) -> String {
    ["shadowcat:ended:", id.as_str()].concat()
}

impl Gateway {
    /// Opens here, under its own id, the session at a process that `sealed` names, whose
    /// instance is gone: a process of its own (or, with `--share always`, a place on a shared
    /// one) that is given `initialize` (and `notifications/initialized`) before the client's
    /// next message.
    fn open_recovered(
        self: &Arc<Self>,
        sealed: &Unsealed,
        initialize: crate::protocol::Message,
        client: Client<'_>,
    ) -> Result<(Arc<SessionLink>, bool), OpenError> {
        let _once = self
            .reopening
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(link) = self.link(&sealed.id) {
            return Ok((link, false));
        }
        if self.stopping.is_cancelled() {
            return Err(OpenError::ShuttingDown);
        }
        let client_slot = self.client_slot(client)?;
        let session = self.sessions.create_as(
            sealed.id.clone(),
            TransportKind::Http,
            Some(self.upstream_label()),
        )?;
        session.update_metadata(|m| m.protocol_version.clone_from(&sealed.protocol_version));
        self.sessions.activate(&session);
        self.record(&session);
        let naming = self.naming(session.id());
        let events = Some(self.event_log(&naming));
        let initialized = crate::protocol::Message::parse(bytes::Bytes::from_static(
            br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        ))
        .ok();
        let (link, queue) = if let Some(shared) = &self.shared {
            // A session on a shared process: it joins one here (one whose handshake asked for
            // its protocol version), given the session's handshake first. The `initialize`
            // goes under an id of ours: its answer (the process's, or the one it gave another
            // session) reaches no request of the client's.
            let router = Arc::new(Router::new(
                session.clone(),
                events,
                Delivery::Streamable,
                None,
            ));
            let member = shared.member(session.clone(), router.clone());
            member.replay_first(
                [with_id(&initialize, RECOVERED_INITIALIZE_ID), initialized]
                    .into_iter()
                    .flatten()
                    .collect(),
            );
            let link = SessionLink::new(
                session,
                router,
                Upstream::Shared(Arc::new(member)),
                client_slot,
                self.post_streams(&naming),
            );
            (Arc::new(link), None)
        } else {
            let (upstream, router, queue) =
                self.own_process(&session, events, Delivery::Streamable);
            let handshake = crate::proxy::upstream::supervise::Handshake {
                initialize: Some(initialize),
                initialized,
            };
            if let Upstream::Stdio {
                inbox: Some(inbox), ..
            } = &upstream
            {
                inbox.remember(&handshake);
            }
            let link = Arc::new(SessionLink::new(
                session,
                router,
                upstream,
                client_slot,
                self.post_streams(&naming),
            ));
            link.replay_first(handshake);
            (link, Some(queue))
        };
        link.set_sealed();
        if let Some(digest) = sealed.principal {
            link.bind_digest(digest);
        }
        self.install(&link, queue);
        Ok((link, true))
    }
}

/// The id a recovered session's `initialize` goes to a shared process under.
const RECOVERED_INITIALIZE_ID: &str = "shadowcat-recovered-initialize";

/// `request` under id `id`.
fn with_id(request: &crate::protocol::Message, id: &str) -> Option<crate::protocol::Message> {
    let mut value: serde_json::Value = serde_json::from_slice(request.raw()).ok()?;
    *value.get_mut("id")? = serde_json::Value::from(id);
    crate::protocol::Message::parse(bytes::Bytes::from(serde_json::to_vec(&value).ok()?)).ok()
}
