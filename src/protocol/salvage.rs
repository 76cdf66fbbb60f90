//! Best-effort recovery of a request id from a frame that could not be parsed.
//!
//! When a peer sends an over-long or malformed message, answering "some request failed" is only
//! useful if the request can be named: otherwise the sender waits forever for that id. Shadowcat
//! keeps the first and last few KiB of a bad frame and looks for a top-level `"id"` member: by
//! scanning forward from the start (tracking nesting and strings, so nested `"id"`s are ignored),
//! and, for serialisers that write `id` last, by matching `"id": <value> }` at the very end.
//! The same forward scan notes whether the frame has a top-level `method` (a request) or
//! `result`/`error` (a response), because the two belong to different id spaces: a broken
//! request is answered to its sender, a broken response fails the request it was answering.

use super::id::RequestId;

/// How many leading bytes of a bad frame are kept for salvage.
pub const HEAD_BYTES: usize = 4096;
/// How many trailing bytes of a bad frame are kept for salvage.
pub const TAIL_BYTES: usize = 256;

/// What could be read from a broken frame.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Salvaged {
    /// Its top-level `id`, if one could be read with certainty.
    pub id: Option<RequestId>,
    /// What it looks like.
    pub shape: Shape,
}

/// Whether a broken frame looks like a request or a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shape {
    /// It has a top-level `method`.
    Request,
    /// It has a top-level `result` or `error` (and no `method`).
    Response,
    /// Neither could be seen.
    #[default]
    Unknown,
}

impl Shape {
    /// `request`, `response` or `unknown`, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Response => "response",
            Self::Unknown => "unknown",
        }
    }
}

/// Looks for the top-level `id` of a JSON object given its first and last bytes (which may
/// overlap or be the whole frame), and for its shape. Returns `None` ids rather than guessing.
pub fn inspect(head: &[u8], tail: &[u8]) -> Salvaged {
    let mut found = scan_head(head);
    if found.id.is_none() {
        found.id = scan_tail(tail);
    }
    found
}

/// [`inspect`]'s id alone.
pub fn find_id(head: &[u8], tail: &[u8]) -> Option<RequestId> {
    inspect(head, tail).id
}

/// Forward scan: a tiny tokenizer that tracks depth and strings, and stops where the data does.
fn scan_head(bytes: &[u8]) -> Salvaged {
    let mut found = Salvaged::default();
    let (mut has_method, mut has_answer) = (false, false);
    let mut depth = 0usize;
    let mut i = skip_ws(bytes, 0);
    if bytes.get(i) != Some(&b'{') {
        return found;
    }
    // After `{` or `,` at depth 1 the next string is a key.
    let mut expect_key = false;
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'[' => {
                depth += 1;
                expect_key = depth == 1 && bytes[i] == b'{';
                i += 1;
            }
            b'}' | b']' => {
                let Some(d) = depth.checked_sub(1) else { break };
                depth = d;
                i += 1;
            }
            b',' => {
                expect_key = depth == 1;
                i += 1;
            }
            b'"' => {
                let Some(end) = string_end(bytes, i) else {
                    break;
                };
                if expect_key {
                    match &bytes[i + 1..end - 1] {
                        b"id" if found.id.is_none() => {
                            let colon = skip_ws(bytes, end);
                            if bytes.get(colon) == Some(&b':') {
                                found.id = value_at(bytes, skip_ws(bytes, colon + 1));
                            }
                        }
                        b"method" => has_method = true,
                        b"result" | b"error" => has_answer = true,
                        _ => {}
                    }
                }
                expect_key = false;
                i = end;
            }
            _ => i += 1,
        }
    }
    found.shape = match (has_method, has_answer) {
        (true, _) => Shape::Request,
        (false, true) => Shape::Response,
        (false, false) => Shape::Unknown,
    };
    found
}

/// Backward match of `"id" : <value> }` followed only by whitespace.
fn scan_tail(bytes: &[u8]) -> Option<RequestId> {
    let mut end = bytes.len();
    while end > 0 && bytes[end - 1].is_ascii_whitespace() {
        end -= 1;
    }
    if end == 0 || bytes[end - 1] != b'}' {
        return None;
    }
    let body = &bytes[..end - 1];
    let key = memchr::memmem::rfind(body, b"\"id\"")?;
    let colon = skip_ws(body, key + 4);
    if body.get(colon) != Some(&b':') {
        return None;
    }
    let start = skip_ws(body, colon + 1);
    let text = std::str::from_utf8(&body[start..]).ok()?.trim_end();
    RequestId::from_json_text(text).ok()
}

fn value_at(bytes: &[u8], start: usize) -> Option<RequestId> {
    let end = match bytes.get(start)? {
        b'"' => string_end(bytes, start)?,
        b'-' | b'0'..=b'9' => {
            let len = bytes[start + 1..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            let end = start + 1 + len;
            // A number cut off by the end of the kept bytes is not trustworthy, and a fraction
            // or exponent is not an id.
            if end >= bytes.len() || matches!(bytes[end], b'.' | b'e' | b'E') {
                return None;
            }
            end
        }
        _ => return None,
    };
    RequestId::from_json_text(std::str::from_utf8(&bytes[start..end]).ok()?).ok()
}

/// Index just past the closing quote of the string starting at `start`.
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

fn skip_ws(bytes: &[u8], mut i: usize) -> usize {
    while bytes.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(s: &str) -> Option<RequestId> {
        find_id(s.as_bytes(), s.as_bytes())
    }

    #[test]
    fn finds_leading_and_trailing_ids() {
        assert_eq!(
            find(r#"{"jsonrpc":"2.0","id":12,"result":{"x":"#),
            Some(RequestId::Number(12))
        );
        assert_eq!(
            find(r#"{"id" : "ab\"c", "method":"#),
            Some(RequestId::from("ab\"c"))
        );
        let tail = br#"...","x":1},"jsonrpc":"2.0","id":77}"#;
        assert_eq!(
            find_id(b"{\"result\":{\"content\":\"aaaa", tail),
            Some(RequestId::Number(77))
        );
    }

    #[test]
    fn ignores_nested_ids_and_values_that_look_like_keys() {
        assert_eq!(find(r#"{"result":{"id":5},"note":"\"id\":6""#), None);
        assert_eq!(find(r#"{"a":"id","b":["id",{"id":1}]"#), None);
        assert_eq!(find(r#"{"result":{"id":5}}"#), None);
    }

    #[test]
    fn tells_requests_from_responses() {
        let request = inspect(
            br#"{"jsonrpc":"2.0","id":3,"method":"x","params":{"result":1"#,
            b"",
        );
        assert_eq!(
            (request.id, request.shape),
            (Some(RequestId::Number(3)), Shape::Request)
        );
        let response = inspect(br#"{"jsonrpc":"2.0","id":"s-1","result":{"method":"#, b"");
        assert_eq!(
            (response.id, response.shape),
            (Some(RequestId::from("s-1")), Shape::Response)
        );
        assert_eq!(inspect(b"not json", b"").shape, Shape::Unknown);
    }

    #[test]
    fn refuses_to_guess() {
        assert_eq!(find(r#"{"id":1.5,"method":"x"}"#), None);
        assert_eq!(find(r#"{"id":2e3,"method":"x"}"#), None);
        assert_eq!(find("plain log line"), None);
        assert_eq!(find(r#"{"id":12"#), None, "number may be cut off");
        assert_eq!(find(r#"{"id":null}"#), None);
        assert_eq!(find(r#"{"id":{}}"#), None);
    }
}
