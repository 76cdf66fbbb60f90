//! End-to-end HTTP benchmark: `shadowcat reverse` in front of the HTTP fixture server
//! (examples/http_fixture.rs), compared in the same run with the fixture reached directly.
//!
//! Measures (`tools/call echo` with a 64-byte text, JSON answers, keep-alive connections):
//! - latency at concurrency 1, p50 and p99, direct and proxied requests interleaved, with a third
//!   target, `examples/tcp_relay.rs` (a byte-copying TCP relay, no parsing): the floor that any
//!   extra process in the chain pays on this machine;
//!   and a fourth, the gateway with `--auth-issuer` (every request with the RS256 token of
//!   `benches/auth-fixture.json`): what checking a client's token adds;
//! - throughput at concurrency 16 (16 sessions, one connection each);
//! - SSE relay throughput: one `tools/call` answered with a stream of progress notifications
//!   (100-byte messages), events per second received by the client, direct and through the
//!   gateway (upstream SSE decoded, every event through the pipeline, the router and the POST
//!   stream's resumable log);
//! - the gateway's RSS with 1,000 idle sessions (and before them);
//! - a cluster (`cargo bench --bench http -- cluster` runs only this): HAProxy in front of one
//!   gateway without a cluster key, one with (every request's sealed id opened), and three with
//!   (round-robin, each session adopted by every instance), and three with a rate limit that
//!   never refuses, kept by each instance or shared in Redis (`--redis-url`: one Redis round
//!   trip per request): latency at concurrency 1 and throughput at 16, beside the fixture
//!   reached directly (needs Debian's haproxy and redis-server); and sessions at a process (the
//!   stdio fixture) at one instance and spread over three, two requests in three passed to the
//!   instance that runs the session's process.
//!
//! Run: `cargo bench --bench http` (builds the fixture in release mode if needed). Set
//! `E2E_QUICK=1` for a short smoke run, `SHADOWCAT_BENCH_BIN` to measure another build's binary. The machine is shared and noisy: read the ratios (proxy
//! vs direct in the same run), not the absolute figures.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_types,
    clippy::print_stdout,
    missing_docs
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../tests/support/balancer.rs"]
mod balancer;
#[path = "../tests/support/redis.rs"]
mod redis;

fn fixture() -> PathBuf {
    let shadowcat = PathBuf::from(env!("CARGO_BIN_EXE_shadowcat"));
    let path = shadowcat.parent().unwrap().join("examples/http_fixture");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--quiet",
            "--example",
            "http_fixture",
            "--example",
            "tcp_relay",
            "--example",
            "fixture_server",
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

/// A keep-alive HTTP/1.1 connection speaking MCP to one endpoint, with its own session.
struct Client {
    addr: String,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    session: Option<String>,
    next_id: u64,
    /// `Authorization` value sent with every request (a gateway with `--auth-issuer`).
    bearer: Option<String>,
}

impl Client {
    fn connect(addr: &str) -> Self {
        Self::connect_with(addr, None)
    }

    /// [`Self::connect`], presenting `token` with every request.
    fn connect_with(addr: &str, token: Option<&str>) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut client = Self {
            addr: addr.to_owned(),
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            session: None,
            next_id: 1,
            bearer: token.map(|t| format!("Bearer {t}")),
        };
        let (session, _) = client.post(
            br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"0"}}}"#,
        );
        client.session = session;
        client.post(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        client
    }

    /// One POST; returns the `Mcp-Session-Id` it carried and the body length.
    fn post(&mut self, body: &[u8]) -> (Option<String>, usize) {
        let mut head = format!(
            "POST /mcp HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2025-06-18\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if let Some(session) = &self.session {
            head.push_str("Mcp-Session-Id: ");
            head.push_str(session);
            head.push_str("\r\n");
        }
        if let Some(bearer) = &self.bearer {
            head.push_str("Authorization: ");
            head.push_str(bearer);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        self.writer.write_all(&request).unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        assert!(
            line.starts_with("HTTP/1.1 200") || line.starts_with("HTTP/1.1 202"),
            "unexpected status: {line}"
        );
        let mut length = 0;
        let mut session = None;
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            let (name, value) = trimmed.split_once(':').unwrap();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap(),
                "mcp-session-id" => session = Some(value.trim().to_owned()),
                "transfer-encoding" => panic!("expected a sized JSON answer"),
                _ => {}
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).unwrap();
        (session, length)
    }

    fn echo(&mut self, text: &str) {
        let id = self.next_id;
        self.next_id += 1;
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{text}"}}}}}}"#
        );
        let (_, len) = self.post(body.as_bytes());
        assert!(len > text.len());
    }
}

struct Process {
    child: Child,
    addr: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    }
}

fn start_fixture() -> Process {
    start_example(fixture(), &[])
}

/// The TCP relay floor in front of `upstream`.
fn start_relay(upstream: &str) -> Process {
    start_example(fixture().with_file_name("tcp_relay"), &[upstream])
}

fn start_example(path: PathBuf, args: &[&str]) -> Process {
    let mut child = Command::new(path)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().strip_prefix("PORT ").unwrap();
    Process {
        child,
        addr: format!("127.0.0.1:{port}"),
    }
}

/// The gateway under test: this build's, or `SHADOWCAT_BENCH_BIN` (an older build, to compare
/// two in the same bench run).
fn gateway_binary() -> PathBuf {
    std::env::var_os("SHADOWCAT_BENCH_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_shadowcat")),
        PathBuf::from,
    )
}

fn start_gateway(upstream: &str) -> Process {
    start_gateway_with(upstream, &[])
}

/// The token and issuer key of `benches/auth-fixture.json`, and the options that make a
/// gateway accept it (`--auth-issuer`, the key from a file in `dir`).
fn auth_options(dir: &std::path::Path) -> (String, Vec<String>) {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("auth-fixture.json")).unwrap();
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, fixture["jwks"].to_string()).unwrap();
    let options = [
        "--auth-issuer",
        "https://issuer.bench.example",
        "--auth-audience",
        "https://bench.example/mcp",
        "--auth-jwks-file",
        jwks.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    (fixture["token"].as_str().unwrap().to_owned(), options)
}

/// A gateway in front of the HTTP fixture at `upstream` (none: `extra` ends with `-- <cmd>`).
fn start_gateway_with(upstream: &str, extra: &[String]) -> Process {
    let mut child = Command::new(gateway_binary())
        .env("SHADOWCAT_SESSION_STORE", "memory")
        // Every client of this bench is 127.0.0.1, and the RSS run holds 1,000 sessions and
        // connections: lift the per-client caps (environment, so older builds ignore them).
        .env("SHADOWCAT_MAX_CONNECTIONS_PER_CLIENT", "4096")
        .env("SHADOWCAT_MAX_SESSIONS_PER_CLIENT", "4096")
        .env("SHADOWCAT_MAX_SESSIONS", "4096")
        .args(["--log-level", "info", "reverse", "--listen", "127.0.0.1:0"])
        .args(
            (!upstream.is_empty())
                .then(|| ["--upstream".to_owned(), format!("http://{upstream}/mcp")])
                .into_iter()
                .flatten(),
        )
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "the gateway did not start"
        );
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split('/').next().unwrap().to_owned();
        }
    };
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in reader.lines() {});
    Process { child, addr }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn throughput(addr: &str, sessions: usize, per_session: usize, text: &str) -> f64 {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(sessions + 1));
    let handles: Vec<_> = (0..sessions)
        .map(|_| {
            let (addr, text, barrier) = (addr.to_owned(), text.to_owned(), barrier.clone());
            std::thread::spawn(move || {
                let mut client = Client::connect(&addr);
                barrier.wait();
                for _ in 0..per_session {
                    client.echo(&text);
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for handle in handles {
        handle.join().unwrap();
    }
    (sessions * per_session) as f64 / start.elapsed().as_secs_f64()
}

/// Events per second of one SSE answer of `count` progress notifications (`bytes` each).
fn sse_burst(addr: &str, count: usize, bytes: usize) -> f64 {
    let session = Client::connect(addr).session;
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"stream","arguments":{{"count":{count},"bytes":{bytes}}},"_meta":{{"progressToken":"p"}}}}}}"#
    );
    let mut head = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2025-06-18\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(session) = session {
        head.push_str("Mcp-Session-Id: ");
        head.push_str(&session);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut reader = BufReader::with_capacity(1 << 16, stream);
    let (mut progress, mut answered) = (0, false);
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap() > 0 {
        if let Some(data) = line.strip_prefix("data: ") {
            if data.contains("notifications/progress") {
                progress += 1;
            } else if data.contains("\"result\"") {
                answered = true;
            }
        }
        line.clear();
    }
    let elapsed = start.elapsed();
    assert!(
        answered && progress == count,
        "{progress} of {count} events"
    );
    count as f64 / elapsed.as_secs_f64()
}

/// SSE relay throughput: alternate runs, keep each side's best.
fn sse_relay(fixture: &Process, gateway: &Process, quick: bool) {
    let count = if quick { 2000 } else { 20_000 };
    let (mut best_d, mut best_p) = (0f64, 0f64);
    for _ in 0..if quick { 1 } else { 3 } {
        best_d = best_d.max(sse_burst(&fixture.addr, count, 100));
        best_p = best_p.max(sse_burst(&gateway.addr, count, 100));
    }
    println!("SSE relay, one tools/call streaming {count} progress notifications (best of runs):");
    println!("  direct     {best_d:>9.0} events/s");
    println!(
        "  shadowcat  {best_p:>9.0} events/s   ({:.0}% of direct)",
        100.0 * best_p / best_d
    );
}

/// Latency at concurrency 1, `n` requests to each target, interleaved so all see the same
/// machine conditions: direct, through the gateway, through a byte relay, and through a gateway
/// that checks a token.
/// `n` echo round trips of each client after 200 to warm up, interleaved so that all see the
/// same machine conditions: each client's times, sorted.
fn latencies(clients: &mut [(&str, Client)], n: usize, text: &str) -> Vec<Vec<Duration>> {
    for _ in 0..200 {
        for (_, client) in clients.iter_mut() {
            client.echo(text);
        }
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(n); clients.len()];
    for _ in 0..n {
        for (i, (_, client)) in clients.iter_mut().enumerate() {
            let t = Instant::now();
            client.echo(text);
            times[i].push(t.elapsed());
        }
    }
    for v in &mut times {
        v.sort();
    }
    times
}

fn latency_at_one(fixture: &Process, gateway: &Process, n: usize, text: &str) {
    // Latency at concurrency 1, interleaved so both see the same machine conditions.
    let relay = start_relay(&fixture.addr);
    let auth_dir = tempfile::tempdir().unwrap();
    let (token, auth) = auth_options(auth_dir.path());
    let authenticated = start_gateway_with(&fixture.addr, &auth);
    let mut clients = [
        ("direct", Client::connect(&fixture.addr)),
        ("shadowcat", Client::connect(&gateway.addr)),
        ("tcp_relay", Client::connect(&relay.addr)),
        (
            "with auth",
            Client::connect_with(&authenticated.addr, Some(&token)),
        ),
    ];
    let times = latencies(&mut clients, n, text);
    println!("concurrency 1, 64 B echo, {n} requests each (interleaved):");
    let (d50, d99) = (percentile(&times[0], 0.5), percentile(&times[0], 0.99));
    for ((name, _), v) in clients.iter().zip(&times) {
        let (p50, p99) = (percentile(v, 0.5), percentile(v, 0.99));
        println!(
            "  {name:<10} p50 {:>8.1} µs   p99 {:>8.1} µs   added p50 {:>+7.1} µs   p99 {:>+7.1} µs",
            micros(p50),
            micros(p99),
            micros(p50) - micros(d50),
            micros(p99) - micros(d99)
        );
    }
    drop(clients);
    drop(relay);
    drop(authenticated);
}

/// Latency at concurrency 1 (interleaved) and throughput at 16 of each of `targets`.
fn compare(targets: &[(&str, &str)], n: usize, per: usize, runs: usize, text: &str) {
    let mut clients: Vec<(&str, Client)> = targets
        .iter()
        .map(|(name, addr)| (*name, Client::connect(addr)))
        .collect();
    let times = latencies(&mut clients, n, text);
    drop(clients);
    let mut best = vec![0f64; targets.len()];
    for _ in 0..runs {
        for (i, (_, addr)) in targets.iter().enumerate() {
            best[i] = best[i].max(throughput(addr, 16, per, text));
        }
    }
    println!(
        "concurrency 1 ({n} requests each, interleaved) and 16 ({per} per session, best of {runs}), 64 B echo:"
    );
    let d50 = percentile(&times[0], 0.5);
    for (((name, _), v), rate) in targets.iter().zip(&times).zip(&best) {
        let (p50, p99) = (percentile(v, 0.5), percentile(v, 0.99));
        println!(
            "  {name:<22} p50 {:>7.1} µs  p99 {:>7.1} µs  added p50 {:>+7.1} µs   {rate:>8.0} req/s ({:.0}% of direct)",
            micros(p50),
            micros(p99),
            micros(p50) - micros(d50),
            100.0 * rate / best[0]
        );
    }
}

/// Gateways behind HAProxy (docs/scale-out.md's configuration): one without a cluster key,
/// one with, three with; and the fixture direct and behind HAProxy alone, for the balancer's
/// own cost.
fn cluster(fixture: &Process, quick: bool, text: &str) {
    if balancer::binary().is_none() {
        println!("cluster: skipped (HAProxy is not installed: apt-get install haproxy)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("cluster.keys");
    std::fs::write(&keys, "bench-cluster-key-0123456789abcdef0123456789\n").unwrap();
    let sealed = ["--cluster-key-file".to_owned(), keys.display().to_string()];
    let plain = start_gateway(&fixture.addr);
    let members: Vec<Process> = (0..3)
        .map(|_| start_gateway_with(&fixture.addr, &sealed))
        .collect();
    let lb_direct = balancer::Balancer::start(&[&fixture.addr]);
    let lb_plain = balancer::Balancer::start(&[&plain.addr]);
    let lb_one = balancer::Balancer::start(&[&members[0].addr]);
    let addrs: Vec<&str> = members.iter().map(|m| m.addr.as_str()).collect();
    let lb_three = balancer::Balancer::start(&addrs);
    // A limit that never refuses: what keeping it costs, in each instance or in Redis.
    let redis = redis::RedisServer::start();
    let limited: Vec<String> = sealed
        .iter()
        .cloned()
        .chain([
            "--rate-limit".to_owned(),
            "session=1000000/s,burst=1000000".to_owned(),
        ])
        .collect();
    let shared: Vec<String> = limited
        .iter()
        .cloned()
        .chain(["--redis-url".to_owned(), redis.url()])
        .collect();
    let local_members: Vec<Process> = (0..3)
        .map(|_| start_gateway_with(&fixture.addr, &limited))
        .collect();
    let redis_members: Vec<Process> = (0..3)
        .map(|_| start_gateway_with(&fixture.addr, &shared))
        .collect();
    let addrs: Vec<&str> = local_members.iter().map(|m| m.addr.as_str()).collect();
    let lb_local = balancer::Balancer::start(&addrs);
    let addrs: Vec<&str> = redis_members.iter().map(|m| m.addr.as_str()).collect();
    let lb_redis = balancer::Balancer::start(&addrs);
    // Sessions at a process (the stdio fixture): at one instance, and spread over three, where
    // two requests in three are passed to the instance that runs the session's process.
    let stdio_server = self::fixture().with_file_name("fixture_server");
    let processes: Vec<String> = sealed
        .iter()
        .cloned()
        .chain(["--".to_owned(), stdio_server.display().to_string()])
        .collect();
    let process_members: Vec<Process> =
        (0..3).map(|_| start_gateway_with("", &processes)).collect();
    let lb_process_one = balancer::Balancer::start(&[&process_members[0].addr]);
    let addrs: Vec<&str> = process_members.iter().map(|m| m.addr.as_str()).collect();
    let lb_process_three = balancer::Balancer::start(&addrs);
    println!("cluster: HAProxy round-robin per request, no affinity");
    compare(
        &[
            ("direct", &fixture.addr),
            ("haproxy", &lb_direct.addr),
            ("1 gateway", &plain.addr),
            ("haproxy > 1 gateway", &lb_plain.addr),
            ("haproxy > 1 sealed", &lb_one.addr),
            ("haproxy > 3 sealed", &lb_three.addr),
            ("haproxy > 3, own limit", &lb_local.addr),
            ("haproxy > 3, Redis limit", &lb_redis.addr),
            ("haproxy > 1, process", &lb_process_one.addr),
            ("haproxy > 3, process", &lb_process_three.addr),
        ],
        if quick { 300 } else { 3000 },
        if quick { 100 } else { 1000 },
        if quick { 1 } else { 3 },
        text,
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let quick = std::env::var_os("E2E_QUICK").is_some();
    let text = "x".repeat(64);
    let fixture = start_fixture();
    if std::env::args().skip(1).any(|a| a == "cluster") {
        cluster(&fixture, quick, &text);
        return;
    }
    let gateway = start_gateway(&fixture.addr);

    latency_at_one(&fixture, &gateway, if quick { 300 } else { 5000 }, &text);

    // Throughput at concurrency 16: alternate runs, keep each side's best.
    let per = if quick { 100 } else { 1000 };
    let (mut best_d, mut best_p) = (0f64, 0f64);
    for _ in 0..if quick { 1 } else { 3 } {
        best_d = best_d.max(throughput(&fixture.addr, 16, per, &text));
        best_p = best_p.max(throughput(&gateway.addr, 16, per, &text));
    }
    println!("concurrency 16, 64 B echo, {per} requests per session (best of runs):");
    println!("  direct     {best_d:>9.0} req/s");
    println!(
        "  shadowcat  {best_p:>9.0} req/s   ({:.0}% of direct)",
        100.0 * best_p / best_d
    );

    sse_relay(&fixture, &gateway, quick);

    // RSS with 1,000 idle sessions.
    let before = gateway.rss_kib();
    // Each idle client initialized over its own connection, then let the connection go, as
    // HTTP clients do with idle keep-alive connections: the sessions stay.
    for _ in 0..1000 {
        drop(Client::connect(&gateway.addr));
    }
    std::thread::sleep(Duration::from_millis(200));
    let after = gateway.rss_kib();
    println!(
        "gateway RSS: {:.1} MiB before, {:.1} MiB with 1,000 idle sessions (HTTP upstream, a connection each, since closed)",
        before as f64 / 1024.0,
        after as f64 / 1024.0
    );
    // Worst case: 1,000 idle sessions whose clients all keep their connections open.
    let gateway = start_gateway(&fixture.addr);
    let before = gateway.rss_kib();
    let held: Vec<Client> = (0..1000).map(|_| Client::connect(&gateway.addr)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let after = gateway.rss_kib();
    println!(
        "gateway RSS: {:.1} MiB before, {:.1} MiB with 1,000 idle sessions (HTTP upstream, 1,000 open keep-alive connections)",
        before as f64 / 1024.0,
        after as f64 / 1024.0
    );
    drop(held);
    drop(gateway);
    // The same on one connection: what the sessions themselves hold.
    let gateway = start_gateway(&fixture.addr);
    let before = gateway.rss_kib();
    let mut client = Client::connect(&gateway.addr);
    for _ in 1..1000 {
        client.session = None;
        let (session, _) = client.post(
            br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"0"}}}"#,
        );
        client.session = session;
        client.post(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
    }
    std::thread::sleep(Duration::from_millis(200));
    let after = gateway.rss_kib();
    println!(
        "gateway RSS: {:.1} MiB before, {:.1} MiB with 1,000 idle sessions (HTTP upstream, one connection)",
        before as f64 / 1024.0,
        after as f64 / 1024.0
    );
}
