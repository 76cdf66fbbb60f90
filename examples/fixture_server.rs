//! A small, fast MCP server over stdio, used by Shadowcat's tests and benches.
//!
//! It is a test fixture, not a product feature: plain blocking std I/O, `serde_json::Value`, no
//! async. It answers `initialize`, `ping`, `tools/list` and `tools/call` for these tools:
//! - `echo {text}`: returns `text`.
//! - `sample {prompt}`: sends the client a `sampling/createMessage` request and returns the text
//!   of the client's answer (a server→client round trip).
//! - `sleep {ms}`: answers after `ms` milliseconds (other requests are served meanwhile).
//! - `crash {code}`: writes a few stderr lines and exits with `code` at once.
//! - `junk`: writes a non-JSON line to stdout, then answers normally.
//! - `bad_response`: answers with a truncated (malformed) JSON line carrying the request id.
//! - `big {bytes}`: returns a text of `bytes` bytes.
//! - `raw_echo`: returns the exact line it received (to prove bytes pass unchanged).
//! - `bad_request`: sends the client a malformed (truncated) `roots/list` request, id `bad-1`.
//! - `notify {text}`: sends a `notifications/message` (logging) with `text`, then answers.
//! - `progress {steps}`: sends `steps` `notifications/progress` for the request's
//!   `_meta.progressToken` (if it has one), then answers.
//! - `stats`: returns what arrived that it did not ask for: responses to unknown ids, the ids of
//!   error responses (e.g. a proxy's answer to `bad_request`), and cancelled request ids.
//!
//! Flags: `--ignore-stdin-eof` keeps running after stdin closes (to test SIGTERM escalation).
//! A changed server, for `tape verify`: `FIXTURE_ECHO_UPPER=1` makes `echo` answer in capitals,
//! `FIXTURE_EXTRA_TOOL=1` lists a tool `added` first.

// A test fixture: panicking when its own stdout breaks is the right end for it, and its one
// dispatch function reads best as one match.
#![allow(clippy::unwrap_used, clippy::too_many_lines, clippy::single_match_else)]

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

type Out = Arc<Mutex<std::io::BufWriter<std::io::Stdout>>>;

fn send(out: &Out, msg: &Value) {
    let mut out = out.lock().unwrap();
    serde_json::to_writer(&mut *out, msg).unwrap();
    out.write_all(b"\n").unwrap();
    out.flush().unwrap();
}

fn send_raw(out: &Out, line: &str) {
    let mut out = out.lock().unwrap();
    out.write_all(line.as_bytes()).unwrap();
    out.write_all(b"\n").unwrap();
    out.flush().unwrap();
}

fn text_result(id: &Value, text: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": {"content": [{"type": "text", "text": text}]}})
}

fn tools() -> Value {
    let tool = |name: &str, desc: &str, props: Value| json!({"name": name, "description": desc, "inputSchema": {"type": "object", "properties": props}});
    let extra = std::env::var_os("FIXTURE_EXTRA_TOOL")
        .map(|_| tool("added", "A tool the recording did not have", json!({})));
    let listed = json!([
        tool(
            "echo",
            "Returns its text",
            json!({"text": {"type": "string"}})
        ),
        tool(
            "sample",
            "Asks the client to sample",
            json!({"prompt": {"type": "string"}})
        ),
        tool(
            "sleep",
            "Answers after ms milliseconds",
            json!({"ms": {"type": "integer"}})
        ),
        tool(
            "crash",
            "Exits the process with code",
            json!({"code": {"type": "integer"}})
        ),
        tool("junk", "Writes a non-JSON line first", json!({})),
        tool(
            "ask_later",
            "Answers, then asks the client for its roots (a request tied to no call)",
            json!({})
        ),
        tool(
            "notify",
            "Sends a logging notification, then answers",
            json!({"text": {"type": "string"}})
        ),
        tool(
            "progress",
            "Reports progress for the request's progressToken, then answers",
            json!({"steps": {"type": "integer"}})
        ),
        tool("bad_response", "Answers with malformed JSON", json!({})),
        tool(
            "big",
            "Returns a text of the given size",
            json!({"bytes": {"type": "integer"}})
        ),
    ]);
    let mut listed = listed.as_array().cloned().unwrap_or_default();
    listed.splice(0..0, extra);
    Value::Array(listed)
}

fn main() {
    let ignore_eof = std::env::args().any(|a| a == "--ignore-stdin-eof");
    let out: Out = Arc::new(Mutex::new(std::io::BufWriter::with_capacity(
        1 << 16,
        std::io::stdout(),
    )));
    // Server→client sampling requests awaiting the client's answer: our id → the tools/call id.
    let mut sampling: HashMap<String, Value> = HashMap::new();
    let mut next_sample = 0u64;
    let mut unexpected_responses = 0u64;
    let mut errors_received: Vec<Value> = Vec::new();
    let mut cancelled: Vec<Value> = Vec::new();
    // Sleeping calls still running; a well-behaved server finishes them before exiting on EOF.
    let mut sleepers = Vec::new();
    let stdin = std::io::stdin();
    let mut line = String::new();
    let mut reader = stdin.lock();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            send(
                &out,
                &json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "Parse error"}}),
            );
            continue;
        };
        let id = msg.get("id").cloned().unwrap_or(Value::Null);
        let Some(method) = msg.get("method").and_then(Value::as_str) else {
            // A response from the client: the answer to a sampling request.
            let key = id.to_string();
            if let Some(call_id) = sampling.remove(&key) {
                let reply = match msg.pointer("/error/message").and_then(Value::as_str) {
                    Some(message) => {
                        let code = msg.pointer("/error/code").cloned().unwrap_or(Value::Null);
                        format!("client error: {message} ({code})")
                    }
                    None => {
                        let text = msg.pointer("/result/content/text").and_then(Value::as_str);
                        format!("client said: {}", text.unwrap_or("<no text>"))
                    }
                };
                send(&out, &text_result(&call_id, &reply));
            } else if msg.get("error").is_some() {
                errors_received.push(id);
            } else {
                unexpected_responses += 1;
            }
            continue;
        };
        if id.is_null() {
            if method == "notifications/cancelled" {
                cancelled.push(
                    msg.pointer("/params/requestId")
                        .cloned()
                        .unwrap_or(Value::Null),
                );
            }
            continue; // notifications need no answer
        }
        match method {
            "initialize" => {
                let version = msg
                    .pointer("/params/protocolVersion")
                    .cloned()
                    .unwrap_or(json!("2025-06-18"));
                send(
                    &out,
                    &json!({"jsonrpc": "2.0", "id": id, "result": {
                        "protocolVersion": version,
                        "capabilities": {"tools": {}},
                        "serverInfo": {"name": "shadowcat-fixture", "version": "1.0.0"}
                    }}),
                );
            }
            "ping" => send(&out, &json!({"jsonrpc": "2.0", "id": id, "result": {}})),
            "tools/list" => send(
                &out,
                &json!({"jsonrpc": "2.0", "id": id, "result": {"tools": tools()}}),
            ),
            "tools/call" => {
                let name = msg
                    .pointer("/params/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let args = msg
                    .pointer("/params/arguments")
                    .cloned()
                    .unwrap_or(json!({}));
                match name {
                    "echo" => {
                        let text = args["text"].as_str().unwrap_or("");
                        let text = match std::env::var_os("FIXTURE_ECHO_UPPER") {
                            Some(_) => text.to_uppercase(),
                            None => text.to_owned(),
                        };
                        send(&out, &text_result(&id, &text));
                    }
                    "sample" => {
                        next_sample += 1;
                        let sample_id = json!(format!("sample-{next_sample}"));
                        sampling.insert(sample_id.to_string(), id);
                        send(
                            &out,
                            &json!({"jsonrpc": "2.0", "id": sample_id, "method": "sampling/createMessage",
                            "params": {"messages": [{"role": "user", "content": {"type": "text", "text": args["prompt"]}}],
                                       "maxTokens": 16}}),
                        );
                    }
                    "sleep" => {
                        let ms = args["ms"].as_u64().unwrap_or(100);
                        let out = out.clone();
                        sleepers.push(std::thread::spawn(move || {
                            std::thread::sleep(Duration::from_millis(ms));
                            send(&out, &text_result(&id, &format!("slept {ms} ms")));
                        }));
                    }
                    "crash" => {
                        eprintln!("fixture: about to crash");
                        eprintln!("fixture: last words before exiting");
                        std::process::exit(
                            i32::try_from(args["code"].as_i64().unwrap_or(3)).unwrap_or(3),
                        );
                    }
                    "ask_later" => {
                        send(&out, &text_result(&id, "will ask"));
                        next_sample += 1;
                        send(
                            &out,
                            &json!({"jsonrpc": "2.0", "id": format!("later-{next_sample}"), "method": "roots/list"}),
                        );
                    }
                    "junk" => {
                        send_raw(&out, "this is not JSON, just a stray log line");
                        send(&out, &text_result(&id, "after junk"));
                    }
                    "bad_response" => send_raw(
                        &out,
                        &format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":{{\"content\":"),
                    ),
                    "raw_echo" => send(&out, &text_result(&id, line.trim_end_matches('\n'))),
                    "bad_request" => {
                        send_raw(
                            &out,
                            r#"{"jsonrpc":"2.0","id":"bad-1","method":"roots/list","params":"#,
                        );
                        send(&out, &text_result(&id, "sent a bad request"));
                    }
                    "stats" => send(
                        &out,
                        &json!({"jsonrpc": "2.0", "id": id, "result": {
                            "content": [{"type": "text", "text": "stats"}],
                            "structuredContent": {"unexpected_responses": unexpected_responses, "errors_received": errors_received, "cancelled": cancelled}
                        }}),
                    ),
                    "notify" => {
                        send(
                            &out,
                            &json!({"jsonrpc": "2.0", "method": "notifications/message",
                                    "params": {"level": "info", "data": args["text"]}}),
                        );
                        send(&out, &text_result(&id, "notified"));
                    }
                    "progress" => {
                        if let Some(token) = msg.pointer("/params/_meta/progressToken") {
                            let steps = args["steps"].as_u64().unwrap_or(3);
                            for step in 1..=steps {
                                send(
                                    &out,
                                    &json!({"jsonrpc": "2.0", "method": "notifications/progress",
                                            "params": {"progressToken": token, "progress": step, "total": steps}}),
                                );
                            }
                        }
                        send(&out, &text_result(&id, "done"));
                    }
                    "big" => {
                        let n =
                            usize::try_from(args["bytes"].as_u64().unwrap_or(1024)).unwrap_or(1024);
                        send(&out, &text_result(&id, &"x".repeat(n)));
                    }
                    other => send(
                        &out,
                        &json!({"jsonrpc": "2.0", "id": id,
                        "error": {"code": -32602, "message": format!("unknown tool {other}")}}),
                    ),
                }
            }
            other => send(
                &out,
                &json!({"jsonrpc": "2.0", "id": id,
                "error": {"code": -32601, "message": format!("method not found: {other}")}}),
            ),
        }
    }
    for sleeper in sleepers {
        let _ = sleeper.join();
    }
    if ignore_eof {
        loop {
            std::thread::sleep(Duration::from_secs(60));
        }
    }
}
