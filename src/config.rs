//! Validated configuration, built from the config file, the environment and the command line.
//!
//! [`crate::cli`] holds raw arguments (clap already folds in `SHADOWCAT_*` variables); this module
//! adds the `--config` file underneath them, applies the `DEFAULT_*` constants, and checks every
//! value, so the rest of the program only ever sees a [`Config`] that makes sense.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cli::{GlobalArgs, ProxyArgs};
use crate::session::info::TagThresholds;
use crate::session::manager::{
    DEFAULT_CLEANUP_INTERVAL, DEFAULT_HIGH_VOLUME_FRAMES, DEFAULT_LONG_RUNNING_AFTER,
    DEFAULT_MAX_SESSIONS, SessionConfig,
};
use crate::session::pending::{DEFAULT_MAX_PENDING_REQUESTS, DEFAULT_MAX_PENDING_TOTAL};
use crate::telemetry::LogFormat;
use crate::transport::DEFAULT_MAX_MESSAGE_BYTES;

/// Default log filter.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Default time the server gets to exit after its stdin closes.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Smallest accepted `--max-message-size`: an `initialize` must fit.
pub const MIN_MESSAGE_BYTES: usize = 1024;

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
    /// Most time a request may take, whatever progress it reports (`None`: no limit).
    pub request_timeout_max: Option<Duration>,
    /// How sessions are bounded and tagged.
    pub sessions: SessionConfig,
    /// How often expired sessions are looked for.
    pub cleanup_interval: Duration,
    /// Where session history goes.
    pub session_store: StoreKind,
    /// Where and how sessions are recorded (`--record`, `record`).
    pub recording: Option<crate::tape::Recording>,
    /// Interceptor rules (`--rules`), loaded and checked.
    pub rules: Option<std::sync::Arc<crate::intercept::Rules>>,
    /// Rate limits (`--rate-limit`), each with a unique name.
    pub rate_limits: Vec<crate::ratelimit::LimitSpec>,
    /// Trace export (`--otlp-endpoint`), if on.
    pub traces: Option<crate::telemetry::traces::TraceOptions>,
    /// The live view (`--ui-listen`), if asked for.
    pub ui: Option<ui::UiConfig>,
    /// The traffic in the log (`--traffic`), if asked for.
    pub traffic: Option<Traffic>,
}

/// `--traffic`: what is shown, and what is masked in the bodies shown.
#[derive(Debug, Clone)]
pub struct Traffic {
    /// Lines, or lines and bodies.
    pub show: crate::telemetry::traffic::Show,
    /// As on tapes (`--redact`, the server's credentials); set with the mode's server.
    pub masks: std::sync::Arc<crate::tape::Redactor>,
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
    /// A value from the environment or the config file is out of range or malformed.
    #[error("invalid {from}: {message}")]
    InvalidFrom {
        /// Where the value came from: `SHADOWCAT_MAX_SESSIONS`, `shadowcat.toml:7: max_sessions`.
        from: String,
        /// What is wrong.
        message: String,
    },
}

/// `error` naming its option where the user gave it: the flag (as `error` does), else the
/// variable `SHADOWCAT_<NAME>`, else the config file's line and key. `args` is the command
/// line. A user who set a value in a file is not told about a flag they never passed.
pub fn name_source(error: ConfigError, file: &ConfigFile, args: &[String]) -> ConfigError {
    let ConfigError::Invalid { option, message } = error else {
        return error;
    };
    let Some(name) = option.strip_prefix("--") else {
        return ConfigError::Invalid { option, message };
    };
    // Only before `--`: after it come the server command's own arguments.
    let given = args
        .iter()
        .take_while(|a| *a != "--")
        .any(|a| a == option || a.strip_prefix(option).is_some_and(|v| v.starts_with('=')));
    if given {
        return ConfigError::Invalid { option, message };
    }
    let variable = format!("SHADOWCAT_{}", name.to_uppercase().replace('-', "_"));
    if std::env::var_os(&variable).is_some() {
        return ConfigError::InvalidFrom {
            from: variable,
            message,
        };
    }
    let key = name.replace('-', "_");
    match file.place_of(&key) {
        Some(place) => ConfigError::InvalidFrom {
            from: format!("{place}: {key}"),
            message,
        },
        None => ConfigError::Invalid { option, message },
    }
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
    request_timeout_max: Option<Scalar>,
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
    url: Option<String>,
    header: Option<Vec<String>>,
    bearer_token_env: Option<String>,
    bearer_token_file: Option<PathBuf>,
    upstream_token_url: Option<String>,
    upstream_client_id: Option<String>,
    upstream_client_secret_file: Option<PathBuf>,
    upstream_scope: Option<Vec<String>>,
    upstream_token_exchange: Option<bool>,
    upstream_ca: Option<PathBuf>,
    allowed_origin: Option<Vec<String>>,
    admin_listen: Option<String>,
    admin_token_file: Option<PathBuf>,
    connect_timeout: Option<Scalar>,
    read_timeout: Option<Scalar>,
    resume_timeout: Option<Scalar>,
    pending_wait: Option<Scalar>,
    restart: Option<crate::transport::child::Restart>,
    pool_min_idle: Option<Scalar>,
    pool_idle_timeout: Option<Scalar>,
    pool_acquire_timeout: Option<Scalar>,
    share: Option<crate::transport::child::Share>,
    max_sessions_per_child: Option<Scalar>,
    max_stateless_children: Option<Scalar>,
    auth_issuer: Option<String>,
    auth_audience: Option<String>,
    auth_jwks_url: Option<String>,
    auth_jwks_file: Option<PathBuf>,
    auth_scope: Option<Vec<String>>,
    auth_claim: Option<Vec<String>>,
    auth_resource: Option<String>,
    auth_leeway: Option<Scalar>,
    api_key_file: Option<PathBuf>,
    max_sessions_per_client: Option<Scalar>,
    header_timeout: Option<Scalar>,
    body_timeout: Option<Scalar>,
    write_timeout: Option<Scalar>,
    max_connections: Option<Scalar>,
    max_connections_per_client: Option<Scalar>,
    sse_replay_events: Option<Scalar>,
    sse_keepalive: Option<Scalar>,
    rules: Option<PathBuf>,
    rules_mode: Option<crate::intercept::Mode>,
    rate_limit: Option<Vec<String>>,
    trusted_proxy: Option<Vec<String>>,
    otlp_endpoint: Option<String>,
    otlp_protocol: Option<String>,
    otlp_header: Option<Vec<String>>,
    otlp_ca: Option<PathBuf>,
    trace_sample_ratio: Option<Scalar>,
    trace_payloads: Option<bool>,
    service_name: Option<String>,
    traffic: Option<crate::telemetry::traffic::Show>,
    record: Option<PathBuf>,
    redact: Option<Vec<String>>,
    cwd: Option<PathBuf>,
    ui_listen: Option<String>,
    ui_trace_url: Option<String>,
    ui_token_file: Option<PathBuf>,
    cluster_key_file: Option<PathBuf>,
    cluster_key_env: Option<String>,
    redis_url: Option<String>,
    redis_timeout: Option<Scalar>,
    cluster_advertise: Option<String>,
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

/// A single option: the command line's value if it gives one, else the file's.
fn either<T: Clone>(cli: Option<&T>, file: Option<&T>) -> Option<T> {
    cli.or(file).cloned()
}

/// A repeatable option: the command line's values if it gives any, else the file's.
fn listed(cli: &[String], file: Option<Vec<String>>) -> Vec<String> {
    if cli.is_empty() {
        file.unwrap_or_default()
    } else {
        cli.to_vec()
    }
}

impl Config {
    /// The request timeouts (`--request-timeout`, `--request-timeout-max`).
    pub fn timeouts(&self) -> crate::session::pending::Timeouts {
        crate::session::pending::Timeouts {
            idle: self.request_timeout,
            max: self.request_timeout_max,
        }
    }
}

impl Config {
    /// Builds the configuration (reading `--config`'s file). `proxy` is `None` for commands
    /// that don't proxy.
    pub fn build(global: &GlobalArgs, proxy: Option<&ProxyArgs>) -> Result<Self, ConfigError> {
        Self::build_with(global, &ConfigFile::read(global)?, proxy)
    }

    /// [`Self::build`] with the config file already read.
    #[allow(clippy::too_many_lines)] // One flat list of options reads better than fragments.
    pub fn build_with(
        global: &GlobalArgs,
        file: &ConfigFile,
        proxy: Option<&ProxyArgs>,
    ) -> Result<Self, ConfigError> {
        let file = file.inner();
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
        let mut rate_limits = listed(&p.rate_limit, proxy.and(file.rate_limit.clone()))
            .iter()
            .map(|text| crate::ratelimit::LimitSpec::parse(text))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("--rate-limit", e))?;
        crate::ratelimit::spec::unique_names(&mut rate_limits);
        let traces = match proxy {
            Some(p) => traces::options(&p.trace, file)?,
            None => None,
        };
        let ui = match proxy {
            Some(p) => ui::options(p, file)?,
            None => None,
        };
        let traffic = proxy
            .and_then(|p| p.traffic.or(file.traffic))
            .map(|show| Traffic {
                show,
                masks: std::sync::Arc::default(),
            });
        Ok(Self {
            rate_limits,
            traces,
            ui,
            traffic,
            log_level: either(global.log_level.as_ref(), file.log_level.as_ref())
                .unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_owned()),
            log_format: global.log_format.or(file.log_format).unwrap_or_default(),
            log_file: either(global.log_file.as_ref(), file.log_file.as_ref()),
            data_dir: either(global.data_dir.as_ref(), file.data_dir.as_ref())
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
            request_timeout_max: switchable(
                &p.request_timeout_max,
                &file.request_timeout_max,
                "--request-timeout-max",
            )?,
            sessions,
            cleanup_interval: duration(
                &p.cleanup_interval,
                &file.cleanup_interval,
                "--cleanup-interval",
                DEFAULT_CLEANUP_INTERVAL,
            )?,
            session_store,
            recording: None,
            // Only commands that proxy run rules (a config file's `rules` is not theirs).
            rules: match proxy.and(either(p.rules.as_ref(), file.rules.as_ref())) {
                Some(path) => Some(std::sync::Arc::new(
                    crate::intercept::Rules::load(&path, p.rules_mode.or(file.rules_mode))
                        .map_err(|e| invalid("--rules", e.to_string()))?,
                )),
                None => None,
            },
        })
    }
}

mod auth;
pub mod cluster;
mod credentials;
mod mode;
pub mod recording;
mod reverse;
mod traces;
pub mod ui;
pub use mode::{Mode, configure, server_url};
mod trusted;
pub use auth::{AuthConfig, DEFAULT_AUTH_LEEWAY, JwksSource, ListenerToken, OAuthConfig};
pub use reverse::{
    AllowedOrigins, DEFAULT_LISTEN, DEFAULT_PATH, PoolConfig, ReverseConfig, ReverseUpstream,
    UpstreamConfig, is_loopback_authority,
};
pub use trusted::TrustedProxies;

/// The platform's data dir for Shadowcat (e.g. `~/.local/share/shadowcat`), or `./.shadowcat`
/// when there is no home directory.
pub fn default_data_dir() -> PathBuf {
    directories::ProjectDirs::from("", "", "shadowcat").map_or_else(
        || PathBuf::from(".shadowcat"),
        |dirs| dirs.data_dir().to_owned(),
    )
}

/// The file `--config` names, read and parsed once for every part of the configuration
/// (empty without one).
#[derive(Debug, Default)]
pub struct ConfigFile(FileConfig, Option<(PathBuf, String)>);

impl ConfigFile {
    /// The file's keys.
    fn inner(&self) -> &FileConfig {
        &self.0
    }

    /// Reads `global.config`, if it names a file.
    pub fn read(global: &GlobalArgs) -> Result<Self, ConfigError> {
        match &global.config {
            Some(path) => {
                let (keys, text) = load_file(path)?;
                Ok(Self(keys, Some((path.clone(), text))))
            }
            None => Ok(Self::default()),
        }
    }

    /// Where the file sets the top-level `key`: `path:line`.
    fn place_of(&self, key: &str) -> Option<String> {
        let (path, text) = self.1.as_ref()?;
        let line = text.lines().position(|line| {
            line.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })?;
        Some(format!("{}:{}", path.display(), line + 1))
    }
}

/// The file's keys, and its text (to say where a bad value is).
fn load_file(path: &Path) -> Result<(FileConfig, String), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let keys = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    Ok((keys, text))
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

/// Where tapes go in the data dir, by default.
pub const TAPES_DIR: &str = "tapes";

/// The server command a stdio client's server is (the part after `--`, with `--env`, `--cwd`).
pub fn child_spec(
    server: &crate::cli::StdioServer,
) -> anyhow::Result<crate::transport::child::ChildSpec> {
    let mut command = server.command.iter().cloned();
    let program = command
        .next()
        .ok_or_else(|| anyhow::anyhow!("no server command given after --"))?;
    Ok(crate::transport::child::ChildSpec {
        program,
        args: command.collect(),
        env: server.child.env.clone(),
        cwd: server.child.cwd.clone(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    /// Every option of the proxying commands has a variable `SHADOWCAT_<NAME>` and a config
    /// file key `<name>`, both derived from the option's long name; the exceptions are listed
    /// (and said in docs/cli.md).
    #[test]
    fn every_proxying_option_has_its_variable_and_config_key() {
        // `--env`: the server inherits our environment, so set the variable itself; `record`'s
        // `--output` and `--name`: one run's tape; `--config`, `--help`, `--version`: about the
        // command line itself.
        const NEITHER: [&str; 6] = ["env", "output", "name", "config", "help", "version"];
        let root = <crate::cli::Cli as clap::CommandFactory>::command();
        let mut checked = 0;
        for path in [&["forward", "stdio"][..], &["reverse"], &["record"]] {
            let mut command = root.clone();
            for name in path {
                command = command.find_subcommand(name).unwrap().clone();
            }
            for arg in command.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                if NEITHER.contains(&long) {
                    continue;
                }
                let env = format!("SHADOWCAT_{}", long.to_uppercase().replace('-', "_"));
                assert_eq!(
                    arg.get_env().map(|e| e.to_string_lossy().into_owned()),
                    Some(env),
                    "{path:?} --{long}"
                );
                // A repeatable option's variable holds its values one per line.
                if matches!(arg.get_action(), clap::ArgAction::Append) {
                    assert_eq!(arg.get_value_delimiter(), Some('\n'), "--{long}");
                }
                let key = long.replace('-', "_");
                // Any value: a key the file does not have is refused as unknown.
                let text = format!("{key} = []");
                let error = toml::from_str::<FileConfig>(&text)
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                assert!(
                    !error.contains("unknown field"),
                    "--{long}: no `{key}` key: {error}"
                );
                checked += 1;
            }
        }
        assert!(checked > 150, "{checked}");
    }

    use std::io::Write;

    use super::*;

    /// Global options with nothing set but the config file (shared with `config::reverse`).
    pub(super) fn globals(config: Option<PathBuf>) -> GlobalArgs {
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
