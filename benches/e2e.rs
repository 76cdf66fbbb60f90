//! End-to-end benchmark: round trips through `shadowcat forward stdio` against the fixture
//! server, compared in the same run with the fixture spawned directly.
//!
//! Measures, for 64 B and 64 KiB payloads (`tools/call echo`, the payload travels both ways):
//! - sequential latency, p50 and p99 (one request in flight),
//! - pipelined throughput with 64 requests in flight (best of three interleaved rounds),
//! - shadowcat's peak RSS (VmHWM).
//!
//! A fourth target, `shadowcat --record`, records every message to a tape: its throughput
//! against unrecorded shadowcat in the same run is the cost of recording. The tapes go to
//! `/dev/shm` where there is one: at 64 KiB the run writes about 4 GB of tape, past the
//! kernel's dirty-page limits, and on disk the ratio would measure the disk's writeback speed
//! (recording is lossless, so the proxy slows to it) instead of the recorder.
//!
//! A fifth target, `shadowcat --rules`, runs 100 interceptor rules that match nothing here:
//! 50 on tool names (so each `tools/call` has its tool's name read) and 50 on other methods.
//! Its throughput against shadowcat without rules is the cost of the rules stage.
//!
//! A sixth target, `shadowcat --otlp-endpoint`, makes two spans per call and exports them over
//! OTLP/HTTP to a sink in this process that accepts every batch: its throughput and CPU time per
//! call against shadowcat without tracing are the cost of tracing (the sink runs on its own
//! thread; its CPU is not counted). A seventh does the same with 1% of traces sampled: the
//! others still get their context written on, with spans that record nothing.
//!
//! Two more run the live view (`--ui-listen`): with no page open (the pipeline's cost is one
//! atomic load a message), and with Debian's Chromium (headless, `/usr/bin/chromium`, as
//! scripts/test.sh installs it) showing the page, whose feed carries every message: their
//! throughput, CPU per call and peak RSS against shadowcat without it. Chromium's own CPU is
//! not counted, but it shares the machine's two cores with everything else.
//!
//! The last, `shadowcat --traffic lines`, logs a line per message (to a log file beside the
//! tapes): its throughput, CPU per call and peak RSS against shadowcat without it are the cost
//! of leaving the traffic view on.
//!
//! A third target, `examples/line_relay.rs` (two blocking threads, no parsing), shows the floor:
//! what one more process in the chain costs on this machine whatever it does.
//!
//! Run: `cargo bench --bench e2e` (builds the fixture in release mode if needed). Set
//! `E2E_QUICK=1` for a short smoke run. The machine is shared and noisy: read the ratios
//! (proxy vs direct in the same run), not the absolute figures.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_types,
    clippy::print_stdout,
    missing_docs
)]

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const IN_FLIGHT: usize = 64;

struct Target {
    name: &'static str,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// A process that watches it (the browser showing its live view), stopped with it.
    watcher: Option<Child>,
}

fn fixture() -> PathBuf {
    let shadowcat = PathBuf::from(env!("CARGO_BIN_EXE_shadowcat"));
    let path = shadowcat.parent().unwrap().join("examples/fixture_server");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Always ask cargo: a no-op when the fixture is up to date, a rebuild when it is stale.
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--quiet",
            "--example",
            "fixture_server",
            // The floor target, beside it.
            "--example",
            "line_relay",
        ])
        .status()
        .expect("run cargo to build the fixture");
    assert!(
        status.success() && path.exists(),
        "could not build {}",
        path.display()
    );
    path
}

impl Target {
    fn spawn(name: &'static str, mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::with_capacity(1 << 20, child.stdout.take().unwrap());
        let mut target = Self {
            name,
            child,
            stdin,
            stdout,
            watcher: None,
        };
        target.round_trip(b"{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"initialize\",\"params\":{\"protocolVersion\":\"2025-06-18\",\"capabilities\":{},\"clientInfo\":{\"name\":\"bench\",\"version\":\"0\"}}}\n");
        target
            .stdin
            .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n")
            .unwrap();
        target
    }

    /// Sends one newline-terminated request (in one write, as a real client does) and reads
    /// its answer.
    fn round_trip(&mut self, request: &[u8]) -> usize {
        self.stdin.write_all(request).unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(
            line.contains("\"result\""),
            "{}: bad answer {:.200}",
            self.name,
            line
        );
        line.len()
    }

    /// CPU time the process has used (user and system): the sum of its live threads' run
    /// time in nanoseconds (`/proc/<pid>/task/*/schedstat`), or where the kernel does not keep
    /// it, the process's user and system ticks (`/proc/<pid>/stat`, 10 ms each).
    fn cpu(&self) -> Duration {
        let pid = self.child.id();
        let ns: u64 = std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
            .filter_map(|line| line.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        if ns > 0 {
            return Duration::from_nanos(ns);
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Fields after the command name (which may hold spaces) close with ')'.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // USER_HZ is 100 on Linux.
        Duration::from_millis(ticks * 10)
    }

    /// RSS high-water mark of the process, in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    fn stop(mut self) {
        if let Some(mut watcher) = self.watcher.take() {
            let _ = watcher.kill();
            let _ = watcher.wait();
        }
        drop(self.stdin);
        let _ = self.child.wait();
    }

    /// Opens its live view on `port` in headless Chromium, and waits until the page watches.
    fn watched(mut self, port: u16, profile: &std::path::Path) -> Self {
        let chromium = "/usr/bin/chromium";
        assert!(
            std::path::Path::new(chromium).exists(),
            "{chromium} is missing: scripts/test.sh installs Debian's chromium"
        );
        let browser = Command::new(chromium)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!("http://127.0.0.1:{port}/"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        self.watcher = Some(browser);
        let started = Instant::now();
        while ui_watchers(port) != Some(1) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the browser never opened the live view"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self
    }
}

/// How many pages watch the live view on `port` (`GET /api/stats`).
fn ui_watchers(port: u16) -> Option<u64> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        stream,
        "GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let body = answer.split("\r\n\r\n").nth(1)?;
    let stats: serde_json::Value = serde_json::from_str(body).ok()?;
    stats["watchers"].as_u64()
}

fn request(id: usize, text: &str) -> Vec<u8> {
    format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{text}"}}}}}}"#)
        .into_bytes()
        .into_iter()
        .chain(*b"\n")
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Sequential round trips against every target, alternating in blocks so that drift on the
/// shared machine hits all alike; returns (p50, p99) per target.
fn latency(targets: &mut [Target], text: &str, n: usize) -> Vec<(Duration, Duration)> {
    const BLOCK: usize = 50;
    let requests: Vec<Vec<u8>> = (1..=n).map(|id| request(id, text)).collect();
    let warm_up_blocks = (n / BLOCK / 10).max(1);
    let mut samples = vec![Vec::with_capacity(n); targets.len()];
    for (i, block) in requests.chunks(BLOCK).enumerate() {
        for (target, samples) in targets.iter_mut().zip(&mut samples) {
            for r in block {
                let start = Instant::now();
                target.round_trip(r);
                if i >= warm_up_blocks {
                    samples.push(start.elapsed());
                }
            }
        }
    }
    samples
        .iter_mut()
        .map(|s| {
            s.sort();
            (percentile(s, 0.50), percentile(s, 0.99))
        })
        .collect()
}

/// Pipelined round trips with `IN_FLIGHT` outstanding; returns messages per second.
fn throughput(target: &mut Target, text: &str, n: usize) -> f64 {
    let (credit_tx, credit_rx) = mpsc::sync_channel::<()>(IN_FLIGHT);
    let requests: Vec<Vec<u8>> = (1..=n).map(|id| request(id, text)).collect();
    let start = Instant::now();
    std::thread::scope(|scope| {
        let stdin = &mut target.stdin;
        scope.spawn(move || {
            for r in &requests {
                credit_tx.send(()).unwrap(); // blocks while IN_FLIGHT are outstanding
                stdin.write_all(r).unwrap();
            }
        });
        let mut line = String::new();
        for _ in 0..n {
            line.clear();
            target.stdout.read_line(&mut line).unwrap();
            assert!(line.contains("\"result\""), "bad answer {line:.200}");
            credit_rx.recv().unwrap();
        }
    });
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    // `cargo test --benches` runs benches without --bench; do a token run then.
    let quick =
        std::env::var_os("E2E_QUICK").is_some() || !std::env::args().any(|a| a == "--bench");
    let fixture = fixture();
    let examples = fixture.parent().unwrap().to_owned();
    let scale = if quick { 10 } else { 1 };
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "| payload | target | p50 | p99 | added p50 vs direct | pipelined msg/s | vs direct |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut rss_rows = Vec::new();
    let mut recording_rows = Vec::new();
    let mut rules_rows = Vec::new();
    let mut tracing_rows = Vec::new();
    let mut ui_rows = Vec::new();
    let profile = tempfile::tempdir().unwrap();
    let rules_file = data_dir_rules();
    let sink = otlp_sink();
    // shadowcat keeps session history (SQLite) by default; keep the bench's out of the user's.
    let data_dir = tempfile::tempdir().unwrap();
    for (payload, text, seq_n, pipe_n) in [
        ("64 B", "a".repeat(64), 20_000 / scale, 100_000 / scale),
        (
            "64 KiB",
            "b".repeat(64 * 1024),
            2_000 / scale,
            10_000 / scale,
        ),
    ] {
        let tapes = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .unwrap();
        let mut targets = spawn_targets(
            &fixture,
            &examples,
            data_dir.path(),
            tapes.path(),
            rules_file.path(),
            &sink,
            profile.path(),
        );
        let latencies = latency(&mut targets, &text, seq_n);
        // Best of three rounds, the targets taking turns: drift on the machine hits all alike.
        let mut rates = vec![0.0_f64; targets.len()];
        for _ in 0..3 {
            for (rate, target) in rates.iter_mut().zip(targets.iter_mut()) {
                *rate = rate.max(throughput(target, &text, pipe_n));
            }
        }
        rss_rows.push((
            payload,
            targets[1].peak_rss_kib(),
            targets[2].peak_rss_kib(),
        ));
        for (i, target) in targets.iter().enumerate() {
            let (p50, p99) = latencies[i];
            println!(
                "| {payload} | {} | {:.1} µs | {:.1} µs | {:+.1} µs | {:.0} | {:.0}% |",
                target.name,
                us(p50),
                us(p99),
                us(p50) - us(latencies[0].0),
                rates[i],
                100.0 * rates[i] / rates[0]
            );
        }
        recording_rows.push((payload, 100.0 * rates[3] / rates[1]));
        rules_rows.push((payload, 100.0 * rates[4] / rates[1]));
        // Every target carried the same calls: CPU per call, traced against untraced.
        let calls = (seq_n + 3 * pipe_n) as f64;
        let per_call = |t: &Target| us(t.cpu()) / calls;
        for (sampled, i) in [("all", 5), ("1%", 6)] {
            tracing_rows.push((
                payload,
                sampled,
                100.0 * rates[i] / rates[1],
                per_call(&targets[1]),
                per_call(&targets[i]),
            ));
        }
        for i in [7, 8, 9] {
            ui_rows.push((
                payload,
                targets[i].name,
                100.0 * rates[i] / rates[1],
                per_call(&targets[i]),
                per_call(&targets[1]),
                targets[i].peak_rss_kib(),
                targets[1].peak_rss_kib(),
            ));
        }
        for target in targets {
            target.stop();
        }
    }
    report(
        &recording_rows,
        &rules_rows,
        &tracing_rows,
        &ui_rows,
        &rss_rows,
    );
}

/// The tables after the first: each cost as a ratio, then peak RSS, then the targets.
fn report(
    recording_rows: &[(&str, f64)],
    rules_rows: &[(&str, f64)],
    tracing_rows: &[(&str, &str, f64, f64, f64)],
    ui_rows: &[UiRow<'_>],
    rss_rows: &[(&str, u64, u64)],
) {
    ratio_table(
        &format!(
            "pipelined throughput with --record vs without (tapes in {})",
            tapes_dir_kind()
        ),
        recording_rows,
    );
    ratio_table(
        "pipelined throughput with 100 non-matching rules vs without",
        rules_rows,
    );
    tracing_table(tracing_rows);
    ui_table(ui_rows);
    rss_table(rss_rows);
    println!(
        "targets: added p50 <= 25 µs; pipelined >= 40% of direct; RSS <= 15 MiB; recording >= 90% of unrecorded; 100 rules >= 90% of none; tracing >= 90% of untraced at 64 B; live view closed: no change"
    );
}

/// Where the tapes of `--record` go.
fn tapes_dir_kind() -> &'static str {
    if std::path::Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "the temp dir"
    }
}

/// An OTLP/HTTP endpoint that accepts every export and keeps nothing: a collector that keeps
/// up. Its URL.
fn otlp_sink() -> String {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                loop {
                    let mut length = 0usize;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let line = line.trim_end();
                        if line.is_empty() {
                            break;
                        }
                        if let Some((name, value)) = line.split_once(':') {
                            if name.eq_ignore_ascii_case("content-length") {
                                length = value.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if reader.get_mut().write_all(answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://127.0.0.1:{port}")
}

/// The targets, in the order the tables read them: direct, shadowcat, line_relay, --record,
/// --rules, --otlp-endpoint, --otlp-endpoint at 1%, --ui-listen with no page open, with a
/// browser showing it (its profile in `profile`), and --traffic lines.
fn spawn_targets(
    fixture: &std::path::Path,
    examples: &std::path::Path,
    data_dir: &std::path::Path,
    tapes: &std::path::Path,
    rules: &std::path::Path,
    sink: &str,
    profile: &std::path::Path,
) -> Vec<Target> {
    let proxy = |extra: &[&std::ffi::OsStr]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shadowcat"));
        cmd.env("SHADOWCAT_DATA_DIR", data_dir)
            .args(["--log-level", "warn", "forward", "stdio"])
            .args(extra)
            .arg("--")
            .arg(fixture);
        cmd
    };
    let ui_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut relay = Command::new(examples.join("line_relay"));
    relay.arg(fixture);
    vec![
        Target::spawn("direct", Command::new(fixture)),
        Target::spawn("shadowcat", proxy(&[])),
        Target::spawn("line_relay", relay),
        Target::spawn(
            "shadowcat --record",
            proxy(&["--record".as_ref(), tapes.as_os_str()]),
        ),
        Target::spawn(
            "shadowcat --rules (100)",
            proxy(&["--rules".as_ref(), rules.as_os_str()]),
        ),
        Target::spawn(
            "shadowcat --otlp-endpoint",
            proxy(&["--otlp-endpoint".as_ref(), sink.as_ref()]),
        ),
        Target::spawn(
            "shadowcat --otlp-endpoint (1% sampled)",
            proxy(&[
                "--otlp-endpoint".as_ref(),
                sink.as_ref(),
                "--trace-sample-ratio".as_ref(),
                "0.01".as_ref(),
            ]),
        ),
        Target::spawn(
            "shadowcat --ui-listen (no page open)",
            proxy(&["--ui-listen".as_ref(), "127.0.0.1:0".as_ref()]),
        ),
        Target::spawn(
            "shadowcat --ui-listen (Chromium watching)",
            proxy(&[
                "--ui-listen".as_ref(),
                format!("127.0.0.1:{ui_port}").as_ref(),
            ]),
        )
        .watched(ui_port, profile),
        Target::spawn(
            "shadowcat --traffic lines (to a log file)",
            proxy(&[
                "--traffic".as_ref(),
                "lines".as_ref(),
                // A global option, after the mode's: clap takes it anywhere.
                "--log-file".as_ref(),
                tapes.join("traffic.log").as_os_str(),
            ]),
        ),
    ]
}

/// The live view's cost: throughput against shadowcat without it, CPU per call and peak RSS.
/// A live-view row: payload, target, throughput ratio, CPU per call with and without, peak RSS
/// with and without.
type UiRow<'a> = (&'a str, &'a str, f64, f64, f64, u64, u64);

fn ui_table(rows: &[UiRow<'_>]) {
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "\n| payload | target | pipelined throughput vs without | CPU per call | without | peak RSS | without |\n|---|---|---|---|---|---|---|"
    );
    for (payload, name, ratio, on, off, rss, rss_off) in rows {
        println!(
            "| {payload} | {name} | {ratio:.0}% | {on:.2} µs | {off:.2} µs | {:.1} MiB | {:.1} MiB |",
            mib(*rss),
            mib(*rss_off)
        );
    }
}

/// Per payload and share of traces sampled: throughput and CPU per call, traced vs untraced.
fn tracing_table(rows: &[(&str, &str, f64, f64, f64)]) {
    println!(
        "\n| payload | traces sampled | pipelined throughput, tracing on vs off | CPU per call off | CPU per call on | added |\n|---|---|---|---|---|---|"
    );
    for (payload, sampled, ratio, off, on) in rows {
        println!(
            "| {payload} | {sampled} | {ratio:.0}% | {off:.2} µs | {on:.2} µs | {:+.0}% |",
            100.0 * (on - off) / off
        );
    }
}

fn rss_table(rows: &[(&str, u64, u64)]) {
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!("\n| payload | shadowcat peak RSS (VmHWM) | line_relay peak RSS |\n|---|---|---|");
    for (payload, proxy, relay) in rows {
        println!(
            "| {payload} | {:.1} MiB | {:.1} MiB |",
            mib(*proxy),
            mib(*relay)
        );
    }
}

fn ratio_table(title: &str, rows: &[(&str, f64)]) {
    println!("\n| payload | {title} |\n|---|---|");
    for (payload, ratio) in rows {
        println!("| {payload} | {ratio:.0}% |");
    }
}

/// 100 rules that match none of the bench's messages: 50 on tool names, 50 on methods.
fn data_dir_rules() -> tempfile::NamedTempFile {
    let mut yaml = String::from("version: 1\nrules:\n");
    for i in 0..50 {
        writeln!(
            yaml,
            "  - name: tool-{i}\n    match: {{tool: 'admin_{i}_*'}}\n    block: {{}}"
        )
        .unwrap();
        writeln!(
            yaml,
            "  - name: method-{i}\n    match: {{method: 'prompts/x{i}'}}\n    log: info"
        )
        .unwrap();
    }
    let file = tempfile::NamedTempFile::with_suffix(".yaml").unwrap();
    std::fs::write(file.path(), yaml).unwrap();
    file
}
