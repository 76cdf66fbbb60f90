//! The Streamable HTTP client side: one shared hyper client (keep-alive connection pool) that
//! talks to an upstream MCP server, and the bounded readers for what it answers (a JSON body or
//! an SSE stream).
//!
//! Only the headers MCP defines travel from a client to the upstream; credentials (`Authorization`,
//! `Cookie`) and hop-by-hop headers never do. Fixed headers for the upstream come from
//! configuration (`--upstream-header`), and credentials that change from [`super::credentials`].

use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use tokio_util::codec::FramedRead;
use tokio_util::io::StreamReader;

use super::sse::{Item, SseDecoder};

pub use crate::protocol::headers::{
    LAST_EVENT_ID, MCP_PROTOCOL_VERSION, MCP_SESSION_ID, is_forwarded_header,
};

/// What we accept from an upstream: either answer form the spec allows.
const ACCEPT_BOTH: HeaderValue = HeaderValue::from_static("application/json, text/event-stream");
/// Default time to establish a TCP connection to the upstream.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keep-alive probes on upstream connections start after this much silence.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Idle pooled connections are closed after this long: less than the keep-alive timeout of
/// the servers MCP servers run on (5 s for uvicorn, Node's `http`, hypercorn, Apache), as
/// fetch (undici, 4 s) keeps it. A connection the server is closing as a request reuses it
/// fails that request (a reset, or an end before the answer), and a POST cannot be retried
/// safely: it may have reached the server.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// Why a request to the upstream failed before it produced an answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made, or it broke before an answer.
    #[error("cannot reach the upstream {url}: {detail}")]
    Unreachable {
        /// The upstream URL.
        url: String,
        /// What went wrong (refused, reset, timed out).
        detail: String,
        /// Whether a connection was made, so the request may have reached the server.
        connected: bool,
        /// What kind of failure: `connection_refused`, `dns`, `tls`, `timeout`, `reset`,
        /// `other`.
        kind: &'static str,
    },
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Longer than the limit.
    #[error("the body exceeds {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The connection failed mid-body.
    #[error("reading the body failed: {0}")]
    Read(String),
}

/// Where a client's `Authorization` comes from when it changes while we run (a token file, an
/// OAuth token: [`super::credentials`]).
pub trait Authorizer: std::fmt::Debug + Send + Sync {
    /// The value to send now, if there is one.
    fn authorization(&self) -> Option<HeaderValue>;

    /// The upstream refused `rejected` (401): renewed credentials, if they can be had and
    /// differ from it.
    fn renew<'a>(
        &'a self,
        rejected: Option<&'a HeaderValue>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Option<HeaderValue>> + Send + 'a>>;
}

/// The shared client for one upstream URL.
#[derive(Debug, Clone)]
pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    url: Uri,
    headers: HeaderMap,
    /// Credentials that change while we run (an OAuth token), sent as `Authorization`.
    credentials: Option<std::sync::Arc<dyn Authorizer>>,
    /// Longest wait for a response's headers (`--read-timeout`; `None`: no limit).
    response_timeout: Option<Duration>,
    /// The URL as it may be shown ([`shown_url`]).
    shown: String,
}

/// How https upstreams are verified: the platform's trusted roots, plus `extra` (a private CA,
/// `--upstream-ca`). Roots the platform store can't give are logged, not fatal: `extra` may be
/// all that is needed.
pub fn tls_config(extra: &[CertificateDer<'static>]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(%e, "could not load some of the platform's trusted certificates");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "the platform's trusted certificates");
    for cert in extra {
        if let Err(e) = roots.add(cert.clone()) {
            tracing::warn!(%e, "a --upstream-ca certificate was not usable");
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(builder) => builder.with_root_certificates(roots).with_no_client_auth(),
        // The ring provider supports the default versions; this is not reached.
        Err(e) => {
            tracing::error!(%e, "cannot set up TLS; https upstreams will fail");
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        }
    }
}

impl HttpClient {
    /// A client for `url` sending `headers` with every request, verifying https with `tls`.
    pub fn new(
        url: Uri,
        headers: HeaderMap,
        connect_timeout: Duration,
        tls: rustls::ClientConfig,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        // Idle connections (a quiet GET stream) are kept alive through NATs and firewalls.
        connector.set_keepalive(Some(TCP_KEEPALIVE));
        connector.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        Self {
            client,
            shown: shown_url(&url),
            url,
            headers,
            credentials: None,
            response_timeout: None,
        }
    }

    /// This client, sending `credentials` as `Authorization` with every request, and asking
    /// them renewed (then sending the request once more) when the upstream answers 401.
    #[must_use]
    pub fn with_credentials(mut self, credentials: Option<std::sync::Arc<dyn Authorizer>>) -> Self {
        self.credentials = credentials;
        self
    }

    /// This client, waiting at most `timeout` for each response's headers: an upstream that
    /// takes a request and never answers fails it rather than hold it for ever.
    #[must_use]
    pub fn with_response_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// The same client, sending `authorization` (marked sensitive) with every request instead
    /// of any other.
    #[must_use]
    pub fn with_authorization(&self, mut authorization: HeaderValue) -> Self {
        authorization.set_sensitive(true);
        let mut client = self.clone();
        client.credentials = None;
        client
            .headers
            .insert(http::header::AUTHORIZATION, authorization);
        client
    }

    /// Whether it sends credentials: a fixed `Authorization` or ones that are renewed.
    pub fn has_credentials(&self) -> bool {
        self.credentials.is_some() || self.headers.contains_key(http::header::AUTHORIZATION)
    }

    /// The fixed `Authorization` it sends, if any.
    pub fn authorization(&self) -> Option<&HeaderValue> {
        self.headers.get(http::header::AUTHORIZATION)
    }

    /// The upstream URL.
    pub fn url(&self) -> &Uri {
        &self.url
    }

    /// The upstream URL as it may be shown: a password and query values masked.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    fn request(&self, method: Method, session: Option<&HeaderValue>) -> http::request::Builder {
        self.request_to(method, &self.url, session)
    }

    fn request_to(
        &self,
        method: Method,
        uri: &Uri,
        session: Option<&HeaderValue>,
    ) -> http::request::Builder {
        let mut builder = Request::builder().method(method).uri(uri.clone());
        if let Some(headers) = builder.headers_mut() {
            headers.extend(self.headers.clone());
            if let Some(authorization) = self.credentials.as_ref().and_then(|c| c.authorization()) {
                headers.insert(http::header::AUTHORIZATION, authorization);
            }
            if let Some(session) = session {
                headers.insert(MCP_SESSION_ID.clone(), session.clone());
            }
        }
        builder
    }

    /// POSTs one JSON-RPC frame, with the client's MCP headers from `client_headers`.
    pub async fn post(
        &self,
        body: Bytes,
        session: Option<&HeaderValue>,
        client_headers: &HeaderMap,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        self.post_to(&self.url, body, session, client_headers).await
    }

    /// POSTs one JSON-RPC frame to `uri` (a legacy HTTP+SSE upstream's message endpoint).
    pub async fn post_to(
        &self,
        uri: &Uri,
        body: Bytes,
        session: Option<&HeaderValue>,
        client_headers: &HeaderMap,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let build = || {
            let mut builder = self.request_to(Method::POST, uri, session);
            if let Some(headers) = builder.headers_mut() {
                for (name, value) in client_headers {
                    if is_forwarded_header(name) {
                        headers.append(name.clone(), value.clone());
                    }
                }
                headers.insert(ACCEPT, ACCEPT_BOTH);
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
            builder
        };
        self.send_authorized(build, body).await
    }

    /// POSTs `form` (`application/x-www-form-urlencoded`, with this client's headers) to its
    /// URL, and reads the answer's status and body (at most `limit` bytes; the whole exchange
    /// within the response timeout).
    pub async fn post_form(
        &self,
        form: Bytes,
        limit: usize,
    ) -> Result<(StatusCode, Bytes), String> {
        let builder = self.request(Method::POST, None);
        let exchange = async {
            let response = self
                .send(builder, Full::new(form))
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let body = read_body(response.into_body(), limit)
                .await
                .map_err(|e| e.to_string())?;
            Ok((status, body))
        };
        match self.response_timeout {
            Some(limit) => tokio::time::timeout(limit, exchange)
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "no answer within {}",
                        humantime::format_duration(limit)
                    ))
                }),
            None => exchange.await,
        }
    }

    /// Sends the request `build` makes; when the upstream answers 401 to the credentials it
    /// carried and they can be renewed, sends it once more with the renewed ones (a 401 means
    /// the upstream did not act on it).
    async fn send_authorized(
        &self,
        build: impl Fn() -> http::request::Builder,
        body: Bytes,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let builder = build();
        let Some(credentials) = &self.credentials else {
            return self.send(builder, Full::new(body)).await;
        };
        let sent = builder
            .headers_ref()
            .and_then(|h| h.get(http::header::AUTHORIZATION))
            .cloned();
        let response = self.send(builder, Full::new(body.clone())).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        if credentials.renew(sent.as_ref()).await.is_none() {
            tracing::warn!(upstream = %self.shown, "the upstream refused our credentials, and none other are to be had");
            return Ok(response);
        }
        tracing::info!(upstream = %self.shown, "the upstream refused our credentials; sending again with renewed ones");
        self.send(build(), Full::new(body)).await
    }

    /// Opens the upstream's GET stream for `session`, resuming after `last_event_id`.
    pub async fn get_stream(
        &self,
        session: Option<&HeaderValue>,
        protocol_version: Option<&HeaderValue>,
        last_event_id: Option<&HeaderValue>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let build = || {
            let mut builder = self.request(Method::GET, session);
            if let Some(headers) = builder.headers_mut() {
                headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
                if let Some(version) = protocol_version {
                    headers.insert(MCP_PROTOCOL_VERSION.clone(), version.clone());
                }
                if let Some(id) = last_event_id {
                    headers.insert(LAST_EVENT_ID.clone(), id.clone());
                }
            }
            builder
        };
        self.send_authorized(build, Bytes::new()).await
    }

    /// GETs `uri` (a JSON document: metadata, a key set) and reads its body, at most `limit`
    /// bytes, all within `timeout`; anything but 200 is an error naming the status.
    pub async fn fetch(&self, uri: &Uri, limit: usize, timeout: Duration) -> Result<Bytes, String> {
        let mut builder = self.request_to(Method::GET, uri, None);
        if let Some(headers) = builder.headers_mut() {
            headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        }
        let fetched = async {
            let response = self
                .send(builder, Full::new(Bytes::new()))
                .await
                .map_err(|e| e.to_string())?;
            if response.status() != StatusCode::OK {
                return Err(format!("{} answered {}", shown_url(uri), response.status()));
            }
            read_body(response.into_body(), limit)
                .await
                .map_err(|e| e.to_string())
        };
        tokio::time::timeout(timeout, fetched)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "{} did not answer within {}",
                    shown_url(uri),
                    humantime::format_duration(timeout)
                ))
            })
    }

    /// Ends an upstream session (DELETE); any 2xx counts as done.
    pub async fn delete(
        &self,
        session: &HeaderValue,
        protocol_version: Option<&HeaderValue>,
    ) -> Result<StatusCode, UpstreamError> {
        let build = || {
            let mut builder = self.request(Method::DELETE, Some(session));
            if let (Some(headers), Some(version)) = (builder.headers_mut(), protocol_version) {
                headers.insert(MCP_PROTOCOL_VERSION.clone(), version.clone());
            }
            builder
        };
        let response = self.send_authorized(build, Bytes::new()).await?;
        Ok(response.status())
    }

    /// The URI a legacy HTTP+SSE upstream's `endpoint` event names, resolved against the upstream
    /// URL; `None` unless it stays on the upstream's origin (messages never go elsewhere).
    pub fn resolve(&self, reference: &str) -> Option<Uri> {
        let reference = reference.trim();
        if reference.starts_with('/') && !reference.starts_with("//") {
            let scheme = self.url.scheme_str()?;
            let authority = self.url.authority()?;
            return format!("{scheme}://{authority}{reference}").parse().ok();
        }
        let uri: Uri = reference.parse().ok()?;
        (uri.scheme() == self.url.scheme() && uri.authority() == self.url.authority())
            .then_some(uri)
    }

    /// Whether the upstream answers HTTP now (readiness): an `OPTIONS` request (which changes
    /// nothing at an MCP server) answered within `timeout` with a status below 500. A server
    /// that accepts connections and never answers is not ready.
    pub async fn answers(&self, timeout: Duration) -> Result<(), String> {
        let request = self.request(Method::OPTIONS, None);
        match tokio::time::timeout(timeout, self.send(request, Full::new(Bytes::new()))).await {
            Ok(Ok(response)) if response.status().is_server_error() => {
                Err(format!("it answered HTTP {}", response.status()))
            }
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            )),
        }
    }

    async fn send(
        &self,
        builder: http::request::Builder,
        body: Full<Bytes>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let request = builder.body(body).map_err(|e| UpstreamError::Unreachable {
            url: self.shown.clone(),
            detail: format!("cannot build the request: {e}"),
            connected: false,
            kind: "other",
        })?;
        let response = self.client.request(request);
        let response = match self.response_timeout {
            Some(limit) => match tokio::time::timeout(limit, response).await {
                Ok(response) => response,
                Err(_) => {
                    return Err(UpstreamError::Unreachable {
                        url: self.shown.clone(),
                        detail: format!(
                            "no response within {} (--read-timeout)",
                            humantime::format_duration(limit)
                        ),
                        connected: true,
                        kind: "timeout",
                    });
                }
            },
            None => response.await,
        };
        response.map_err(|e| UpstreamError::Unreachable {
            url: self.shown.clone(),
            detail: describe(&e),
            connected: !e.is_connect(),
            kind: classify(&e),
        })
    }
}

/// What kind of failure a client error is, from its chain of causes.
fn classify(error: &(dyn std::error::Error + 'static)) -> &'static str {
    let mut cause = Some(error);
    let mut kind = "other";
    while let Some(e) = cause {
        if e.downcast_ref::<rustls::Error>().is_some() {
            return "tls";
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return "connection_refused",
                std::io::ErrorKind::TimedOut => return "timeout",
                std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::UnexpectedEof => kind = "reset",
                _ => {}
            }
            // rustls reports through io::Errors, sometimes one inside another: look inside.
            let mut inner = io.get_ref();
            while let Some(wrapped) = inner {
                if wrapped.is::<rustls::Error>() {
                    return "tls";
                }
                inner = wrapped
                    .downcast_ref::<std::io::Error>()
                    .and_then(std::io::Error::get_ref);
            }
        }
        let text = e.to_string().to_ascii_lowercase();
        if text.contains("dns error") || text.contains("failed to lookup address") {
            return "dns";
        }
        if text.contains("timed out") || text.contains("timeout") {
            kind = "timeout";
        }
        cause = e.source();
    }
    kind
}

/// The innermost cause of a client error, which names what really happened.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// The media type of a response (`application/json`, `text/event-stream`), lowercased, without
/// parameters.
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    let media = value.split(';').next()?.trim().to_ascii_lowercase();
    Some(media)
}

/// Reads a whole body of at most `limit` bytes.
pub async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge { limit }),
        Err(e) => Err(BodyError::Read(describe(e.as_ref()))),
    }
}

/// `uri` as it may be shown (logs, errors, `/readyz`, session history, tapes): a password in
/// it and the values of its query are masked, since either may be a credential.
pub fn shown_url(uri: &Uri) -> String {
    let mut shown = String::new();
    if let Some(scheme) = uri.scheme_str() {
        shown.push_str(scheme);
        shown.push_str("://");
    }
    if let Some(authority) = uri.authority() {
        let authority = authority.as_str();
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
                shown.push_str(user);
                if userinfo.contains(':') {
                    shown.push_str(":***");
                }
                shown.push('@');
                shown.push_str(host);
            }
            None => shown.push_str(authority),
        }
    }
    shown.push_str(uri.path());
    if let Some(query) = uri.query() {
        shown.push('?');
        let masked: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) => format!("{key}=***"),
                None => pair.to_owned(),
            })
            .collect();
        shown.push_str(&masked.join("&"));
    }
    shown
}

/// [`read_body`], failing if the whole body has not arrived within `timeout` (if any).
pub async fn read_body_within<B>(
    body: B,
    limit: usize,
    timeout: Option<Duration>,
) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let Some(timeout) = timeout else {
        return read_body(body, limit).await;
    };
    tokio::time::timeout(timeout, read_body(body, limit))
        .await
        .unwrap_or_else(|_| {
            Err(BodyError::Read(format!(
                "the body did not arrive within {} (--read-timeout)",
                humantime::format_duration(timeout)
            )))
        })
}

/// The events of an SSE body, each message's data bounded by `limit` bytes.
pub fn sse_events(body: Incoming, limit: usize) -> impl Stream<Item = std::io::Result<Item>> {
    let bytes = body
        .into_data_stream()
        .map(|chunk| chunk.map_err(std::io::Error::other));
    FramedRead::new(StreamReader::new(bytes), SseDecoder::new(limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_passwords_or_query_values() {
        let shown = |url: &str| shown_url(&url.parse().unwrap());
        assert_eq!(
            shown("https://alice:s3cret@mcp.example.com:8443/mcp?token=abc&x=1&flag"),
            "https://alice:***@mcp.example.com:8443/mcp?token=***&x=***&flag"
        );
        assert_eq!(
            shown("http://127.0.0.1:9000/mcp"),
            "http://127.0.0.1:9000/mcp"
        );
        assert_eq!(shown("http://bob@h/p"), "http://bob@h/p");
        let upstream = HttpClient::new(
            "http://u:pw@127.0.0.1:9/mcp?key=k".parse().unwrap(),
            HeaderMap::new(),
            DEFAULT_CONNECT_TIMEOUT,
            tls_config(&[]),
        );
        assert!(!upstream.shown().contains("pw") && !upstream.shown().contains("=k"));
    }

    #[test]
    fn endpoints_resolve_on_the_upstreams_origin_only() {
        let upstream = HttpClient::new(
            "http://127.0.0.1:9000/sse".parse().unwrap(),
            HeaderMap::new(),
            DEFAULT_CONNECT_TIMEOUT,
            tls_config(&[]),
        );
        assert_eq!(
            upstream
                .resolve("/messages/?session_id=ab")
                .unwrap()
                .to_string(),
            "http://127.0.0.1:9000/messages/?session_id=ab"
        );
        assert!(upstream.resolve("http://127.0.0.1:9000/m").is_some());
        for elsewhere in [
            "http://evil.example/m",
            "//evil.example/m",
            "https://127.0.0.1:9000/m",
            "m",
        ] {
            assert!(upstream.resolve(elsewhere).is_none(), "{elsewhere}");
        }
    }
}
