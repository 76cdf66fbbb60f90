//! Shared helpers for integration tests: run the real `shadowcat` binary over real pipes.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The shadowcat binary under test.
pub fn shadowcat() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shadowcat"))
}

/// A `Command` for the shadowcat binary that keeps no session history (tests must not write to
/// the user's data dir; the persistence tests choose their own `--data-dir`).
pub fn command() -> Command {
    let mut cmd = Command::new(shadowcat());
    cmd.env("SHADOWCAT_SESSION_STORE", "memory");
    cmd
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

/// A running `shadowcat forward stdio` with its stdio in our hands.
pub struct Proxy {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

/// Default wait for one message.
pub const WAIT: Duration = Duration::from_secs(10);

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
        let (etx, stderr_lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = etx.send(line);
            }
        });
        Self {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr: stderr_lines,
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

    /// Waits for the proxy to exit, at most `wait`.
    pub fn wait_exit(&mut self, wait: Duration) -> ExitStatus {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
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

    /// Everything shadowcat (and the server) wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.try_iter().collect::<Vec<_>>().join("\n")
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
        if fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string() {
            pids.push(pid);
        }
    }
    pids
}

/// Tool-call params.
pub fn tool(name: &str, arguments: Value) -> Value {
    serde_json::json!({"name": name, "arguments": arguments})
}
