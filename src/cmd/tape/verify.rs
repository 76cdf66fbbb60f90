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
use crate::tape::diff::{Difference, Keyed, differences_keyed};
use crate::tape::{MASK, Tape, read};
use crate::transport::child::{ChildProcess, ChildSpec};
use crate::transport::lines::{Line, LineDecoder};

/// Longest line read from the server.
const MAX_LINE: usize = 32 * 1024 * 1024;

/// Runs `tape verify`; exit code 0 when every answer matched, 1 otherwise.
pub fn run(args: &VerifyArgs) -> anyhow::Result<u8> {
    let tape = read(&args.tape)?;
    if !args.send_redacted {
        refuse_masked(&tape)?;
    }
    let ignore = args
        .ignore
        .iter()
        .map(|p| Ignore::parse(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let timeout = crate::config::parse_duration(&args.timeout, "--timeout")?;
    let mut spec = server_spec(&args.server)?;
    if let Some(out) = &args.record {
        spec = recorded_to(spec, out, args.server.url.is_some())?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let check = Check {
        ignore,
        timeout,
        verbose: args.verbose,
    };
    let tally = runtime.block_on(verify(&tape, &spec, &check))?;
    Ok(u8::from(!tally.passed()))
}

/// Refuses a tape whose client messages hold masked values: the live server would get
/// `[REDACTED]` where the client sent a password or a token, and its answers would differ for
/// that reason alone (or it would act on the mask).
fn refuse_masked(tape: &Tape) -> anyhow::Result<()> {
    let mut found: Vec<String> = Vec::new();
    let mut index = 0;
    for frame in &tape.frames {
        if frame.direction != Direction::ClientToServer {
            continue;
        }
        let Ok(msg) = Message::parse(frame.raw.clone()) else {
            continue;
        };
        if msg.kind() == Kind::Request {
            index += 1;
        }
        if memchr::memmem::find(msg.raw(), MASK.as_bytes()).is_none() {
            continue;
        }
        let value: Value = serde_json::from_slice(msg.raw()).unwrap_or_default();
        let mut paths = Vec::new();
        masked_at(&value, &mut "$".to_owned(), &mut paths);
        let what = match msg.kind() {
            Kind::Request => Request::of(&msg, index).label,
            _ => msg.method().map_or_else(
                || "an answer to the server".to_owned(),
                |m| m.as_str().to_owned(),
            ),
        };
        found.extend(paths.into_iter().map(|path| format!("{what} at {path}")));
    }
    let Some(first) = found.first() else {
        return Ok(());
    };
    anyhow::bail!(
        "the tape's client messages hold {} {MASK} (first: {first}); the live server would get \
         the mask, not the value. Record the tape without masking what the client sends, or \
         pass --send-redacted to send the masks anyway",
        if found.len() == 1 {
            "1 value masked as".to_owned()
        } else {
            format!("{} values masked as", found.len())
        }
    )
}

/// The paths of the strings in `value` that hold the mask.
fn masked_at(value: &Value, path: &mut String, out: &mut Vec<String>) {
    use std::fmt::Write as _;
    match value {
        Value::String(text) if text.contains(MASK) => out.push(path.clone()),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                let _ = write!(path, "[{i}]");
                masked_at(item, path, out);
                path.truncate(len);
            }
        }
        Value::Object(members) => {
            for (name, member) in members {
                let len = path.len();
                if name.contains(MASK) {
                    out.push(format!("{path} (a member's name)"));
                }
                crate::tape::diff::push_key(path, name);
                masked_at(member, path, out);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// An `--ignore`: a JSONPath, in the answers to one method (and one tool, prompt or resource)
/// or in all of them.
#[derive(Debug)]
struct Ignore {
    method: Option<String>,
    name: Option<String>,
    path: JsonPath,
}

impl Ignore {
    /// `$.path`, `METHOD=$.path` or `METHOD:NAME=$.path`.
    fn parse(text: &str) -> anyhow::Result<Self> {
        let (scope, path) = if text.trim_start().starts_with('$') {
            (None, text)
        } else {
            let Some((scope, path)) = text.split_once('=') else {
                anyhow::bail!(
                    "--ignore {text:?}: expected a JSONPath such as '$.result.content', or \
                     METHOD[:NAME]=JSONPATH such as 'tools/call:echo=$.result.content'"
                );
            };
            (Some(scope.trim()), path)
        };
        let path = parse_path(path).with_context(|| format!("--ignore {text:?}"))?;
        let (method, name) = match scope.map(|s| s.split_once(':').unwrap_or((s, ""))) {
            None => (None, None),
            Some(("", _)) => anyhow::bail!("--ignore {text:?}: the method before '=' is empty"),
            Some((method, "")) => (Some(method.to_owned()), None),
            Some((method, name)) => (Some(method.to_owned()), Some(name.to_owned())),
        };
        Ok(Self { method, name, path })
    }

    /// Whether it applies to the answer to `method` about `name`.
    fn applies(&self, method: &str, name: Option<&str>) -> bool {
        self.method.as_deref().is_none_or(|m| m == method)
            && self.name.as_deref().is_none_or(|n| Some(n) == name)
    }
}

/// How answers are checked and reported.
struct Check {
    ignore: Vec<Ignore>,
    timeout: Duration,
    verbose: bool,
}

/// What the run found.
#[derive(Debug, Default)]
struct Tally {
    /// Answers that came and equal the tape's.
    matched: usize,
    /// Answers that came and differ.
    differed: usize,
    /// Requests whose answer did not come.
    unanswered: usize,
    /// Requests not sent because the run stopped early, and why it stopped.
    not_sent: usize,
    stopped: Option<String>,
}

impl Tally {
    fn passed(&self) -> bool {
        self.differed + self.unanswered + self.not_sent == 0
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn counted(n: usize, one: &str, many: &str) -> String {
            format!("{n} {}", if n == 1 { one } else { many })
        }
        write!(
            f,
            "{} compared: {} matched, {} differed",
            counted(self.matched + self.differed, "answer", "answers"),
            self.matched,
            self.differed
        )?;
        if self.unanswered > 0 {
            write!(
                f,
                "; {} no answer",
                counted(self.unanswered, "request got", "requests got")
            )?;
        }
        if let Some(why) = &self.stopped {
            write!(
                f,
                "; stopped ({why}) with {} not sent",
                counted(self.not_sent, "request", "requests")
            )?;
        }
        Ok(())
    }
}

/// How to start the server: its command, or the bridge to a `--url`.
fn server_spec(server: &StdioServer) -> anyhow::Result<ChildSpec> {
    let Some(url) = crate::config::server_url(server, None)? else {
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

/// Replays the tape against the server `spec` starts, printing each mismatch (each answer
/// with `verbose`) and the tally.
async fn verify(tape: &Tape, spec: &ChildSpec, check: &Check) -> anyhow::Result<Tally> {
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
    // The client's own messages; its answers to the server's requests go when the server asks.
    let sent: Vec<Message> = tape
        .frames
        .iter()
        .filter(|frame| frame.direction == Direction::ClientToServer)
        .filter_map(|frame| Message::parse(frame.raw.clone()).ok())
        .filter(|msg| !matches!(msg.kind(), Kind::Response | Kind::Error))
        .collect();
    let mut run = Run {
        out: std::io::stdout().lock(),
        tally: Tally::default(),
        check,
    };
    let mut index = 0;
    for (at, msg) in sent.iter().enumerate() {
        let mut line = msg.raw().to_vec();
        line.push(b'\n');
        let written = stdin.write_all(&line).await.is_ok();
        let (Kind::Request, Some(id)) = (msg.kind(), msg.id()) else {
            if !written {
                run.stop(
                    "the server stopped reading its input",
                    &sent[at..],
                    &recorded,
                );
                break;
            }
            continue;
        };
        index += 1;
        let Some(expected) = recorded.answers.remove(id) else {
            // Never answered on tape (cancelled, or the recording ended first).
            continue;
        };
        let answered = if written {
            answer(
                id,
                &mut from_server,
                &mut stdin,
                &mut recorded,
                check.timeout,
            )
            .await
        } else {
            Err(Unanswered::Gone(
                "the server stopped reading its input".into(),
            ))
        };
        let request = Request::of(msg, index);
        // Nothing after a failed handshake or a gone server can be answered: stop rather
        // than wait `--timeout` for each request left.
        let stop = match answered {
            Ok(got) => {
                run.compared(&request, &expected, &got)?;
                let refused = got.kind() == Kind::Error && expected.kind() != Kind::Error;
                (request.method == "initialize" && refused).then(|| "the handshake failed".into())
            }
            Err(reason) => {
                run.tally.unanswered += 1;
                writeln!(run.out, "FAIL {}: {reason}", request.label)?;
                match reason {
                    Unanswered::Gone(why) => Some(why),
                    Unanswered::Late(_) if request.method == "initialize" => {
                        Some("the handshake failed".into())
                    }
                    Unanswered::Late(_) => None,
                }
            }
        };
        if let Some(why) = stop {
            run.stop(&why, &sent[at + 1..], &recorded);
            break;
        }
    }
    writeln!(run.out, "{}", run.tally)?;
    drop(stdin);
    if let Err(e) = child.shutdown(Duration::from_secs(5)).await {
        tracing::warn!(error = %e, "stopping the server failed");
    }
    reader.abort();
    Ok(run.tally)
}

/// A recorded request, as the report names it.
struct Request {
    method: String,
    /// Its tool, prompt or resource.
    name: Option<String>,
    /// `#3 tools/call echo`.
    label: String,
}

impl Request {
    fn of(msg: &Message, index: usize) -> Self {
        let method = msg
            .method()
            .map(|m| m.as_str().to_owned())
            .unwrap_or_default();
        let name = msg.named();
        let label = match &name {
            Some(name) => format!("#{index} {method} {name}"),
            None => format!("#{index} {method}"),
        };
        Self {
            method,
            name,
            label,
        }
    }
}

/// The report as it is written.
struct Run<'a, W> {
    out: W,
    tally: Tally,
    check: &'a Check,
}

impl<W: std::io::Write> Run<'_, W> {
    /// Compares a live answer with the recorded one, and says so.
    fn compared(
        &mut self,
        request: &Request,
        expected: &Message,
        got: &Message,
    ) -> anyhow::Result<()> {
        let ignore: Vec<&JsonPath> = self
            .check
            .ignore
            .iter()
            .filter(|i| i.applies(&request.method, request.name.as_deref()))
            .map(|i| &i.path)
            .collect();
        let diffs = compare(expected, got, &ignore);
        if diffs.is_empty() {
            self.tally.matched += 1;
            if self.check.verbose {
                writeln!(self.out, "ok   {}", request.label)?;
            }
        } else {
            self.tally.differed += 1;
            writeln!(
                self.out,
                "FAIL {}: the answer differs from the tape",
                request.label
            )?;
            for diff in diffs {
                writeln!(self.out, "       {diff}")?;
            }
        }
        Ok(())
    }

    /// Ends the run early, counting the requests of `left` that would have been checked.
    fn stop(&mut self, why: &str, left: &[Message], recorded: &Recorded) {
        self.tally.stopped = Some(why.to_owned());
        self.tally.not_sent = left
            .iter()
            .filter(|msg| msg.kind() == Kind::Request)
            .filter(|msg| msg.id().is_some_and(|id| recorded.answers.contains_key(id)))
            .count();
    }
}

/// Why an answer did not come.
#[derive(Debug)]
enum Unanswered {
    /// Not within `--timeout`.
    Late(String),
    /// The server exited or stopped reading: nothing more will come.
    Gone(String),
}

impl std::fmt::Display for Unanswered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Late(why) | Self::Gone(why) => f.write_str(why),
        }
    }
}

/// Waits for the server's answer to `id`, answering its requests meanwhile.
async fn answer(
    id: &RequestId,
    from_server: &mut mpsc::Receiver<Message>,
    stdin: &mut tokio::process::ChildStdin,
    recorded: &mut Recorded,
    timeout: Duration,
) -> Result<Message, Unanswered> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let msg = match tokio::time::timeout_at(deadline, from_server.recv()).await {
            Err(_) => {
                return Err(Unanswered::Late(format!(
                    "no answer within {}",
                    humantime::format_duration(timeout)
                )));
            }
            Ok(None) => {
                return Err(Unanswered::Gone(
                    "the server exited before answering".into(),
                ));
            }
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
                    return Err(Unanswered::Gone(
                        "the server stopped reading its input".into(),
                    ));
                }
            }
            _ => {}
        }
    }
}

/// The lists whose items are compared by name, not place: one tool more is one difference.
const KEYED: &Keyed<'static> = &[
    ("$.result.tools", "name"),
    ("$.result.prompts", "name"),
    ("$.result.resources", "uri"),
    ("$.result.resourceTemplates", "uriTemplate"),
];

/// Takes the value at the JSON pointer out of its object or array.
fn remove(value: &mut Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let last = last.replace("~1", "/").replace("~0", "~");
    match value.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.remove(&last);
        }
        Some(Value::Array(items)) => {
            if let Ok(at) = last.parse::<usize>()
                && at < items.len()
            {
                items.remove(at);
            }
        }
        _ => {}
    }
}

/// Where a recorded answer and a live one differ, `id`, `jsonrpc` and the ignored paths
/// (present on either side or both) aside.
fn compare(expected: &Message, live: &Message, ignore: &[&JsonPath]) -> Vec<Difference> {
    let prepare = |msg: &Message| {
        let mut value: Value = serde_json::from_slice(msg.raw()).unwrap_or_default();
        if let Value::Object(map) = &mut value {
            map.remove("id");
            map.remove("jsonrpc");
        }
        for path in ignore {
            // Last first, so that removing an array's element leaves the earlier pointers true.
            for pointer in pointers(path, &value).iter().rev() {
                remove(&mut value, pointer);
            }
        }
        value
    };
    differences_keyed(&prepare(expected), &prepare(live), KEYED)
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
        assert!(compare(&recorded, &same, &[]).is_empty());
        let later = msg(
            r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hi"}],"at":"11:00"}}"#,
        );
        let diffs = compare(&recorded, &later, &[]);
        assert_eq!(diffs.len(), 1);
        assert_eq!(
            diffs[0].to_string(),
            r#"$.result.at: recorded "10:00", live "11:00""#
        );
        let ignore = parse_path("$.result.at").unwrap();
        assert!(compare(&recorded, &later, &[&ignore]).is_empty());
        // An ignored value present on one side only is no difference either.
        let without =
            msg(r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hi"}]}}"#);
        assert!(compare(&recorded, &without, &[&ignore]).is_empty());
        let first = parse_path("$.result.content[0]").unwrap();
        let more = msg(
            r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"new"},{"type":"text","text":"hi"}],"at":"10:00"}}"#,
        );
        assert_eq!(compare(&recorded, &more, &[&first]).len(), 1);
    }

    #[test]
    fn an_ignore_is_scoped_to_a_method_and_a_name() {
        let all = Ignore::parse("$.result").unwrap();
        assert!(all.applies("tools/list", None));
        let method = Ignore::parse("resources/read=$.result").unwrap();
        assert!(method.applies("resources/read", Some("file:///a")));
        assert!(!method.applies("tools/call", Some("file:///a")));
        let tool = Ignore::parse("tools/call:echo=$.result.content").unwrap();
        assert!(tool.applies("tools/call", Some("echo")));
        assert!(!tool.applies("tools/call", Some("add")));
        assert!(!tool.applies("prompts/get", Some("echo")));
        let uri = Ignore::parse("resources/read:file:///a=$.result").unwrap();
        assert!(uri.applies("resources/read", Some("file:///a")));
        for bad in ["result", "=$.result", "tools/call=result"] {
            let e = format!("{:#}", Ignore::parse(bad).unwrap_err());
            assert!(e.contains(&format!("--ignore {bad:?}")), "{e}");
        }
    }
}
