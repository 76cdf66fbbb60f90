//! The live view (`--ui-listen`): a web page served by the proxy that shows its sessions and
//! their messages as they flow, and the tapes. The page (`ui/assets`, plain HTML, CSS and
//! JavaScript, no build step) is compiled into the binary and needs nothing from the network.
//!
//! - `GET /`, `/app.js`, `/app.css`: the page.
//! - `GET /api/events`: the live feed ([`crate::telemetry::feed`]) as server-sent events: one
//!   `message` event per message, `missed` when this watcher fell behind and lost some.
//! - `GET /api/sessions`: the running sessions, and those the history store keeps.
//! - `GET /api/stats`: the feed's counts (watchers, events published, events missed).
//! - `GET /api/config`: what the page is configured with (`--ui-trace-url`).
//! - `GET /api/tapes`, `GET /api/tapes/{file}`: the tapes, and one tape's messages.
//!
//! It listens on loopback unless `--ui-token-file` gives it a token (the configuration refuses a
//! non-loopback address without one). On loopback it refuses a request whose `Host` is not a
//! loopback name (DNS rebinding); everywhere, one whose `Origin` is another site's: a page
//! elsewhere cannot read the traffic through the visitor's browser. With a token, a page opened
//! as `/?token=TOKEN` gets a cookie (a random value of this process's, not the token:
//! `HttpOnly`, `SameSite=Strict`) and is sent to `/`; a script sends `Authorization: Bearer`.

mod api;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::config::ui::UiConfig;
use crate::session::SessionManager;
use crate::task::Task;
use crate::telemetry::feed::Feed;
use crate::transport::serve::{ConnectionLimits, serve};

/// Connections the live view serves at once (a few browser tabs, each with its event stream).
pub const UI_MAX_CONNECTIONS: usize = 32;
/// How long open pages get to let go at exit.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// What the pages read: the sessions, the feed, where tapes are.
#[derive(Debug)]
struct Shared {
    sessions: Arc<SessionManager>,
    feed: Arc<Feed>,
    tapes: PathBuf,
    /// Where a trace id links to (`--ui-trace-url`).
    trace_url: Option<String>,
    /// Who may look: where it listens, and the token and cookie, when it has one.
    access: Access,
    /// The data dir whose history store lists ended sessions (`None`: `--session-store
    /// memory`, no history).
    history: Option<PathBuf>,
}

/// The running live view.
#[derive(Debug)]
pub struct Ui {
    stop: CancellationToken,
    task: Task<()>,
    /// Where it listens.
    pub local: SocketAddr,
}

/// Starts serving the live view as `ui` says, for `sessions` and `feed`.
pub async fn start(
    ui: &UiConfig,
    config: &Config,
    sessions: Arc<SessionManager>,
    feed: Arc<Feed>,
) -> anyhow::Result<Ui> {
    let listener = tokio::net::TcpListener::bind(ui.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--ui-listen)", ui.listen))?;
    let local = listener
        .local_addr()
        .context("cannot read the live view's address")?;
    let tapes = match &config.recording {
        Some(recording) if recording.target.is_dir() => recording.target.clone(),
        _ => config.data_dir.join(crate::config::TAPES_DIR),
    };
    let shared = Arc::new(Shared {
        sessions,
        feed,
        tapes,
        trace_url: ui.trace_url.clone(),
        access: Access {
            loopback: local.ip().is_loopback(),
            token: ui.token.clone(),
            cookie: random_hex(),
        },
        history: (config.session_store == crate::config::StoreKind::Sqlite)
            .then(|| config.data_dir.clone()),
    });
    let limits = ConnectionLimits {
        max_connections: UI_MAX_CONNECTIONS,
        max_per_client: UI_MAX_CONNECTIONS,
        ..ConnectionLimits::default()
    };
    let stop = CancellationToken::new();
    let task = Task::spawn(
        "ui",
        serve(
            listener,
            routes(shared),
            limits,
            Arc::default(),
            stop.clone(),
        ),
    );
    // The one line a person needs: where to point the browser.
    tracing::info!("live view on http://{local}/");
    Ok(Ui { stop, task, local })
}

impl Ui {
    /// Stops serving; open pages get [`STOP_GRACE`] to let go.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if self.task.join_within(STOP_GRACE).await.is_none() {
            self.task.abort();
        }
    }
}

fn routes(shared: Arc<Shared>) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route(
            "/",
            get(|| async { asset(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/app.css",
            get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }),
        )
        .route("/api/events", get(api::events))
        .route("/api/sessions", get(api::sessions))
        .route("/api/stats", get(api::stats))
        .route("/api/config", get(api::config))
        .route("/api/tapes", get(api::tapes))
        .route("/api/tapes/{file}", get(api::tape))
        .layer(axum::middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

const INDEX_HTML: &str = include_str!("ui/assets/index.html");
const APP_JS: &str = include_str!("ui/assets/app.js");
const APP_CSS: &str = include_str!("ui/assets/app.css");

/// What the page may load and run: only its own files, and nothing may frame it.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Who may look at the live view.
#[derive(Debug)]
struct Access {
    /// Whether it listens on loopback (then `Host` must be a loopback name).
    loopback: bool,
    /// `--ui-token-file`: what a page or script must present.
    token: Option<crate::config::ListenerToken>,
    /// The cookie a page that presented the token gets: random, this process's own.
    cookie: String,
}

/// The cookie that keeps a page in.
const COOKIE: &str = "shadowcat_ui";

/// 128 random bits as hex.
fn random_hex() -> String {
    let mut bytes = [0u8; 16];
    // Without the OS's randomness the cookie would be guessable; a zero cookie is refused
    // below, so the page then needs the token on every load (a script, the header).
    if getrandom::fill(&mut bytes).is_err() {
        return String::new();
    }
    crate::protocol::trace_context::hex(&bytes)
}

impl Access {
    /// Whether `request` presents the token (a bearer header) or the cookie.
    fn lets_in(&self, request: &axum::extract::Request) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let headers = request.headers();
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .is_some_and(|(_, presented)| token.accepts(presented.trim()));
        bearer
            || (!self.cookie.is_empty()
                && headers
                    .get_all(header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .filter_map(|pair| pair.trim().split_once('='))
                    .any(|(name, value)| {
                        name == COOKIE
                            && bool::from(subtle::ConstantTimeEq::ct_eq(
                                value.as_bytes(),
                                self.cookie.as_bytes(),
                            ))
                    }))
    }

    /// For `/?token=…`: the cookie and a redirect to `/` if the token is right; `None` if the
    /// request carries no token in its query.
    fn signs_in(&self, request: &axum::extract::Request) -> Option<Response> {
        let token = self.token.as_ref()?;
        let presented = request
            .uri()
            .query()
            .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "token"))?
            .1;
        if !token.accepts(&presented) || self.cookie.is_empty() {
            return Some(unauthorized());
        }
        let cookie = format!(
            "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
            self.cookie
        );
        Some(
            (
                StatusCode::SEE_OTHER,
                [
                    (header::LOCATION, "/".to_owned()),
                    (header::SET_COOKIE, cookie),
                ],
            )
                .into_response(),
        )
    }
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::WWW_AUTHENTICATE, "Bearer realm=\"shadowcat-ui\""),
        ],
        "Unauthorized: open the live view as /?token=TOKEN (the token in --ui-token-file), \
         or send Authorization: Bearer TOKEN\n",
    )
        .into_response()
}

/// Refuses a request for a `Host` that is not a loopback name (on loopback), from another
/// site's page (`Origin`), or without the token (with `--ui-token-file`); marks every answer
/// with the page's security policy.
async fn guard(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let access = &shared.access;
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if access.loopback && !crate::config::is_loopback_authority(host) {
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            format!("Misdirected Request: Host {host:?} is not this loopback server"),
        );
    }
    if let Some(origin) = request.headers().get(header::ORIGIN) {
        // Its own page, reached directly or through a TLS front.
        let same = origin
            .to_str()
            .ok()
            .and_then(|o| {
                o.strip_prefix("http://")
                    .or_else(|| o.strip_prefix("https://"))
            })
            .is_some_and(|o| o.eq_ignore_ascii_case(host));
        if !same {
            return refuse(
                StatusCode::FORBIDDEN,
                "Forbidden: the live view answers its own page only".to_owned(),
            );
        }
    }
    if request.uri().path() == "/" {
        if let Some(signed_in) = access.signs_in(&request) {
            return signed_in;
        }
    }
    if !access.lets_in(&request) {
        return unauthorized();
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

fn refuse(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message + "\n",
    )
        .into_response()
}
