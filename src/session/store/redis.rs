//! The session history of a cluster, in the Redis its instances share (`--redis-url`,
//! docs/scale-out.md): every instance writes its sessions' records there as well as to its own
//! SQLite file, so `session list --redis-url` shows the sessions of every instance.
//!
//! Each record is a JSON string at `shadowcat:session:<id>` that lapses [`KEPT`] after its last
//! save; the sorted set `shadowcat:sessions` lists the ids by creation time and keeps the newest
//! [`MAX_SESSIONS`] (ids whose record lapsed are dropped from it as they are met). A save is one
//! Lua script per batch. Several instances may serve one session (a session at an HTTP
//! upstream roams): its record is the last one saved, with the counts of the instance that saved
//! it; a session its client ended stays ended.
//!
//! The store is synchronous, as the write-behind thread calls it: one connection, each command
//! bounded by the timeout. [`ClusterHistory`] pairs it with the instance's own store: what Redis
//! does not take is still saved locally, and the log says once that Redis went away.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::{Connection, RedisResult};

use super::{SessionStore, StateFilter, StoreError, matches_filter};
use crate::session::info::SessionRecord;

/// How long a record is kept after its last save.
pub const KEPT: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Most sessions the cluster's history lists (the oldest go first).
pub const MAX_SESSIONS: usize = 100_000;
/// The sorted set of ids, by creation time.
const INDEX: &str = "shadowcat:sessions";
/// Records read with one `MGET`.
const PAGE: usize = 500;

/// Saves `ARGV[3..]` (id, creation time, JSON, in turn) for `ARGV[1]` ms each, unless the
/// stored one was ended by its client, and keeps the newest `ARGV[2]` ids in the index (and
/// their records: the older ones' are deleted). (A
/// session that ended at one instance for another reason, such as its idle timeout there, may
/// go on at another, whose next save shows it open again.)
const SAVE_SCRIPT: &str = r#"
for i = 3, #ARGV, 3 do
  local key = 'shadowcat:session:' .. ARGV[i]
  local old = redis.call('GET', key)
  if not (old and string.find(old, '"state":"closed","end_reason":"closed"', 1, true)) then
    redis.call('SET', key, ARGV[i + 2], 'PX', ARGV[1])
    redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i])
  end
end
local trimmed = redis.call('ZRANGE', KEYS[1], 0, -1 - tonumber(ARGV[2]))
for _, id in ipairs(trimmed) do
  redis.call('DEL', 'shadowcat:session:' .. id)
end
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -1 - tonumber(ARGV[2]))
return 0
"#;

/// Session records in Redis.
pub struct RedisStore {
    client: redis::Client,
    timeout: Duration,
    /// The URL without its password.
    shown: String,
    connection: Mutex<Option<Connection>>,
    script: redis::Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.shown)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// The history in the Redis at `url` (not connected yet), each command bounded by
    /// `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        let shown = crate::transport::redis::shown_url(url);
        let client = redis::Client::open(url).map_err(|e| StoreError::Redis {
            url: shown.clone(),
            why: e.to_string(),
        })?;
        Ok(Self {
            client,
            timeout,
            shown,
            connection: Mutex::new(None),
            script: redis::Script::new(SAVE_SCRIPT),
        })
    }

    /// Runs `f` on the connection, connecting first if need be; a failure drops the connection
    /// (the next call connects again).
    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> RedisResult<T>) -> Result<T, StoreError> {
        let mut slot = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let result = (|| {
            if slot.is_none() {
                let connection = self.client.get_connection_with_timeout(self.timeout)?;
                connection.set_read_timeout(Some(self.timeout))?;
                connection.set_write_timeout(Some(self.timeout))?;
                *slot = Some(connection);
            }
            match slot.as_mut() {
                Some(connection) => f(connection),
                None => Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "not connected",
                ))),
            }
        })();
        result.map_err(|e| {
            *slot = None;
            StoreError::Redis {
                url: self.shown.clone(),
                why: e.to_string(),
            }
        })
    }
}

impl SessionStore for RedisStore {
    fn save(&self, records: &[SessionRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut call = self.script.prepare_invoke();
        call.key(INDEX)
            .arg(u64::try_from(KEPT.as_millis()).unwrap_or(u64::MAX))
            .arg(MAX_SESSIONS);
        for record in records {
            let json = serde_json::to_string(record).map_err(|e| StoreError::Redis {
                url: self.shown.clone(),
                why: e.to_string(),
            })?;
            call.arg(&record.id).arg(record.created_at_ms).arg(json);
        }
        self.with(|c| call.invoke::<()>(c))
    }

    fn list(&self, filter: StateFilter) -> Result<Vec<SessionRecord>, StoreError> {
        let ids: Vec<String> = self.with(|c| {
            redis::cmd("ZREVRANGE")
                .arg(INDEX)
                .arg(0)
                .arg(MAX_SESSIONS.saturating_sub(1))
                .query(c)
        })?;
        let mut out = Vec::new();
        let mut lapsed = Vec::new();
        for page in ids.chunks(PAGE) {
            let keys: Vec<String> = page.iter().map(|id| record_key(id)).collect();
            let texts: Vec<Option<String>> =
                self.with(|c| redis::cmd("MGET").arg(&keys).query(c))?;
            for (id, text) in page.iter().zip(texts) {
                let Some(text) = text else {
                    lapsed.push(id.clone());
                    continue;
                };
                match serde_json::from_str::<SessionRecord>(&text) {
                    Ok(record) if matches_filter(&record, filter) => out.push(record),
                    Ok(_) => {}
                    // Written by another version, perhaps: skipped, not deleted.
                    Err(e) => tracing::debug!(%e, "a session record in Redis could not be read"),
                }
            }
        }
        if !lapsed.is_empty() {
            // Their records lapsed: the index forgets them too (not worth failing a listing).
            let _ = self.with(|c| redis::cmd("ZREM").arg(INDEX).arg(&lapsed).query::<()>(c));
        }
        Ok(out)
    }

    fn get(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let text: Option<String> = self.with(|c| redis::cmd("GET").arg(record_key(id)).query(c))?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    fn delete(&self, ids: &[String]) -> Result<usize, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let keys: Vec<String> = ids.iter().map(|id| record_key(id)).collect();
        let (deleted, _): (usize, usize) = self.with(|c| {
            redis::pipe()
                .cmd("DEL")
                .arg(&keys)
                .cmd("ZREM")
                .arg(INDEX)
                .arg(ids)
                .query(c)
        })?;
        Ok(deleted)
    }
}

fn record_key(id: &str) -> String {
    format!("shadowcat:session:{id}")
}

/// A cluster instance's history: its own store (SQLite) and the cluster's in Redis. Saves go to
/// both (Redis failing costs nothing locally, and is logged once); reads are the cluster's,
/// or this instance's own while Redis does not answer.
#[derive(Debug)]
pub struct ClusterHistory {
    local: Option<Arc<dyn SessionStore>>,
    shared: RedisStore,
    /// Whether Redis failed the last time (said once).
    failing: AtomicBool,
}

impl ClusterHistory {
    /// `shared`, with this instance's own store `local` if it keeps one.
    pub fn new(local: Option<Arc<dyn SessionStore>>, shared: RedisStore) -> Self {
        Self {
            local,
            shared,
            failing: AtomicBool::new(false),
        }
    }

    /// `shared`'s result, or (with a note the first time) `local`'s.
    fn either<T>(
        &self,
        shared: Result<T, StoreError>,
        instead: impl FnOnce(&dyn SessionStore) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match shared {
            Ok(value) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("the cluster's session history is in Redis again");
                }
                Ok(value)
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(%e, "the cluster's session history is not in Redis for now: this instance's own goes on");
                }
                match &self.local {
                    Some(local) => instead(&**local),
                    None => Err(e),
                }
            }
        }
    }
}

impl SessionStore for ClusterHistory {
    fn save(&self, records: &[SessionRecord]) -> Result<(), StoreError> {
        let local = self.local.as_ref().map(|l| l.save(records));
        let shared = self.shared.save(records);
        match local {
            Some(local) => {
                let _ = self.either(shared, |_| Ok(()));
                local
            }
            None => self.either(shared, |_| Ok(())),
        }
    }

    fn list(&self, filter: StateFilter) -> Result<Vec<SessionRecord>, StoreError> {
        self.either(self.shared.list(filter), |l| l.list(filter))
    }

    fn get(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.either(self.shared.get(id), |l| l.get(id))
    }

    fn delete(&self, ids: &[String]) -> Result<usize, StoreError> {
        let local = self.local.as_ref().map(|l| l.delete(ids));
        let shared = self.shared.delete(ids);
        match local {
            Some(local) => {
                let _ = self.either(shared, |_| Ok(0));
                local
            }
            None => self.either(shared, |_| Ok(0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_from_their_json_as_they_were_saved() {
        for state in ["active", "closed"] {
            let record = super::super::sqlite::tests::record("a", state, 7);
            let json = serde_json::to_string(&record).unwrap();
            let back: SessionRecord = serde_json::from_str(&json).unwrap();
            assert_eq!(back, record, "{json}");
        }
        // What the save script looks for, to keep a session its client ended ended.
        let ended =
            serde_json::to_string(&super::super::sqlite::tests::record("a", "closed", 7)).unwrap();
        assert!(
            ended.contains(r#""state":"closed","end_reason":"closed""#),
            "{ended}"
        );
    }

    #[test]
    fn a_redis_that_is_not_there_is_an_error_that_names_it_without_its_password() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let store = RedisStore::new(
            &format!("redis://:hunter2@127.0.0.1:{port}"),
            Duration::from_millis(200),
        )
        .unwrap();
        let e = store.list(StateFilter::All).unwrap_err().to_string();
        assert!(e.starts_with("session history in Redis at redis://"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        // With a store of its own, an instance's history goes on there.
        let local: Arc<dyn SessionStore> = Arc::new(super::super::MemoryStore::default());
        let history = ClusterHistory::new(Some(local), store);
        let record = super::super::sqlite::tests::record("a", "active", 7);
        history.save(std::slice::from_ref(&record)).unwrap();
        assert_eq!(history.list(StateFilter::All).unwrap(), [record]);
    }
}
