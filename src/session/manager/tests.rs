use std::collections::HashSet;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::protocol::{Direction, Method, RequestId};

fn config(max_sessions: usize, idle: Option<u64>, age: Option<u64>) -> SessionConfig {
    SessionConfig {
        max_sessions,
        idle_timeout: idle.map(Duration::from_millis),
        max_age: age.map(Duration::from_millis),
        max_pending_requests: 4,
        max_pending_total: 1_000,
        ..SessionConfig::default()
    }
}

/// Every structure agrees with the others and with a recount, and every bound holds.
fn check_invariants(m: &SessionManager) {
    let (map, lru, _) = m.sizes();
    assert_eq!(map, lru, "map and LRU disagree");
    assert!(
        map <= m.config.max_sessions,
        "more sessions than --max-sessions"
    );
    let map_ids: HashSet<SessionId> = m.sessions.iter().map(|e| e.key().clone()).collect();
    let lru_ids: HashSet<SessionId> = m.lru_order().into_iter().collect();
    assert_eq!(map_ids, lru_ids);
    assert_eq!(
        m.slots.load(Ordering::Relaxed),
        map,
        "capacity reservations leaked"
    );
    let metrics = m.metrics();
    assert_eq!(
        metrics.active, map as u64,
        "active metric drifted from the recount"
    );
    assert_eq!(
        metrics.created,
        metrics.active + metrics.ended.iter().sum::<u64>()
    );
    let pending: usize = m.sessions.iter().map(|e| e.value().pending_count()).sum();
    assert_eq!(
        metrics.pending_requests, pending as u64,
        "pending metric drifted from the recount"
    );
    if m.config.idle_timeout.is_some() || m.config.max_age.is_some() {
        let heap_ids: HashSet<SessionId> = lock(&m.expiry)
            .iter()
            .map(|Reverse((_, id))| id.clone())
            .collect();
        assert!(
            map_ids.is_subset(&heap_ids),
            "a live session has no expiry entry"
        );
    }
}

#[derive(Debug, Clone)]
enum Op {
    Create,
    Touch(usize),
    End(usize, usize),
    AddPending(usize, i64),
    Answer(usize, i64),
    Advance(u64),
    Cleanup,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Create),
        2 => (0..8usize).prop_map(Op::Touch),
        1 => (0..8usize, 0..5usize).prop_map(|(i, r)| Op::End(i, r)),
        1 => (0..8usize, 0..6i64).prop_map(|(i, id)| Op::AddPending(i, id)),
        1 => (0..8usize, 0..6i64).prop_map(|(i, id)| Op::Answer(i, id)),
        2 => (1..1500u64).prop_map(Op::Advance),
        1 => Just(Op::Cleanup),
    ]
}

fn nth(m: &SessionManager, i: usize) -> Option<Arc<Session>> {
    let ids = m.lru_order();
    if ids.is_empty() {
        None
    } else {
        m.get(&ids[i % ids.len()])
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn any_sequence_keeps_map_lru_heap_and_metrics_in_agreement(ops in proptest::collection::vec(op(), 1..80)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(async {
            let m = SessionManager::new(config(4, Some(1000), Some(5000)), None);
            let mut ended_by_us = 0u64;
            for op in ops {
                match op {
                    Op::Create => {
                        let before = m.len();
                        match m.create(TransportKind::Stdio, None) {
                            Ok(_) => {}
                            Err(SessionError::TooManySessions { .. }) => {
                                // Refused only when full and nothing is idle.
                                assert_eq!(before, 4);
                                assert!(m.sessions.iter().all(|e| e.value().pending_count() > 0));
                            }
                            Err(SessionError::Exists) => panic!("a random id is never taken"),
                        }
                    }
                    Op::Touch(i) => if let Some(s) = nth(&m, i) {
                        s.record_frame(Direction::ClientToServer);
                        m.touch(&s);
                    },
                    Op::End(i, r) => if let Some(s) = nth(&m, i) {
                        assert!(m.end(s.id(), EndReason::ALL[r]).is_some());
                        assert!(m.end(s.id(), EndReason::ALL[r]).is_none(), "ended twice");
                        assert!(s.state().is_closed() && s.pending_count() == 0);
                        ended_by_us += 1;
                    },
                    Op::AddPending(i, id) => if let Some(s) = nth(&m, i) {
                        let _ = s.pending(Direction::ClientToServer).insert(RequestId::Number(id), Method::Ping);
                    },
                    Op::Answer(i, id) => if let Some(s) = nth(&m, i) {
                        // An answer is a message, as the tracker counts it.
                        if s.pending(Direction::ClientToServer).remove(&RequestId::Number(id)).is_some() {
                            s.record_frame(Direction::ServerToClient);
                            m.touch(&s);
                        }
                    },
                    Op::Advance(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
                    Op::Cleanup => {
                        let now = Instant::now();
                        m.cleanup(now);
                        let (live, _, heap) = m.sizes();
                        prop_assert!(heap <= 2 * live + 64, "heap grew to {heap} for {live} sessions");
                        // Nothing that is due survives a pass: each survivor is either not yet
                        // due or busy and younger than the maximum age.
                        for entry in &m.sessions {
                            let s = entry.value();
                            let due = m.deadline(s).is_some_and(|d| d <= now);
                            let aged = m.age_deadline(s).is_some_and(|d| d <= now);
                            prop_assert!(!due || (s.pending_count() > 0 && !aged), "a due session survived cleanup");
                        }
                    }
                }
                check_invariants(&m);
            }
            prop_assert!(m.metrics().ended.iter().sum::<u64>() >= ended_by_us);
            m.end_all(EndReason::Closed);
            check_invariants(&m);
            prop_assert_eq!(m.metrics().pending_requests, 0);
            Ok(())
        })?;
    }
}

#[tokio::test(start_paused = true)]
async fn idle_sessions_expire_and_touched_ones_do_not() {
    let m = SessionManager::new(config(10, Some(1000), None), None);
    let idle = m.create(TransportKind::Stdio, None).unwrap();
    let busy = m.create(TransportKind::Stdio, None).unwrap();
    for _ in 0..5 {
        tokio::time::advance(Duration::from_millis(400)).await;
        busy.record_frame(Direction::ClientToServer);
        m.touch(&busy);
        m.cleanup(Instant::now());
    }
    assert_eq!(idle.state(), State::Closed(EndReason::Expired));
    assert!(idle.closed_token().is_cancelled());
    assert_eq!(busy.state(), State::Initializing);
    assert_eq!(m.metrics().ended[EndReason::Expired.index()], 1);
    m.activate(&busy);
    m.begin_closing(&busy);
    assert_eq!(busy.state(), State::Closing);
    m.activate(&busy);
    assert_eq!(busy.state(), State::Closing, "no way back from closing");
    check_invariants(&m);
}

#[tokio::test(start_paused = true)]
async fn a_session_waiting_for_an_answer_is_not_idle_but_still_ages_out() {
    let m = SessionManager::new(config(10, Some(1000), Some(10_000)), None);
    let s = m.create(TransportKind::Stdio, None).unwrap();
    s.pending(Direction::ClientToServer)
        .insert(RequestId::Number(1), Method::ToolsCall)
        .unwrap();
    tokio::time::advance(Duration::from_secs(5)).await;
    m.cleanup(Instant::now());
    assert_eq!(
        s.state(),
        State::Initializing,
        "a long tool call is not idleness"
    );
    tokio::time::advance(Duration::from_secs(6)).await;
    m.cleanup(Instant::now());
    assert_eq!(
        s.state(),
        State::Closed(EndReason::Expired),
        "max age applies regardless"
    );
    assert_eq!(m.metrics().pending_requests, 0);
}

#[tokio::test(start_paused = true)]
async fn max_age_expires_even_busy_sessions() {
    let m = SessionManager::new(config(10, None, Some(3000)), None);
    let s = m.create(TransportKind::Stdio, None).unwrap();
    for _ in 0..2 {
        tokio::time::advance(Duration::from_secs(1)).await;
        s.record_frame(Direction::ClientToServer);
        m.touch(&s);
        m.cleanup(Instant::now());
    }
    assert!(!s.state().is_closed());
    tokio::time::advance(Duration::from_secs(1)).await;
    m.cleanup(Instant::now());
    assert_eq!(s.state(), State::Closed(EndReason::Expired));
}

#[tokio::test]
async fn at_the_limit_the_least_recently_used_idle_session_is_evicted() {
    let m = SessionManager::new(config(2, None, None), None);
    let a = m.create(TransportKind::Stdio, None).unwrap();
    let b = m.create(TransportKind::Stdio, None).unwrap();
    // a is older but busy, so b (idle) goes.
    a.pending(Direction::ClientToServer)
        .insert(RequestId::Number(1), Method::Ping)
        .unwrap();
    let c = m.create(TransportKind::Stdio, None).unwrap();
    assert_eq!(b.state(), State::Closed(EndReason::Evicted));
    assert!(!a.state().is_closed() && !c.state().is_closed());
    // Both remaining busy (c has a client listening on its stream): the next is refused,
    // clearly.
    let listening = c.listen();
    let err = m.create(TransportKind::Stdio, None).unwrap_err();
    assert_eq!(err, SessionError::TooManySessions { limit: 2 });
    assert!(err.to_string().contains("--max-sessions"));
    assert_eq!(m.metrics().refused_sessions, 1);
    // Once nobody listens, c is idle again, and goes.
    drop(listening);
    m.create(TransportKind::Stdio, None).unwrap();
    assert_eq!(c.state(), State::Closed(EndReason::Evicted));
    check_invariants(&m);
}

#[tokio::test(start_paused = true)]
async fn lru_order_follows_use_at_its_granularity() {
    let m = SessionManager::new(config(10, None, None), None);
    let a = m.create(TransportKind::Stdio, None).unwrap();
    let b = m.create(TransportKind::Stdio, None).unwrap();
    assert_eq!(m.lru_order(), [a.id().clone(), b.id().clone()]);
    tokio::time::advance(LRU_GRANULARITY).await;
    a.record_frame(Direction::ClientToServer);
    m.touch(&a);
    assert_eq!(m.lru_order(), [b.id().clone(), a.id().clone()]);
    // Within the granularity, a second touch doesn't move it (and takes no lock).
    b.record_frame(Direction::ClientToServer);
    m.touch(&b);
    a.record_frame(Direction::ClientToServer);
    m.touch(&a);
    assert_eq!(m.lru_order(), [a.id().clone(), b.id().clone()]);
}

#[tokio::test(start_paused = true)]
async fn the_cleanup_task_runs_on_its_cadence_survives_a_panic_and_stops() {
    let m = SessionManager::new(config(10, Some(5_000), None), None);
    let stop = CancellationToken::new();
    let mut task = m.spawn_cleanup(Duration::from_secs(10), stop.clone());
    let s = m.create(TransportKind::Stdio, None).unwrap();
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(
        !s.state().is_closed(),
        "expired before the first pass was due"
    );
    m.panic_next_cleanup.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(m.metrics().cleanup_panics, 1);
    assert!(!s.state().is_closed(), "the panicking pass did nothing");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        s.state(),
        State::Closed(EndReason::Expired),
        "the next pass ran"
    );
    assert!(m.metrics().cleanup_passes >= 1);
    stop.cancel();
    assert_eq!(task.join_within(Duration::from_secs(1)).await, Some(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_churn_with_cleanup_and_eviction_neither_deadlocks_nor_drifts() {
    let m = SessionManager::new(config(3, Some(5), Some(50)), None);
    let stop = CancellationToken::new();
    let mut cleanup = m.spawn_cleanup(Duration::from_millis(1), stop.clone());
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let m = m.clone();
            tokio::spawn(async move {
                for i in 0..400i64 {
                    let Ok(s) = m.create(TransportKind::Stdio, None) else {
                        continue;
                    };
                    for d in [Direction::ClientToServer, Direction::ServerToClient] {
                        s.record_frame(d);
                        m.touch(&s);
                        let _ = s.pending(d).insert(RequestId::Number(i), Method::Ping);
                    }
                    if (i + w) % 3 == 0 {
                        tokio::task::yield_now().await;
                    }
                    s.pending(Direction::ClientToServer)
                        .remove(&RequestId::Number(i));
                    if (i + w) % 2 == 0 {
                        m.end(s.id(), EndReason::Closed);
                    }
                    if let Some(other) = m.lru_order().first().and_then(|id| m.get(id)) {
                        m.touch(&other);
                    }
                }
            })
        })
        .collect();
    let all = futures_util::future::join_all(workers);
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("deadlock: churn did not finish");
    stop.cancel();
    cleanup.join_within(Duration::from_secs(5)).await;
    check_invariants(&m);
    m.end_all(EndReason::Killed);
    check_invariants(&m);
    let metrics = m.metrics();
    assert_eq!(metrics.active, 0);
    assert_eq!(
        metrics.pending_requests, 0,
        "pending entries outlived their sessions"
    );
    assert_eq!(m.sizes().0, 0);
    assert!(metrics.created > 0);
}

#[tokio::test]
async fn requests_pending_when_the_manager_ends_a_session_are_kept_for_its_front_end() {
    let m = SessionManager::new(config(10, None, None), None);
    let s = m.create(TransportKind::Stdio, None).unwrap();
    s.pending(Direction::ClientToServer)
        .insert(RequestId::Number(7), Method::ToolsCall)
        .unwrap();
    m.end(s.id(), EndReason::Expired);
    assert_eq!(
        m.metrics().pending_requests,
        0,
        "the budget is released at once"
    );
    let owed = s.close_pending(Direction::ClientToServer);
    assert_eq!(
        owed.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
        [RequestId::Number(7)]
    );
    assert!(
        s.close_pending(Direction::ClientToServer).is_empty(),
        "answered once"
    );
}

#[tokio::test(start_paused = true)]
async fn a_panic_on_one_due_session_does_not_lose_the_others() {
    let m = SessionManager::new(config(10, Some(1000), None), None);
    let a = m.create(TransportKind::Stdio, None).unwrap();
    let b = m.create(TransportKind::Stdio, None).unwrap();
    tokio::time::advance(Duration::from_secs(2)).await;
    m.panic_next_cleanup.store(true, Ordering::Relaxed);
    let report = m.cleanup(Instant::now());
    assert_eq!(
        report.expired, 1,
        "the other due session still expired in the same pass"
    );
    assert_eq!(m.metrics().cleanup_panics, 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    m.cleanup(Instant::now());
    assert!(
        a.state().is_closed() && b.state().is_closed(),
        "the one that panicked was retried"
    );
    check_invariants(&m);
}

#[tokio::test(start_paused = true)]
async fn heartbeats_save_changed_and_stale_records() {
    let store = Arc::new(super::super::store::MemoryStore::default());
    let writer = StoreWriter::start(store.clone(), 16).unwrap();
    let m = SessionManager::new(config(10, None, None), Some(writer));
    let s = m.create(TransportKind::Stdio, None).unwrap();
    assert_eq!(m.heartbeat(Instant::now()), 0, "just saved at creation");
    s.record_frame(Direction::ClientToServer);
    assert_eq!(m.heartbeat(Instant::now()), 1, "counts changed");
    assert_eq!(m.heartbeat(Instant::now()), 0);
    tokio::time::advance(super::super::info::HEARTBEAT).await;
    assert_eq!(
        m.heartbeat(Instant::now()),
        1,
        "not saved for a heartbeat interval"
    );
    m.close_store(Duration::from_secs(5));
    let saved = super::super::store::SessionStore::get(&*store, s.id().as_str())
        .unwrap()
        .unwrap();
    assert_eq!(saved.frames_from_client, 1);
}

#[tokio::test(start_paused = true)]
async fn the_session_of_one_stateless_request_leaves_no_history_row() {
    let store = Arc::new(super::super::store::MemoryStore::default());
    let writer = StoreWriter::start(store.clone(), 16).unwrap();
    let m = SessionManager::new(config(10, None, None), Some(writer));
    let kept = m.create(TransportKind::Http, None).unwrap();
    let unkept = m.create_unkept(TransportKind::Http, None).unwrap();
    unkept.record_frame(Direction::ClientToServer);
    tokio::time::advance(super::super::info::HEARTBEAT).await;
    assert_eq!(
        m.heartbeat(Instant::now()),
        1,
        "only the kept one is behind"
    );
    m.end(unkept.id(), EndReason::Closed).unwrap();
    assert_eq!(m.metrics().ended[0], 1, "it is counted like any other");
    m.close_store(Duration::from_secs(5));
    let store: &dyn super::super::store::SessionStore = &*store;
    assert!(store.get(kept.id().as_str()).unwrap().is_some());
    assert!(store.get(unkept.id().as_str()).unwrap().is_none());
}
