//! Spans as OTLP's protobuf encodes them: an `ExportTraceServiceRequest` (the body of an
//! OTLP/HTTP export, and the message of an OTLP/gRPC one) written straight from our span
//! values, field by field, as `opentelemetry/proto/trace/v1/trace.proto` numbers them. Writing
//! them directly costs a tenth of building the generated structures and encoding those (see
//! docs/performance.md); the tests decode what is written here with the official definitions
//! (`opentelemetry-proto`) and compare every field.

use super::span::{Attribute, Event, Span, SpanContext, Value};

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// Writes one export request at a time; what does not change between requests (the resource
/// and the scope) is encoded once.
#[derive(Debug)]
pub struct Encoder {
    /// `ResourceSpans.resource` (field 1), tag and length included.
    resource: Vec<u8>,
    /// `ScopeSpans.scope` (field 1), tag and length included.
    scope: Vec<u8>,
    /// One span at a time, before its length is known.
    scratch: Vec<u8>,
}

impl Encoder {
    /// An encoder for spans of service `service_name`.
    pub fn new(service_name: &str) -> Self {
        let mut resource_body = Vec::new();
        for attribute in [
            ("service.name", Value::from(service_name.to_owned())),
            ("telemetry.sdk.name", Value::Static("shadowcat")),
            ("telemetry.sdk.language", Value::Static("rust")),
            (
                "telemetry.sdk.version",
                Value::Static(env!("CARGO_PKG_VERSION")),
            ),
        ] {
            key_value(&mut resource_body, 1, &attribute);
        }
        let mut resource = Vec::new();
        bytes_field(&mut resource, 1, &resource_body);
        let mut scope_body = Vec::new();
        bytes_field(&mut scope_body, 1, b"shadowcat");
        bytes_field(&mut scope_body, 2, env!("CARGO_PKG_VERSION").as_bytes());
        let mut scope = Vec::new();
        bytes_field(&mut scope, 1, &scope_body);
        Self {
            resource,
            scope,
            scratch: Vec::with_capacity(1024),
        }
    }

    /// The `ExportTraceServiceRequest` carrying `spans`.
    pub fn request(&mut self, spans: &[Span]) -> Vec<u8> {
        let mut all = Vec::with_capacity(spans.len() * 512);
        for span in spans {
            self.scratch.clear();
            encode_span(&mut self.scratch, span);
            bytes_field(&mut all, 2, &self.scratch);
        }
        // ExportTraceServiceRequest { resource_spans (1): ResourceSpans { resource (1),
        // scope_spans (2): ScopeSpans { scope (1), spans (2)... } } }
        let scope_spans = self.scope.len() + all.len();
        let resource_spans = self.resource.len() + 1 + varint_len(scope_spans as u64) + scope_spans;
        let mut out = Vec::with_capacity(2 + varint_len(resource_spans as u64) + resource_spans);
        tag(&mut out, 1, LEN);
        varint(&mut out, resource_spans as u64);
        out.extend_from_slice(&self.resource);
        tag(&mut out, 2, LEN);
        varint(&mut out, scope_spans as u64);
        out.extend_from_slice(&self.scope);
        out.extend_from_slice(&all);
        out
    }
}

/// `Span`'s fields.
fn encode_span(out: &mut Vec<u8>, span: &Span) {
    let cx = &span.context;
    bytes_field(out, 1, &cx.trace_id);
    bytes_field(out, 2, &cx.span_id);
    if let Some(state) = &cx.state {
        bytes_field(out, 3, state.as_bytes());
    }
    if let Some(parent) = &span.parent {
        bytes_field(out, 4, parent);
    }
    bytes_field(out, 5, span.name.as_bytes());
    tag(out, 6, VARINT);
    varint(out, span.kind as u64);
    fixed64(out, 7, span.start);
    fixed64(out, 8, span.end);
    for attribute in &span.attributes {
        key_value(out, 9, attribute);
    }
    for event in &span.events {
        encode_event(out, event);
    }
    for link in &span.links {
        encode_link(out, link);
    }
    if let Some(message) = &span.error {
        // Status { message (2), code (3): STATUS_CODE_ERROR = 2 }
        let len = 1 + varint_len(message.len() as u64) + message.len() + 2;
        tag(out, 15, LEN);
        varint(out, len as u64);
        bytes_field(out, 2, message.as_bytes());
        tag(out, 3, VARINT);
        varint(out, 2);
    }
    // flags (16): the sampled bit; whether the parent is remote is known (bit 8), and set
    // (bit 9) when the parent came from another process.
    let mut flags = u32::from(cx.sampled) | 0x100;
    if span.remote_parent {
        flags |= 0x200;
    }
    tag(out, 16, FIXED32);
    out.extend_from_slice(&flags.to_le_bytes());
}

/// `Span.Event` (field 11).
fn encode_event(out: &mut Vec<u8>, event: &Event) {
    let len = 9
        + 1
        + varint_len(event.name.len() as u64)
        + event.name.len()
        + event
            .attributes
            .iter()
            .map(|(key, value)| field_len(key_value_len(key, value)))
            .sum::<usize>();
    tag(out, 11, LEN);
    varint(out, len as u64);
    fixed64(out, 1, event.time);
    bytes_field(out, 2, event.name.as_bytes());
    for attribute in &event.attributes {
        key_value(out, 3, attribute);
    }
}

/// `Span.Link` (field 13).
fn encode_link(out: &mut Vec<u8>, link: &SpanContext) {
    let state = link.state.as_deref().unwrap_or("");
    let len = 18
        + 10
        + if state.is_empty() {
            0
        } else {
            field_len(state.len())
        }
        + 5;
    tag(out, 13, LEN);
    varint(out, len as u64);
    bytes_field(out, 1, &link.trace_id);
    bytes_field(out, 2, &link.span_id);
    if !state.is_empty() {
        bytes_field(out, 3, state.as_bytes());
    }
    tag(out, 6, FIXED32);
    out.extend_from_slice(&(u32::from(link.sampled) | 0x300).to_le_bytes());
}

/// A `KeyValue` as field `field`.
fn key_value(out: &mut Vec<u8>, field: u32, (key, value): &Attribute) {
    // Lengths worked out once, and room made once: the writes below never grow `out`.
    let any_len = any_value_len(value);
    let len = field_len(key.len()) + field_len(any_len);
    out.reserve(field_len(len) + 1);
    tag(out, field, LEN);
    varint(out, len as u64);
    bytes_field(out, 1, key.as_bytes());
    tag(out, 2, LEN);
    varint(out, any_len as u64);
    match value {
        Value::Str(s) => bytes_field(out, 1, s.as_bytes()),
        Value::Static(s) => bytes_field(out, 1, s.as_bytes()),
        Value::Bool(b) => {
            tag(out, 2, VARINT);
            out.push(u8::from(*b));
        }
        Value::Int(n) => {
            tag(out, 3, VARINT);
            varint(out, *n as u64);
        }
    }
}

fn key_value_len(key: &str, value: &Value) -> usize {
    field_len(key.len()) + field_len(any_value_len(value))
}

/// `AnyValue`'s length: one of its fields.
fn any_value_len(value: &Value) -> usize {
    match value {
        Value::Str(s) => field_len(s.len()),
        Value::Static(s) => field_len(s.len()),
        Value::Bool(_) => 2,
        Value::Int(n) => 1 + varint_len(*n as u64),
    }
}

/// A length-delimited field's size: tag (fields below 16: one byte), length, content.
#[inline]
fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

#[inline]
fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    tag(out, field, LEN);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[inline]
fn fixed64(out: &mut Vec<u8>, field: u32, value: u64) {
    tag(out, field, FIXED64);
    out.extend_from_slice(&value.to_le_bytes());
}

#[inline]
fn tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, u64::from(field << 3 | u32::from(wire)));
}

#[inline]
fn varint(out: &mut Vec<u8>, mut value: u64) {
    if value < 0x80 {
        // Tags and most lengths: one byte.
        out.push(value as u8);
        return;
    }
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[inline]
fn varint_len(value: u64) -> usize {
    // Seven bits a byte; zero takes one.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

#[cfg(test)]
mod tests;
