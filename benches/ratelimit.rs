//! Rate-limit costs, and the memory a flood of distinct keys takes.
//!
//! - `check/*`: one `tools/call` (200 bytes) counted against limits it passes, the way the
//!   pipeline's stage runs it, uncontended: `global` (one bucket), `session`, `client`, `tool`
//!   (keyed: a hash and a shard of the bounded store), and `all` (global, session, client,
//!   method and tool at once). Target: p50 <= 200 ns for one limit.
//! - `flood`: 1,000,000 distinct client addresses against one per-client limit with its
//!   default bound (100,000 keys). Printed before the timings: the keys held and how much the
//!   process's resident memory grew, so the bound is a figure, not a hope.
//!
//! Criterion prints the mean; the medians (p50) are in
//! `target/criterion/ratelimit/*/new/estimates.json`.
//!
//! Run: `cargo bench --bench ratelimit`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::disallowed_types,
    missing_docs
)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{Criterion, criterion_group, criterion_main};
use shadowcat::protocol::{Direction, Message};
use shadowcat::ratelimit::{LimitSpec, RateLimits};
use shadowcat::session::{Session, TransportKind};
use shadowcat::stage::{Client, Context};
use shadowcat::tape::Wire;
use shadowcat::telemetry::Metrics;

/// This process's resident memory, in bytes (Linux).
fn rss() -> i64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: i64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn limits(specs: &[&str]) -> RateLimits {
    let specs: Vec<_> = specs.iter().map(|s| LimitSpec::parse(s).unwrap()).collect();
    RateLimits::new(&specs, &Metrics::default())
}

fn call() -> Message {
    let raw = r#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"search_documents","arguments":{"query":"quarterly revenue by region","limit":20,"filters":{"year":2026}},"_meta":{"progressToken":"p-42"}}}"#;
    Message::parse(raw.as_bytes().to_vec().into()).unwrap()
}

fn flood() {
    let limits = limits(&["client=1/h,burst=1"]);
    let session = Session::standalone(TransportKind::Http, 100);
    let msg = call();
    let before = rss();
    let started = std::time::Instant::now();
    for i in 0..1_000_000_u32 {
        let cx = Context {
            direction: Direction::ClientToServer,
            session: &session,
            transport: &Wire::NONE,
            client: Client::Address(IpAddr::V4(Ipv4Addr::from(i))),
            header_trace: None,
            notes: None,
        };
        limits.check(&msg, &cx).unwrap();
    }
    let took = started.elapsed();
    let bytes = rss() - before;
    let keys = limits.keys("client").unwrap();
    println!(
        "flood: 1000000 distinct clients in {took:.2?}: {keys} keys held (bound 100000), resident memory +{:.1} MiB ({} B per key)",
        bytes as f64 / (1024.0 * 1024.0),
        bytes / i64::try_from(keys.max(1)).unwrap()
    );
    limits.prune();
    let after = rss() - before;
    println!(
        "flood: after prune (keys not yet due stay): {} keys, resident memory +{:.1} MiB",
        limits.keys("client").unwrap(),
        after as f64 / (1024.0 * 1024.0)
    );
}

fn ratelimit(c: &mut Criterion) {
    flood();
    let session = Session::standalone(TransportKind::Http, 100);
    let msg = call();
    let cx = Context {
        direction: Direction::ClientToServer,
        session: &session,
        transport: &Wire::NONE,
        client: Client::Address(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))),
        header_trace: None,
        notes: None,
    };
    let mut group = c.benchmark_group("ratelimit");
    // Rates far above what the loop sends: every check passes, as most do.
    for (name, specs) in [
        ("global", vec!["global=1000000000/s"]),
        ("session", vec!["session=1000000000/s"]),
        ("client", vec!["client=1000000000/s"]),
        ("tool", vec!["tool=1000000000/s"]),
        (
            "all",
            vec![
                "global=1000000000/s",
                "session=1000000000/s",
                "client=1000000000/s",
                "method=1000000000/s",
                "tool=1000000000/s",
            ],
        ),
    ] {
        let limits = limits(&specs);
        group.bench_function(name, |b| {
            b.iter(|| black_box(limits.check(black_box(&msg), &cx)).unwrap());
        });
    }
    group.finish();
}

criterion_group!(benches, ratelimit);
criterion_main!(benches);
