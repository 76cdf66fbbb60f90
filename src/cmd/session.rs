//! `shadowcat session list|show|cleanup`: the session history in the data dir, as people read
//! it (tables) or scripts do (JSON).

use std::fmt::Write;
use std::io::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context as _;

use crate::cli::{OutputFormat, SessionCommand};
use crate::config::{Config, parse_duration};
use crate::session::info::SessionRecord;
use crate::session::store::redis::RedisStore;
use crate::session::store::sqlite::DB_FILE;
use crate::session::store::{SessionStore, SqliteStore, StateFilter};

/// Latest time RFC 3339 can write (9999-12-31T23:59:59Z), in Unix milliseconds.
const LATEST_RFC3339_MS: u64 = 253_402_300_799_000;

fn when(unix_ms: u64) -> String {
    if unix_ms > LATEST_RFC3339_MS {
        // A corrupt or hand-edited row must not crash the listing.
        return format!("@{unix_ms}ms");
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

fn client(record: &SessionRecord) -> String {
    let info = record.metadata.client_info.as_ref();
    let name = info
        .and_then(|i| i.str_member("name"))
        .unwrap_or_else(|| "-".into());
    match info.and_then(|i| i.str_member("version")) {
        Some(version) => format!("{name} {version}"),
        None => name,
    }
}

fn state(record: &SessionRecord) -> String {
    match &record.end_reason {
        Some(reason) => format!("ended ({reason})"),
        None => record.state.clone(),
    }
}

fn duration(record: &SessionRecord) -> String {
    let end = record.ended_at_ms.unwrap_or(record.last_activity_ms);
    let secs = end.saturating_sub(record.created_at_ms) / 1000;
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// One line per session under a header.
pub fn table(records: &[SessionRecord]) -> String {
    let rows: Vec<[String; 7]> = records
        .iter()
        .map(|r| {
            [
                r.id.clone(),
                state(r),
                when(r.created_at_ms),
                duration(r),
                client(r),
                r.metadata
                    .protocol_version
                    .clone()
                    .unwrap_or_else(|| "-".into()),
                format!("{}/{}", r.frames_from_client, r.frames_from_server),
            ]
        })
        .collect();
    let header = [
        "ID",
        "STATE",
        "CREATED",
        "DURATION",
        "CLIENT",
        "PROTOCOL",
        "MESSAGES IN/OUT",
    ];
    columns(&header, &rows)
}

/// Rows under a header, in columns padded to their widest cell.
pub fn columns<R: AsRef<[String]>>(header: &[&str], rows: &[R]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row.as_ref()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let padded: Vec<String> = cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", padded.join("  ").trim_end());
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.as_ref().iter().map(String::as_str));
    }
    out
}

/// Everything about one session, one field per line.
pub fn details(r: &SessionRecord) -> String {
    let json = |v: &Option<crate::session::Declared>| {
        v.as_ref()
            .map_or_else(|| "-".to_owned(), |d| d.to_value().to_string())
    };
    let mut out = String::new();
    let mut field = |name: &str, value: String| {
        let _ = writeln!(out, "{name:<22}{value}");
    };
    field("id", r.id.clone());
    field(
        "in logs as",
        crate::session::SessionId::parse(&r.id)
            .map_or_else(|_| "-".into(), |id| id.digest().to_string()),
    );
    field("state", state(r));
    field("transport", r.transport.clone());
    field("upstream", r.upstream.clone().unwrap_or_else(|| "-".into()));
    field("tape", r.tape.clone().unwrap_or_else(|| "-".into()));
    field("created", when(r.created_at_ms));
    field("last activity", when(r.last_activity_ms));
    field("ended", r.ended_at_ms.map_or_else(|| "-".into(), when));
    field("duration", duration(r));
    field(
        "protocol version",
        r.metadata
            .protocol_version
            .clone()
            .unwrap_or_else(|| "-".into()),
    );
    field("client", client(r));
    field(
        "principal",
        r.metadata.principal.clone().unwrap_or_else(|| "-".into()),
    );
    field("client info", json(&r.metadata.client_info));
    field("client capabilities", json(&r.metadata.client_capabilities));
    field("server info", json(&r.metadata.server_info));
    field("server capabilities", json(&r.metadata.server_capabilities));
    field(
        "server process",
        match (r.metadata.server_pid, r.metadata.server_generation) {
            (Some(pid), Some(generation)) => format!("pid {pid} (generation {generation})"),
            (Some(pid), None) => format!("pid {pid}"),
            _ => "-".into(),
        },
    );
    field(
        "traces",
        if r.metadata.traces.is_empty() {
            "-".into()
        } else {
            r.metadata.traces.join(" ")
        },
    );
    field("messages from client", r.frames_from_client.to_string());
    field("messages from server", r.frames_from_server.to_string());
    field("pending requests", r.pending.to_string());
    let tags: Vec<&str> = r.metadata.tags.iter().map(String::as_str).collect();
    field(
        "tags",
        if tags.is_empty() {
            "-".into()
        } else {
            tags.join(", ")
        },
    );
    out
}

/// How long a `session` command waits for Redis by default.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);

/// `shadowcat session list|show|cleanup`, against the history in the data dir, or (with
/// `--redis-url`) the cluster's in Redis.
pub fn run(cmd: SessionCommand, config: &Config) -> anyhow::Result<u8> {
    if let Some(url) = cmd.history().redis_url.clone() {
        let timeout = match &cmd.history().redis_timeout {
            Some(text) => parse_duration(text, "--redis-timeout")?,
            None => REDIS_TIMEOUT,
        };
        let store = RedisStore::new(&url, timeout)?;
        let place = format!(
            "the cluster's history (Redis at {})",
            crate::transport::redis::shown_url(&url)
        );
        return on(&store, cmd, &place);
    }
    let path = config.data_dir.join(DB_FILE);
    let mut out = std::io::stdout().lock();
    if !path.exists() {
        eprintln!(
            "shadowcat: no session history in {} yet",
            config.data_dir.display()
        );
        return match cmd {
            SessionCommand::List {
                format: OutputFormat::Json,
                ..
            } => {
                writeln!(out, "[]")?;
                Ok(0)
            }
            SessionCommand::List { .. } | SessionCommand::Cleanup { .. } => Ok(0),
            SessionCommand::Show { id, .. } => {
                eprintln!("shadowcat: no session {id}");
                Ok(1)
            }
        };
    }
    let store = match cmd {
        SessionCommand::Cleanup { .. } => SqliteStore::open(&path)?,
        _ => SqliteStore::open_for_reading(&path)?,
    };
    drop(out);
    on(&store, cmd, &path.display().to_string())
}

/// The one session whose id starts with `prefix`, or whose digest (`s-4ec4a70f41f8`, as logs
/// name sessions) does; `Err` says why there is not one.
fn by_prefix(
    store: &dyn SessionStore,
    prefix: &str,
) -> anyhow::Result<Result<SessionRecord, String>> {
    if prefix.is_empty() {
        return Ok(Err("no session \"\"".to_owned()));
    }
    let digest_of = |id: &str| {
        crate::session::SessionId::parse(id)
            .map_or_else(|_| String::new(), |id| id.digest().to_string())
    };
    let mut found: Vec<SessionRecord> = store
        .list(StateFilter::All)?
        .into_iter()
        .filter(|r| {
            r.id.starts_with(prefix) || (prefix.len() > 2 && digest_of(&r.id).starts_with(prefix))
        })
        .collect();
    Ok(match found.len() {
        0 => Err(format!("no session {prefix}")),
        1 => Ok(found.swap_remove(0)),
        n => {
            let ids: Vec<&str> = found.iter().take(5).map(|r| r.id.as_str()).collect();
            Err(format!(
                "{n} sessions start with {prefix}: {}{}; give more of the id",
                ids.join(", "),
                if n > 5 { ", …" } else { "" }
            ))
        }
    })
}

/// `cmd` against `store` (`place` names it).
fn on(store: &dyn SessionStore, cmd: SessionCommand, place: &str) -> anyhow::Result<u8> {
    let mut out = std::io::stdout().lock();
    match cmd {
        SessionCommand::List { state, format, .. } => {
            let records = store.list(state)?;
            match format {
                OutputFormat::Table => write!(out, "{}", table(&records))?,
                OutputFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&records)?)?,
            }
        }
        SessionCommand::Show { id, format, .. } => {
            let record = match store.get(&id)? {
                Some(record) => record,
                None => match by_prefix(store, &id)? {
                    Ok(record) => record,
                    Err(why) => {
                        eprintln!("shadowcat: {why} in {place}");
                        return Ok(1);
                    }
                },
            };
            match format {
                OutputFormat::Table => write!(out, "{}", details(&record))?,
                OutputFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&record)?)?,
            }
        }
        SessionCommand::Cleanup {
            older_than,
            all,
            dry_run,
            ..
        } => {
            let cutoff = match older_than {
                Some(text) => {
                    let age = parse_duration(&text, "--older-than")?;
                    let now = std::time::SystemTime::now().duration_since(UNIX_EPOCH)?;
                    let cutoff = now
                        .checked_sub(age)
                        .context("--older-than reaches back before 1970")?;
                    Some(u64::try_from(cutoff.as_millis()).unwrap_or(u64::MAX))
                }
                None => None,
            };
            let doomed: Vec<String> = store
                .list(StateFilter::All)?
                .into_iter()
                .filter(|r| match r.ended_at_ms {
                    Some(ended) => all || cutoff.is_some_and(|c| ended < c),
                    // Not ended: only if no proxy has re-saved it since the cutoff (running proxies
                    // re-save their sessions every minute), i.e. a killed proxy left it behind.
                    None => cutoff.is_some_and(|c| r.updated_at_ms < c),
                })
                .map(|r| r.id)
                .collect();
            if dry_run {
                writeln!(out, "would delete {} session(s)", doomed.len())?;
            } else {
                let deleted = store.delete(&doomed)?;
                writeln!(out, "deleted {deleted} session(s)")?;
            }
            for id in &doomed {
                writeln!(out, "  {id}")?;
            }
        }
    }
    out.flush()?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_timestamps_do_not_crash_the_table() {
        assert_eq!(when(0), "1970-01-01T00:00:00Z");
        assert_eq!(when(u64::MAX), format!("@{}ms", u64::MAX));
    }
}
