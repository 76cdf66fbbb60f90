//! Interceptor rule costs: one message through `Rules::process` with 100 rules that do not
//! match it, the way the pipeline runs it.
//!
//! - `no_params`: 100 rules on methods (globs and exact names); the message's body is never
//!   parsed. Target: p50 <= 2 µs.
//! - `tool_names`: 100 rules on tool names (`match: {tool: ...}`, the usual way to block or
//!   hide a tool); the body is read once for the name. Target: p50 <= 10 µs.
//! - `jsonpath`: 100 rules each with a JSONPath condition over params; the body is parsed once
//!   and each path evaluated. Target: p50 <= 10 µs.
//! - `none`: no rules (the stage's floor).
//!
//! The message is a `tools/call` of 200 bytes, as agents send them. Criterion prints the mean;
//! the medians (p50) are in `target/criterion/rules/*/new/estimates.json`.
//!
//! Run: `cargo bench --bench rules`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::disallowed_types,
    missing_docs
)]

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use futures_util::FutureExt as _;
use shadowcat::intercept::Rules;
use shadowcat::protocol::{Direction, Message};
use shadowcat::session::{Session, TransportKind};
use shadowcat::stage::{Context, Verdict};
use shadowcat::tape::Wire;
use shadowcat::telemetry::Metrics;

/// A rule file of `n` rules, each written by `rule(i)`.
fn file(n: usize, rule: impl Fn(usize) -> String) -> tempfile::NamedTempFile {
    let mut yaml = String::from("version: 1\nrules:\n");
    for i in 0..n {
        let _ = writeln!(yaml, "  - name: rule-{i}\n{}", rule(i));
    }
    let file = tempfile::NamedTempFile::with_suffix(".yaml").unwrap();
    std::fs::write(file.path(), yaml).unwrap();
    file
}

fn rule_sets() -> Vec<(&'static str, tempfile::NamedTempFile)> {
    vec![
        ("none", file(0, |_| String::new())),
        (
            "no_params",
            file(100, |i| {
                if i % 2 == 0 {
                    format!("    match: {{method: 'resources/x{i}/*'}}\n    block: {{}}")
                } else {
                    format!("    match: {{method: prompts/get{i}, direction: c2s}}\n    log: info")
                }
            }),
        ),
        (
            "tool_names",
            file(100, |i| {
                if i % 2 == 0 {
                    format!("    match: {{tool: 'admin_{i}_*'}}\n    hide: true")
                } else {
                    format!("    match: {{tool: delete_{i}}}\n    block: {{}}")
                }
            }),
        ),
        (
            "jsonpath",
            file(100, |i| {
                format!(
                    "    match:\n      method: tools/call\n      params:\n        - path: '$.arguments.limit'\n          equals: {}\n    block: {{}}",
                    1000 + i
                )
            }),
        ),
    ]
}

fn message() -> Message {
    let body = r#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"search","arguments":{"query":"rust async runtime benchmarks","limit":10,"lang":"en"},"_meta":{"progressToken":7}}}"#;
    Message::parse(body.as_bytes().to_vec().into()).unwrap()
}

fn rules(c: &mut Criterion) {
    let mut group = c.benchmark_group("rules");
    let session = Session::standalone(TransportKind::Stdio, 1024);
    let metrics = Metrics::default();
    let msg = message();
    for (name, file) in rule_sets() {
        let rules = Rules::load(file.path(), None).unwrap();
        group.bench_function(name, |b| {
            b.iter_batched(
                || msg.clone(),
                |msg| {
                    let cx = Context {
                        direction: Direction::ClientToServer,
                        session: &session,
                        transport: &Wire::NONE,
                        client: shadowcat::stage::Client::Local,
                        header_trace: None,
                        notes: None,
                    };
                    // No rule waits, so the future is ready at once.
                    let verdict = rules
                        .process(msg, cx, None, &metrics)
                        .now_or_never()
                        .expect("no rule waits");
                    assert!(matches!(verdict, Verdict::Forward(_)));
                    black_box(verdict)
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, rules);
criterion_main!(benches);
