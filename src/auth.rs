//! Who a gateway client is: the MCP authorization spec's resource-server checks.
//!
//! A client presents `Authorization: Bearer <token>` (never anywhere else): a JWT of the
//! configured issuer ([`jwks`]: its signature against the issuer's published keys, `iss`,
//! `aud`, `exp`, `nbf`, and an algorithm allow-list), or one of the static API keys
//! ([`keys`]). What it proves is a [`Principal`]. A request without a valid token is answered
//! 401 with `WWW-Authenticate: Bearer resource_metadata="…"` (RFC 9728), so that the client can
//! find the authorization server from our Protected Resource Metadata ([`Authenticator::metadata`]);
//! a token without a required scope is answered 403 `insufficient_scope` naming it (RFC 6750).

use std::sync::{Arc, Mutex, PoisonError};

use http::{HeaderMap, HeaderValue, StatusCode};
use linked_hash_map::LinkedHashMap;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::{AuthConfig, JwksSource};

pub mod jwks;
pub mod keys;

pub use crate::session::Principal;
pub use jwks::Jwks;
pub use keys::ApiKeys;

/// Longest `Authorization` value looked at; a longer one is refused unread.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Why a request is not let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No bearer token (401, no `error`: RFC 6750 §3.1).
    Missing,
    /// A token that is not good (401 `invalid_token`), and why (logged, and told the client).
    Invalid(String),
    /// A good token without a scope the request needs (403 `insufficient_scope`).
    Scope {
        /// The scopes it lacks, space-separated.
        missing: String,
        /// The scopes to ask for, space-separated: every one the gateway requires (`--auth-scope`)
        /// is added to these.
        wanted: String,
    },
}

/// Most verified tokens remembered (the least recently used forgotten past it).
pub const MAX_VERIFIED: usize = 10_000;

/// A token that passed the full check.
#[derive(Debug)]
struct Verified {
    principal: Arc<Principal>,
    /// Its `exp`.
    exp: u64,
    /// The key set it was checked against ([`Jwks::version`]).
    keys: u64,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The gateway's checks of its clients.
#[derive(Debug)]
pub struct Authenticator {
    /// Tokens that passed the full check, by their SHA-256: a client presents the same token
    /// for many requests, and its signature is checked once, not on each.
    verified: Mutex<LinkedHashMap<[u8; 32], Verified>>,
    jwt: Option<Jwks>,
    keys: Option<ApiKeys>,
    scopes: Vec<String>,
    /// The claims kept in a token's principal (`--auth-claim`).
    claims: Vec<String>,
    resource: Option<String>,
    issuer: Option<String>,
}

/// The claims read from a JWT besides those the signature check validates.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    /// Checked by the validation; kept to know how long the token may be cached.
    exp: u64,
    /// OAuth's space-separated `scope`.
    #[serde(default)]
    scope: Option<String>,
    /// The `scp` array some providers use instead.
    #[serde(default)]
    scp: Option<Vec<String>>,
    /// The others, of which those selected are kept.
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

impl Authenticator {
    /// The checks `config` asks for: its API key file read, its issuer's keys loaded (a key
    /// file now; a URL fetched now if it answers, else until it does). Errors are what keeps
    /// the gateway from starting (a bad key file).
    pub async fn start(config: &AuthConfig) -> Result<Arc<Self>, String> {
        let keys = config.api_keys.as_deref().map(ApiKeys::read).transpose()?;
        let jwt = match &config.oauth {
            Some(oauth) => Some(Jwks::start(oauth).await?),
            None => None,
        };
        Ok(Arc::new(Self {
            verified: Mutex::new(LinkedHashMap::new()),
            jwt,
            keys,
            scopes: config.scopes.clone(),
            claims: config.claims.clone(),
            resource: config.resource.clone(),
            issuer: config.oauth.as_ref().map(|o| o.issuer.clone()),
        }))
    }

    /// Who sent a request with `headers`.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Principal>, Refusal> {
        let token = bearer(headers)?;
        let principal = if self.jwt.is_some() && looks_like_jwt(token) {
            self.validate_jwt(token).await?
        } else if let Some(keys) = &self.keys {
            keys.check(token)
                .map(Arc::new)
                .ok_or_else(|| Refusal::Invalid("the token is not a known API key".into()))?
        } else {
            return Err(Refusal::Invalid("the token is not a JWT".into()));
        };
        if let Some(missing) = self
            .scopes
            .iter()
            .find(|scope| !principal.scopes.contains(scope))
        {
            return Err(Refusal::Scope {
                missing: missing.clone(),
                wanted: missing.clone(),
            });
        }
        Ok(principal)
    }

    /// A JWT's principal: from the cache of tokens verified before (while the key set they
    /// were verified with is current and they have not expired), else checked in full.
    async fn validate_jwt(&self, token: &str) -> Result<Arc<Principal>, Refusal> {
        let Some(jwks) = &self.jwt else {
            return Err(Refusal::Invalid("JWTs are not accepted".into()));
        };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let keys = jwks.version();
        let now = unix_now();
        {
            let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(entry) = verified.get_refresh(&digest) {
                if entry.keys == keys && now <= entry.exp.saturating_add(jwks.leeway_secs()) {
                    return Ok(entry.principal.clone());
                }
                verified.remove(&digest);
            }
        }
        let (principal, exp) = self.check_jwt(jwks, token).await?;
        let principal = Arc::new(principal);
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        verified.insert(
            digest,
            Verified {
                principal: principal.clone(),
                exp,
                keys,
            },
        );
        while verified.len() > MAX_VERIFIED {
            verified.pop_front();
        }
        Ok(principal)
    }

    /// A JWT checked in full: its principal and its `exp`.
    async fn check_jwt(&self, jwks: &Jwks, token: &str) -> Result<(Principal, u64), Refusal> {
        let claims: Claims = jwks.validate(token).await.map_err(Refusal::Invalid)?;
        let mut scopes: Vec<String> = claims
            .scope
            .as_deref()
            .unwrap_or_default()
            .split_ascii_whitespace()
            .map(str::to_owned)
            .collect();
        scopes.extend(claims.scp.unwrap_or_default());
        let issuer = jwks.issuer().to_owned();
        let mut other = claims.other;
        let kept = self
            .claims
            .iter()
            .map(|name| {
                let value = other.remove(name).unwrap_or(serde_json::Value::Null);
                (name.clone(), value)
            })
            .collect();
        let principal = Principal {
            id: format!("{issuer}#{}", claims.sub),
            subject: claims.sub,
            issuer: Some(issuer),
            scopes,
            claims: kept,
        };
        Ok((principal, claims.exp))
    }

    /// The resource identifier: `--auth-resource`, else the URL of the MCP endpoint at the
    /// request's `Host`.
    pub fn resource(&self, host: Option<&str>, path: &str) -> String {
        self.resource
            .clone()
            .unwrap_or_else(|| format!("http://{}{path}", host.unwrap_or("127.0.0.1")))
    }

    /// The URL of our Protected Resource Metadata for the resource at `path`.
    pub fn metadata_url(&self, host: Option<&str>, path: &str) -> String {
        let resource = self.resource(host, path);
        let (origin, resource_path) = split_origin(&resource);
        format!("{origin}/.well-known/oauth-protected-resource{resource_path}")
    }

    /// The Protected Resource Metadata document (RFC 9728).
    pub fn metadata(&self, host: Option<&str>, path: &str) -> serde_json::Value {
        let mut document = serde_json::json!({
            "resource": self.resource(host, path),
            "bearer_methods_supported": ["header"],
            "resource_name": "Shadowcat MCP gateway",
        });
        if let Some(issuer) = &self.issuer {
            document["authorization_servers"] = serde_json::json!([issuer]);
        }
        if !self.scopes.is_empty() {
            document["scopes_supported"] = serde_json::json!(self.scopes);
        }
        document
    }

    /// The status and `WWW-Authenticate` value refusing a request for `refusal`.
    pub fn challenge(
        &self,
        refusal: &Refusal,
        host: Option<&str>,
        path: &str,
    ) -> (StatusCode, HeaderValue) {
        let mut parts = vec![format!(
            "Bearer resource_metadata=\"{}\"",
            self.metadata_url(host, path)
        )];
        let status = match refusal {
            Refusal::Missing => StatusCode::UNAUTHORIZED,
            Refusal::Invalid(why) => {
                parts.push("error=\"invalid_token\"".into());
                parts.push(format!("error_description=\"{}\"", quoted(why)));
                StatusCode::UNAUTHORIZED
            }
            Refusal::Scope { missing, wanted } => {
                parts.push("error=\"insufficient_scope\"".into());
                parts.push(format!(
                    "error_description=\"the token lacks the scope {}\"",
                    quoted(missing)
                ));
                let mut scopes: Vec<&str> = self.scopes.iter().map(String::as_str).collect();
                for scope in wanted.split_ascii_whitespace() {
                    if !scopes.contains(&scope) {
                        scopes.push(scope);
                    }
                }
                parts.push(format!("scope=\"{}\"", quoted(&scopes.join(" "))));
                StatusCode::FORBIDDEN
            }
        };
        if !self.scopes.is_empty() && !matches!(refusal, Refusal::Scope { .. }) {
            parts.push(format!("scope=\"{}\"", quoted(&self.scopes.join(" "))));
        }
        let value = parts.join(", ");
        let value =
            HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("Bearer"));
        (status, value)
    }
}

/// The bearer token of `headers`' `Authorization` (case-insensitive scheme, RFC 6750 §2.1).
pub fn bearer(headers: &HeaderMap) -> Result<&str, Refusal> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Err(Refusal::Missing);
    };
    if value.len() > MAX_TOKEN_LEN {
        return Err(Refusal::Invalid(
            "the Authorization header is too long".into(),
        ));
    }
    let value = value
        .to_str()
        .map_err(|_| Refusal::Invalid("the Authorization header is not ASCII".into()))?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Refusal::Missing);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(Refusal::Invalid("an empty bearer token".into()));
    }
    Ok(token)
}

/// Three dot-separated parts, as a JWS in compact form has.
fn looks_like_jwt(token: &str) -> bool {
    token.bytes().filter(|b| *b == b'.').count() == 2
}

/// `text` fit for a quoted-string: no quotes, backslashes or control characters.
fn quoted(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c == '"' || c == '\\' || c.is_control() {
                '\''
            } else {
                c
            }
        })
        .collect()
}

/// `https://host:port` and the path (`/mcp`, or empty) of a URL.
fn split_origin(url: &str) -> (&str, &str) {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => url.split_at(after_scheme + i),
        None => (url, ""),
    }
}

impl JwksSource {
    /// How it is shown in logs.
    pub fn shown(&self) -> String {
        match self {
            Self::Url(url) => url.clone(),
            Self::File(path) => path.display().to_string(),
            Self::Discover => "the issuer's metadata".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(value).unwrap(),
        );
        headers
    }

    #[test]
    fn only_a_bearer_authorization_carries_a_token() {
        assert_eq!(bearer(&HeaderMap::new()), Err(Refusal::Missing));
        assert_eq!(bearer(&headers("Basic abc")), Err(Refusal::Missing));
        assert_eq!(bearer(&headers("bearer  tok ")), Ok("tok"));
        assert!(matches!(
            bearer(&headers("Bearer ")),
            Err(Refusal::Invalid(_))
        ));
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_LEN));
        assert!(matches!(bearer(&headers(&long)), Err(Refusal::Invalid(_))));
    }

    #[test]
    fn the_metadata_url_keeps_the_resource_path() {
        assert_eq!(
            split_origin("https://mcp.example.com/mcp"),
            ("https://mcp.example.com", "/mcp")
        );
        assert_eq!(split_origin("http://h:1"), ("http://h:1", ""));
    }
}
