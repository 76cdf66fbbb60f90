//! Command-line definitions (clap derive): raw arguments only. [`crate::config`] turns them,
//! with the config file and environment, into a validated [`crate::config::Config`].
//!
//! Every option can also be set by an environment variable `SHADOWCAT_<NAME>` and by a key of the
//! same name (dashes as underscores) in the `--config` file; the command line wins over the
//! environment, which wins over the file.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::telemetry::LogFormat;

mod tools;
pub use tools::{OutputFormat, ReplayArgs, RulesCommand, SessionCommand, TapeCommand, VerifyArgs};

/// Shadowcat: a proxy for MCP (Model Context Protocol) traffic.
///
/// It sits between an MCP client and an MCP server, forwards every message faithfully, and
/// tracks requests so that a crashed server, bad input or a shutdown never leaves a client
/// waiting.
#[derive(Debug, Parser)]
#[command(
    name = "shadowcat",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Options shared by every command.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every command.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Log filter: a level (error, warn, info, debug, trace) or tracing directives such as
    /// "shadowcat=debug,info". [default: info]
    #[arg(
        long,
        global = true,
        env = "SHADOWCAT_LOG_LEVEL",
        value_name = "FILTER"
    )]
    pub log_level: Option<String>,
    /// Log line format. [default: text]
    #[arg(long, global = true, env = "SHADOWCAT_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Append logs to this file instead of stderr, the MCP servers' stderr too (each line
    /// logged as `server: <line>`). Logs never go to stdout.
    #[arg(long, global = true, env = "SHADOWCAT_LOG_FILE", value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// Directory for session history (sessions.db) and other data. [default: the platform's
    /// data dir, e.g. ~/.local/share/shadowcat]
    #[arg(long, global = true, env = "SHADOWCAT_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// TOML file with defaults for any option (keys named like the long options, with
    /// underscores: max_message_size = "16MiB").
    #[arg(long, global = true, env = "SHADOWCAT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The commands.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // Parsed once per process; boxing would only add noise.
pub enum Command {
    /// Run as a forward proxy: the MCP client starts shadowcat in place of its server.
    #[command(subcommand)]
    Forward(ForwardCommand),
    /// Run as a reverse proxy: an HTTP gateway to one MCP server, a session per client.
    ///
    /// The server is an HTTP URL (--upstream) or a command run once per session (after `--`).
    ///
    /// Examples:
    ///   shadowcat reverse --upstream http://127.0.0.1:9000/mcp
    ///   shadowcat reverse --listen 127.0.0.1:8080 -- python server.py
    #[command(verbatim_doc_comment)]
    Reverse(ReverseArgs),
    /// Record one session to a tape: `forward stdio` with recording on.
    ///
    /// The server is a command (after `--`) or an HTTP URL (--url). Like `forward stdio`, it
    /// is itself an MCP server on stdin/stdout: an MCP client must launch it (put it in the
    /// client's server command) or drive it over a pipe; typed at a terminal, it waits for
    /// JSON-RPC lines. The tape is written as the session goes and ends with it.
    ///
    /// Examples:
    ///   shadowcat record -o demo.jsonl -- python server.py
    ///   shadowcat record --name demo --url http://127.0.0.1:9000/mcp
    #[command(verbatim_doc_comment)]
    Record(RecordCmd),
    /// Serve a tape as a mock MCP server: over stdio, or Streamable HTTP with --listen.
    ///
    /// Each request is answered with the recorded answer to the matching recorded request (with
    /// the live request's id); the server's notifications and requests are replayed in their
    /// recorded order. An unmatched request gets a JSON-RPC error naming the closest recorded
    /// ones.
    ///
    /// Examples:
    ///   shadowcat replay demo.jsonl
    ///   shadowcat replay demo.jsonl --listen 127.0.0.1:8080 --speed 0
    #[command(verbatim_doc_comment)]
    Replay(ReplayArgs),
    /// Work with tapes: verify a server against one, list, show, redact.
    #[command(subcommand)]
    Tape(TapeCommand),
    /// Inspect and prune the session history (sessions.db in the data dir).
    #[command(subcommand)]
    Session(SessionCommand),
    /// Check an interceptor rule file, or try it on a recorded tape (docs/rules.md).
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Print a shell completion script to stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Forward-proxy transports.
#[derive(Debug, Subcommand)]
pub enum ForwardCommand {
    /// Client on our stdin/stdout, server as a child process speaking MCP over its stdio.
    ///
    /// Example: shadowcat forward stdio -- npx -y @modelcontextprotocol/server-everything
    Stdio(StdioArgs),
}

/// `forward stdio` options.
#[derive(Debug, Args)]
pub struct StdioArgs {
    /// Proxy limits and timeouts.
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// Recording the session.
    #[command(flatten)]
    pub recording: RecordArgs,
    /// The server.
    #[command(flatten)]
    pub server: StdioServer,
}

/// `--record` and what goes with it (`forward stdio`, `reverse`).
#[derive(Debug, Args, Default)]
pub struct RecordArgs {
    /// Record sessions to tapes (docs/tapes.md). forward: this tape file, or a new file in this
    /// directory; reverse: one tape per session in this directory (created if missing), named
    /// by time and session. An existing file is never overwritten.
    #[arg(long, env = "SHADOWCAT_RECORD", value_name = "FILE|DIR")]
    pub record: Option<PathBuf>,
    /// Mask the values at this RFC 9535 JSONPath in every recorded message and in traced
    /// payloads (--trace-payloads), e.g. '$.params.arguments.password' (repeatable). Headers
    /// are never recorded, and the value of an Authorization or Cookie header or
    /// --bearer-token-env is masked wherever it appears.
    #[arg(
        long,
        env = "SHADOWCAT_REDACT",
        value_delimiter = '\n',
        value_name = "JSONPATH"
    )]
    pub redact: Vec<String>,
}

/// The server a stdio client is connected to: a command, or a --url.
#[derive(Debug, Args)]
pub struct StdioServer {
    /// How the server process is started.
    #[command(flatten)]
    pub child: ChildArgs,
    /// A remote MCP server to bridge the client to, instead of a command: its Streamable HTTP
    /// endpoint (an old HTTP+SSE server is found by the spec's back-compat probe), e.g.
    /// http://127.0.0.1:9000/mcp. Give one server: a command and --url (or SHADOWCAT_URL)
    /// together are refused; a command wins over the config file's `url`.
    #[arg(long, env = "SHADOWCAT_URL", value_name = "URL")]
    pub url: Option<String>,
    /// Header sent with every request to the --url server, "Name: value" (repeatable).
    #[arg(
        long = "header",
        env = "SHADOWCAT_HEADER",
        value_delimiter = '\n',
        value_name = "NAME: VALUE"
    )]
    pub header: Vec<String>,
    /// Start the server command again when it fails (exits non-zero, is killed, or closes its
    /// stdout) while the client is connected: what it owed gets errors at once, then a new
    /// process is started after a backoff (exponential with jitter, 100 ms up to 30 s; 5
    /// crashes within a minute is a crash loop, logged, retried at the cap) and given the
    /// client's initialize and notifications/initialized again, so the client keeps its
    /// session. [default: never]
    #[arg(long, env = "SHADOWCAT_RESTART", value_name = "WHEN", value_enum)]
    pub restart: Option<crate::transport::child::Restart>,
    /// How the --url server is reached.
    #[command(flatten)]
    pub upstream: UpstreamArgs,
    /// The MCP server to run, and its arguments (after `--`).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// `record` options.
#[derive(Debug, Args)]
pub struct RecordCmd {
    /// The tape to write, or a directory to make it in. [default: the data dir's tapes/]
    #[arg(short, long, value_name = "FILE|DIR")]
    pub output: Option<PathBuf>,
    /// A name for the tape, shown by `tape list`.
    #[arg(long)]
    pub name: Option<String>,
    /// Mask the values at this RFC 9535 JSONPath in every recorded message (repeatable).
    #[arg(
        long,
        env = "SHADOWCAT_REDACT",
        value_delimiter = '\n',
        value_name = "JSONPATH"
    )]
    pub redact: Vec<String>,
    /// Proxy limits and timeouts.
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// The server.
    #[command(flatten)]
    pub server: StdioServer,
}

/// How a server command is started (`forward stdio`, `reverse -- <cmd>`).
#[derive(Debug, Args, Default)]
pub struct ChildArgs {
    /// Extra environment variable for the server, on top of ours (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env_pair)]
    pub env: Vec<(OsString, OsString)>,
    /// Working directory for the server. [default: ours]
    #[arg(long, env = "SHADOWCAT_CWD", value_name = "DIR")]
    pub cwd: Option<PathBuf>,
}

/// How an HTTP upstream is reached (`reverse --upstream`, `forward stdio --url`).
#[derive(Debug, Args, Default)]
pub struct UpstreamArgs {
    /// Time to establish a connection to the HTTP server. [default: 10s]
    #[arg(long, env = "SHADOWCAT_CONNECT_TIMEOUT", value_name = "DURATION")]
    pub connect_timeout: Option<String>,
    /// PEM file of a CA to trust for an https server, on top of the platform's roots.
    #[arg(long, env = "SHADOWCAT_UPSTREAM_CA", value_name = "FILE")]
    pub upstream_ca: Option<PathBuf>,
    /// An SSE stream from the HTTP server that stays silent this long is treated as dropped,
    /// and resumed; also the longest wait for a response's headers and for a JSON answer's
    /// whole body (an upstream that takes a request and never answers fails it with
    /// upstream_unreachable); or `off`. [default: 5m]
    #[arg(long, env = "SHADOWCAT_READ_TIMEOUT", value_name = "DURATION")]
    pub read_timeout: Option<String>,
    /// Longest a request waits while the HTTP server's stream for it, broken before the
    /// answer, is being resumed; then it gets an error naming the last failure. A refused
    /// connection (the server is down) ends the wait at once. [default: 5s]
    #[arg(long, env = "SHADOWCAT_RESUME_TIMEOUT", value_name = "DURATION")]
    pub resume_timeout: Option<String>,
    /// Environment variable holding a bearer token for the HTTP server, sent as
    /// "Authorization: Bearer <token>" to that server only, and never logged.
    #[arg(long, env = "SHADOWCAT_BEARER_TOKEN_ENV", value_name = "VAR")]
    pub bearer_token_env: Option<String>,
    /// File holding a bearer token for the HTTP server (its first line); read again when the
    /// server refuses the token (401), so a rotated secret is picked up.
    #[arg(long, env = "SHADOWCAT_BEARER_TOKEN_FILE", value_name = "PATH")]
    pub bearer_token_file: Option<PathBuf>,
    /// Token endpoint of the HTTP server's authorization server: a token is got there with
    /// the OAuth client-credentials grant (with --upstream-client-id and
    /// --upstream-client-secret-file), for the server's URL as the resource, and renewed
    /// before it expires.
    #[arg(long, env = "SHADOWCAT_UPSTREAM_TOKEN_URL", value_name = "URL")]
    pub upstream_token_url: Option<String>,
    /// Our client id at the --upstream-token-url authorization server.
    #[arg(long, env = "SHADOWCAT_UPSTREAM_CLIENT_ID", value_name = "ID")]
    pub upstream_client_id: Option<String>,
    /// File holding our client secret at the --upstream-token-url authorization server (sent
    /// with HTTP Basic authentication).
    #[arg(
        long,
        env = "SHADOWCAT_UPSTREAM_CLIENT_SECRET_FILE",
        value_name = "PATH"
    )]
    pub upstream_client_secret_file: Option<PathBuf>,
    /// A scope to ask the --upstream-token-url authorization server for (repeatable).
    #[arg(
        long = "upstream-scope",
        env = "SHADOWCAT_UPSTREAM_SCOPE",
        value_delimiter = '\n',
        value_name = "SCOPE"
    )]
    pub upstream_scope: Vec<String>,
    /// Instead of a token of our own, trade each caller's token at --upstream-token-url for
    /// one for the server (RFC 8693 token exchange: the caller's identity kept, the gateway
    /// named as the actor). `reverse` with --auth-issuer only.
    #[arg(long, env = "SHADOWCAT_UPSTREAM_TOKEN_EXCHANGE")]
    pub upstream_token_exchange: bool,
}

/// The server processes of `reverse -- <cmd>`: each session has its own, taken from a pool
/// that can keep some started ahead of need.
#[derive(Debug, Args, Default)]
pub struct PoolArgs {
    /// Server processes kept started and idle, so that a new session's first request does not
    /// wait for its server to start (the Python SDK's takes ~0.6 s). A spare serves one session
    /// and is retired with it; another is started in its place. Each costs a running server's
    /// memory. [default: 0]
    #[arg(long, env = "SHADOWCAT_POOL_MIN_IDLE", value_name = "N")]
    pub pool_min_idle: Option<String>,
    /// A spare idle this long is replaced with a fresh one, or `off`. [default: 10m]
    #[arg(long, env = "SHADOWCAT_POOL_IDLE_TIMEOUT", value_name = "DURATION")]
    pub pool_idle_timeout: Option<String>,
    /// Longest a session's first message waits for its server process (a spare, or one
    /// started for it; starts are limited in rate and concurrency so that a burst of sessions
    /// does not start a storm of processes); then it gets error -32093. [default: 30s]
    #[arg(long, env = "SHADOWCAT_POOL_ACQUIRE_TIMEOUT", value_name = "DURATION")]
    pub pool_acquire_timeout: Option<String>,
    /// Which requests share a server process: `never` (a process per session and per
    /// stateless request), `stateless` (2026-07-28 stateless requests share one; each session
    /// has its own), `always` (sessions share processes too, up to --max-sessions-per-child
    /// each: the first session's `initialize` goes to the process and later sessions asking
    /// for the same protocol version get its answer; request ids, progress tokens and
    /// subscriptions are kept apart per session; a request from the server goes to the
    /// session it can be tied to, or is refused). [default: stateless]
    #[arg(long, env = "SHADOWCAT_SHARE", value_name = "WHEN")]
    pub share: Option<crate::transport::child::Share>,
    /// With `--share always`: most sessions on one server process; more processes are started
    /// as needed. [default: 64]
    #[arg(long, env = "SHADOWCAT_MAX_SESSIONS_PER_CHILD", value_name = "N")]
    pub max_sessions_per_child: Option<String>,
    /// With `--share stateless|always`: most server processes serving stateless (2026-07-28)
    /// requests. Each request goes to the one with the fewest requests in flight; another is
    /// started (from the pool) only when every running one is busy, so a server that answers
    /// one request at a time is not a bottleneck. The processes share no state: raise it only
    /// for a server whose answers do not depend on earlier requests (one that keeps data in
    /// memory would answer differently from one process to the next). [default: 1]
    #[arg(long, env = "SHADOWCAT_MAX_STATELESS_CHILDREN", value_name = "N")]
    pub max_stateless_children: Option<String>,
    /// When a session's server process that exits is started again: `never` (the session ends
    /// with it) or `on-failure` (a non-zero exit, a signal, or its stdout closing): what it owed
    /// gets errors at once, then a new process from the pool, after a backoff (exponential with
    /// jitter, 100 ms up to 30 s; 5 crashes within a minute is a crash loop, reported by /readyz
    /// and retried at the cap), is given the session's initialize and
    /// notifications/initialized again, and the client keeps its session id. With `--share
    /// always` a shared process is replaced so, with every session on it. [default: never]
    #[arg(long, env = "SHADOWCAT_RESTART", value_name = "WHEN", value_enum)]
    pub restart: Option<crate::transport::child::Restart>,
}

/// Authentication of the gateway's clients (`reverse`): OAuth 2.1 bearer tokens (JWTs) as the
/// MCP authorization spec has a resource server check them, and/or static API keys. With
/// either, every request to the MCP endpoint needs a valid `Authorization: Bearer` token; the
/// Protected Resource Metadata (RFC 9728) is served at /.well-known/oauth-protected-resource.
/// Without, anyone who can reach the listener is served (keep it on loopback). docs/auth.md.
#[derive(Debug, Args, Default)]
pub struct AuthArgs {
    /// The authorization server whose tokens are accepted: their `iss` must be exactly this,
    /// and it is the one the metadata names. Turns OAuth on (with --auth-audience).
    #[arg(long, env = "SHADOWCAT_AUTH_ISSUER", value_name = "URL")]
    pub auth_issuer: Option<String>,
    /// The audience a token must name in its `aud` (this gateway's resource identifier);
    /// required with --auth-issuer.
    #[arg(long, env = "SHADOWCAT_AUTH_AUDIENCE", value_name = "AUD")]
    pub auth_audience: Option<String>,
    /// Where the issuer's signing keys (JWKS) are fetched; refreshed every 10 minutes, and at
    /// most every 30 s when a token names a key not in it. [default: the `jwks_uri` of the
    /// issuer's metadata]
    #[arg(
        long,
        env = "SHADOWCAT_AUTH_JWKS_URL",
        value_name = "URL",
        conflicts_with = "auth_jwks_file"
    )]
    pub auth_jwks_url: Option<String>,
    /// The issuer's signing keys (JWKS) from a file instead, read again every 10 minutes.
    #[arg(long, env = "SHADOWCAT_AUTH_JWKS_FILE", value_name = "PATH")]
    pub auth_jwks_file: Option<PathBuf>,
    /// A scope every token must carry (repeatable); one missing is answered 403
    /// `insufficient_scope` naming it.
    #[arg(
        long = "auth-scope",
        env = "SHADOWCAT_AUTH_SCOPE",
        value_delimiter = '\n',
        value_name = "SCOPE"
    )]
    pub auth_scope: Vec<String>,
    /// A token claim to keep with the caller's identity (repeatable), for rules' `claim:`
    /// conditions (e.g. `groups`, `tenant`); `sub` and `iss` are always known. A rule on a
    /// claim not kept refuses the messages it would have to decide.
    #[arg(
        long = "auth-claim",
        env = "SHADOWCAT_AUTH_CLAIM",
        value_delimiter = '\n',
        value_name = "CLAIM"
    )]
    pub auth_claim: Vec<String>,
    /// The resource identifier published in the metadata (the URL clients use for the MCP
    /// endpoint, e.g. https://mcp.example.com/mcp). [default: http://<Host><--path>]
    #[arg(long, env = "SHADOWCAT_AUTH_RESOURCE", value_name = "URL")]
    pub auth_resource: Option<String>,
    /// Clock skew allowed when checking a token's `exp` and `nbf`. [default: 60s]
    #[arg(long, env = "SHADOWCAT_AUTH_LEEWAY", value_name = "DURATION")]
    pub auth_leeway: Option<String>,
    /// Static API keys for machine clients, sent as `Authorization: Bearer <key>`: one per
    /// line, `<name> sha256:<hex of the key's SHA-256>` (never the key itself; `#` comments).
    /// The name is the caller's identity.
    #[arg(long, env = "SHADOWCAT_API_KEY_FILE", value_name = "PATH")]
    pub api_key_file: Option<PathBuf>,
}

/// Bounds on the gateway's client connections (`reverse`). Connections over a cap are answered
/// 503 and closed; each refusal is counted in /metrics.
#[derive(Debug, Args, Default)]
pub struct ConnectionArgs {
    /// Time a client has to send a request's headers, counted from when its connection opened
    /// or its previous response ended: a slow (slowloris) or idle keep-alive connection is
    /// closed after it. [default: 30s]
    #[arg(long, env = "SHADOWCAT_HEADER_TIMEOUT", value_name = "DURATION")]
    pub header_timeout: Option<String>,
    /// Time a client has to send a request's whole body, once its headers are in; a slower one
    /// is answered 408. [default: 30s]
    #[arg(long, env = "SHADOWCAT_BODY_TIMEOUT", value_name = "DURATION")]
    pub body_timeout: Option<String>,
    /// Time a client may take none of the bytes we have for it (an SSE stream it stopped
    /// reading) before its connection is closed; what it missed stays in the replay log for it
    /// to resume. [default: 60s]
    #[arg(long, env = "SHADOWCAT_WRITE_TIMEOUT", value_name = "DURATION")]
    pub write_timeout: Option<String>,
    /// Open client connections in all. At start it is lowered, with a warning, to half the
    /// open-file limit left after a reserve (the soft limit is first raised to the hard one),
    /// so that sessions, the store and the admin listener keep descriptors. [default: 4096]
    #[arg(long, env = "SHADOWCAT_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<String>,
    /// Open connections from one client address, so that one client cannot take them all.
    /// Behind a load balancer every client has its address: raise this there. [default: 256]
    #[arg(long, env = "SHADOWCAT_MAX_CONNECTIONS_PER_CLIENT", value_name = "N")]
    pub max_connections_per_client: Option<String>,
}

/// Several gateway instances behind a load balancer serving the same sessions
/// (docs/scale-out.md).
#[derive(Debug, Args, Default)]
pub struct ClusterArgs {
    /// The secrets that seal session ids, shared by every instance of the cluster: the
    /// Mcp-Session-Id handed out then carries, encrypted and authenticated, what any instance
    /// needs to serve the session, so a request may land on any of them. One key per line,
    /// newest first: the first seals, all open (rotate by adding a new first line; drop the
    /// old one once sessions sealed with it are over). Each at least 32 characters, e.g. from
    /// `openssl rand -hex 32`; `#` comments. [default: off: a session is served only by the
    /// instance that opened it]
    #[arg(long, env = "SHADOWCAT_CLUSTER_KEY_FILE", value_name = "PATH")]
    pub cluster_key_file: Option<PathBuf>,
    /// The name of an environment variable holding the cluster keys (comma-separated, newest
    /// first), instead of --cluster-key-file.
    #[arg(long, env = "SHADOWCAT_CLUSTER_KEY_ENV", value_name = "VAR")]
    pub cluster_key_env: Option<String>,
    /// The URL the other instances of the cluster reach this one at (`http://HOST:PORT`), for
    /// the sessions whose server is a process this instance started (`reverse -- <cmd>`): a
    /// request for such a session that lands elsewhere is passed here. [default: the
    /// --listen address, unless it is 0.0.0.0 or [::]: then sessions at a process stay at
    /// their instance]
    #[arg(long, env = "SHADOWCAT_CLUSTER_ADVERTISE", value_name = "URL")]
    pub cluster_advertise: Option<String>,
    /// The Redis server the instances of a cluster share what must be shared through:
    /// rate-limit state (a limit holds across instances), word of sessions their clients
    /// ended (no other instance serves them on), the list of instances up, what another
    /// instance needs to take over a session at a process whose instance is gone, copies of
    /// SSE streams (a client resumes one at any instance), and the session history (`session
    /// list --redis-url`).
    /// `redis://[:PASSWORD@]HOST[:PORT][/DB]`, Redis 6.2 or later, not in cluster mode. Redis
    /// slow or down: each instance does without it (its own limits), logs it once, and tries
    /// again every second. [default: off: nothing needs Redis]
    #[arg(long, env = "SHADOWCAT_REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,
    /// Longest wait for Redis to answer one command, or to connect; past it the instance does
    /// without for that message. [default: 100ms]
    #[arg(long, env = "SHADOWCAT_REDIS_TIMEOUT", value_name = "DURATION")]
    pub redis_timeout: Option<String>,
}

/// `reverse` options.
#[derive(Debug, Args, Default)]
pub struct ReverseArgs {
    /// Address to listen on for MCP clients. Anything but a loopback address exposes the
    /// gateway to the network: require tokens there (--auth-issuer, --api-key-file).
    /// [default: 127.0.0.1:8080]
    #[arg(long, env = "SHADOWCAT_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// URL path of the MCP endpoint. [default: /mcp]
    #[arg(long, env = "SHADOWCAT_PATH", value_name = "PATH")]
    pub path: Option<String>,
    /// The upstream MCP server's Streamable HTTP endpoint, e.g. http://127.0.0.1:9000/mcp.
    /// Give one server: a command and --upstream (or SHADOWCAT_UPSTREAM) together are refused;
    /// a command wins over the config file's `upstream`.
    #[arg(long, env = "SHADOWCAT_UPSTREAM", value_name = "URL")]
    pub upstream: Option<String>,
    /// A header sent with every request to the upstream, e.g. "Authorization: Bearer xyz"
    /// (repeatable). Clients' own credentials are never forwarded.
    #[arg(
        long = "upstream-header",
        env = "SHADOWCAT_UPSTREAM_HEADER",
        value_delimiter = '\n',
        value_name = "NAME: VALUE"
    )]
    pub upstream_header: Vec<String>,
    /// An Origin allowed to call the gateway (repeatable; `*` allows any). Requests with another
    /// Origin get 403; requests without one (non-browser clients) are allowed. Also the origins
    /// CORS answers. [default: http(s)://localhost, 127.0.0.1 and [::1], any port]
    #[arg(
        long = "allowed-origin",
        env = "SHADOWCAT_ALLOWED_ORIGIN",
        value_delimiter = '\n',
        value_name = "ORIGIN"
    )]
    pub allowed_origin: Vec<String>,
    /// A proxy in front of the gateway whose X-Forwarded-For is believed, as an address or a
    /// CIDR range, e.g. 10.0.0.0/8 (repeatable). Per-client rate limits key on the socket's
    /// peer address, or behind these proxies on the nearest untrusted X-Forwarded-For address.
    /// [default: none: X-Forwarded-For is ignored]
    #[arg(
        long = "trusted-proxy",
        env = "SHADOWCAT_TRUSTED_PROXY",
        value_delimiter = '\n',
        value_name = "ADDR"
    )]
    pub trusted_proxy: Vec<String>,
    /// Address for /healthz, /readyz and /metrics (Prometheus). A non-loopback address needs
    /// --admin-token-file. [default: off]
    #[arg(long, env = "SHADOWCAT_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// A file holding the token /readyz and /metrics require (`Authorization: Bearer
    /// <token>`, at least 16 characters; /healthz stays open for liveness probes). Required
    /// for a non-loopback --admin-listen; separate from the clients' tokens.
    #[arg(long, env = "SHADOWCAT_ADMIN_TOKEN_FILE", value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,
    /// Events of each SSE stream of a session (its GET stream, each POST answered with SSE)
    /// kept for clients that reconnect with Last-Event-ID (also bounded to 1 MiB). A
    /// Last-Event-ID older than that gets an SSE comment naming the events that are gone, then
    /// everything still kept. [default: 256]
    #[arg(long, env = "SHADOWCAT_SSE_REPLAY_EVENTS", value_name = "N")]
    pub sse_replay_events: Option<String>,
    /// Interval of keep-alive comments on idle SSE streams, or `off`. [default: 15s]
    #[arg(long, env = "SHADOWCAT_SSE_KEEPALIVE", value_name = "DURATION")]
    pub sse_keepalive: Option<String>,
    /// Most sessions one client address may have open (a GET /sse stream is one), so that one
    /// client cannot take every slot or evict everyone else's sessions. Behind a load balancer
    /// every client has its address: raise this there. [default: a quarter of --max-sessions,
    /// at most 64]
    #[arg(long, env = "SHADOWCAT_MAX_SESSIONS_PER_CLIENT", value_name = "N")]
    pub max_sessions_per_client: Option<String>,
    /// Longest a POST is held when its session already has --max-pending-requests awaiting
    /// answers, for one of them to be answered; then its request is refused with 503,
    /// Retry-After and -32083. (A stdio client is never refused for this: it is read more
    /// slowly instead.) [default: 10s]
    #[arg(long, env = "SHADOWCAT_PENDING_WAIT", value_name = "DURATION")]
    pub pending_wait: Option<String>,
    /// How the upstream is reached.
    #[command(flatten)]
    pub upstream_options: UpstreamArgs,
    /// The server processes of `reverse -- <cmd>`.
    #[command(flatten)]
    pub pool: PoolArgs,

    #[command(flatten)]
    pub auth: AuthArgs,
    /// Bounds on client connections.
    #[command(flatten)]
    pub connections: ConnectionArgs,
    /// Several instances serving the same sessions.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Proxy limits and timeouts.
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// How the server processes are started.
    #[command(flatten)]
    pub child: ChildArgs,
    /// Recording sessions.
    #[command(flatten)]
    pub recording: RecordArgs,
    /// The MCP server to run for each session, and its arguments (after `--`).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// Limits and timeouts of the proxy pipeline and its sessions. Durations are like 5s, 1500ms,
/// 10m or 2h; those that can be switched off take `off`.
#[derive(Debug, Args, Default)]
pub struct ProxyArgs {
    /// Largest message accepted in either direction, e.g. 32MiB, 512KiB or a byte count; a
    /// larger one is discarded and answered with an error. [default: 32MiB]
    #[arg(long, env = "SHADOWCAT_MAX_MESSAGE_SIZE", value_name = "SIZE")]
    pub max_message_size: Option<String>,
    /// Most requests awaiting an answer per session (both directions together). A stdio
    /// client with this many is read no further until answers free room; an HTTP client's POST
    /// is held (--pending-wait), then refused. [default: 1000]
    #[arg(long, env = "SHADOWCAT_MAX_PENDING_REQUESTS", value_name = "N")]
    pub max_pending_requests: Option<String>,
    /// Most requests awaiting an answer across all sessions. [default: 100000]
    #[arg(long, env = "SHADOWCAT_MAX_PENDING_TOTAL", value_name = "N")]
    pub max_pending_total: Option<String>,
    /// A request with neither an answer nor a progress notification for this long gets an
    /// error, and its receiver a notifications/cancelled. Each progress notification for it
    /// starts the time again. [default: off]
    #[arg(long, env = "SHADOWCAT_REQUEST_TIMEOUT", value_name = "DURATION")]
    pub request_timeout: Option<String>,
    /// A request unanswered for this long gets an error (and its receiver a
    /// notifications/cancelled), whatever progress it reports. [default: off]
    #[arg(long, env = "SHADOWCAT_REQUEST_TIMEOUT_MAX", value_name = "DURATION")]
    pub request_timeout_max: Option<String>,
    /// How long the server gets to exit after its stdin closes, before SIGTERM (and SIGKILL
    /// 2 s later); for `reverse`, also how long in-flight requests get to finish at shutdown.
    /// [default: 5s]
    #[arg(long, env = "SHADOWCAT_SHUTDOWN_TIMEOUT", value_name = "DURATION")]
    pub shutdown_timeout: Option<String>,
    /// Most open sessions; at the limit the least recently used idle one is evicted, or the new
    /// one refused. (Sessions with requests in flight or a client listening on a stream are not
    /// idle.) [default: 10000; `reverse -- <cmd>`, where each session is a process: 100]
    #[arg(long, env = "SHADOWCAT_MAX_SESSIONS", value_name = "N")]
    pub max_sessions: Option<String>,
    /// A session with no message for this long expires (unless requests are in flight or a
    /// client listens on one of its streams), or `off`. [default: `reverse`: 30m; otherwise off]
    #[arg(long, env = "SHADOWCAT_SESSION_IDLE_TIMEOUT", value_name = "DURATION")]
    pub session_idle_timeout: Option<String>,
    /// A session older than this expires. [default: off]
    #[arg(long, env = "SHADOWCAT_MAX_SESSION_AGE", value_name = "DURATION")]
    pub max_session_age: Option<String>,
    /// How often expired sessions are looked for. [default: 10s]
    #[arg(long, env = "SHADOWCAT_CLEANUP_INTERVAL", value_name = "DURATION")]
    pub cleanup_interval: Option<String>,
    /// Tag a session `long-running` once it is this old. [default: 1h]
    #[arg(
        long,
        env = "SHADOWCAT_TAG_LONG_RUNNING_AFTER",
        value_name = "DURATION"
    )]
    pub tag_long_running_after: Option<String>,
    /// Tag a session `high-volume` once it carried this many messages. [default: 10000]
    #[arg(long, env = "SHADOWCAT_TAG_HIGH_VOLUME_FRAMES", value_name = "N")]
    pub tag_high_volume_frames: Option<String>,
    /// Where session history goes: `sqlite` (sessions.db in the data dir) or `memory` (none
    /// kept after exit). [default: sqlite]
    #[arg(long, env = "SHADOWCAT_SESSION_STORE", value_name = "KIND")]
    pub session_store: Option<String>,
    /// Interceptor rules (docs/rules.md): a YAML or JSON file of rules that block, mock,
    /// modify, delay, tag, log or hide messages. It is watched: a valid new version replaces
    /// the running rules, an invalid one is reported and the last good rules stay.
    #[arg(long, env = "SHADOWCAT_RULES", value_name = "FILE")]
    pub rules: Option<PathBuf>,
    /// `audit`: rules change nothing; what each would do is logged (with a before/after diff)
    /// and counted. Overrides the file's and each rule's mode. [default: the file's, enforce]
    #[arg(
        long,
        env = "SHADOWCAT_RULES_MODE",
        value_name = "MODE",
        requires = "rules"
    )]
    pub rules_mode: Option<crate::intercept::Mode>,
    /// A rate limit (repeatable; docs/rate-limits.md): PER=RATE[,burst=N][,method=GLOB]
    /// [,tool=GLOB][,keys=N][,name=NAME], where PER is global, session, client, method or tool
    /// and RATE is like 10/s, 100/min or 5/30s; e.g. client=10/s,burst=20. A request over a
    /// limit is answered with a rate_limited error (HTTP: 429 with Retry-After), a notification
    /// over one is dropped. [default: no limits]
    #[arg(
        long = "rate-limit",
        env = "SHADOWCAT_RATE_LIMIT",
        value_delimiter = '\n',
        value_name = "LIMIT"
    )]
    pub rate_limit: Vec<String>,
    /// Trace export (docs/observability.md).
    #[command(flatten)]
    pub trace: TraceArgs,
    /// Show the traffic (docs/observability.md): `lines` logs one line per message (session,
    /// direction, kind, method, tool/prompt/resource, id, size, an answer's latency, what a
    /// rule or limit did) to stderr or --log-file, whatever --log-level says; `bodies` adds
    /// each message pretty-printed, masked as on tapes (--redact, the server's credentials).
    /// [default: off]
    #[arg(long, env = "SHADOWCAT_TRAFFIC", value_name = "WHAT", value_enum)]
    pub traffic: Option<crate::telemetry::traffic::Show>,
    /// Serve the live view on this loopback address (docs/ui.md): a web page that shows the
    /// sessions and their messages as they flow (what the rules and limits did, timings,
    /// bodies masked as on tapes) and the tapes, e.g. 127.0.0.1:9100. [default: off]
    #[arg(long, env = "SHADOWCAT_UI_LISTEN", value_name = "ADDR")]
    pub ui_listen: Option<String>,
    /// With --ui-listen and --otlp-endpoint: where a message's trace id links to in the live
    /// view, a URL with `{trace_id}` in it, e.g. http://127.0.0.1:16686/trace/{trace_id}
    /// (Jaeger). [default: the id is shown, not linked]
    #[arg(long, env = "SHADOWCAT_UI_TRACE_URL", value_name = "URL")]
    pub ui_trace_url: Option<String>,
    /// A file holding the token the live view requires (at least 16 characters): a page opened
    /// as http://ADDR/?token=TOKEN is let in (a cookie keeps it in), a script sends
    /// `Authorization: Bearer TOKEN`. Required for a non-loopback --ui-listen (and serve it
    /// behind TLS there: the view shows every message).
    #[arg(long, env = "SHADOWCAT_UI_TOKEN_FILE", value_name = "PATH")]
    pub ui_token_file: Option<PathBuf>,
}

/// OpenTelemetry trace export: the proxying modes and `replay`.
#[derive(Debug, Args, Default, Clone)]
pub struct TraceArgs {
    /// Export OpenTelemetry traces to this OTLP collector (docs/observability.md): a span per
    /// request where it arrives and one for the hop on, W3C trace context read from and
    /// written into `params._meta`. E.g. http://127.0.0.1:4318 (HTTP; /v1/traces is added when
    /// no path is given), http://127.0.0.1:4317 with --otlp-protocol grpc, or an https:// URL
    /// (verified against the platform's trusted roots and --otlp-ca). [default: off: messages
    /// pass byte for byte]
    #[arg(long, env = "SHADOWCAT_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// OTLP transport: `http` (protobuf over HTTP) or `grpc`. [default: http]
    #[arg(long, env = "SHADOWCAT_OTLP_PROTOCOL", value_name = "PROTOCOL")]
    pub otlp_protocol: Option<String>,
    /// A header sent with every export, NAME=VALUE (repeatable), e.g. an API key.
    #[arg(
        long = "otlp-header",
        env = "SHADOWCAT_OTLP_HEADER",
        value_delimiter = '\n',
        value_name = "NAME=VALUE"
    )]
    pub otlp_header: Vec<String>,
    /// A PEM file of CA certificates to trust for an https:// collector, besides the
    /// platform's (a private CA).
    #[arg(long, env = "SHADOWCAT_OTLP_CA", value_name = "FILE")]
    pub otlp_ca: Option<PathBuf>,
    /// The share of new traces recorded, 0 to 1. A request whose sender's trace context says
    /// sampled is always recorded, one that says not sampled never. [default: 1]
    #[arg(long, env = "SHADOWCAT_TRACE_SAMPLE_RATIO", value_name = "RATIO")]
    pub trace_sample_ratio: Option<String>,
    /// Put tool calls' arguments and results on their spans (gen_ai.tool.call.arguments,
    /// gen_ai.tool.call.result), masked as --redact says first (and an upstream's credentials
    /// wherever they appear), at most 16 KiB each. [default: off: no payload leaves in a span]
    #[arg(long, env = "SHADOWCAT_TRACE_PAYLOADS")]
    pub trace_payloads: bool,
    /// `service.name` of the proxy's spans. [default: shadowcat]
    #[arg(long, env = "SHADOWCAT_SERVICE_NAME", value_name = "NAME")]
    pub service_name: Option<String>,
}

/// The `SHADOWCAT_*` variables in `vars` that no option reads (likely misspelt), leaving out
/// the test suite's (`SHADOWCAT_TEST_*`) and the variables the command line names as holding a
/// secret (`--bearer-token-env VAR`, `--cluster-key-env VAR`, in `args`).
pub fn unknown_env_vars(
    vars: impl IntoIterator<Item = (String, String)>,
    args: &[String],
) -> Vec<String> {
    let candidates: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(name, _)| name.starts_with("SHADOWCAT_") && !name.starts_with("SHADOWCAT_TEST_"))
        .collect();
    if candidates.is_empty() {
        return Vec::new();
    }
    let mut known = std::collections::HashSet::new();
    let mut stack = vec![<Cli as clap::CommandFactory>::command()];
    while let Some(command) = stack.pop() {
        for arg in command.get_arguments() {
            if let Some(env) = arg.get_env() {
                known.insert(env.to_string_lossy().into_owned());
            }
        }
        stack.extend(command.get_subcommands().cloned());
    }
    // Variables named as holding a secret, on the command line or by their own variables.
    let naming = ["--bearer-token-env", "--cluster-key-env"];
    for (i, arg) in args.iter().enumerate() {
        for flag in naming {
            if arg == flag {
                known.extend(args.get(i + 1).cloned());
            } else if let Some(value) = arg.strip_prefix(flag).and_then(|v| v.strip_prefix('=')) {
                known.insert(value.to_owned());
            }
        }
    }
    for (name, value) in &candidates {
        if name == "SHADOWCAT_BEARER_TOKEN_ENV" || name == "SHADOWCAT_CLUSTER_KEY_ENV" {
            known.insert(value.clone());
        }
    }
    let mut unknown: Vec<String> = candidates
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| !known.contains(name))
        .collect();
    unknown.sort();
    unknown
}

fn parse_env_pair(s: &str) -> Result<(OsString, OsString), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.into(), value.into())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn unknown_shadowcat_variables_are_found_and_named_secrets_are_not() {
        let vars = [
            ("SHADOWCAT_MAX_SESSIONS", "5"),
            ("SHADOWCAT_MAX_SESIONS", "5"),
            ("SHADOWCAT_RATE_LIMIT", "client=1/s"),
            ("SHADOWCAT_RECORD", "x"),
            ("SHADOWCAT_API_TOKEN", "secret"),
            ("SHADOWCAT_KEY", "secret"),
            ("SHADOWCAT_CLUSTER_KEY_ENV", "SHADOWCAT_KEY"),
            ("SHADOWCAT_TEST_ENV", "/tmp"),
            ("HOME", "/root"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let args: Vec<String> = [
            "shadowcat",
            "forward",
            "stdio",
            "--bearer-token-env",
            "SHADOWCAT_API_TOKEN",
        ]
        .map(str::to_owned)
        .to_vec();
        assert_eq!(
            unknown_env_vars(vars.clone(), &args),
            ["SHADOWCAT_MAX_SESIONS"]
        );
        assert_eq!(
            unknown_env_vars(vars, &[]),
            ["SHADOWCAT_API_TOKEN", "SHADOWCAT_MAX_SESIONS"]
        );
    }

    #[test]
    fn parses_forward_stdio_with_a_trailing_command() {
        let cli = Cli::try_parse_from([
            "shadowcat",
            "--log-level",
            "debug",
            "forward",
            "stdio",
            "--env",
            "A=b=c",
            "--",
            "python",
            "-m",
            "srv",
            "--flag",
        ])
        .unwrap();
        let Command::Forward(ForwardCommand::Stdio(args)) = cli.command else {
            panic!()
        };
        assert_eq!(args.server.command, ["python", "-m", "srv", "--flag"]);
        assert_eq!(args.server.child.env, [("A".into(), "b=c".into())]);
        assert_eq!(cli.global.log_level.as_deref(), Some("debug"));
    }

    #[test]
    fn reverse_takes_an_upstream_url_or_a_command() {
        let cli =
            Cli::try_parse_from(["shadowcat", "reverse", "--upstream", "http://h/mcp"]).unwrap();
        let Command::Reverse(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.upstream.as_deref(), Some("http://h/mcp"));
        let cli = Cli::try_parse_from(["shadowcat", "reverse", "--", "srv", "-x"]).unwrap();
        let Command::Reverse(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.command, ["srv", "-x"]);
        // Both parse: the config step refuses them, naming where the URL came from (a flag or
        // SHADOWCAT_UPSTREAM), which clap cannot tell apart in its message.
    }

    #[test]
    fn a_server_env_pair_needs_its_key() {
        assert!(Cli::try_parse_from(["shadowcat", "forward", "stdio", "--env", "nokey"]).is_err());
    }
}
