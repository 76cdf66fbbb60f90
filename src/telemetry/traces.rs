//! Traces: OpenTelemetry spans for every request, named and attributed per the MCP semantic
//! conventions, exported over OTLP (gRPC or HTTP/protobuf), with W3C trace context taken from and
//! written into `params._meta` (SEP-414).
//!
//! A request that arrives gets a SERVER span (its parent: the `traceparent` the sender put in
//! `_meta`) and a CLIENT span, its child, for the hop on to the receiver; the CLIENT span's
//! context goes into the forwarded message's `_meta`, so the receiver's span is its child. Both
//! end when the answer passes back (or when the request ends any other way: they are held in the
//! request's pending entry and end when it goes). What the proxy itself did to the request is a
//! span event. Off unless `--otlp-endpoint` is given: then nothing here runs and messages pass
//! byte for byte.

pub mod export;
mod otlp;
pub mod span;

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::protocol::trace_context::MAX_CARRIER_BYTES;
use crate::protocol::{Direction, Kind, Message, Method, RequestId};
use crate::session::{Session, TransportKind};

pub use span::{Attribute, Value};
use span::{Event, Span, SpanContext};

/// The default `--service-name`.
pub const DEFAULT_SERVICE_NAME: &str = "shadowcat";
/// How long one export to the collector may take.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Which OTLP transport to export with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (the collector's port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318, path `/v1/traces`).
    #[default]
    Http,
}

/// Where and how spans are exported (`--otlp-*`, `--trace-sample-ratio`, `--service-name`,
/// `--trace-payloads`).
#[derive(Debug, Clone)]
pub struct TraceOptions {
    /// The collector: `http://host:4317` for gRPC, `http://host:4318/v1/traces` for HTTP
    /// (or `https://`).
    pub endpoint: String,
    /// Which transport.
    pub protocol: OtlpProtocol,
    /// Headers sent with every export (an API key, a tenant).
    pub headers: Vec<(String, String)>,
    /// CA certificates (PEM) trusted for an https:// collector besides the platform's
    /// (`--otlp-ca`).
    pub ca: Option<Vec<u8>>,
    /// The share of new traces recorded, 0 to 1 (a request whose sender's trace is sampled is
    /// always recorded; one whose sender's is not, never).
    pub sample_ratio: f64,
    /// `service.name` of our spans.
    pub service_name: String,
    /// With `--trace-payloads`, what is masked in tool calls' arguments and results before
    /// they go on a span (`--redact`, an upstream's credentials); `None`: no payloads.
    pub payloads: Option<Arc<crate::tape::Redactor>>,
}

/// The longest payload attribute; a longer one is cut (at a character boundary) and marked.
pub const MAX_PAYLOAD_ATTRIBUTE: usize = 16 * 1024;

/// Makes the spans of every request and sends them to the collector.
#[derive(Debug)]
pub struct Tracer {
    /// `--trace-payloads`: the masks applied to tool calls' arguments and results first.
    payloads: Option<Arc<crate::tape::Redactor>>,
    /// `--trace-sample-ratio`.
    sample_ratio: f64,
    queue: Arc<export::Queue>,
    counts: Arc<export::Counts>,
    exporting: std::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
}

/// Starts exporting as `options` ask, or nothing without options (the export runs on a thread
/// of its own).
pub fn start(options: Option<&TraceOptions>) -> anyhow::Result<Option<Arc<Tracer>>> {
    options.map(Tracer::start).transpose()
}

impl Tracer {
    /// A tracer exporting as `options` ask.
    pub fn start(options: &TraceOptions) -> anyhow::Result<Arc<Self>> {
        let counts = Arc::new(export::Counts::default());
        let (queue, exporting) = export::Queue::start(options, counts.clone())?;
        let protocol = match options.protocol {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::Http => "http",
        };
        tracing::info!(endpoint = %options.endpoint, protocol, "exporting traces over OTLP");
        Ok(Arc::new(Self {
            payloads: options.payloads.clone(),
            sample_ratio: options.sample_ratio,
            queue: Arc::new(queue),
            counts,
            exporting: std::sync::Mutex::new(Some(exporting)),
        }))
    }

    /// Spans accepted by the collector so far.
    pub fn exported(&self) -> u64 {
        self.counts.exported.load(Ordering::Relaxed)
    }

    /// Spans dropped so far (queue full, collector down or refusing).
    pub fn dropped(&self) -> u64 {
        self.counts.dropped.load(Ordering::Relaxed)
    }

    /// Sends what is queued, waiting at most `within`; spans that end later are not sent.
    pub async fn shutdown(&self, within: Duration) {
        self.queue.close();
        let task = self
            .exporting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(within, task).await;
        }
        tracing::info!(
            exported = self.exported(),
            dropped = self.dropped(),
            "trace export finished"
        );
    }

    /// The spans of request `msg`, arriving travelling `direction` in `session`, beside the
    /// `traceparent` header `header` (HTTP). The parent is the context in `params._meta`; the
    /// header's is linked (or, with none in `_meta`, the parent).
    pub fn request(
        &self,
        msg: &Message,
        direction: Direction,
        session: &Session,
        header: Option<&str>,
    ) -> Call {
        let (mut server, payloads, parent) = match self.arrived(msg, Some(session), header) {
            Ok(arrived) => arrived,
            Err(unrecorded) => return unrecorded,
        };
        let (near, far) = sides(session, direction);
        let shared = server.attributes.len();
        near.push_attributes(&mut server.attributes);
        let client_cx = server.context.child();
        let mut client = Span::new(
            client_cx.clone(),
            Some(server.context.span_id),
            server.name.clone(),
            span::Kind::Client,
            server.start,
        );
        // The attributes both spans have, then the far side's (at most four), with room for
        // the two the end may add (`error.type`, `shadowcat.answered_by_proxy`).
        let mut attributes = Vec::with_capacity(shared + 6);
        attributes.extend(server.attributes[..shared].iter().cloned());
        far.push_attributes(&mut attributes);
        client.attributes = attributes;
        with_arguments(&mut server, payloads.as_deref(), msg);
        Call {
            trace_id: client_cx.trace_id,
            onward: Some(client_cx),
            from_sender: parent,
            recorded: Some(Box::new(Recorded {
                server,
                client: Some(client),
                payloads,
                queue: self.queue.clone(),
            })),
        }
    }

    /// The span of request `msg` answered here, read from stdin (`replay`): a SERVER span and
    /// no hop.
    pub fn served(&self, msg: &Message) -> Call {
        let (mut server, payloads, parent) = match self.arrived(msg, None, None) {
            Ok(arrived) => arrived,
            Err(unrecorded) => return unrecorded,
        };
        Side::Pipe.push_attributes(&mut server.attributes);
        server.set("shadowcat.replayed", Value::Bool(true));
        with_arguments(&mut server, payloads.as_deref(), msg);
        Call {
            trace_id: server.context.trace_id,
            onward: None,
            from_sender: parent,
            recorded: Some(Box::new(Recorded {
                server,
                client: None,
                payloads,
                queue: self.queue.clone(),
            })),
        }
    }

    /// The SERVER span of request `msg` (in `session`, beside the `traceparent` header
    /// `header`), with the masks for its result if it goes on the span, and whether the sender
    /// gave the trace; or, when its trace is not recorded, the `Call` that only passes its
    /// context on. The parent is the context in `params._meta`; the header's is linked (or,
    /// with none in `_meta`, the parent).
    #[allow(clippy::type_complexity)] // One use: the two constructors above.
    fn arrived(
        &self,
        msg: &Message,
        session: Option<&Session>,
        header: Option<&str>,
    ) -> Result<(Span, Option<Arc<crate::tape::Redactor>>, bool), Call> {
        let carrier = msg.trace_context();
        let in_meta = carrier
            .traceparent
            .as_deref()
            .and_then(|tp| SpanContext::parse(tp, carrier.tracestate.as_deref()));
        let beside = header
            .filter(|h| h.len() <= MAX_CARRIER_BYTES)
            .and_then(|h| SpanContext::parse(h, None));
        let from_meta = in_meta.is_some();
        let (parent, link) = match (in_meta, beside) {
            (Some(parent), Some(linked)) if linked.span_id != parent.span_id => {
                (Some(parent), Some(linked))
            }
            (Some(parent), _) => (Some(parent), None),
            (None, beside) => (beside, None),
        };
        // Sampling is decided first: a request whose trace is not recorded gets no spans (its
        // context still goes on), and nothing is read for attributes.
        let ours = if let Some(parent) = &parent {
            parent.child()
        } else {
            let mut root = SpanContext::root(false);
            root.sampled = span::sampled_at(&root.trace_id, self.sample_ratio);
            root
        };
        if !ours.sampled {
            // The sender's context in `_meta` goes on as it came (W3C lets a hop that records
            // nothing pass it unchanged); otherwise ours, marked not sampled.
            return Err(Call {
                trace_id: ours.trace_id,
                onward: (!from_meta).then_some(ours),
                from_sender: parent.is_some(),
                recorded: None,
            });
        }
        let facts = Facts::of(msg, session);
        let mut server = Span::new(
            ours,
            parent.as_ref().map(|p| p.span_id),
            facts.name,
            span::Kind::Server,
            span::now(),
        );
        server.remote_parent = parent.is_some();
        server.links.extend(link);
        server.attributes = facts.attributes;
        // Payloads only when asked for, masked first, and only a tool call's.
        let payloads = self
            .payloads
            .clone()
            .filter(|_| msg.method() == Some(&Method::ToolsCall));
        Ok((server, payloads, parent.is_some()))
    }
}

/// With `--trace-payloads` (`masks`), a tool call's arguments on its SERVER span.
fn with_arguments(server: &mut Span, masks: Option<&crate::tape::Redactor>, msg: &Message) {
    if let Some(arguments) = masks.and_then(|masks| payload(masks, msg, "/params/arguments")) {
        server.set("gen_ai.tool.call.arguments", Value::from(arguments));
    }
}

/// The spans of one request: where it arrived, and the hop on.
#[derive(Debug)]
pub struct Call {
    trace_id: [u8; 16],
    /// The context the receiver is given as its parent; `None`: the message's own goes on.
    onward: Option<SpanContext>,
    /// Whether the sender gave a trace context (its trace goes on through ours).
    from_sender: bool,
    /// The spans, when the trace is recorded (boxed: they are large, and a request that is
    /// not recorded should not carry their room through the pipeline).
    recorded: Option<Box<Recorded>>,
}

/// A recorded request's spans, until they end.
#[derive(Debug)]
struct Recorded {
    server: Span,
    /// The hop's; `None` for a request answered here (`replay`).
    client: Option<Span>,
    /// A tool call's masks, when its result goes on the span (`--trace-payloads`).
    payloads: Option<Arc<crate::tape::Redactor>>,
    /// Where they go when they end.
    queue: Arc<export::Queue>,
}

impl Recorded {
    /// Both spans end now, with `error` (`error.type` and the status) if it failed.
    fn end(mut self: Box<Self>, error: Option<Cow<'static, str>>) {
        let end = span::now();
        for span in self.client.iter_mut().chain([&mut self.server]) {
            span.end = end;
        }
        if let Some(error) = error {
            for span in self.client.iter_mut().chain([&mut self.server]) {
                span.set("error.type", cow_value(error.clone()));
                span.error = Some(error.clone());
            }
        }
        let Recorded {
            client,
            server,
            queue,
            ..
        } = *self;
        queue.push(client.into_iter().chain([server]));
    }
}

fn cow_value(text: Cow<'static, str>) -> Value {
    match text {
        Cow::Borrowed(s) => Value::Static(s),
        Cow::Owned(s) => Value::from(s),
    }
}

impl Call {
    /// Whether its trace can be looked up somewhere: we record it, or its sender's trace
    /// goes on (a new trace that is not sampled is recorded nowhere).
    pub fn is_kept(&self) -> bool {
        self.recorded.is_some() || self.from_sender
    }

    /// The trace id, as 32 hex digits (for tapes and history).
    pub fn trace_id(&self) -> String {
        crate::protocol::trace_context::hex(&self.trace_id)
    }

    /// `msg` as it goes on: with our CLIENT span as the parent its receiver sees in
    /// `params._meta` (one or two members set, every other byte kept). As it came if it cannot
    /// be rewritten, or if the trace is the sender's and not recorded.
    pub fn outgoing(&self, msg: Message) -> Message {
        let Some(onward) = &self.onward else {
            return msg;
        };
        msg.with_traceparent(&onward.traceparent(), onward.state.as_deref())
            .unwrap_or(msg)
    }

    /// Whether its spans are recorded (what the stages did is noted only then).
    pub fn is_recorded(&self) -> bool {
        self.recorded.is_some()
    }

    /// Something the proxy did to the request (`rate_limited`, `blocked`, `mocked`, ...).
    pub fn event(&mut self, name: &'static str, attributes: Vec<Attribute>) {
        if let Some(recorded) = &mut self.recorded {
            recorded.server.events.push(Event {
                time: span::now(),
                name,
                attributes,
            });
        }
    }

    /// The request is answered by `answer`: both spans get its outcome and end. `by_proxy`:
    /// the proxy answered in the receiver's place (the hop never happened).
    pub fn answered(mut self, answer: &Message, by_proxy: bool) {
        let Some(mut recorded) = self.recorded.take() else {
            return;
        };
        if let (true, Some(client)) = (by_proxy, &mut recorded.client) {
            client.set("shadowcat.answered_by_proxy", Value::Bool(true));
        }
        if let Some(result) = recorded
            .payloads
            .take()
            .and_then(|masks| payload(&masks, answer, "/result"))
        {
            recorded
                .server
                .set("gen_ai.tool.call.result", Value::from(result));
        }
        recorded.end(error_type(answer));
    }

    /// The request ended without an answer passing (dropped, timed out, its peer gone).
    pub fn abandoned(mut self, why: &'static str) {
        if let Some(recorded) = self.recorded.take() {
            recorded.end(Some(Cow::Borrowed(why)));
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // A request that ends unanswered (its entry dropped with its session, or timed out)
        // still ends its spans, marked so.
        if let Some(recorded) = self.recorded.take() {
            recorded.end(Some(Cow::Borrowed("unanswered")));
        }
    }
}

/// The JSON text at `pointer` in `msg` with `masks` applied to the whole message first (its
/// JSONPaths are the message's), at most [`MAX_PAYLOAD_ATTRIBUTE`] bytes. `None` if there is
/// none. A message that cannot be read yields nothing: what cannot be masked is not sent.
fn payload(masks: &crate::tape::Redactor, msg: &Message, pointer: &str) -> Option<String> {
    let masked = masks.apply(msg.raw());
    let tree: serde_json::Value = serde_json::from_slice(&masked).ok()?;
    let mut text = tree.pointer(pointer)?.to_string();
    if text.len() > MAX_PAYLOAD_ATTRIBUTE {
        let mut end = MAX_PAYLOAD_ATTRIBUTE;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("…(truncated)");
    }
    Some(text)
}

/// `error.type` for an answer: the JSON-RPC error code, or `tool_error` for a result with
/// `isError: true`; `None` for success.
fn error_type(answer: &Message) -> Option<Cow<'static, str>> {
    match answer.kind() {
        Kind::Error => Some(
            answer
                .error_code()
                .map_or(Cow::Borrowed("unreadable"), |code| {
                    Cow::Owned(code.to_string())
                }),
        ),
        Kind::Response => answer
            .is_tool_error()
            .then_some(Cow::Borrowed("tool_error")),
        Kind::Request | Kind::Notification => None,
    }
}

/// What the conventions name about a request, read once for both spans: strings shared
/// (`Arc<str>`), so the second span's copy costs no allocation.
struct Facts {
    name: Arc<str>,
    attributes: Vec<Attribute>,
}

impl Facts {
    fn of(msg: &Message, session: Option<&Session>) -> Self {
        // Room for what is read here (at most seven), the side's (at most four), the payloads
        // and what the end adds, so none of them grows the vector.
        let mut attributes: Vec<Attribute> = Vec::with_capacity(16);
        let method = msg.method();
        attributes.push((
            "mcp.method.name",
            match method {
                Some(Method::Other(name)) => Value::Str(Arc::from(&**name)),
                Some(known) => Value::Static(known.label()),
                None => Value::Static(""),
            },
        ));
        if let Some(id) = msg.id() {
            // The conventions' string: a string id as it is, a number in decimal.
            let id = match id {
                RequestId::Number(n) => Arc::from(itoa::Buffer::new().format(*n)),
                RequestId::String(s) => s.clone(),
            };
            attributes.push(("jsonrpc.request.id", Value::Str(id)));
        }
        if let Some(session) = session {
            // The id's digest, as logs show it: the id itself is the client's credential.
            attributes.push(("mcp.session.id", Value::Str(session.digest_text().clone())));
        }
        let version = session
            .and_then(|s| s.read_metadata(|m| m.protocol_version.as_deref().map(Arc::from)))
            .or_else(|| crate::protocol::headers::body_version(msg).map(Arc::from));
        if let Some(version) = version {
            attributes.push(("mcp.protocol.version", Value::Str(version)));
        }
        let target = match method {
            Some(Method::ToolsCall) => msg
                .called_tool()
                .ok()
                .flatten()
                .map(|t| ("gen_ai.tool.name", t)),
            Some(Method::PromptsGet) => msg
                .param_str("name")
                .ok()
                .flatten()
                .map(|t| ("gen_ai.prompt.name", t)),
            Some(
                Method::ResourcesRead | Method::ResourcesSubscribe | Method::ResourcesUnsubscribe,
            ) => msg
                .param_str("uri")
                .ok()
                .flatten()
                .map(|t| ("mcp.resource.uri", t)),
            _ => None,
        };
        let method = method.map_or("", Method::as_str);
        let name = match &target {
            Some((key, target)) => {
                let mut name = String::with_capacity(method.len() + 1 + target.len());
                name.push_str(method);
                name.push(' ');
                name.push_str(target);
                if *key == "gen_ai.tool.name" {
                    attributes.push(("gen_ai.operation.name", Value::Static("execute_tool")));
                }
                attributes.push((key, Value::Str(Arc::from(target.as_str()))));
                Arc::from(name)
            }
            None => Arc::from(method),
        };
        Self { name, attributes }
    }
}

/// One side of the proxy, as the conventions describe a peer.
#[derive(Clone, Copy)]
enum Side<'a> {
    /// A pipe (stdio).
    Pipe,
    /// HTTP, to or from `address` (a URL) when known.
    Http(Option<&'a str>),
}

impl Side<'_> {
    fn push_attributes(self, out: &mut Vec<Attribute>) {
        match self {
            Self::Pipe => out.push(("network.transport", Value::Static("pipe"))),
            Self::Http(url) => {
                out.push(("network.transport", Value::Static("tcp")));
                out.push(("network.protocol.name", Value::Static("http")));
                if let Some(uri) = url.and_then(|u| u.parse::<http::Uri>().ok()) {
                    if let Some(host) = uri.host() {
                        out.push(("server.address", Value::from(host.to_owned())));
                    }
                    if let Some(port) = uri.port_u16() {
                        out.push(("server.port", Value::Int(i64::from(port))));
                    }
                }
            }
        }
    }
}

/// The side a request arrives on and the side it goes on to.
fn sides(session: &Session, direction: Direction) -> (Side<'_>, Side<'_>) {
    let client = match session.transport() {
        TransportKind::Stdio => Side::Pipe,
        _ => Side::Http(None),
    };
    let server = match session.upstream() {
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
            Side::Http(Some(url))
        }
        _ => Side::Pipe,
    };
    match direction {
        Direction::ClientToServer => (client, server),
        Direction::ServerToClient => (server, client),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(raw: &'static str) -> Facts {
        Facts::of(&Message::parse(bytes::Bytes::from(raw)).unwrap(), None)
    }

    fn text<'a>(facts: &'a Facts, key: &str) -> Option<&'a str> {
        facts
            .attributes
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| match v {
                Value::Str(s) => &**s,
                Value::Static(s) => s,
                other => panic!("{key} is not text: {other:?}"),
            })
    }

    #[test]
    fn names_and_ids_read_as_the_conventions_write_them() {
        let call =
            facts(r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo"}}"#);
        assert_eq!(&*call.name, "tools/call echo");
        assert_eq!(text(&call, "jsonrpc.request.id"), Some("7"));
        assert_eq!(text(&call, "gen_ai.tool.name"), Some("echo"));
        assert_eq!(text(&call, "gen_ai.operation.name"), Some("execute_tool"));
        assert_eq!(text(&call, "mcp.method.name"), Some("tools/call"));
        // A string id as it is, not quoted; a negative number in decimal.
        let string_id = facts(r#"{"jsonrpc":"2.0","id":"req-1","method":"ping"}"#);
        assert_eq!(&*string_id.name, "ping");
        assert_eq!(text(&string_id, "jsonrpc.request.id"), Some("req-1"));
        let negative = facts(r#"{"jsonrpc":"2.0","id":-12,"method":"x/custom"}"#);
        assert_eq!(text(&negative, "jsonrpc.request.id"), Some("-12"));
        assert_eq!(text(&negative, "mcp.method.name"), Some("x/custom"));
        let read = facts(
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a"}}"#,
        );
        assert_eq!(&*read.name, "resources/read file:///a");
        assert_eq!(text(&read, "mcp.resource.uri"), Some("file:///a"));
        // Room for everything a span can be given, so none of it grows the vector.
        assert!(call.attributes.capacity() >= call.attributes.len() + 9);
    }
}
