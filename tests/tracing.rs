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

/// The OTLP receiver, and the port of its OTLP/HTTP endpoint (which also answers the spans).
struct Receiver {
    child: Child,
    http: u16,
}

impl Receiver {
    fn start() -> Self {
        let mut child = Command::new(support::python("2.3.0"))
            .arg(support::peers().join("otlp_receiver.py"))
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
        Self { child, http }
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
    let mut client = Command::new(support::python("2.3.0"));
    client
        .arg(support::peers().join("sdk_client.py"))
        .arg("--")
        .args(server)
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
    assert_one_trace(&receiver, &server);
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
    assert_one_trace(&receiver, &server);
}
