//! SQLite session history: one file in the data dir.
//!
//! WAL journal with `synchronous=NORMAL`: a crash can lose the last transaction, never corrupt
//! the file; several shadowcat processes may share the file (a busy timeout covers their
//! overlapping writes). The schema version is SQLite's `user_version`; [`MIGRATIONS`] bring any
//! older file up to date inside one transaction.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{SessionStore, StateFilter, StoreError};
use crate::session::Declared;
use crate::session::info::{Metadata, SessionRecord};

/// The history file's name inside the data dir.
pub const DB_FILE: &str = "sessions.db";

/// Schema migrations; migration `i` moves `user_version` from `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    "CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        end_reason TEXT,
        transport TEXT NOT NULL,
        upstream TEXT,
        created_at_ms INTEGER NOT NULL,
        last_activity_ms INTEGER NOT NULL,
        ended_at_ms INTEGER,
        frames_from_client INTEGER NOT NULL,
        frames_from_server INTEGER NOT NULL,
        pending INTEGER NOT NULL,
        protocol_version TEXT,
        client_info TEXT,
        client_capabilities TEXT,
        server_info TEXT,
        server_capabilities TEXT,
        tags TEXT NOT NULL
    );
    CREATE INDEX sessions_state_created ON sessions (state, created_at_ms);",
    // v2: when a running proxy last saved the row, so cleanup can tell dead rows from live ones.
    "ALTER TABLE sessions ADD COLUMN updated_at_ms INTEGER NOT NULL DEFAULT 0;",
    // v3: the tape the session was recorded to.
    "ALTER TABLE sessions ADD COLUMN tape TEXT;",
    // v4: the server process serving the session (a command upstream), and how many it had.
    "ALTER TABLE sessions ADD COLUMN server_pid INTEGER;
     ALTER TABLE sessions ADD COLUMN server_generation INTEGER;",
    // v5: the authenticated principal that opened the session (never its token).
    "ALTER TABLE sessions ADD COLUMN principal TEXT;",
    // v6: the traces the session's requests belonged to (a JSON list), with tracing on.
    "ALTER TABLE sessions ADD COLUMN traces TEXT;",
];

/// Session history in an SQLite file.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    read_only: bool,
}

fn connect(path: &Path) -> Result<Connection, StoreError> {
    connect_with(path, false)
}

fn connect_with(path: &Path, read_only: bool) -> Result<Connection, StoreError> {
    let err = |source| StoreError::Sqlite {
        path: path.to_owned(),
        source,
    };
    if !read_only && !path.exists() {
        // Created 0600 before SQLite opens it: SQLite gives its -wal and -shm files the
        // database file's mode.
        crate::transport::files::open_private_append(path).map_err(|source| StoreError::Io {
            path: path.to_owned(),
            source,
        })?;
    }
    let conn = if read_only {
        Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    } else {
        Connection::open(path)
    }
    .map_err(err)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(err)?;
    // History rows are few and small: a 256 KiB page cache is plenty.
    conn.pragma_update(None, "cache_size", -256).map_err(err)?;
    Ok(conn)
}

const COLUMNS: &str = "id, state, end_reason, transport, upstream, created_at_ms, last_activity_ms, ended_at_ms, \
    frames_from_client, frames_from_server, pending, protocol_version, client_info, client_capabilities, \
    server_info, server_capabilities, tags, updated_at_ms, tape, server_pid, server_generation, principal, traces";

impl SqliteStore {
    /// Opens (creating if needed) `dir/sessions.db` and migrates it.
    pub fn open_in(dir: &Path) -> Result<Self, StoreError> {
        crate::transport::files::create_private_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_owned(),
            source,
        })?;
        Self::open(&dir.join(DB_FILE))
    }

    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let err = |source| StoreError::Sqlite {
            path: path.to_owned(),
            source,
        };
        let mut conn = connect(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        migrate(&mut conn, path)?;
        Ok(Self {
            path: path.to_owned(),
            read_only: false,
        })
    }

    /// Opens an existing database for reading only (`session list|show`): nothing is written,
    /// so a read-only data dir works. A file from an older Shadowcat is migrated first, which
    /// does need write access.
    pub fn open_for_reading(path: &Path) -> Result<Self, StoreError> {
        let conn = connect_with(path, true)?;
        let version = schema_version(&conn, path)?;
        drop(conn);
        let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
        if version < known {
            return Self::open(path);
        }
        Ok(Self {
            path: path.to_owned(),
            read_only: true,
        })
    }

    /// A connection for one operation. History is written a few times per session, so opening
    /// one per batch costs nothing that matters, and nothing of SQLite (page cache, lookaside,
    /// statements) stays resident in the proxy between batches (docs/performance.md, RSS).
    fn conn(&self) -> Result<Connection, StoreError> {
        connect_with(&self.path, self.read_only)
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }
}

/// The file's schema version; an error if a newer Shadowcat wrote it.
fn schema_version(conn: &Connection, path: &Path) -> Result<i64, StoreError> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|source| StoreError::Sqlite {
            path: path.to_owned(),
            source,
        })?;
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    if version > known {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            found: version,
            known,
        });
    }
    Ok(version)
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let err = |source| StoreError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(err)?;
    let version = schema_version(&tx, path)?;
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(version).unwrap_or(0))
    {
        tx.execute_batch(sql).map_err(err)?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(i + 1).unwrap_or(i64::MAX),
        )
        .map_err(err)?;
    }
    tx.commit().map_err(err)
}

fn json(value: Option<&Declared>) -> Option<&str> {
    value.map(Declared::get)
}

fn parse_json(text: Option<String>) -> Option<Declared> {
    text.and_then(|t| Declared::parse(&t))
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<SessionRecord> {
    let u = |i: usize| -> rusqlite::Result<u64> {
        Ok(u64::try_from(row.get::<_, i64>(i)?).unwrap_or(0))
    };
    let tags: String = row.get(16)?;
    Ok(SessionRecord {
        id: row.get(0)?,
        state: row.get(1)?,
        end_reason: row.get(2)?,
        transport: row.get(3)?,
        upstream: row.get(4)?,
        created_at_ms: u(5)?,
        last_activity_ms: u(6)?,
        ended_at_ms: row
            .get::<_, Option<i64>>(7)?
            .map(|v| u64::try_from(v).unwrap_or(0)),
        frames_from_client: u(8)?,
        frames_from_server: u(9)?,
        pending: u(10)?,
        metadata: Metadata {
            protocol_version: row.get(11)?,
            client_info: parse_json(row.get(12)?),
            client_capabilities: parse_json(row.get(13)?),
            server_info: parse_json(row.get(14)?),
            server_capabilities: parse_json(row.get(15)?),
            tags: serde_json::from_str(&tags).unwrap_or_default(),
            server_pid: row
                .get::<_, Option<i64>>(19)?
                .and_then(|v| u32::try_from(v).ok()),
            server_generation: row
                .get::<_, Option<i64>>(20)?
                .and_then(|v| u64::try_from(v).ok()),
            principal: row.get(21)?,
            traces: row
                .get::<_, Option<String>>(22)?
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default(),
        },
        updated_at_ms: u(17)?,
        tape: row.get(18)?,
    })
}

impl SessionStore for SqliteStore {
    fn save(&self, records: &[SessionRecord]) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction().map_err(self.err())?;
        {
            let mut stmt = tx
                .prepare_cached(&format!(
                    "INSERT INTO sessions ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)
                     ON CONFLICT(id) DO UPDATE SET state = excluded.state, end_reason = excluded.end_reason,
                       last_activity_ms = excluded.last_activity_ms, ended_at_ms = excluded.ended_at_ms,
                       frames_from_client = excluded.frames_from_client, frames_from_server = excluded.frames_from_server,
                       pending = excluded.pending, protocol_version = excluded.protocol_version,
                       client_info = excluded.client_info, client_capabilities = excluded.client_capabilities,
                       server_info = excluded.server_info, server_capabilities = excluded.server_capabilities,
                       tags = excluded.tags, updated_at_ms = excluded.updated_at_ms, tape = excluded.tape,
                       server_pid = excluded.server_pid, server_generation = excluded.server_generation,
                       principal = excluded.principal, traces = excluded.traces
                     WHERE sessions.state <> 'closed'"
                ))
                .map_err(self.err())?;
            for r in records {
                let m = &r.metadata;
                stmt.execute(params![
                    r.id,
                    r.state,
                    r.end_reason,
                    r.transport,
                    r.upstream,
                    to_i64(r.created_at_ms),
                    to_i64(r.last_activity_ms),
                    r.ended_at_ms.map(to_i64),
                    to_i64(r.frames_from_client),
                    to_i64(r.frames_from_server),
                    to_i64(r.pending),
                    m.protocol_version,
                    json(m.client_info.as_ref()),
                    json(m.client_capabilities.as_ref()),
                    json(m.server_info.as_ref()),
                    json(m.server_capabilities.as_ref()),
                    serde_json::to_string(&m.tags).unwrap_or_else(|_| "[]".into()),
                    to_i64(r.updated_at_ms),
                    r.tape,
                    m.server_pid,
                    m.server_generation.map(to_i64),
                    m.principal,
                    (!m.traces.is_empty())
                        .then(|| serde_json::to_string(&m.traces).unwrap_or_default()),
                ])
                .map_err(self.err())?;
            }
        }
        tx.commit().map_err(self.err())
    }

    fn list(&self, filter: StateFilter) -> Result<Vec<SessionRecord>, StoreError> {
        let condition = match filter {
            StateFilter::Active => "WHERE state != 'closed'",
            StateFilter::Ended => "WHERE state = 'closed'",
            StateFilter::All => "",
        };
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM sessions {condition} ORDER BY created_at_ms DESC"
            ))
            .map_err(self.err())?;
        let rows = stmt.query_map([], from_row).map_err(self.err())?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err())
    }

    fn get(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let conn = self.conn()?;
        conn.query_row(
            &format!("SELECT {COLUMNS} FROM sessions WHERE id = ?1"),
            [id],
            from_row,
        )
        .optional()
        .map_err(self.err())
    }

    fn delete(&self, ids: &[String]) -> Result<usize, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction().map_err(self.err())?;
        let mut deleted = 0;
        for id in ids {
            deleted += tx
                .execute("DELETE FROM sessions WHERE id = ?1", [id])
                .map_err(self.err())?;
        }
        tx.commit().map_err(self.err())?;
        Ok(deleted)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn record(id: &str, state: &str, created: u64) -> SessionRecord {
        let mut metadata = Metadata {
            protocol_version: Some("2025-06-18".into()),
            server_pid: Some(4242),
            server_generation: Some(2),
            principal: Some("https://id.example#alice".into()),
            traces: vec!["0af7651916cd43dd8448eb211c80319c".into()],
            ..Metadata::default()
        };
        metadata.client_info = Some(Declared::from_value(
            &serde_json::json!({"name": "c", "version": "1"}),
        ));
        metadata.tags.insert("high-volume".into());
        SessionRecord {
            id: id.into(),
            state: state.into(),
            end_reason: (state == "closed").then(|| "closed".into()),
            transport: "stdio".into(),
            upstream: Some("python server.py".into()),
            created_at_ms: created,
            last_activity_ms: created + 5,
            ended_at_ms: (state == "closed").then_some(created + 10),
            updated_at_ms: created + 10,
            frames_from_client: 3,
            frames_from_server: 4,
            pending: 0,
            tape: Some("/tapes/t.jsonl".into()),
            metadata,
        }
    }

    #[test]
    fn saves_lists_gets_updates_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in(dir.path()).unwrap();
        store
            .save(&[record("a", "active", 1), record("b", "closed", 2)])
            .unwrap();
        assert_eq!(store.get("a").unwrap().unwrap(), record("a", "active", 1));
        assert_eq!(
            store
                .list(StateFilter::All)
                .unwrap()
                .iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>(),
            ["b", "a"]
        );
        assert_eq!(store.list(StateFilter::Ended).unwrap().len(), 1);
        store.save(&[record("a", "closed", 1)]).unwrap();
        assert_eq!(store.get("a").unwrap().unwrap().state, "closed");
        // A late "active" record (queued before the end) never reopens a closed session.
        store.save(&[record("a", "active", 1)]).unwrap();
        assert_eq!(store.get("a").unwrap().unwrap().state, "closed");
        assert_eq!(store.delete(&["a".into(), "zzz".into()]).unwrap(), 1);
        assert!(store.get("a").unwrap().is_none());
    }

    #[test]
    fn a_version_1_file_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        drop(conn);
        let store = SqliteStore::open(&path).unwrap();
        store.save(&[record("m", "active", 5)]).unwrap();
        assert_eq!(store.get("m").unwrap().unwrap().updated_at_ms, 15);
        let version: i64 = connect(&path)
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(usize::try_from(version).unwrap(), MIGRATIONS.len());
    }

    #[test]
    fn reopening_keeps_data_and_refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        SqliteStore::open_in(dir.path())
            .unwrap()
            .save(&[record("x", "closed", 1)])
            .unwrap();
        let again = SqliteStore::open_in(dir.path()).unwrap();
        assert!(again.get("x").unwrap().is_some());
        drop(again);
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = SqliteStore::open_in(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
    }
}
