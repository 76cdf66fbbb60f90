//! Limits shared by the instances of a cluster (`--redis-url`): each bucket's state lives in
//! Redis, so a limit holds however a client's requests are spread over the instances.
//!
//! The same GCRA as governor's, one key per bucket holding its theoretical arrival time (µs on
//! Redis's clock, so the instances' clocks do not matter), checked by one Lua script in one
//! round trip for every limit a message falls under: if all admit it, each counts it; if one
//! refuses, none does (the local check counts it in the narrower limits it passed). Keys
//! expire when their bucket is full again. A key is a digest of the limit's name, its kind and
//! what it is keyed by (a principal or an address is never written to Redis as it is).

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::stage::Client;
use crate::transport::redis::{Redis, Use};

use super::Key;

/// Prefix of every rate-limit key.
const KEY_PREFIX: &str = "shadowcat:rl:";

/// Checks every limit given (`KEYS[i]`, with `ARGV[2i-1]` its emission interval in µs and
/// `ARGV[2i]` its burst): `{0, 0}` if all admit the message (and each counted it), else the
/// 1-based position of the first that refuses and the µs until it would admit it.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local after = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local next_tat = tat + interval
  local allow_at = next_tat - burst * interval
  if allow_at > now then return {i, allow_at - now} end
  after[i] = next_tat
end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, string.format('%.0f', after[i]), 'PX', string.format('%.0f', math.ceil((after[i] - now) / 1000) + 1))
end
return {0, 0}
";

/// The Redis the limits are kept in.
#[derive(Debug)]
pub struct Shared {
    redis: Arc<Redis>,
    script: redis::Script,
}

/// One limit's part in a shared check: its key and rate.
#[derive(Debug)]
pub(super) struct Part {
    /// The limit's place in the list.
    pub index: usize,
    pub key: String,
    /// Emission interval, µs (at least 1).
    pub interval_us: u64,
    pub burst: u32,
}

impl Shared {
    /// Limits kept in `redis`.
    pub fn new(redis: Arc<Redis>) -> Self {
        Self {
            redis,
            script: redis::Script::new(GCRA),
        }
    }

    /// The first of `parts` to refuse, and how long until it would admit; `Some(None)` if all
    /// admit (and counted). `None` if Redis did not answer: the caller decides locally.
    pub(super) async fn check(&self, parts: &[Part]) -> Option<Option<(usize, Duration)>> {
        if parts.is_empty() {
            return Some(None);
        }
        let mut invocation = self.script.prepare_invoke();
        for part in parts {
            invocation
                .key(&part.key)
                .arg(part.interval_us)
                .arg(part.burst);
        }
        let answer: Vec<i64> = self.redis.script(Use::RateLimit, &invocation).await?;
        match answer[..] {
            [0, _] => Some(None),
            [position, wait_us] => {
                let part = usize::try_from(position - 1)
                    .ok()
                    .and_then(|i| parts.get(i))?;
                let wait = Duration::from_micros(u64::try_from(wait_us).unwrap_or(0));
                Some(Some((part.index, wait)))
            }
            _ => None,
        }
    }
}

/// The Redis key of a limit's bucket for `key`.
pub(super) fn bucket_key(limit: &str, per: &str, key: &Key<'_>) -> String {
    let mut digest = Sha256::new()
        .chain_update(limit.as_bytes())
        .chain_update([0])
        .chain_update(per.as_bytes())
        .chain_update([0]);
    match key {
        Key::Global => {}
        Key::Session(id) => digest.update(id.as_bytes()),
        Key::Client(Client::Local) => digest.update(b"local"),
        Key::Client(Client::Address(ip)) => {
            digest.update(b"ip\0");
            digest.update(ip.to_string().as_bytes());
        }
        Key::Client(Client::Subject(principal)) => {
            digest.update(b"subject\0");
            digest.update(principal.id.as_bytes());
        }
        Key::Method(name) | Key::Tool(name) => digest.update(name.as_bytes()),
    }
    let digest = digest.finalize();
    let mut text = String::with_capacity(KEY_PREFIX.len() + 32);
    text.push_str(KEY_PREFIX);
    for byte in &digest[..16] {
        text.push(char::from(HEX[usize::from(byte >> 4)]));
        text.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    text
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::Rate;

    #[test]
    fn bucket_keys_are_digests_apart_for_every_limit_and_key() {
        let alice = crate::session::Principal {
            id: "key:alice".into(),
            subject: "alice".into(),
            issuer: None,
            scopes: vec![],
            claims: std::collections::BTreeMap::new(),
        };
        let ip = "10.0.0.7".parse().unwrap();
        let keys = [
            bucket_key("client", "client", &Key::Client(Client::Subject(&alice))),
            bucket_key("client", "client", &Key::Client(Client::Address(ip))),
            bucket_key("client", "client", &Key::Client(Client::Local)),
            bucket_key("other", "client", &Key::Client(Client::Local)),
            bucket_key("s", "session", &Key::Session("abc")),
            bucket_key("s", "session", &Key::Session("abd")),
            bucket_key("m", "method", &Key::Method("tools/call")),
            bucket_key("m", "tool", &Key::Tool("tools/call")),
            bucket_key("g", "global", &Key::Global),
        ];
        for (i, key) in keys.iter().enumerate() {
            assert!(key.starts_with(KEY_PREFIX), "{key}");
            assert_eq!(key.len(), KEY_PREFIX.len() + 32, "{key}");
            assert!(!key.contains("alice") && !key.contains("10.0.0.7"), "{key}");
            assert!(keys[..i].iter().all(|k| k != key), "{key} twice");
        }
        // The same limit and key: the same bucket (on every instance).
        assert_eq!(
            keys[0],
            bucket_key("client", "client", &Key::Client(Client::Subject(&alice)))
        );
    }

    #[test]
    fn a_rates_interval_is_whole_microseconds_and_never_zero() {
        assert_eq!(Rate::parse("10/s").unwrap().interval_us(), 100_000);
        assert_eq!(Rate::parse("3/s").unwrap().interval_us(), 333_334);
        assert_eq!(Rate::parse("100/min").unwrap().interval_us(), 600_000);
        assert_eq!(Rate::parse("4000000/s").unwrap().interval_us(), 1);
    }
}
