//! `shadowcat tape verify`: replays a tape's client side against a live server and compares
//! the server's answers with the recorded ones.
//!
//! The client's messages go to the server in recorded order, under their recorded ids (the
//! server is fresh). Each request that was answered on tape waits for its live answer (up to
//! `--timeout`) before the next message goes; a request the server sends meanwhile
//! (elicitation, sampling) gets the client's recorded answer to the same method. Answers are
//! compared as JSON with `id` and the `--ignore` paths left out; each mismatch is printed as
//! the paths that differ, with both values.
//!
//! A `--url` server is reached through `shadowcat forward stdio --url` (run as a child), so
//! sessions, headers and the HTTP transport are the bridge's own.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use serde_json::Value;
use serde_json_path::JsonPath;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;

use crate::cli::{StdioServer, VerifyArgs};
use crate::pattern::{parse_path, pointers};
use crate::protocol::error::ProxyError;
use crate::protocol::{Direction, ErrorCode, Kind, Message, RequestId};
use crate::tape::diff::{Difference, differences};
use crate::tape::{Tape, read};
use crate::transport::child::{ChildProcess, ChildSpec};
use crate::transport::lines::{Line, LineDecoder};

/// Longest line read from the server.
const MAX_LINE: usize = 32 * 1024 * 1024;
/// What an ignored value is compared as.
const IGNORED: &str = "(ignored)";

/// The verdict on one recorded request.
#[derive(Debug)]
enum Outcome {
    Same,
    Differs(Vec<Difference>),
    NoAnswer(String),
}

/// Runs `tape verify`; exit code 0 when every answer matched, 1 otherwise.
pub fn run(args: &VerifyArgs) -> anyhow::Result<u8> {
    let tape = read(&args.tape)?;
    let ignore = args
        .ignore
        .iter()
        .map(|p| parse_path(p))
        .collect::<Result<Vec<_>, _>>()
        .context("--ignore")?;
    let timeout = crate::config::parse_duration(&args.timeout, "--timeout")?;
    let mut spec = server_spec(&args.server)?;
    if let Some(out) = &args.record {
        spec = recorded_to(spec, out, args.server.url.is_some())?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let failures = runtime.block_on(verify(&tape, &spec, &ignore, timeout))?;
    Ok(u8::from(failures > 0))
}

/// How to start the server: its command, or the bridge to a `--url`.
fn server_spec(server: &StdioServer) -> anyhow::Result<ChildSpec> {
    let Some(url) = &server.url else {
        return crate::config::child_spec(server);
    };
    let mut args: Vec<OsString> =
        vec!["forward".into(), "stdio".into(), "--url".into(), url.into()];
    for header in &server.header {
        args.extend(["--header".into(), header.into()]);
    }
    for scope in &server.upstream.upstream_scope {
        args.extend(["--upstream-scope".into(), scope.into()]);
    }
    let options = [
        (
            "--bearer-token-env",
            server.upstream.bearer_token_env.clone().map(OsString::from),
        ),
        (
            "--bearer-token-file",
            server
                .upstream
                .bearer_token_file
                .clone()
                .map(OsString::from),
        ),
        (
            "--upstream-token-url",
            server
                .upstream
                .upstream_token_url
                .clone()
                .map(OsString::from),
        ),
        (
            "--upstream-client-id",
            server
                .upstream
                .upstream_client_id
                .clone()
                .map(OsString::from),
        ),
        (
            "--upstream-client-secret-file",
            server
                .upstream
                .upstream_client_secret_file
                .clone()
                .map(OsString::from),
        ),
        (
            "--connect-timeout",
            server.upstream.connect_timeout.clone().map(OsString::from),
        ),
        (
            "--upstream-ca",
            server.upstream.upstream_ca.clone().map(OsString::from),
        ),
        (
            "--read-timeout",
            server.upstream.read_timeout.clone().map(OsString::from),
        ),
    ];
    for (flag, value) in options {
        if let Some(value) = value {
            args.extend([flag.into(), value]);
        }
    }
    Ok(ChildSpec {
        program: std::env::current_exe()
            .context("cannot find the shadowcat binary")?
            .into(),
        args,
        env: Vec::new(),
        cwd: None,
    })
}

/// `spec` with the live run recorded to the new tape `out`: the server behind `shadowcat
/// forward stdio --record` (a `--url` server's bridge, our own binary already, records itself).
fn recorded_to(spec: ChildSpec, out: &std::path::Path, bridged: bool) -> anyhow::Result<ChildSpec> {
    if out.exists() {
        anyhow::bail!(
            "--record {}: the file exists; the live run is recorded to a new one",
            out.display()
        );
    }
    // The server may run elsewhere (`--cwd`): the path is ours.
    let out = std::path::absolute(out).with_context(|| format!("--record {}", out.display()))?;
    let record: [OsString; 4] = [
        "--session-store".into(),
        "memory".into(),
        "--record".into(),
        out.into_os_string(),
    ];
    if bridged {
        let mut spec = spec;
        spec.args.extend(record);
        return Ok(spec);
    }
    let mut args: Vec<OsString> = vec!["forward".into(), "stdio".into()];
    args.extend(record);
    args.push("--".into());
    args.push(spec.program);
    args.extend(spec.args);
    Ok(ChildSpec {
        program: std::env::current_exe()
            .context("cannot find the shadowcat binary")?
            .into(),
        args,
        env: spec.env,
        cwd: spec.cwd,
    })
}

/// The tape's answers by request id and direction, and the client's recorded answers to the
/// server's requests by method, in order.
struct Recorded {
    answers: HashMap<RequestId, Message>,
    client_answers: HashMap<String, std::collections::VecDeque<Message>>,
}

fn recorded(tape: &Tape) -> Recorded {
    let mut answers = HashMap::new();
    let mut server_requests: HashMap<RequestId, String> = HashMap::new();
    let mut client_answers: HashMap<String, std::collections::VecDeque<Message>> = HashMap::new();
    for frame in &tape.frames {
        let Ok(msg) = Message::parse(frame.raw.clone()) else {
            continue;
        };
        match (frame.direction, msg.kind(), msg.id()) {
            (Direction::ServerToClient, Kind::Response | Kind::Error, Some(id)) => {
                answers.entry(id.clone()).or_insert(msg);
            }
            (Direction::ServerToClient, Kind::Request, Some(id)) => {
                let method = msg
                    .method()
                    .map(|m| m.as_str().to_owned())
                    .unwrap_or_default();
                server_requests.insert(id.clone(), method);
            }
            (Direction::ClientToServer, Kind::Response | Kind::Error, Some(id)) => {
                if let Some(method) = server_requests.remove(id) {
                    client_answers.entry(method).or_default().push_back(msg);
                }
            }
            _ => {}
        }
    }
    Recorded {
        answers,
        client_answers,
    }
}

/// Replays the tape against the server `spec` starts; prints a line per request and returns
/// how many failed.
async fn verify(
    tape: &Tape,
    spec: &ChildSpec,
    ignore: &[JsonPath],
    timeout: Duration,
) -> anyhow::Result<usize> {
    let mut recorded = recorded(tape);
    let mut child =
        ChildProcess::spawn(spec).with_context(|| format!("cannot start {:?}", spec.program))?;
    let mut stdin = child.stdin.take().context("the server has no stdin")?;
    let stdout = child.stdout.take().context("the server has no stdout")?;
    let (tx, mut from_server) = mpsc::channel::<Message>(64);
    let reader = tokio::spawn(async move {
        let mut lines = FramedRead::new(stdout, LineDecoder::new(MAX_LINE));
        while let Some(Ok(line)) = lines.next().await {
            let Line::Frame(raw) = line else { continue };
            match Message::parse(raw) {
                Ok(msg) => {
                    if tx.send(msg).await.is_err() {
                        break;
                    }
                }
                Err(e) => tracing::warn!(%e, "the server sent a line that is not JSON-RPC"),
            }
        }
    });
    let mut out = std::io::stdout().lock();
    let (mut checked, mut failed) = (0usize, 0usize);
    let mut index = 0;
    for frame in &tape.frames {
        if frame.direction != Direction::ClientToServer {
            continue;
        }
        let Ok(msg) = Message::parse(frame.raw.clone()) else {
            continue;
        };
        if matches!(msg.kind(), Kind::Response | Kind::Error) {
            // The client's answers to the server's requests go when the server asks.
            continue;
        }
        let mut line = msg.raw().to_vec();
        line.push(b'\n');
        if stdin.write_all(&line).await.is_err() {
            writeln!(out, "FAIL the server stopped reading its input")?;
            failed += 1;
            break;
        }
        let (Kind::Request, Some(id)) = (msg.kind(), msg.id()) else {
            continue;
        };
        index += 1;
        let method = msg
            .method()
            .map(|m| m.as_str().to_owned())
            .unwrap_or_default();
        let Some(expected) = recorded.answers.remove(id) else {
            // Never answered on tape (cancelled, or the recording ended first).
            continue;
        };
        let answered = answer(id, &mut from_server, &mut stdin, &mut recorded, timeout).await;
        let outcome = match answered {
            Ok(got) => compare(&expected, &got, ignore),
            Err(reason) => Outcome::NoAnswer(reason),
        };
        checked += 1;
        let label = format!("#{index} {method}{}", name_of(&msg));
        match outcome {
            Outcome::Same => writeln!(out, "ok   {label}")?,
            Outcome::Differs(diffs) => {
                failed += 1;
                writeln!(out, "FAIL {label}: the answer differs from the tape")?;
                for diff in diffs {
                    writeln!(out, "       {diff}")?;
                }
            }
            Outcome::NoAnswer(reason) => {
                failed += 1;
                writeln!(out, "FAIL {label}: {reason}")?;
            }
        }
    }
    writeln!(
        out,
        "{checked} answers checked: {} matched, {failed} failed",
        checked.saturating_sub(failed)
    )?;
    drop(stdin);
    if let Err(e) = child.shutdown(Duration::from_secs(5)).await {
        tracing::warn!(%e, "stopping the server failed");
    }
    reader.abort();
    Ok(failed)
}

/// A `tools/call`'s tool (or a read's resource), for the report.
fn name_of(msg: &Message) -> String {
    let value: Value = serde_json::from_slice(msg.raw()).unwrap_or_default();
    let params = &value["params"];
    params["name"]
        .as_str()
        .or_else(|| params["uri"].as_str())
        .map_or_else(String::new, |name| format!(" {name}"))
}

/// Waits for the server's answer to `id`, answering its requests meanwhile.
async fn answer(
    id: &RequestId,
    from_server: &mut mpsc::Receiver<Message>,
    stdin: &mut tokio::process::ChildStdin,
    recorded: &mut Recorded,
    timeout: Duration,
) -> Result<Message, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let msg = match tokio::time::timeout_at(deadline, from_server.recv()).await {
            Err(_) => {
                return Err(format!(
                    "no answer within {}",
                    humantime::format_duration(timeout)
                ));
            }
            Ok(None) => return Err("the server exited before answering".into()),
            Ok(Some(msg)) => msg,
        };
        match (msg.kind(), msg.id()) {
            (Kind::Response | Kind::Error, Some(answered)) if answered == id => return Ok(msg),
            (Kind::Request, Some(asked)) => {
                let method = msg
                    .method()
                    .map(|m| m.as_str().to_owned())
                    .unwrap_or_default();
                let reply = recorded
                    .client_answers
                    .get_mut(&method)
                    .and_then(std::collections::VecDeque::pop_front)
                    .and_then(|recorded| recorded.with_id(asked))
                    .unwrap_or_else(|| {
                        let error = ProxyError::new(
                            ErrorCode::ReplayUnmatched,
                            format!("the tape has no client answer to {method}"),
                        );
                        Message::error_response(Some(asked), &error)
                    });
                let mut line = reply.raw().to_vec();
                line.push(b'\n');
                if stdin.write_all(&line).await.is_err() {
                    return Err("the server stopped reading its input".into());
                }
            }
            _ => {}
        }
    }
}

/// Compares a recorded answer with a live one, `id`, `jsonrpc` and the ignored paths aside.
fn compare(expected: &Message, live: &Message, ignore: &[JsonPath]) -> Outcome {
    let prepare = |msg: &Message| {
        let mut value: Value = serde_json::from_slice(msg.raw()).unwrap_or_default();
        if let Value::Object(map) = &mut value {
            map.remove("id");
            map.remove("jsonrpc");
        }
        for path in ignore {
            for pointer in pointers(path, &value) {
                if let Some(target) = value.pointer_mut(&pointer) {
                    *target = Value::String(IGNORED.into());
                }
            }
        }
        value
    };
    let diffs = differences(&prepare(expected), &prepare(live));
    if diffs.is_empty() {
        Outcome::Same
    } else {
        Outcome::Differs(diffs)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn msg(text: &str) -> Message {
        Message::parse(Bytes::copy_from_slice(text.as_bytes())).unwrap()
    }

    #[test]
    fn answers_compare_without_ids_and_ignored_paths() {
        let recorded = msg(
            r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hi"}],"at":"10:00"}}"#,
        );
        let same = msg(
            r#"{"id":7,"jsonrpc":"2.0","result":{"at":"10:00","content":[{"text":"hi","type":"text"}]}}"#,
        );
        assert!(matches!(compare(&recorded, &same, &[]), Outcome::Same));
        let later = msg(
            r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hi"}],"at":"11:00"}}"#,
        );
        let Outcome::Differs(diffs) = compare(&recorded, &later, &[]) else {
            panic!("should differ");
        };
        assert_eq!(diffs.len(), 1);
        assert_eq!(
            diffs[0].to_string(),
            r#"$.result.at: recorded "10:00", live "11:00""#
        );
        let ignore = [parse_path("$.result.at").unwrap()];
        assert!(matches!(compare(&recorded, &later, &ignore), Outcome::Same));
    }
}
