//! The cluster (docs/scale-out.md): the keys that seal session ids (`--cluster-key-file`,
//! `--cluster-key-env`), so that every gateway instance sharing them serves every session, and
//! the Redis the instances share state through (`--redis-url`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::cli::ClusterArgs;
use crate::session::Sealer;
use crate::session::seal::MIN_KEY_LEN;

use super::{ConfigError, FileConfig, either, invalid, parse_duration, pick};

/// Largest key file read.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// How long one Redis command (or connecting) may take (`--redis-timeout`).
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(100);

/// The cluster's options, validated.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The keys: the first seals the ids this instance hands out, every one opens (`None`: ids
    /// are not sealed; a session is served by the instance that opened it).
    pub sealer: Option<Arc<Sealer>>,
    /// The Redis the instances share state through.
    pub redis: Option<RedisConfig>,
    /// The URL the other instances reach this one at (`--cluster-advertise`; `None`: the
    /// listening address, if it is a specific one).
    pub advertise: Option<String>,
}

/// `--redis-url`, `--redis-timeout`.
#[derive(Clone)]
pub struct RedisConfig {
    /// The URL, password and all (never shown: see [`crate::transport::redis::shown_url`]).
    pub url: String,
    /// Longest wait for one command.
    pub timeout: Duration,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &crate::transport::redis::shown_url(&self.url))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The cluster `args` and `file` ask for; `None` if they ask for none.
pub(super) fn options(
    args: &ClusterArgs,
    file: &FileConfig,
) -> Result<Option<ClusterConfig>, ConfigError> {
    let sealer = sealer(args, file)?;
    let redis = redis(args, file)?;
    let advertise = match either(
        args.cluster_advertise.as_ref(),
        file.cluster_advertise.as_ref(),
    ) {
        Some(url) => Some(advertised(&url)?),
        None => None,
    };
    if advertise.is_some() && sealer.is_none() {
        return Err(invalid(
            "--cluster-advertise",
            "it needs --cluster-key-file or --cluster-key-env".into(),
        ));
    }
    Ok(
        (sealer.is_some() || redis.is_some()).then_some(ClusterConfig {
            sealer,
            redis,
            advertise,
        }),
    )
}

/// `--cluster-advertise`: `http://HOST:PORT`, nothing after it.
fn advertised(url: &str) -> Result<String, ConfigError> {
    let bad = |why: &str| {
        invalid(
            "--cluster-advertise",
            format!(
                "{url:?} {why} (expected http://HOST:PORT, as the other instances reach this one)"
            ),
        )
    };
    let uri: http::Uri = url.parse().map_err(|_| bad("is not a URL"))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad("is not an http:// URL"));
    }
    if uri.authority().is_none_or(|a| a.port_u16().is_none()) {
        return Err(bad("names no port"));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(bad("has a path"));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// `--redis-url` and `--redis-timeout`, checked.
fn redis(args: &ClusterArgs, file: &FileConfig) -> Result<Option<RedisConfig>, ConfigError> {
    let timeout = match pick(args.redis_timeout.as_ref(), file.redis_timeout.as_ref()) {
        Some(text) => Some(parse_duration(&text, "--redis-timeout")?),
        None => None,
    };
    let Some(url) = either(args.redis_url.as_ref(), file.redis_url.as_ref()) else {
        if timeout.is_some() {
            return Err(invalid("--redis-timeout", "it needs --redis-url".into()));
        }
        return Ok(None);
    };
    if let Err(e) = redis::Client::open(url.as_str()) {
        return Err(invalid(
            "--redis-url",
            format!(
                "{}: {e} (expected redis://[:PASSWORD@]HOST[:PORT][/DB])",
                crate::transport::redis::shown_url(&url)
            ),
        ));
    }
    Ok(Some(RedisConfig {
        url,
        timeout: timeout.unwrap_or(DEFAULT_REDIS_TIMEOUT),
    }))
}

/// The sealer `--cluster-key-file` or `--cluster-key-env` give, if one does.
fn sealer(args: &ClusterArgs, file: &FileConfig) -> Result<Option<Arc<Sealer>>, ConfigError> {
    let path = either(
        args.cluster_key_file.as_ref(),
        file.cluster_key_file.as_ref(),
    );
    let var = either(args.cluster_key_env.as_ref(), file.cluster_key_env.as_ref());
    let (keys, flag) = match (path, var) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(invalid(
                "--cluster-key-file",
                "give the cluster keys once: --cluster-key-file or --cluster-key-env".into(),
            ));
        }
        (Some(path), None) => (read_keys(&path)?, "--cluster-key-file"),
        (None, Some(var)) => {
            let text = std::env::var(&var).map_err(|_| {
                invalid(
                    "--cluster-key-env",
                    format!("the environment variable {var} is not set (or not UTF-8)"),
                )
            })?;
            let keys: Vec<String> = text
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|k| !k.is_empty())
                .map(str::to_owned)
                .collect();
            (keys, "--cluster-key-env")
        }
    };
    if keys.is_empty() {
        return Err(invalid(flag, "no key given".into()));
    }
    if let Some(short) = keys.iter().position(|k| k.len() < MIN_KEY_LEN) {
        return Err(invalid(
            flag,
            format!(
                "key {} is shorter than {MIN_KEY_LEN} characters (make one with `openssl rand -hex 32`)",
                short + 1
            ),
        ));
    }
    let sealer = Sealer::new(&keys).ok_or_else(|| invalid(flag, "unusable keys".into()))?;
    Ok(Some(Arc::new(sealer)))
}

/// The keys in `path`: one per line, newest first; blank lines and `#` comments skipped.
fn read_keys(path: &Path) -> Result<Vec<String>, ConfigError> {
    let flag = "--cluster-key-file";
    let shown = path.display();
    let len = std::fs::metadata(path)
        .map_err(|e| invalid(flag, format!("{shown}: {e}")))?
        .len();
    if len > MAX_KEY_FILE {
        return Err(invalid(
            flag,
            format!("{shown} is larger than {MAX_KEY_FILE} bytes"),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| invalid(flag, format!("{shown}: {e}")))?;
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.chars().any(char::is_whitespace) {
            return Err(invalid(
                flag,
                format!("{shown}:{}: a key is one word", n + 1),
            ));
        }
        keys.push(line.to_owned());
    }
    Ok(keys)
}
