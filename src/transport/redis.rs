//! Redis, where the instances of a cluster keep what they share (`--redis-url`,
//! docs/scale-out.md): one multiplexed connection that reconnects by itself, every command
//! bounded by `--redis-timeout`, and a breaker, so that a Redis that is slow or down costs a
//! request at most that timeout once per second, never a hang. Whoever asks gets `None` and
//! does without (each use says what it falls back to), and the log says once that Redis went
//! away and once that it came back.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, RedisResult, ScriptInvocation};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::task::Task;

/// While Redis is failing, how often one command is let through to try it again (the others
/// do without at once).
pub const RETRY_EVERY: Duration = Duration::from_secs(1);

/// What a command was for: the label of its counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Shared rate-limit state.
    RateLimit,
    /// What the instances tell each other about sessions (ends, owners, who is up).
    Session,
    /// Copies of sessions' SSE streams, for clients that resume them at another instance.
    Stream,
}

impl Use {
    /// Every use, in label order.
    pub const ALL: [Self; 3] = [Self::RateLimit, Self::Session, Self::Stream];

    /// As in metrics' `use` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RateLimit => "rate_limit",
            Self::Session => "session",
            Self::Stream => "stream",
        }
    }
}

/// What became of a command: `ok`, `failed` (an error or no answer in time), or `skipped`
/// (not sent: Redis was failing and it was not the one let through to try).
pub const OUTCOMES: [&str; 3] = ["ok", "failed", "skipped"];

/// A Redis server and how it has been answering.
pub struct Redis {
    client: redis::Client,
    manager: ConnectionManager,
    timeout: Duration,
    /// The URL without its password, for the log.
    shown: String,
    /// Whether the last command sent was answered.
    up: AtomicBool,
    /// While failing: when (ms since `epoch`) the next command may try it.
    retry_at: AtomicU64,
    epoch: Instant,
    /// Per use, per outcome.
    counts: [[AtomicU64; 3]; Use::ALL.len()],
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field("url", &self.shown)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

/// `url` as it may be shown: without a password.
pub fn shown_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://…@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

impl Redis {
    /// The server at `url` (`redis://[user:password@]host[:port][/db]`, `rediss://` is not
    /// built in), every command bounded by `timeout`. Connects on first use, not now.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // Reconnection is tried by the commands themselves (one per `RETRY_EVERY`).
            .set_number_of_retries(0);
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| e.to_string())?;
        Ok(Self {
            client,
            manager,
            timeout,
            shown: shown_url(url),
            up: AtomicBool::new(true),
            retry_at: AtomicU64::new(0),
            epoch: Instant::now(),
            counts: Default::default(),
        })
    }

    /// The URL without its password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Whether the last command sent was answered.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Commands for `use_` that came to `outcome` (an index into [`OUTCOMES`]).
    pub fn count(&self, use_: Use, outcome: usize) -> u64 {
        self.counts[use_ as usize][outcome].load(Ordering::Relaxed)
    }

    /// Runs `cmd`; `None` if Redis is failing or did not answer in time.
    pub async fn query<T: FromRedisValue>(&self, use_: Use, cmd: &Cmd) -> Option<T> {
        let mut connection = self.manager.clone();
        self.run(use_, async move { cmd.query_async(&mut connection).await })
            .await
    }

    /// Runs `pipeline` (one round trip); `None` as for [`Self::query`].
    pub async fn pipeline<T: FromRedisValue>(
        &self,
        use_: Use,
        pipeline: &redis::Pipeline,
    ) -> Option<T> {
        let mut connection = self.manager.clone();
        self.run(
            use_,
            async move { pipeline.query_async(&mut connection).await },
        )
        .await
    }

    /// Runs a script (by its digest, loading it once if Redis does not have it); `None` as for
    /// [`Self::query`].
    pub async fn script<T: FromRedisValue>(
        &self,
        use_: Use,
        invocation: &ScriptInvocation<'_>,
    ) -> Option<T> {
        let mut connection = self.manager.clone();
        self.run(use_, async move {
            invocation.invoke_async(&mut connection).await
        })
        .await
    }

    async fn run<T>(&self, use_: Use, command: impl Future<Output = RedisResult<T>>) -> Option<T> {
        if !self.admits() {
            self.counted(use_, 2);
            return None;
        }
        match tokio::time::timeout(self.timeout, command).await {
            Ok(Ok(value)) => {
                self.answered();
                self.counted(use_, 0);
                Some(value)
            }
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                self.counted(use_, 1);
                None
            }
            Err(_) => {
                self.failed(&format!("no answer within {:?}", self.timeout));
                self.counted(use_, 1);
                None
            }
        }
    }

    fn counted(&self, use_: Use, outcome: usize) {
        self.counts[use_ as usize][outcome].fetch_add(1, Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a command may be sent: always while Redis answers; while it fails, the first
    /// one after each `RETRY_EVERY`.
    fn admits(&self) -> bool {
        let retry_at = self.retry_at.load(Ordering::Relaxed);
        if retry_at == 0 {
            return true;
        }
        let now = self.now_ms();
        now >= retry_at
            && self
                .retry_at
                .compare_exchange(
                    retry_at,
                    now + millis(RETRY_EVERY),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    fn answered(&self) {
        self.retry_at.store(0, Ordering::Relaxed);
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::warn!(redis = %self.shown, "Redis answers again: the cluster's shared state is used again");
        }
    }

    fn failed(&self, why: &str) {
        self.retry_at
            .store(self.now_ms() + millis(RETRY_EVERY), Ordering::Relaxed);
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::error!(redis = %self.shown, why, "Redis failed: this instance does without it (its own rate limits, no word of sessions ended elsewhere) and tries it again every second");
        }
    }

    /// Calls `on_message` with each message published on `channel` until `stop`; reconnects
    /// (every `RETRY_EVERY`) when the connection is lost, or when it does not answer a ping
    /// (every [`PING_EVERY`]) in time: a connection that died without a word is found out.
    /// Messages published while it was lost are not seen (what relies on them has a fallback).
    pub fn subscribe(
        self: &std::sync::Arc<Self>,
        channel: String,
        stop: CancellationToken,
        on_message: impl Fn(&[u8]) + Send + Sync + 'static,
    ) -> Task<()> {
        let redis = self.clone();
        Task::spawn("redis subscriber", async move {
            loop {
                if redis.listen(&channel, &stop, &on_message).await {
                    return;
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(RETRY_EVERY) => {}
                }
            }
        })
    }

    /// One subscription to `channel`, until its connection fails (`false`) or `stop` (`true`).
    async fn listen(
        &self,
        channel: &str,
        stop: &CancellationToken,
        on_message: &(impl Fn(&[u8]) + Send + Sync),
    ) -> bool {
        let connected = tokio::time::timeout(self.timeout, self.client.get_async_pubsub()).await;
        let Ok(Ok(pubsub)) = connected else {
            return false;
        };
        let (mut sink, mut messages) = pubsub.split();
        let subscribed = tokio::time::timeout(self.timeout, sink.subscribe(channel)).await;
        if !matches!(subscribed, Ok(Ok(()))) {
            return false;
        }
        tracing::debug!(redis = %self.shown, channel, "subscribed");
        let mut pings = tokio::time::interval(PING_EVERY);
        pings.tick().await;
        loop {
            tokio::select! {
                () = stop.cancelled() => return true,
                message = messages.next() => match message {
                    Some(message) => on_message(message.get_payload_bytes()),
                    None => return false,
                },
                _ = pings.tick() => {
                    let pong = tokio::time::timeout(self.timeout, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        return false;
                    }
                }
            }
        }
    }
}

/// How often a subscription's connection is asked whether it is still there.
pub const PING_EVERY: Duration = Duration::from_secs(5);

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_never_shown() {
        assert_eq!(
            shown_url("redis://:hunter2@10.0.0.5:6379/0"),
            "redis://…@10.0.0.5:6379/0"
        );
        assert_eq!(shown_url("redis://user:p@ss@host"), "redis://…@host");
        assert_eq!(
            shown_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }

    #[tokio::test]
    async fn a_redis_that_is_not_there_costs_one_timeout_then_nothing_until_retry() {
        // A port nothing listens on (bound, then closed).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let redis = Redis::new(
            &format!("redis://127.0.0.1:{port}"),
            Duration::from_millis(200),
        )
        .unwrap();
        let ping = redis::cmd("PING");
        assert_eq!(redis.query::<String>(Use::Session, &ping).await, None);
        assert!(!redis.is_up());
        assert_eq!(redis.count(Use::Session, 1), 1);
        // Within the second: not tried.
        let started = Instant::now();
        assert_eq!(redis.query::<String>(Use::Session, &ping).await, None);
        assert!(started.elapsed() < Duration::from_millis(50));
        assert_eq!(redis.count(Use::Session, 2), 1);
    }

    #[test]
    fn a_url_that_is_not_redis_is_refused() {
        assert!(Redis::new("http://127.0.0.1:6379", Duration::from_secs(1)).is_err());
    }
}
