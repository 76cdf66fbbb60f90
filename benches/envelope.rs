//! Envelope parsing: the per-message cost of reading `jsonrpc`/`id`/`method`/result-or-error
//! while leaving params and results raw. `serde_json::Value` (a full tree) is measured alongside
//! as the reference the design avoids.
//!
//! Run: `cargo bench --bench envelope`

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use shadowcat::protocol::Message;
use std::hint::black_box;

fn samples() -> Vec<(&'static str, Bytes)> {
    let big_text = "x".repeat(64 * 1024);
    vec![
        ("request_small", Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"}}}"#,
        )),
        ("notification", Bytes::from_static(
            br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"t1","progress":50,"total":100}}"#,
        )),
        ("response_64k", Bytes::from(format!(
            r#"{{"jsonrpc":"2.0","id":7,"result":{{"content":[{{"type":"text","text":"{big_text}"}}]}}}}"#
        ))),
        ("batch_10", Bytes::from(format!(
            "[{}]",
            (0..10).map(|i| format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"ping"}}"#)).collect::<Vec<_>>().join(",")
        ))),
    ]
}

fn envelope(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    for (name, frame) in samples() {
        group.throughput(Throughput::Bytes(frame.len() as u64));
        group.bench_with_input(BenchmarkId::new("envelope", name), &frame, |b, frame| {
            b.iter(|| Message::parse_frame(black_box(frame.clone())).unwrap());
        });
        group.bench_with_input(
            BenchmarkId::new("serde_json_value", name),
            &frame,
            |b, frame| {
                b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(frame)).unwrap());
            },
        );
    }
    group.finish();
}

criterion_group!(benches, envelope);
criterion_main!(benches);
