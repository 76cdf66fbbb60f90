//! Server-sent events (the `text/event-stream` format of the HTML standard): writing events for
//! our clients, and a bounded decoder for the streams upstream servers send us.
//!
//! The decoder is hand-written rather than taken from a crate because it must be bounded: an
//! event's data is capped like any other message (`--max-message-size`), and an over-long event
//! is skipped through its end and reported, never buffered whole.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::Decoder;

/// One event as written on the wire: `event: message`, then the message as `data:` lines (one
/// per line of it, so a message with newlines round-trips), then a blank line.
pub fn message_event(data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 32);
    out.put_slice(b"event: message\n");
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        out.put_slice(b"data: ");
        out.put_slice(line);
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.freeze()
}

/// One decoded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field; `None` means the default type, `message`.
    pub event: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: Bytes,
    /// The `id:` field, if the event set one.
    pub id: Option<String>,
    /// The `retry:` field, in milliseconds.
    pub retry: Option<u64>,
}

impl Event {
    /// Whether this event carries a JSON-RPC message (type `message` and some data).
    pub fn is_message(&self) -> bool {
        matches!(self.event.as_deref(), None | Some("message")) && !self.data.is_empty()
    }
}

/// What the decoder yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A complete event.
    Event(Event),
    /// An event whose data exceeded the limit; it was skipped. `len` counts what was seen.
    TooLarge {
        /// Bytes of data seen before the event ended.
        len: usize,
    },
}

/// A bounded SSE decoder.
#[derive(Debug)]
pub struct SseDecoder {
    max_data: usize,
    event: Option<String>,
    data: BytesMut,
    id: Option<String>,
    retry: Option<u64>,
    /// The current event's data passed the limit: its data is being dropped.
    overflow: Option<usize>,
    /// Whether anything (a field) has been seen for the current event.
    started: bool,
    /// The previous chunk ended in `\r`: a `\n` at the start of the next one belongs to it.
    skip_lf: bool,
    /// The current line was too long and its start discarded; drop the rest of it too.
    cut: bool,
}

/// Longest line other than `data:` kept (field names, ids, event types).
const MAX_FIELD_LINE: usize = 4096;

impl SseDecoder {
    /// A decoder that skips events with more than `max_data` bytes of data.
    pub fn new(max_data: usize) -> Self {
        Self {
            max_data,
            event: None,
            data: BytesMut::new(),
            id: None,
            retry: None,
            overflow: None,
            started: false,
            skip_lf: false,
            cut: false,
        }
    }

    fn field(&mut self, line: &[u8]) {
        let (name, value) = match memchr::memchr(b':', line) {
            Some(0) => return, // a comment
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        self.started = true;
        match name {
            b"data" => {
                if let Some(len) = self.overflow.as_mut() {
                    *len += value.len() + 1;
                    return;
                }
                let added = value.len() + usize::from(!self.data.is_empty());
                if self.data.len() + added > self.max_data {
                    self.overflow = Some(self.data.len() + added);
                    self.data = BytesMut::new();
                    return;
                }
                if !self.data.is_empty() {
                    self.data.put_u8(b'\n');
                }
                self.data.put_slice(value);
            }
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            b"id" if !value.contains(&0) => {
                self.id = Some(String::from_utf8_lossy(value).into_owned());
            }
            b"retry" => {
                if let Some(ms) = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()) {
                    self.retry = Some(ms);
                }
            }
            _ => {}
        }
    }

    fn dispatch(&mut self) -> Option<Item> {
        let started = std::mem::take(&mut self.started);
        let event = self.event.take();
        let id = self.id.take();
        let retry = self.retry.take();
        if let Some(len) = self.overflow.take() {
            return Some(Item::TooLarge { len });
        }
        if !started {
            return None;
        }
        Some(Item::Event(Event {
            event,
            data: std::mem::take(&mut self.data).freeze(),
            id,
            retry,
        }))
    }
}

impl Decoder for SseDecoder {
    type Item = Item;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Item>, std::io::Error> {
        loop {
            if self.skip_lf && !src.is_empty() {
                if src[0] == b'\n' {
                    src.advance(1);
                }
                self.skip_lf = false;
            }
            let Some(end) = memchr::memchr2(b'\n', b'\r', src) else {
                // No full line yet. A line that can't fit is cut short here: the data case is
                // bounded by the overflow accounting, anything else by MAX_FIELD_LINE.
                let limit = self.max_data.saturating_add(MAX_FIELD_LINE);
                if src.len() > limit {
                    let len = src.len();
                    src.clear();
                    self.overflow = Some(self.overflow.unwrap_or(0) + len);
                    self.started = true;
                    self.cut = true;
                }
                return Ok(None);
            };
            let line = src.split_to(end);
            let terminator = src[0];
            src.advance(1);
            if terminator == b'\r' {
                if src.is_empty() {
                    self.skip_lf = true;
                } else if src[0] == b'\n' {
                    src.advance(1);
                }
            }
            if std::mem::take(&mut self.cut) {
                continue;
            }
            if line.is_empty() {
                if let Some(item) = self.dispatch() {
                    return Ok(Some(item));
                }
                continue;
            }
            self.field(&line);
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Item>, std::io::Error> {
        // An event not ended by a blank line before the stream closed is discarded (per the
        // standard); so is a partial line.
        if let Some(item) = self.decode(src)? {
            return Ok(Some(item));
        }
        src.clear();
        self.started = false;
        self.overflow = None;
        self.data.clear();
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[&[u8]], max: usize) -> Vec<Item> {
        let mut decoder = SseDecoder::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in input {
            buf.extend_from_slice(chunk);
            while let Some(item) = decoder.decode(&mut buf).unwrap() {
                out.push(item);
            }
        }
        while let Some(item) = decoder.decode_eof(&mut buf).unwrap() {
            out.push(item);
        }
        out
    }

    fn event(data: &str, id: Option<&str>) -> Item {
        Item::Event(Event {
            event: Some("message".into()),
            data: Bytes::copy_from_slice(data.as_bytes()),
            id: id.map(Into::into),
            retry: None,
        })
    }

    #[test]
    fn decodes_events_split_anywhere_with_any_line_ending() {
        let wire = b"event: message\r\nid: 7\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n: keep-alive\n\nevent: message\rdata: x\r\r";
        for split in 0..wire.len() {
            let items = decode_all(&[&wire[..split], &wire[split..]], 1024);
            assert_eq!(
                items,
                vec![event("{\"a\":\n1}", Some("7")), event("x", None)],
                "split at {split}"
            );
        }
    }

    #[test]
    fn a_priming_event_and_retry_are_read() {
        let items = decode_all(&[b"id: p-0\nretry: 3000\ndata:\n\n"], 1024);
        assert_eq!(
            items,
            vec![Item::Event(Event {
                event: None,
                data: Bytes::new(),
                id: Some("p-0".into()),
                retry: Some(3000),
            })]
        );
        let Item::Event(e) = &items[0] else { panic!() };
        assert!(!e.is_message());
    }

    #[test]
    fn an_oversized_event_is_skipped_and_the_next_one_read() {
        let big = "x".repeat(100);
        let wire = format!("data: {big}\ndata: {big}\n\ndata: small\n\n");
        let items = decode_all(&[wire.as_bytes()], 150);
        assert!(matches!(items[0], Item::TooLarge { len } if len > 150));
        assert_eq!(
            items[1],
            Item::Event(Event {
                event: None,
                data: Bytes::from_static(b"small"),
                id: None,
                retry: None
            })
        );
        // One endless line: cut short without buffering it all.
        let mut decoder = SseDecoder::new(64);
        let mut buf = BytesMut::from(&[b'y'; 10_000][..]);
        assert_eq!(decoder.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
        buf.extend_from_slice(b"yyy\n\ndata: ok\n\n");
        assert!(matches!(
            decoder.decode(&mut buf).unwrap(),
            Some(Item::TooLarge { .. })
        ));
        assert!(matches!(
            decoder.decode(&mut buf).unwrap(),
            Some(Item::Event(_))
        ));
    }

    #[test]
    fn written_events_decode_to_the_same_bytes() {
        for data in [&b"{\"jsonrpc\":\"2.0\"}"[..], b"{\n  \"a\": 1\n}", b""] {
            let wire = message_event(data);
            let items = decode_all(&[&wire], 1024);
            if data.is_empty() {
                let Item::Event(e) = &items[0] else { panic!() };
                assert!(e.data.is_empty());
            } else {
                assert_eq!(
                    items,
                    vec![Item::Event(Event {
                        event: Some("message".into()),
                        data: Bytes::copy_from_slice(data),
                        id: None,
                        retry: None
                    })]
                );
            }
        }
    }
}
