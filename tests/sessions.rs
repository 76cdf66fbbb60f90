//! Session history end to end: a forward-stdio session is recorded in SQLite (client info,
//! protocol version, frame counts), then listed, shown and cleaned up with `shadowcat session`.

// Test code: panics are the failure report.
#![allow(
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_types
)]

mod support;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Proxy, WAIT, fixture, tool};

fn shadowcat(data_dir: &Path, args: &[&str]) -> Output {
    support::command()
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .unwrap()
}

fn list(data_dir: &Path, state: &str) -> Vec<Value> {
    let out = shadowcat(
        data_dir,
        &["session", "list", "--state", state, "--format", "json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn proxy_with_history(data_dir: &Path) -> Proxy {
    let mut cmd = support::command();
    cmd.env("SHADOWCAT_SESSION_STORE", "sqlite")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["forward", "stdio", "--"])
        .arg(fixture());
    Proxy::spawn(cmd)
}

#[test]
fn a_forward_session_is_recorded_then_listed_shown_and_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let mut proxy = proxy_with_history(data);
    proxy.initialize();
    assert_eq!(proxy.call(1, "ping", json!({}))["result"], json!({}));

    // While it runs, it is listed as active (write-behind: give the writer a moment).
    let deadline = Instant::now() + Duration::from_secs(5);
    let active = loop {
        let active = list(data, "active");
        // Records are written behind: the created one can be seen before the activated one.
        let activated = active.first().is_some_and(|r| r["state"] == "active");
        if activated || Instant::now() > deadline {
            break active;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(active.len(), 1, "{active:?}");
    assert_eq!(active[0]["state"], "active");

    proxy.call(2, "tools/call", tool("echo", json!({"text": "hi"})));
    proxy.close_stdin();
    assert!(proxy.wait_exit(WAIT).success());

    let all = list(data, "all");
    assert_eq!(all.len(), 1, "{all:?}");
    let record = &all[0];
    let id = record["id"].as_str().unwrap();
    assert_eq!(id.len(), 32);
    assert_eq!(record["state"], "closed");
    assert_eq!(record["end_reason"], "closed");
    assert_eq!(record["transport"], "stdio");
    assert_eq!(record["protocol_version"], "2025-06-18");
    assert_eq!(
        record["client_info"],
        json!({"name": "shadowcat-tests", "version": "0"})
    );
    assert_eq!(record["server_info"]["name"], "shadowcat-fixture");
    // initialize, initialized, ping, tools/call from the client; three answers from the server.
    assert_eq!(
        (
            record["frames_from_client"].as_u64(),
            record["frames_from_server"].as_u64()
        ),
        (Some(4), Some(3))
    );
    assert!(
        record["upstream"]
            .as_str()
            .unwrap()
            .ends_with("fixture_server")
    );
    assert!(list(data, "active").is_empty());

    let show = shadowcat(data, &["session", "show", id]);
    assert!(show.status.success());
    let text = String::from_utf8(show.stdout).unwrap();
    for needle in [
        id,
        "ended (closed)",
        "shadowcat-tests 0",
        "2025-06-18",
        "messages from client  4",
    ] {
        assert!(text.contains(needle), "show lacks {needle:?}:\n{text}");
    }
    let table = String::from_utf8(shadowcat(data, &["session", "list"]).stdout).unwrap();
    assert!(table.starts_with("ID") && table.contains(id), "{table}");

    let dry = shadowcat(data, &["session", "cleanup", "--all", "--dry-run"]);
    assert!(String::from_utf8_lossy(&dry.stdout).contains("would delete 1 session(s)"));
    assert_eq!(list(data, "all").len(), 1);
    let recent = shadowcat(data, &["session", "cleanup", "--older-than", "1h"]);
    assert!(String::from_utf8_lossy(&recent.stdout).contains("deleted 0 session(s)"));
    let cleaned = shadowcat(data, &["session", "cleanup", "--all"]);
    assert!(String::from_utf8_lossy(&cleaned.stdout).contains("deleted 1 session(s)"));
    assert!(list(data, "all").is_empty());
}

#[test]
fn session_commands_refuse_bad_input_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    // No history yet: an empty list, and `show` says the session is unknown.
    assert!(list(data, "all").is_empty());
    let show = shadowcat(data, &["session", "show", "nope"]);
    assert_eq!(show.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&show.stderr).contains("no session nope"));
    let usage = shadowcat(data, &["session", "cleanup"]);
    assert_eq!(usage.status.code(), Some(2));
    for (value, needle) in [
        ("0s", "more than zero"),
        ("-1h", "negative"),
        ("3 parsecs", "unknown time unit"),
    ] {
        // Make a history file exist so the duration is actually parsed.
        let mut proxy = proxy_with_history(data);
        proxy.initialize();
        proxy.close_stdin();
        assert!(proxy.wait_exit(WAIT).success());
        let out = shadowcat(data, &["session", "cleanup", "--older-than", value]);
        assert_eq!(out.status.code(), Some(2), "{value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--older-than") && stderr.contains(needle),
            "{value}: {stderr}"
        );
    }
}

#[test]
fn an_idle_session_expires_and_the_proxy_shuts_its_server_down() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let mut cmd = support::command();
    cmd.env("SHADOWCAT_SESSION_STORE", "sqlite")
        .arg("--data-dir")
        .arg(data)
        .args([
            "forward",
            "stdio",
            "--session-idle-timeout",
            "400ms",
            "--cleanup-interval",
            "100ms",
            "--",
        ])
        .arg(fixture());
    let mut proxy = Proxy::spawn(cmd);
    proxy.initialize();
    let started = Instant::now();
    let status = proxy.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "{}", proxy.stderr_text());
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "expired early: {:?}",
        started.elapsed()
    );
    let all = list(data, "all");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["end_reason"], "expired");
}

#[test]
fn a_session_past_its_max_age_ends_and_its_in_flight_request_gets_an_error() {
    let mut cmd = support::command();
    cmd.args([
        "forward",
        "stdio",
        "--max-session-age",
        "500ms",
        "--cleanup-interval",
        "50ms",
        "--shutdown-timeout",
        "200ms",
        "--",
    ])
    .arg(fixture());
    let mut proxy = Proxy::spawn(cmd);
    proxy.initialize();
    let answer = proxy.call(1, "tools/call", tool("sleep", json!({"ms": 10_000})));
    assert_eq!(answer["error"]["code"], -32085, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{answer}"
    );
    assert!(proxy.wait_exit(Duration::from_secs(15)).success());
}

#[test]
fn cleanup_older_than_deletes_old_and_abandoned_rows_and_keeps_live_ones() {
    use shadowcat::session::store::{SessionStore, SqliteStore};
    use shadowcat::session::{Metadata, SessionRecord};

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let hour = 3_600_000;
    let row = |id: &str, ended: Option<u64>, updated: u64| SessionRecord {
        id: id.into(),
        state: if ended.is_some() { "closed" } else { "active" }.into(),
        end_reason: ended.map(|_| "closed".into()),
        transport: "stdio".into(),
        upstream: None,
        created_at_ms: now_ms - 10 * hour,
        last_activity_ms: now_ms - 5 * hour,
        ended_at_ms: ended,
        frames_from_client: 1,
        frames_from_server: 1,
        pending: 0,
        tape: None,
        metadata: Metadata::default(),
        updated_at_ms: updated,
    };
    let store = SqliteStore::open_in(data).unwrap();
    store
        .save(&[
            row("ended-long-ago", Some(now_ms - 3 * hour), now_ms - 3 * hour),
            row("ended-recently", Some(now_ms - 60_000), now_ms - 60_000),
            // A proxy that was killed: never ended, not re-saved for hours.
            row("abandoned", None, now_ms - 2 * hour),
            // A live, idle session: no message for 5 hours, but its proxy re-saved it just now.
            row("live-but-idle", None, now_ms - 30_000),
        ])
        .unwrap();
    let out = shadowcat(data, &["session", "cleanup", "--older-than", "1h"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("deleted 2 session(s)"), "{text}");
    let mut left: Vec<String> = list(data, "all")
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["ended-recently", "live-but-idle"]);
}

/// Tapes, their directories, the history and the log file are their owner's alone (`0600`,
/// directories `0700`): they hold live session ids and recorded messages.
#[test]
fn what_shadowcat_writes_only_its_owner_can_read() {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |path: &Path| {
        std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o777
    };
    let root = tempfile::tempdir().unwrap();
    // `record` with no -o: a tape in the data dir's `tapes/`, all of it created here.
    let (data, log) = (
        root.path().join("data/nested"),
        root.path().join("shadowcat.log"),
    );
    let tapes = data.join("tapes");
    let mut cmd = support::command();
    cmd.env("SHADOWCAT_SESSION_STORE", "sqlite")
        .arg("--data-dir")
        .arg(&data)
        .arg("--log-file")
        .arg(&log)
        .args(["record", "--"])
        .arg(fixture());
    let mut proxy = Proxy::spawn(cmd);
    proxy.initialize();
    let answer = proxy.call(1, "tools/call", tool("echo", json!({"text": "x"})));
    assert_eq!(answer["result"]["content"][0]["text"], "x");
    proxy.close_stdin();
    assert!(proxy.wait_exit(WAIT).success());
    for dir in [root.path().join("data"), data.clone(), tapes.clone()] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    let db = data.join("sessions.db");
    assert_eq!(mode(&db), 0o600, "{}", db.display());
    for extra in ["sessions.db-wal", "sessions.db-shm"] {
        let path = data.join(extra);
        if path.exists() {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
    }
    let recorded: Vec<_> = std::fs::read_dir(&tapes)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(mode(&recorded[0]), 0o600, "{}", recorded[0].display());
    assert_eq!(mode(&log), 0o600);
}

/// The server process serving a session is in its history and on its tape: with
/// `--restart on-failure`, a crash and restart make generation 2, with the new pid; the tape
/// has a `server` line for each process and `session show` / `tape show` say which.
#[test]
fn the_server_process_and_its_generation_are_in_history_and_on_the_tape() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let tape_path = data.join("restarted.jsonl");
    let mut cmd = support::command();
    cmd.env("SHADOWCAT_SESSION_STORE", "sqlite")
        .arg("--data-dir")
        .arg(data)
        .args(["forward", "stdio", "--restart", "on-failure", "--record"])
        .arg(&tape_path)
        .arg("--")
        .arg(fixture());
    let mut proxy = Proxy::spawn(cmd);
    proxy.initialize();
    let crashed = proxy.call(1, "tools/call", tool("crash", json!({"code": 3})));
    assert_eq!(crashed["error"]["code"], -32081, "{crashed}");
    let echo = proxy.call(2, "tools/call", tool("echo", json!({"text": "again"})));
    assert_eq!(echo["result"]["content"][0]["text"], "again", "{echo}");
    proxy.close_stdin();
    assert_eq!(proxy.wait_exit(WAIT).code(), Some(0));

    let tape = shadowcat::tape::read(&tape_path).unwrap();
    let generations: Vec<u64> = tape.servers.iter().map(|s| s.generation).collect();
    assert_eq!(generations, [1, 2], "{:?}", tape.servers);
    assert_ne!(tape.servers[0].pid, tape.servers[1].pid);
    let second = tape.servers[1].pid;

    let records = list(data, "ended");
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["server_pid"], second);
    assert_eq!(records[0]["server_generation"], 2);
    let id = records[0]["id"].as_str().unwrap();
    let show = String::from_utf8(shadowcat(data, &["session", "show", id]).stdout).unwrap();
    assert!(
        show.contains(&format!("pid {second} (generation 2)")),
        "{show}"
    );
    let shown = shadowcat(data, &["tape", "show", tape_path.to_str().unwrap()]);
    let shown = String::from_utf8(shown.stdout).unwrap();
    assert!(
        shown.contains(&format!("pid {second} (generation 2)")),
        "{shown}"
    );
}

/// Sessions and tapes are named by the first characters of their ids (or a session by its
/// digest, as logs name it); an ambiguous prefix is refused naming the candidates. `session
/// show` has one `tape` row, the tape's absolute path, whatever directory recorded it.
#[test]
fn sessions_and_tapes_are_found_by_an_id_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    // Recorded with a relative path, from another directory.
    let record = |name: &str| {
        let mut cmd = support::command();
        cmd.current_dir(&work)
            .env("SHADOWCAT_SESSION_STORE", "sqlite")
            .arg("--data-dir")
            .arg(&data)
            .args(["forward", "stdio", "--record", name, "--"])
            .arg(fixture());
        let mut proxy = Proxy::spawn(cmd);
        proxy.initialize();
        proxy.close_stdin();
        assert!(proxy.wait_exit(WAIT).success());
    };
    record("one.jsonl");
    record("two.jsonl");
    let sessions = list(&data, "all");
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    let id = sessions[0]["id"].as_str().unwrap().to_owned();
    let other = sessions[1]["id"].as_str().unwrap().to_owned();
    // The shortest prefix that tells them apart.
    let mut n = 1;
    while other.starts_with(&id[..n]) {
        n += 1;
    }
    let out = shadowcat(&data, &["session", "show", &id[..n]]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = String::from_utf8(out.stdout).unwrap();
    assert!(
        shown.starts_with(&format!("id                    {id}\n")),
        "{shown}"
    );
    let tape_rows: Vec<&str> = shown.lines().filter(|l| l.starts_with("tape ")).collect();
    assert_eq!(tape_rows.len(), 1, "{shown}");
    let tape = tape_rows[0].trim_start_matches("tape").trim();
    assert!(Path::new(tape).is_absolute(), "{shown}");
    assert!(Path::new(tape).exists(), "{tape}");
    // By its digest, as the logs name it.
    let digest = shown
        .lines()
        .find_map(|l| l.strip_prefix("in logs as"))
        .unwrap()
        .trim()
        .to_owned();
    let out = shadowcat(&data, &["session", "show", &digest[..8]]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id));
    // Both sessions' ids start with "": refused, naming them; an unknown prefix is no session.
    let common: String = id
        .chars()
        .zip(other.chars())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a)
        .collect();
    if !common.is_empty() {
        let out = shadowcat(&data, &["session", "show", &common]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("2 sessions start with") && err.contains(&id),
            "{err}"
        );
    }
    let out = shadowcat(&data, &["session", "show", "zz"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no session zz"));

    // A tape by its id's first characters, as `tape list` shows them.
    let tapes_dir = data.join("tapes");
    std::fs::create_dir_all(&tapes_dir).unwrap();
    std::fs::copy(tape, tapes_dir.join("copied.jsonl")).unwrap();
    let listed = shadowcat(&data, &["tape", "list"]);
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(listed.starts_with("ID "), "{listed}");
    let short = listed
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    assert_eq!(short.len(), 12, "{listed}");
    let out = shadowcat(&data, &["tape", "show", &short[..8]]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(short));
    let out = shadowcat(&data, &["tape", "show", "nosuchtape"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nosuchtape: No such file or directory"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
