//! Newline-delimited framing with a bound on line length.
//!
//! Modelled on tokio-util's `LinesCodec::new_with_max_length`, but yields raw [`Bytes`] (no UTF-8
//! copy; the JSON parser validates) and reports an over-long line as a value rather than an error,
//! after discarding it through its newline, so the stream carries on with the next line. The first
//! and last bytes of a discarded line are kept so its request id can be salvaged.

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::Decoder;

use crate::protocol::salvage::{HEAD_BYTES, TAIL_BYTES};

/// One unit read from a line-framed stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A complete line, without its `\n`.
    Frame(Bytes),
    /// A line longer than the limit, already discarded.
    TooLong {
        /// Its length in bytes, without the newline.
        len: usize,
        /// Its first bytes (at most [`HEAD_BYTES`]).
        head: Bytes,
        /// Its last bytes (at most [`TAIL_BYTES`]).
        tail: Bytes,
    },
}

/// Decoder for newline-delimited frames of at most `max_len` bytes.
#[derive(Debug)]
pub struct LineDecoder {
    max_len: usize,
    /// How far the current buffer has been searched for `\n` already.
    scanned: usize,
    discarding: Option<Discard>,
}

#[derive(Debug)]
struct Discard {
    len: usize,
    head: Bytes,
    tail: Vec<u8>,
}

impl Discard {
    fn absorb(&mut self, chunk: &[u8]) {
        self.len += chunk.len();
        self.tail
            .extend_from_slice(&chunk[chunk.len().saturating_sub(TAIL_BYTES)..]);
        let excess = self.tail.len().saturating_sub(TAIL_BYTES);
        self.tail.drain(..excess);
    }

    fn finish(self) -> Line {
        Line::TooLong {
            len: self.len,
            head: self.head,
            tail: Bytes::from(self.tail),
        }
    }
}

impl LineDecoder {
    /// A decoder that accepts lines of up to `max_len` bytes (newline excluded).
    pub fn new(max_len: usize) -> Self {
        Self {
            max_len,
            scanned: 0,
            discarding: None,
        }
    }

    fn start_discard(&mut self, buf: &mut BytesMut) {
        let head = Bytes::copy_from_slice(&buf[..buf.len().min(HEAD_BYTES)]);
        let mut discard = Discard {
            len: 0,
            head,
            tail: Vec::with_capacity(TAIL_BYTES * 2),
        };
        discard.absorb(buf);
        buf.clear();
        self.scanned = 0;
        self.discarding = Some(discard);
    }
}

impl Decoder for LineDecoder {
    type Item = Line;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Line>, Self::Error> {
        if let Some(discard) = self.discarding.as_mut() {
            let Some(pos) = memchr::memchr(b'\n', buf) else {
                discard.absorb(buf);
                buf.clear();
                return Ok(None);
            };
            discard.absorb(&buf[..pos]);
            buf.advance(pos + 1);
            return Ok(self.discarding.take().map(Discard::finish));
        }
        match memchr::memchr(b'\n', &buf[self.scanned..]) {
            Some(offset) => {
                let pos = self.scanned + offset;
                self.scanned = 0;
                if pos > self.max_len {
                    let line = buf.split_to(pos + 1);
                    let mut discard = Discard {
                        len: 0,
                        head: Bytes::copy_from_slice(&line[..HEAD_BYTES.min(pos)]),
                        tail: Vec::new(),
                    };
                    discard.absorb(&line[..pos]);
                    return Ok(Some(discard.finish()));
                }
                let mut line = buf.split_to(pos + 1);
                line.truncate(pos);
                Ok(Some(Line::Frame(line.freeze())))
            }
            None if buf.len() > self.max_len => {
                self.start_discard(buf);
                Ok(None)
            }
            None => {
                self.scanned = buf.len();
                Ok(None)
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Line>, Self::Error> {
        if let Some(line) = self.decode(buf)? {
            return Ok(Some(line));
        }
        if let Some(discard) = self.discarding.take() {
            return Ok(Some(discard.finish()));
        }
        self.scanned = 0;
        if buf.is_empty() {
            return Ok(None);
        }
        // A last line without its newline still counts.
        Ok(Some(Line::Frame(buf.split().freeze())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(max: usize, chunks: &[&[u8]]) -> Vec<Line> {
        let mut dec = LineDecoder::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some(line) = dec.decode(&mut buf).unwrap() {
                out.push(line);
            }
        }
        while let Some(line) = dec.decode_eof(&mut buf).unwrap() {
            out.push(line);
        }
        out
    }

    fn frame(s: &str) -> Line {
        Line::Frame(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn splits_lines_across_chunks() {
        let lines = decode_all(100, &[b"ab", b"c\nde", b"f\n\ng", b"h"]);
        assert_eq!(
            lines,
            vec![frame("abc"), frame("def"), frame(""), frame("gh")]
        );
    }

    #[test]
    fn a_line_of_exactly_the_limit_passes() {
        assert_eq!(
            decode_all(3, &[b"abc\nd\n"]),
            vec![frame("abc"), frame("d")]
        );
    }

    #[test]
    fn discards_an_over_long_line_through_its_newline_and_carries_on() {
        let long = "x".repeat(50);
        let input = format!("{long}\nok\n");
        for chunk in [1usize, 7, 64] {
            let chunks: Vec<&[u8]> = input.as_bytes().chunks(chunk).collect();
            let lines = decode_all(10, &chunks);
            assert_eq!(lines.len(), 2, "chunk {chunk}");
            match &lines[0] {
                Line::TooLong { len, head, tail } => {
                    assert_eq!(*len, 50);
                    assert!(head.len() <= HEAD_BYTES && head.iter().all(|&b| b == b'x'));
                    assert!(!tail.is_empty() && tail.len() <= TAIL_BYTES);
                }
                other @ Line::Frame(_) => panic!("expected TooLong, got {other:?}"),
            }
            assert_eq!(lines[1], frame("ok"));
        }
    }

    #[test]
    fn keeps_head_and_tail_of_a_huge_line() {
        let mut line = b"{\"id\":9,".to_vec();
        line.extend(std::iter::repeat_n(b'a', 100_000));
        line.extend_from_slice(b"END\n");
        let lines = decode_all(1000, &line.chunks(4096).collect::<Vec<_>>());
        let Line::TooLong { len, head, tail } = &lines[0] else {
            panic!()
        };
        assert_eq!(*len, line.len() - 1);
        assert!(head.starts_with(b"{\"id\":9,"));
        assert!(tail.ends_with(b"END"));
        assert_eq!(tail.len(), TAIL_BYTES);
    }

    #[test]
    fn an_unterminated_over_long_line_at_eof_is_reported() {
        let lines = decode_all(4, &[b"abcdefgh"]);
        assert!(matches!(lines[..], [Line::TooLong { len: 8, .. }]));
    }
}
