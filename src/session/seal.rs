//! Sealed session ids: the `Mcp-Session-Id` a gateway in a cluster hands out carries, encrypted
//! and authenticated, what any instance sharing the cluster key needs to serve the session
//! (`--cluster-key-file`): the session's own id, the upstream's session id, the protocol
//! version, a digest of the principal it is bound to, and the instance that owns it.
//!
//! The seal is XChaCha20-Poly1305 (a random 192-bit nonce per id, so ids never repeat a nonce)
//! under a key derived from the operator's secret; the token is
//! `base64url(key id ‖ nonce ‖ ciphertext ‖ tag)`. Keys rotate: the first is the one that
//! seals, every one listed opens, each found by its 4-byte id without trial decryption. A
//! token that was altered, sealed under a key not listed, or is not a token at all, opens to
//! nothing ([`Unsealed`] is never built from unauthenticated bytes).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest as _, Sha256};

use super::SessionId;

/// Shortest secret accepted as a cluster key (characters of the line that holds it).
pub const MIN_KEY_LEN: usize = 32;

/// Longest field (upstream session id, owner) that fits a seal: a session with a longer one
/// stays on the instance that opened it.
pub const MAX_SEALED_FIELD: usize = 255;

/// The plaintext layout's version (its first byte).
const FORMAT: u8 = 1;
const KEY_ID_LEN: usize = 4;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Bound to every seal, so a token cannot be taken for another use of the same key.
const PURPOSE: &[u8] = b"shadowcat session id v1";

/// What a sealed id carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsealed {
    /// The session's own id (the same on every instance, in logs and the history).
    pub id: SessionId,
    /// The upstream's `Mcp-Session-Id`, if it gave one.
    pub upstream: Option<String>,
    /// The protocol version the session negotiated.
    pub protocol_version: Option<String>,
    /// A digest of the principal the session is bound to ([`principal_digest`]).
    pub principal: Option<[u8; 16]>,
    /// The instance that owns the session (where its process runs), if one does.
    pub owner: Option<String>,
}

/// Why a session cannot be sealed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the session cannot be sealed: its {0} is too long")]
pub struct TooLong(&'static str);

/// One key: its id (in the clear, to pick it) and the cipher.
struct Key {
    id: [u8; KEY_ID_LEN],
    cipher: XChaCha20Poly1305,
}

/// The cluster's keys: the first seals, all open.
pub struct Sealer {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// The digest of a principal's id a seal carries (not the id: it is not the client's to read).
pub fn principal_digest(principal: &str) -> [u8; 16] {
    let digest = Sha256::new()
        .chain_update(b"shadowcat principal\0")
        .chain_update(principal.as_bytes())
        .finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

impl Sealer {
    /// The keys derived from `secrets`, newest first. `None` if there are none, or one is
    /// shorter than [`MIN_KEY_LEN`] (the caller names the source).
    pub fn new<S: AsRef<str>>(secrets: &[S]) -> Option<Self> {
        if secrets.is_empty() || secrets.iter().any(|s| s.as_ref().len() < MIN_KEY_LEN) {
            return None;
        }
        let keys = secrets
            .iter()
            .map(|secret| {
                let key: [u8; 32] = Sha256::new()
                    .chain_update(b"shadowcat cluster key\0")
                    .chain_update(secret.as_ref().as_bytes())
                    .finalize()
                    .into();
                let digest = Sha256::new()
                    .chain_update(b"shadowcat key id\0")
                    .chain_update(key)
                    .finalize();
                let mut id = [0u8; KEY_ID_LEN];
                id.copy_from_slice(&digest[..KEY_ID_LEN]);
                Key {
                    id,
                    cipher: XChaCha20Poly1305::new(&key.into()),
                }
            })
            .collect();
        Some(Self { keys })
    }

    /// How many keys open ids (the first also seals).
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// `session` sealed under the newest key, as a token fit for `Mcp-Session-Id`.
    ///
    /// # Panics
    /// If the operating system cannot provide random bytes: nothing secure can be done then.
    #[allow(clippy::expect_used)]
    pub fn seal(&self, session: &Unsealed) -> Result<String, TooLong> {
        let mut plain = Vec::with_capacity(96);
        plain.push(FORMAT);
        put(&mut plain, session.id.as_str().as_bytes(), "session id")?;
        put(
            &mut plain,
            session.upstream.as_deref().unwrap_or("").as_bytes(),
            "upstream session id",
        )?;
        put(
            &mut plain,
            session.protocol_version.as_deref().unwrap_or("").as_bytes(),
            "protocol version",
        )?;
        put(
            &mut plain,
            session.principal.as_ref().map_or(&[][..], |p| &p[..]),
            "principal",
        )?;
        put(
            &mut plain,
            session.owner.as_deref().unwrap_or("").as_bytes(),
            "owner",
        )?;
        // `new` refuses an empty list.
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the OS random number generator failed");
        let aad = aad(key.id);
        let sealed = key
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            // Encryption fails only for inputs beyond 256 GiB.
            .expect("sealing a short plaintext cannot fail");
        let mut token = Vec::with_capacity(KEY_ID_LEN + NONCE_LEN + sealed.len());
        token.extend_from_slice(&key.id);
        token.extend_from_slice(&nonce);
        token.extend_from_slice(&sealed);
        let token = URL_SAFE_NO_PAD.encode(token);
        if token.len() > super::id::MAX_SESSION_ID_LEN {
            return Err(TooLong("sealed id"));
        }
        Ok(token)
    }

    /// What `token` carries, if one of our keys sealed it and nothing changed it since.
    pub fn unseal(&self, token: &str) -> Option<Unsealed> {
        let shortest = KEY_ID_LEN + NONCE_LEN + TAG_LEN + 1;
        if token.len() > super::id::MAX_SESSION_ID_LEN || token.len() < shortest * 4 / 3 {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
        if bytes.len() < shortest {
            return None;
        }
        let (id, rest) = bytes.split_at(KEY_ID_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let key = self.keys.iter().find(|k| k.id[..] == *id)?;
        let plain = key
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad(key.id),
                },
            )
            .ok()?;
        let (&format, mut rest) = plain.split_first()?;
        if format != FORMAT {
            return None;
        }
        let mut field = || take(&mut rest);
        let id = SessionId::parse(std::str::from_utf8(field()?).ok()?).ok()?;
        let upstream = text(field()?).ok()?;
        let protocol_version = text(field()?).ok()?;
        let principal = match field()? {
            [] => None,
            p => Some(<[u8; 16]>::try_from(p).ok()?),
        };
        let owner = text(field()?).ok()?;
        if !rest.is_empty() {
            return None;
        }
        Some(Unsealed {
            id,
            upstream,
            protocol_version,
            principal,
            owner,
        })
    }
}

/// The associated data of a seal under key `id`.
fn aad(id: [u8; KEY_ID_LEN]) -> [u8; PURPOSE.len() + KEY_ID_LEN] {
    let mut aad = [0u8; PURPOSE.len() + KEY_ID_LEN];
    aad[..PURPOSE.len()].copy_from_slice(PURPOSE);
    aad[PURPOSE.len()..].copy_from_slice(&id);
    aad
}

/// An optional text field: empty is none; an error if it is not UTF-8.
fn text(bytes: &[u8]) -> Result<Option<String>, std::str::Utf8Error> {
    if bytes.is_empty() {
        return Ok(None);
    }
    std::str::from_utf8(bytes).map(|s| Some(s.to_owned()))
}

/// Appends a field: its length (one byte: at most [`MAX_SEALED_FIELD`]) and its bytes.
fn put(out: &mut Vec<u8>, field: &[u8], name: &'static str) -> Result<(), TooLong> {
    let len = u8::try_from(field.len()).map_err(|_| TooLong(name))?;
    out.push(len);
    out.extend_from_slice(field);
    Ok(())
}

/// Takes a field written by [`put`].
fn take<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (&len, tail) = rest.split_first()?;
    let len = usize::from(len);
    if tail.len() < len {
        return None;
    }
    let (field, tail) = tail.split_at(len);
    *rest = tail;
    Some(field)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "an old secret of at least thirty-two characters";
    const NEW: &str = "a new secret, also at least thirty-two characters";

    fn session() -> Unsealed {
        Unsealed {
            id: SessionId::random(),
            upstream: Some("6f1c2a0e-9b7d-4c1e-8a3f-2d5e6b7c8d9e".into()),
            protocol_version: Some("2025-06-18".into()),
            principal: Some(principal_digest("https://issuer.example|alice")),
            owner: None,
        }
    }

    #[test]
    fn a_sealed_id_opens_to_what_was_sealed_and_is_a_valid_header_value() {
        let sealer = Sealer::new(&[NEW]).unwrap();
        let s = session();
        let token = sealer.seal(&s).unwrap();
        assert!(SessionId::parse(&token).is_ok(), "{token}");
        assert!(http::HeaderValue::from_str(&token).is_ok());
        assert_eq!(sealer.unseal(&token), Some(s.clone()));
        // A fresh nonce each time: the same session never gives the same token twice.
        assert_ne!(sealer.seal(&s).unwrap(), token);
        let bare = Unsealed {
            upstream: None,
            protocol_version: None,
            principal: None,
            owner: Some("http://10.0.0.7:8080".into()),
            ..s
        };
        assert_eq!(sealer.unseal(&sealer.seal(&bare).unwrap()), Some(bare));
    }

    #[test]
    fn any_change_to_a_token_opens_to_nothing() {
        let sealer = Sealer::new(&[NEW]).unwrap();
        let token = sealer.seal(&session()).unwrap();
        let bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        for i in 0..bytes.len() {
            let mut changed = bytes.clone();
            changed[i] ^= 0x01;
            assert_eq!(
                sealer.unseal(&URL_SAFE_NO_PAD.encode(&changed)),
                None,
                "byte {i}"
            );
        }
        assert_eq!(sealer.unseal(&token[..token.len() - 1]), None);
        assert_eq!(sealer.unseal(&format!("{token}A")), None);
        for junk in [
            "",
            "x",
            "not base64 !!",
            &"A".repeat(120),
            &SessionId::random().to_string(),
        ] {
            assert_eq!(sealer.unseal(junk), None, "{junk}");
        }
    }

    #[test]
    fn keys_rotate_newest_first_and_a_foreign_key_opens_nothing() {
        let old = Sealer::new(&[OLD]).unwrap();
        let rotated = Sealer::new(&[NEW, OLD]).unwrap();
        let s = session();
        let by_old = old.seal(&s).unwrap();
        assert_eq!(
            rotated.unseal(&by_old),
            Some(s.clone()),
            "the old key still opens"
        );
        let by_new = rotated.seal(&s).unwrap();
        assert_eq!(old.unseal(&by_new), None, "the new key seals");
        let foreign = Sealer::new(&["someone else's secret, thirty-two chars or more"]).unwrap();
        assert_eq!(foreign.unseal(&by_old), None);
        assert_eq!(foreign.unseal(&by_new), None);
    }

    #[test]
    fn short_secrets_and_long_fields_are_refused() {
        assert!(Sealer::new::<&str>(&[]).is_none());
        assert!(Sealer::new(&["short"]).is_none());
        assert!(Sealer::new(&[NEW, "short"]).is_none());
        let sealer = Sealer::new(&[NEW]).unwrap();
        let long = Unsealed {
            upstream: Some("u".repeat(256)),
            ..session()
        };
        assert_eq!(sealer.seal(&long), Err(TooLong("upstream session id")));
    }
}
