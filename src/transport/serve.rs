//! Serving HTTP/1 to the network with the bounds a server facing untrusted clients needs:
//! a deadline on each request's headers (which also closes idle keep-alive connections), caps on
//! connections in total and per client address, accept errors (out of descriptors) logged,
//! counted and backed off from, and a graceful shutdown. axum's own `serve` runs hyper without a
//! timer and without a cap: a few hundred half-sent requests there hold every descriptor.
//!
//! A connection over a cap is answered at once with a canned `503` (and `Retry-After`) and
//! closed, so the client learns why, and it costs us no task and no buffer.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// Default time a client has to send a request's headers, counted from when its connection
/// opened or its previous response ended (`--header-timeout`): nginx gives 60 s to headers and
/// 75 s to idle keep-alive connections; MCP clients send small requests from nearby.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time a client has to send a request's whole body (`--body-timeout`).
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time a connection may take none of the bytes we have for it before it is closed
/// (`--write-timeout`; nginx's `send_timeout` is 60 s): a client that stops reading its SSE
/// stream does not hold the stream's queued events for as long as its connection lives.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default cap on open client connections (`--max-connections`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default cap on open connections from one client address (`--max-connections-per-client`).
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 256;
/// Descriptors kept back from connections for everything else (logs, the session store, the
/// admin listener, upstream connections and children's pipes are counted on top, see
/// [`fit_to_descriptors`]).
const RESERVED_DESCRIPTORS: u64 = 32;
/// Pause after an accept error such as "too many open files", before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Longest a refusal or an accept error is logged again (they are counted every time).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What a connection over a cap is told before it is closed.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 174\r\n\r\n{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32603,\"message\":\"Service Unavailable: too many open connections (--max-connections, --max-connections-per-client); retry later\"}}\n";

/// The bounds of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Time to send a request's headers, from when the connection opened or went idle.
    pub header_timeout: Duration,
    /// Time to send a request's whole body (applied where bodies are read).
    pub body_timeout: Duration,
    /// Time a connection may take none of our bytes while we have some for it.
    pub write_timeout: Duration,
    /// Open connections in all.
    pub max_connections: usize,
    /// Open connections from one client address.
    pub max_per_client: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_per_client: DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
        }
    }
}

impl ConnectionLimits {
    /// These limits, with the connection caps lowered (with a warning) so that connections can
    /// take at most half of the `descriptors` left after a reserve: the rest is for what each
    /// session opens upstream (a connection, or a child's pipes), so that a flood of
    /// connections cannot leave a session, the store or the admin listener without one.
    #[must_use]
    pub fn fit_to_descriptors(mut self, descriptors: u64, listener: &str) -> Self {
        let room = usize::try_from(descriptors.saturating_sub(RESERVED_DESCRIPTORS) / 2)
            .unwrap_or(usize::MAX)
            .max(1);
        if self.max_connections > room {
            tracing::warn!(
                listener,
                configured = self.max_connections,
                lowered_to = room,
                descriptors,
                "--max-connections lowered to fit the open-file limit (raise `ulimit -n`)"
            );
            self.max_connections = room;
        }
        self.max_per_client = self.max_per_client.min(self.max_connections);
        self
    }
}

/// The listener's counters (for `/metrics`), each changed in one place.
#[derive(Debug, Default)]
pub struct ConnectionCounters {
    /// Connections accepted and served.
    pub accepted: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections refused because `max_connections` were open.
    pub refused_total_cap: AtomicU64,
    /// Connections refused because their address had `max_per_client` open.
    pub refused_client_cap: AtomicU64,
    /// Failed accepts (such as out of descriptors).
    pub accept_errors: AtomicU64,
    /// Connections closed because they took none of our bytes for `write_timeout`.
    pub write_timeouts: AtomicU64,
}

/// Raises this process's soft limit on open descriptors to its hard limit, and returns the
/// limit in force (a gateway holds one per connection, more per session).
pub fn raise_descriptor_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return u64::MAX;
    };
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::debug!(from = soft, to = hard, "raised the open-file limit");
                return hard;
            }
            Err(e) => tracing::debug!(%e, "cannot raise the open-file limit"),
        }
    }
    soft
}

/// Serves `app` on `listener` within `limits` until `stop` is cancelled; then stops accepting
/// and returns once every connection has finished its in-flight requests (the caller bounds
/// that wait). Each request carries its peer's address as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: ConnectionLimits,
    counters: Arc<ConnectionCounters>,
    stop: CancellationToken,
) {
    let admission = Admission::new(limits);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let mut warned = Warned::default();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                counters.accept_errors.fetch_add(1, Ordering::Relaxed);
                if warned.due() {
                    tracing::warn!(%e, "cannot accept connections; retrying (see shadowcat_connections_accept_errors_total)");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let slot = match admission.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(cap) => {
                let (counter, flag) = match cap {
                    Cap::Total => (&counters.refused_total_cap, "--max-connections"),
                    Cap::PerClient => {
                        (&counters.refused_client_cap, "--max-connections-per-client")
                    }
                };
                counter.fetch_add(1, Ordering::Relaxed);
                if warned.due() {
                    tracing::warn!(client = %peer.ip(), cap = flag, "connection refused: at its cap (see shadowcat_connections_refused_total)");
                }
                // Best effort: the client may not be reading yet; a full buffer drops it.
                let _ = tcp.try_write(OVER_CAPACITY);
                continue;
            }
        };
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        counters.open.fetch_add(1, Ordering::Relaxed);
        // Small JSON-RPC answers must not wait for Nagle's algorithm.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%e, "cannot set TCP_NODELAY");
        }
        // Each request carries its peer's address (per-client limits key on it).
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(request)
        });
        let (tcp, stall) = Watched::new(tcp);
        let connection = builder.serve_connection(TokioIo::new(tcp), service);
        let connection = graceful.watch(connection);
        let counters = counters.clone();
        let write_timeout = limits.write_timeout;
        tokio::spawn(async move {
            tokio::select! {
                result = connection => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, %e, "client connection ended with an error");
                    }
                }
                () = stall.exceeded(write_timeout) => {
                    counters.write_timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "closed a connection that took none of our bytes within --write-timeout");
                }
            }
            drop(slot);
            counters.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// A client's socket, noting since when writing to it has made no progress.
#[derive(Debug)]
struct Watched {
    tcp: tokio::net::TcpStream,
    stall: Stall,
}

/// Since when a connection's writes have been waiting (milliseconds after `base`, plus one;
/// zero: they are not).
#[derive(Debug, Clone)]
struct Stall {
    base: tokio::time::Instant,
    since: Arc<AtomicU64>,
}

impl Watched {
    fn new(tcp: tokio::net::TcpStream) -> (Self, Stall) {
        let stall = Stall {
            base: tokio::time::Instant::now(),
            since: Arc::default(),
        };
        (
            Self {
                tcp,
                stall: stall.clone(),
            },
            stall,
        )
    }

    fn note<T>(&self, poll: &std::task::Poll<std::io::Result<T>>) {
        match poll {
            std::task::Poll::Pending => self.stall.begin(),
            std::task::Poll::Ready(_) => self.stall.end(),
        }
    }
}

impl Stall {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    fn begin(&self) {
        let now = self.now_ms();
        let _ = self
            .since
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn end(&self) {
        self.since.store(0, Ordering::Relaxed);
    }

    /// Resolves once writes have waited `limit` without progress.
    async fn exceeded(&self, limit: Duration) {
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        let check = (limit / 4).max(Duration::from_millis(50));
        loop {
            tokio::time::sleep(check).await;
            let since = self.since.load(Ordering::Relaxed);
            if since != 0 && self.now_ms().saturating_sub(since) >= limit_ms {
                return;
            }
        }
    }
}

impl tokio::io::AsyncRead for Watched {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let poll = std::pin::Pin::new(&mut self.tcp).poll_write(cx, buf);
        self.note(&poll);
        poll
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let poll = std::pin::Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        self.note(&poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        // A socket's flush is always ready: it says nothing of the client taking our bytes.
        std::pin::Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Errors of one incoming connection (it went before we took it), not of the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cap {
    Total,
    PerClient,
}

/// The caps: a semaphore for the total, a count per address for each client.
#[derive(Debug)]
struct Admission {
    total: Arc<Semaphore>,
    per_client: Arc<ClientCounts>,
    max_per_client: usize,
}

/// An admitted connection's place under the caps, given back when dropped.
#[derive(Debug)]
struct Slot {
    _total: OwnedSemaphorePermit,
    _client: ClientSlot,
}

impl Admission {
    fn new(limits: ConnectionLimits) -> Self {
        Self {
            total: Arc::new(Semaphore::new(limits.max_connections)),
            per_client: Arc::default(),
            max_per_client: limits.max_per_client,
        }
    }

    fn admit(&self, client: IpAddr) -> Result<Slot, Cap> {
        let total = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Cap::Total)?;
        let client = ClientCounts::take(&self.per_client, client, self.max_per_client)
            .ok_or(Cap::PerClient)?;
        Ok(Slot {
            _total: total,
            _client: client,
        })
    }
}

/// How many of something (connections, sessions) each client address holds, for a cap per
/// client. An address is forgotten when it holds none.
#[derive(Debug, Default)]
pub struct ClientCounts(Mutex<HashMap<IpAddr, usize>>);

/// One of a client's places under its cap, given back when dropped.
#[derive(Debug)]
pub struct ClientSlot {
    counts: Arc<ClientCounts>,
    client: IpAddr,
}

impl ClientCounts {
    /// A place for `client` (IPv4-mapped IPv6 counts as IPv4), if it holds fewer than `max`.
    pub fn take(counts: &Arc<Self>, client: IpAddr, max: usize) -> Option<ClientSlot> {
        let client = client.to_canonical();
        let mut map = counts.0.lock().unwrap_or_else(PoisonError::into_inner);
        let count = map.entry(client).or_insert(0);
        if *count >= max {
            if *count == 0 {
                map.remove(&client);
            }
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            counts: counts.clone(),
            client,
        })
    }

    /// How many `client` holds.
    pub fn held(&self, client: IpAddr) -> usize {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(&client.to_canonical()).copied().unwrap_or(0)
    }

    /// How many addresses hold any.
    pub fn clients(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

impl ClientSlot {
    /// The client address this place is held for.
    pub fn client(&self) -> IpAddr {
        self.client
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut map = self.counts.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = map.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.client);
            }
        }
    }
}

/// When a repeated warning was last logged.
#[derive(Debug, Default)]
struct Warned(Option<tokio::time::Instant>);

impl Warned {
    /// Whether to log now (the first time, then at most every [`WARN_EVERY`]).
    fn due(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        if self.0.is_some_and(|last| now - last < WARN_EVERY) {
            return false;
        }
        self.0 = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_client: usize) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: total,
            max_per_client: per_client,
            ..ConnectionLimits::default()
        }
    }

    #[test]
    fn caps_count_per_address_and_in_total_and_free_on_drop() {
        let admission = Admission::new(limits(3, 2));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let a1 = admission.admit(a).unwrap();
        let _a2 = admission.admit(a).unwrap();
        assert_eq!(admission.admit(a).unwrap_err(), Cap::PerClient);
        // The same address written as IPv4-mapped IPv6 is the same client.
        assert_eq!(
            admission
                .admit("::ffff:127.0.0.1".parse().unwrap())
                .unwrap_err(),
            Cap::PerClient
        );
        let _b1 = admission.admit(b).unwrap();
        assert_eq!(admission.admit(b).unwrap_err(), Cap::Total);
        drop(a1);
        let _b2 = admission.admit(b).unwrap();
        assert_eq!(admission.per_client.clients(), 2);
    }

    #[test]
    fn an_address_with_no_connection_left_is_forgotten() {
        let admission = Admission::new(limits(8, 8));
        let slot = admission.admit("10.0.0.1".parse().unwrap()).unwrap();
        drop(slot);
        assert_eq!(admission.per_client.clients(), 0);
    }

    #[test]
    fn caps_fit_half_the_descriptors_left_after_the_reserve() {
        let fitted = limits(4096, 256).fit_to_descriptors(64, "test");
        assert_eq!(fitted.max_connections, 16);
        assert_eq!(fitted.max_per_client, 16);
        let roomy = limits(4096, 256).fit_to_descriptors(1 << 20, "test");
        assert_eq!((roomy.max_connections, roomy.max_per_client), (4096, 256));
        assert_eq!(
            limits(10, 2).fit_to_descriptors(0, "test").max_connections,
            1
        );
    }

    #[test]
    fn the_canned_refusal_declares_its_length() {
        let text = std::str::from_utf8(OVER_CAPACITY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let declared: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(declared, body.len());
        let _: serde_json::Value = serde_json::from_str(body).unwrap();
    }
}
