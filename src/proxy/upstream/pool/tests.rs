//! The pool with real processes (`sh` scripts): spares, health checks, bounds, closing.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

use super::{MAX_CONCURRENT_SPAWNS, Pool, PoolError};
use crate::config::PoolConfig;
use crate::transport::child::{ChildCounters, ChildSpec};

fn sh(script: &str, marker: Option<&std::path::Path>) -> ChildSpec {
    ChildSpec {
        program: "sh".into(),
        args: vec!["-c".into(), script.into()],
        env: marker
            .map(|m| ("MARK".into(), m.as_os_str().to_owned()))
            .into_iter()
            .collect(),
        cwd: None,
    }
}

/// A stand-in server: answers `ping` (the pool's warm-up) with `{}`, echoes every other line.
const ECHO: &str = r#"while IFS= read -r line; do case "$line" in *'"method":"ping"'*) echo '{"jsonrpc":"2.0","id":"shadowcat-warm-up","result":{}}' ;; *) printf '%s\n' "$line" ;; esac; done"#;

fn config(min_idle: usize, acquire_timeout: Duration) -> PoolConfig {
    PoolConfig {
        min_idle,
        idle_timeout: None,
        acquire_timeout,
        ..PoolConfig::default()
    }
}

/// Waits (up to 10 s) for `done`.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.split(' ').nth(2).is_none_or(|state| state != "Z"))
}

#[tokio::test]
async fn a_spare_is_started_ahead_handed_to_a_session_once_and_replaced() {
    let counters = Arc::new(ChildCounters::default());
    let pool = Pool::new(
        sh(ECHO, None),
        config(1, Duration::from_secs(5)),
        4,
        counters.clone(),
    );
    until("a spare", || pool.idle() == 1).await;
    assert_eq!(counters.spawns.load(Ordering::Relaxed), 1);
    assert_eq!(counters.idle.load(Ordering::Relaxed), 1);

    let mut lease = pool.acquire().await.unwrap();
    assert!(!lease.cold, "the spare was not used");
    assert_eq!(counters.busy.load(Ordering::Relaxed), 1);
    // It works: what goes in comes out (and the warm-up's answer was not kept).
    let mut stdin = lease.child.stdin.take().unwrap();
    stdin.write_all(b"{\"jsonrpc\":\"2.0\"}\n").await.unwrap();
    let mut line = String::new();
    BufReader::new(&mut lease.output)
        .read_line(&mut line)
        .await
        .unwrap();
    assert_eq!(line, "{\"jsonrpc\":\"2.0\"}\n");

    // Another is started in its place, and the used one is never handed out again.
    until("a new spare", || pool.idle() == 1).await;
    assert_eq!(counters.spawns.load(Ordering::Relaxed), 2);
    let second = pool.acquire().await.unwrap();
    assert!(!second.cold);
    assert_ne!(second.child.pid(), lease.child.pid());
    drop(second);
    drop(lease);
    until("the busy gauge back to 0", || {
        counters.busy.load(Ordering::Relaxed) == 0
    })
    .await;
}

#[tokio::test]
async fn without_spares_each_acquire_starts_a_process() {
    let counters = Arc::new(ChildCounters::default());
    let pool = Pool::new(
        sh(ECHO, None),
        config(0, Duration::from_secs(5)),
        4,
        counters.clone(),
    );
    let a = pool.acquire().await.unwrap();
    let b = pool.acquire().await.unwrap();
    assert!(a.cold && b.cold);
    assert_eq!(counters.spawns.load(Ordering::Relaxed), 2);
    assert_eq!(pool.idle(), 0);
}

#[tokio::test]
async fn a_spare_whose_stdout_closed_is_never_handed_out() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ready");
    let counters = Arc::new(ChildCounters::default());
    // Closes its stdout, then says it is ready, then lives on.
    let pool = Pool::new(
        sh("exec >&-; touch \"$MARK\"; exec sleep 30", Some(&marker)),
        config(1, Duration::from_secs(5)),
        4,
        counters.clone(),
    );
    // The first ends its warm-up (its stdout is closed): warm-ups are off, and the next spare
    // is queued unchecked, to be found dead when a session would take it.
    until("a spare", || pool.idle() == 1 && marker.exists()).await;
    let lease = pool.acquire().await.unwrap();
    assert!(lease.cold, "a spare with a closed stdout was handed out");
    assert!(counters.dead_spares.load(Ordering::Relaxed) >= 2);
}

#[tokio::test]
async fn spares_that_die_idle_are_retired_and_retried_with_backoff() {
    let counters = Arc::new(ChildCounters::default());
    let pool = Pool::new(
        sh("exit 3", None),
        config(1, Duration::from_secs(5)),
        4,
        counters.clone(),
    );
    until("a dead spare found", || {
        counters.dead_spares.load(Ordering::Relaxed) >= 1
    })
    .await;
    // Backing off: 1 s, then 2 s, then 4 s between attempts, not one start per tick.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let spawns = counters.spawns.load(Ordering::Relaxed);
    assert!(
        (2..=4).contains(&spawns),
        "{spawns} starts of a command that exits at once in ~5 s"
    );
    drop(pool);
}

#[tokio::test]
async fn what_a_spare_wrote_before_its_session_reaches_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ready");
    let pool = Pool::new(
        sh(
            &format!("echo early; touch \"$MARK\"; {ECHO}"),
            Some(&marker),
        ),
        config(1, Duration::from_secs(5)),
        4,
        Arc::default(),
    );
    until("a spare", || pool.idle() == 1 && marker.exists()).await;
    // The maintenance task has looked at it meanwhile (a tick), and kept what it read.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut lease = pool.acquire().await.unwrap();
    assert!(!lease.cold);
    let mut line = String::new();
    BufReader::new(&mut lease.output)
        .read_line(&mut line)
        .await
        .unwrap();
    assert_eq!(line, "early\n");
}

#[tokio::test]
async fn an_acquire_waits_for_a_process_to_be_given_back_then_times_out() {
    let counters = Arc::new(ChildCounters::default());
    let pool = Pool::new(
        sh(ECHO, None),
        config(0, Duration::from_millis(300)),
        1,
        counters.clone(),
    );
    let first = pool.acquire().await.unwrap();
    let error = pool.acquire().await.unwrap_err();
    assert!(matches!(error, PoolError::TimedOut(_)), "{error}");
    assert!(error.to_string().contains("--pool-acquire-timeout"));
    assert_eq!(counters.waits.load(Ordering::Relaxed), 1);
    assert_eq!(counters.timeouts.load(Ordering::Relaxed), 1);

    // One waiting while the first session ends gets its place.
    let waiting = tokio::spawn({
        let pool = pool.clone();
        async move { pool.acquire().await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(first);
    let second = waiting.await.unwrap().unwrap();
    assert!(second.cold);
}

#[tokio::test]
async fn a_command_that_cannot_start_is_named_and_gives_its_place_back() {
    let counters = Arc::new(ChildCounters::default());
    let spec = ChildSpec {
        program: "/nonexistent/mcp-server".into(),
        args: Vec::new(),
        env: Vec::new(),
        cwd: None,
    };
    let pool = Pool::new(spec, config(0, Duration::from_secs(2)), 1, counters.clone());
    for _ in 0..2 {
        // Not a timeout the second time: the failed start gave its permit back.
        let error = pool.acquire().await.unwrap_err();
        assert!(matches!(error, PoolError::Spawn { .. }), "{error}");
        assert!(error.to_string().contains("/nonexistent/mcp-server"));
    }
    assert_eq!(counters.spawn_failures.load(Ordering::Relaxed), 2);
    assert_eq!(counters.spawning.load(Ordering::Relaxed), 0);
}

/// 48 sessions at once: every one gets its process (none refused), but never more than
/// [`MAX_CONCURRENT_SPAWNS`] start at once, and past the first second's [`SPAWNS_PER_SECOND`]
/// the rest wait for the rate (so the burst takes at least half a second: a lower bound, which
/// a slow machine only makes longer).
#[tokio::test]
async fn a_burst_of_sessions_is_paced_not_refused() {
    let counters = Arc::new(ChildCounters::default());
    let pool = Pool::new(
        sh(ECHO, None),
        config(0, Duration::from_secs(10)),
        64,
        counters.clone(),
    );
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let (inner, peak) = (pool.inner.clone(), peak.clone());
        tokio::spawn(async move {
            loop {
                let starting = MAX_CONCURRENT_SPAWNS - inner.starts.available_permits();
                peak.fetch_max(starting as u64, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        })
    };
    let began = tokio::time::Instant::now();
    let acquires = (0..48).map(|_| pool.acquire());
    let leases = futures_util::future::join_all(acquires).await;
    let took = began.elapsed();
    sampler.abort();
    assert!(leases.iter().all(Result::is_ok));
    assert_eq!(counters.spawns.load(Ordering::Relaxed), 48);
    assert_eq!(counters.busy.load(Ordering::Relaxed), 48);
    let peak = peak.load(Ordering::Relaxed);
    assert!(
        (1..=MAX_CONCURRENT_SPAWNS as u64).contains(&peak),
        "{peak} starts at once"
    );
    assert!(took >= Duration::from_millis(400), "48 starts in {took:?}");
}

/// A pool with one spare, and that spare's pid (its command writes it to a file first).
async fn pool_with_a_spare() -> (Pool, u32) {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pid");
    let pool = Pool::new(
        sh(&format!("echo $$ > \"$MARK\"; {ECHO}"), Some(&marker)),
        config(1, Duration::from_secs(10)),
        2,
        Arc::default(),
    );
    until("a spare", || {
        pool.idle() == 1 && std::fs::read_to_string(&marker).is_ok_and(|p| p.ends_with('\n'))
    })
    .await;
    let pid = std::fs::read_to_string(&marker)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(pid));
    (pool, pid)
}

#[tokio::test]
async fn closing_stops_the_spares_and_fails_acquires() {
    let (pool, pid) = pool_with_a_spare().await;
    pool.close(Duration::from_secs(2)).await;
    until("the spare stopped", || !alive(pid)).await;
    assert_eq!(pool.idle(), 0);
    assert!(matches!(pool.acquire().await, Err(PoolError::Closed)));
}

#[tokio::test]
async fn closing_fails_an_acquire_that_waits() {
    let pool = Pool::new(
        sh(ECHO, None),
        config(0, Duration::from_secs(10)),
        1,
        Arc::default(),
    );
    let _busy = pool.acquire().await.unwrap();
    let waiting = tokio::spawn({
        let pool = pool.clone();
        async move { pool.acquire().await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    pool.close(Duration::from_secs(2)).await;
    let outcome = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(outcome, Err(PoolError::Closed)), "{outcome:?}");
}

#[tokio::test]
async fn dropping_the_last_handle_kills_the_spares() {
    let (pool, pid) = pool_with_a_spare().await;
    drop(pool);
    until("the spare gone", || !alive(pid)).await;
}

#[tokio::test]
async fn a_session_waits_for_a_warming_spare_rather_than_start_another() {
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("go");
    let counters = Arc::new(ChildCounters::default());
    // Takes its time to start: it answers the warm-up only once the test lets it.
    let script = format!("while [ ! -e \"$MARK\" ]; do sleep 0.05; done; {ECHO}");
    let pool = Pool::new(
        sh(&script, Some(&gate)),
        config(1, Duration::from_secs(10)),
        4,
        counters.clone(),
    );
    until("a spare starting", || {
        counters.spawns.load(Ordering::Relaxed) == 1
    })
    .await;
    let acquire = tokio::spawn({
        let pool = pool.clone();
        async move { pool.acquire().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        counters.spawns.load(Ordering::Relaxed),
        1,
        "a process was started while a spare was warming up"
    );
    std::fs::write(&gate, b"").unwrap();
    let lease = acquire.await.unwrap().unwrap();
    assert!(!lease.cold);
}

#[tokio::test]
async fn a_server_that_ends_when_pinged_early_gets_spares_without_a_warm_up() {
    let counters = Arc::new(ChildCounters::default());
    // Ends on a ping before initialize (as rmcp's servers do), else echoes.
    let script = r#"while IFS= read -r line; do case "$line" in *'"method":"ping"'*) exit 1 ;; *) printf '%s\n' "$line" ;; esac; done"#;
    let pool = Pool::new(
        sh(script, None),
        config(1, Duration::from_secs(10)),
        4,
        counters.clone(),
    );
    until("a spare", || pool.idle() == 1).await;
    assert_eq!(counters.dead_spares.load(Ordering::Relaxed), 1);
    let mut lease = pool.acquire().await.unwrap();
    assert!(!lease.cold);
    let mut stdin = lease.child.stdin.take().unwrap();
    stdin.write_all(b"{\"id\":1}\n").await.unwrap();
    let mut line = String::new();
    BufReader::new(&mut lease.output)
        .read_line(&mut line)
        .await
        .unwrap();
    assert_eq!(line, "{\"id\":1}\n");
}

#[tokio::test]
async fn a_session_does_not_wait_out_its_timeout_for_a_spare_that_stays_silent() {
    let counters = Arc::new(ChildCounters::default());
    // Never answers (its warm-up takes the whole WARM_UP_TIMEOUT).
    let pool = Pool::new(
        sh("exec sleep 60", None),
        config(1, Duration::from_secs(1)),
        4,
        counters.clone(),
    );
    until("a spare starting", || {
        counters.spawns.load(Ordering::Relaxed) == 1
    })
    .await;
    // It waits half its --pool-acquire-timeout for the spare, then starts its own.
    let lease = pool.acquire().await.unwrap();
    assert!(lease.cold);
    assert_eq!(counters.spawns.load(Ordering::Relaxed), 2);
}
