//! Requests for a session another instance of the cluster owns (its server is a process that
//! instance started: `reverse -- <cmd>` with `--cluster-key-file`), passed to that instance as
//! they came, and its answer (JSON or an SSE stream) passed back as it comes.
//!
//! The owner is named in the session's sealed id ([`crate::session::Unsealed::owner`]: the
//! instance's id for this run, and the URL the others reach it at). A request passed on carries
//! `Shadowcat-Forwarded` naming the owner's run, so it is never passed on again (an instance
//! started again at the same URL is another run: it answers 421 without serving it, and the
//! session is taken over as its owner's), and `X-Forwarded-For` with the client's
//! address (the owner reads it if the instances are each other's `--trusted-proxy`).
//!
//! With Redis (`--redis-url`) the instances also keep a list of who is up ([`Members`]): each
//! renews its entry every [`HEARTBEAT`] (it lapses [`MEMBER_TTL`] later, on Redis's clock) and
//! removes it when it stops. An owner not on the list is gone, and its sessions are taken over
//! (`Gateway::take_over`) instead of being passed to it; a stream whose writer is not on it
//! is no longer followed (`resume`). The middleware that routes a request
//! by its session's owner is `owner::to_owner`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse as _, Response};
use http::{HeaderName, HeaderValue, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use bytes::Bytes;

use super::respond::refuse;

/// Marks a request one instance passed to another.
pub static FORWARDED: HeaderName = HeaderName::from_static("shadowcat-forwarded");

/// How long reaching the owner may take before it counts as gone.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How often an instance renews its place on the list of those that are up.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// How long an entry lasts unless renewed.
pub const MEMBER_TTL: Duration = Duration::from_secs(5);

/// How old the list may be and still be trusted to say an owner is gone.
const LIST_FRESH: Duration = Duration::from_secs(3);

/// The hash of the instances that are up: run id → until when (ms, Redis's clock).
pub const MEMBERS: &str = "shadowcat:members";

/// Renews (or, with a time of 0, removes) `ARGV[1]` until Redis's now + `ARGV[2]` ms, removes
/// entries past their time, and returns whether `ARGV[1]`'s entry had lapsed (`1`: it was
/// gone or past its time, `0`), then the run ids still up.
const HEARTBEAT_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lapsed = '0'
if ARGV[2] == '0' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  local old = redis.call('HGET', KEYS[1], ARGV[1])
  if (not old) or tonumber(old) <= now then lapsed = '1' end
  redis.call('HSET', KEYS[1], ARGV[1], string.format('%.0f', now + tonumber(ARGV[2])))
end
local up = {lapsed}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) > now then table.insert(up, all[i]) else redis.call('HDEL', KEYS[1], all[i]) end
end
return up
";

/// The instances of the cluster that are up, as this one knows them (with Redis): this run's
/// id, kept on Redis's list while it runs, and a copy of the list.
#[derive(Debug)]
pub struct Members {
    /// A random id for this run (so an instance started again is another member).
    run: String,
    /// The run ids of the instances up, and when that was read (none yet: nobody is known to
    /// be gone).
    up: Mutex<Option<(tokio::time::Instant, HashSet<String>)>>,
    /// Runs this instance could not reach since the list was read (taken for gone until it is
    /// read again).
    unreachable: Mutex<HashSet<String>>,
}

/// What to do when this instance is on the list again after its entry may have lapsed (its
/// heartbeats failed for longer than [`MEMBER_TTL`], or Redis lost the list): others may have
/// taken its sessions over.
pub type Relisted = Box<dyn Fn() + Send + Sync>;

impl Default for Members {
    fn default() -> Self {
        Self::new()
    }
}

impl Members {
    /// This run, with a new random id.
    pub fn new() -> Self {
        let mut id = [0u8; 8];
        // Without the OS's randomness the id is still this run's: the time it started.
        if getrandom::fill(&mut id).is_err() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            id.copy_from_slice(&now.to_le_bytes()[..8]);
        }
        Self {
            run: format!("{:016x}", u64::from_le_bytes(id)),
            up: Mutex::new(None),
            unreachable: Mutex::new(HashSet::new()),
        }
    }

    /// This run's id.
    pub fn run(&self) -> &str {
        &self.run
    }

    /// Whether run `run` is known to be gone: not on a fresh list of the instances up, or not
    /// reachable since it was read. Without Redis, or while it does not answer, nobody is.
    pub fn is_gone(&self, run: &str) -> bool {
        self.is_off_the_list(run)
            || self
                .unreachable
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(run)
    }

    /// Whether run `run` is not on a fresh list of the instances up, as Redis said.
    pub fn is_off_the_list(&self, run: &str) -> bool {
        let up = self.up.lock().unwrap_or_else(PoisonError::into_inner);
        up.as_ref()
            .is_some_and(|(read, up)| read.elapsed() < LIST_FRESH && !up.contains(run))
    }

    /// Takes run `run` for gone until the list is read again (it could not be reached).
    fn mark_gone(&self, run: &str) {
        if self
            .up
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
        {
            self.unreachable
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(run.to_owned());
        }
    }

    /// Keeps this run on the list of those up (in `redis`) until `stop`, then takes it off
    /// (so its sessions are taken over at once), and keeps a copy of the list. `relisted` runs
    /// when Redis says its entry had lapsed since the last heartbeat (they failed for longer
    /// than an entry lasts, or Redis lost the list).
    pub fn keep_listed(
        self: &Arc<Self>,
        redis: Arc<crate::transport::redis::Redis>,
        stop: tokio_util::sync::CancellationToken,
        relisted: Relisted,
    ) -> crate::task::Task<()> {
        let members = self.clone();
        crate::task::Task::spawn("cluster heartbeat", async move {
            let script = redis::Script::new(HEARTBEAT_SCRIPT);
            let ttl = u64::try_from(MEMBER_TTL.as_millis()).unwrap_or(u64::MAX);
            let mut listed_before = false;
            loop {
                let mut call = script.prepare_invoke();
                call.key(MEMBERS).arg(&members.run).arg(ttl);
                let listed: Option<Vec<String>> = redis
                    .script(crate::transport::redis::Use::Session, &call)
                    .await;
                if let Some(mut listed) = listed.filter(|l| !l.is_empty()) {
                    let lapsed = listed.remove(0) == "1";
                    *members.up.lock().unwrap_or_else(PoisonError::into_inner) =
                        Some((tokio::time::Instant::now(), listed.into_iter().collect()));
                    members
                        .unreachable
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clear();
                    if lapsed && listed_before {
                        tracing::warn!(
                            "back on the cluster's list after its entry lapsed: the sessions the others took over meanwhile are theirs"
                        );
                        relisted();
                    }
                    listed_before = true;
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(HEARTBEAT) => {}
                }
            }
            let mut call = script.prepare_invoke();
            call.key(MEMBERS).arg(&members.run).arg(0);
            let _: Option<Vec<String>> = redis
                .script(crate::transport::redis::Use::Session, &call)
                .await;
            tracing::info!(
                "off the cluster's list: the other instances take this one's sessions over"
            );
        })
    }
}

/// This instance as the others reach it, and the client it reaches them with.
#[derive(Debug)]
pub struct Peers {
    /// `<id> <url>`, as sealed ids name their owner: this run's id (so an instance started
    /// again at the same URL is another owner) and the base URL.
    me: String,
    members: Arc<Members>,
    client: Client<HttpConnector, Body>,
}

impl Peers {
    /// This instance (the run `members` lists), reached at `url` (`http://HOST:PORT`).
    pub fn new(members: Arc<Members>, url: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        Self {
            me: format!("{} {}", members.run(), url.trim_end_matches('/')),
            members,
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// Whether `owner` (as sealed ids name it) is known to be gone: not on a fresh list of the
    /// instances up. Without Redis, or while it does not answer, nobody is.
    pub fn is_gone(&self, owner: &str) -> bool {
        self.members.is_gone(run_of(owner))
    }

    /// How sealed ids name this instance.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// Takes `owner` (as sealed ids name it) off the copy of the list of instances up: it
    /// could not be reached (until the list is read again).
    pub(super) fn mark_gone(&self, owner: &str) {
        self.members.mark_gone(run_of(owner));
    }

    /// Passes the request (`parts` and `body`) to `owner` (as sealed ids name it) and its
    /// answer back; `Err` if the owner cannot be reached (no connection: the request was not
    /// sent). A failure once it was sent is a 502: it may have been served.
    pub(super) async fn forward(
        &self,
        owner: &str,
        client: Option<SocketAddr>,
        parts: &http::request::Parts,
        body: Bytes,
    ) -> Result<Response, ()> {
        let base = owner.split_once(' ').map(|(_, base)| base).ok_or(())?;
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str);
        let uri = format!("{base}{path}").parse::<Uri>().map_err(|_| ())?;
        let mut request = Request::new(Body::from(body));
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = parts.headers.clone();
        let headers = request.headers_mut();
        strip_hop_by_hop(headers);
        headers.remove(http::header::CONTENT_LENGTH);
        // The run it is meant for: an instance started again at the owner's URL is another
        // run, and says so (`MISDIRECTED`) instead of serving or refusing the session.
        let run = HeaderValue::from_str(run_of(owner)).map_err(|_| ())?;
        headers.insert(FORWARDED.clone(), run);
        if let Some(client) = client {
            let mut chain: Vec<String> = headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::to_owned)
                .collect();
            chain.push(client.ip().to_string());
            if let Ok(value) = HeaderValue::from_str(&chain.join(", ")) {
                headers.insert("x-forwarded-for", value);
            }
        }
        // An owner that stalls before answering (its connection open, nothing coming) is given
        // up once it is off the list; the request may have reached it, so this is a 502, not
        // a takeover (the client's retry is taken over).
        let off_the_list = async {
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                if self.members.is_off_the_list(run_of(owner)) {
                    break;
                }
            }
        };
        let answered = tokio::select! {
            answered = self.client.request(request) => answered,
            () = off_the_list => {
                tracing::warn!(owner = base, "the instance that owns the session stopped answering (it is off the cluster's list)");
                return Ok(refuse(
                    StatusCode::BAD_GATEWAY,
                    "Bad Gateway: the instance of the cluster that runs the session's server stopped answering; try again".into(),
                ));
            }
        };
        match answered {
            Ok(answer) if answer.status() == MISDIRECTED => {
                tracing::info!(
                    owner = base,
                    "another run of the instance answers at the session's owner's URL: the owner is gone"
                );
                Err(())
            }
            Ok(mut answer) => {
                strip_hop_by_hop(answer.headers_mut());
                Ok(answer.map(Body::new))
            }
            Err(e) if e.is_connect() => {
                tracing::warn!(owner = base, %e, "the instance that owns the session cannot be reached");
                Err(())
            }
            Err(e) => {
                tracing::warn!(owner = base, %e, "the instance that owns the session failed to answer");
                Ok(refuse(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "Bad Gateway: the instance of the cluster that runs the session's server did not answer ({e})"
                    ),
                ))
            }
        }
    }
}

/// The answer of an instance to a request passed on for another run of it (it was started
/// again at the same URL): 421, as RFC 9110 says a server answers a request not meant for it.
/// The request was not served; the one that passed it on takes the session over.
pub const MISDIRECTED: StatusCode = StatusCode::MISDIRECTED_REQUEST;

/// Whether a request passed on by another instance (its `Shadowcat-Forwarded`) was meant for
/// another run than this one (`me`, as sealed ids name it). Instances that name no run (`1`)
/// are believed.
pub fn meant_for_another_run(forwarded: &HeaderValue, me: &str) -> bool {
    let run = forwarded.to_str().unwrap_or_default();
    run != "1" && run != run_of(me)
}

/// The run id in `owner` (as sealed ids name an owner: `<run> <url>`).
fn run_of(owner: &str) -> &str {
    owner.split(' ').next().unwrap_or_default()
}

/// Removes the headers that belong to one connection, not to the message (RFC 9110, 7.6.1):
/// the fixed ones and those `Connection` names.
fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(name);
    }
}

/// The answer for a session whose owner is gone.
pub(super) fn gone() -> Response {
    refuse(
        StatusCode::NOT_FOUND,
        "Not Found: the session's server ran at an instance of the cluster that is gone; start a new session with initialize"
            .into(),
    )
    .into_response()
}

/// Where a request for a session another instance started goes.
#[derive(Debug)]
pub enum Route {
    /// To that instance (as sealed ids name it).
    To(String),
    /// Here: the session is served here (taken over from an instance that is gone).
    Here,
    /// Nowhere: the session is gone.
    Gone,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_headers_of_one_connection_are_not_passed_on() {
        let mut headers = http::HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-hop"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
            ("x-hop", "1"),
            ("mcp-session-id", "abc"),
            ("authorization", "Bearer t"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "mcp-session-id"]);
    }

    #[test]
    fn a_request_for_another_run_at_our_url_is_told_apart() {
        let me = "r2 http://127.0.0.1:8081";
        let value = HeaderValue::from_static;
        assert!(meant_for_another_run(&value("r1"), me));
        assert!(!meant_for_another_run(&value("r2"), me));
        // An instance that names no run (an older one) is believed.
        assert!(!meant_for_another_run(&value("1"), me));
    }
}
