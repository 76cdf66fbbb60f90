//! Session ids.

use std::fmt;
use std::sync::Arc;

/// Longest session id accepted from outside (a client's `Mcp-Session-Id`, an upstream's): room
/// for a sealed id ([`super::seal`]) and for upstreams whose ids carry state of their own.
pub const MAX_SESSION_ID_LEN: usize = 1024;

/// A session id: 128 bits from the OS's CSPRNG, written as 32 lowercase hex digits, so it is
/// visible ASCII and fit to be an `Mcp-Session-Id`. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(Arc<str>);

/// A string that is not a valid session id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid session id: {0}")]
pub struct InvalidSessionId(&'static str);

impl SessionId {
    /// A fresh random id.
    ///
    /// # Panics
    /// If the operating system cannot provide random bytes: nothing secure can be done then.
    #[allow(clippy::expect_used)]
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).expect("the OS random number generator failed");
        let mut text = String::with_capacity(32);
        for b in bytes {
            use std::fmt::Write;
            // Writing to a String cannot fail.
            let _ = write!(text, "{b:02x}");
        }
        Self(text.into())
    }

    /// Accepts an id from outside: 1 to 1024 visible ASCII characters (0x21..=0x7E).
    pub fn parse(text: &str) -> Result<Self, InvalidSessionId> {
        if text.is_empty() {
            return Err(InvalidSessionId("empty"));
        }
        if text.len() > MAX_SESSION_ID_LEN {
            return Err(InvalidSessionId("longer than 1024 characters"));
        }
        if !text.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(InvalidSessionId(
                "only visible ASCII characters are allowed",
            ));
        }
        Ok(Self(text.into()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What logs and file names show for this session: a digest of the id (which is the one
    /// credential the gateway checks, so it is never written where others may read it).
    /// `session show` prints it too, to find a session's log lines.
    pub fn digest(&self) -> Digest {
        use std::hash::{Hash as _, Hasher as _};
        let mut hasher = std::hash::DefaultHasher::new();
        self.0.hash(&mut hasher);
        Digest(hasher.finish() >> 16)
    }
}

/// A session id's digest ([`SessionId::digest`]): `s-` and 12 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(u64);

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s-{:012x}", self.0)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_are_32_hex_digits_and_distinct() {
        let a = SessionId::random();
        let b = SessionId::random();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(SessionId::parse(a.as_str()), Ok(a));
    }

    #[test]
    fn parse_refuses_what_cannot_be_a_header_value() {
        assert!(SessionId::parse("").is_err());
        assert!(SessionId::parse("has space").is_err());
        assert!(SessionId::parse("tab\t").is_err());
        assert!(SessionId::parse("é").is_err());
        assert!(SessionId::parse(&"x".repeat(1025)).is_err());
        assert!(SessionId::parse(&"x".repeat(1024)).is_ok());
        assert!(SessionId::parse("~!abc").is_ok());
    }
}
