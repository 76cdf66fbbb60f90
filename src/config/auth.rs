//! The gateway's authentication options (`--auth-*`, `--api-key-file`): validated here, used by
//! [`crate::auth`].

use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::{ConfigError, FileConfig, either, invalid, listed, parse_duration, pick};
use crate::cli::AuthArgs;

/// Default `--auth-leeway`.
pub const DEFAULT_AUTH_LEEWAY: Duration = Duration::from_secs(60);
/// Most `--auth-leeway`: tokens are short-lived; more would keep expired ones good.
pub const MAX_AUTH_LEEWAY: Duration = Duration::from_secs(10 * 60);
/// Most `--auth-scope`s.
pub const MAX_REQUIRED_SCOPES: usize = 32;
/// Most `--auth-claim`s.
pub const MAX_KEPT_CLAIMS: usize = 32;

/// How clients authenticate (`None` in [`super::ReverseConfig::auth`]: they do not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// OAuth bearer tokens (JWTs), if accepted.
    pub oauth: Option<OAuthConfig>,
    /// The API key file, if API keys are accepted.
    pub api_keys: Option<PathBuf>,
    /// The resource identifier to publish (`None`: from the request's Host and the path).
    pub resource: Option<String>,
    /// Scopes every request needs.
    pub scopes: Vec<String>,
    /// The token claims kept with the principal, for rules.
    pub claims: Vec<String>,
}

/// What a JWT must be to be accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthConfig {
    /// Its `iss`, exactly.
    pub issuer: String,
    /// A value its `aud` must hold.
    pub audience: String,
    /// Where the signing keys come from.
    pub jwks: JwksSource,
    /// Clock skew allowed for `exp` and `nbf`.
    pub leeway: Duration,
}

/// Where the issuer's signing keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// Fetched from this URL.
    Url(String),
    /// Read from this file.
    File(PathBuf),
    /// The `jwks_uri` of the issuer's metadata (RFC 8414, else OpenID Connect discovery).
    Discover,
}

fn http_url(text: &str, option: &'static str) -> Result<String, ConfigError> {
    let trimmed = text.trim();
    let uri: http::Uri = trimmed
        .parse()
        .map_err(|e| invalid(option, format!("{trimmed:?}: {e}")))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(trimmed.to_owned()),
        _ => Err(invalid(
            option,
            format!("{trimmed:?}: expected an http:// or https:// URL"),
        )),
    }
}

/// The authentication options, validated: `None` when neither OAuth nor API keys are asked for.
pub(super) fn auth_config(
    args: &AuthArgs,
    file: &FileConfig,
) -> Result<Option<AuthConfig>, ConfigError> {
    let issuer = either(args.auth_issuer.as_ref(), file.auth_issuer.as_ref());
    let audience = either(args.auth_audience.as_ref(), file.auth_audience.as_ref());
    let jwks_url = either(args.auth_jwks_url.as_ref(), file.auth_jwks_url.as_ref());
    let jwks_file = either(args.auth_jwks_file.as_ref(), file.auth_jwks_file.as_ref());
    let api_keys = either(args.api_key_file.as_ref(), file.api_key_file.as_ref());
    let scopes = listed(&args.auth_scope, file.auth_scope.clone());
    let claims = listed(&args.auth_claim, file.auth_claim.clone());
    let resource = either(args.auth_resource.as_ref(), file.auth_resource.as_ref())
        .map(|r| http_url(&r, "--auth-resource"))
        .transpose()?;
    let leeway = pick(args.auth_leeway.as_ref(), file.auth_leeway.as_ref());
    let oauth = oauth_config(issuer, audience, jwks_url, jwks_file, leeway)?;
    if oauth.is_none() && api_keys.is_none() {
        if !scopes.is_empty() || resource.is_some() {
            return Err(invalid(
                "--auth-scope",
                "--auth-scope and --auth-resource need --auth-issuer or --api-key-file".into(),
            ));
        }
        if !claims.is_empty() {
            return Err(invalid(
                "--auth-claim",
                "--auth-claim needs --auth-issuer (claims come from tokens)".into(),
            ));
        }
        return Ok(None);
    }
    if claims.len() > MAX_KEPT_CLAIMS {
        return Err(invalid(
            "--auth-claim",
            format!("at most {MAX_KEPT_CLAIMS}"),
        ));
    }
    if let Some(bad) = claims
        .iter()
        .find(|c| c.is_empty() || c.len() > 128 || !c.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(invalid(
            "--auth-claim",
            format!("{bad:?}: a claim name is 1 to 128 printable ASCII characters"),
        ));
    }
    crate::session::principal::check_scopes(&scopes, MAX_REQUIRED_SCOPES)
        .map_err(|why| invalid("--auth-scope", why))?;
    Ok(Some(AuthConfig {
        oauth,
        api_keys,
        resource,
        scopes,
        claims,
    }))
}

/// The OAuth options, validated: `None` without an issuer (then the others must be absent).
fn oauth_config(
    issuer: Option<String>,
    audience: Option<String>,
    jwks_url: Option<String>,
    jwks_file: Option<PathBuf>,
    leeway: Option<String>,
) -> Result<Option<OAuthConfig>, ConfigError> {
    let Some(issuer) = issuer else {
        for (given, option) in [
            (audience.is_some(), "--auth-audience"),
            (jwks_url.is_some(), "--auth-jwks-url"),
            (jwks_file.is_some(), "--auth-jwks-file"),
        ] {
            if given {
                return Err(invalid(option, "needs --auth-issuer".into()));
            }
        }
        return Ok(None);
    };
    let issuer = http_url(&issuer, "--auth-issuer")?;
    let Some(audience) = audience.filter(|a| !a.trim().is_empty()) else {
        return Err(invalid(
            "--auth-audience",
            "is required with --auth-issuer: a token must name this gateway as its audience (the MCP authorization spec requires the check)".into(),
        ));
    };
    let jwks = match (jwks_url, jwks_file) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "--auth-jwks-url",
                "give --auth-jwks-url or --auth-jwks-file, not both".into(),
            ));
        }
        (Some(url), None) => JwksSource::Url(http_url(&url, "--auth-jwks-url")?),
        (None, Some(path)) => JwksSource::File(path),
        (None, None) => JwksSource::Discover,
    };
    let leeway = match leeway {
        Some(text) if text.trim() == "0" => Duration::ZERO,
        Some(text) => parse_duration(&text, "--auth-leeway")?,
        None => DEFAULT_AUTH_LEEWAY,
    };
    if leeway > MAX_AUTH_LEEWAY {
        return Err(invalid(
            "--auth-leeway",
            format!("at most {}", humantime::format_duration(MAX_AUTH_LEEWAY)),
        ));
    }
    Ok(Some(OAuthConfig {
        issuer,
        audience: audience.trim().to_owned(),
        jwks,
        leeway,
    }))
}

/// Shortest listener token accepted (`--admin-token-file`, `--ui-token-file`).
pub const MIN_LISTENER_TOKEN_LEN: usize = 16;

/// A side listener's bearer token (the admin endpoints', the live view's), kept as its SHA-256
/// only.
#[derive(Clone, PartialEq, Eq)]
pub struct ListenerToken([u8; 32]);

impl std::fmt::Debug for ListenerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ListenerToken(..)")
    }
}

impl ListenerToken {
    /// Whether `presented` is the token (compared by hash, in constant time).
    pub fn accepts(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        bool::from(self.0.ct_eq(&digest))
    }
}

/// `--admin-token-file`, read and checked; and a non-loopback `admin` address refused
/// without it.
pub(super) fn admin_token(
    path: Option<&std::path::Path>,
    admin: Option<std::net::SocketAddr>,
) -> Result<Option<ListenerToken>, ConfigError> {
    listener_token(
        path,
        admin,
        ("--admin-listen", "--admin-token-file"),
        "its metrics and readiness would be open to the network",
    )
}

/// A side listener's token file (`flags`: the listener's option and the file's), read and
/// checked; a non-loopback `listen` address refused without it, saying what it would
/// `expose`.
pub(super) fn listener_token(
    path: Option<&std::path::Path>,
    listen: Option<std::net::SocketAddr>,
    (listen_flag, file_flag): (&'static str, &'static str),
    expose: &str,
) -> Result<Option<ListenerToken>, ConfigError> {
    let Some(path) = path else {
        if listen.is_some_and(|a| !a.ip().is_loopback()) {
            return Err(invalid(
                listen_flag,
                format!("a non-loopback address needs {file_flag} ({expose})"),
            ));
        }
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(file_flag, format!("{}: {e}", path.display())))?;
    let token = text.trim();
    if token.len() < MIN_LISTENER_TOKEN_LEN || token.chars().any(char::is_whitespace) {
        return Err(invalid(
            file_flag,
            format!(
                "{}: the token must be one word of at least {MIN_LISTENER_TOKEN_LEN} characters",
                path.display()
            ),
        ));
    }
    Ok(Some(ListenerToken(Sha256::digest(token.as_bytes()).into())))
}
