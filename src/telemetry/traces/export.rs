//! Getting finished spans to the collector off the hot path: a bounded queue that spans join
//! without waiting (or are dropped from, counted, when it is full), and a thread of its own that
//! encodes them ([`super::otlp`]) and sends them in batches over OTLP/HTTP (hyper) or OTLP/gRPC
//! (tonic). The proxy's runtime has one thread; encoding or sending there would take turns with
//! the traffic. A collector that is slow or down costs the proxy counted drops, never a wait.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;

use super::otlp::Encoder;
use super::span::Span;
use super::{EXPORT_TIMEOUT, OtlpProtocol, TraceOptions};

/// Spans waiting to be sent, at most; more are dropped (and counted).
pub const QUEUE_SPANS: usize = 4_096;
/// Spans sent in one request to the collector, at most.
pub const BATCH_SPANS: usize = 512;
/// How long a span waits for its batch to fill before the batch goes anyway.
pub const BATCH_WAIT: Duration = Duration::from_secs(1);
/// The gRPC method spans are exported with.
const GRPC_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

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
    spans: Vec<Span>,
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
        // Each critical section is a push or a swap: a poisoned lock is still consistent.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The queue finished spans join. The export thread is woken once per full batch (or by its
/// own timer), never per span: a wake-up across threads costs more than a span.
#[derive(Debug)]
pub struct Queue {
    shared: Arc<Shared>,
    counts: Arc<Counts>,
}

impl Queue {
    /// A queue whose spans are sent as `options` ask, from a thread of its own (with a Tokio
    /// runtime of its own, on which the client is built and runs). The thread ends once the
    /// queue is closed and what it held is sent; the receiver hears when.
    pub fn start(
        options: &TraceOptions,
        counts: Arc<Counts>,
    ) -> anyhow::Result<(Self, tokio::sync::oneshot::Receiver<()>)> {
        let shared = Arc::new(Shared::default());
        let (built, ready) = std::sync::mpsc::channel();
        let (finished, done) = tokio::sync::oneshot::channel();
        let (taken, sent) = (shared.clone(), counts.clone());
        let options = options.clone();
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
                let client = match runtime.block_on(async { Client::new(&options) }) {
                    Ok(client) => {
                        let _ = built.send(Ok(()));
                        client
                    }
                    Err(e) => {
                        let _ = built.send(Err(e));
                        return;
                    }
                };
                let encoder = Encoder::new(&options.service_name);
                send(&runtime, client, encoder, &taken, &sent);
                let _ = finished.send(());
            })?;
        ready
            .recv()
            .map_err(|_| anyhow::anyhow!("the span exporter's thread ended at once"))??;
        Ok((Self { shared, counts }, done))
    }

    /// Adds finished spans, or drops them (counted) when the queue is full or closed.
    pub fn push(&self, spans: impl IntoIterator<Item = Span>) {
        let mut waiting = self.shared.lock();
        let mut dropped = 0;
        let mut full = false;
        for span in spans {
            if waiting.closed || waiting.spans.len() >= QUEUE_SPANS {
                dropped += 1;
                continue;
            }
            waiting.spans.push(span);
            full |= waiting.spans.len() == BATCH_SPANS;
        }
        drop(waiting);
        if dropped > 0 {
            self.counts.dropped(dropped);
        }
        if full {
            self.shared.ready.notify_one();
        }
    }

    /// No more spans: the thread sends what is queued and ends.
    pub fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.ready.notify_one();
    }
}

/// How batches reach the collector.
#[derive(Debug)]
enum Client {
    /// OTLP/HTTP: a POST of the protobuf body.
    Http {
        client: hyper_util::client::legacy::Client<
            hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
            http_body_util::Full<Bytes>,
        >,
        endpoint: http::Uri,
        headers: http::HeaderMap,
    },
    /// OTLP/gRPC: the `Export` method, its message as the body encodes it.
    Grpc {
        grpc: tonic::client::Grpc<tonic::transport::Channel>,
        metadata: tonic::metadata::MetadataMap,
    },
}

impl Client {
    /// The client `options` ask for (built inside the export thread's runtime).
    fn new(options: &TraceOptions) -> anyhow::Result<Self> {
        let mut headers = http::HeaderMap::new();
        for (name, value) in &options.headers {
            let name = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| anyhow::anyhow!("invalid --otlp-header name {name:?}: {e}"))?;
            let value = http::HeaderValue::from_str(value)
                .map_err(|e| anyhow::anyhow!("invalid --otlp-header value: {e}"))?;
            headers.append(name, value);
        }
        let invalid = |e: &dyn std::fmt::Display| {
            anyhow::anyhow!("invalid --otlp-endpoint {:?}: {e}", options.endpoint)
        };
        let ca = options.ca.as_deref().unwrap_or_default();
        Ok(match options.protocol {
            OtlpProtocol::Http => {
                use rustls::pki_types::pem::PemObject as _;
                let extra = rustls::pki_types::CertificateDer::pem_slice_iter(ca)
                    .filter_map(Result::ok)
                    .collect::<Vec<_>>();
                let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
                connector.set_connect_timeout(Some(EXPORT_TIMEOUT));
                connector.enforce_http(false);
                // The platform's roots are read (a cost at start) only for an https collector.
                let tls = if options.endpoint.starts_with("https://") {
                    crate::transport::http::tls_config(&extra)
                } else {
                    rustls::ClientConfig::builder_with_provider(Arc::new(
                        rustls::crypto::ring::default_provider(),
                    ))
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
                };
                let connector = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls)
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(connector);
                Self::Http {
                    client: hyper_util::client::legacy::Client::builder(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .build(connector),
                    endpoint: options.endpoint.parse().map_err(|e| invalid(&e))?,
                    headers,
                }
            }
            OtlpProtocol::Grpc => {
                let mut endpoint =
                    tonic::transport::Endpoint::from_shared(options.endpoint.clone())
                        .map_err(|e| invalid(&e))?
                        .timeout(EXPORT_TIMEOUT)
                        .connect_timeout(EXPORT_TIMEOUT);
                if options.endpoint.starts_with("https://") {
                    let mut tls = tonic::transport::ClientTlsConfig::new().with_native_roots();
                    if !ca.is_empty() {
                        tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(ca));
                    }
                    endpoint = endpoint.tls_config(tls).map_err(|e| invalid(&e))?;
                }
                let channel = endpoint.connect_lazy();
                Self::Grpc {
                    grpc: tonic::client::Grpc::new(channel),
                    metadata: tonic::metadata::MetadataMap::from_headers(headers),
                }
            }
        })
    }

    /// Sends one export request; `Err` says why the collector did not take it.
    async fn export(&mut self, body: Vec<u8>) -> Result<(), String> {
        match self {
            Self::Http {
                client,
                endpoint,
                headers,
            } => {
                let mut request = http::Request::post(endpoint.clone())
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                    .body(http_body_util::Full::new(Bytes::from(body)))
                    .map_err(|e| e.to_string())?;
                request.headers_mut().extend(headers.clone());
                let response = client.request(request).await.map_err(|e| {
                    // The cause says more than "client error (Connect)".
                    std::error::Error::source(&e).map_or_else(|| e.to_string(), ToString::to_string)
                })?;
                let status = response.status();
                // Read to the end, so the connection is kept for the next batch.
                let _ = http_body_util::BodyExt::collect(response.into_body()).await;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("the collector answered HTTP {status}"))
                }
            }
            Self::Grpc { grpc, metadata } => {
                grpc.ready().await.map_err(|e| e.to_string())?;
                let mut request = tonic::Request::new(Bytes::from(body));
                *request.metadata_mut() = metadata.clone();
                grpc.unary(
                    request,
                    http::uri::PathAndQuery::from_static(GRPC_EXPORT),
                    Raw,
                )
                .await
                .map(drop)
                .map_err(|status| format!("the collector answered {status}"))
            }
        }
    }
}

/// A gRPC codec for messages already encoded: the request goes as written, the answer is kept
/// as bytes (a partial success is not told apart).
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self {
        Self
    }

    fn decoder(&mut self) -> Self {
        Self
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put(dst, item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Bytes>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n)))
    }
}

/// Sends batches until the queue closes: each full batch at once, what there is at least every
/// [`BATCH_WAIT`], each within [`EXPORT_TIMEOUT`]. A failed batch is dropped (counted) and
/// logged, at most once a minute: a collector that is down must not flood the log either.
fn send(
    runtime: &tokio::runtime::Runtime,
    mut client: Client,
    mut encoder: Encoder,
    shared: &Shared,
    counts: &Counts,
) {
    let mut last_warning: Option<tokio::time::Instant> = None;
    // Swapped with the queue's vector each round, so neither grows from empty again.
    let mut spans = Vec::with_capacity(BATCH_SPANS);
    loop {
        spans.clear();
        let closed = {
            let mut waiting = shared.lock();
            if waiting.spans.len() < BATCH_SPANS && !waiting.closed {
                waiting = shared
                    .ready
                    .wait_timeout(waiting, BATCH_WAIT)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            std::mem::swap(&mut waiting.spans, &mut spans);
            waiting.closed
        };
        for batch in spans.chunks(BATCH_SPANS) {
            let body = encoder.request(batch);
            let sent = runtime.block_on(async {
                tokio::time::timeout(EXPORT_TIMEOUT, client.export(body))
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {EXPORT_TIMEOUT:?}")))
            });
            match sent {
                Ok(()) => {
                    counts
                        .exported
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    counts.dropped(batch.len());
                    let now = tokio::time::Instant::now();
                    if last_warning.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60))
                    {
                        last_warning = Some(now);
                        tracing::warn!(error = %e, spans = batch.len(), "cannot export spans to the OTLP collector; they are dropped (counted in shadowcat_trace_spans_dropped_total)");
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
    use super::super::span::{Kind, SpanContext};
    use super::*;

    fn options(endpoint: String) -> TraceOptions {
        TraceOptions {
            endpoint,
            protocol: OtlpProtocol::Http,
            headers: Vec::new(),
            ca: None,
            sample_ratio: 1.0,
            service_name: "test".into(),
            payloads: None,
        }
    }

    fn span() -> Span {
        Span::new(
            SpanContext::root(true),
            None,
            Arc::from("call"),
            Kind::Server,
            1,
        )
    }

    /// A queue exporting to a collector that accepts connections and never answers (kept
    /// listening by the listener returned), and its counts.
    fn hung_queue() -> (Queue, Arc<Counts>, std::net::TcpListener) {
        let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}/v1/traces", hung.local_addr().unwrap());
        let counts = Arc::new(Counts::default());
        let (queue, _done) = Queue::start(&options(endpoint), counts.clone()).unwrap();
        (queue, counts, hung)
    }

    #[test]
    fn a_collector_that_hangs_costs_counted_drops_never_a_wait() {
        let (queue, counts, _hung) = hung_queue();
        let n = 2 * QUEUE_SPANS + 1_000;
        // Were adding a span to wait for the export, this would not return for seconds a
        // batch: the collector never answers.
        let began = std::time::SystemTime::now();
        for _ in 0..n {
            queue.push([span()]);
        }
        assert!(began.elapsed().unwrap() < EXPORT_TIMEOUT);
        // The hung export holds what it took (a queue's worth at most), the queue its bound;
        // the rest are dropped.
        let dropped = counts.dropped.load(Ordering::Relaxed);
        assert!(
            dropped >= (n - 2 * QUEUE_SPANS) as u64,
            "{dropped} of {n} dropped"
        );
        assert_eq!(counts.exported.load(Ordering::Relaxed), 0);
        queue.close();
    }

    #[test]
    fn spans_after_close_are_dropped_and_counted() {
        let (queue, counts, _hung) = hung_queue();
        queue.close();
        queue.push([span(), span()]);
        assert_eq!(counts.dropped.load(Ordering::Relaxed), 2);
    }
}
