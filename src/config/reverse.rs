//! The reverse proxy's own options (`reverse`): listen address, path, upstream, headers for the
//! upstream, allowed origins, admin address; validated like every other option.

use std::time::Duration;

use super::{
    ConfigError, ConfigFile, FileConfig, Scalar, TrustedProxies, either, invalid, listed,
    parse_count, parse_duration, parse_optional_duration, pick,
};
use crate::cli::{ConnectionArgs, GlobalArgs, PoolArgs, ReverseArgs, StdioServer, UpstreamArgs};
use crate::transport::child::{ChildSpec, Restart, Share};
use crate::transport::serve::ConnectionLimits;

/// Default address the reverse proxy listens on.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default path of the MCP endpoint.
pub const DEFAULT_PATH: &str = "/mcp";
/// Default number of events kept for replay per SSE stream (`--sse-replay-events`).
pub const DEFAULT_REPLAY_EVENTS: usize = 256;
/// Default interval of SSE keep-alive comments (`--sse-keepalive`).
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(15);

/// The server behind the reverse proxy.
#[derive(Debug, Clone)]
pub enum ReverseUpstream {
    /// A Streamable HTTP endpoint, and how it is reached.
    Http(UpstreamConfig),
    /// A command run once per session.
    Stdio(ChildSpec),
}

/// The pool of server processes of `reverse -- <cmd>` (`--pool-*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Spares kept started and idle.
    pub min_idle: usize,
    /// A spare idle this long is replaced (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Longest a session waits for its process.
    pub acquire_timeout: Duration,
    /// Which requests share a process.
    pub share: Share,
    /// Most sessions on one shared process (`--share always`).
    pub max_sessions_per_child: usize,
    /// When a session's process that exits is started again.
    pub restart: Restart,
    /// Most processes serving stateless (2026-07-28) requests (`--share stateless|always`).
    pub max_stateless_children: usize,
}

/// Default `--pool-idle-timeout`.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Default `--pool-acquire-timeout`.
pub const DEFAULT_POOL_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `--max-sessions-per-child`.
pub const DEFAULT_MAX_SESSIONS_PER_CHILD: usize = 64;
/// Most `--max-sessions-per-child`.
pub const MAX_SESSIONS_PER_CHILD: usize = 10_000;
/// Default `--max-stateless-children`.
pub const DEFAULT_MAX_STATELESS_CHILDREN: usize = 1;
/// Most `--max-stateless-children`: each is a running server.
pub const MAX_STATELESS_CHILDREN: usize = 64;
/// Most `--pool-min-idle`: spares are running servers.
pub const MAX_POOL_MIN_IDLE: usize = 64;

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            min_idle: 0,
            idle_timeout: Some(DEFAULT_POOL_IDLE_TIMEOUT),
            acquire_timeout: DEFAULT_POOL_ACQUIRE_TIMEOUT,
            share: Share::default(),
            max_sessions_per_child: DEFAULT_MAX_SESSIONS_PER_CHILD,
            restart: Restart::Never,
            max_stateless_children: DEFAULT_MAX_STATELESS_CHILDREN,
        }
    }
}

/// An HTTP server's options as its client: the bridge's `--url`, or the gateway's
/// `--upstream URL` ([`ReverseUpstream::Http`]).
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The server's MCP endpoint.
    pub url: http::Uri,
    /// Headers sent with every request (credentials marked sensitive).
    pub headers: http::HeaderMap,
    /// Credentials that change while we run (a token file, an OAuth grant).
    pub credentials: Option<Box<crate::transport::credentials::Source>>,
    /// Time to connect.
    pub connect_timeout: Duration,
    /// Extra CA certificates to trust for https (`--upstream-ca`).
    pub upstream_ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// Longest an answer or SSE stream may stay silent before it counts as dropped.
    pub read_timeout: Option<Duration>,
    /// Longest a request waits for its broken stream to be resumed.
    pub resume_timeout: Duration,
}

/// Which browser origins may call the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedOrigins {
    /// `http(s)://localhost`, `127.0.0.1` and `[::1]`, with any port.
    Localhost,
    /// Exactly these (lowercase, no trailing slash).
    List(Vec<String>),
    /// Any (`*`).
    Any,
}

impl AllowedOrigins {
    /// Whether a request's `Origin` header value is allowed.
    pub fn allows(&self, origin: &str) -> bool {
        let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        match self {
            Self::Any => true,
            Self::List(list) => list.contains(&origin),
            Self::Localhost => {
                let Some(rest) = origin
                    .strip_prefix("http://")
                    .or_else(|| origin.strip_prefix("https://"))
                else {
                    return false;
                };
                is_loopback_authority(rest)
            }
        }
    }
}

/// Whether `authority` (host with optional port) names this machine: `localhost`,
/// `127.0.0.1` or `[::1]`.
pub fn is_loopback_authority(authority: &str) -> bool {
    let host = if let Some(v6) = authority.strip_prefix('[') {
        match v6.split_once(']') {
            Some((host, rest)) if rest.is_empty() || port_ok(rest) => return host == "::1",
            _ => return false,
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) if port_ok(&format!(":{port}")) => host,
            Some(_) => return false,
            None => authority,
        }
    };
    host.eq_ignore_ascii_case("localhost") || host == "127.0.0.1"
}

fn port_ok(rest: &str) -> bool {
    rest.strip_prefix(':')
        .is_some_and(|p| !p.is_empty() && p.parse::<u16>().is_ok())
}

/// The reverse proxy's own options, validated.
#[derive(Debug, Clone)]
pub struct ReverseConfig {
    /// Where MCP clients connect.
    pub listen: std::net::SocketAddr,
    /// The MCP endpoint's path.
    pub path: String,
    /// The server behind us.
    pub upstream: ReverseUpstream,
    /// Origins allowed to call us.
    pub allowed_origins: AllowedOrigins,
    /// Where the admin endpoints listen, if anywhere.
    pub admin_listen: Option<std::net::SocketAddr>,
    /// The token /readyz and /metrics require (`--admin-token-file`).
    pub admin_token: Option<super::ListenerToken>,
    /// Longest a POST is held for room in its session's pending table.
    pub pending_wait: Duration,
    /// The pool of server processes (a command upstream).
    pub pool: PoolConfig,
    /// Events of a GET stream kept for replay.
    pub sse_replay_events: usize,
    /// Keep-alive comment interval on idle SSE streams (`None`: off).
    pub sse_keepalive: Option<Duration>,
    /// Proxies whose `X-Forwarded-For` is believed (`--trusted-proxy`).
    pub trusted_proxies: TrustedProxies,
    /// Bounds on client connections (`--header-timeout`, `--max-connections`, ...).
    pub connections: ConnectionLimits,
    /// Most sessions one client address may have open (settled by [`Self::settle_sessions`]).
    pub max_sessions_per_client: usize,
    /// How clients authenticate (`None`: they do not).
    pub auth: Option<super::AuthConfig>,
    /// The keys that seal session ids for a cluster of instances (`None`: no cluster).
    pub cluster: Option<super::cluster::ClusterConfig>,
    /// What the user chose of the session bounds whose gateway defaults differ from other
    /// modes': `--max-sessions`, `--session-idle-timeout` and `--max-sessions-per-client`.
    chosen: ChosenSessionBounds,
}

/// Which session bounds the command line or file gave (the rest take the gateway's defaults).
#[derive(Debug, Clone, Copy, Default)]
struct ChosenSessionBounds {
    max_sessions: bool,
    idle_timeout: bool,
    per_client: Option<usize>,
}

/// `--max-sessions` of `reverse -- <cmd>` by default: each session is a server process.
pub const DEFAULT_MAX_SESSIONS_COMMAND: usize = 100;
/// `--session-idle-timeout` of `reverse` by default: a session nobody uses is not kept (nor
/// its process) for ever.
pub const DEFAULT_GATEWAY_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// The most `--max-sessions-per-client` is by default (else a quarter of `--max-sessions`).
pub const DEFAULT_MAX_SESSIONS_PER_CLIENT: usize = 64;

impl ReverseConfig {
    /// Builds the reverse proxy's options from the command line and the config file (read here).
    pub fn build(global: &GlobalArgs, args: &ReverseArgs) -> Result<Self, ConfigError> {
        Self::build_with(&ConfigFile::read(global)?, args)
    }

    /// [`Self::build`] with the config file already read.
    #[allow(clippy::too_many_lines)] // One flat list of options reads better than fragments.
    pub fn build_with(file: &ConfigFile, args: &ReverseArgs) -> Result<Self, ConfigError> {
        let file = file.inner();
        let listen = either(args.listen.as_ref(), file.listen.as_ref())
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = parse_addr(&listen, "--listen")?;
        let admin_listen = either(args.admin_listen.as_ref(), file.admin_listen.as_ref())
            .filter(|a| !a.eq_ignore_ascii_case("off"))
            .map(|a| parse_addr(&a, "--admin-listen"))
            .transpose()?;
        if admin_listen == Some(listen) && listen.port() != 0 {
            return Err(invalid(
                "--admin-listen",
                "must differ from --listen".into(),
            ));
        }
        let connections = connection_limits(&args.connections, file)?;
        let chosen = ChosenSessionBounds {
            max_sessions: pick(args.proxy.max_sessions.as_ref(), file.max_sessions.as_ref())
                .is_some(),
            idle_timeout: pick(
                args.proxy.session_idle_timeout.as_ref(),
                file.session_idle_timeout.as_ref(),
            )
            .is_some(),
            per_client: pick(
                args.max_sessions_per_client.as_ref(),
                file.max_sessions_per_client.as_ref(),
            )
            .map(|text| parse_count(&text, "--max-sessions-per-client"))
            .transpose()?,
        };
        let path = either(args.path.as_ref(), file.path.as_ref())
            .unwrap_or_else(|| DEFAULT_PATH.to_owned());
        if !path.starts_with('/') || path.contains(['?', '#', ' ']) || path.len() > 256 {
            return Err(invalid(
                "--path",
                format!("{path:?}: expected a URL path such as /mcp"),
            ));
        }
        if !args.command.is_empty() && args.upstream.is_some() {
            return Err(invalid("--upstream", super::mode::ONE_SERVER.into()));
        }
        let upstream = if args.command.is_empty() {
            let Some(url) = either(args.upstream.as_ref(), file.upstream.as_ref()) else {
                return Err(invalid(
                    "--upstream",
                    "reverse needs a server: --upstream <URL>, or a command after --".into(),
                ));
            };
            let url = parse_upstream_url(&url, "--upstream")?;
            let headers = parse_headers(
                &listed(&args.upstream_header, file.upstream_header.clone()),
                "--upstream-header",
            )?;
            ReverseUpstream::Http(upstream_config(url, headers, &args.upstream_options, file)?)
        } else {
            let flag = (!args.upstream_header.is_empty())
                .then_some("--upstream-header")
                .or_else(|| super::credentials::any_given(&args.upstream_options));
            if let Some(flag) = flag {
                return Err(invalid(
                    flag,
                    "applies to an --upstream server, not to a server command".into(),
                ));
            }
            let mut command = args.command.iter().cloned();
            let Some(program) = command.next() else {
                return Err(invalid("CMD", "empty server command".into()));
            };
            ReverseUpstream::Stdio(ChildSpec {
                program,
                args: command.collect(),
                env: args.child.env.clone(),
                cwd: args.child.cwd.clone(),
            })
        };
        let allowed_origins =
            parse_origins(&listed(&args.allowed_origin, file.allowed_origin.clone()))?;
        let sse_replay_events = match pick(
            args.sse_replay_events.as_ref(),
            file.sse_replay_events.as_ref(),
        ) {
            Some(text) => parse_count(&text, "--sse-replay-events")?,
            None => DEFAULT_REPLAY_EVENTS,
        };
        let sse_keepalive = match pick(args.sse_keepalive.as_ref(), file.sse_keepalive.as_ref()) {
            Some(text) => parse_optional_duration(&text, "--sse-keepalive")?,
            None => Some(DEFAULT_KEEPALIVE),
        };
        let trusted_proxies =
            TrustedProxies::parse(&listed(&args.trusted_proxy, file.trusted_proxy.clone()))?;
        let pool = pool_config(
            &args.pool,
            file,
            matches!(upstream, ReverseUpstream::Http(_)),
        )?;
        let auth = super::auth::auth_config(&args.auth, file)?;
        let exchanges = matches!(&upstream, ReverseUpstream::Http(u) if matches!(u.credentials.as_deref(), Some(crate::transport::credentials::Source::Exchange(_))));
        if exchanges && auth.as_ref().is_none_or(|a| a.oauth.is_none()) {
            return Err(invalid(
                "--upstream-token-exchange",
                "--upstream-token-exchange needs --auth-issuer: the callers' tokens are what is exchanged".into(),
            ));
        }
        if exchanges && auth.as_ref().is_some_and(|a| a.api_keys.is_some()) {
            return Err(invalid(
                "--upstream-token-exchange",
                "--upstream-token-exchange and --api-key-file exclude each other: an API key is no token the authorization server issued, and is never sent to it".into(),
            ));
        }
        Ok(Self {
            trusted_proxies,
            listen,
            path,
            upstream,
            allowed_origins,
            admin_token: super::auth::admin_token(
                args.admin_token_file
                    .as_deref()
                    .or(file.admin_token_file.as_deref()),
                admin_listen,
            )?,
            admin_listen,
            pending_wait: match pick(args.pending_wait.as_ref(), file.pending_wait.as_ref()) {
                Some(text) => parse_duration(&text, "--pending-wait")?,
                None => DEFAULT_PENDING_WAIT,
            },
            pool,
            sse_replay_events,
            sse_keepalive,
            connections,
            max_sessions_per_client: DEFAULT_MAX_SESSIONS_PER_CLIENT,
            auth,
            cluster: super::cluster::options(&args.cluster, file)?,
            chosen,
        })
    }

    /// The gateway's session bounds where the user chose none: `--max-sessions` 100 when each
    /// session is a process, `--session-idle-timeout` 30m; then `--max-sessions-per-client`.
    pub fn settle_sessions(&mut self, sessions: &mut crate::session::SessionConfig) {
        if !self.chosen.max_sessions && matches!(self.upstream, ReverseUpstream::Stdio(_)) {
            sessions.max_sessions = DEFAULT_MAX_SESSIONS_COMMAND;
        }
        if !self.chosen.idle_timeout {
            sessions.idle_timeout = Some(DEFAULT_GATEWAY_IDLE_TIMEOUT);
        }
        self.max_sessions_per_client = self.chosen.per_client.unwrap_or_else(|| {
            (sessions.max_sessions / 4).clamp(1, DEFAULT_MAX_SESSIONS_PER_CLIENT)
        });
    }
}

/// `--pool-min-idle`, `--pool-idle-timeout`, `--pool-acquire-timeout`, `--share`,
/// `--max-sessions-per-child`, `--restart` (refused with an HTTP upstream, which has no
/// process to restart).
fn pool_config(
    args: &PoolArgs,
    file: &FileConfig,
    http_upstream: bool,
) -> Result<PoolConfig, ConfigError> {
    if http_upstream && args.restart.is_some() {
        return Err(invalid(
            "--restart",
            "applies to a server command, not to an --upstream server".into(),
        ));
    }
    let defaults = PoolConfig::default();
    let min_idle = match pick(args.pool_min_idle.as_ref(), file.pool_min_idle.as_ref()) {
        Some(text) => {
            let n = text.trim().parse::<usize>().map_err(|e| {
                invalid(
                    "--pool-min-idle",
                    format!("{text:?}: {e} (expected a whole number)"),
                )
            })?;
            if n > MAX_POOL_MIN_IDLE {
                return Err(invalid(
                    "--pool-min-idle",
                    format!("{n}: at most {MAX_POOL_MIN_IDLE} spares (each is a running server)"),
                ));
            }
            n
        }
        None => defaults.min_idle,
    };
    let idle_timeout = match pick(
        args.pool_idle_timeout.as_ref(),
        file.pool_idle_timeout.as_ref(),
    ) {
        Some(text) => parse_optional_duration(&text, "--pool-idle-timeout")?,
        None => defaults.idle_timeout,
    };
    let acquire_timeout = match pick(
        args.pool_acquire_timeout.as_ref(),
        file.pool_acquire_timeout.as_ref(),
    ) {
        Some(text) => parse_duration(&text, "--pool-acquire-timeout")?,
        None => defaults.acquire_timeout,
    };
    let share = args.share.or(file.share).unwrap_or_default();
    let restart = args.restart.or(file.restart).unwrap_or_default();
    let max_sessions_per_child = match pick(
        args.max_sessions_per_child.as_ref(),
        file.max_sessions_per_child.as_ref(),
    ) {
        Some(text) => count_within(&text, "--max-sessions-per-child", MAX_SESSIONS_PER_CHILD)?,
        None => defaults.max_sessions_per_child,
    };
    let max_stateless_children = match pick(
        args.max_stateless_children.as_ref(),
        file.max_stateless_children.as_ref(),
    ) {
        Some(text) => count_within(&text, "--max-stateless-children", MAX_STATELESS_CHILDREN)?,
        None => defaults.max_stateless_children,
    };
    Ok(PoolConfig {
        min_idle,
        idle_timeout,
        acquire_timeout,
        share,
        max_sessions_per_child,
        restart,
        max_stateless_children,
    })
}

/// A whole number from 1 to `max` for `option`.
fn count_within(text: &str, option: &'static str, max: usize) -> Result<usize, ConfigError> {
    match parse_count(text, option)? {
        n if n <= max => Ok(n),
        n => Err(invalid(option, format!("{n}: expected 1 to {max}"))),
    }
}

/// `--header-timeout`, `--body-timeout`, `--max-connections`, `--max-connections-per-client`.
fn connection_limits(
    args: &ConnectionArgs,
    file: &FileConfig,
) -> Result<ConnectionLimits, ConfigError> {
    let defaults = ConnectionLimits::default();
    let duration = |cli: Option<&String>, file: Option<&Scalar>, option, default| {
        pick(cli, file).map_or(Ok(default), |text| parse_duration(&text, option))
    };
    let count = |cli: Option<&String>, file: Option<&Scalar>, option, default| {
        pick(cli, file).map_or(Ok(default), |text| parse_count(&text, option))
    };
    Ok(ConnectionLimits {
        header_timeout: duration(
            args.header_timeout.as_ref(),
            file.header_timeout.as_ref(),
            "--header-timeout",
            defaults.header_timeout,
        )?,
        body_timeout: duration(
            args.body_timeout.as_ref(),
            file.body_timeout.as_ref(),
            "--body-timeout",
            defaults.body_timeout,
        )?,
        write_timeout: duration(
            args.write_timeout.as_ref(),
            file.write_timeout.as_ref(),
            "--write-timeout",
            defaults.write_timeout,
        )?,
        max_connections: count(
            args.max_connections.as_ref(),
            file.max_connections.as_ref(),
            "--max-connections",
            defaults.max_connections,
        )?,
        max_per_client: count(
            args.max_connections_per_client.as_ref(),
            file.max_connections_per_client.as_ref(),
            "--max-connections-per-client",
            defaults.max_per_client,
        )?,
    })
}

impl ReverseConfig {
    /// `forward stdio -- <cmd>`: the options of an HTTP server (`--url`) have nothing to apply to.
    pub fn check_command_only(args: &StdioServer) -> Result<(), ConfigError> {
        let given = [
            ("--header", !args.header.is_empty()),
            ("--connect-timeout", args.upstream.connect_timeout.is_some()),
            ("--upstream-ca", args.upstream.upstream_ca.is_some()),
            ("--read-timeout", args.upstream.read_timeout.is_some()),
            ("--resume-timeout", args.upstream.resume_timeout.is_some()),
        ];
        let flag = given
            .iter()
            .find_map(|(flag, set)| set.then_some(*flag))
            .or_else(|| super::credentials::any_given(&args.upstream));
        match flag {
            Some(flag) => Err(invalid(
                flag,
                "applies to a --url server, not to a server command".into(),
            )),
            None => Ok(()),
        }
    }

    /// The HTTP server behind the gateway, if that is what it is.
    pub fn http_upstream(&self) -> Option<&UpstreamConfig> {
        match &self.upstream {
            ReverseUpstream::Http(upstream) => Some(upstream),
            ReverseUpstream::Stdio(_) => None,
        }
    }

    /// The server of `forward stdio --url`, which the stdio client is bridged to through the
    /// same HTTP upstream session the gateway's sessions are: the one at `url`.
    pub fn for_url(
        file: &ConfigFile,
        args: &StdioServer,
        url: &str,
    ) -> Result<UpstreamConfig, ConfigError> {
        let file = file.inner();
        if !args.child.env.is_empty() || args.child.cwd.is_some() {
            return Err(invalid(
                "--url",
                "--env and --cwd apply to a server command, not to a --url server".into(),
            ));
        }
        let url = parse_upstream_url(url, "--url")?;
        let headers = parse_headers(&listed(&args.header, file.header.clone()), "--header")?;
        let upstream = upstream_config(url, headers, &args.upstream, file)?;
        if let Some(crate::transport::credentials::Source::Exchange(_)) =
            upstream.credentials.as_deref()
        {
            return Err(invalid(
                "--upstream-token-exchange",
                "applies to the gateway (reverse), whose callers present tokens; a stdio client presents none: use --upstream-token-url alone".into(),
            ));
        }
        Ok(upstream)
    }
}

/// Headers given as "Name: value" lines to `flag`.
fn parse_headers(lines: &[String], flag: &'static str) -> Result<http::HeaderMap, ConfigError> {
    let mut headers = http::HeaderMap::new();
    for line in lines {
        let (name, value) = parse_header(line, flag)?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// The options for reaching the HTTP server at `url` with `headers`: how to connect, which
/// CAs to trust, how long streams may be silent and broken ones are resumed.
fn upstream_config(
    url: http::Uri,
    mut headers: http::HeaderMap,
    args: &UpstreamArgs,
    file: &FileConfig,
) -> Result<UpstreamConfig, ConfigError> {
    let credentials =
        super::credentials::credentials(args, file, &url, &mut headers)?.map(Box::new);
    let connect_timeout = match pick(args.connect_timeout.as_ref(), file.connect_timeout.as_ref()) {
        Some(text) => parse_duration(&text, "--connect-timeout")?,
        None => crate::transport::http::DEFAULT_CONNECT_TIMEOUT,
    };
    Ok(UpstreamConfig {
        url,
        headers,
        credentials,
        connect_timeout,
        upstream_ca: load_ca(args.upstream_ca.as_ref().or(file.upstream_ca.as_ref()))?,
        read_timeout: read_timeout(args.read_timeout.as_ref(), file.read_timeout.as_ref())?,
        resume_timeout: resume_timeout(args.resume_timeout.as_ref(), file.resume_timeout.as_ref())?,
    })
}

/// The certificates of `--upstream-ca`: a PEM file with at least one.
fn load_ca(
    path: Option<&std::path::PathBuf>,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, ConfigError> {
    use rustls::pki_types::pem::PemObject as _;
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| invalid("--upstream-ca", format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(
            "--upstream-ca",
            format!("{}: no PEM certificate in it", path.display()),
        ));
    }
    Ok(certs)
}

/// Default `--read-timeout`: an upstream SSE stream silent this long counts as dropped.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(300);
/// Default `--resume-timeout`: a request waits this long at most for its broken stream to be
/// resumed.
pub const DEFAULT_RESUME_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `--pending-wait`: a POST is held this long at most for room in its session's pending
/// table.
pub const DEFAULT_PENDING_WAIT: Duration = Duration::from_secs(10);

fn resume_timeout(cli: Option<&String>, file: Option<&Scalar>) -> Result<Duration, ConfigError> {
    match pick(cli, file) {
        Some(text) => parse_duration(&text, "--resume-timeout"),
        None => Ok(DEFAULT_RESUME_TIMEOUT),
    }
}

fn read_timeout(
    cli: Option<&String>,
    file: Option<&Scalar>,
) -> Result<Option<Duration>, ConfigError> {
    match pick(cli, file) {
        Some(text) => parse_optional_duration(&text, "--read-timeout"),
        None => Ok(Some(DEFAULT_READ_TIMEOUT)),
    }
}

/// `--allowed-origin` values: none means localhost origins, `*` means any.
fn parse_origins(origins: &[String]) -> Result<AllowedOrigins, ConfigError> {
    Ok(if origins.is_empty() {
        AllowedOrigins::Localhost
    } else if origins.iter().any(|o| o.trim() == "*") {
        AllowedOrigins::Any
    } else {
        let mut list = Vec::new();
        for origin in origins {
            let o = origin.trim().trim_end_matches('/').to_ascii_lowercase();
            if !(o.starts_with("http://") || o.starts_with("https://")) || o.len() < 10 {
                return Err(invalid(
                    "--allowed-origin",
                    format!(
                        "{origin:?}: expected scheme://host[:port], e.g. https://app.example.com, or *"
                    ),
                ));
            }
            list.push(o);
        }
        AllowedOrigins::List(list)
    })
}

pub(super) fn parse_addr(
    text: &str,
    option: &'static str,
) -> Result<std::net::SocketAddr, ConfigError> {
    let text = text.trim();
    if let Some(port) = text.strip_prefix("localhost:") {
        let port = port
            .parse::<u16>()
            .map_err(|e| invalid(option, format!("{text:?}: {e}")))?;
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse().map_err(|_| {
        invalid(
            option,
            format!("{text:?}: expected IP:PORT, e.g. 127.0.0.1:8080 or [::1]:8080"),
        )
    })
}

fn parse_upstream_url(text: &str, flag: &'static str) -> Result<http::Uri, ConfigError> {
    let uri: http::Uri = text
        .trim()
        .parse()
        .map_err(|e| invalid(flag, format!("{text:?}: {e}")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(invalid(
                flag,
                format!(
                    "{text:?}: expected an http:// or https:// URL such as http://127.0.0.1:9000/mcp"
                ),
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid(flag, format!("{text:?}: the URL has no host")));
    }
    Ok(uri)
}

fn parse_header(
    line: &str,
    flag: &'static str,
) -> Result<(http::HeaderName, http::HeaderValue), ConfigError> {
    let Some((name, value)) = line.split_once(':') else {
        return Err(invalid(flag, format!("{line:?}: expected \"Name: value\"")));
    };
    let name = http::HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|e| invalid(flag, format!("{name:?}: {e}")))?;
    let mut value = http::HeaderValue::from_str(value.trim())
        .map_err(|e| invalid(flag, format!("value of {name}: {e}")))?;
    if matches!(
        name.as_str(),
        "authorization" | "cookie" | "proxy-authorization"
    ) {
        value.set_sensitive(true);
    }
    if matches!(
        name.as_str(),
        "host" | "content-length" | "transfer-encoding" | "connection" | "mcp-session-id"
    ) {
        return Err(invalid(
            flag,
            format!("{name} is set by shadowcat and cannot be overridden"),
        ));
    }
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::config::tests::globals;

    #[test]
    fn localhost_origins_and_hosts() {
        let local = AllowedOrigins::Localhost;
        for ok in [
            "http://localhost",
            "http://localhost:3000",
            "https://127.0.0.1:8443/",
            "http://[::1]:80",
            "HTTP://LOCALHOST",
        ] {
            assert!(local.allows(ok), "{ok}");
        }
        for bad in [
            "http://localhost.evil.com",
            "http://evil.com",
            "null",
            "http://127.0.0.1.nip.io",
            "http://localhost:99999",
            "file://localhost",
            "http://[::2]",
        ] {
            assert!(!local.allows(bad), "{bad}");
        }
        let list = AllowedOrigins::List(vec!["https://app.example.com".into()]);
        assert!(list.allows("https://app.example.com"));
        assert!(!list.allows("http://app.example.com"));
        assert!(AllowedOrigins::Any.allows("https://anything"));
    }

    fn reverse(args: &[&str]) -> Result<ReverseConfig, ConfigError> {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from(
            ["shadowcat", "reverse"]
                .iter()
                .copied()
                .chain(args.iter().copied()),
        )
        .unwrap();
        let crate::cli::Command::Reverse(args) = cli.command else {
            panic!()
        };
        ReverseConfig::build(&globals(None), &args)
    }

    #[test]
    fn the_gateway_bounds_sessions_by_default_and_keeps_what_is_chosen() {
        let settle = |args: &[&str]| {
            let mut reverse = reverse(args).unwrap();
            let mut sessions = crate::session::SessionConfig::default();
            if let Some(given) = args.iter().position(|a| *a == "--max-sessions") {
                sessions.max_sessions = args[given + 1].parse().unwrap();
            }
            reverse.settle_sessions(&mut sessions);
            (
                sessions.max_sessions,
                sessions.idle_timeout,
                reverse.max_sessions_per_client,
            )
        };
        let idle = Some(DEFAULT_GATEWAY_IDLE_TIMEOUT);
        assert_eq!(
            settle(&["--", "server"]),
            (DEFAULT_MAX_SESSIONS_COMMAND, idle, 25)
        );
        assert_eq!(
            settle(&["--upstream", "http://127.0.0.1:9/mcp"]),
            (crate::session::manager::DEFAULT_MAX_SESSIONS, idle, 64)
        );
        assert_eq!(
            settle(&["--max-sessions", "2", "--", "server"]),
            (2, idle, 1)
        );
        assert_eq!(
            settle(&["--max-sessions-per-client", "7", "--", "server"]).2,
            7
        );
        assert!(reverse(&["--max-sessions-per-client", "0", "--", "s"]).is_err());
    }

    #[test]
    fn reverse_options_come_from_the_config_file_too() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "listen = \"127.0.0.1:9999\"\nupstream = \"http://127.0.0.1:9000/mcp\"\nupstream_header = [\"X-Api-Key: k\"]\nallowed_origin = [\"https://app.example.com\"]\nadmin_listen = \"127.0.0.1:9090\"\nconnect_timeout = \"3s\""
        )
        .unwrap();
        let cli =
            <crate::cli::Cli as clap::Parser>::try_parse_from(["shadowcat", "reverse"]).unwrap();
        let crate::cli::Command::Reverse(args) = cli.command else {
            panic!()
        };
        let config = ReverseConfig::build(&globals(Some(file.path().to_owned())), &args).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:9999");
        let ReverseUpstream::Http(upstream) = &config.upstream else {
            panic!("not an HTTP upstream: {:?}", config.upstream)
        };
        assert_eq!(upstream.headers["x-api-key"], "k");
        assert_eq!(config.admin_listen.unwrap().to_string(), "127.0.0.1:9090");
        assert_eq!(upstream.connect_timeout, Duration::from_secs(3));
    }

    #[test]
    fn reverse_options_are_validated() {
        let config = reverse(&["--upstream", "http://127.0.0.1:9/mcp"]).unwrap();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.path, "/mcp");
        assert_eq!(config.allowed_origins, AllowedOrigins::Localhost);
        assert!(config.admin_listen.is_none());
        let config = reverse(&["--", "srv"]).unwrap();
        assert!(matches!(config.upstream, ReverseUpstream::Stdio(_)));
        let config = reverse(&[
            "--upstream-header",
            "Authorization: Bearer s3cret",
            "--upstream-header",
            "X-Team: a",
            "--listen",
            "localhost:9100",
            "--allowed-origin",
            "https://App.example.com/",
            "--upstream",
            "http://127.0.0.1:9/mcp",
        ])
        .unwrap();
        let ReverseUpstream::Http(upstream) = &config.upstream else {
            panic!("not an HTTP upstream: {:?}", config.upstream)
        };
        assert!(upstream.headers["authorization"].is_sensitive());
        assert_eq!(upstream.headers["x-team"], "a");
        assert_eq!(config.listen.to_string(), "127.0.0.1:9100");
        assert_eq!(
            config.allowed_origins,
            AllowedOrigins::List(vec!["https://app.example.com".into()])
        );
        for (args, option) in [
            (
                &["--listen", "8080", "--upstream", "http://h/"][..],
                "--listen",
            ),
            (&["--upstream", "ftp://h/"][..], "--upstream"),
            (&["--upstream", "http://h/", "--path", "mcp"][..], "--path"),
            (
                &["--upstream", "http://h/", "--upstream-header", "nocolon"][..],
                "--upstream-header",
            ),
            (
                &["--upstream", "http://h/", "--upstream-header", "Host: x"][..],
                "--upstream-header",
            ),
            (
                &["--upstream", "http://h/", "--allowed-origin", "example.com"][..],
                "--allowed-origin",
            ),
            (
                &[
                    "--upstream",
                    "http://h/",
                    "--admin-listen",
                    "127.0.0.1:8080",
                ][..],
                "--admin-listen",
            ),
            (&[][..], "--upstream"),
        ] {
            let err = reverse(args).unwrap_err();
            assert!(err.to_string().contains(option), "{args:?}: {err}");
        }
    }
}
