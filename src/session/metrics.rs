//! Session counters. Each changes in exactly one place: `created` when the manager creates a
//! session, `ended[reason]` on the one transition into `Closed`. Active sessions are derived
//! (created − ended), so there is no third counter that could disagree.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::lifecycle::EndReason;

/// The manager's counters.
#[derive(Debug, Default)]
pub struct SessionMetrics {
    created: AtomicU64,
    ended: [AtomicU64; 5],
    refused_sessions: AtomicU64,
    refused_requests: AtomicU64,
    cleanup_passes: AtomicU64,
    cleanup_panics: AtomicU64,
    store_dropped: AtomicU64,
}

/// A point-in-time copy of [`SessionMetrics`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SessionMetricsSnapshot {
    /// Sessions created.
    pub created: u64,
    /// Sessions open now (created − ended).
    pub active: u64,
    /// Sessions ended, by reason: closed, expired, evicted, killed, error.
    pub ended: [u64; 5],
    /// New sessions refused at `--max-sessions`.
    pub refused_sessions: u64,
    /// Requests refused at a pending-request limit.
    pub refused_requests: u64,
    /// Requests pending across all sessions.
    pub pending_requests: u64,
    /// Cleanup passes run.
    pub cleanup_passes: u64,
    /// Cleanup passes that panicked (and were survived).
    pub cleanup_panics: u64,
    /// Store updates dropped because the writer fell behind.
    pub store_dropped: u64,
}

/// For people (logs): `3 created, 0 open, 3 ended (closed 1, killed 2)`, then what was
/// refused or dropped, if anything was.
impl std::fmt::Display for SessionMetricsSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ended: u64 = self.ended.iter().sum();
        write!(
            f,
            "{} created, {} open, {ended} ended",
            self.created, self.active
        )?;
        let reasons: Vec<String> = EndReason::ALL
            .iter()
            .zip(self.ended)
            .filter(|(_, n)| *n > 0)
            .map(|(reason, n)| format!("{} {n}", reason.as_str()))
            .collect();
        if !reasons.is_empty() {
            write!(f, " ({})", reasons.join(", "))?;
        }
        for (what, n) in [
            ("sessions refused", self.refused_sessions),
            ("requests refused", self.refused_requests),
            ("history updates dropped", self.store_dropped),
            ("cleanup panics", self.cleanup_panics),
        ] {
            if n > 0 {
                write!(f, ", {n} {what}")?;
            }
        }
        Ok(())
    }
}

impl SessionMetrics {
    pub(crate) fn created(&self) {
        self.created.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn ended(&self, reason: EndReason) {
        self.ended[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn refused_session(&self) {
        self.refused_sessions.fetch_add(1, Ordering::Relaxed);
    }

    /// A request was refused at a pending-request limit.
    pub fn refused_request(&self) {
        self.refused_requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn cleanup_pass(&self) {
        self.cleanup_passes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn cleanup_panic(&self) {
        self.cleanup_panics.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn store_dropped(&self) {
        self.store_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads every counter; `pending` is the shared pending-request budget's count.
    pub fn snapshot(&self, pending: usize) -> SessionMetricsSnapshot {
        let ended: [u64; 5] = std::array::from_fn(|i| self.ended[i].load(Ordering::Relaxed));
        let created = self.created.load(Ordering::Relaxed);
        SessionMetricsSnapshot {
            created,
            active: created.saturating_sub(ended.iter().sum()),
            ended,
            refused_sessions: self.refused_sessions.load(Ordering::Relaxed),
            refused_requests: self.refused_requests.load(Ordering::Relaxed),
            pending_requests: pending as u64,
            cleanup_passes: self.cleanup_passes.load(Ordering::Relaxed),
            cleanup_panics: self.cleanup_panics.load(Ordering::Relaxed),
            store_dropped: self.store_dropped.load(Ordering::Relaxed),
        }
    }
}
