//! The issuer's signing keys (its JWKS) and the checks of a JWT against them.
//!
//! The keys come from a file or a URL (given, or the `jwks_uri` of the issuer's metadata),
//! and are loaded again every [`REFRESH_EVERY`]. A token naming a key we do not have may mean
//! the issuer rotated its keys: the set is fetched again then, but at most once per
//! [`MIN_ON_DEMAND_REFRESH`], however many such tokens arrive, so that attacker traffic cannot
//! make us hammer the issuer; requests wait for a fetch in progress rather than start their
//! own. The set is bounded ([`MAX_KEYS`], [`MAX_JWKS_BYTES`]); symmetric (`oct`) keys are never
//! loaded, and only asymmetric algorithms are accepted, each only with a key of its kind.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::Uri;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::config::{JwksSource, OAuthConfig};
use crate::transport::http::HttpClient;

/// How often the key set is loaded again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(10 * 60);
/// Least time between two fetches driven by tokens naming an unknown key.
pub const MIN_ON_DEMAND_REFRESH: Duration = Duration::from_secs(30);
/// Most keys kept.
pub const MAX_KEYS: usize = 64;
/// Longest key set (or issuer metadata) read.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Longest a fetch of the key set may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The algorithms a token may be signed with: asymmetric only (no `none`, no HMAC, whose key
/// would have to be a secret we share).
pub const ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// One signing key, and the algorithms it may verify.
struct Key {
    decoding: DecodingKey,
    algorithms: Vec<Algorithm>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// Where the key set is read from, once known.
#[derive(Debug)]
enum Source {
    Url(Uri),
    File(PathBuf),
}

#[derive(Debug)]
struct Inner {
    issuer: String,
    audience: String,
    leeway: Duration,
    source: Source,
    client: HttpClient,
    keys: ArcSwap<HashMap<String, Key>>,
    /// Loads of the key set so far: what a token was verified against.
    version: std::sync::atomic::AtomicU64,
    /// When a token last made us fetch (none yet); held while fetching, so one fetch serves
    /// every request waiting for it.
    on_demand: tokio::sync::Mutex<Option<Instant>>,
}

/// The issuer's keys and the checks of its tokens.
#[derive(Debug)]
pub struct Jwks {
    inner: Arc<Inner>,
    refresher: tokio::task::JoinHandle<()>,
}

impl Drop for Jwks {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

impl Jwks {
    /// The keys of `config`'s issuer, loaded now (a file that cannot be read is an error; a
    /// URL that does not answer is retried on schedule and on demand), refreshed every
    /// [`REFRESH_EVERY`].
    pub async fn start(config: &OAuthConfig) -> Result<Self, String> {
        let client = HttpClient::new(
            Uri::from_static("http://127.0.0.1/"),
            http::HeaderMap::new(),
            FETCH_TIMEOUT,
            crate::transport::http::tls_config(&[]),
        );
        let source = match &config.jwks {
            JwksSource::File(path) => Source::File(path.clone()),
            JwksSource::Url(url) => Source::Url(parse_uri(url)?),
            JwksSource::Discover => Source::Url(discover(&client, &config.issuer).await?),
        };
        let inner = Arc::new(Inner {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway,
            source,
            client,
            keys: ArcSwap::from_pointee(HashMap::new()),
            version: std::sync::atomic::AtomicU64::new(0),
            on_demand: tokio::sync::Mutex::new(None),
        });
        match inner.load().await {
            Ok(n) => {
                tracing::info!(keys = n, from = %config.jwks.shown(), "loaded the issuer's signing keys");
            }
            Err(e) => {
                if matches!(inner.source, Source::File(_)) {
                    return Err(e);
                }
                tracing::error!(%e, "cannot load the issuer's signing keys yet; tokens are refused until they load");
            }
        }
        let refresher = tokio::spawn(refresh(Arc::downgrade(&inner)));
        Ok(Self { inner, refresher })
    }

    /// The issuer tokens must name.
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// Which load of the key set is current (one more each time it is loaded): a token
    /// verified against an earlier one is verified again.
    pub fn version(&self) -> u64 {
        self.inner
            .version
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The clock skew allowed, in seconds.
    pub fn leeway_secs(&self) -> u64 {
        self.inner.leeway.as_secs()
    }

    /// `token`'s claims, if it is a JWT of the issuer for our audience, signed with one of its
    /// keys with an accepted algorithm, within its `nbf`..`exp` (with the leeway); else why not.
    pub async fn validate<T: DeserializeOwned>(&self, token: &str) -> Result<T, String> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| format!("the token's header cannot be read ({e})"))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(format!(
                "tokens signed with {:?} are not accepted",
                header.alg
            ));
        }
        let kid = header
            .kid
            .ok_or_else(|| "the token names no signing key (kid)".to_owned())?;
        let keys = self.inner.keys_with(&kid).await;
        let Some(key) = keys.get(&kid) else {
            return Err(format!(
                "the token's signing key {kid:?} is not one of the issuer's"
            ));
        };
        if !key.algorithms.contains(&header.alg) {
            return Err(format!(
                "the token's algorithm {:?} does not fit its key {kid:?}",
                header.alg
            ));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.inner.issuer]);
        validation.set_audience(&[&self.inner.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = self.inner.leeway.as_secs();
        validation.validate_nbf = true;
        jsonwebtoken::decode::<T>(token, &key.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| describe(&e))
    }
}

/// What is wrong with a token, for the client and the log.
fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => "the token has expired".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        ErrorKind::InvalidAudience => "the token is not for this resource (aud)".into(),
        ErrorKind::InvalidIssuer => "the token is from another issuer (iss)".into(),
        ErrorKind::InvalidSignature => "the token's signature does not verify".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the token has no {claim} claim"),
        _ => format!("the token is not valid ({e})"),
    }
}

fn parse_uri(url: &str) -> Result<Uri, String> {
    url.parse::<Uri>().map_err(|e| format!("{url:?}: {e}"))
}

/// The `jwks_uri` of `issuer`'s metadata: RFC 8414's document, else OpenID Connect's.
async fn discover(client: &HttpClient, issuer: &str) -> Result<Uri, String> {
    #[derive(serde::Deserialize)]
    struct Metadata {
        jwks_uri: String,
    }
    let trimmed = issuer.trim_end_matches('/');
    let after_scheme = trimmed.find("://").map_or(0, |i| i + 3);
    let (origin, path) = match trimmed[after_scheme..].find('/') {
        Some(i) => trimmed.split_at(after_scheme + i),
        None => (trimmed, ""),
    };
    let candidates = [
        format!("{origin}/.well-known/oauth-authorization-server{path}"),
        format!("{trimmed}/.well-known/openid-configuration"),
    ];
    let mut why = Vec::new();
    for candidate in candidates {
        let uri = parse_uri(&candidate)?;
        match client.fetch(&uri, MAX_JWKS_BYTES, FETCH_TIMEOUT).await {
            Ok(body) => match serde_json::from_slice::<Metadata>(&body) {
                Ok(metadata) => return parse_uri(&metadata.jwks_uri),
                Err(e) => why.push(format!("{candidate}: no jwks_uri ({e})")),
            },
            Err(e) => why.push(e),
        }
    }
    Err(format!(
        "cannot find the issuer's signing keys (give --auth-jwks-url or --auth-jwks-file): {}",
        why.join("; ")
    ))
}

impl Inner {
    /// The key set after fetching it again if it lacks `kid` and no token made us fetch within
    /// [`MIN_ON_DEMAND_REFRESH`].
    async fn keys_with(&self, kid: &str) -> Arc<HashMap<String, Key>> {
        let keys = self.keys.load_full();
        if keys.contains_key(kid) {
            return keys;
        }
        let mut last = self.on_demand.lock().await;
        // Someone else's fetch may have brought it while we waited.
        let keys = self.keys.load_full();
        if keys.contains_key(kid) || last.is_some_and(|at| at.elapsed() < MIN_ON_DEMAND_REFRESH) {
            return keys;
        }
        *last = Some(Instant::now());
        tracing::info!(
            kid,
            "a token names a signing key we do not have; fetching the issuer's keys again"
        );
        if let Err(e) = self.load().await {
            tracing::warn!(%e, "could not fetch the issuer's signing keys");
        }
        self.keys.load_full()
    }

    /// Reads the key set and makes it current; how many keys it has.
    async fn load(&self) -> Result<usize, String> {
        let bytes = match &self.source {
            Source::Url(uri) => {
                self.client
                    .fetch(uri, MAX_JWKS_BYTES, FETCH_TIMEOUT)
                    .await?
            }
            Source::File(path) => {
                let bytes = tokio::fs::read(path)
                    .await
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                if bytes.len() > MAX_JWKS_BYTES {
                    return Err(format!(
                        "{}: longer than {MAX_JWKS_BYTES} bytes",
                        path.display()
                    ));
                }
                bytes.into()
            }
        };
        let set: JwkSet =
            serde_json::from_slice(&bytes).map_err(|e| format!("not a JWK set: {e}"))?;
        let keys = keys_of(&set.keys);
        if keys.is_empty() {
            return Err("the JWK set has no usable signing key".into());
        }
        let n = keys.len();
        self.keys.store(Arc::new(keys));
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(n)
    }
}

/// The usable keys of a set: those with a `kid`, not symmetric, not marked for encryption;
/// at most [`MAX_KEYS`].
fn keys_of(jwks: &[Jwk]) -> HashMap<String, Key> {
    let mut keys = HashMap::new();
    for jwk in jwks {
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        if matches!(
            jwk.common.public_key_use,
            Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
        ) {
            continue;
        }
        let algorithms: Vec<Algorithm> = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => ALGORITHMS[..6].to_vec(),
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => vec![Algorithm::ES256],
                EllipticCurve::P384 => vec![Algorithm::ES384],
                _ => continue,
            },
            AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
            // A symmetric key is a shared secret: never a key of someone else's.
            _ => continue,
        };
        // A key that names its algorithm verifies only that one.
        let algorithms = match jwk
            .common
            .key_algorithm
            .and_then(|a| Algorithm::try_from(a).ok())
        {
            Some(alg) if algorithms.contains(&alg) => vec![alg],
            Some(_) => continue,
            None => algorithms,
        };
        let Ok(decoding) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        keys.insert(
            kid,
            Key {
                decoding,
                algorithms,
            },
        );
        if keys.len() >= MAX_KEYS {
            tracing::warn!(MAX_KEYS, "the issuer's key set has more keys than are kept");
            break;
        }
    }
    keys
}

/// Loads the key set again every [`REFRESH_EVERY`] while the keys are in use.
async fn refresh(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(REFRESH_EVERY).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if let Err(e) = inner.load().await {
            tracing::warn!(%e, "could not refresh the issuer's signing keys; keeping the ones we have");
        }
    }
}
