//! W3C trace context carried in a message (SEP-414): `params._meta.traceparent`,
//! `params._meta.tracestate` and `params._meta.baggage`, unprefixed. On stdio this is the only
//! carrier; over HTTP the `traceparent` header may carry it too.
//!
//! Reading costs a search of the frame's bytes when it does not mention `traceparent`, and a
//! borrowed read of the envelope when it does. Writing adds or replaces those members of
//! `params._meta` and keeps every other byte as it came ([`super::rewrite`]).

use serde::Deserialize;

use super::message::Message;
use super::rewrite;

/// A search built once: setting one up costs more than most searches of a small message.
fn finder(needle: &'static [u8]) -> memchr::memmem::Finder<'static> {
    memchr::memmem::Finder::new(needle)
}

static TRACEPARENT: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| finder(b"traceparent"));
static META: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| finder(b"_meta"));
static ESCAPE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| finder(b"\\u"));

/// The longest `traceparent` or `tracestate` kept (W3C: a `tracestate` of at most 32 members of
/// at most 256 characters; a `traceparent` of version 00 is 55 characters).
pub const MAX_CARRIER_BYTES: usize = 8_192;

/// The trace context a message carries, as text (validated by whoever reads it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Carrier {
    /// `params._meta.traceparent`.
    pub traceparent: Option<String>,
    /// `params._meta.tracestate`.
    pub tracestate: Option<String>,
}

impl Carrier {
    /// Whether it carries nothing.
    pub fn is_empty(&self) -> bool {
        self.traceparent.is_none() && self.tracestate.is_none()
    }
}

impl Message {
    /// The trace context in `params._meta`; empty when the frame does not mention
    /// `traceparent`, when `params` cannot be read, or when a member is not a string or is
    /// longer than [`MAX_CARRIER_BYTES`].
    pub fn trace_context(&self) -> Carrier {
        #[derive(Deserialize)]
        struct Body<'a> {
            #[serde(borrow)]
            params: Option<Params<'a>>,
        }
        #[derive(Deserialize)]
        struct Params<'a> {
            #[serde(borrow, rename = "_meta")]
            meta: Option<Meta<'a>>,
        }
        #[derive(Deserialize)]
        struct Meta<'a> {
            #[serde(borrow)]
            traceparent: Option<std::borrow::Cow<'a, str>>,
            #[serde(borrow)]
            tracestate: Option<std::borrow::Cow<'a, str>>,
        }
        if TRACEPARENT.find(self.raw()).is_none() {
            return Carrier::default();
        }
        let Some(meta) = serde_json::from_slice::<Body<'_>>(self.raw())
            .ok()
            .and_then(|b| b.params)
            .and_then(|p| p.meta)
        else {
            return Carrier::default();
        };
        let keep = |s: Option<std::borrow::Cow<'_, str>>| {
            s.filter(|s| s.len() <= MAX_CARRIER_BYTES)
                .map(std::borrow::Cow::into_owned)
        };
        Carrier {
            traceparent: keep(meta.traceparent),
            tracestate: keep(meta.tracestate),
        }
    }

    /// This request with `carrier`'s members written into `params._meta` (added, or replacing
    /// those there; `params` and `_meta` created if absent), every other byte as it came.
    /// `None` if the message cannot be rewritten (its `params` is not an object).
    pub fn with_trace_context(&self, carrier: &Carrier) -> Option<Message> {
        if let Some(fast) = self.with_traceparent_first(carrier) {
            return Some(fast);
        }
        let mut text = std::str::from_utf8(self.raw()).ok()?.to_owned();
        for (key, value) in [
            ("traceparent", &carrier.traceparent),
            ("tracestate", &carrier.tracestate),
        ] {
            if let Some(value) = value {
                let json = serde_json::to_string(value).ok()?;
                text = rewrite::set(&text, &["params", "_meta", key], &json)?;
            }
        }
        Message::parse(bytes::Bytes::from(text)).ok()
    }
}

impl Message {
    /// The common case of [`Message::with_trace_context`] without parsing `params`: only a
    /// `traceparent` to write, and `params` an object with no `_meta` (nor any `\u` escape,
    /// which could spell one): `"_meta":{"traceparent":…}` goes in as its first member. `None`
    /// when the case does not apply (or the result would not parse: the careful path decides).
    fn with_traceparent_first(&self, carrier: &Carrier) -> Option<Message> {
        let (Some(traceparent), None) = (&carrier.traceparent, &carrier.tracestate) else {
            return None;
        };
        let params = self.params_bytes()?;
        if params.first() != Some(&b'{')
            || META.find(params).is_some()
            || ESCAPE.find(params).is_some()
        {
            return None;
        }
        // Where `params`' members begin, in the message.
        let at = params.as_ptr() as usize - self.raw().as_ptr() as usize + 1;
        let empty = params[1..]
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'}');
        let mut member = Vec::with_capacity(traceparent.len() + 32);
        member.extend_from_slice(br#""_meta":{"traceparent":"#);
        serde_json::to_writer(&mut member, traceparent).ok()?;
        member.push(b'}');
        if !empty {
            member.push(b',');
        }
        // The envelope is as it was read; only `params` grew: no need to read it again.
        self.spliced_into_params(at, &member)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(raw: &'static str) -> Message {
        Message::parse(Bytes::from_static(raw.as_bytes())).unwrap()
    }

    const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn reads_the_carrier_from_meta() {
        let m = msg(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","_meta":{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01","tracestate":"k=v","baggage":"x=1"}}}"#,
        );
        let c = m.trace_context();
        assert_eq!(c.traceparent.as_deref(), Some(PARENT));
        assert_eq!(c.tracestate.as_deref(), Some("k=v"));
        // Absent, elsewhere, or not a string: nothing.
        assert!(
            msg(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
                .trace_context()
                .is_empty()
        );
        assert!(
            msg(r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"traceparent":"a"}}"#)
                .trace_context()
                .is_empty()
        );
        assert!(
            msg(r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"_meta":{"traceparent":5}}}"#)
                .trace_context()
                .is_empty()
        );
    }

    #[test]
    fn writes_one_member_and_keeps_the_rest() {
        let ours = Carrier {
            traceparent: Some(PARENT.into()),
            tracestate: None,
        };
        // Replaced where it was; every other byte kept (spacing, order, escapes, baggage).
        let m = msg(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\u00e9", "_meta" : {"baggage":"x=1","traceparent":"00-11111111111111111111111111111111-2222222222222222-00"}}}"#,
        );
        assert_eq!(
            std::str::from_utf8(m.with_trace_context(&ours).unwrap().raw()).unwrap(),
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\u00e9","_meta":{"baggage":"x=1","traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}}"#
        );
        // Added to `_meta`, to `params`, to the message.
        let m = msg(r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"_meta":{"a":1}}}"#);
        assert_eq!(
            std::str::from_utf8(m.with_trace_context(&ours).unwrap().raw()).unwrap(),
            r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"_meta":{"a":1,"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}}"#
        );
        let m = msg(r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{}}"#);
        assert_eq!(
            std::str::from_utf8(m.with_trace_context(&ours).unwrap().raw()).unwrap(),
            r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"_meta":{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}}"#
        );
        let m = msg(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#);
        let traced = m.with_trace_context(&ours).unwrap();
        assert_eq!(
            std::str::from_utf8(traced.raw()).unwrap(),
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"_meta":{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}}"#
        );
        assert_eq!(traced.trace_context(), ours);
        // `params` that is not an object cannot carry it.
        assert!(
            msg(r#"{"jsonrpc":"2.0","id":1,"method":"x","params":[1]}"#)
                .with_trace_context(&ours)
                .is_none()
        );
        // Params without `_meta`: it goes first, the rest byte for byte after it.
        let m = msg(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{ "name":"a","arguments":{"t":"x\ny"}}}"#,
        );
        let traced = m.with_trace_context(&ours).unwrap();
        assert_eq!(
            std::str::from_utf8(traced.raw()).unwrap(),
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}, "name":"a","arguments":{"t":"x\ny"}}}"#
        );
        assert_eq!(traced.called_tool(), Ok(Some("a".into())));
        assert_eq!(traced.trace_context(), ours);
        let reparsed = Message::parse(traced.raw().clone()).unwrap();
        assert_eq!(reparsed.params_bytes(), traced.params_bytes());
        assert_eq!(
            (reparsed.id(), reparsed.method()),
            (traced.id(), traced.method())
        );
        // A key that might spell `_meta` with escapes takes the careful path: no second `_meta`.
        let m = msg(r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"\u005fmeta":{"a":1}}}"#);
        let traced = m.with_trace_context(&ours).unwrap();
        assert_eq!(
            std::str::from_utf8(traced.raw()).unwrap(),
            r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"_meta":{"a":1,"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}}"#
        );
    }
}
