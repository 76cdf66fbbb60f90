//! Validated configuration, built from the config file, the environment and the command line.
//!
//! [`crate::cli`] holds raw arguments (clap already folds in `SHADOWCAT_*` variables); this module
//! adds the `--config` file underneath them, applies the `DEFAULT_*` constants, and checks every
//! value, so the rest of the program only ever sees a [`Config`] that makes sense.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cli::{GlobalArgs, ProxyArgs, ReverseArgs};
use crate::session::info::TagThresholds;
use crate::session::manager::{
    DEFAULT_CLEANUP_INTERVAL, DEFAULT_HIGH_VOLUME_FRAMES, DEFAULT_LONG_RUNNING_AFTER,
    DEFAULT_MAX_SESSIONS, SessionConfig,
};
use crate::session::pending::{DEFAULT_MAX_PENDING_REQUESTS, DEFAULT_MAX_PENDING_TOTAL};
use crate::transport::DEFAULT_MAX_MESSAGE_BYTES;
use crate::transport::child::ChildSpec;

/// Default log filter.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Default time the server gets to exit after its stdin closes.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Smallest accepted `--max-message-size`: an `initialize` must fit.
pub const MIN_MESSAGE_BYTES: usize = 1024;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Everything a command needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Log filter directives.
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Log file; stderr when `None`.
    pub log_file: Option<PathBuf>,
    /// Where session history and other data live.
    pub data_dir: PathBuf,
    /// Largest message, in bytes.
    pub max_message_size: usize,
    /// Time the server gets to exit after its stdin closes.
    pub shutdown_timeout: Duration,
    /// Requests unanswered this long time out (`None`: never).
    pub request_timeout: Option<Duration>,
    /// How sessions are bounded and tagged.
    pub sessions: SessionConfig,
    /// How often expired sessions are looked for.
    pub cleanup_interval: Duration,
    /// Where session history goes.
    pub session_store: StoreKind,
    /// The reverse proxy's own options (`reverse` only).
    pub reverse: Option<ReverseConfig>,
}

/// Where session history goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// `sessions.db` in the data dir.
    Sqlite,
    /// Nowhere beyond this process.
    Memory,
}

/// A configuration problem, reported before anything starts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has unknown keys.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value is out of range or malformed.
    #[error("invalid {option}: {message}")]
    Invalid {
        /// Which option (as its flag name).
        option: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// The config file's keys; all optional, unknown keys rejected. Values may be strings or, for
/// counts and sizes, integers.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    log_level: Option<String>,
    log_format: Option<LogFormat>,
    log_file: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    max_message_size: Option<Scalar>,
    max_pending_requests: Option<Scalar>,
    max_pending_total: Option<Scalar>,
    request_timeout: Option<Scalar>,
    shutdown_timeout: Option<Scalar>,
    max_sessions: Option<Scalar>,
    session_idle_timeout: Option<Scalar>,
    max_session_age: Option<Scalar>,
    cleanup_interval: Option<Scalar>,
    tag_long_running_after: Option<Scalar>,
    tag_high_volume_frames: Option<Scalar>,
    session_store: Option<Scalar>,
    listen: Option<String>,
    path: Option<String>,
    upstream: Option<String>,
    upstream_header: Option<Vec<String>>,
    allowed_origin: Option<Vec<String>>,
    admin_listen: Option<String>,
    connect_timeout: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Int(u64),
    Text(String),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Self::Int(n) => n.to_string(),
            Self::Text(t) => t.clone(),
        }
    }
}

/// The command line's value, else the file's.
fn pick(cli: Option<&String>, file: Option<&Scalar>) -> Option<String> {
    cli.cloned().or_else(|| file.map(Scalar::text))
}

impl Config {
    /// Builds the configuration. `proxy` is `None` for commands that don't proxy.
    #[allow(clippy::too_many_lines)] // One flat list of options reads better than fragments.
    pub fn build(global: &GlobalArgs, proxy: Option<&ProxyArgs>) -> Result<Self, ConfigError> {
        let file = match &global.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let none = ProxyArgs::default();
        let p = proxy.unwrap_or(&none);

        let max_message_size =
            match pick(p.max_message_size.as_ref(), file.max_message_size.as_ref()) {
                Some(text) => parse_size(&text)?,
                None => DEFAULT_MAX_MESSAGE_BYTES,
            };
        if max_message_size < MIN_MESSAGE_BYTES {
            return Err(invalid(
                "--max-message-size",
                format!("must be at least {MIN_MESSAGE_BYTES} bytes"),
            ));
        }
        let count = |cli: &Option<String>, file: &Option<Scalar>, option, default| {
            pick(cli.as_ref(), file.as_ref()).map_or(Ok(default), |text| parse_count(&text, option))
        };
        let duration = |cli: &Option<String>, file: &Option<Scalar>, option, default| {
            pick(cli.as_ref(), file.as_ref())
                .map_or(Ok(default), |text| parse_duration(&text, option))
        };
        let switchable = |cli: &Option<String>, file: &Option<Scalar>, option| {
            pick(cli.as_ref(), file.as_ref())
                .map_or(Ok(None), |text| parse_optional_duration(&text, option))
        };
        let sessions = SessionConfig {
            max_sessions: count(
                &p.max_sessions,
                &file.max_sessions,
                "--max-sessions",
                DEFAULT_MAX_SESSIONS,
            )?,
            idle_timeout: switchable(
                &p.session_idle_timeout,
                &file.session_idle_timeout,
                "--session-idle-timeout",
            )?,
            max_age: switchable(
                &p.max_session_age,
                &file.max_session_age,
                "--max-session-age",
            )?,
            max_pending_requests: count(
                &p.max_pending_requests,
                &file.max_pending_requests,
                "--max-pending-requests",
                DEFAULT_MAX_PENDING_REQUESTS,
            )?,
            max_pending_total: count(
                &p.max_pending_total,
                &file.max_pending_total,
                "--max-pending-total",
                DEFAULT_MAX_PENDING_TOTAL,
            )?,
            tags: TagThresholds {
                long_running_after: duration(
                    &p.tag_long_running_after,
                    &file.tag_long_running_after,
                    "--tag-long-running-after",
                    DEFAULT_LONG_RUNNING_AFTER,
                )?,
                high_volume_frames: count(
                    &p.tag_high_volume_frames,
                    &file.tag_high_volume_frames,
                    "--tag-high-volume-frames",
                    usize::try_from(DEFAULT_HIGH_VOLUME_FRAMES).unwrap_or(usize::MAX),
                )? as u64,
            },
        };
        let session_store =
            match pick(p.session_store.as_ref(), file.session_store.as_ref()).as_deref() {
                None | Some("sqlite") => StoreKind::Sqlite,
                Some("memory") => StoreKind::Memory,
                Some(other) => {
                    return Err(invalid(
                        "--session-store",
                        format!("{other:?}: expected sqlite or memory"),
                    ));
                }
            };
        Ok(Self {
            log_level: global
                .log_level
                .clone()
                .or(file.log_level)
                .unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_owned()),
            log_format: global.log_format.or(file.log_format).unwrap_or_default(),
            log_file: global.log_file.clone().or(file.log_file),
            data_dir: global
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(default_data_dir),
            max_message_size,
            shutdown_timeout: duration(
                &p.shutdown_timeout,
                &file.shutdown_timeout,
                "--shutdown-timeout",
                DEFAULT_SHUTDOWN_TIMEOUT,
            )?,
            request_timeout: switchable(
                &p.request_timeout,
                &file.request_timeout,
                "--request-timeout",
            )?,
            sessions,
            cleanup_interval: duration(
                &p.cleanup_interval,
                &file.cleanup_interval,
                "--cleanup-interval",
                DEFAULT_CLEANUP_INTERVAL,
            )?,
            session_store,
            reverse: None,
        })
    }
}

/// Default address the reverse proxy listens on.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default path of the MCP endpoint.
pub const DEFAULT_PATH: &str = "/mcp";

/// The server behind the reverse proxy.
#[derive(Debug, Clone)]
pub enum ReverseUpstream {
    /// A Streamable HTTP endpoint.
    Http(http::Uri),
    /// A command run once per session.
    Stdio(ChildSpec),
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
    /// Headers sent with every upstream request.
    pub upstream_headers: http::HeaderMap,
    /// Origins allowed to call us.
    pub allowed_origins: AllowedOrigins,
    /// Where the admin endpoints listen, if anywhere.
    pub admin_listen: Option<std::net::SocketAddr>,
    /// Time to connect to an HTTP upstream.
    pub connect_timeout: Duration,
}

impl ReverseConfig {
    /// Builds the reverse proxy's options from the command line and the config file.
    pub fn build(global: &GlobalArgs, args: &ReverseArgs) -> Result<Self, ConfigError> {
        let file = match &global.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let text =
            |cli: &Option<String>, file: &Option<String>| cli.clone().or_else(|| file.clone());
        let listen = text(&args.listen, &file.listen).unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = parse_addr(&listen, "--listen")?;
        let admin_listen = text(&args.admin_listen, &file.admin_listen)
            .filter(|a| !a.eq_ignore_ascii_case("off"))
            .map(|a| parse_addr(&a, "--admin-listen"))
            .transpose()?;
        if admin_listen == Some(listen) && listen.port() != 0 {
            return Err(invalid(
                "--admin-listen",
                "must differ from --listen".into(),
            ));
        }
        let path = text(&args.path, &file.path).unwrap_or_else(|| DEFAULT_PATH.to_owned());
        if !path.starts_with('/') || path.contains(['?', '#', ' ']) || path.len() > 256 {
            return Err(invalid(
                "--path",
                format!("{path:?}: expected a URL path such as /mcp"),
            ));
        }
        let upstream = if args.command.is_empty() {
            let Some(url) = text(&args.upstream, &file.upstream) else {
                return Err(invalid(
                    "--upstream",
                    "reverse needs a server: --upstream <URL>, or a command after --".into(),
                ));
            };
            ReverseUpstream::Http(parse_upstream_url(&url)?)
        } else {
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
        let headers = if args.upstream_header.is_empty() {
            file.upstream_header.unwrap_or_default()
        } else {
            args.upstream_header.clone()
        };
        let mut upstream_headers = http::HeaderMap::new();
        for line in &headers {
            let (name, value) = parse_header(line)?;
            upstream_headers.append(name, value);
        }
        let origins = if args.allowed_origin.is_empty() {
            file.allowed_origin.unwrap_or_default()
        } else {
            args.allowed_origin.clone()
        };
        let allowed_origins = if origins.is_empty() {
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
        };
        let connect_timeout =
            match pick(args.connect_timeout.as_ref(), file.connect_timeout.as_ref()) {
                Some(text) => parse_duration(&text, "--connect-timeout")?,
                None => crate::transport::http::DEFAULT_CONNECT_TIMEOUT,
            };
        Ok(Self {
            listen,
            path,
            upstream,
            upstream_headers,
            allowed_origins,
            admin_listen,
            connect_timeout,
        })
    }
}

fn parse_addr(text: &str, option: &'static str) -> Result<std::net::SocketAddr, ConfigError> {
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

fn parse_upstream_url(text: &str) -> Result<http::Uri, ConfigError> {
    let uri: http::Uri = text
        .trim()
        .parse()
        .map_err(|e| invalid("--upstream", format!("{text:?}: {e}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(invalid(
                "--upstream",
                format!(
                    "{text:?}: https upstreams are not supported yet; use http:// (for example through a local TLS terminator)"
                ),
            ));
        }
        _ => {
            return Err(invalid(
                "--upstream",
                format!("{text:?}: expected an http:// URL such as http://127.0.0.1:9000/mcp"),
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid(
            "--upstream",
            format!("{text:?}: the URL has no host"),
        ));
    }
    Ok(uri)
}

fn parse_header(line: &str) -> Result<(http::HeaderName, http::HeaderValue), ConfigError> {
    let Some((name, value)) = line.split_once(':') else {
        return Err(invalid(
            "--upstream-header",
            format!("{line:?}: expected \"Name: value\""),
        ));
    };
    let name = http::HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|e| invalid("--upstream-header", format!("{name:?}: {e}")))?;
    let mut value = http::HeaderValue::from_str(value.trim())
        .map_err(|e| invalid("--upstream-header", format!("value of {name}: {e}")))?;
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
            "--upstream-header",
            format!("{name} is set by shadowcat and cannot be overridden"),
        ));
    }
    Ok((name, value))
}

/// The platform's data dir for Shadowcat (e.g. `~/.local/share/shadowcat`), or `./.shadowcat`
/// when there is no home directory.
pub fn default_data_dir() -> PathBuf {
    directories::ProjectDirs::from("", "", "shadowcat").map_or_else(
        || PathBuf::from(".shadowcat"),
        |dirs| dirs.data_dir().to_owned(),
    )
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn parse_size(text: &str) -> Result<usize, ConfigError> {
    let size: bytesize::ByteSize = text.trim().parse().map_err(|e| {
        invalid(
            "--max-message-size",
            format!("{text:?}: {e} (try 32MiB, 512KiB or 1048576)"),
        )
    })?;
    usize::try_from(size.as_u64())
        .map_err(|_| invalid("--max-message-size", format!("{text:?} is too large")))
}

/// A positive whole number.
pub fn parse_count(text: &str, option: &'static str) -> Result<usize, ConfigError> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err(invalid(option, "must be at least 1".into())),
        Ok(n) => Ok(n),
        Err(e) => Err(invalid(
            option,
            format!("{text:?}: {e} (expected a whole number)"),
        )),
    }
}

/// Longest duration accepted anywhere: far beyond any sensible timeout, and far enough below
/// the clock's range that adding it to "now" cannot overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A duration greater than zero, in humantime's syntax (`5s`, `1500ms`, `10m`, `2h 30m`).
/// Zero, negative, overflowing values and unknown units are refused with a message saying so.
pub fn parse_duration(text: &str, option: &'static str) -> Result<Duration, ConfigError> {
    let trimmed = text.trim();
    if trimmed.starts_with('-') {
        return Err(invalid(
            option,
            format!("{text:?}: a duration cannot be negative"),
        ));
    }
    match humantime::parse_duration(trimmed) {
        Ok(d) if d.is_zero() => Err(invalid(option, format!("{text:?}: must be more than zero"))),
        Ok(d) if d > MAX_DURATION => Err(invalid(
            option,
            format!("{text:?}: too long (at most 100 years)"),
        )),
        Ok(d) => Ok(d),
        Err(e) => Err(invalid(
            option,
            format!("{text:?}: {e} (try 5s, 1500ms, 10m or 2h)"),
        )),
    }
}

/// Like [`parse_duration`], or `off` for none.
pub fn parse_optional_duration(
    text: &str,
    option: &'static str,
) -> Result<Option<Duration>, ConfigError> {
    if text.trim().eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    parse_duration(text, option).map(Some).map_err(|e| match e {
        ConfigError::Invalid { option, message } => ConfigError::Invalid {
            option,
            message: format!("{message}, or off"),
        },
        other => other,
    })
}

fn invalid(option: &'static str, message: String) -> ConfigError {
    ConfigError::Invalid { option, message }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn globals(config: Option<PathBuf>) -> GlobalArgs {
        GlobalArgs {
            log_level: None,
            log_format: None,
            log_file: None,
            data_dir: None,
            config,
        }
    }

    fn proxy(size: Option<&str>, timeout: Option<&str>) -> ProxyArgs {
        ProxyArgs {
            max_message_size: size.map(str::to_owned),
            shutdown_timeout: timeout.map(str::to_owned),
            ..ProxyArgs::default()
        }
    }

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
        assert!(matches!(config.upstream, ReverseUpstream::Http(_)));
        assert_eq!(config.upstream_headers["x-api-key"], "k");
        assert_eq!(config.admin_listen.unwrap().to_string(), "127.0.0.1:9090");
        assert_eq!(config.connect_timeout, Duration::from_secs(3));
    }

    #[test]
    fn reverse_options_are_validated() {
        let config = reverse(&["--upstream", "http://127.0.0.1:9/mcp"]).unwrap();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.path, "/mcp");
        assert_eq!(config.allowed_origins, AllowedOrigins::Localhost);
        assert!(config.admin_listen.is_none());
        let config = reverse(&[
            "--upstream-header",
            "Authorization: Bearer s3cret",
            "--upstream-header",
            "X-Team: a",
            "--listen",
            "localhost:9100",
            "--allowed-origin",
            "https://App.example.com/",
            "--",
            "srv",
        ])
        .unwrap();
        assert!(matches!(config.upstream, ReverseUpstream::Stdio(_)));
        assert!(config.upstream_headers["authorization"].is_sensitive());
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
            (&["--upstream", "https://h/"][..], "--upstream"),
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

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let config = Config::build(&globals(None), None).unwrap();
        assert_eq!(config.max_message_size, DEFAULT_MAX_MESSAGE_BYTES);
        assert_eq!(
            config.sessions.max_pending_requests,
            DEFAULT_MAX_PENDING_REQUESTS
        );
        assert_eq!(config.sessions.idle_timeout, None);
        assert_eq!(config.request_timeout, None);
        assert_eq!(config.shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT);
        assert_eq!(config.log_level, "info");
    }

    #[test]
    fn parses_sizes_and_durations() {
        let config =
            Config::build(&globals(None), Some(&proxy(Some("5MiB"), Some("250ms")))).unwrap();
        assert_eq!(config.max_message_size, 5 * 1024 * 1024);
        assert_eq!(config.shutdown_timeout, Duration::from_millis(250));
        let config = Config::build(&globals(None), Some(&proxy(Some("4096"), None))).unwrap();
        assert_eq!(config.max_message_size, 4096);
    }

    #[test]
    fn rejects_bad_values_naming_the_option() {
        for (size, timeout, option) in [
            (Some("lots"), None, "--max-message-size"),
            (Some("10"), None, "--max-message-size"),
            (None, Some("soon"), "--shutdown-timeout"),
        ] {
            let err = Config::build(&globals(None), Some(&proxy(size, timeout))).unwrap_err();
            assert!(err.to_string().contains(option), "{err}");
        }
    }

    #[test]
    fn durations_refuse_zero_negative_overflow_and_unknown_units() {
        for (text, needle) in [
            ("0s", "more than zero"),
            ("0", "more than zero"),
            ("-5s", "negative"),
            ("99999999999999999999999h", "\"99999999999999999999999h\""),
            ("5 fortnights", "unknown time unit"),
            ("", "try 5s"),
            ("200years", "too long"),
        ] {
            let err = parse_duration(text, "--x").unwrap_err().to_string();
            assert!(
                err.contains("--x") && err.contains(needle),
                "{text:?}: {err}"
            );
        }
        assert_eq!(
            parse_duration("1h 30m", "--x").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(parse_optional_duration("off", "--x").unwrap(), None);
        assert!(
            parse_optional_duration("0s", "--x")
                .unwrap_err()
                .to_string()
                .contains("or off")
        );
    }

    #[test]
    fn session_options_come_from_flags_and_file() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "max_sessions = 5\nsession_idle_timeout = \"30m\"\nsession_store = \"memory\""
        )
        .unwrap();
        let args = ProxyArgs {
            max_sessions: Some("7".into()),
            request_timeout: Some("1m".into()),
            ..ProxyArgs::default()
        };
        let config = Config::build(&globals(Some(file.path().to_owned())), Some(&args)).unwrap();
        assert_eq!(config.sessions.max_sessions, 7);
        assert_eq!(
            config.sessions.idle_timeout,
            Some(Duration::from_secs(1800))
        );
        assert_eq!(config.request_timeout, Some(Duration::from_secs(60)));
        assert_eq!(config.session_store, StoreKind::Memory);
        let bad = ProxyArgs {
            max_sessions: Some("0".into()),
            ..ProxyArgs::default()
        };
        assert!(
            Config::build(&globals(None), Some(&bad))
                .unwrap_err()
                .to_string()
                .contains("--max-sessions")
        );
    }

    #[test]
    fn the_file_sits_under_the_command_line() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "max_message_size = \"1MiB\"\nshutdown_timeout = \"2s\"\nlog_format = \"json\""
        )
        .unwrap();
        let g = globals(Some(file.path().to_owned()));
        let config = Config::build(&g, Some(&proxy(None, Some("3s")))).unwrap();
        assert_eq!(config.max_message_size, 1024 * 1024);
        assert_eq!(config.shutdown_timeout, Duration::from_secs(3));
        assert_eq!(config.log_format, LogFormat::Json);
    }

    #[test]
    fn the_file_rejects_unknown_keys_with_a_position() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "max_mesage_size = 5").unwrap();
        let err = Config::build(&globals(Some(file.path().to_owned())), None).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
