//! Reading one string member of `params` (a tool's `name`, a resource's `uri`) without building
//! a tree of the message: the rules' name conditions and per-tool rate limits need only that.
//!
//! Three readers, cheapest first, each declining where it cannot be sure:
//! 1. [`scan`]: one pass over the bytes at the object's top level; declines on any escape in a
//!    member name or in the value (where spelling could differ from what a reader sees).
//! 2. [`first_member_str`] (params of 2 KiB or more): serde, stopped at the member.
//! 3. serde over the whole of `params`.
//!
//! A member given twice is `Err(())` from all of them: JSON readers settle it differently, so
//! the caller reads the whole message the way the server will (the last one wins).

use std::borrow::Cow;

use serde::{Deserialize, Deserializer};

/// The string member `member` of the JSON object `params` (valid JSON: the envelope parser
/// read it). See the module's documentation.
pub(super) fn member_str(params: &[u8], member: &str) -> Result<Option<String>, ()> {
    #[derive(Deserialize)]
    struct Name<'a> {
        #[serde(borrow)]
        name: Option<Cow<'a, str>>,
    }
    #[derive(Deserialize)]
    struct Uri<'a> {
        #[serde(borrow)]
        uri: Option<Cow<'a, str>>,
    }
    if let Some(found) = scan(params, member) {
        return found.map(|v| v.map(str::to_owned));
    }
    // Stopping early pays (searches, an error to stop the parser) only past a few lines.
    if params.len() >= 2048 {
        if let Ok(found) = first_member_str(params, member) {
            return Ok(found);
        }
    }
    // Only a string counts; `{"name": 5}` has no name, as in the whole message's tree.
    let found = match member {
        "name" => serde_json::from_slice::<Name<'_>>(params).map(|n| n.name),
        "uri" => serde_json::from_slice::<Uri<'_>>(params).map(|n| n.uri),
        _ => return Err(()),
    };
    match found {
        Ok(found) => Ok(found.map(Cow::into_owned)),
        Err(e) if e.is_data() && !e.to_string().starts_with("duplicate field") => Ok(None),
        Err(_) => Err(()),
    }
}

/// The top-level string member `member` of the valid JSON object `object`, in one pass:
/// `None` if it declines (an escape in a member name, or in the value).
#[allow(clippy::option_option)]
pub(super) fn scan<'a>(object: &'a [u8], member: &str) -> Option<Result<Option<&'a str>, ()>> {
    let member = member.as_bytes();
    let mut depth = 0_u32;
    // At the top level: the next string is a member name (else a value).
    let mut at_name = false;
    // The member being read is the one asked for.
    let mut wanted = false;
    let mut found: Option<Option<&'a str>> = None;
    let mut i = 0;
    while let Some(&b) = object.get(i) {
        match b {
            b'"' => {
                let start = i + 1;
                let (end, escaped) = string_end(object, start)?;
                let text = object.get(start..end)?;
                if depth == 1 && at_name {
                    if escaped {
                        return None;
                    }
                    wanted = text == member;
                    if wanted && found.is_some() {
                        return Some(Err(()));
                    }
                    at_name = false;
                } else if depth == 1 && wanted {
                    if escaped {
                        return None;
                    }
                    found = Some(Some(std::str::from_utf8(text).ok()?));
                    wanted = false;
                }
                i = end + 1;
                continue;
            }
            b'{' | b'[' => {
                if depth == 1 && wanted {
                    // Not a string: no name, as in the whole tree.
                    found = Some(None);
                    wanted = false;
                }
                depth += 1;
                at_name = b == b'{' && depth == 1;
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => at_name = true,
            b'n' | b't' | b'f' | b'-' | b'0'..=b'9' if depth == 1 && wanted => {
                // null, true, false or a number: not a string.
                found = Some(None);
                wanted = false;
            }
            _ => {}
        }
        i += 1;
    }
    Some(Ok(found.flatten()))
}

/// Where the string whose text starts at `start` ends (its closing quote), and whether it has
/// escapes.
fn string_end(text: &[u8], start: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    let mut i = start;
    loop {
        let at = i + memchr::memchr2(b'"', b'\\', text.get(i..)?)?;
        if text.get(at) == Some(&b'"') {
            return Some((at, escaped));
        }
        escaped = true;
        // Skip the escaped character.
        i = at + 2;
    }
}

/// The string member `member` of the JSON object `object`, read only as far as that member,
/// when no other member can have the same name: its quoted name occurs once in the text and
/// nothing is written with `\u` escapes (the only way to spell a name differently). `Err`
/// when that cannot be known this way. The text is valid JSON (the envelope parser read it).
pub(super) fn first_member_str(object: &[u8], member: &str) -> Result<Option<String>, ()> {
    use serde::de::{DeserializeSeed, Error as _, IgnoredAny, MapAccess, Visitor};

    struct KeyIs<'m>(&'m str);
    impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
        type Value = bool;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
            d.deserialize_str(self)
        }
    }
    impl Visitor<'_> for KeyIs<'_> {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a member name")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<bool, E> {
            Ok(v == self.0)
        }
    }
    struct Find<'m, 's> {
        member: &'m str,
        #[allow(clippy::option_option)] // Not found; found, not a string; found.
        found: &'s mut Option<Option<String>>,
    }
    impl<'de> Visitor<'de> for Find<'_, '_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(is_it) = map.next_key_seed(KeyIs(self.member))? {
                if !is_it {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                // Not a string (or null): no name, as in the whole tree.
                let value = map.next_value::<Option<Cow<'de, str>>>().ok().flatten();
                *self.found = Some(value.map(Cow::into_owned));
                // Found: stop reading here.
                return Err(A::Error::custom("found"));
            }
            Ok(())
        }
    }

    use memchr::memmem::Finder;
    use std::sync::LazyLock;
    // Built once: building a finder costs more than searching a short message.
    static ESCAPE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\\u"));
    static NAME: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"name\""));
    static URI: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"uri\""));
    let quoted: &Finder<'static> = match member {
        "name" => &NAME,
        "uri" => &URI,
        _ => return Err(()),
    };
    if ESCAPE.find(object).is_some() {
        return Err(());
    }
    let mut hits = quoted.find_iter(object);
    if hits.next().is_none() {
        return Ok(None);
    }
    if hits.next().is_some() {
        return Err(());
    }
    let mut found = None;
    let mut de = serde_json::Deserializer::from_slice(object);
    let read = de.deserialize_map(Find {
        member,
        found: &mut found,
    });
    match (found, read) {
        (Some(found), _) => Ok(found),
        (None, Ok(())) => Ok(None),
        (None, Err(_)) => Err(()),
    }
}
