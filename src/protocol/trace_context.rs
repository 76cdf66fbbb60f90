//! W3C trace context carried in a message (SEP-414): `params._meta.traceparent`,
//! `params._meta.tracestate` and `params._meta.baggage`, unprefixed. On stdio this is the only
//! carrier; over HTTP the `traceparent` header may carry it too.
//!
//! Reading costs a search of the frame's bytes when it does not mention `traceparent`, and a
//! borrowed read of the envelope when it does. Writing adds or replaces those members of
//! `params._meta` and keeps every other byte as it came ([`super::rewrite`]).

use serde::Deserialize;

use super::message::Message;
use super::needle::Needle;
use super::rewrite;

static TRACEPARENT: Needle = Needle::new(b"traceparent");
static META: Needle = Needle::new(b"_meta");
static ESCAPE: Needle = Needle::new(b"\\u");

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
        // `_meta` is inside `params`: only those bytes need searching.
        if self
            .params_bytes()
            .is_none_or(|params| TRACEPARENT.find(params).is_none())
        {
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
        self.with_trace(
            carrier.traceparent.as_deref(),
            carrier.tracestate.as_deref(),
        )
    }

    /// [`Message::with_trace_context`] with the members given as text.
    pub fn with_trace(
        &self,
        traceparent: Option<&str>,
        tracestate: Option<&str>,
    ) -> Option<Message> {
        if let (Some(traceparent), None) = (traceparent, tracestate) {
            if let Ok(json) = serde_json::to_vec(traceparent) {
                if let Some(fast) = self.with_traceparent_first(&json) {
                    return Some(fast);
                }
            }
        }
        let mut text = std::str::from_utf8(self.raw()).ok()?.to_owned();
        for (key, value) in [("traceparent", traceparent), ("tracestate", tracestate)] {
            if let Some(value) = value {
                let json = serde_json::to_string(value).ok()?;
                text = rewrite::set(&text, &["params", "_meta", key], &json)?;
            }
        }
        Message::parse(bytes::Bytes::from(text)).ok()
    }

    /// This request with `traceparent` (and `tracestate`) written into `params._meta`, as
    /// [`Message::with_trace_context`] does; the common case (no `tracestate`, no `_meta` yet)
    /// costs one copy of the message.
    pub fn with_traceparent(
        &self,
        traceparent: &Traceparent,
        tracestate: Option<&str>,
    ) -> Option<Message> {
        if tracestate.is_none() {
            let mut json = [b'"'; TRACEPARENT_LEN + 2];
            json[1..=TRACEPARENT_LEN].copy_from_slice(&traceparent.0);
            if let Some(fast) = self.with_traceparent_first(&json) {
                return Some(fast);
            }
        }
        self.with_trace(Some(traceparent.as_str()), tracestate)
    }

    /// The common case without parsing `params`: only a `traceparent` to write (`json`, the
    /// string as JSON), and `params` an object with no `_meta` (nor any `\u` escape, which
    /// could spell one): `"_meta":{"traceparent":…}` goes in as its first member. `None` when
    /// the case does not apply (or the result would not parse: the careful path decides).
    fn with_traceparent_first(&self, json: &[u8]) -> Option<Message> {
        let params = self.params_bytes()?;
        // Without a `_` or a `\` (most calls), neither `_meta` nor an escape can be there.
        if params.first() != Some(&b'{')
            || (memchr::memchr2(b'_', b'\\', params).is_some()
                && (META.find(params).is_some() || ESCAPE.find(params).is_some()))
        {
            return None;
        }
        // Where `params`' members begin, in the message.
        let at = params.as_ptr() as usize - self.raw().as_ptr() as usize + 1;
        let empty = params[1..]
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'}');
        let end: &[u8] = if empty { b"}" } else { b"}," };
        // The envelope is as it was read; only `params` grew: no need to read it again.
        self.spliced_into_params(at, &[br#""_meta":{"traceparent":"#, json, end])
    }
}

/// Each byte's two lowercase hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0; 2]; 256];
    let mut b = 0;
    while b < 256 {
        pairs[b] = [HEX[b >> 4], HEX[b & 0xf]];
        b += 1;
    }
    pairs
};

/// `bytes`' hex digits into `out`, two a byte.
fn write_hex(out: &mut [u8], bytes: &[u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
}

/// `bytes` as lowercase hex digits (a trace id as tapes and history keep it).
pub fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0; 2 * bytes.len()];
    write_hex(&mut out, bytes);
    // Only ASCII hex digits were written.
    String::from_utf8(out).unwrap_or_default()
}

/// The length of a version 00 `traceparent`.
pub const TRACEPARENT_LEN: usize = 55;

/// A version 00 `traceparent` value, made from its parts: always `00-`, 32 and 16 lowercase
/// hex digits and the flags, so it is written into a message as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traceparent([u8; TRACEPARENT_LEN]);

impl Traceparent {
    /// The value for span `span_id` in trace `trace_id`, `sampled` or not.
    pub fn new(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> Self {
        let mut out = [0; TRACEPARENT_LEN];
        out[..3].copy_from_slice(b"00-");
        write_hex(&mut out[3..35], trace_id);
        out[35] = b'-';
        write_hex(&mut out[36..52], span_id);
        out[52..].copy_from_slice(if sampled { b"-01" } else { b"-00" });
        Self(out)
    }

    /// The value as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits and dashes are ever written (`new`).
        std::str::from_utf8(&self.0).unwrap_or_default()
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

    #[test]
    fn a_made_traceparent_is_written_as_the_carrier_would_be() {
        let ours = Traceparent::new(
            &[
                0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80,
                0x31, 0x9c,
            ],
            &[0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31],
            true,
        );
        assert_eq!(ours.as_str(), PARENT);
        let unsampled = Traceparent::new(&[1; 16], &[2; 8], false);
        assert!(unsampled.as_str().ends_with("-0202020202020202-00"));
        let carrier = Carrier {
            traceparent: Some(PARENT.into()),
            tracestate: None,
        };
        for raw in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"t":"x"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{ }}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"_meta":{"a":1},"b_c":2}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"\u005fmeta":{"a":1}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x"}"#,
        ] {
            let m = msg(raw);
            let made = m.with_traceparent(&ours, None).unwrap();
            assert_eq!(
                made.raw(),
                m.with_trace_context(&carrier).unwrap().raw(),
                "{raw}"
            );
            assert_eq!(made.trace_context(), carrier, "{raw}");
            Message::parse(made.raw().clone()).unwrap();
        }
        // With a tracestate: both members, the careful way.
        let m = msg(r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{}}"#);
        let made = m.with_traceparent(&ours, Some("k=v")).unwrap();
        assert_eq!(
            made.trace_context(),
            Carrier {
                traceparent: Some(PARENT.into()),
                tracestate: Some("k=v".into()),
            }
        );
    }
}
