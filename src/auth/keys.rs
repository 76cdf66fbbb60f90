//! Static API keys for machine clients (`--api-key-file`). The file holds each key's SHA-256,
//! never the key: `<name> sha256:<64 hex digits>` per line, `#` comments. A presented key is
//! hashed and compared with every entry in constant time, so neither a key nor how much of
//! one matched can be learnt from timing.

use std::fmt::Write as _;
use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Principal;

/// Most keys in a file.
pub const MAX_KEYS: usize = 10_000;
/// Longest key file.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// The accepted keys, by their hashes.
#[derive(Debug)]
pub struct ApiKeys {
    entries: Vec<(String, [u8; 32])>,
}

impl ApiKeys {
    /// Reads `path`; an error names the file and line.
    pub fn read(path: &Path) -> Result<Self, String> {
        let shown = path.display();
        let size = std::fs::metadata(path)
            .map_err(|e| format!("--api-key-file {shown}: {e}"))?
            .len();
        if size > MAX_FILE_BYTES {
            return Err(format!(
                "--api-key-file {shown}: longer than {MAX_FILE_BYTES} bytes"
            ));
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("--api-key-file {shown}: {e}"))?;
        Self::parse(&text).map_err(|e| format!("--api-key-file {shown}:{e}"))
    }

    /// The keys of a file's text; an error starts with the line number.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = n + 1;
            let mut parts = line.split_ascii_whitespace();
            let (Some(name), Some(hash), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(format!("{at}: expected `<name> sha256:<hex>`"));
            };
            let Some(hex) = hash.strip_prefix("sha256:") else {
                return Err(format!(
                    "{at}: the key must be given as its SHA-256 (`sha256:<hex>`), never itself"
                ));
            };
            let digest = decode_hex(hex)
                .ok_or_else(|| format!("{at}: `sha256:` must be followed by 64 hex digits"))?;
            if entries.iter().any(|(other, _)| other == name) {
                return Err(format!("{at}: the name {name:?} is given twice"));
            }
            entries.push((name.to_owned(), digest));
            if entries.len() > MAX_KEYS {
                return Err(format!("{at}: more than {MAX_KEYS} keys"));
            }
        }
        if entries.is_empty() {
            return Err(" no keys".into());
        }
        Ok(Self { entries })
    }

    /// The principal of `key`, if it is one of ours.
    pub fn check(&self, key: &str) -> Option<Principal> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        // Every entry is compared, whichever matches.
        let mut found = None;
        for (name, expected) in &self.entries {
            if bool::from(expected.ct_eq(&digest)) {
                found = Some(name);
            }
        }
        found.map(|name| Principal {
            id: format!("key:{name}"),
            subject: name.clone(),
            issuer: None,
            scopes: Vec::new(),
            claims: std::collections::BTreeMap::new(),
        })
    }
}

/// The SHA-256 of `key` as a key file line's hash: `sha256:<hex>`.
pub fn hash_line(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let hex = digest.iter().fold(String::new(), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    });
    format!("sha256:{hex}")
}

fn decode_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_found_by_its_hash_and_nothing_else_is() {
        let file = format!(
            "# machines\nci {}\n\nbackup {}\n",
            hash_line("k-ci"),
            hash_line("k-b")
        );
        let keys = ApiKeys::parse(&file).unwrap();
        assert_eq!(keys.check("k-ci").unwrap().id, "key:ci");
        assert_eq!(keys.check("k-b").unwrap().subject, "backup");
        assert!(keys.check("k-c").is_none());
        assert!(
            keys.check(&hash_line("k-ci")).is_none(),
            "the hash is not the key"
        );
    }

    #[test]
    fn a_bad_file_is_refused_naming_the_line() {
        for (text, says) in [
            ("ci plain-key\n", "1: the key must be given as its SHA-256"),
            ("ci sha256:abc\n", "1: `sha256:` must be followed"),
            ("# only comments\n", "no keys"),
            ("a sha256:00\nb\n", "1: `sha256:`"),
        ] {
            let e = ApiKeys::parse(text).unwrap_err();
            assert!(e.contains(says), "{text:?}: {e}");
        }
        let twice = format!("a {}\na {}\n", hash_line("x"), hash_line("y"));
        assert!(ApiKeys::parse(&twice).unwrap_err().contains("2: the name"));
    }
}
