//! Session records as people read them: the tables `shadowcat session list|show` print.

use std::fmt::Write;
use std::time::{Duration, UNIX_EPOCH};

use super::info::SessionRecord;

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
    field("client info", json(&r.metadata.client_info));
    field("client capabilities", json(&r.metadata.client_capabilities));
    field("server info", json(&r.metadata.server_info));
    field("server capabilities", json(&r.metadata.server_capabilities));
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
    field("tape", "-".into());
    out
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
