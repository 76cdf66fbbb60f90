//! Shared helpers for integration tests: run the real `shadowcat` binary over real pipes.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod balancer;
pub mod redis;
pub mod sdk;

/// The shadowcat binary under test.
pub fn shadowcat() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shadowcat"))
}

/// A `Command` for the shadowcat binary that keeps no session history (tests must not write to
/// the user's data dir; the persistence tests choose their own `--data-dir`).
pub fn command() -> Command {
    let mut cmd = Command::new(shadowcat());
    hermetic(&mut cmd);
    cmd
}

/// Keeps what `cmd` (shadowcat, or a peer that starts it) writes out of the user's own data
/// directory: no session history, and a data directory of the tests' own (`target/tmp`). A
/// test that wants history passes `--data-dir` and `--session-store sqlite` itself.
pub fn hermetic(cmd: &mut Command) -> &mut Command {
    cmd.env("SHADOWCAT_SESSION_STORE", "memory")
        .env("SHADOWCAT_DATA_DIR", test_data_dir())
}

/// The data directory every test's shadowcat gets unless it names one.
pub fn test_data_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("shadowcat-data");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The installed test peers (pinned Python SDK venvs): `target/test-env`, or
/// `$SHADOWCAT_TEST_ENV`. Without them, tests fail with instructions rather than skip.
pub fn test_env() -> PathBuf {
    let dir = std::env::var_os("SHADOWCAT_TEST_ENV").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-env"),
        PathBuf::from,
    );
    assert!(
        dir.join("mcp-2.3.0/bin/python").exists() && dir.join("mcp-1.30.0/bin/python").exists(),
        "the test peers are not installed in {}: run scripts/test.sh",
        dir.display()
    );
    dir
}

/// `tests/peers`: the peer scripts.
pub fn peers() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers")
}

/// The Python interpreter of the venv with `mcp==<sdk>`.
pub fn python(sdk: &str) -> String {
    test_env()
        .join(format!("mcp-{sdk}/bin/python"))
        .display()
        .to_string()
}

/// The fixture MCP server (examples/fixture_server.rs), built by `cargo test` with the examples.
pub fn fixture() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target profile dir");
    let path = profile_dir.join("examples").join("fixture_server");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build --examples` (cargo test does)",
        path.display()
    );
    path
}

/// The MCP server built with the official Rust SDK (`examples/rmcp_server.rs`).
pub fn rmcp_server() -> PathBuf {
    let path = fixture().with_file_name("rmcp_server");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build --examples` (cargo test does)",
        path.display()
    );
    path
}

/// A running `shadowcat forward stdio` with its stdio in our hands.
pub struct Proxy {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: Stderr,
}

/// A child's stderr, read to its end by a thread of its own.
pub struct Stderr {
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Disconnected when the reader has reached the end of the stream.
    done: std::sync::Mutex<mpsc::Receiver<()>>,
}

impl Stderr {
    /// Starts reading `stderr`; `on_line` sees each line first.
    pub fn read(
        stderr: impl std::io::Read + Send + 'static,
        on_line: impl Fn(&str) + Send + 'static,
    ) -> Self {
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (done_tx, done) = mpsc::channel::<()>();
        let keep = lines.clone();
        std::thread::spawn(move || {
            let _done = done_tx;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                on_line(&line);
                keep.lock().unwrap().push(line);
            }
        });
        Self {
            lines,
            done: std::sync::Mutex::new(done),
        }
    }

    /// Everything read so far.
    pub fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits until the stream has ended (every writer has closed it), so that [`Self::text`]
    /// is all there will ever be; fails the test after `wait`.
    pub fn read_to_end(&self, wait: Duration) {
        if let Err(mpsc::RecvTimeoutError::Timeout) = self.done.lock().unwrap().recv_timeout(wait) {
            panic!(
                "stderr was still open {wait:?} after the process exited (something holds it):\n{}",
                self.text()
            );
        }
    }
}

/// Default wait for one message.
pub const WAIT: Duration = Duration::from_secs(10);

/// How soon a stream that should end must have ended (well under [`WAIT`], so an end is never
/// confused with a read timing out).
pub const ENDS_WITHIN: Duration = Duration::from_secs(5);

impl Proxy {
    /// Starts `shadowcat [flags...] forward stdio [opts...] -- <server...>`.
    pub fn start(opts: &[&str], server: &[&str]) -> Self {
        let mut cmd = command();
        cmd.args(["--log-level", "debug", "forward", "stdio"])
            .args(opts)
            .arg("--")
            .args(server);
        Self::spawn(cmd)
    }

    /// Starts the proxy in front of the fixture server.
    pub fn fixture(opts: &[&str]) -> Self {
        let fixture = fixture();
        Self::start(opts, &[fixture.to_str().unwrap()])
    }

    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn shadowcat");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::with_capacity(1 << 20, stdout);
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                if tx.send(std::mem::take(&mut line)).is_err() {
                    break;
                }
            }
        });
        Self {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr: Stderr::read(stderr, |_| {}),
        }
    }

    /// Writes raw bytes to the proxy's stdin.
    pub fn write_raw(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    /// Sends one JSON message as a line.
    pub fn send(&mut self, msg: &Value) {
        let mut line = serde_json::to_vec(msg).unwrap();
        line.push(b'\n');
        self.write_raw(&line);
    }

    /// The next line from the proxy's stdout, raw.
    pub fn recv_line(&self, wait: Duration) -> String {
        self.lines
            .recv_timeout(wait)
            .unwrap_or_else(|e| panic!("no message from shadowcat within {wait:?}: {e}"))
    }

    /// The next message from the proxy's stdout.
    pub fn recv(&self) -> Value {
        let line = self.recv_line(WAIT);
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("shadowcat wrote invalid JSON {line:?}: {e}"))
    }

    /// Asserts nothing more arrives within `wait`.
    pub fn expect_silence(&self, wait: Duration) {
        if let Ok(line) = self.lines.recv_timeout(wait) {
            panic!("unexpected message: {line}");
        }
    }

    /// Sends a request and returns its answer (asserting the id matches).
    pub fn call(&mut self, id: i64, method: &str, params: Value) -> Value {
        self.send(
            &serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
        );
        let answer = self.recv();
        assert_eq!(answer["id"], id, "answer to the wrong request: {answer}");
        answer
    }

    /// initialize + initialized.
    pub fn initialize(&mut self) -> Value {
        let result = self.call(
            0,
            "initialize",
            serde_json::json!({"protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "shadowcat-tests", "version": "0"}}),
        );
        self.send(&serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        result
    }

    /// Takes the proxy's stdin, to write from another thread.
    pub fn take_stdin(&mut self) -> ChildStdin {
        self.stdin.take().expect("stdin open")
    }

    /// Closes the proxy's stdin.
    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// Waits for the proxy to exit, at most `wait`, and then for its stderr to end, so that
    /// [`Self::stderr_text`] has every line.
    #[must_use = "assert the exit status"]
    pub fn wait_exit(&mut self, wait: Duration) -> ExitStatus {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.stderr.read_to_end(WAIT);
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "shadowcat did not exit within {wait:?}; stderr:\n{}",
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything shadowcat (and the server) wrote to stderr so far (all of it after
    /// [`Self::wait_exit`]).
    pub fn stderr_text(&self) -> String {
        self.stderr.text()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether any live (non-zombie) process is in process group `pgid`, allowing a moment for
/// signals just sent to take effect. Zombies are ignored: this machine's PID 1 may not reap the
/// orphans it inherits, and a zombie runs nothing.
pub fn group_alive(pgid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        if live_members(pgid).is_empty() {
            return false;
        }
        if Instant::now() > deadline {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pids of live processes in group `pgid`, from /proc.
pub fn live_members(pgid: i32) -> Vec<i32> {
    live_processes(|_ppid, pgrp| pgrp == pgid)
}

/// Pids of live child processes of `parent`, from /proc, its reaper (`shadowcat __reaper`,
/// which watches over the others) left out.
pub fn live_children(parent: u32) -> Vec<i32> {
    live_processes(|ppid, _pgrp| ppid == parent as i32)
        .into_iter()
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            !cmdline.ends_with(b"\0__reaper\0")
        })
        .collect()
}

/// Pids of live (non-zombie) processes whose parent pid and process group pass `keep`.
fn live_processes(keep: impl Fn(i32, i32) -> bool) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the parenthesised command: state ppid pgrp ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let number = |i: usize| fields.get(i).and_then(|f| f.parse::<i32>().ok());
        if let (Some(&state), Some(ppid), Some(pgrp)) = (fields.first(), number(1), number(2)) {
            if state != "Z" && keep(ppid, pgrp) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Tool-call params.
pub fn tool(name: &str, arguments: Value) -> Value {
    serde_json::json!({"name": name, "arguments": arguments})
}

/// A running `shadowcat reverse`, listening on a free loopback port.
pub struct Gateway {
    pub child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    stderr: Stderr,
}

impl Gateway {
    /// Starts `shadowcat reverse --listen 127.0.0.1:0 [opts...]` (opts may end with `-- cmd`).
    pub fn start(opts: &[&str]) -> Self {
        let mut cmd = command();
        cmd.args(["--log-level", "debug", "reverse", "--listen", "127.0.0.1:0"])
            .args(opts);
        Self::spawn(cmd)
    }

    /// Starts a gateway in front of the fixture server (a child per session).
    pub fn fixture(opts: &[&str]) -> Self {
        let fixture = fixture();
        let mut all: Vec<&str> = opts.to_vec();
        all.push("--");
        all.push(fixture.to_str().unwrap());
        Self::start(&all)
    }

    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn shadowcat reverse");
        let (tx, rx) = mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        let stderr = Stderr::read(child.stderr.take().unwrap(), move |line| {
            if let Some(addr) = line
                .split("listening on http://")
                .nth(1)
                .and_then(|rest| rest.split('/').next())
            {
                let _ = tx.lock().unwrap().send(addr.to_owned());
            }
        });
        let addr = match rx.recv_timeout(WAIT) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "shadowcat reverse did not start listening:\n{}",
                    stderr.text()
                );
            }
        };
        Self {
            child,
            addr,
            stderr,
        }
    }

    /// The admin endpoints' `127.0.0.1:PORT` (started with `--admin-listen`), from the log.
    pub fn admin_addr(&self) -> String {
        self.stderr_text()
            .split("admin endpoints on http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .expect("the admin address in the log")
            .to_owned()
    }

    /// `http://ADDR/mcp`.
    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// Everything the gateway (and its children) wrote to stderr so far (all of it after
    /// [`Self::wait_exit`]).
    pub fn stderr_text(&self) -> String {
        self.stderr.text()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }

    /// Waits for the gateway to exit, and then for its stderr to end.
    #[must_use = "assert the exit status"]
    pub fn wait_exit(&mut self, wait: Duration) -> ExitStatus {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.stderr.read_to_end(WAIT);
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "shadowcat reverse did not exit:\n{}",
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// POSTs one JSON-RPC body with the usual MCP headers.
    pub fn post(&self, session: Option<&str>, body: &Value) -> HttpResponse {
        let mut headers = vec![
            ("Content-Type", "application/json".to_owned()),
            ("Accept", "application/json, text/event-stream".to_owned()),
        ];
        if let Some(session) = session {
            headers.push(("Mcp-Session-Id", session.to_owned()));
        }
        http_request(
            &self.addr,
            "POST",
            "/mcp",
            &headers,
            body.to_string().as_bytes(),
        )
    }

    /// Initializes a 2025-06-18 session (and sends `notifications/initialized`); returns its id.
    pub fn initialize(&self) -> String {
        self.initialize_as("2025-06-18")
    }

    /// Initializes a session of protocol `version`; returns its id.
    pub fn initialize_as(&self, version: &str) -> String {
        let response = self.post(
            None,
            &serde_json::json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
                "protocolVersion":version,"capabilities":{},
                "clientInfo":{"name":"shadowcat-tests","version":"1"}}}),
        );
        assert_eq!(response.status, 200, "initialize: {response:?}");
        let session = response
            .header("mcp-session-id")
            .expect("a session id on the initialize answer")
            .to_owned();
        let ack = self.post(
            Some(&session),
            &serde_json::json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
        );
        assert_eq!(ack.status, 202, "initialized: {ack:?}");
        session
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what the gateway logged (at debug level) to explain it.
        if std::thread::panicking() {
            if let Ok(done) = self.stderr.done.lock() {
                let _ = done.recv_timeout(Duration::from_secs(2));
            }
            eprintln!(
                "---- shadowcat reverse ({}) stderr ----\n{}",
                self.addr,
                self.stderr_text()
            );
        }
    }
}

/// A parsed HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The JSON-RPC messages of an SSE body, in order.
    pub fn sse_messages(&self) -> Vec<Value> {
        let text = String::from_utf8_lossy(&self.body);
        text.split("\n\n")
            .filter_map(|event| {
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                (!data.is_empty() && !data.join("").is_empty())
                    .then(|| serde_json::from_str(&data.join("\n")).expect("SSE data is JSON"))
            })
            .collect()
    }

    /// The JSON-RPC messages of the body, whichever form it has.
    pub fn messages(&self) -> Vec<Value> {
        if self
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/event-stream"))
        {
            return self.sse_messages();
        }
        match self.json() {
            Value::Array(items) => items,
            other => vec![other],
        }
    }
}

/// The headers of an MCP POST (`Content-Type`, `Accept`), with `extra` added or replacing them.
pub fn mcp_headers(extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut h = vec![
        ("Content-Type", "application/json".to_owned()),
        ("Accept", "application/json, text/event-stream".to_owned()),
    ];
    for (name, value) in extra {
        h.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        h.push((name, (*value).to_owned()));
    }
    h
}

/// `shadowcat reverse ARGS -- true` is refused before anything starts: exit 2, and stderr
/// says `says`.
pub fn assert_reverse_refuses(args: &[&str], says: &str) {
    let out = command()
        .arg("reverse")
        .args(args)
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{args:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(says), "{args:?}: {stderr}");
}

/// A stateless (2026-07-28) client's answer `text` to the sampling request it got as `id`,
/// POSTed to the gateway at `addr`.
pub fn stateless_sampling_answer(addr: &str, id: &str, text: &str) -> HttpResponse {
    let body = serde_json::json!({"jsonrpc":"2.0","id":id,"result":{"role":"assistant","content":{"type":"text","text":text},"model":"m"}});
    http_request(
        addr,
        "POST",
        "/mcp",
        &mcp_headers(&[("MCP-Protocol-Version", "2026-07-28")]),
        body.to_string().as_bytes(),
    )
}

/// A stateless 2026-07-28 `tools/call` of `name`: its body (the protocol version in `_meta`,
/// with `meta`'s members added) and the POST headers that mirror it.
pub fn modern_call(
    id: i64,
    name: &str,
    arguments: Value,
    meta: Value,
) -> (Vec<(&'static str, String)>, Vec<u8>) {
    let mut meta_members = serde_json::json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}});
    if let (Some(all), Value::Object(extra)) = (meta_members.as_object_mut(), meta) {
        all.extend(extra);
    }
    let body = serde_json::json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
        "params":{"name":name,"arguments":arguments,"_meta":meta_members}});
    let headers = mcp_headers(&[
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", "tools/call"),
        ("Mcp-Name", name),
    ]);
    (headers, body.to_string().into_bytes())
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`), read to the end.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> HttpResponse {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the gateway");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {addr}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .expect("read the whole response");
    parse_response(&raw)
}

pub fn parse_response(raw: &[u8]) -> HttpResponse {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = raw.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&raw[..end])
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = end + 2;
        out.extend_from_slice(&raw[start..(start + size).min(raw.len())]);
        raw = &raw[(start + size + 2).min(raw.len())..];
    }
}

/// A POST whose SSE answer is read as it arrives.
pub struct SseReader {
    reader: BufReader<std::net::TcpStream>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl SseReader {
    /// POSTs `body` and reads the response head.
    pub fn post(addr: &str, headers: &[(&str, String)], body: &[u8]) -> Self {
        Self::open(addr, "POST", headers, body)
    }

    /// Opens the session's GET stream and reads the response head.
    pub fn get(addr: &str, headers: &[(&str, String)]) -> Self {
        Self::open(addr, "GET", headers, b"")
    }

    /// Sends `method /mcp` and reads the response head.
    pub fn open(addr: &str, method: &str, headers: &[(&str, String)], body: &[u8]) -> Self {
        Self::open_path(addr, method, "/mcp", headers, body)
    }

    /// Sends `method path` and reads the response head.
    pub fn open_path(
        addr: &str,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Self {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        stream.write_all(request.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        let mut headers = Vec::new();
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            if let Some((n, v)) = trimmed.split_once(':') {
                headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        Self {
            reader,
            status,
            headers,
        }
    }

    /// Reads one line into `line`: its length, 0 at the end of the stream (the connection
    /// closed, or reset). Nothing for [`WAIT`] fails the test: a stream that neither sends nor
    /// ends is never taken for one that ended.
    fn read_line(&mut self, line: &mut String) -> usize {
        match self.reader.read_line(line) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            Err(e) => panic!(
                "the SSE stream neither sent anything nor ended within {WAIT:?} ({e}); read so far: {line:?}"
            ),
        }
    }

    /// Reads the rest of the stream and asserts that it ends (the connection closes) within
    /// `within`, and returns the messages it carried before that.
    pub fn assert_ends_within(&mut self, within: Duration) -> Vec<Value> {
        let started = Instant::now();
        let mut messages = Vec::new();
        while let Some(message) = self.next_message() {
            messages.push(message);
        }
        assert!(
            started.elapsed() <= within,
            "the stream took {:?} to end, more than {within:?}",
            started.elapsed()
        );
        messages
    }

    /// The data of the next `endpoint` event (the 2024-11-05 transport's first event).
    pub fn next_endpoint(&mut self) -> Option<String> {
        let mut line = String::new();
        let mut endpoint = false;
        loop {
            line.clear();
            if self.read_line(&mut line) == 0 {
                return None;
            }
            let trimmed = line.trim_end();
            if trimmed == "event: endpoint" {
                endpoint = true;
            } else if let (true, Some(data)) = (endpoint, trimmed.strip_prefix("data:")) {
                return Some(data.trim().to_owned());
            }
        }
    }

    /// The next event's lines as they came (comments included), without the blank line that
    /// ends it; `None` at the end.
    pub fn next_block(&mut self) -> Option<String> {
        let mut block = String::new();
        let mut line = String::new();
        loop {
            line.clear();
            if self.read_line(&mut line) == 0 {
                return (!block.is_empty()).then_some(block);
            }
            if line.trim_end().is_empty() {
                if !block.is_empty() {
                    return Some(block);
                }
                continue;
            }
            // The body is chunked: skip the chunk-size lines (SSE lines end in a bare `\n`).
            let chunk_size =
                line.ends_with("\r\n") && line.trim_end().chars().all(|c| c.is_ascii_hexdigit());
            if !chunk_size {
                block.push_str(&line);
            }
        }
    }

    /// The next event that carries a message, as (its `id:`, the message); `None` at the end.
    pub fn next_event(&mut self) -> Option<(Option<String>, Value)> {
        let mut line = String::new();
        let mut id = None;
        loop {
            line.clear();
            if self.read_line(&mut line) == 0 {
                return None;
            }
            let trimmed = line.trim_end();
            if let Some(value) = trimmed.strip_prefix("id:") {
                id = Some(value.trim().to_owned());
            } else if let Some(data) = trimmed.strip_prefix("data:") {
                let data = data.trim_start();
                if !data.is_empty() {
                    return Some((id, serde_json::from_str(data).expect("SSE data is JSON")));
                }
            } else if trimmed.is_empty() {
                id = None;
            }
        }
    }

    /// The next JSON-RPC message on the stream (each event arrives as one chunk, so its
    /// `data:` line is whole); `None` at the end.
    pub fn next_message(&mut self) -> Option<Value> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.read_line(&mut line) == 0 {
                return None;
            }
            if let Some(data) = line.trim_end().strip_prefix("data:") {
                let data = data.trim_start();
                if !data.is_empty() {
                    return Some(serde_json::from_str(data).expect("SSE data is JSON"));
                }
            }
        }
    }
}

/// The first line `child` writes to its (piped) stdout, within [`WAIT`]: a peer that never
/// reports its port fails the test instead of hanging it. The rest of its stdout is drained.
pub fn first_line(child: &mut Child, what: &str) -> String {
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        // Keep reading, so the peer never blocks on a full pipe.
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    match rx.recv_timeout(WAIT) {
        Ok(line) if !line.is_empty() => line,
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} wrote no line to stdout within {WAIT:?}");
        }
    }
}

/// Waits for `child` to exit, at most `wait`; kills it and fails the test after that.
pub fn wait_within(child: &mut Child, wait: Duration) -> ExitStatus {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the process did not exit within {wait:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The HTTP fixture server on a free port.
pub struct HttpFixture {
    child: Child,
    /// Its MCP endpoint.
    pub url: String,
}

impl HttpFixture {
    /// Starts `examples/http_fixture` with `flags`.
    /// Starts it serving https (`--tls cert key`) at `https://localhost:PORT/mcp`.
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Self {
        let mut fixture = Self::start(&["--tls", cert.to_str().unwrap(), key.to_str().unwrap()]);
        fixture.url = fixture.url.replace("http://127.0.0.1", "https://localhost");
        fixture
    }

    pub fn start(flags: &[&str]) -> Self {
        let path = fixture().with_file_name("http_fixture");
        let mut child = Command::new(&path)
            .args(flags)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e} (cargo build --examples)", path.display()));
        let line = first_line(&mut child, "the HTTP fixture");
        let port: u16 = line.trim().strip_prefix("PORT ").unwrap().parse().unwrap();
        Self {
            child,
            url: format!("http://127.0.0.1:{port}/mcp"),
        }
    }
}

impl HttpFixture {
    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HttpFixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private CA and a certificate it issued for `localhost` and 127.0.0.1, written as PEM files
/// (`ca.pem`, `cert.pem`, `key.pem`) in `dir`.
pub fn private_ca(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let cert = params
        .signed_by(&key, &Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// The peak resident memory (VmHWM) of live process `pid`, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Pipelines `n` echo calls into `proxy` at once (written by another thread, so neither side's
/// pipe buffer can deadlock the test) and checks every id is answered exactly once with its own
/// payload. Returns the proxy's peak resident memory (VmHWM) in KiB, read before it exits.
pub fn pipeline_echoes(mut proxy: Proxy, n: i64) -> u64 {
    proxy.initialize();
    let mut stdin = Some(proxy.take_stdin());
    let mut batch = Vec::new();
    for id in 0..n {
        let msg = serde_json::json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":tool("echo", serde_json::json!({"text": format!("m{id}")}))});
        serde_json::to_writer(&mut batch, &msg).unwrap();
        batch.push(b'\n');
    }
    let writer = std::thread::spawn(move || {
        let mut stdin = stdin.take().unwrap();
        stdin.write_all(&batch).unwrap();
        stdin
    });
    let mut seen = std::collections::HashSet::new();
    for _ in 0..n {
        let answer = proxy.recv();
        let id = answer["id"].as_i64().unwrap_or_else(|| panic!("{answer}"));
        assert_eq!(
            answer["result"]["content"][0]["text"],
            format!("m{id}"),
            "{answer}"
        );
        assert!(seen.insert(id), "id {id} answered twice");
    }
    assert_eq!(seen.len(), n as usize);
    let peak_kib = peak_rss_kib(proxy.child.id());
    drop(writer.join().unwrap());
    assert!(proxy.wait_exit(WAIT).success(), "{}", proxy.stderr_text());
    peak_kib
}
