//! RFC 8693 token exchange: each caller's token traded at the authorization server for one for
//! the upstream, remembered while it is good; refusals remembered a while, and the trades in
//! flight bounded, so that callers cannot make the gateway hammer the server.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;

use super::{Failure, Grant, token_client, token_request};
use crate::transport::http::HttpClient;

/// How long a refused exchange is remembered (and refused again without asking).
const REFUSAL_MEMORY: Duration = Duration::from_secs(30);
/// Token requests of exchanges in flight at once, whatever the callers do.
const MAX_EXCHANGES_IN_FLIGHT: usize = 8;
/// Most exchanged tokens remembered (the least recently used forgotten past it).
pub const MAX_EXCHANGED: usize = 10_000;
/// An exchanged token is used until this long before it expires, then exchanged anew.
const EXCHANGE_MARGIN: Duration = Duration::from_secs(30);
/// How long an exchanged token without `expires_in` is used.
const EXCHANGE_DEFAULT_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// RFC 8693 token exchange: each caller's token traded at the authorization server for one for
/// the upstream (the caller's identity kept, the gateway named as the actor), remembered by the
/// caller token's SHA-256 until shortly before it expires.
#[derive(Debug)]
pub struct Exchanger {
    grant: Grant,
    client: HttpClient,
    exchanged: std::sync::Mutex<linked_hash_map::LinkedHashMap<[u8; 32], (HeaderValue, Instant)>>,
    /// Tokens the server would not exchange, and why, for a while ([`REFUSAL_MEMORY`]): a
    /// caller repeating one costs the server nothing more.
    refused: std::sync::Mutex<linked_hash_map::LinkedHashMap<[u8; 32], (String, Instant)>>,
    /// Bounds the token requests in flight ([`MAX_EXCHANGES_IN_FLIGHT`]).
    in_flight: tokio::sync::Semaphore,
}

impl Exchanger {
    /// Exchanges at `grant`'s token endpoint, as its client, for its resource and scopes.
    pub fn new(grant: Grant, tls: rustls::ClientConfig, connect_timeout: Duration) -> Arc<Self> {
        let client = token_client(&grant, tls, connect_timeout);
        Arc::new(Self {
            grant,
            client,
            exchanged: std::sync::Mutex::new(linked_hash_map::LinkedHashMap::new()),
            refused: std::sync::Mutex::new(linked_hash_map::LinkedHashMap::new()),
            in_flight: tokio::sync::Semaphore::new(MAX_EXCHANGES_IN_FLIGHT),
        })
    }

    /// The `Authorization` for the upstream on behalf of the caller who presented
    /// `subject_token`.
    pub async fn exchange(&self, subject_token: &str) -> Result<HeaderValue, Failure> {
        use sha2::Digest as _;
        let digest: [u8; 32] = sha2::Sha256::digest(subject_token.as_bytes()).into();
        let now = Instant::now();
        {
            let mut exchanged = self.exchanged();
            if let Some((value, until)) = exchanged.get_refresh(&digest) {
                if now < *until {
                    return Ok(value.clone());
                }
            }
        }
        {
            let mut refused = self.refused();
            if let Some((why, until)) = refused.get_refresh(&digest) {
                if now < *until {
                    return Err(Failure::Refused(why.clone()));
                }
                refused.remove(&digest);
            }
        }
        let form = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair(
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            );
            form.append_pair("subject_token", subject_token);
            form.append_pair(
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            );
            form.append_pair(
                "requested_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            );
            form.append_pair("resource", &self.grant.resource);
            if !self.grant.scopes.is_empty() {
                form.append_pair("scope", &self.grant.scopes.join(" "));
            }
            form.finish()
        };
        let answer = {
            let _slot = self.in_flight.acquire().await;
            token_request(&self.client, form, true).await
        };
        let (value, lifetime) = match answer {
            Ok(fetched) => fetched,
            Err(failure) => {
                if let Failure::Refused(why) = &failure {
                    let mut refused = self.refused();
                    refused.insert(digest, (why.clone(), Instant::now() + REFUSAL_MEMORY));
                    while refused.len() > MAX_EXCHANGED {
                        refused.pop_front();
                    }
                }
                return Err(failure);
            }
        };
        let lifetime = lifetime.unwrap_or(EXCHANGE_DEFAULT_LIFETIME);
        let until = now + lifetime.saturating_sub(EXCHANGE_MARGIN.min(lifetime / 2));
        let mut exchanged = self.exchanged();
        exchanged.insert(digest, (value.clone(), until));
        while exchanged.len() > MAX_EXCHANGED {
            exchanged.pop_front();
        }
        Ok(value)
    }

    fn refused(
        &self,
    ) -> std::sync::MutexGuard<'_, linked_hash_map::LinkedHashMap<[u8; 32], (String, Instant)>>
    {
        self.refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn exchanged(
        &self,
    ) -> std::sync::MutexGuard<'_, linked_hash_map::LinkedHashMap<[u8; 32], (HeaderValue, Instant)>>
    {
        self.exchanged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
