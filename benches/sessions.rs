//! Session manager costs: create, touch, lookup and a cleanup pass at 10k and 100k sessions,
//! touch from one and two threads, and memory per idle session; sealing and unsealing a
//! cluster's session id (`--cluster-key-file`), which every request of a cluster pays.
//!
//! Run: `cargo bench --bench sessions`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::disallowed_types,
    missing_docs
)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use shadowcat::protocol::Direction;
use shadowcat::session::{Session, SessionConfig, SessionManager, TransportKind};

fn manager(n: usize) -> (Arc<SessionManager>, Vec<Arc<Session>>) {
    let config = SessionConfig {
        max_sessions: n + 16,
        idle_timeout: Some(Duration::from_secs(3600)),
        ..SessionConfig::default()
    };
    let m = SessionManager::new(config, None);
    let sessions = (0..n)
        .map(|_| m.create(TransportKind::Stdio, None).unwrap())
        .collect();
    (m, sessions)
}

fn sessions(c: &mut Criterion) {
    let mut group = c.benchmark_group("sessions");
    for n in [10_000usize, 100_000] {
        let (m, live) = manager(n);
        group.bench_with_input(BenchmarkId::new("create_and_end", n), &n, |b, _| {
            b.iter(|| {
                let s = m.create(TransportKind::Stdio, None).unwrap();
                m.end(s.id(), shadowcat::session::EndReason::Closed);
            });
        });
        let one = live[n / 2].clone();
        group.bench_with_input(BenchmarkId::new("touch", n), &n, |b, _| {
            b.iter(|| {
                one.record_frame(Direction::ClientToServer);
                m.touch(black_box(&one));
            });
        });
        let id = one.id().clone();
        group.bench_with_input(BenchmarkId::new("lookup", n), &n, |b, _| {
            b.iter(|| m.get(black_box(&id)).unwrap());
        });
        group.bench_with_input(
            BenchmarkId::new("cleanup_pass_nothing_expired", n),
            &n,
            |b, _| {
                b.iter(|| m.cleanup(tokio::time::Instant::now()));
            },
        );
    }
    group.finish();

    // Touch scaling: the same number of touches per thread, on different sessions.
    let (m, live) = manager(1_000);
    let mut group = c.benchmark_group("touch_threads");
    for threads in [1usize, 2] {
        group.bench_with_input(
            BenchmarkId::from_parameter(threads),
            &threads,
            |b, &threads| {
                b.iter_custom(|iters| {
                    let start = std::time::Instant::now();
                    std::thread::scope(|scope| {
                        for t in 0..threads {
                            let (m, s) = (&m, &live[t * 7]);
                            scope.spawn(move || {
                                for _ in 0..iters {
                                    s.record_frame(Direction::ClientToServer);
                                    m.touch(s);
                                }
                            });
                        }
                    });
                    // Time per touch per thread: equal to the 1-thread figure if nothing serialises.
                    start.elapsed()
                });
            },
        );
    }
    group.finish();
}

/// Resident memory of this process, in bytes.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn memory_per_session(_: &mut Criterion) {
    let before = rss();
    let (m, live) = manager(100_000);
    let after = rss();
    println!(
        "memory per idle session: {:.0} bytes ({} sessions, RSS +{:.1} MiB)",
        (after - before) as f64 / 100_000.0,
        live.len(),
        (after - before) as f64 / 1_048_576.0
    );
    drop((m, live));
}

// Memory first: later groups free sessions into the allocator, which would hide the growth.
/// A session id sealed for a cluster: sealing it (once per session) and opening it (once per
/// request), with one key and with a rotated list whose old key sealed it; and an altered id.
fn sealed_ids(c: &mut Criterion) {
    use shadowcat::session::seal::principal_digest;
    use shadowcat::session::{Sealer, SessionId, Unsealed};
    let old = "an old cluster secret, at least thirty-two characters";
    let new = "a new cluster secret, at least thirty-two characters long";
    let sealer = Sealer::new(&[old]).unwrap();
    let rotated = Sealer::new(&[new, old]).unwrap();
    let session = Unsealed {
        id: SessionId::random(),
        upstream: Some("6f1c2a0e-9b7d-4c1e-8a3f-2d5e6b7c8d9e".into()),
        protocol_version: Some("2025-06-18".into()),
        principal: Some(principal_digest("https://issuer.example|alice")),
        owner: None,
    };
    let token = sealer.seal(&session).unwrap();
    let mut altered = token.clone().into_bytes();
    altered[40] = if altered[40] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    let mut group = c.benchmark_group("seal");
    group.bench_function("seal", |b| b.iter(|| sealer.seal(black_box(&session))));
    group.bench_function("unseal", |b| b.iter(|| sealer.unseal(black_box(&token))));
    group.bench_function("unseal_rotated_old_key", |b| {
        b.iter(|| rotated.unseal(black_box(&token)));
    });
    group.bench_function("unseal_altered", |b| {
        b.iter(|| sealer.unseal(black_box(&altered)));
    });
    group.finish();
    assert_eq!(rotated.unseal(&token), Some(session));
    assert_eq!(sealer.unseal(&altered), None);
}

criterion_group!(benches, memory_per_session, sessions, sealed_ids);
criterion_main!(benches);
