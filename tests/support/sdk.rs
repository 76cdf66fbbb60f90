//! Real MCP SDK peers for the tests: Python SDK servers over HTTP, and the scripted SDK client
//! (tests/peers/sdk_client.py), whose one-line summary of a session must be the same whatever
//! sits in between.

use std::process::{Child, Command, Stdio};

use super::{peers, python};

/// The Python server peer for `sdk` ("2.3.0" or "1.30.0").
pub fn server_script(sdk: &str) -> String {
    let file = if sdk == "2.3.0" {
        "sdk_server_v2.py"
    } else {
        "sdk_server_v1.py"
    };
    peers().join(file).display().to_string()
}

/// A Python SDK server serving Streamable HTTP on a free port.
pub struct HttpServer {
    child: Child,
    /// Its MCP endpoint.
    pub url: String,
}

impl HttpServer {
    /// Starts the `sdk` server with `flags` (`--stateless`, `--json`, `--legacy-sse`).
    pub fn start(sdk: &str, flags: &[&str]) -> Self {
        Self::start_script(sdk, &server_script(sdk), flags)
    }

    /// Starts the peer `script` (on the `sdk` venv's Python) serving HTTP, with `flags`.
    pub fn start_script(sdk: &str, script: &str, flags: &[&str]) -> Self {
        let mut child = Command::new(python(sdk))
            .arg(script)
            .arg("--http")
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // Its disconnect chatter ("Error in standalone SSE writer") is noise here.
            .stderr(Stdio::null())
            .spawn()
            .expect("start the SDK server");
        let line = super::first_line(&mut child, "the SDK server");
        let port = line
            .strip_prefix("PORT ")
            .and_then(|p| p.trim().parse::<u16>().ok())
            .unwrap_or_else(|| panic!("the SDK server did not report its port: {line:?}"));
        Self {
            child,
            url: format!("http://127.0.0.1:{port}/mcp"),
        }
    }
}

impl HttpServer {
    /// The port it listens on (to start another on the same one, as a restart would).
    pub fn port(&self) -> String {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.split('/').next())
            .expect("a port in the URL")
            .to_owned()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a client connects.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    Url(&'a str),
    /// The 2024-11-05 HTTP+SSE transport (mcp 1.x clients).
    Sse(&'a str),
    Stdio(&'a [String]),
}

pub fn run_client(sdk: &str, mode: Option<&str>, target: Target<'_>, sampling: bool) -> String {
    let mut cmd = Command::new(python(sdk));
    // It may start shadowcat (`Target::Stdio`), which inherits this.
    super::hermetic(&mut cmd);
    cmd.arg(peers().join("sdk_client.py"));
    if let Some(mode) = mode {
        cmd.args(["--mode", mode]);
    }
    cmd.args(["--timeout", "60"]);
    if !sampling {
        cmd.arg("--no-sampling");
    }
    match target {
        Target::Url(url) => {
            cmd.args(["--url", url]);
        }
        Target::Sse(url) => {
            cmd.args(["--sse-url", url]);
        }
        Target::Stdio(command) => {
            cmd.arg("--").args(command);
        }
    }
    let output = cmd.output().expect("run the SDK client");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "client {sdk} {mode:?} failed: {}\n{stderr}",
        output.status
    );
    String::from_utf8(output.stdout).expect("utf-8 summary")
}

/// Progress (on the call's stream) and a log message (on the session's GET stream, when the
/// upstream is a child) reached the client.
pub fn check_progress_and_logs(summary: &str) {
    let value: serde_json::Value = serde_json::from_str(summary).expect("summary is JSON");
    let work = &value["calls"]["work"];
    assert_eq!(
        work["progress"],
        serde_json::json!([[1.0, 3.0], [2.0, 3.0], [3.0, 3.0]]),
        "progress: {summary}"
    );
    assert_eq!(
        work["logs"],
        serde_json::json!(["worked 3 steps"]),
        "logs: {summary}"
    );
}

/// The elicitation round trip happened, and (handshake era) the list-changed notification the
/// `grow` tool sends, tied to no request, reached the client: through the gateway, on the
/// session's GET stream.
pub fn check_elicitation_and_list_changed(summary: &str) {
    let value: serde_json::Value = serde_json::from_str(summary).expect("summary is JSON");
    assert_eq!(
        value["calls"]["confirm"]["content"][0]["text"],
        "the thing: confirmed=True, note=from client",
        "the elicitation round trip: {summary}"
    );
    if value["protocolVersion"] != "2026-07-28" {
        assert_eq!(
            value["calls"]["grow"]["listChanged"],
            serde_json::json!(["notifications/tools/list_changed"]),
            "list-changed: {summary}"
        );
    }
}

pub fn check_summary(summary: &str, sampling: bool) {
    let value: serde_json::Value = serde_json::from_str(summary).expect("summary is JSON");
    assert!(
        value["tools"].as_array().is_some_and(|t| !t.is_empty()),
        "no tools listed: {summary}"
    );
    assert!(
        value["calls"]["echo"].is_object(),
        "echo was not called: {summary}"
    );
    if sampling {
        assert_eq!(
            value["calls"]["ask"]["content"][0]["text"], "42 (from client)",
            "the sampling round trip: {summary}"
        );
    }
}

/// Drives tests/peers/restart_client.py (`client`, spawned with piped stdio): waits for its
/// first call, SIGKILLs the server process `server()` names, waits until `restarted` (given
/// the client's stderr so far, where a `forward stdio` proxy's log goes) says a new one took
/// over, lets the client make its second call, and returns the client's two
/// reports (`ready`, `after`) once it exited successfully.
#[allow(dead_code)]
pub fn kill_between_calls(
    mut client: Child,
    server: impl FnOnce(&Child) -> i32,
    restarted: impl Fn(&str) -> bool,
    log: impl Fn() -> String,
) -> (serde_json::Value, serde_json::Value) {
    use std::io::{BufRead as _, BufReader, Write as _};
    let stderr = super::Stderr::read(client.stderr.take().unwrap(), |_| {});
    let mut stdout = BufReader::new(client.stdout.take().unwrap());
    let mut report = || {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        serde_json::from_str::<serde_json::Value>(&line)
            .unwrap_or_else(|_| panic!("{line}\n{}\n{}", stderr.text(), log()))
    };
    let ready = report();
    assert_eq!(ready["text"], "before", "{ready}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server(&client)),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !restarted(&stderr.text()) {
        assert!(
            std::time::Instant::now() < deadline,
            "not restarted:\n{}\n{}",
            stderr.text(),
            log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    client.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let after = report();
    assert_eq!(after["isError"], false, "{after}\n{}", log());
    assert_eq!(after["text"], "after");
    drop(client.stdin.take());
    assert!(client.wait().unwrap().success(), "{}", stderr.text());
    (ready, after)
}
