//! What [`Encoder`] writes, read back with the official OTLP definitions.

use std::borrow::Cow;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{span, status};
use prost::Message as _;

use super::super::span::{Event, Kind, Span, SpanContext, Value};
use super::*;

fn text(kv: &[KeyValue], key: &str) -> Option<any_value::Value> {
    kv.iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.clone())
        .and_then(|AnyValue { value }| value)
}

fn spans() -> Vec<Span> {
    let parent = SpanContext::parse(
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        Some("k=v,a=b"),
    )
    .unwrap();
    let server_cx = parent.child();
    let mut server = Span::new(
        server_cx.clone(),
        Some(parent.span_id),
        Arc::from("tools/call echo"),
        Kind::Server,
        1_700_000_000_000_000_001,
    );
    server.remote_parent = true;
    server.end = 1_700_000_000_123_456_789;
    server.attributes = vec![
        ("mcp.method.name", Value::Static("tools/call")),
        ("jsonrpc.request.id", Value::Str(Arc::from("7"))),
        ("server.port", Value::Int(8080)),
        ("negative", Value::Int(-3)),
        ("shadowcat.answered_by_proxy", Value::Bool(true)),
        ("long", Value::from("é".repeat(300))),
    ];
    server.events = vec![
        Event {
            time: 1_700_000_000_000_000_500,
            name: "rule",
            attributes: vec![("shadowcat.rule", Value::from("deny".to_owned()))],
        },
        Event {
            time: 1_700_000_000_000_000_600,
            name: "delayed",
            attributes: Vec::new(),
        },
    ];
    server.links = vec![
        SpanContext::parse(
            "00-11111111111111111111111111111111-2222222222222222-00",
            None,
        )
        .unwrap(),
    ];
    server.error = Some(Cow::Borrowed("-32602"));
    let mut client = Span::new(
        server_cx.child(),
        Some(server_cx.span_id),
        Arc::from("x".repeat(200)),
        Kind::Client,
        5,
    );
    client.end = 6;
    vec![server, client]
}

#[test]
fn the_official_definitions_read_every_field_back() {
    let spans = spans();
    let body = Encoder::new("gateway-1").request(&spans);
    let request = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
    assert_eq!(request.resource_spans.len(), 1);
    let resource = &request.resource_spans[0];
    let attributes = &resource.resource.as_ref().unwrap().attributes;
    assert_eq!(
        text(attributes, "service.name"),
        Some(any_value::Value::StringValue("gateway-1".into()))
    );
    assert_eq!(resource.scope_spans.len(), 1);
    let scope = &resource.scope_spans[0];
    assert_eq!(scope.scope.as_ref().unwrap().name, "shadowcat");
    assert_eq!(scope.spans.len(), 2);

    let (ours, theirs) = (&spans[0], &scope.spans[0]);
    assert_eq!(theirs.trace_id, ours.context.trace_id);
    assert_eq!(theirs.span_id, ours.context.span_id);
    assert_eq!(theirs.parent_span_id, ours.parent.unwrap());
    assert_eq!(theirs.trace_state, "k=v,a=b");
    assert_eq!(theirs.name, "tools/call echo");
    assert_eq!(theirs.kind, span::SpanKind::Server as i32);
    assert_eq!(theirs.start_time_unix_nano, ours.start);
    assert_eq!(theirs.end_time_unix_nano, ours.end);
    assert_eq!(theirs.flags, 0x301);
    assert_eq!(theirs.attributes.len(), 6);
    assert_eq!(
        text(&theirs.attributes, "mcp.method.name"),
        Some(any_value::Value::StringValue("tools/call".into()))
    );
    assert_eq!(
        text(&theirs.attributes, "server.port"),
        Some(any_value::Value::IntValue(8080))
    );
    assert_eq!(
        text(&theirs.attributes, "negative"),
        Some(any_value::Value::IntValue(-3))
    );
    assert_eq!(
        text(&theirs.attributes, "shadowcat.answered_by_proxy"),
        Some(any_value::Value::BoolValue(true))
    );
    assert_eq!(
        text(&theirs.attributes, "long"),
        Some(any_value::Value::StringValue("é".repeat(300)))
    );
    assert_eq!(theirs.events.len(), 2);
    assert_eq!(theirs.events[0].name, "rule");
    assert_eq!(theirs.events[0].time_unix_nano, 1_700_000_000_000_000_500);
    assert_eq!(
        text(&theirs.events[0].attributes, "shadowcat.rule"),
        Some(any_value::Value::StringValue("deny".into()))
    );
    assert_eq!(theirs.events[1].name, "delayed");
    assert!(theirs.events[1].attributes.is_empty());
    assert_eq!(theirs.links.len(), 1);
    assert_eq!(theirs.links[0].trace_id, [0x11; 16]);
    assert_eq!(theirs.links[0].span_id, [0x22; 8]);
    assert_eq!(theirs.links[0].flags, 0x300);
    let status = theirs.status.as_ref().unwrap();
    assert_eq!(status.code, status::StatusCode::Error as i32);
    assert_eq!(status.message, "-32602");

    let (ours, theirs) = (&spans[1], &scope.spans[1]);
    assert_eq!(theirs.parent_span_id, spans[0].context.span_id);
    assert_eq!(theirs.kind, span::SpanKind::Client as i32);
    assert_eq!(theirs.name, &*ours.name);
    assert_eq!(theirs.flags, 0x101);
    assert_eq!(theirs.trace_state, "k=v,a=b");
    assert!(theirs.status.is_none());
    assert!(theirs.attributes.is_empty());
}

#[test]
fn a_batch_of_many_is_one_request() {
    let one = spans();
    let many: Vec<Span> = one.iter().cycle().take(1_000).cloned().collect();
    let mut encoder = Encoder::new("s");
    let body = encoder.request(&many);
    let request = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
    assert_eq!(request.resource_spans[0].scope_spans[0].spans.len(), 1_000);
    // The encoder is reused: the next request is as the first.
    assert_eq!(encoder.request(&one), Encoder::new("s").request(&one));
    let empty = ExportTraceServiceRequest::decode(encoder.request(&[]).as_slice()).unwrap();
    assert!(empty.resource_spans[0].scope_spans[0].spans.is_empty());
}

#[test]
fn varint_lengths_match_what_is_written() {
    for value in [
        0,
        1,
        127,
        128,
        16_383,
        16_384,
        u64::from(u32::MAX),
        u64::MAX,
    ] {
        let mut out = Vec::new();
        varint(&mut out, value);
        assert_eq!(out.len(), varint_len(value), "{value}");
    }
}
