//! Trace context through Shadowcat: the Python SDK 2.x client and server make their own
//! OpenTelemetry spans and carry their context in `params._meta.traceparent` (SEP-414); both
//! export them to an OTLP receiver started by the tests (tests/peers/otlp_receiver.py, built on
//! the official OTLP protobuf definitions). Through each mode, the server's span for a call is
//! the child of the client's: the proxy passes the context on untouched.

#![allow(
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_types
)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The OTLP receiver, and the ports of its OTLP/HTTP endpoint (which also answers the spans)
/// and its OTLP/gRPC one.
struct Receiver {
    child: Child,
    http: u16,
    grpc: u16,
    /// With TLS (`start_tls`): the OTLP/HTTP and OTLP/gRPC ports over TLS.
    tls: Option<(u16, u16)>,
}

impl Receiver {
    fn start() -> Self {
        Self::spawn(&[])
    }

    /// A receiver that also listens over TLS, its certificate issued for 127.0.0.1 by the
    /// CA `ca_dir`'s `ca.pem` holds.
    fn start_tls(ca_dir: &std::path::Path) -> Self {
        let (_, cert, key) = support::private_ca(ca_dir);
        Self::spawn(&[
            "--tls".into(),
            cert.display().to_string(),
            key.display().to_string(),
        ])
    }

    fn spawn(args: &[String]) -> Self {
        let mut child = Command::new(support::python("2.3.0"))
            .arg(support::peers().join("otlp_receiver.py"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the OTLP receiver");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let http = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http="))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the receiver's ready line: {line:?}"));
        let grpc = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("grpc="))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the receiver's ready line: {line:?}"));
        let port = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|p| p.parse().ok())
        };
        let tls = port("https=").zip(port("grpcs="));
        Self {
            child,
            http,
            grpc,
            tls,
        }
    }

    /// Where spans are sent over OTLP/gRPC.
    fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc)
    }

    /// The span of `service` named `name` of kind `kind`, waiting a little for it to arrive.
    fn span_of_kind(&self, service: &str, name: &str, kind: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let spans = self.spans();
            if let Some(span) = spans
                .iter()
                .find(|s| s["service"] == service && s["name"] == name && s["kind"] == kind)
            {
                return span.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no {kind} span {name:?} of {service}: {spans:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Where spans are sent over OTLP/HTTP.
    fn traces_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/traces", self.http)
    }

    /// The spans received so far.
    fn spans(&self) -> Vec<Value> {
        let addr = format!("127.0.0.1:{}", self.http);
        let r = support::http_request(&addr, "GET", "/spans", &[], b"");
        assert_eq!(r.status, 200);
        serde_json::from_slice(&r.body).unwrap()
    }

    /// The span of `service` named `name`, waiting a little for it to arrive.
    fn span(&self, service: &str, name: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let spans = self.spans();
            if let Some(span) = spans
                .iter()
                .find(|s| s["service"] == service && s["name"] == name)
            {
                return span.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no span {name:?} of {service}: {spans:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the Python SDK client (tests/peers/sdk_client.py) against `server`, both exporting
/// their spans to `receiver`, and checks that the server's span for the `echo` call is the
/// child of the client's, in one trace.
fn assert_one_trace(receiver: &Receiver, server: &[String]) {
    run_client(receiver, server);
    let sent = receiver.span("client", "MCP send tools/call echo");
    let served = receiver.span("server", "tools/call echo");
    assert_eq!(sent["kind"], "client");
    assert_eq!(served["kind"], "server");
    assert_eq!(
        served["trace_id"], sent["trace_id"],
        "one trace:\n{sent:#}\n{served:#}"
    );
    assert_eq!(
        served["parent_span_id"], sent["span_id"],
        "the client's span is the parent"
    );
}

/// Runs the Python SDK client (tests/peers/sdk_client.py) with `target` (`-- cmd` or
/// `--url URL`), exporting its spans to `receiver` as the service `client`.
fn run_client(receiver: &Receiver, target: &[String]) {
    let mut client = Command::new(support::python("2.3.0"));
    client
        .arg(support::peers().join("sdk_client.py"))
        .args(target)
        .env("OTLP_TRACES_URL", receiver.traces_url())
        .env("OTEL_SERVICE_NAME", "client");
    support::hermetic(&mut client);
    let out = client.output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The server command, its spans named as the server's.
fn python_server() -> Vec<String> {
    vec![
        support::python("2.3.0"),
        support::peers()
            .join("sdk_server_v2.py")
            .display()
            .to_string(),
    ]
}

#[test]
fn forward_stdio_passes_trace_context_on_untouched() {
    let receiver = Receiver::start();
    let mut server = vec![
        support::shadowcat().display().to_string(),
        "forward".into(),
        "stdio".into(),
        "--env".into(),
        "OTEL_SERVICE_NAME=server".into(),
        "--".into(),
    ];
    server.extend(python_server());
    let mut target = vec!["--".to_owned()];
    target.extend(server);
    assert_one_trace(&receiver, &target);
}

#[test]
fn the_bridge_and_the_gateway_pass_trace_context_on_untouched() {
    let receiver = Receiver::start();
    // The server behind the gateway, a process per session, names its spans as the server's.
    let mut opts = vec!["--env".to_owned(), "OTEL_SERVICE_NAME=server".to_owned()];
    opts.push("--env".into());
    opts.push(format!("OTLP_TRACES_URL={}", receiver.traces_url()));
    opts.push("--".into());
    opts.extend(python_server());
    let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
    let gateway = support::Gateway::start(&opts);
    let server = vec![
        support::shadowcat().display().to_string(),
        "forward".into(),
        "stdio".into(),
        "--url".into(),
        gateway.url(),
    ];
    let mut target = vec!["--".to_owned()];
    target.extend(server);
    assert_one_trace(&receiver, &target);
}

/// Checks the four spans of the `echo` call: the client's, then shadowcat's SERVER span (its
/// child), shadowcat's CLIENT span (the SERVER span's child), and the server's span, whose
/// parent is shadowcat's CLIENT span: one trace, with the conventions' names and attributes.
/// `near` and `far`: the `network.transport` of the side the call came from and went to.
fn assert_traced_through(receiver: &Receiver, near: &str, far: &str) -> (Value, Value) {
    let sent = receiver.span("client", "MCP send tools/call echo");
    let ours = receiver.span_of_kind("shadowcat", "tools/call echo", "server");
    let hop = receiver.span_of_kind("shadowcat", "tools/call echo", "client");
    let served = receiver.span("server", "tools/call echo");
    for span in [&ours, &hop, &served] {
        assert_eq!(span["trace_id"], sent["trace_id"], "one trace: {span:#}");
    }
    assert_eq!(ours["parent_span_id"], sent["span_id"], "{ours:#}");
    assert_eq!(hop["parent_span_id"], ours["span_id"], "{hop:#}");
    assert_eq!(
        served["parent_span_id"], hop["span_id"],
        "the server received our CLIENT span as its parent: {served:#}"
    );
    for (span, transport) in [(&ours, near), (&hop, far)] {
        let a = &span["attributes"];
        assert_eq!(a["mcp.method.name"], "tools/call", "{span:#}");
        assert_eq!(a["gen_ai.tool.name"], "echo");
        assert_eq!(a["gen_ai.operation.name"], "execute_tool");
        assert!(a["jsonrpc.request.id"].is_string(), "{span:#}");
        assert!(a["mcp.session.id"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(a["mcp.protocol.version"].is_string(), "{span:#}");
        assert_eq!(a["network.transport"], transport, "{span:#}");
        assert!(a.get("error.type").is_none(), "{span:#}");
    }
    (ours, hop)
}

#[test]
fn forward_stdio_traces_each_call_as_the_conventions_say() {
    let receiver = Receiver::start();
    let mut target = vec![
        "--".to_owned(),
        support::shadowcat().display().to_string(),
        "forward".into(),
        "stdio".into(),
        "--otlp-endpoint".into(),
        format!("http://127.0.0.1:{}", receiver.http),
        "--env".into(),
        "OTEL_SERVICE_NAME=server".into(),
        "--env".into(),
        format!("OTLP_TRACES_URL={}", receiver.traces_url()),
        "--".into(),
    ];
    target.extend(python_server());
    run_client(&receiver, &target);
    let (ours, _) = assert_traced_through(&receiver, "pipe", "pipe");
    // Every request has its pair, the era's first (`server/discover`) among them.
    receiver.span_of_kind("shadowcat", "server/discover", "server");
    receiver.span_of_kind("shadowcat", "server/discover", "client");
    assert_eq!(ours["transport"], "http");
}

/// The Python SDK server serving Streamable HTTP, exporting its spans to `receiver` as the
/// service `server`; its MCP URL.
fn traced_http_server(receiver: &Receiver) -> (Child, String) {
    let mut child = Command::new(support::python("2.3.0"))
        .arg(support::peers().join("sdk_server_v2.py"))
        .arg("--http")
        .env("OTLP_TRACES_URL", receiver.traces_url())
        .env("OTEL_SERVICE_NAME", "server")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the SDK server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line
        .trim()
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the SDK server's port line: {line:?}"));
    (child, format!("http://127.0.0.1:{port}/mcp"))
}

#[test]
fn reverse_traces_each_call_to_an_http_server_exporting_over_grpc() {
    let receiver = Receiver::start();
    let (mut server, url) = traced_http_server(&receiver);
    let grpc = receiver.grpc_url();
    let gateway = support::Gateway::start(&[
        "--upstream",
        &url,
        "--otlp-endpoint",
        &grpc,
        "--otlp-protocol",
        "grpc",
    ]);
    run_client(&receiver, &["--url".to_owned(), gateway.url()]);
    let (ours, hop) = assert_traced_through(&receiver, "tcp", "tcp");
    assert_eq!(ours["transport"], "grpc");
    assert_eq!(hop["attributes"]["server.address"], "127.0.0.1");
    let port: i64 = url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(hop["attributes"]["server.port"], port);
    let _ = server.kill();
    let _ = server.wait();
}

/// A free loopback port, for a process to listen on.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A loopback port that refuses connections while the returned socket lives: bound, never
/// listening, so no other test's listener can take it meanwhile (a port merely closed again
/// could be handed to one, which would then answer our exports).
fn refusing_port() -> (socket2::Socket, u16) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let port = socket.local_addr().unwrap().as_socket().unwrap().port();
    (socket, port)
}

/// The value of the sample `name` in a Prometheus scrape.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn a_collector_that_is_down_costs_only_counted_drops() {
    let (_refusing, port) = refusing_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let gw = support::Gateway::fixture(&[
        "--admin-listen",
        "127.0.0.1:0",
        "--otlp-endpoint",
        &endpoint,
    ]);
    let session = gw.initialize();
    let started = Instant::now();
    for id in 2..22 {
        let call = serde_json::json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
            "params":{"name":"echo","arguments":{"text":"x"}}});
        let r = gw.post(Some(&session), &call);
        assert_eq!(r.status, 200);
        assert!(String::from_utf8_lossy(&r.body).contains("\"result\""));
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "calls waited for the collector: {:?}",
        started.elapsed()
    );
    // The batch goes within a second, fails at once, and its spans are counted as dropped.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = support::http_request(&gw.admin_addr(), "GET", "/metrics", &[], b"");
        let text = String::from_utf8_lossy(&r.body).into_owned();
        let dropped = sample(&text, "shadowcat_trace_spans_dropped_total").unwrap_or(0.0);
        assert_eq!(
            sample(&text, "shadowcat_trace_spans_exported_total"),
            Some(0.0),
            "{text}"
        );
        // 21 requests, two spans each.
        if dropped >= 42.0 {
            break;
        }
        assert!(Instant::now() < deadline, "drops not counted: {text}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        gw.stderr_text().contains("cannot export spans"),
        "the failure is logged"
    );
}

#[test]
fn tapes_and_session_history_carry_the_trace_ids() {
    let receiver = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let tape = dir.path().join("call.jsonl");
    let mut target = vec![
        "--".to_owned(),
        support::shadowcat().display().to_string(),
        "--data-dir".into(),
        data.display().to_string(),
        "forward".into(),
        "stdio".into(),
        "--session-store".into(),
        "sqlite".into(),
        "--record".into(),
        tape.display().to_string(),
        "--otlp-endpoint".into(),
        format!("http://127.0.0.1:{}", receiver.http),
        "--".into(),
    ];
    target.extend(python_server());
    run_client(&receiver, &target);
    let sent = receiver.span("client", "MCP send tools/call echo");
    let trace = sent["trace_id"].as_str().unwrap().to_owned();
    let run = |args: &[&str]| {
        let out = support::command()
            .arg("--data-dir")
            .arg(&data)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // The tape: each frame of the call, request and answer, names the client's trace.
    let shown = run(&["tape", "show", tape.to_str().unwrap()]);
    assert!(shown.contains("TRACE"), "{shown}");
    let call_rows: Vec<&str> = shown.lines().filter(|l| l.ends_with(&trace)).collect();
    assert_eq!(call_rows.len(), 2, "{trace}: {shown}");
    assert!(call_rows[0].contains("request") && call_rows[0].contains("tools/call"));
    assert!(call_rows[1].contains("response") && call_rows[1].contains("tools/call"));
    // The session's history row lists it among its traces.
    let list = run(&["session", "list", "--format", "json"]);
    let sessions: Value = serde_json::from_str(&list).unwrap();
    let id = sessions[0]["id"].as_str().unwrap();
    assert!(
        sessions[0]["traces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == trace.as_str()),
        "{sessions:#}"
    );
    let show = run(&["session", "show", id]);
    let traces = show.lines().find(|l| l.starts_with("traces")).unwrap();
    assert!(traces.contains(&trace), "{show}");
}

/// The body of the first fenced block opened by `fence` after `heading` in `doc`.
fn block<'a>(doc: &'a str, heading: &str, fence: &str) -> &'a str {
    let from = &doc[doc
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?}"))..];
    let start = from.find(fence).unwrap() + fence.len();
    let body = &from[start..];
    body[..body.find("```").unwrap()].trim_start_matches('\n')
}

#[test]
fn the_documented_collector_takes_what_the_documented_commands_send() {
    let docs = include_str!("../docs/observability.md");
    let config: Value =
        serde_saphyr::from_str(block(docs, "### An example collector", "```yaml")).unwrap();
    let protocols = &config["receivers"]["otlp"]["protocols"];
    let listens = |protocol: &str| protocols[protocol]["endpoint"].as_str().unwrap().to_owned();
    let traces = &config["service"]["pipelines"]["traces"];
    assert!(
        traces["receivers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "otlp")
    );
    assert!(!traces["exporters"].as_array().unwrap().is_empty());
    // The command lines of the Traces section, continuation lines joined.
    let commands: Vec<Vec<String>> = block(docs, "## Traces", "```sh")
        .replace("\\\n", " ")
        .lines()
        .filter(|l| l.starts_with("shadowcat "))
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    assert_eq!(commands.len(), 2, "{commands:?}");
    let receiver = Receiver::start();
    for command in &commands {
        let value = |flag: &str| {
            command
                .iter()
                .position(|a| a == flag)
                .map(|i| command[i + 1].clone())
        };
        let protocol = value("--otlp-protocol").unwrap_or_else(|| "http".into());
        let endpoint = value("--otlp-endpoint").unwrap();
        // The collector listens where the command sends.
        assert_eq!(
            endpoint.strip_prefix("http://").unwrap(),
            listens(&protocol),
            "{command:?}"
        );
        // The command's trace options, sent to the test's receiver instead.
        let ours = match protocol.as_str() {
            "grpc" => receiver.grpc_url(),
            _ => format!("http://127.0.0.1:{}", receiver.http),
        };
        let mut opts = vec!["--otlp-endpoint".to_owned(), ours];
        for flag in [
            "--otlp-protocol",
            "--trace-sample-ratio",
            "--otlp-header",
            "--service-name",
        ] {
            if let Some(v) = value(flag) {
                opts.extend([flag.to_owned(), v]);
            }
        }
        let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
        let gw = support::Gateway::fixture(&opts);
        let session = gw.initialize();
        // A sampled parent: recorded whatever the ratio.
        let trace = format!(
            "{:032x}",
            0xc0ffee_u128 + commands.len() as u128 + opts.len() as u128
        );
        let call = serde_json::json!({"jsonrpc":"2.0","id":2,"method":"tools/call",
            "params":{"name":"echo","arguments":{"text":"x"},
            "_meta":{"traceparent": format!("00-{trace}-00f067aa0ba902b7-01")}}});
        assert_eq!(gw.post(Some(&session), &call).status, 200);
        let service = value("--service-name").unwrap_or_else(|| "shadowcat".into());
        let span = receiver.span_of_kind(&service, "tools/call echo", "server");
        assert_eq!(span["trace_id"], trace.as_str());
        assert_eq!(span["parent_span_id"], "00f067aa0ba902b7");
        assert_eq!(span["transport"], protocol.as_str());
        let _ = support::http_request(
            &format!("127.0.0.1:{}", receiver.http),
            "DELETE",
            "/spans",
            &[],
            b"",
        );
    }
}

/// The names of `span`'s events, in order.
fn event_names(span: &Value) -> Vec<&str> {
    span["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect()
}

/// The JSON-RPC answer in an HTTP response body (JSON, or the last SSE `data:` line).
fn answer_of(body: &[u8]) -> Value {
    let text = String::from_utf8_lossy(body);
    let json = if text.trim_start().starts_with('{') {
        text.trim().to_owned()
    } else {
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .next_back()
            .unwrap_or_else(|| panic!("no answer in {text}"))
            .trim()
            .to_owned()
    };
    serde_json::from_str(&json).unwrap()
}

/// The request headers the HTTP fixture received with a `tools/call headers` sent through `gw`
/// with a `traceparent` header `header` and one in `_meta`, `meta`.
fn headers_seen(gw: &support::Gateway, session: &str, header: &str, meta: &str) -> Value {
    let call = serde_json::json!({"jsonrpc":"2.0","id":7,"method":"tools/call",
        "params":{"name":"headers","arguments":{},"_meta":{"traceparent": meta}}});
    let r = support::http_request(
        &gw.addr,
        "POST",
        "/mcp",
        &support::mcp_headers(&[("Mcp-Session-Id", session), ("traceparent", header)]),
        call.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200);
    let answer = answer_of(&r.body);
    let text = answer["result"]["content"][0]["text"].as_str().unwrap();
    serde_json::from_str(text).unwrap()
}

const META_PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const HEADER_PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

#[test]
fn the_traceparent_header_is_linked_and_carries_our_span_on() {
    let receiver = Receiver::start();
    let fixture = support::HttpFixture::start(&[]);
    let endpoint = format!("http://127.0.0.1:{}", receiver.http);
    let gw = support::Gateway::start(&["--upstream", &fixture.url, "--otlp-endpoint", &endpoint]);
    let session = gw.initialize();
    let seen = headers_seen(&gw, &session, HEADER_PARENT, META_PARENT);
    let ours = receiver.span_of_kind("shadowcat", "tools/call headers", "server");
    let hop = receiver.span_of_kind("shadowcat", "tools/call headers", "client");
    // The parent is the one in `_meta`; the header's is a link.
    assert_eq!(ours["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(ours["parent_span_id"], "00f067aa0ba902b7");
    let links = ours["links"].as_array().unwrap();
    assert_eq!(links.len(), 1, "{ours:#}");
    assert_eq!(links[0]["trace_id"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(links[0]["span_id"], "b7ad6b7169203331");
    // The server gets our CLIENT span as the parent in the header as in the body.
    let ours_on = format!(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
        hop["span_id"].as_str().unwrap()
    );
    assert_eq!(seen["traceparent"], ours_on.as_str(), "{seen:#}");
}

#[test]
fn sampling_decides_what_is_recorded_and_the_decision_goes_on() {
    let receiver = Receiver::start();
    let fixture = support::HttpFixture::start(&[]);
    let endpoint = format!("http://127.0.0.1:{}", receiver.http);
    // No new trace is sampled: only a sender's sampled trace is recorded.
    let gw = support::Gateway::start(&[
        "--upstream",
        &fixture.url,
        "--otlp-endpoint",
        &endpoint,
        "--trace-sample-ratio",
        "0",
    ]);
    let session = gw.initialize();
    // The headers the HTTP server got with a call carrying `meta` (or nothing) in `_meta`.
    let call = |id: u64, meta: Option<&str>| {
        let mut params = serde_json::json!({"name": "headers", "arguments": {}});
        if let Some(meta) = meta {
            params["_meta"] = serde_json::json!({ "traceparent": meta });
        }
        let body =
            serde_json::json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":params});
        let answer = answer_of(&gw.post(Some(&session), &body).body);
        let text = answer["result"]["content"][0]["text"].as_str().unwrap();
        serde_json::from_str::<Value>(text).unwrap()
    };
    // A sender's unsampled trace: not recorded, its context passed on as it came.
    let unsampled = "00-11111111111111111111111111111111-2222222222222222-00";
    assert_eq!(call(2, Some(unsampled))["traceparent"], unsampled);
    // No context, a new trace not sampled: the server is told so, in a trace of its own.
    let seen = call(3, None);
    let ours = seen["traceparent"].as_str().unwrap();
    let parts: Vec<&str> = ours.split('-').collect();
    assert_eq!(parts.len(), 4, "{ours}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1].len(), 32);
    assert_ne!(parts[1], "0".repeat(32));
    assert_eq!(parts[3], "00", "not sampled: {ours}");
    // A sender's sampled trace: recorded, whatever the ratio, our span passed on.
    let seen = call(4, Some(META_PARENT));
    let hop = receiver.span_of_kind("shadowcat", "tools/call headers", "client");
    assert_eq!(hop["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        seen["traceparent"],
        format!(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
            hop["span_id"].as_str().unwrap()
        )
    );
    // The unsampled calls, queued before it, went nowhere.
    let recorded: Vec<Value> = receiver
        .spans()
        .into_iter()
        .filter(|s| s["service"] == "shadowcat")
        .collect();
    assert!(
        recorded
            .iter()
            .all(|s| s["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"),
        "{recorded:#?}"
    );
    assert_eq!(recorded.len(), 2, "{recorded:#?}");
}

#[test]
fn without_tracing_the_traceparent_header_passes_untouched() {
    let fixture = support::HttpFixture::start(&[]);
    let gw = support::Gateway::start(&["--upstream", &fixture.url]);
    let session = gw.initialize();
    let seen = headers_seen(&gw, &session, HEADER_PARENT, META_PARENT);
    assert_eq!(seen["traceparent"], HEADER_PARENT, "{seen:#}");
}

#[test]
fn what_the_proxy_did_is_on_the_span() {
    let receiver = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(
        &rules,
        "version: 1\nrules:\n  - name: slow-echo\n    match: {tool: echo}\n    delay: 30ms\n  - name: no-add\n    match: {tool: add}\n    block: {message: no adding}\n",
    )
    .unwrap();
    let endpoint = format!("http://127.0.0.1:{}", receiver.http);
    let gw = support::Gateway::fixture(&[
        "--rules",
        rules.to_str().unwrap(),
        "--rate-limit",
        "session=1/h,method=ping,name=one-ping",
        "--otlp-endpoint",
        &endpoint,
    ]);
    let session = gw.initialize();
    let call = |id: u64, name: &str| {
        let body = serde_json::json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
            "params":{"name":name,"arguments":{"text":"x","a":1,"b":2}}});
        answer_of(&gw.post(Some(&session), &body).body)
    };
    assert!(call(2, "echo")["result"].is_object());
    assert_eq!(call(3, "add")["error"]["code"], -32091);
    // A delayed call: the rule and the delay, and no error.
    let echo = receiver.span_of_kind("shadowcat", "tools/call echo", "server");
    // The session as logs name it, never its id (the client's credential).
    let named = echo["attributes"]["mcp.session.id"].as_str().unwrap();
    assert!(named.starts_with("s-") && named.len() == 14, "{named}");
    assert!(!session.contains(named.trim_start_matches("s-")), "{named}");
    let events = echo["events"].as_array().unwrap();
    let names = event_names(&echo);
    assert_eq!(names, ["rule", "delayed"], "{echo:#}");
    assert_eq!(events[0]["attributes"]["shadowcat.rule"], "slow-echo");
    assert_eq!(events[0]["attributes"]["shadowcat.action"], "delay");
    assert_eq!(events[1]["attributes"]["shadowcat.delay_ms"], "30");
    // A blocked call: the rule, the block, the error; no hop to the server.
    let add = receiver.span_of_kind("shadowcat", "tools/call add", "server");
    let names = event_names(&add);
    assert_eq!(names, ["rule", "blocked"], "{add:#}");
    assert_eq!(add["attributes"]["error.type"], "-32091");
    assert_eq!(add["status"], "error");
    let hop = receiver.span_of_kind("shadowcat", "tools/call add", "client");
    assert_eq!(hop["attributes"]["shadowcat.answered_by_proxy"], true);
    // Over a rate limit: the limit's name and the refusal.
    let ping = |id: u64| {
        let body = serde_json::json!({"jsonrpc":"2.0","id":id,"method":"ping"});
        answer_of(&gw.post(Some(&session), &body).body)
    };
    assert!(ping(4)["result"].is_object());
    assert_eq!(ping(5)["error"]["code"], -32092);
    let deadline = Instant::now() + Duration::from_secs(10);
    let limited = loop {
        let spans = receiver.spans();
        if let Some(span) = spans.iter().find(|s| {
            s["name"] == "ping"
                && s["kind"] == "server"
                && s["attributes"]["error.type"] == "-32092"
        }) {
            break span.clone();
        }
        assert!(Instant::now() < deadline, "{spans:#?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let events = limited["events"].as_array().unwrap();
    assert_eq!(events[0]["name"], "rate_limited", "{limited:#}");
    assert_eq!(events[0]["attributes"]["shadowcat.limit"], "one-ping");
    assert_eq!(events[1]["name"], "rate_limited");
}

#[test]
fn tool_payloads_go_on_spans_only_when_asked_and_masked_first() {
    let receiver = Receiver::start();
    let endpoint = format!("http://127.0.0.1:{}", receiver.http);
    let call = serde_json::json!({"jsonrpc":"2.0","id":2,"method":"tools/call",
        "params":{"name":"echo","arguments":{"text":"hello","password":"s3cr3t"}}});
    // Asked for, with a mask: the arguments and the result, the password masked.
    let gw = support::Gateway::fixture(&[
        "--otlp-endpoint",
        &endpoint,
        "--service-name",
        "with-payloads",
        "--trace-payloads",
        "--redact",
        "$.params.arguments.password",
    ]);
    let session = gw.initialize();
    assert!(answer_of(&gw.post(Some(&session), &call).body)["result"].is_object());
    let span = receiver.span_of_kind("with-payloads", "tools/call echo", "server");
    let arguments = span["attributes"]["gen_ai.tool.call.arguments"]
        .as_str()
        .unwrap();
    let arguments: Value = serde_json::from_str(arguments).unwrap();
    assert_eq!(
        arguments,
        serde_json::json!({"text":"hello","password":"[REDACTED]"})
    );
    let result = span["attributes"]["gen_ai.tool.call.result"]
        .as_str()
        .unwrap();
    assert!(result.contains("hello"), "{result}");
    assert!(!span.to_string().contains("s3cr3t"), "{span:#}");
    // Not asked for: no payload on any span.
    let gw = support::Gateway::fixture(&["--otlp-endpoint", &endpoint, "--service-name", "plain"]);
    let session = gw.initialize();
    assert!(answer_of(&gw.post(Some(&session), &call).body)["result"].is_object());
    let span = receiver.span_of_kind("plain", "tools/call echo", "server");
    assert!(
        span["attributes"]
            .get("gen_ai.tool.call.arguments")
            .is_none(),
        "{span:#}"
    );
    assert!(!span.to_string().contains("hello"), "{span:#}");
    // --redact with nothing to mask is refused.
    support::assert_reverse_refuses(&["--redact", "$.x"], "none of them is on");
}

#[test]
fn what_the_upstream_side_did_is_on_the_span_too() {
    let receiver = Receiver::start();
    let endpoint = format!("http://127.0.0.1:{}", receiver.http);
    // A process started for the session: the requests that waited for it say so.
    let gw = support::Gateway::fixture(&["--otlp-endpoint", &endpoint, "--service-name", "pool"]);
    gw.initialize();
    let init = receiver.span_of_kind("pool", "initialize", "server");
    let started = init["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "server_process")
        .unwrap_or_else(|| panic!("{init:#}"));
    assert_eq!(started["attributes"]["shadowcat.spare"], false, "{init:#}");
    assert!(
        started["attributes"]["shadowcat.wait_ms"].is_i64(),
        "{init:#}"
    );
    // An HTTP upstream that lost the session: the request sent again says it was recovered.
    let fixture = support::HttpFixture::start(&[]);
    let gw = support::Gateway::start(&[
        "--upstream",
        &fixture.url,
        "--otlp-endpoint",
        &endpoint,
        "--service-name",
        "recovery",
    ]);
    let session = gw.initialize();
    let call = |id: u64, name: &str| {
        let body = serde_json::json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
            "params":{"name":name,"arguments":{"text":"x"}}});
        answer_of(&gw.post(Some(&session), &body).body)
    };
    assert!(call(2, "forget")["result"].is_object());
    assert!(call(3, "echo")["result"].is_object());
    let echo = receiver.span_of_kind("recovery", "tools/call echo", "server");
    let names = event_names(&echo);
    assert_eq!(names, ["session_recovered"], "{echo:#}");
}

#[test]
fn replay_traces_each_request_it_answers() {
    use std::io::Write as _;
    let receiver = Receiver::start();
    let tape = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/tape-v1.jsonl");
    let mut replay = Command::new(support::shadowcat())
        .args(["--log-level", "warn", "replay"])
        .arg(&tape)
        .args(["--speed", "0", "--otlp-endpoint"])
        .arg(format!("http://127.0.0.1:{}", receiver.http))
        .args(["--service-name", "replayed"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start replay");
    let trace = "5bf92f3577b34da6a3ce929d0e0e4736";
    let mut stdin = replay.stdin.take().unwrap();
    // The recorded call, under the client's trace; then one the tape does not have.
    writeln!(
        stdin,
        r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"hé"}},"_meta":{{"traceparent":"00-{trace}-00f067aa0ba902b7-01"}}}}}}"#
    )
    .unwrap();
    writeln!(
        stdin,
        r#"{{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{{"name":"other","arguments":{{}}}}}}"#
    )
    .unwrap();
    let mut out = BufReader::new(replay.stdout.take().unwrap());
    let mut answers = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        answers.push(serde_json::from_str::<Value>(&line).unwrap());
    }
    // The unmatched one is answered at once, the recorded one as its script plays.
    answers.sort_by_key(|a| a["id"].as_i64());
    assert_eq!(answers[0]["id"], 7, "{answers:?}");
    assert!(answers[0]["result"].is_object(), "{answers:?}");
    assert_eq!(answers[1]["id"], 8, "{answers:?}");
    let unmatched_code = answers[1]["error"]["code"].as_i64().unwrap();
    drop(stdin);
    assert!(replay.wait().unwrap().success());

    let served = receiver.span_of_kind("replayed", "tools/call echo", "server");
    assert_eq!(served["trace_id"], trace);
    assert_eq!(served["parent_span_id"], "00f067aa0ba902b7");
    let a = &served["attributes"];
    assert_eq!(a["shadowcat.replayed"], true, "{served:#}");
    assert_eq!(a["gen_ai.tool.name"], "echo");
    assert_eq!(a["jsonrpc.request.id"], "7");
    assert_eq!(a["network.transport"], "pipe");
    assert!(a.get("error.type").is_none(), "{served:#}");
    // No hop: the tape answered.
    assert!(
        !receiver
            .spans()
            .iter()
            .any(|s| s["service"] == "replayed" && s["kind"] == "client"),
        "a replay has no CLIENT span"
    );
    let unmatched = receiver.span_of_kind("replayed", "tools/call other", "server");
    assert_eq!(
        unmatched["attributes"]["error.type"],
        unmatched_code.to_string().as_str(),
        "{unmatched:#}"
    );
    assert_eq!(unmatched["status"], "error");
}

#[test]
fn replay_over_http_is_traced_by_its_gateway() {
    let receiver = Receiver::start();
    // A tape with a handshake, which a gateway's session needs.
    let init = serde_json::json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"0"}}});
    let dir = tempfile::tempdir().unwrap();
    let tape = dir.path().join("handshake.jsonl");
    let frame = |t: u64, dir: &str, msg: Value| {
        serde_json::json!({"type":"frame","t":t,"dir":dir,"session":"s1","msg":msg}).to_string()
    };
    let lines = [
        r#"{"type":"header","format":1,"id":"t2","name":"handshake","created":"2026-12-04T09:00:00.000Z","mode":"forward","clientTransport":"stdio","serverTransport":"stdio","upstream":"server","session":"s1"}"#.to_owned(),
        frame(0, "c2s", init.clone()),
        frame(10, "s2c", serde_json::json!({"jsonrpc":"2.0","id":0,"result":{
            "protocolVersion":"2025-11-25","capabilities":{"tools":{}},
            "serverInfo":{"name":"taped","version":"0"}}})),
        frame(20, "c2s", serde_json::json!({"jsonrpc":"2.0","method":"notifications/initialized"})),
        frame(30, "c2s", serde_json::json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
            "params":{"name":"echo","arguments":{"text":"hé"}}})),
        frame(40, "s2c", serde_json::json!({"jsonrpc":"2.0","id":1,"result":{
            "content":[{"type":"text","text":"hé"}]}})),
        r#"{"type":"end","t":50,"reason":"closed"}"#.to_owned(),
    ];
    std::fs::write(&tape, lines.join("\n") + "\n").unwrap();
    let port = free_port();
    let mut replay = Command::new(support::shadowcat())
        .args(["--log-level", "warn", "replay"])
        .arg(&tape)
        .args(["--speed", "0", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--otlp-endpoint")
        .arg(format!("http://127.0.0.1:{}", receiver.http))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start replay --listen");
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "replay --listen never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = support::http_request(
        &addr,
        "POST",
        "/mcp",
        &support::mcp_headers(&[]),
        init.to_string().as_bytes(),
    );
    let session = r
        .header("mcp-session-id")
        .unwrap_or_else(|| panic!("no session: {r:?}"))
        .to_owned();
    let call = serde_json::json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
        "params":{"name":"echo","arguments":{"text":"hé"}}});
    let r = support::http_request(
        &addr,
        "POST",
        "/mcp",
        &support::mcp_headers(&[("Mcp-Session-Id", &session)]),
        call.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert!(answer_of(&r.body)["result"].is_object(), "{r:?}");
    let ours = receiver.span_of_kind("shadowcat", "tools/call echo", "server");
    let hop = receiver.span_of_kind("shadowcat", "tools/call echo", "client");
    assert_eq!(hop["parent_span_id"], ours["span_id"]);
    assert_eq!(ours["attributes"]["network.transport"], "tcp");
    let _ = replay.kill();
    let _ = replay.wait();
}

#[test]
fn spans_go_to_an_https_collector_verified_against_the_given_ca() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start_tls(dir.path());
    let (https, grpcs) = receiver.tls.unwrap();
    let ca = dir.path().join("ca.pem");
    let ca = ca.to_str().unwrap();
    let call = |id: u64| {
        serde_json::json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
            "params":{"name":"echo","arguments":{"text":"x"}}})
    };
    for (protocol, url, transport) in [
        ("http", format!("https://127.0.0.1:{https}"), "https"),
        ("grpc", format!("https://127.0.0.1:{grpcs}"), "grpcs"),
    ] {
        let service = format!("over-{transport}");
        let gw = support::Gateway::fixture(&[
            "--otlp-endpoint",
            &url,
            "--otlp-protocol",
            protocol,
            "--otlp-ca",
            ca,
            "--service-name",
            &service,
        ]);
        let session = gw.initialize();
        assert_eq!(gw.post(Some(&session), &call(2)).status, 200);
        let span = receiver.span_of_kind(&service, "tools/call echo", "server");
        assert_eq!(span["transport"], transport, "{span:#}");
    }
    // Without the CA, the collector's certificate is not trusted: spans are dropped, counted,
    // and the traffic is untouched.
    let gw = support::Gateway::fixture(&[
        "--admin-listen",
        "127.0.0.1:0",
        "--otlp-endpoint",
        &format!("https://127.0.0.1:{https}"),
        "--service-name",
        "untrusted",
    ]);
    let session = gw.initialize();
    assert_eq!(gw.post(Some(&session), &call(2)).status, 200);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = support::http_request(&gw.admin_addr(), "GET", "/metrics", &[], b"");
        let text = String::from_utf8_lossy(&r.body).into_owned();
        if sample(&text, "shadowcat_trace_spans_dropped_total").unwrap_or(0.0) >= 2.0 {
            assert_eq!(
                sample(&text, "shadowcat_trace_spans_exported_total"),
                Some(0.0)
            );
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !receiver.spans().iter().any(|s| s["service"] == "untrusted"),
        "an untrusted collector got spans"
    );
    // A CA for a collector that is not https is refused at start.
    support::assert_reverse_refuses(
        &[
            "--otlp-endpoint",
            &format!("http://127.0.0.1:{}", receiver.http),
            "--otlp-ca",
            ca,
        ],
        "--otlp-ca",
    );
}
