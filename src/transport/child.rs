//! The upstream MCP server as a child process.
//!
//! The child runs in its own process group, so a shutdown signal reaches everything it started
//! (`npx` → `node`, `sh -c` → the server) and no orphan survives us. Its stderr is always drained:
//! passed on to ours through a bounded queue (dropped, and said so, when ours is not read, so a
//! chatty child never blocks), with the last lines kept to explain a crash to the client. Shutdown
//! follows the MCP stdio rules: close its stdin, wait, SIGTERM, wait, SIGKILL. Each group is
//! listed with the [`super::reaper`] while it is ours, so not even a SIGKILL of shadowcat leaves it
//! running.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt as _};
use tokio::process::{ChildStderr, ChildStdin, ChildStdout, Command};

/// How many of the child's last stderr lines are kept for error reports.
pub const STDERR_TAIL_LINES: usize = 20;
/// Longest stderr line kept (longer ones are cut), in bytes.
const STDERR_LINE_MAX: usize = 1024;
pub use super::KILL_GRACE;

/// What to run.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    /// The program.
    pub program: OsString,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Extra environment, on top of ours.
    pub env: Vec<(OsString, OsString)>,
    /// Working directory; ours when `None`.
    pub cwd: Option<PathBuf>,
}

/// When a server command that exits is started again (`--restart`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    /// Never: its session ends with it.
    #[default]
    Never,
    /// When it exits with a failure (a non-zero status, a signal) or closes its stdout.
    OnFailure,
}

/// Which requests of `reverse -- <cmd>` share a server process (`--share`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Share {
    /// None: each session has a process of its own, and so has each stateless request.
    Never,
    /// Stateless (2026-07-28) requests share one; each session has its own.
    #[default]
    Stateless,
    /// Sessions too: up to `--max-sessions-per-child` sessions per process, their ids,
    /// progress tokens and subscriptions kept apart.
    Always,
}

/// Counters of a command upstream's server processes, for `/metrics` (the pool and the
/// gateway change them; telemetry reads them).
#[derive(Debug, Default)]
pub struct ChildCounters {
    /// Started, waiting for a session.
    pub idle: std::sync::atomic::AtomicU64,
    /// Serving a session.
    pub busy: std::sync::atomic::AtomicU64,
    /// Being started.
    pub spawning: std::sync::atomic::AtomicU64,
    /// Processes started.
    pub spawns: std::sync::atomic::AtomicU64,
    /// Starts that failed.
    pub spawn_failures: std::sync::atomic::AtomicU64,
    /// Spares found dead (exited, or stdout closed) before any session used them.
    pub dead_spares: std::sync::atomic::AtomicU64,
    /// Sessions that had to wait for a process (none spare).
    pub waits: std::sync::atomic::AtomicU64,
    /// Sessions that waited past `--pool-acquire-timeout`.
    pub timeouts: std::sync::atomic::AtomicU64,
    /// Messages of a shared server that could be tied to no one session: notifications
    /// dropped, requests refused.
    pub unattributed: std::sync::atomic::AtomicU64,
    /// Server processes that failed and were started again (`--restart on-failure`).
    pub restarts: std::sync::atomic::AtomicU64,
    /// Shared server processes crashing in a loop now (`--restart on-failure`).
    pub crash_looping: std::sync::atomic::AtomicU64,
}

/// A running child with its pipes taken apart.
#[derive(Debug)]
pub struct ChildProcess {
    child: tokio::process::Child,
    pgid: Option<Pid>,
    /// Its stdin (our writes go here).
    pub stdin: Option<ChildStdin>,
    /// Its stdout (its messages come from here).
    pub stdout: Option<ChildStdout>,
    stderr_tail: StderrTail,
    stderr_task: Option<tokio::task::JoinHandle<()>>,
}

/// The last lines the child wrote to stderr, shared with the task that copies them.
#[derive(Debug, Clone, Default)]
pub struct StderrTail(Arc<Mutex<VecDeque<String>>>);

impl StderrTail {
    fn push(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(&line[..line.len().min(STDERR_LINE_MAX)]);
        let text = text.trim_end().to_owned();
        // A poisoned lock only means a copier panicked mid-push; the queue is still usable.
        let mut lines = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if lines.len() == STDERR_TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(text);
    }

    /// The kept lines, oldest first.
    pub fn lines(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }
}

impl ChildProcess {
    /// Spawns the child with piped stdio in a new process group, and starts copying its stderr.
    pub fn spawn(spec: &ChildSpec) -> std::io::Result<Self> {
        let mut command = Command::new(&spec.program);
        command
            .args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(cwd) = &spec.cwd {
            command.current_dir(cwd);
        }
        let mut child = command.spawn()?;
        let pgid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw);
        if let Some(pgid) = pgid {
            super::reaper::register(pgid.as_raw());
        }
        if let Some(stdin) = &child.stdin {
            super::stdio::grow_pipe(stdin);
        }
        if let Some(stdout) = &child.stdout {
            super::stdio::grow_pipe(stdout);
        }
        let stderr_tail = StderrTail::default();
        let stderr_task = child
            .stderr
            .take()
            .map(|stderr| tokio::spawn(copy_stderr(stderr, stderr_tail.clone())));
        Ok(Self {
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            child,
            pgid,
            stderr_tail,
            stderr_task,
        })
    }

    /// The child's process id (also its process group id).
    pub fn pid(&self) -> Option<u32> {
        self.pgid.map(|p| p.as_raw().unsigned_abs())
    }

    /// The child's recent stderr.
    pub fn stderr_tail(&self) -> StderrTail {
        self.stderr_tail.clone()
    }

    /// Lets the stderr copier finish what the child wrote before it exited, for at most `grace`
    /// (a grandchild may hold the pipe open), then stops it.
    pub async fn finish_stderr(&mut self, grace: Duration) {
        if let Some(mut task) = self.stderr_task.take() {
            if tokio::time::timeout(grace, &mut task).await.is_err() {
                task.abort();
            }
        }
    }

    /// How the child ended, if it has (without waiting).
    pub fn try_exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for the child to exit by itself.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Shuts the child down: its stdin must already be closed (or is closed now); waits up to
    /// `timeout`, then SIGTERMs the process group and waits [`KILL_GRACE`], then SIGKILLs it.
    /// Whatever else is left in the group is killed at the end.
    pub async fn shutdown(&mut self, timeout: Duration) -> std::io::Result<ExitStatus> {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.shutdown().await;
        }
        let status = if let Ok(status) = tokio::time::timeout(timeout, self.child.wait()).await {
            status?
        } else {
            tracing::warn!(
                ?timeout,
                "server did not exit after its stdin closed; sending SIGTERM"
            );
            self.signal_group(Signal::SIGTERM);
            if let Ok(status) = tokio::time::timeout(KILL_GRACE, self.child.wait()).await {
                status?
            } else {
                tracing::warn!(grace = ?KILL_GRACE, "server ignored SIGTERM; sending SIGKILL");
                self.signal_group(Signal::SIGKILL);
                self.child.wait().await?
            }
        };
        self.release_group();
        Ok(status)
    }

    /// Kills the whole process group now and waits for the child.
    pub async fn kill(&mut self) -> std::io::Result<ExitStatus> {
        self.signal_group(Signal::SIGKILL);
        let status = self.child.wait().await;
        self.stdin.take();
        self.release_group();
        status
    }

    /// Kills whatever is left in the child's process group (its leader may be gone already).
    pub fn kill_stragglers(&self) {
        self.signal_group(Signal::SIGKILL);
    }

    /// Kills what is left of the group and forgets it: after this it is nobody's to signal.
    fn release_group(&mut self) {
        self.kill_stragglers();
        if let Some(pgid) = self.pgid.take() {
            super::reaper::release(pgid.as_raw());
        }
    }

    fn signal_group(&self, signal: Signal) {
        if let Some(pgid) = self.pgid {
            // ESRCH (nothing left in the group) is the normal case after a clean exit.
            if let Err(e) = killpg(pgid, signal) {
                if e != nix::errno::Errno::ESRCH {
                    tracing::warn!(%e, ?signal, "could not signal the server's process group");
                }
            }
        }
    }
}

/// A child dropped without a shutdown takes its whole group with it (the leader alone would be
/// killed by `kill_on_drop`), so nothing it started is left behind.
impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.release_group();
    }
}

/// How a process took one request written straight to its stdin ([`exchange`]).
#[derive(Debug)]
pub enum Exchanged {
    /// It answered: the answer (a result or an error).
    Answered(serde_json::Value),
    /// It said nothing in time (or only other things, up to the bound).
    Silent,
    /// It closed its stdout, or its stdin (it ended).
    Ended(String),
}

/// Writes `request` (one line, with `id`) to a process no link moves the bytes of yet, and
/// waits until `deadline` for its answer, which is returned rather than passed on. Anything
/// else it writes first is appended to `stray` (up to `stray_max` bytes), for whoever reads
/// the process next: it is its output.
pub async fn exchange(
    child: &mut ChildProcess,
    stdout: &mut ChildStdout,
    request: &[u8],
    id: &serde_json::Value,
    deadline: tokio::time::Instant,
    stray: &mut Vec<u8>,
    stray_max: usize,
) -> Exchanged {
    use tokio::io::AsyncBufReadExt as _;
    let Some(stdin) = child.stdin.as_mut() else {
        return Exchanged::Ended("its stdin is not ours".into());
    };
    let written = async {
        stdin.write_all(request).await?;
        stdin.write_all(b"\n").await?;
        stdin.flush().await
    };
    if let Err(e) = written.await {
        return Exchanged::Ended(format!("writing to its stdin failed: {e}"));
    }
    let mut reader = tokio::io::BufReader::new(stdout);
    let mut line = Vec::new();
    let outcome = loop {
        line.clear();
        let room = stray_max.saturating_sub(stray.len()).max(1) as u64;
        let mut bounded = (&mut reader).take(room);
        let read = bounded.read_until(b'\n', &mut line);
        match tokio::time::timeout_at(deadline, read).await {
            Err(_) => {
                // A line cut short by the deadline is output too.
                stray.extend_from_slice(&line);
                break Exchanged::Silent;
            }
            Ok(Ok(0)) => break Exchanged::Ended("its stdout closed".into()),
            Ok(Err(e)) => break Exchanged::Ended(format!("reading its stdout failed: {e}")),
            Ok(Ok(_)) => {
                if let Some(answer) = answer_to(&line, id) {
                    break Exchanged::Answered(answer);
                }
                stray.extend_from_slice(&line);
                if stray.len() >= stray_max {
                    break Exchanged::Silent;
                }
            }
        }
    };
    // What was read past the answer is the process's output too.
    stray.extend_from_slice(reader.buffer());
    outcome
}

/// `line` as the answer to the request `id`, if it is one.
fn answer_to(line: &[u8], id: &serde_json::Value) -> Option<serde_json::Value> {
    let message = serde_json::from_slice::<serde_json::Value>(line).ok()?;
    let answers = message.get("id") == Some(id)
        && (message.get("result").is_some() || message.get("error").is_some());
    answers.then_some(message)
}

/// Chunks of children's stderr waiting for our stderr (at most this many, 8 KiB each). A
/// child's stderr is drained whatever happens to ours: when ours is not read and this fills,
/// the passthrough drops output (the tail is still kept) rather than block the child.
const PASSTHROUGH_CHUNKS: usize = 256;

/// Whether children's stderr goes to the log (a `--log-file`) instead of ours, line by line.
static STDERR_TO_LOG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on children's stderr lines are logged (at info, `server: <line>`) instead of
/// copied to our stderr: the log is a file (`--log-file`), read where ours may be hidden.
pub fn log_stderr() {
    STDERR_TO_LOG.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Children's stderr bytes dropped because our stderr was not keeping up.
static PASSTHROUGH_DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Where children's stderr goes: a thread that writes to ours, fed through a bounded queue.
fn passthrough() -> Option<&'static std::sync::mpsc::SyncSender<Vec<u8>>> {
    static SINK: std::sync::OnceLock<Option<std::sync::mpsc::SyncSender<Vec<u8>>>> =
        std::sync::OnceLock::new();
    SINK.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(PASSTHROUGH_CHUNKS);
        let spawned = std::thread::Builder::new()
            .name("shadowcat-child-stderr".into())
            .spawn(move || {
                use std::io::Write as _;
                let mut out = std::io::stderr();
                let mut reported = 0;
                for chunk in rx {
                    let dropped = PASSTHROUGH_DROPPED.load(std::sync::atomic::Ordering::Relaxed);
                    if dropped > reported {
                        let _ = writeln!(
                            out,
                            "[shadowcat: {} bytes of the server's stderr were dropped: ours was not read]",
                            dropped - reported
                        );
                        reported = dropped;
                    }
                    let _ = out.write_all(&chunk);
                }
            });
        spawned.ok().map(|_| tx)
    })
    .as_ref()
}

/// Drains the child's stderr, passing it on to ours (never blocking on ours) and keeping the
/// last lines.
async fn copy_stderr(mut stderr: ChildStderr, tail: StderrTail) {
    let to_log = STDERR_TO_LOG.load(std::sync::atomic::Ordering::Relaxed);
    let out = if to_log { None } else { passthrough() };
    let mut chunk = vec![0u8; 8192];
    // The line being assembled for the tail; capped, so a server that never writes a newline
    // (progress bars with `\r`) can't grow it. The copy to our stderr is not line-bound.
    let mut line = Vec::with_capacity(256);
    loop {
        let n = match stderr.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(out) = out {
            if out.try_send(chunk[..n].to_vec()).is_err() {
                PASSTHROUGH_DROPPED.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }
        for piece in chunk[..n].split_inclusive(|&b| b == b'\n') {
            let room = STDERR_LINE_MAX.saturating_sub(line.len());
            line.extend_from_slice(&piece[..piece.len().min(room)]);
            if piece.ends_with(b"\n") {
                if to_log {
                    log_line(&line);
                }
                tail.push(&line);
                line.clear();
            }
        }
    }
    if !line.is_empty() {
        if to_log {
            log_line(&line);
        }
        tail.push(&line);
    }
}

/// One line of a child's stderr, logged.
fn log_line(line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    tracing::info!("server: {}", text.trim_end());
}

/// A short description of how a process ended, e.g. `exit status 3` or `signal 9 (SIGKILL)`.
pub fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(name) => format!("signal {sig} ({name})"),
            Err(_) => format!("signal {sig}"),
        },
        (None, None) => "an unknown status".to_owned(),
    }
}

/// The exit code that reports `status` to our own parent: the child's code, or 128 + signal.
pub fn exit_code_of(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(1),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(1),
        (None, None) => 1,
    }
}
