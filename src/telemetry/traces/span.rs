//! What a span is made of, as the OTLP wire format describes it: W3C trace context (ids, the
//! sampled flag, `tracestate`), a name and kind, times, attributes, events, links and a status.
//! Recorded spans are plain values: the export thread encodes them ([`super::otlp`]); nothing
//! here allocates beyond the attributes a span is given.

use std::borrow::Cow;
use std::sync::Arc;

use crate::protocol::trace_context::Traceparent;

/// The longest `tracestate` kept from a sender (W3C: at most 32 members of at most 256
/// characters each; longer ones are dropped, the trace goes on without it).
pub const MAX_TRACESTATE: usize = 32 * 257;

/// A trace's and a span's identity, and whether the trace is recorded (W3C trace context).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanContext {
    /// 16 bytes, not all zero.
    pub trace_id: [u8; 16],
    /// 8 bytes, not all zero.
    pub span_id: [u8; 8],
    /// The `sampled` flag: whether the trace is recorded.
    pub sampled: bool,
    /// The sender's `tracestate`, passed on as it came.
    pub state: Option<Arc<str>>,
}

impl SpanContext {
    /// The context a `traceparent` (and `tracestate`) value gives; `None` unless it is valid
    /// W3C trace context: version 00 exactly 55 characters, a later version at least that with
    /// `-` next; lowercase hex; neither id all zeros; version `ff` refused.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let text = traceparent
            .trim_matches(|c| c == ' ' || c == '\t')
            .as_bytes();
        if text.len() < 55 || text[2] != b'-' || text[35] != b'-' || text[52] != b'-' {
            return None;
        }
        let version = hex::<1>(&text[..2])?[0];
        if version == 0xff
            || (version == 0 && text.len() != 55)
            || (text.len() > 55 && text[55] != b'-')
        {
            return None;
        }
        let trace_id = hex::<16>(&text[3..35])?;
        let span_id = hex::<8>(&text[36..52])?;
        let flags = hex::<1>(&text[53..55])?[0];
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
            state: tracestate.filter(|s| valid_state(s)).map(Arc::from),
        })
    }

    /// A new span's context in a new trace, sampled as `sampled` says.
    pub fn root(sampled: bool) -> Self {
        let trace_id = loop {
            let id = random::<u128>();
            if id != 0 {
                break id.to_be_bytes();
            }
        };
        Self {
            trace_id,
            span_id: new_span_id(),
            sampled,
            state: None,
        }
    }

    /// A new span's context in this one's trace.
    #[must_use]
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id,
            span_id: new_span_id(),
            sampled: self.sampled,
            state: self.state.clone(),
        }
    }

    /// The `traceparent` value: `00-{trace id}-{span id}-{flags}`.
    pub fn traceparent(&self) -> Traceparent {
        Traceparent::new(&self.trace_id, &self.span_id, self.sampled)
    }
}

thread_local! {
    /// Ids need to be unlikely to repeat, not unpredictable: a small generator per thread,
    /// seeded from the system's.
    static IDS: std::cell::RefCell<rand::rngs::SmallRng> =
        std::cell::RefCell::new(rand::make_rng());
}

fn random<T>() -> T
where
    rand::distr::StandardUniform: rand::distr::Distribution<T>,
{
    IDS.with(|ids| rand::RngExt::random(&mut *ids.borrow_mut()))
}

fn new_span_id() -> [u8; 8] {
    loop {
        let id = random::<u64>();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

/// Whether a new trace with this id is recorded at `ratio` (0 to 1): the id's lower 63 bits
/// against the ratio's share of them, as OpenTelemetry's `TraceIdRatioBased` sampler decides,
/// so every component sampling at one ratio agrees on a trace.
pub fn sampled_at(trace_id: &[u8; 16], ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    let mut low = [0; 8];
    low.copy_from_slice(&trace_id[8..]);
    (u64::from_be_bytes(low) >> 1) < bound
}

/// `tracestate` as W3C allows it to be passed on: printable ASCII list members, within
/// [`MAX_TRACESTATE`]; anything else is dropped (the trace id still goes on).
fn valid_state(state: &str) -> bool {
    !state.is_empty()
        && state.len() <= MAX_TRACESTATE
        && state.bytes().all(|b| (0x20..0x7f).contains(&b))
        && state.split(',').count() <= 32
}

/// `N` bytes from `2N` lowercase hex digits.
fn hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0; N];
    for (i, pair) in text.chunks_exact(2).take(N).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Text shared between spans (a copy costs no allocation).
    Str(Arc<str>),
    /// Text known when the program was built.
    Static(&'static str),
    /// A whole number.
    Int(i64),
    /// True or false.
    Bool(bool),
}

impl From<&'static str> for Value {
    fn from(s: &'static str) -> Self {
        Self::Static(s)
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Self::Str(Arc::from(s))
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Self::Int(n)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Self::Bool(b)
    }
}

/// A named value on a span or an event.
pub type Attribute = (&'static str, Value);

/// Which side of a call a span stands for (OTLP's `SpanKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Where a request arrives.
    Server = 2,
    /// The hop on to the receiver.
    Client = 3,
}

/// Something that happened during a span.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// When, in nanoseconds since the Unix epoch.
    pub time: u64,
    /// What.
    pub name: &'static str,
    /// Its details.
    pub attributes: Vec<Attribute>,
}

/// One recorded span, ended or not.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// Its identity.
    pub context: SpanContext,
    /// The span it is a child of, if any.
    pub parent: Option<[u8; 8]>,
    /// Whether that parent is another process's.
    pub remote_parent: bool,
    /// Its name (shared by a request's two spans).
    pub name: Arc<str>,
    /// Its kind.
    pub kind: Kind,
    /// When it started and ended, in nanoseconds since the Unix epoch (0: not yet).
    pub start: u64,
    /// When it ended.
    pub end: u64,
    /// What it is about.
    pub attributes: Vec<Attribute>,
    /// What happened meanwhile.
    pub events: Vec<Event>,
    /// Other spans it relates to (an HTTP request's `traceparent` header).
    pub links: Vec<SpanContext>,
    /// `Some(description)` if it failed.
    pub error: Option<Cow<'static, str>>,
}

impl Span {
    /// A span started at `start`, named `name`, of `kind`.
    pub fn new(
        context: SpanContext,
        parent: Option<[u8; 8]>,
        name: Arc<str>,
        kind: Kind,
        start: u64,
    ) -> Self {
        Self {
            context,
            parent,
            remote_parent: false,
            name,
            kind,
            start,
            end: 0,
            attributes: Vec::new(),
            events: Vec::new(),
            links: Vec::new(),
            error: None,
        }
    }

    /// Sets `key` to `value`, replacing any value it had.
    pub fn set(&mut self, key: &'static str, value: Value) {
        match self.attributes.iter_mut().find(|(k, _)| *k == key) {
            Some((_, old)) => *old = value,
            None => self.attributes.push((key, value)),
        }
    }
}

/// Now, in nanoseconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn traceparent_round_trips_and_bad_ones_are_refused() {
        let cx = SpanContext::parse(PARENT, Some("k=v")).unwrap();
        assert!(cx.sampled);
        assert_eq!(cx.traceparent().as_str(), PARENT);
        assert_eq!(
            crate::protocol::trace_context::hex(&cx.trace_id),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(cx.state.as_deref(), Some("k=v"));
        let unsampled = SpanContext::parse(&PARENT.replace("-01", "-00"), None).unwrap();
        assert!(!unsampled.sampled);
        // A later version may carry more after a dash.
        assert!(
            SpanContext::parse(&format!("{}-extra", PARENT.replacen("00", "01", 1)), None)
                .is_some()
        );
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            &PARENT.replacen("00", "ff", 1),
            &format!("{PARENT}-x"),
            &PARENT.to_uppercase(),
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01",
        ] {
            assert_eq!(SpanContext::parse(bad, None), None, "{bad:?}");
        }
        // A tracestate that is not printable ASCII is dropped, the context kept.
        let cx = SpanContext::parse(PARENT, Some("k=\u{e9}")).unwrap();
        assert_eq!(cx.state, None);
    }

    #[test]
    fn children_keep_the_trace_and_get_new_span_ids() {
        let root = SpanContext::root(true);
        assert_ne!(root.trace_id, [0; 16]);
        let child = root.child();
        assert_eq!(child.trace_id, root.trace_id);
        assert_ne!(child.span_id, root.span_id);
        assert!(child.sampled);
        assert_eq!(
            SpanContext::parse(child.traceparent().as_str(), None).unwrap(),
            child
        );
    }

    #[test]
    fn sampling_follows_the_ratio_on_the_trace_id() {
        let mut id = [0u8; 16];
        assert!(sampled_at(&id, 0.5));
        assert!(!sampled_at(&id, 0.0));
        id[8] = 0xff;
        assert!(!sampled_at(&id, 0.5));
        assert!(sampled_at(&id, 1.0));
        let kept = (0..10_000)
            .filter(|_| sampled_at(&SpanContext::root(true).trace_id, 0.1))
            .count();
        assert!((700..1_300).contains(&kept), "{kept} of 10000 at 0.1");
    }
}
