//! Credentials for an HTTP upstream that change while we run: a bearer token read from a file
//! (read again when the upstream refuses the one we sent: a rotated secret), or one got from an
//! OAuth authorization server with the client-credentials grant (RFC 6749 §4.4) for the upstream
//! as the resource (RFC 8707), kept and renewed before it expires.
//!
//! One task owns the fetching: requests read the current `Authorization` without waiting, and a
//! request the upstream answered 401 asks for a renewal and waits (boundedly) for it. Renewals
//! asked for are at most one per [`MIN_RENEW_GAP`], whatever the traffic, so a client cannot
//! make us hammer the authorization server. [`exchange`] trades callers' tokens instead.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use serde::Deserialize;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::backoff::Backoff;
use super::http::{Authorizer, HttpClient};
use crate::task::Task;

mod exchange;
pub use exchange::{Exchanger, MAX_EXCHANGED};

/// Least time between two renewals asked for by refused requests.
pub const MIN_RENEW_GAP: Duration = Duration::from_secs(5);
/// Longest the authorization server may take to answer.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a refused request waits for renewed credentials: a renewal asked for may wait out
/// [`MIN_RENEW_GAP`], then take [`TOKEN_TIMEOUT`].
pub const RENEW_WAIT: Duration = Duration::from_secs(16);
/// Longest lifetime believed of a token (`expires_in`), so that no arithmetic on it overflows.
const MAX_LIFETIME: Duration = Duration::from_secs(86_400);
/// Largest token response read.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;
/// Largest token file read.
const MAX_TOKEN_FILE: u64 = 16 * 1024;

/// Where the credentials come from.
#[derive(Clone, PartialEq, Eq)]
pub enum Source {
    /// A bearer token in this file (its first line, trimmed).
    File(PathBuf),
    /// The client-credentials grant.
    Grant(Grant),
    /// RFC 8693 token exchange of each caller's token (at the gateway), as this client.
    Exchange(Grant),
}

/// An OAuth client's grant of its own credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Grant {
    /// The authorization server's token endpoint.
    pub token_url: Uri,
    /// Our client id there.
    pub client_id: String,
    /// Our client secret there (never logged).
    pub client_secret: String,
    /// The scopes to ask for (none: the server's default).
    pub scopes: Vec<String>,
    /// The resource the token is for: the upstream's URL (RFC 8707).
    pub resource: String,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown())
    }
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("scopes", &self.scopes)
            .field("resource", &self.resource)
            .finish_non_exhaustive()
    }
}

impl Source {
    /// How it is named in logs (never a secret).
    pub fn shown(&self) -> String {
        match self {
            Self::File(path) => format!("the token file {}", path.display()),
            Self::Grant(grant) => format!(
                "the client-credentials grant of {} at {}",
                grant.client_id,
                super::http::shown_url(&grant.token_url)
            ),
            Self::Exchange(grant) => format!(
                "token exchange by {} at {}",
                grant.client_id,
                super::http::shown_url(&grant.token_url)
            ),
        }
    }
}

/// Why no credentials could be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The source refused for good (an unreadable file, a grant the server refuses): nothing
    /// will change until the configuration does.
    Refused(String),
    /// It may work later (the server unreachable, or failing).
    Unavailable(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(why) | Self::Unavailable(why) => f.write_str(why),
        }
    }
}

/// The current credentials for one upstream, kept current by a task.
#[derive(Debug)]
pub struct Credentials {
    current: watch::Receiver<Option<HeaderValue>>,
    wake: Arc<Notify>,
    task: Task<()>,
}

impl Drop for Credentials {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A fetched credential: the `Authorization` value, and how long it is good for.
type Fetched = (HeaderValue, Option<Duration>);

impl Credentials {
    /// The credentials of `source`, fetched now: a refusal is an error (the configuration is
    /// wrong); an authorization server that cannot be reached now is retried in the background
    /// (requests go without credentials meanwhile, and the upstream refuses them).
    /// `tls` and `connect_timeout` are for the authorization server.
    pub async fn start(
        source: Source,
        tls: rustls::ClientConfig,
        connect_timeout: Duration,
    ) -> Result<Arc<Self>, String> {
        let fetcher = Fetcher::new(source, tls, connect_timeout);
        let first = fetcher.fetch().await;
        let (initial, next) = match first {
            Ok((value, lifetime)) => {
                tracing::info!(source = %fetcher.source.shown(), valid_for = ?lifetime, "credentials for the upstream");
                (Some(value), lifetime.map(renew_after))
            }
            Err(Failure::Refused(why)) => return Err(why),
            Err(Failure::Unavailable(why)) => {
                tracing::warn!(source = %fetcher.source.shown(), %why, "no credentials for the upstream yet; retrying");
                (None, Some(Duration::from_secs(1)))
            }
        };
        let (tx, current) = watch::channel(initial);
        let wake = Arc::new(Notify::new());
        let task = Task::spawn("upstream-credentials", fetcher.run(tx, wake.clone(), next));
        Ok(Arc::new(Self {
            current,
            wake,
            task,
        }))
    }

    /// The `Authorization` value to send now, if there is one.
    pub fn authorization(&self) -> Option<HeaderValue> {
        self.current.borrow().clone()
    }

    /// The upstream refused `rejected` (401): the credentials renewed, if they differ from it
    /// (perhaps renewed already by another request); `None` when the renewal gave the same
    /// ones, failed, or took longer than [`RENEW_WAIT`].
    pub async fn renew(&self, rejected: Option<&HeaderValue>) -> Option<HeaderValue> {
        let mut current = self.current.clone();
        let now = current.borrow_and_update().clone();
        if now.as_ref() != rejected {
            return now;
        }
        self.wake.notify_one();
        match tokio::time::timeout(RENEW_WAIT, current.changed()).await {
            Ok(Ok(())) => current
                .borrow_and_update()
                .clone()
                .filter(|now| Some(now) != rejected),
            Ok(Err(_)) | Err(_) => None,
        }
    }
}

impl Authorizer for Credentials {
    fn authorization(&self) -> Option<HeaderValue> {
        Credentials::authorization(self)
    }

    fn renew<'a>(
        &'a self,
        rejected: Option<&'a HeaderValue>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Option<HeaderValue>> + Send + 'a>> {
        Box::pin(Credentials::renew(self, rejected))
    }
}

/// When to renew a credential good for `lifetime`: after three quarters of it.
fn renew_after(lifetime: Duration) -> Duration {
    (lifetime * 3 / 4).max(Duration::from_secs(1))
}

/// What fetches the credentials.
struct Fetcher {
    source: Source,
    /// For the token endpoint (a grant).
    client: Option<HttpClient>,
}

/// The authorization server's answer (RFC 6749 §5.1).
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    token_type: String,
    #[serde(default)]
    expires_in: Option<Seconds>,
}

/// `expires_in`: a number, or (as some servers send it) a string of one.
#[derive(Deserialize)]
#[serde(untagged)]
enum Seconds {
    Number(u64),
    Text(String),
}

impl Seconds {
    /// The lifetime, at most [`MAX_LIFETIME`]; `None` when it is not a number.
    fn lifetime(&self) -> Option<Duration> {
        let secs = match self {
            Self::Number(n) => *n,
            Self::Text(text) => text.trim().parse().ok()?,
        };
        Some(Duration::from_secs(secs).min(MAX_LIFETIME))
    }
}

/// Its refusal (§5.2).
#[derive(Deserialize)]
struct TokenError {
    error: String,
    error_description: Option<String>,
}

impl Fetcher {
    fn new(source: Source, tls: rustls::ClientConfig, connect_timeout: Duration) -> Self {
        let client = match &source {
            Source::File(_) => None,
            Source::Grant(grant) | Source::Exchange(grant) => {
                Some(token_client(grant, tls, connect_timeout))
            }
        };
        Self { source, client }
    }

    /// Keeps `tx` current: renews before expiry, when woken (at most once per
    /// [`MIN_RENEW_GAP`]), and after a failure (backing off); ends when no one reads it.
    async fn run(
        self,
        tx: watch::Sender<Option<HeaderValue>>,
        wake: Arc<Notify>,
        mut next: Option<Duration>,
    ) {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        // When the last fetch was, and the last one a refused request asked for.
        let mut last = Instant::now();
        let mut asked: Option<Instant> = None;
        loop {
            let due = next.map(|after| last + after);
            tokio::select! {
                () = sleep_until(due) => {}
                () = wake.notified() => {
                    if let Some(at) = asked {
                        tokio::select! {
                            () = tokio::time::sleep_until(at + MIN_RENEW_GAP) => {}
                            () = tx.closed() => return,
                        }
                    }
                    asked = Some(Instant::now());
                }
                () = tx.closed() => return,
            }
            last = Instant::now();
            match self.fetch().await {
                Ok((value, lifetime)) => {
                    backoff.reset();
                    tracing::debug!(source = %self.source.shown(), valid_for = ?lifetime, "renewed the credentials for the upstream");
                    tx.send_replace(Some(value));
                    next = lifetime.map(renew_after);
                }
                Err(failure) => {
                    let delay = backoff.next_delay(None);
                    tracing::warn!(source = %self.source.shown(), why = %failure, retry_in = ?delay, "cannot renew the credentials for the upstream");
                    // Waiters learn that nothing changed.
                    tx.send_modify(|_| {});
                    next = Some(delay);
                }
            }
        }
    }

    async fn fetch(&self) -> Result<Fetched, Failure> {
        match (&self.source, &self.client) {
            (Source::File(path), _) => read_token_file(path).await,
            (Source::Grant(grant), Some(client)) => grant_token(client, grant).await,
            (Source::Grant(_), None) => Err(Failure::Refused("no client for the grant".into())),
            (Source::Exchange(_), _) => Err(Failure::Refused(
                "token exchange trades each caller's token, not one of our own".into(),
            )),
        }
    }
}

/// The client for `grant`'s token endpoint: our client id and secret in HTTP Basic (each
/// form-encoded first, RFC 6749 §2.3.1), a form body, a JSON answer within [`TOKEN_TIMEOUT`].
fn token_client(grant: &Grant, tls: rustls::ClientConfig, connect_timeout: Duration) -> HttpClient {
    let mut headers = HeaderMap::new();
    let basic = format!(
        "{}:{}",
        form_encode(&grant.client_id),
        form_encode(&grant.client_secret)
    );
    let basic = base64::engine::general_purpose::STANDARD.encode(basic);
    if let Ok(mut value) = HeaderValue::from_str(&format!("Basic {basic}")) {
        value.set_sensitive(true);
        headers.insert(AUTHORIZATION, value);
    }
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    HttpClient::new(grant.token_url.clone(), headers, connect_timeout, tls)
        .with_response_timeout(Some(TOKEN_TIMEOUT))
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `text` as `application/x-www-form-urlencoded` writes it.
fn form_encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// `Bearer <token>`, marked sensitive, if `token` can be a header value.
fn bearer(token: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

async fn read_token_file(path: &std::path::Path) -> Result<Fetched, Failure> {
    let shown = path.display();
    let read = async {
        let file = tokio::fs::File::open(path).await?;
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(
            &mut tokio::io::AsyncReadExt::take(file, MAX_TOKEN_FILE + 1),
            &mut text,
        )
        .await?;
        Ok::<_, std::io::Error>(text)
    };
    let text = read
        .await
        .map_err(|e| Failure::Refused(format!("cannot read the token file {shown}: {e}")))?;
    if text.len() as u64 > MAX_TOKEN_FILE {
        return Err(Failure::Refused(format!(
            "the token file {shown} is larger than {MAX_TOKEN_FILE} bytes"
        )));
    }
    let token = text.lines().next().unwrap_or_default().trim();
    if token.is_empty() {
        return Err(Failure::Refused(format!("the token file {shown} is empty")));
    }
    let value = bearer(token).ok_or_else(|| {
        Failure::Refused(format!(
            "the token in {shown} has characters a header cannot carry"
        ))
    })?;
    Ok((value, None))
}

async fn grant_token(client: &HttpClient, grant: &Grant) -> Result<Fetched, Failure> {
    let form = {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        form.append_pair("resource", &grant.resource);
        if !grant.scopes.is_empty() {
            form.append_pair("scope", &grant.scopes.join(" "));
        }
        form.finish()
    };
    token_request(client, form, false).await
}

/// POSTs `form` to the token endpoint and reads the token it answers (RFC 6749 §5).
/// `exchanged`: the answer to a token exchange, whose token may be of type `N_A` (RFC 8693
/// §2.2.1).
async fn token_request(
    client: &HttpClient,
    form: String,
    exchanged: bool,
) -> Result<Fetched, Failure> {
    let at = client.shown();
    let (status, body) = client
        .post_form(Bytes::from(form), MAX_TOKEN_RESPONSE)
        .await
        .map_err(|why| Failure::Unavailable(format!("the token endpoint {at}: {why}")))?;
    if status != StatusCode::OK {
        let said =
            serde_json::from_slice::<TokenError>(&body)
                .ok()
                .map(|e| match e.error_description {
                    Some(description) => format!("{} ({description})", e.error),
                    None => e.error,
                });
        let why = format!(
            "the token endpoint {at} answered {status}{}",
            said.map(|s| format!(": {s}")).unwrap_or_default()
        );
        return Err(
            if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS {
                Failure::Refused(why)
            } else {
                Failure::Unavailable(why)
            },
        );
    }
    let token: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
        Failure::Unavailable(format!("the token endpoint {at} answered no token: {e}"))
    })?;
    let not_applicable = exchanged && token.token_type == "N_A";
    if !token.token_type.eq_ignore_ascii_case("bearer") && !not_applicable {
        return Err(Failure::Refused(format!(
            "the token endpoint {at} gave a {:?} token; only bearer tokens are sent",
            token.token_type
        )));
    }
    let value = bearer(&token.access_token).ok_or_else(|| {
        Failure::Unavailable(format!(
            "the token endpoint {at} gave a token a header cannot carry"
        ))
    })?;
    Ok((value, token.expires_in.as_ref().and_then(Seconds::lifetime)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_credentials_are_form_encoded_before_basic() {
        assert_eq!(form_encode("a b:c"), "a+b%3Ac");
        assert_eq!(
            renew_after(Duration::from_secs(3600)),
            Duration::from_secs(2700)
        );
        assert_eq!(renew_after(Duration::from_secs(1)), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_token_file_is_read_again_when_the_upstream_refuses_its_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let tls = super::super::http::tls_config(&[]);
        let credentials =
            Credentials::start(Source::File(path.clone()), tls, Duration::from_secs(1))
                .await
                .unwrap();
        let first = credentials.authorization().unwrap();
        assert_eq!(first, "Bearer first");
        assert!(first.is_sensitive());
        std::fs::write(&path, "second").unwrap();
        // Not read again until refused.
        assert_eq!(credentials.authorization().unwrap(), "Bearer first");
        let renewed = credentials.renew(Some(&first)).await.unwrap();
        assert_eq!(renewed, "Bearer second");
        // A request refused with the old one learns of the new one at once.
        assert_eq!(
            credentials.renew(Some(&first)).await.unwrap(),
            "Bearer second"
        );
        let missing = Credentials::start(
            Source::File(dir.path().join("none")),
            super::super::http::tls_config(&[]),
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(missing.contains("cannot read the token file"), "{missing}");
    }
}
