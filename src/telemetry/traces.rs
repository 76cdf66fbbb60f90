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

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, Span};

use crate::protocol::trace_context::{Carrier, MAX_CARRIER_BYTES};
use crate::protocol::{Direction, Kind, Message, Method};
use crate::session::{Session, TransportKind};

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
    /// The collector: `http://host:4317` for gRPC, `http://host:4318/v1/traces` for HTTP.
    pub endpoint: String,
    /// Which transport.
    pub protocol: OtlpProtocol,
    /// Headers sent with every export (an API key, a tenant).
    pub headers: Vec<(String, String)>,
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
    provider: SdkTracerProvider,
    spans: SdkTracer,
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
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(options.service_name.clone())
            .build();
        let counts = Arc::new(export::Counts::default());
        let (queue, exporting) = match options.protocol {
            OtlpProtocol::Grpc => {
                let mut headers = http::HeaderMap::new();
                for (name, value) in &options.headers {
                    let name = http::HeaderName::from_bytes(name.as_bytes())
                        .map_err(|e| anyhow::anyhow!("invalid --otlp-header name {name:?}: {e}"))?;
                    let value = http::HeaderValue::from_str(value)
                        .map_err(|e| anyhow::anyhow!("invalid --otlp-header value: {e}"))?;
                    headers.insert(name, value);
                }
                let (endpoint, resource) = (options.endpoint.clone(), resource.clone());
                export::Queue::start(
                    move || {
                        let exporter = opentelemetry_otlp::SpanExporter::builder()
                            .with_tonic()
                            .with_endpoint(endpoint)
                            .with_timeout(EXPORT_TIMEOUT)
                            .with_metadata(
                                opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(
                                    headers,
                                ),
                            )
                            .build()?;
                        Ok(described(exporter, &resource))
                    },
                    counts.clone(),
                )?
            }
            OtlpProtocol::Http => {
                let (endpoint, resource) = (options.endpoint.clone(), resource.clone());
                let headers: std::collections::HashMap<String, String> =
                    options.headers.iter().cloned().collect();
                export::Queue::start(
                    move || {
                        let exporter = opentelemetry_otlp::SpanExporter::builder()
                            .with_http()
                            .with_endpoint(endpoint)
                            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                            .with_timeout(EXPORT_TIMEOUT)
                            .with_headers(headers)
                            .build()?;
                        Ok(described(exporter, &resource))
                    },
                    counts.clone(),
                )?
            }
        };
        let provider = SdkTracerProvider::builder()
            .with_span_processor(queue)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                options.sample_ratio,
            ))))
            .with_resource(resource)
            .build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "shadowcat");
        tracing::info!(endpoint = %options.endpoint, protocol = ?options.protocol, "exporting traces over OTLP");
        Ok(Arc::new(Self {
            payloads: options.payloads.clone(),
            provider,
            spans: tracer,
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
        // Shutting the provider down closes the queue; the export thread sends the rest and
        // ends.
        let _ = self.provider.shutdown();
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
    /// header's is linked (or, with none in `_meta`, the parent). Boxed: the spans are large,
    /// and the pipeline's future holds them across its stages.
    pub fn request(
        &self,
        msg: &Message,
        direction: Direction,
        session: &Session,
        header: Option<&str>,
    ) -> Box<Call> {
        let carrier = msg.trace_context();
        let propagator = TraceContextPropagator::new();
        let mut parent = if carrier.traceparent.is_some() {
            propagator.extract(&CarrierText(&carrier))
        } else {
            Context::new()
        };
        let mut links = Vec::new();
        if let Some(header) = header.filter(|h| h.len() <= MAX_CARRIER_BYTES) {
            let beside = Carrier {
                traceparent: Some(header.to_owned()),
                tracestate: None,
            };
            let beside = propagator.extract(&CarrierText(&beside));
            let linked = beside.span().span_context().clone();
            if linked.is_valid() {
                if parent.span().span_context().is_valid() {
                    if linked != *parent.span().span_context() {
                        links.push(opentelemetry::trace::Link::with_context(linked));
                    }
                } else {
                    parent = beside;
                }
            }
        }
        // Sampling is decided first: a request whose trace is not recorded gets one span that
        // records nothing (its context still goes on), and nothing is read for attributes.
        let method = msg.method().map_or("", Method::label);
        let mut server = self
            .spans
            .span_builder(method)
            .with_kind(SpanKind::Server)
            .with_links(links)
            .start_with_context(&self.spans, &parent);
        if !server.is_recording() {
            return Box::new(Call {
                server,
                client: None,
                from_sender: carrier.traceparent.is_some(),
                payloads: None,
            });
        }
        let facts = Facts::of(msg, session);
        let (near, far) = sides(session, direction);
        server.update_name(facts.name.clone());
        server.set_attributes(facts.attributes.iter().cloned().chain(near.attributes()));
        // Payloads only when asked for, masked first, and only a tool call's.
        let payloads = self
            .payloads
            .clone()
            .filter(|_| msg.method() == Some(&Method::ToolsCall));
        if let Some(arguments) = payloads
            .as_ref()
            .and_then(|masks| payload(masks, msg, "/params/arguments"))
        {
            server.set_attribute(KeyValue::new("gen_ai.tool.call.arguments", arguments));
        }
        let own = Context::new().with_remote_span_context(server.span_context().clone());
        let mut attributes = facts.attributes;
        attributes.extend(far.attributes());
        let client = Some(
            self.spans
                .span_builder(facts.name)
                .with_kind(SpanKind::Client)
                .with_attributes(attributes)
                .start_with_context(&self.spans, &own),
        );
        Box::new(Call {
            server,
            client,
            from_sender: carrier.traceparent.is_some(),
            payloads,
        })
    }
}

/// `exporter`, telling the collector whose spans they are.
fn described<E: opentelemetry_sdk::trace::SpanExporter>(
    mut exporter: E,
    resource: &opentelemetry_sdk::Resource,
) -> E {
    exporter.set_resource(resource);
    exporter
}

/// The two spans of one request: where it arrived, and the hop on.
#[derive(Debug)]
pub struct Call {
    server: Span,
    /// The hop's span; `None` when the trace is not recorded.
    client: Option<Span>,
    /// Whether the sender gave a trace context (its trace goes on through ours).
    from_sender: bool,
    /// A tool call's masks, when its result goes on the span (`--trace-payloads`).
    payloads: Option<Arc<crate::tape::Redactor>>,
}

impl Call {
    /// Whether its trace can be looked up somewhere: we record it, or its sender's trace
    /// goes on (a new trace that is not sampled is recorded nowhere).
    pub fn is_kept(&self) -> bool {
        self.server.is_recording() || self.from_sender
    }

    /// The trace id, as 32 hex digits (for tapes and history).
    pub fn trace_id(&self) -> String {
        self.server.span_context().trace_id().to_string()
    }

    /// `msg` as it goes on: with our CLIENT span as the parent its receiver sees in
    /// `params._meta` (one or two members set, every other byte kept). As it came if it cannot
    /// be rewritten.
    pub fn outgoing(&self, msg: Message) -> Message {
        let hop = self.client.as_ref().unwrap_or(&self.server);
        let ours = Context::new().with_remote_span_context(hop.span_context().clone());
        let mut carrier = Carrier::default();
        TraceContextPropagator::new().inject_context(&ours, &mut CarrierSlot(&mut carrier));
        msg.with_trace_context(&carrier).unwrap_or(msg)
    }

    /// Something the proxy did to the request (`rate_limited`, `blocked`, `mocked`, ...).
    pub fn event(&mut self, name: &'static str, attributes: Vec<KeyValue>) {
        self.server.add_event(name, attributes);
    }

    /// The request is answered by `answer`: both spans get its outcome and end. `by_proxy`:
    /// the proxy answered in the receiver's place (the hop never happened).
    pub fn answered(mut self, answer: &Message, by_proxy: bool) {
        if !self.server.is_recording() {
            return;
        }
        if let Some(error) = error_type(answer) {
            for span in self.spans() {
                span.set_attribute(KeyValue::new("error.type", error.clone()));
                span.set_status(Status::error(error.clone()));
            }
        }
        if let (true, Some(client)) = (by_proxy, &mut self.client) {
            client.set_attribute(KeyValue::new("shadowcat.answered_by_proxy", true));
        }
        if let Some(result) = self
            .payloads
            .take()
            .and_then(|masks| payload(&masks, answer, "/result"))
        {
            self.server
                .set_attribute(KeyValue::new("gen_ai.tool.call.result", result));
        }
        for span in self.spans() {
            span.end();
        }
    }

    /// The request ended without an answer passing (dropped, timed out, its peer gone).
    pub fn abandoned(mut self, why: &'static str) {
        for span in self.spans() {
            if span.is_recording() {
                span.set_attribute(KeyValue::new("error.type", why));
                span.set_status(Status::error(why));
                span.end();
            }
        }
    }

    /// Its spans, the hop's first.
    fn spans(&mut self) -> impl Iterator<Item = &mut Span> {
        self.client
            .iter_mut()
            .chain(std::iter::once(&mut self.server))
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // A request that ends unanswered (its entry dropped with its session, or timed out)
        // still ends its spans, marked so.
        for span in self.spans() {
            if span.is_recording() {
                span.set_attribute(KeyValue::new("error.type", "unanswered"));
                span.set_status(Status::error("unanswered"));
                span.end();
            }
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
fn error_type(answer: &Message) -> Option<String> {
    match answer.kind() {
        Kind::Error => Some(
            answer
                .error_code()
                .map_or_else(|| "unreadable".to_owned(), |code| code.to_string()),
        ),
        Kind::Response => answer.is_tool_error().then(|| "tool_error".to_owned()),
        Kind::Request | Kind::Notification => None,
    }
}

/// What the conventions name about a request, read once for both spans: strings shared
/// (`Arc<str>`), so the second span's copy costs no allocation.
struct Facts {
    name: Cow<'static, str>,
    attributes: Vec<KeyValue>,
}

impl Facts {
    fn of(msg: &Message, session: &Session) -> Self {
        let shared = |s: String| opentelemetry::Value::from(Arc::<str>::from(s));
        let mut attributes = Vec::with_capacity(12);
        let method = msg.method();
        attributes.push(match method {
            Some(Method::Other(name)) => KeyValue::new("mcp.method.name", shared(name.to_string())),
            Some(known) => KeyValue::new("mcp.method.name", known.label()),
            None => KeyValue::new("mcp.method.name", ""),
        });
        if let Some(id) = msg.id() {
            attributes.push(KeyValue::new("jsonrpc.request.id", shared(id.to_string())));
        }
        attributes.push(KeyValue::new(
            "mcp.session.id",
            shared(session.id().as_str().to_owned()),
        ));
        let version = session
            .read_metadata(|m| m.protocol_version.clone())
            .or_else(|| crate::protocol::headers::body_version(msg));
        if let Some(version) = version {
            attributes.push(KeyValue::new("mcp.protocol.version", shared(version)));
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
            Some((_, target)) => Cow::Owned(format!("{method} {target}")),
            None => Cow::Owned(method.to_owned()),
        };
        if let Some((key, value)) = target {
            if key == "gen_ai.tool.name" {
                attributes.push(KeyValue::new("gen_ai.operation.name", "execute_tool"));
            }
            attributes.push(KeyValue::new(key, shared(value)));
        }
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
    fn attributes(self) -> Vec<KeyValue> {
        match self {
            Self::Pipe => vec![KeyValue::new("network.transport", "pipe")],
            Self::Http(url) => {
                let mut out = vec![
                    KeyValue::new("network.transport", "tcp"),
                    KeyValue::new("network.protocol.name", "http"),
                ];
                if let Some(uri) = url.and_then(|u| u.parse::<http::Uri>().ok()) {
                    if let Some(host) = uri.host() {
                        out.push(KeyValue::new("server.address", host.to_owned()));
                    }
                    if let Some(port) = uri.port_u16() {
                        out.push(KeyValue::new("server.port", i64::from(port)));
                    }
                }
                out
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

struct CarrierText<'a>(&'a Carrier);

impl Extractor for CarrierText<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => self.0.traceparent.as_deref(),
            "tracestate" => self.0.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

struct CarrierSlot<'a>(&'a mut Carrier);

impl Injector for CarrierSlot<'_> {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "traceparent" => self.0.traceparent = Some(value),
            "tracestate" if !value.is_empty() => self.0.tracestate = Some(value),
            _ => {}
        }
    }
}
