//! Validated configuration, built from the config file, the environment and the command line.
//!
//! [`crate::cli`] holds raw arguments (clap already folds in `SHADOWCAT_*` variables); this module
//! adds the `--config` file underneath them, applies the `DEFAULT_*` constants, and checks every
//! value, so the rest of the program only ever sees a [`Config`] that makes sense.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cli::{GlobalArgs, ProxyArgs};
use crate::session::pending::DEFAULT_MAX_PENDING_REQUESTS;
use crate::transport::DEFAULT_MAX_MESSAGE_BYTES;

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
    /// Largest message, in bytes.
    pub max_message_size: usize,
    /// Most pending requests per direction per session.
    pub max_pending_requests: usize,
    /// Time the server gets to exit after its stdin closes.
    pub shutdown_timeout: Duration,
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

/// The config file's keys; all optional, unknown keys rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    log_level: Option<String>,
    log_format: Option<LogFormat>,
    log_file: Option<PathBuf>,
    max_message_size: Option<SizeValue>,
    max_pending_requests: Option<usize>,
    shutdown_timeout: Option<String>,
}

/// A size in the file may be a number of bytes or a string such as "16MiB".
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

impl Config {
    /// Builds the configuration. `proxy` is `None` for commands that don't proxy.
    pub fn build(global: &GlobalArgs, proxy: Option<&ProxyArgs>) -> Result<Self, ConfigError> {
        let file = match &global.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let none = ProxyArgs {
            max_message_size: None,
            max_pending_requests: None,
            shutdown_timeout: None,
        };
        let proxy = proxy.unwrap_or(&none);

        let max_message_size = match (&proxy.max_message_size, &file.max_message_size) {
            (Some(text), _) | (None, Some(SizeValue::Text(text))) => parse_size(text)?,
            (None, Some(SizeValue::Bytes(n))) => usize::try_from(*n).unwrap_or(usize::MAX),
            (None, None) => DEFAULT_MAX_MESSAGE_BYTES,
        };
        if max_message_size < MIN_MESSAGE_BYTES {
            return Err(invalid(
                "--max-message-size",
                format!("must be at least {MIN_MESSAGE_BYTES} bytes"),
            ));
        }
        let max_pending_requests = proxy
            .max_pending_requests
            .or(file.max_pending_requests)
            .unwrap_or(DEFAULT_MAX_PENDING_REQUESTS);
        if max_pending_requests == 0 {
            return Err(invalid(
                "--max-pending-requests",
                "must be at least 1".into(),
            ));
        }
        let shutdown_timeout = match proxy
            .shutdown_timeout
            .as_ref()
            .or(file.shutdown_timeout.as_ref())
        {
            Some(text) => humantime::parse_duration(text).map_err(|e| {
                invalid(
                    "--shutdown-timeout",
                    format!("{text:?}: {e} (try 5s or 500ms)"),
                )
            })?,
            None => DEFAULT_SHUTDOWN_TIMEOUT,
        };
        Ok(Self {
            log_level: global
                .log_level
                .clone()
                .or(file.log_level)
                .unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_owned()),
            log_format: global.log_format.or(file.log_format).unwrap_or_default(),
            log_file: global.log_file.clone().or(file.log_file),
            max_message_size,
            max_pending_requests,
            shutdown_timeout,
        })
    }
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
            config,
        }
    }

    fn proxy(size: Option<&str>, timeout: Option<&str>) -> ProxyArgs {
        ProxyArgs {
            max_message_size: size.map(str::to_owned),
            max_pending_requests: None,
            shutdown_timeout: timeout.map(str::to_owned),
        }
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let config = Config::build(&globals(None), None).unwrap();
        assert_eq!(config.max_message_size, DEFAULT_MAX_MESSAGE_BYTES);
        assert_eq!(config.max_pending_requests, DEFAULT_MAX_PENDING_REQUESTS);
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
