//! Getting finished spans to the collector off the hot path: a bounded queue that a span joins
//! without waiting (or is dropped from, counted, when the queue is full), and a thread of its
//! own that encodes and sends them in batches (the proxy's runtime has one thread; encoding
//! spans there would take turns with the traffic). A collector that is slow or down costs the
//! proxy counted drops, never a wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter, SpanProcessor};

/// Spans waiting to be sent, at most; more are dropped (and counted).
pub const QUEUE_SPANS: usize = 4_096;
/// Spans sent in one request to the collector, at most.
pub const BATCH_SPANS: usize = 512;
/// How long a span waits for its batch to fill before the batch goes anyway.
pub const BATCH_WAIT: Duration = Duration::from_secs(1);

/// What became of finished spans.
#[derive(Debug, Default)]
pub struct Counts {
    /// Accepted by the collector.
    pub exported: AtomicU64,
    /// Dropped: the queue was full, or the collector refused or could not be reached.
    pub dropped: AtomicU64,
}

impl Counts {
    fn dropped(&self, n: usize) {
        self.dropped.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// The spans waiting, shared by the proxy (which adds) and the export thread (which takes).
#[derive(Debug, Default)]
struct Waiting {
    spans: Vec<SpanData>,
    /// No more spans will come: send what is here and stop.
    closed: bool,
}

#[derive(Debug, Default)]
struct Shared {
    waiting: Mutex<Waiting>,
    /// Wakes the export thread: a batch is full, or the queue closed.
    ready: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        // Each critical section is one push or one swap: a poisoned lock is still consistent.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The span processor: adds each finished, sampled span to the queue, or drops it. The export
/// thread is woken once per full batch (or by its own timer), never per span: a wake-up across
/// threads costs more than a span.
#[derive(Debug)]
pub struct Queue {
    shared: Arc<Shared>,
    counts: Arc<Counts>,
}

impl Queue {
    /// A queue whose spans the exporter `make` builds sends, from a thread of its own (with a
    /// Tokio runtime, on which the exporter is built and runs). The thread ends once the queue
    /// is shut down and what it held is sent; the receiver hears when.
    pub fn start<E, F>(
        make: F,
        counts: Arc<Counts>,
    ) -> anyhow::Result<(Self, tokio::sync::oneshot::Receiver<()>)>
    where
        E: SpanExporter + 'static,
        F: FnOnce() -> anyhow::Result<E> + Send + 'static,
    {
        let shared = Arc::new(Shared::default());
        let (built, ready) = std::sync::mpsc::channel();
        let (finished, done) = tokio::sync::oneshot::channel();
        let (taken, sent) = (shared.clone(), counts.clone());
        std::thread::Builder::new()
            .name("shadowcat-otlp".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = built.send(Err(anyhow::anyhow!(
                            "cannot start the span exporter's runtime: {e}"
                        )));
                        return;
                    }
                };
                // Built inside the runtime: its connections' tasks run here, not on the proxy's.
                let exporter = match runtime.block_on(async { make() }) {
                    Ok(exporter) => {
                        let _ = built.send(Ok(()));
                        exporter
                    }
                    Err(e) => {
                        let _ = built.send(Err(e));
                        return;
                    }
                };
                send(&runtime, &exporter, &taken, &sent);
                let _ = exporter.shutdown();
                let _ = finished.send(());
            })?;
        ready
            .recv()
            .map_err(|_| anyhow::anyhow!("the span exporter's thread ended at once"))??;
        Ok((Self { shared, counts }, done))
    }
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        let mut waiting = self.shared.lock();
        if waiting.closed || waiting.spans.len() >= QUEUE_SPANS {
            drop(waiting);
            self.counts.dropped(1);
            return;
        }
        waiting.spans.push(span);
        let full = waiting.spans.len() == BATCH_SPANS;
        drop(waiting);
        if full {
            self.shared.ready.notify_one();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.shared.ready.notify_one();
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.shared.lock().closed = true;
        self.shared.ready.notify_one();
        Ok(())
    }
}

/// Sends batches until the queue closes: each full batch at once, what there is at least every
/// [`BATCH_WAIT`]. A failed batch is dropped (counted) and logged, at most once a minute: a
/// collector that is down must not flood the log either.
fn send<E: SpanExporter>(
    runtime: &tokio::runtime::Runtime,
    exporter: &E,
    shared: &Shared,
    counts: &Counts,
) {
    let mut last_warning: Option<tokio::time::Instant> = None;
    loop {
        let (spans, closed) = {
            let mut waiting = shared.lock();
            if waiting.spans.len() < BATCH_SPANS && !waiting.closed {
                waiting = shared
                    .ready
                    .wait_timeout(waiting, BATCH_WAIT)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            (std::mem::take(&mut waiting.spans), waiting.closed)
        };
        let mut spans = spans.into_iter().peekable();
        while spans.peek().is_some() {
            let batch: Vec<SpanData> = spans.by_ref().take(BATCH_SPANS).collect();
            let n = batch.len();
            match runtime.block_on(exporter.export(batch)) {
                Ok(()) => {
                    counts.exported.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    counts.dropped(n);
                    let now = tokio::time::Instant::now();
                    if last_warning.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60))
                    {
                        last_warning = Some(now);
                        tracing::warn!(error = %e, spans = n, "cannot export spans to the OTLP collector; they are dropped (counted in shadowcat_trace_spans_dropped_total)");
                    }
                }
            }
        }
        if closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};

    /// A collector that takes a batch and never answers.
    #[derive(Debug)]
    struct Hung;

    impl SpanExporter for Hung {
        fn export(&self, _batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
            std::future::pending()
        }
    }

    #[test]
    fn a_collector_that_hangs_costs_counted_drops_never_a_wait() {
        let counts = Arc::new(Counts::default());
        let (queue, _done) = Queue::start(|| Ok(Hung), counts.clone()).unwrap();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_span_processor(queue)
            .build();
        let tracer = provider.tracer("test");
        let n = 2 * QUEUE_SPANS + 1_000;
        // Were ending a span to wait for the queue, this would never return: the export hangs.
        for _ in 0..n {
            tracer.start("call").end();
        }
        // The hung export holds what it took (a queue's worth at most), the queue its bound;
        // the rest are dropped.
        let dropped = counts.dropped.load(Ordering::Relaxed);
        assert!(
            dropped >= (n - 2 * QUEUE_SPANS) as u64,
            "{dropped} of {n} dropped"
        );
        assert_eq!(counts.exported.load(Ordering::Relaxed), 0);
    }
}
