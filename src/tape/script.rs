//! A tape as `replay` plays it: its client requests, in order, each with what the server sent
//! on its account ([`Script`]), and how a live request finds its recorded one ([`Matcher`]).

use serde_json::{Value, json};

use super::Tape;
use super::diff::differences;
use crate::protocol::error::ProxyError;
use crate::protocol::{Direction, ErrorCode, Kind, Message, RequestId};

/// How `replay` matches a live request to a recorded one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum MatchMode {
    /// The first unused recorded request with the same method and params (ids and `_meta`
    /// ignored); once all such are used, the last one used again.
    #[default]
    MethodParams,
    /// The next recorded request in order, whatever its params, if its method is the same.
    Sequential,
    /// The next recorded request in order, which must have the same method and params.
    Strict,
}

impl MatchMode {
    /// Its name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MethodParams => "method-params",
            Self::Sequential => "sequential",
            Self::Strict => "strict",
        }
    }
}

/// Most candidates an unmatched request's error names.
const CANDIDATES: usize = 3;

/// What the server sent on one request's account.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    /// Microseconds after the request.
    pub(crate) offset: u64,
    /// The message as recorded.
    pub(crate) msg: Message,
}

/// One recorded client request and what followed it.
#[derive(Debug)]
pub struct Recorded {
    /// Its method.
    pub method: String,
    /// Its params, without `_meta`.
    pub params: Option<Value>,
    pub(crate) events: Vec<Event>,
}

/// A tape as the player sees it.
#[derive(Debug, Default)]
pub struct Script {
    /// The client's requests, in recorded order.
    pub requests: Vec<Recorded>,
}

/// `params` without `_meta` (ids, progress tokens and protocol metadata are not matched).
pub(crate) fn params_of(msg: &Message) -> Option<Value> {
    #[derive(serde::Deserialize)]
    struct Body {
        params: Option<Value>,
    }
    let mut params = serde_json::from_slice::<Body>(msg.raw()).ok()?.params?;
    if let Value::Object(map) = &mut params {
        map.remove("_meta");
    }
    Some(params)
}

pub(crate) const REQUEST_TOKEN: &str = "/params/_meta/progressToken";
pub(crate) const PROGRESS_TOKEN: &str = "/params/progressToken";

impl Script {
    /// The script of `tape`.
    pub fn from_tape(tape: &Tape) -> Self {
        let mut script = Self::default();
        // Requests awaiting their answers: (id, index, progress token).
        let mut pending: Vec<(RequestId, usize, Option<String>)> = Vec::new();
        let mut times: Vec<u64> = Vec::new();
        let mut last_answered = None;
        for frame in &tape.frames {
            let Ok(msg) = Message::parse(frame.raw.clone()) else {
                continue;
            };
            let owner = match (frame.direction, msg.kind()) {
                (Direction::ClientToServer, Kind::Request) => {
                    let (Some(id), Some(method)) = (msg.id(), msg.method()) else {
                        continue;
                    };
                    pending.push((
                        id.clone(),
                        script.requests.len(),
                        msg.progress_token(REQUEST_TOKEN),
                    ));
                    times.push(frame.micros);
                    script.requests.push(Recorded {
                        method: method.as_str().to_owned(),
                        params: params_of(&msg),
                        events: Vec::new(),
                    });
                    continue;
                }
                (Direction::ServerToClient, Kind::Response | Kind::Error) => {
                    let Some(at) = pending.iter().position(|(id, ..)| Some(id) == msg.id()) else {
                        continue;
                    };
                    let (_, owner, _) = pending.remove(at);
                    last_answered = Some(owner);
                    owner
                }
                (Direction::ServerToClient, _) => {
                    let token = msg.progress_token(PROGRESS_TOKEN);
                    let by_token = token.and_then(|token| {
                        pending
                            .iter()
                            .find(|(.., t)| t.as_ref() == Some(&token))
                            .map(|(_, owner, _)| *owner)
                    });
                    match by_token
                        .or_else(|| pending.last().map(|(_, owner, _)| *owner))
                        .or(last_answered)
                    {
                        Some(owner) => owner,
                        None => continue,
                    }
                }
                (Direction::ClientToServer, _) => continue,
            };
            script.requests[owner].events.push(Event {
                offset: frame.micros.saturating_sub(times[owner]),
                msg,
            });
        }
        script
    }
}

/// Why a live request matched nothing.
#[derive(Debug)]
pub struct Unmatched {
    /// The closest recorded requests, by index.
    pub candidates: Vec<usize>,
}

/// Matches live requests to recorded ones, by `--match`.
#[derive(Debug)]
pub struct Matcher {
    mode: MatchMode,
    used: Vec<bool>,
    /// The next recorded request, for `sequential` and `strict`.
    cursor: usize,
}

impl Matcher {
    /// A matcher for `script`.
    pub fn new(script: &Script, mode: MatchMode) -> Self {
        Self {
            mode,
            used: vec![false; script.requests.len()],
            cursor: 0,
        }
    }

    /// The recorded request that answers `method` with `params` (without `_meta`).
    pub fn find(
        &mut self,
        script: &Script,
        method: &str,
        params: Option<&Value>,
    ) -> Result<usize, Unmatched> {
        let same = |r: &Recorded| {
            r.method == method && (method == "initialize" || r.params.as_ref() == params)
        };
        let found = match self.mode {
            MatchMode::MethodParams => {
                let mut matching = script
                    .requests
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| same(r))
                    .map(|(i, _)| i);
                let first = matching.clone().find(|i| !self.used[*i]);
                first.or_else(|| matching.next_back())
            }
            MatchMode::Sequential | MatchMode::Strict => {
                let next = script.requests.get(self.cursor);
                let fits = next.is_some_and(|r| {
                    if self.mode == MatchMode::Strict {
                        same(r)
                    } else {
                        r.method == method
                    }
                });
                fits.then(|| {
                    self.cursor += 1;
                    self.cursor - 1
                })
            }
        };
        match found {
            Some(i) => {
                self.used[i] = true;
                Ok(i)
            }
            None => Err(Unmatched {
                candidates: self.closest(script, method, params),
            }),
        }
    }

    /// The recorded requests closest to the live one: for `sequential` and `strict` the one
    /// expected next; otherwise those of the same method, unused first, then with the fewest
    /// differences; failing that, one of each other method.
    fn closest(&self, script: &Script, method: &str, params: Option<&Value>) -> Vec<usize> {
        if self.mode != MatchMode::MethodParams {
            return (self.cursor < script.requests.len())
                .then_some(self.cursor)
                .into_iter()
                .collect();
        }
        let null = Value::Null;
        let mut same: Vec<(bool, usize, usize)> = script
            .requests
            .iter()
            .enumerate()
            .filter(|(_, r)| r.method == method)
            .map(|(i, r)| {
                let distance =
                    differences(r.params.as_ref().unwrap_or(&null), params.unwrap_or(&null)).len();
                (self.used[i], distance, i)
            })
            .collect();
        if same.is_empty() {
            let mut seen = std::collections::HashSet::new();
            return script
                .requests
                .iter()
                .enumerate()
                .filter(|(_, r)| seen.insert(r.method.clone()))
                .map(|(i, _)| i)
                .take(CANDIDATES)
                .collect();
        }
        same.sort_unstable();
        same.into_iter().take(CANDIDATES).map(|(.., i)| i).collect()
    }
}

/// The error for a request nothing matched.
pub(crate) fn unmatched_error(
    script: &Script,
    mode: MatchMode,
    method: &str,
    params: Option<&Value>,
    unmatched: &Unmatched,
) -> ProxyError {
    let shown = params.map_or_else(String::new, |p| format!(" {}", super::diff::short(p, 200)));
    let candidates: Vec<Value> = unmatched
        .candidates
        .iter()
        .map(|&i| {
            let r = &script.requests[i];
            json!({"index": i + 1, "method": r.method, "params": r.params})
        })
        .collect();
    let closest = unmatched
        .candidates
        .iter()
        .map(|&i| {
            let r = &script.requests[i];
            let params = r
                .params
                .as_ref()
                .map_or_else(String::new, |p| format!(" {}", super::diff::short(p, 120)));
            format!("#{} {}{params}", i + 1, r.method)
        })
        .collect::<Vec<_>>()
        .join("; ");
    let closest = if closest.is_empty() {
        "the tape has no more requests".to_owned()
    } else {
        format!("closest recorded: {closest}")
    };
    ProxyError::new(
        ErrorCode::ReplayUnmatched,
        format!(
            "no recorded request matches {method}{shown} (--match {}); {closest}",
            mode.as_str()
        ),
    )
    .with("candidates", Value::Array(candidates))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::tape::{Frame, Header, Meta, Wire};

    fn tape(frames: &[(Direction, u64, &str)]) -> Tape {
        Tape {
            header: Header {
                format: 1,
                id: "t".into(),
                name: None,
                created: String::new(),
                mode: "forward".into(),
                client_transport: "stdio".into(),
                server_transport: "stdio".into(),
                upstream: None,
                session: "s".into(),
            },
            meta: Meta::default(),
            frames: frames
                .iter()
                .map(|(direction, micros, raw)| Frame {
                    micros: *micros,
                    direction: *direction,
                    session: "s".into(),
                    raw: Bytes::copy_from_slice(raw.as_bytes()),
                    transport: Wire::NONE,
                    trace: None,
                })
                .collect(),
            servers: Vec::new(),
            end: None,
            torn: false,
        }
    }

    use Direction::{ClientToServer as C, ServerToClient as S};

    fn script() -> Script {
        Script::from_tape(&tape(&[
            (
                C,
                0,
                r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"clientInfo":{"name":"a"}}}"#,
            ),
            (
                S,
                10,
                r#"{"jsonrpc":"2.0","id":0,"result":{"serverInfo":{"name":"srv"}}}"#,
            ),
            (
                C,
                20,
                r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            ),
            (
                C,
                30,
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"a"},"_meta":{"progressToken":9}}}"#,
            ),
            (
                C,
                31,
                r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"b"}}}"#,
            ),
            (
                S,
                40,
                r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":9,"progress":1}}"#,
            ),
            (S, 50, r#"{"jsonrpc":"2.0","id":2,"result":{"text":"b"}}"#),
            (S, 60, r#"{"jsonrpc":"2.0","id":1,"result":{"text":"a"}}"#),
            (
                S,
                70,
                r#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"#,
            ),
            (
                C,
                80,
                r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"text":"a"}}}"#,
            ),
            (S, 90, r#"{"jsonrpc":"2.0","id":3,"result":{"text":"a2"}}"#),
        ]))
    }

    #[test]
    fn server_messages_go_with_the_request_they_belong_to() {
        let s = script();
        assert_eq!(s.requests.len(), 4);
        let kinds = |i: usize| -> Vec<(u64, String)> {
            s.requests[i]
                .events
                .iter()
                .map(|e| (e.offset, String::from_utf8_lossy(e.msg.raw()).into_owned()))
                .collect()
        };
        // Progress by its token (not the request last sent); the list_changed after the last
        // answer goes with that answer's request.
        let first_call = kinds(1);
        assert_eq!(first_call.len(), 3, "{first_call:?}");
        assert_eq!(first_call[0].0, 10);
        assert!(first_call[0].1.contains("progress"));
        assert!(first_call[1].1.contains(r#""a""#));
        assert!(first_call[2].1.contains("list_changed"));
        assert_eq!(kinds(2).len(), 1);
        assert_eq!(
            s.requests[1].params,
            Some(serde_json::json!({"name":"echo","arguments":{"text":"a"}}))
        );
    }

    #[test]
    fn method_params_matching_uses_each_recording_once_then_the_last_again() {
        let s = script();
        let mut m = Matcher::new(&s, MatchMode::MethodParams);
        let a = serde_json::json!({"name":"echo","arguments":{"text":"a"}});
        assert_eq!(
            m.find(&s, "initialize", Some(&serde_json::json!({"other": 1})))
                .unwrap(),
            0
        );
        assert_eq!(m.find(&s, "tools/call", Some(&a)).unwrap(), 1);
        assert_eq!(m.find(&s, "tools/call", Some(&a)).unwrap(), 3);
        assert_eq!(m.find(&s, "tools/call", Some(&a)).unwrap(), 3);
        let c = serde_json::json!({"name":"echo","arguments":{"text":"c"}});
        let miss = m.find(&s, "tools/call", Some(&c)).unwrap_err();
        // The unused one first, then by fewest differences.
        assert_eq!(miss.candidates, [2, 1, 3]);
        let miss = m.find(&s, "resources/read", None).unwrap_err();
        assert_eq!(miss.candidates, [0, 1], "one per recorded method");
        let error = unmatched_error(
            &s,
            MatchMode::MethodParams,
            "tools/call",
            Some(&c),
            &m.find(&s, "tools/call", Some(&c)).unwrap_err(),
        );
        let text = String::from_utf8(error.to_response(None).to_vec()).unwrap();
        assert!(
            text.contains("-32090") && text.contains("#3 tools/call"),
            "{text}"
        );
    }

    #[test]
    fn sequential_and_strict_follow_the_tape_in_order() {
        let s = script();
        let b = serde_json::json!({"name":"echo","arguments":{"text":"b"}});
        let mut m = Matcher::new(&s, MatchMode::Sequential);
        assert_eq!(m.find(&s, "initialize", None).unwrap(), 0);
        assert_eq!(
            m.find(&s, "tools/call", Some(&b)).unwrap(),
            1,
            "params are not compared"
        );
        assert_eq!(m.find(&s, "ping", None).unwrap_err().candidates, [2]);
        let mut m = Matcher::new(&s, MatchMode::Strict);
        assert_eq!(m.find(&s, "initialize", None).unwrap(), 0);
        assert_eq!(
            m.find(&s, "tools/call", Some(&b)).unwrap_err().candidates,
            [1]
        );
    }
}
