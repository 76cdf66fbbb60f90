//! Where session history is kept: the [`SessionStore`] trait, an in-memory store, SQLite (the
//! embedded default, in the data dir), and the write-behind [`StoreWriter`] that keeps store I/O
//! off the proxy's hot path.
//!
//! The trait is synchronous and batch-shaped: the writer thread hands it whole batches, and the
//! networked store of a cluster ([`redis::RedisStore`]) implements it the same way, one round
//! trip per batch.

pub mod redis;
pub mod sqlite;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

pub use sqlite::SqliteStore;

use super::info::SessionRecord;

/// Smallest bound on session updates waiting for the writer.
pub const STORE_QUEUE: usize = 4096;
/// The writer saves at least this often while updates are waiting.
pub const STORE_FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// Most updates saved in one batch (one transaction).
const STORE_BATCH: usize = 512;

/// Which sessions to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StateFilter {
    /// Not yet ended.
    Active,
    /// Ended.
    Ended,
    /// Both.
    All,
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite refused.
    #[error("session store {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// Why.
        source: rusqlite::Error,
    },
    /// The file or its directory could not be created.
    #[error("session store {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Redis refused or did not answer.
    #[error("session history in Redis at {url}: {why}")]
    Redis {
        /// The URL, without its password.
        url: String,
        /// Why.
        why: String,
    },
    /// The database was written by a newer Shadowcat.
    #[error("session store {path} has schema version {found}; this shadowcat knows up to {known}")]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// Ours.
        known: i64,
    },
}

/// A place to keep session records.
pub trait SessionStore: Send + Sync + std::fmt::Debug {
    /// Inserts or replaces these records, all or none.
    fn save(&self, records: &[SessionRecord]) -> Result<(), StoreError>;
    /// Records matching `filter`, newest first.
    fn list(&self, filter: StateFilter) -> Result<Vec<SessionRecord>, StoreError>;
    /// One record.
    fn get(&self, id: &str) -> Result<Option<SessionRecord>, StoreError>;
    /// Deletes these records; returns how many existed.
    fn delete(&self, ids: &[String]) -> Result<usize, StoreError>;
}

/// Session records in memory: the store for processes that keep no history.
#[derive(Debug, Default)]
pub struct MemoryStore(Mutex<BTreeMap<String, SessionRecord>>);

impl SessionStore for MemoryStore {
    fn save(&self, records: &[SessionRecord]) -> Result<(), StoreError> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for record in records {
            // As in SQLite: a late record never reopens a closed session.
            if map.get(&record.id).is_none_or(|old| old.state != "closed") {
                map.insert(record.id.clone(), record.clone());
            }
        }
        Ok(())
    }

    fn list(&self, filter: StateFilter) -> Result<Vec<SessionRecord>, StoreError> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<_> = map
            .values()
            .filter(|r| matches_filter(r, filter))
            .cloned()
            .collect();
        out.sort_by_key(|r| std::cmp::Reverse(r.created_at_ms));
        Ok(out)
    }

    fn get(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        Ok(self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned())
    }

    fn delete(&self, ids: &[String]) -> Result<usize, StoreError> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(ids.iter().filter(|id| map.remove(*id).is_some()).count())
    }
}

fn matches_filter(record: &SessionRecord, filter: StateFilter) -> bool {
    let ended = record.state == "closed";
    match filter {
        StateFilter::Active => !ended,
        StateFilter::Ended => ended,
        StateFilter::All => true,
    }
}

/// Write-behind: the manager hands records over without waiting; a dedicated thread saves them
/// in batches (the last update of a session in a batch wins). A crash loses at most the batch
/// in flight; SQLite's journal keeps the file intact.
#[derive(Debug)]
pub struct StoreWriter {
    tx: Mutex<Option<SyncSender<SessionRecord>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl StoreWriter {
    /// Starts the writer thread for `store`, queueing at most `capacity` updates (give it room
    /// for every session's final record at once: at least twice `--max-sessions`).
    pub fn start(store: Arc<dyn SessionStore>, capacity: usize) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(capacity.max(STORE_QUEUE));
        let thread = std::thread::Builder::new()
            .name("shadowcat-store".into())
            .spawn(move || write_loop(&rx, &*store))?;
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues a record; false if the queue is full or closed (the update is dropped).
    pub fn save(&self, record: SessionRecord) -> bool {
        let tx = self.tx.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(tx) = tx.as_ref() else { return false };
        match tx.try_send(record) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }

    /// Saves what is queued and stops the writer; waits for it at most `limit`.
    pub fn close(&self, limit: Duration) {
        self.tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(thread) = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return;
        };
        // Blocking: call it from a blocking context (`spawn_blocking`) or outside the runtime.
        let step = Duration::from_millis(5);
        let mut waited = Duration::ZERO;
        while !thread.is_finished() {
            if waited >= limit {
                tracing::warn!(
                    "the session store writer did not finish in time; some history may be lost"
                );
                return;
            }
            std::thread::sleep(step);
            waited += step;
        }
        let _ = thread.join();
    }
}

fn write_loop(rx: &Receiver<SessionRecord>, store: &dyn SessionStore) {
    let mut batch: HashMap<String, SessionRecord> = HashMap::new();
    let mut open = true;
    while open {
        match rx.recv_timeout(STORE_FLUSH_INTERVAL) {
            Ok(record) => {
                batch.insert(record.id.clone(), record);
                while batch.len() < STORE_BATCH {
                    match rx.try_recv() {
                        Ok(record) => {
                            batch.insert(record.id.clone(), record);
                        }
                        Err(std::sync::mpsc::TryRecvError::Empty) => break,
                        Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                            open = false;
                            break;
                        }
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => open = false,
        }
        if !batch.is_empty() {
            let records: Vec<SessionRecord> = batch.drain().map(|(_, r)| r).collect();
            if let Err(e) = store.save(&records) {
                tracing::warn!(%e, count = records.len(), "could not save session history");
            }
        }
    }
}
