//! `reverse --auth-*`: the gateway as an OAuth 2.1 resource server, against a real issuer
//! (oauth2-mock-server, started by the tests: RSA-signed JWTs and a published JWKS), and with
//! static API keys. Every refusal is checked raw: status, `WWW-Authenticate`, and the body.

#![allow(
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_types
)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::{Value, json};
use support::{Gateway, http_request, mcp_headers};

const AUDIENCE: &str = "https://gateway.example/mcp";

/// The real issuer, driven over its stdin (tests/peers/oauth_issuer.mjs).
struct Issuer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    url: String,
    jwks_uri: String,
    /// Its RFC 8693 token exchange endpoint.
    exchange_uri: String,
}

impl Issuer {
    fn start() -> Self {
        let node = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/conformance/node_modules/.bin/node");
        assert!(
            node.exists(),
            "Node from the test env is missing ({}): run scripts/test.sh",
            node.display()
        );
        let mut child = Command::new(node)
            .arg(support::peers().join("oauth_issuer.mjs"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the OAuth issuer");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let ready: Value = serde_json::from_str(&line).expect("the issuer's ready line");
        Self {
            child,
            stdin,
            stdout,
            url: ready["issuer"].as_str().unwrap().to_owned(),
            jwks_uri: ready["jwks_uri"].as_str().unwrap().to_owned(),
            exchange_uri: ready["exchange_uri"].as_str().unwrap().to_owned(),
        }
    }

    fn send(&mut self, command: &Value) -> Value {
        writeln!(self.stdin, "{command}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).expect("the issuer's answer")
    }

    /// A token for `claims` (on top of `iss`, `iat`, `nbf`, `exp` in an hour).
    fn mint(&mut self, claims: Value) -> String {
        self.mint_with(&json!({ "mint": claims }))
    }

    fn mint_with(&mut self, command: &Value) -> String {
        self.send(command)["token"].as_str().unwrap().to_owned()
    }

    /// A good token for `sub` with `scope`.
    fn token(&mut self, sub: &str, scope: &str) -> String {
        self.mint(json!({"sub": sub, "aud": AUDIENCE, "scope": scope}))
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gateway(issuer: &Issuer, extra: &[&str]) -> Gateway {
    let mut opts = vec![
        "--auth-issuer",
        &issuer.url,
        "--auth-audience",
        AUDIENCE,
        "--auth-jwks-url",
        &issuer.jwks_uri,
    ];
    opts.extend_from_slice(extra);
    Gateway::fixture(&opts)
}

fn initialize_body() -> Vec<u8> {
    json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},
        "clientInfo":{"name":"auth-tests","version":"1"}}})
    .to_string()
    .into_bytes()
}

/// POSTs `body` with `token` (if any) and the session (if any).
fn post(
    gw: &Gateway,
    token: Option<&str>,
    session: Option<&str>,
    body: &[u8],
) -> support::HttpResponse {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut extra: Vec<(&'static str, &str)> = Vec::new();
    if let Some(bearer) = &bearer {
        extra.push(("Authorization", bearer));
    }
    if let Some(session) = session {
        extra.push(("Mcp-Session-Id", session));
    }
    http_request(&gw.addr, "POST", "/mcp", &mcp_headers(&extra), body)
}

fn challenge(r: &support::HttpResponse) -> String {
    r.header("www-authenticate")
        .unwrap_or_else(|| panic!("no WWW-Authenticate: {r:?}"))
        .to_owned()
}

/// A client without a token learns where the metadata is from the 401, the metadata names the
/// issuer, and a good token is let in; the session it opens works with that token.
#[test]
fn a_client_finds_the_issuer_from_the_401_and_gets_in_with_a_token() {
    let mut issuer = Issuer::start();
    let gw = gateway(&issuer, &["--auth-resource", AUDIENCE]);
    let r = post(&gw, None, None, &initialize_body());
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(
        challenge(&r),
        "Bearer resource_metadata=\"https://gateway.example/.well-known/oauth-protected-resource/mcp\""
    );
    assert_eq!(r.json()["error"]["data"]["httpStatus"], 401);
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ] {
        let metadata = http_request(&gw.addr, "GET", path, &[], b"");
        assert_eq!(metadata.status, 200, "{path}: {metadata:?}");
        let document = metadata.json();
        assert_eq!(document["resource"], AUDIENCE);
        assert_eq!(document["authorization_servers"], json!([issuer.url]));
        assert_eq!(document["bearer_methods_supported"], json!(["header"]));
    }
    // Every MCP endpoint is behind the door, the 2024-11-05 ones too.
    for (method, path) in [
        ("GET", "/mcp"),
        ("DELETE", "/mcp"),
        ("GET", "/sse"),
        ("POST", "/message?sessionId=x"),
    ] {
        let r = http_request(&gw.addr, method, path, &mcp_headers(&[]), b"{}");
        assert_eq!(r.status, 401, "{method} {path}: {r:?}");
        assert!(challenge(&r).starts_with("Bearer resource_metadata="));
    }
    let token = issuer.token("alice", "mcp");
    let r = post(&gw, Some(&token), None, &initialize_body());
    assert_eq!(r.status, 200, "{r:?}");
    let session = r.header("mcp-session-id").unwrap().to_owned();
    let call = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"in"}}});
    let r = post(
        &gw,
        Some(&token),
        Some(&session),
        call.to_string().as_bytes(),
    );
    assert_eq!(r.json()["result"]["content"][0]["text"], "in", "{r:?}");
}

/// Every bad token is refused 401 `invalid_token` and nothing reaches the server: expired,
/// another audience, another issuer, no `sub`, unsigned (`alg: none`), HMAC-signed with the
/// issuer's public key, a tampered payload, a key the issuer never published, not a JWT at all.
#[test]
fn bad_tokens_are_refused_with_invalid_token() {
    let mut issuer = Issuer::start();
    let gw = gateway(&issuer, &[]);
    let good = issuer.token("alice", "mcp");
    let (head, rest) = good.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims =
        json!({"iss": issuer.url, "aud": AUDIENCE, "sub": "root", "exp": 4_000_000_000u64});
    let forged_payload = engine.encode(claims.to_string());
    let unknown_kid =
        engine.encode(json!({"typ": "JWT", "alg": "RS256", "kid": "never-published"}).to_string());
    let cases = [
        (
            "expired",
            issuer.mint_with(&json!({"mint": {"sub": "a", "aud": AUDIENCE}, "expiresIn": -600})),
            "expired",
        ),
        (
            "another audience",
            issuer.mint(json!({"sub": "a", "aud": "https://other.example/mcp"})),
            "aud",
        ),
        (
            "another issuer",
            issuer.mint(json!({"sub": "a", "aud": AUDIENCE, "iss": "https://evil.example"})),
            "iss",
        ),
        ("no sub", issuer.mint(json!({"aud": AUDIENCE})), "sub"),
        (
            "alg none",
            issuer.mint_with(&json!({"forge": "none", "claims": {"sub": "a", "aud": AUDIENCE}})),
            "header",
        ),
        (
            "HS256 with the public key",
            issuer.mint_with(&json!({"forge": "hs256", "claims": {"sub": "a", "aud": AUDIENCE}})),
            "HS256",
        ),
        (
            "tampered",
            format!("{head}.{forged_payload}.{signature}"),
            "signature",
        ),
        (
            "unknown key",
            format!("{unknown_kid}.{rest}"),
            "not one of the issuer's",
        ),
        ("not a JWT", "just-a-string".to_owned(), "not a JWT"),
    ];
    for (what, token, says) in cases {
        let r = post(&gw, Some(&token), None, &initialize_body());
        assert_eq!(r.status, 401, "{what}: {r:?}");
        let header = challenge(&r);
        assert!(
            header.contains("error=\"invalid_token\""),
            "{what}: {header}"
        );
        let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains(says), "{what}: {message}");
    }
    assert!(
        support::live_children(gw.child.id()).is_empty(),
        "no server was started"
    );
}

/// A token without a required scope is 403 `insufficient_scope` naming it; with it, it is in.
#[test]
fn a_missing_scope_is_refused_with_insufficient_scope() {
    let mut issuer = Issuer::start();
    let gw = gateway(&issuer, &["--auth-scope", "mcp:tools"]);
    let r = post(
        &gw,
        Some(&issuer.token("bob", "openid")),
        None,
        &initialize_body(),
    );
    assert_eq!(r.status, 403, "{r:?}");
    let header = challenge(&r);
    assert!(header.contains("error=\"insufficient_scope\""), "{header}");
    assert!(header.contains("scope=\"mcp:tools\""), "{header}");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("mcp:tools")
    );
    let r = post(
        &gw,
        Some(&issuer.token("bob", "openid mcp:tools")),
        None,
        &initialize_body(),
    );
    assert_eq!(r.status, 200, "{r:?}");
}

/// The issuer rotates its keys: a token signed with the new key is accepted (the key set is
/// fetched again for it).
#[test]
fn a_rotated_signing_key_is_fetched_when_a_token_names_it() {
    let mut issuer = Issuer::start();
    let gw = gateway(&issuer, &[]);
    assert_eq!(
        post(&gw, Some(&issuer.token("a", "")), None, &initialize_body()).status,
        200
    );
    issuer.send(&json!({"rotate": "second"}));
    let rotated =
        issuer.mint_with(&json!({"mint": {"sub": "a", "aud": AUDIENCE}, "kid": "second"}));
    let r = post(&gw, Some(&rotated), None, &initialize_body());
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        gw.stderr_text()
            .contains("fetching the issuer's keys again")
    );
}

/// A session belongs to the principal that opened it: another principal's token naming it gets
/// 404, as for a session that does not exist; its owner goes on.
#[test]
fn a_session_is_bound_to_the_principal_that_opened_it() {
    let mut issuer = Issuer::start();
    let gw = gateway(&issuer, &["--admin-listen", "127.0.0.1:0"]);
    let alice = issuer.token("alice", "");
    let mallory = issuer.token("mallory", "");
    let r = post(&gw, Some(&alice), None, &initialize_body());
    let session = r.header("mcp-session-id").unwrap().to_owned();
    let ping = json!({"jsonrpc":"2.0","id":2,"method":"ping"}).to_string();
    let r = post(&gw, Some(&mallory), Some(&session), ping.as_bytes());
    assert_eq!(r.status, 404, "{r:?}");
    let r = http_request(
        &gw.addr,
        "DELETE",
        "/mcp",
        &mcp_headers(&[
            ("Authorization", &format!("Bearer {mallory}")),
            ("Mcp-Session-Id", &session),
        ]),
        b"",
    );
    assert_eq!(r.status, 404, "another principal cannot end it: {r:?}");
    let r = post(&gw, Some(&alice), Some(&session), ping.as_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    let metrics = http_request(&gw.admin_addr(), "GET", "/metrics", &[], b"");
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("shadowcat_auth_refusals_total{reason=\"foreign_session\"} 2"),
        "{text}"
    );
}

/// Static API keys: the file holds their hashes; a known key is let in as its name, an unknown
/// one is 401; a file holding a key in the clear is refused at start.
#[test]
fn api_keys_from_a_file_of_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let hash = shadowcat::auth::keys::hash_line("s3cret-ci-key");
    std::fs::write(&keys, format!("# machine clients\nci {hash}\n")).unwrap();
    let gw = Gateway::fixture(&["--api-key-file", keys.to_str().unwrap()]);
    let r = post(&gw, Some("s3cret-ci-key"), None, &initialize_body());
    assert_eq!(r.status, 200, "{r:?}");
    let r = post(&gw, Some("guess"), None, &initialize_body());
    assert_eq!(r.status, 401, "{r:?}");
    assert!(challenge(&r).contains("invalid_token"));
    let metadata = http_request(
        &gw.addr,
        "GET",
        "/.well-known/oauth-protected-resource",
        &[],
        b"",
    );
    assert_eq!(metadata.status, 200);
    assert!(metadata.json().get("authorization_servers").is_none());

    std::fs::write(&keys, "ci s3cret-ci-key\n").unwrap();
    let out = support::command()
        .args([
            "reverse",
            "--listen",
            "127.0.0.1:0",
            "--api-key-file",
            keys.to_str().unwrap(),
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(":1: the key must be given as its SHA-256"),
        "{stderr}"
    );
}

/// Options that cannot work together are refused before anything starts.
#[test]
fn incomplete_auth_options_are_refused() {
    for (args, says) in [
        (
            vec!["--auth-issuer", "https://id.example"],
            "--auth-audience",
        ),
        (vec!["--auth-audience", "x"], "needs --auth-issuer"),
        (
            vec!["--auth-issuer", "ftp://id.example", "--auth-audience", "x"],
            "http://",
        ),
        (vec!["--auth-scope", "mcp"], "--auth-scope"),
        (
            vec![
                "--auth-issuer",
                "https://id.example",
                "--auth-audience",
                "x",
                "--auth-leeway",
                "1h",
            ],
            "--auth-leeway",
        ),
    ] {
        support::assert_reverse_refuses(&args, says);
    }
}

/// The Python SDK 2.3.0 client's own OAuth support (client_credentials) against the gateway:
/// refused 401, it reads our Protected Resource Metadata, finds the issuer there, gets a token
/// for our resource from it, and calls a tool through the gateway.
/// A gateway in front of the fixture on a port picked for its URL, which is the audience its
/// tokens must name; with `opts` besides the issuer's. The gateway and its URL.
fn resource_server(issuer: &Issuer, opts: &[&str]) -> (Gateway, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/mcp");
    let mut cmd = support::command();
    cmd.args(["--log-level", "debug", "reverse", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--auth-issuer", &issuer.url, "--auth-audience", &url])
        .args(["--auth-jwks-url", &issuer.jwks_uri])
        .args(opts)
        .arg("--")
        .arg(support::fixture());
    (Gateway::spawn(cmd), url)
}

/// [`resource_server`], and the Python SDK client (tests/peers/oauth_client.py) run against
/// it: the gateway, and what the client said.
fn sdk_client_through(issuer: &Issuer, opts: &[&str]) -> (Gateway, Value) {
    let (gw, url) = resource_server(issuer, opts);
    let out = Command::new(support::python("2.3.0"))
        .arg(support::peers().join("oauth_client.py"))
        .args([&url, &issuer.url])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.stderr_text()
    );
    let said = serde_json::from_str(stdout.trim()).unwrap();
    (gw, said)
}

#[test]
fn the_python_sdk_client_discovers_the_issuer_and_calls_a_tool() {
    let issuer = Issuer::start();
    let (gw, said) = sdk_client_through(&issuer, &["--auth-scope", "mcp:tools"]);
    assert_eq!(said["text"], "authorized");
    let log = gw.stderr_text();
    assert!(
        log.contains("refused a request without a valid token"),
        "{log}"
    );
}

/// With authentication, `--rate-limit client=…` keys on the principal: two principals behind
/// one address have a budget each, and one principal's budget holds whichever connection it
/// uses.
#[test]
fn rate_limits_per_client_key_on_the_principal() {
    let mut issuer = Issuer::start();
    // `per=subject` is `per=client` by its other name.
    let gw = gateway(&issuer, &["--rate-limit", "subject=2/m,burst=2"]);
    let (alice, bob) = (issuer.token("alice", ""), issuer.token("bob", ""));
    let ping = json!({"jsonrpc":"2.0","id":7,"method":"ping"}).to_string();
    let session = post(&gw, Some(&alice), None, &initialize_body())
        .header("mcp-session-id")
        .unwrap()
        .to_owned();
    assert_eq!(
        post(&gw, Some(&alice), Some(&session), ping.as_bytes()).status,
        200
    );
    let limited = post(&gw, Some(&alice), Some(&session), ping.as_bytes());
    assert_eq!(limited.status, 429, "{limited:?}");
    // Bob, from the same address, has his own budget.
    let r = post(&gw, Some(&bob), None, &initialize_body());
    assert_eq!(r.status, 200, "{r:?}");
}

/// A recorded authenticated session names its principal on its tape (`meta`) and in the
/// session history, and neither holds the token.
#[test]
fn the_principal_is_on_the_tape_and_in_the_history_never_the_token() {
    let mut issuer = Issuer::start();
    let dir = tempfile::tempdir().unwrap();
    let tapes = dir.path().join("tapes");
    let data = dir.path().join("data");
    let token = issuer.token("carol", "mcp");
    let mut cmd = support::command();
    cmd.env("SHADOWCAT_SESSION_STORE", "sqlite")
        .args(["--data-dir", data.to_str().unwrap(), "--log-level", "debug"])
        .args([
            "reverse",
            "--listen",
            "127.0.0.1:0",
            "--record",
            tapes.to_str().unwrap(),
        ])
        .args(["--auth-issuer", &issuer.url, "--auth-audience", AUDIENCE])
        .args(["--auth-jwks-url", &issuer.jwks_uri, "--"])
        .arg(support::fixture());
    let mut gw = Gateway::spawn(cmd);
    let r = post(&gw, Some(&token), None, &initialize_body());
    let session = r.header("mcp-session-id").unwrap().to_owned();
    let call = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}});
    assert_eq!(
        post(
            &gw,
            Some(&token),
            Some(&session),
            call.to_string().as_bytes()
        )
        .status,
        200
    );
    let bearer = format!("Bearer {token}");
    let r = http_request(
        &gw.addr,
        "DELETE",
        "/mcp",
        &mcp_headers(&[("Authorization", &bearer), ("Mcp-Session-Id", &session)]),
        b"",
    );
    assert_eq!(r.status, 200, "{r:?}");
    gw.terminate();
    assert!(gw.wait_exit(std::time::Duration::from_secs(15)).success());
    let principal = format!("{}#carol", issuer.url);
    let files: Vec<_> = std::fs::read_dir(&tapes)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(!text.contains(&token), "the token is on the tape");
    let tape = shadowcat::tape::read(&files[0]).unwrap();
    assert_eq!(tape.meta.principal.as_deref(), Some(principal.as_str()));
    let show = support::command()
        .args([
            "--data-dir",
            data.to_str().unwrap(),
            "session",
            "list",
            "--state",
            "all",
            "--format",
            "json",
        ])
        .env("SHADOWCAT_SESSION_STORE", "sqlite")
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&show.stdout);
    let records: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(records[0]["principal"], principal.as_str(), "{listed}");
    assert_eq!(records.as_array().unwrap().len(), 1, "{listed}");
    assert!(!listed.contains(&token));
}

/// A token is verified in full once and then remembered, but never past its `exp`: the same
/// token, good a moment ago, is refused once it expired.
#[test]
fn a_remembered_token_still_expires() {
    let mut issuer = Issuer::start();
    let gw = gateway(&issuer, &["--auth-leeway", "0"]);
    let token = issuer.mint_with(&json!({"mint": {"sub": "a", "aud": AUDIENCE}, "expiresIn": 2}));
    for _ in 0..3 {
        let r = post(&gw, Some(&token), None, &initialize_body());
        assert_eq!(r.status, 200, "{r:?}");
    }
    std::thread::sleep(std::time::Duration::from_millis(3100));
    let r = post(&gw, Some(&token), None, &initialize_body());
    assert_eq!(r.status, 401, "{r:?}");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
}

/// The admin listener: with `--admin-token-file`, `/readyz` and `/metrics` need that token
/// (`/healthz` stays open); a non-loopback `--admin-listen` without a token, or a short
/// token, is refused at start.
#[test]
fn the_admin_listener_takes_its_own_token() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "admin-0123456789abcdef\n").unwrap();
    let gw = Gateway::fixture(&[
        "--admin-listen",
        "127.0.0.1:0",
        "--admin-token-file",
        token_file.to_str().unwrap(),
    ]);
    let admin = gw.admin_addr();
    assert_eq!(
        http_request(&admin, "GET", "/healthz", &[], b"").status,
        200
    );
    for path in ["/metrics", "/readyz"] {
        let r = http_request(&admin, "GET", path, &[], b"");
        assert_eq!(r.status, 401, "{path}: {r:?}");
        assert!(r.header("www-authenticate").is_some());
        let wrong = [("Authorization", "Bearer admin-0123456789abcdeX".to_owned())];
        assert_eq!(http_request(&admin, "GET", path, &wrong, b"").status, 401);
        let right = [("Authorization", "Bearer admin-0123456789abcdef".to_owned())];
        assert_eq!(
            http_request(&admin, "GET", path, &right, b"").status,
            200,
            "{path}"
        );
    }
    support::assert_reverse_refuses(&["--admin-listen", "0.0.0.0:0"], "--admin-token-file");
    std::fs::write(&token_file, "short\n").unwrap();
    support::assert_reverse_refuses(
        &[
            "--admin-listen",
            "127.0.0.1:0",
            "--admin-token-file",
            token_file.to_str().unwrap(),
        ],
        "at least 16",
    );
}

/// A rule file in a temporary directory (kept as long as the returned guard).
fn rule_file(yaml: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, yaml).unwrap();
    let path = path.to_str().unwrap().to_owned();
    (dir, path)
}

/// Opens a session for `token` and says `notifications/initialized`; its id.
fn open_session(gw: &Gateway, token: &str) -> String {
    let r = post(gw, Some(token), None, &initialize_body());
    assert_eq!(r.status, 200, "{r:?}");
    let session = r.header("mcp-session-id").unwrap().to_owned();
    let note = json!({"jsonrpc":"2.0","method":"notifications/initialized"}).to_string();
    assert_eq!(
        post(gw, Some(token), Some(&session), note.as_bytes()).status,
        202
    );
    session
}

/// The one message answering a POST.
fn answer(r: &support::HttpResponse) -> Value {
    let mut messages = r.messages();
    assert_eq!(messages.len(), 1, "{r:?}");
    messages.remove(0)
}

fn tool_names(gw: &Gateway, token: &str, session: &str) -> Vec<String> {
    let list = json!({"jsonrpc":"2.0","id":5,"method":"tools/list"}).to_string();
    let r = post(gw, Some(token), Some(session), list.as_bytes());
    answer(&r)["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{r:?}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

fn call_tool(gw: &Gateway, token: &str, session: &str, tool: &str) -> support::HttpResponse {
    let call = json!({"jsonrpc":"2.0","id":9,"method":"tools/call",
        "params":{"name": tool, "arguments": {"text": "hi"}}})
    .to_string();
    post(gw, Some(token), Some(session), call.as_bytes())
}

/// Rules see who is calling: a tool hidden from all but a group (a claim kept with
/// `--auth-claim`), a tool one subject may not call; each caller sees and may use what the
/// rules give them.
#[test]
fn rules_decide_by_the_callers_subject_and_claims() {
    let mut issuer = Issuer::start();
    let (_dir, rules) = rule_file(
        "version: 1\nrules:\n\
         - name: crash is for admins\n  match: {tool: crash, not: {claim: {groups: admins}}}\n  hide: true\n\
         - name: bob may not echo\n  match: {tool: echo, subject: bob}\n  block: {message: not for bob}\n\
         - name: calls\n  priority: 9\n  match: {method: tools/call}\n  log: info\n",
    );
    let gw = gateway(&issuer, &["--auth-claim", "groups", "--rules", &rules]);
    let alice = issuer.mint(json!({"sub": "alice", "aud": AUDIENCE, "groups": ["dev", "admins"]}));
    let bob = issuer.mint(json!({"sub": "bob", "aud": AUDIENCE, "groups": ["dev"]}));
    let (a, b) = (open_session(&gw, &alice), open_session(&gw, &bob));
    let (for_alice, for_bob) = (tool_names(&gw, &alice, &a), tool_names(&gw, &bob, &b));
    assert!(for_alice.iter().any(|t| t == "crash"), "{for_alice:?}");
    assert!(!for_bob.iter().any(|t| t == "crash"), "{for_bob:?}");
    assert!(for_bob.iter().any(|t| t == "echo"), "{for_bob:?}");
    let refused = answer(&call_tool(&gw, &bob, &b, "crash"));
    assert_eq!(refused["error"]["code"], -32602, "{refused}");
    let blocked = answer(&call_tool(&gw, &bob, &b, "echo"));
    assert_eq!(blocked["error"]["code"], -32091, "{blocked}");
    assert_eq!(blocked["error"]["message"], "not for bob");
    let echoed = answer(&call_tool(&gw, &alice, &a, "echo"));
    assert_eq!(echoed["result"]["content"][0]["text"], "hi", "{echoed}");
    // A rule's log line names the caller (the log is read as it is written: wait for it).
    let names_alice = |log: &str| {
        log.lines().any(|l| {
            l.contains("rule \"calls\"") && l.contains(&format!("caller=\"{}#alice\"", issuer.url))
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !names_alice(&gw.stderr_text()) {
        assert!(std::time::Instant::now() < deadline, "{}", gw.stderr_text());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A rule on a claim the gateway does not keep cannot be decided: what it would decide is
/// refused (never let through), and the error says which option keeps the claim.
#[test]
fn a_rule_on_a_claim_not_kept_refuses_rather_than_guesses() {
    let mut issuer = Issuer::start();
    let (_dir, rules) = rule_file(
        "version: 1\nrules:\n  - name: other tenants\n    match: {tool: echo, claim: {tenant: other}}\n    block: {}\n",
    );
    let gw = gateway(&issuer, &["--rules", &rules]);
    let token = issuer.mint(json!({"sub": "carol", "aud": AUDIENCE, "tenant": "other"}));
    let session = open_session(&gw, &token);
    let refused = answer(&call_tool(&gw, &token, &session, "echo"));
    assert_eq!(refused["error"]["code"], -32091, "{refused}");
    let detail = refused["error"]["data"]["detail"].as_str().unwrap();
    assert!(detail.contains("--auth-claim tenant"), "{detail}");
}

/// `require_scope:` on a tool: a call with a token without the scope is answered 403
/// `insufficient_scope` with the challenge naming the scopes to ask for (those the token has,
/// and the one missing); the same caller with a token that has it gets through, in the same
/// session.
#[test]
fn a_tool_needing_a_scope_is_refused_403_until_the_token_has_it() {
    let mut issuer = Issuer::start();
    let (_dir, rules) = rule_file(
        "version: 1\nrules:\n  - name: echo writes\n    match: {tool: echo}\n    require_scope: 'files:write'\n",
    );
    let gw = gateway(
        &issuer,
        &[
            "--auth-scope",
            "mcp:tools",
            "--auth-resource",
            AUDIENCE,
            "--rules",
            &rules,
            "--admin-listen",
            "127.0.0.1:0",
        ],
    );
    let reader = issuer.token("dana", "mcp:tools");
    let session = open_session(&gw, &reader);
    let r = call_tool(&gw, &reader, &session, "echo");
    assert_eq!(r.status, 403, "{r:?}");
    let challenge = challenge(&r);
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(
        challenge.contains("scope=\"mcp:tools files:write\""),
        "{challenge}"
    );
    assert!(
        challenge.contains(
            "resource_metadata=\"https://gateway.example/.well-known/oauth-protected-resource/mcp\""
        ),
        "{challenge}"
    );
    let refused = answer(&r);
    assert_eq!(refused["error"]["code"], -32095, "{refused}");
    assert_eq!(refused["error"]["data"]["missing"], json!(["files:write"]));
    // Other tools need no more than the gateway does.
    let r = call_tool(&gw, &reader, &session, "sleep");
    assert_eq!(r.status, 200, "{r:?}");
    let writer = issuer.token("dana", "mcp:tools files:write");
    let r = call_tool(&gw, &writer, &session, "echo");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(answer(&r)["result"]["content"][0]["text"], "hi");
    // Refusals at the door are counted by reason.
    assert_eq!(post(&gw, None, None, &initialize_body()).status, 401);
    let metrics = http_request(&gw.admin_addr(), "GET", "/metrics", &[], b"");
    let text = String::from_utf8_lossy(&metrics.body);
    for (reason, count) in [("step_up", 1), ("missing", 1), ("invalid_token", 0)] {
        let line = format!("shadowcat_auth_refusals_total{{reason=\"{reason}\"}} {count}");
        assert!(text.contains(&line), "{line}\n{text}");
    }
}

/// The Python SDK's own OAuth support steps up: refused 403 `insufficient_scope` for a tool,
/// it gets a token with the scopes the challenge names and calls the tool again.
#[test]
fn the_python_sdk_client_steps_up_to_the_scope_a_tool_needs() {
    let issuer = Issuer::start();
    let (_dir, rules) = rule_file(
        "version: 1\nrules:\n  - name: echo writes\n    match: {tool: echo}\n    require_scope: 'files:write'\n",
    );
    let (gw, said) = sdk_client_through(&issuer, &["--auth-scope", "mcp:tools", "--rules", &rules]);
    assert_eq!(said["text"], "authorized");
    let log = gw.stderr_text();
    assert!(log.contains("asking the client to step up"), "{log}");
}

impl Issuer {
    /// Its token endpoint, on 127.0.0.1 where it listens.
    fn token_url(&self) -> String {
        format!("{}/token", self.url.replace("//localhost:", "//127.0.0.1:"))
    }

    /// How many tokens its token endpoint gave.
    fn granted(&mut self) -> u64 {
        self.send(&json!({"granted": true}))["granted"]
            .as_u64()
            .unwrap()
    }
}

/// A file holding `text`, in `dir`.
fn write_file(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// The options that have a gateway get its upstream's tokens with the client-credentials
/// grant, as client `id`.
fn grant_options(issuer: &Issuer, dir: &tempfile::TempDir, id: &str) -> Vec<String> {
    [
        "--upstream-token-url",
        &issuer.token_url(),
        "--upstream-client-id",
        id,
        "--upstream-client-secret-file",
        &write_file(dir, "secret", "s3cret\n"),
        "--upstream-scope",
        "mcp:tools",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The gateway in front of an authenticating upstream gets its own token there with the
/// client-credentials grant (for the upstream's URL as the resource), renews it before it
/// expires, and never passes its client's token on: the upstream sees the gateway's identity.
#[test]
fn the_gateway_gets_its_upstream_a_token_with_the_client_credentials_grant() {
    let mut issuer = Issuer::start();
    issuer.send(&json!({"lifetime": 2}));
    let (upstream, url) = resource_server(
        &issuer,
        &["--auth-scope", "mcp:tools", "--auth-leeway", "1s"],
    );
    let dir = tempfile::tempdir().unwrap();
    let mut opts = vec!["--upstream".to_owned(), url];
    opts.extend(grant_options(&issuer, &dir, "front-gateway"));
    let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
    let gw = Gateway::start(&opts);
    let session = gw.initialize();
    // Calls over three lifetimes of the token: each needs a token that has not expired.
    let started = std::time::Instant::now();
    let mut calls = 0;
    while started.elapsed() < std::time::Duration::from_secs(5) {
        let r = gw.post(Some(&session), &call_body("granted"));
        let answer = answer(&r);
        assert_eq!(
            answer["result"]["content"][0]["text"],
            "granted",
            "{answer}\n{}",
            gw.stderr_text()
        );
        calls += 1;
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert!(calls >= 10);
    let granted = issuer.granted();
    assert!(
        granted >= 3,
        "the token was renewed before it expired: {granted} grants"
    );
    let log = upstream.stderr_text();
    assert!(
        log.contains("#front-gateway"),
        "the upstream saw the gateway's identity:\n{log}"
    );
}

/// The bridge (`forward stdio --url`) gets the token for a stdio client that cannot do OAuth.
#[test]
fn the_bridge_gets_a_stdio_client_a_token_with_the_client_credentials_grant() {
    let issuer = Issuer::start();
    let (upstream, url) = resource_server(&issuer, &["--auth-scope", "mcp:tools"]);
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = support::command();
    cmd.args(["--log-level", "debug", "forward", "stdio", "--url", &url])
        .args(grant_options(&issuer, &dir, "stdio-bridge"));
    let mut bridge = support::Proxy::spawn(cmd);
    bridge.initialize();
    let answer = bridge.call(
        2,
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "bridged"}}),
    );
    assert_eq!(
        answer["result"]["content"][0]["text"],
        "bridged",
        "{answer}\n{}",
        bridge.stderr_text()
    );
    assert!(upstream.stderr_text().contains("#stdio-bridge"));
}

/// A grant the authorization server refuses, or options that do not make one, keep the gateway
/// from starting with an error that says which.
#[test]
fn upstream_credential_options_are_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write_file(&dir, "secret", "s");
    let empty = write_file(&dir, "empty", "\n");
    for (args, says) in [
        (
            vec![
                "--upstream",
                "http://127.0.0.1:9/mcp",
                "--upstream-client-id",
                "a",
            ],
            "--upstream-client-id needs --upstream-token-url",
        ),
        (
            vec![
                "--upstream",
                "http://127.0.0.1:9/mcp",
                "--upstream-token-url",
                "http://127.0.0.1:9/token",
                "--upstream-client-id",
                "a",
            ],
            "--upstream-token-url needs --upstream-client-secret-file",
        ),
        (
            vec![
                "--upstream",
                "http://127.0.0.1:9/mcp",
                "--upstream-token-url",
                "ftp://x/token",
                "--upstream-client-id",
                "a",
                "--upstream-client-secret-file",
                &secret,
            ],
            "expected an http:// or https:// URL",
        ),
        (
            vec![
                "--upstream",
                "http://127.0.0.1:9/mcp",
                "--upstream-token-url",
                "http://127.0.0.1:9/token",
                "--upstream-client-id",
                "a",
                "--upstream-client-secret-file",
                &empty,
            ],
            "is empty",
        ),
        (
            vec![
                "--upstream",
                "http://127.0.0.1:9/mcp",
                "--bearer-token-file",
                &secret,
                "--upstream-header",
                "Authorization: Bearer x",
            ],
            "--bearer-token-file and an Authorization header both give",
        ),
        (
            vec!["--bearer-token-file", &secret, "--", "true"],
            "applies to an --upstream server, not to a server command",
        ),
        (
            vec![
                "--upstream",
                "http://127.0.0.1:9/mcp",
                "--upstream-token-exchange",
            ],
            "--upstream-token-exchange needs --upstream-token-url",
        ),
        (
            vec![
                "--upstream",
                "http://127.0.0.1:9/mcp",
                "--upstream-token-url",
                "http://id.example/token",
                "--upstream-client-id",
                "a",
                "--upstream-client-secret-file",
                &secret,
            ],
            "would cross the network in clear text",
        ),
        (
            vec![
                "--upstream",
                "http://127.0.0.1:9/mcp",
                "--upstream-token-url",
                "http://127.0.0.1:9/token",
                "--upstream-client-id",
                "a",
                "--upstream-client-secret-file",
                &secret,
                "--upstream-token-exchange",
                "--auth-issuer",
                "https://id.example",
                "--auth-audience",
                "x",
                "--api-key-file",
                &secret,
            ],
            "--upstream-token-exchange and --api-key-file exclude each other",
        ),
        (
            vec![
                "--upstream",
                "http://127.0.0.1:9/mcp",
                "--upstream-token-url",
                "http://127.0.0.1:9/token",
                "--upstream-client-id",
                "a",
                "--upstream-client-secret-file",
                &secret,
                "--upstream-token-exchange",
            ],
            "--upstream-token-exchange needs --auth-issuer",
        ),
        (
            vec![
                "--upstream",
                "http://127.0.0.1:9/mcp",
                "--bearer-token-file",
                "/nonexistent/token",
            ],
            "cannot read the token file /nonexistent/token",
        ),
    ] {
        if args.contains(&"--") {
            let (before, _) = args.split_at(args.iter().position(|a| *a == "--").unwrap());
            support::assert_reverse_refuses(before, says);
            continue;
        }
        let out = support::command()
            .arg("reverse")
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    // The bridge's stdio client presents no token to exchange.
    let out = support::command()
        .args(["forward", "stdio", "--url", "http://127.0.0.1:9/mcp"])
        .args(["--upstream-token-url", "http://127.0.0.1:9/token"])
        .args([
            "--upstream-client-id",
            "a",
            "--upstream-client-secret-file",
            &secret,
        ])
        .arg("--upstream-token-exchange")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("a stdio client presents none"));
    // A server command has no HTTP server to give credentials to.
    let out = support::command()
        .args([
            "forward",
            "stdio",
            "--bearer-token-file",
            &secret,
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("applies to a --url server"));
}

/// A `tools/call` of `echo` saying `text`.
fn call_body(text: &str) -> Value {
    json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params": support::tool("echo", json!({"text": text}))})
}

/// A token file: its token is sent to the upstream; when the upstream refuses it (401) the
/// file is read again and the request sent once more, so a rotated secret is picked up
/// without a restart.
#[test]
fn a_token_file_is_read_again_when_the_upstream_refuses_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let key = "front-key-0123456789";
    let keys = write_file(
        &dir,
        "keys",
        &format!("front {}\n", shadowcat::auth::keys::hash_line(key)),
    );
    let upstream = Gateway::fixture(&["--api-key-file", &keys]);
    let token = write_file(&dir, "token", "an-old-key\n");
    let url = format!("http://{}/mcp", upstream.addr);
    let gw = Gateway::start(&["--upstream", &url, "--bearer-token-file", &token]);
    std::fs::write(dir.path().join("token"), format!("{key}\n")).unwrap();
    let session = gw.initialize();
    let r = gw.post(Some(&session), &call_body("rotated"));
    assert_eq!(
        answer(&r)["result"]["content"][0]["text"],
        "rotated",
        "{r:?}"
    );
    assert!(gw.stderr_text().contains("sending again with renewed ones"));
    assert!(upstream.stderr_text().contains("key:front"));
}

/// RFC 8693 token exchange: each caller's token is traded at the authorization server for one
/// for the upstream, which then sees the caller (not the gateway) as the principal; the trade
/// is remembered for the caller's token, and a caller the server will not trade for is
/// refused 403 before anything reaches the upstream.
#[test]
fn callers_tokens_are_exchanged_for_the_upstreams() {
    let mut issuer = Issuer::start();
    issuer.send(&json!({"refuse_exchange": "bob"}));
    let (upstream, url) = resource_server(&issuer, &["--auth-scope", "mcp:tools"]);
    let dir = tempfile::tempdir().unwrap();
    let secret = write_file(&dir, "secret", "s3cret\n");
    let gw = Gateway::start(&[
        "--auth-issuer",
        &issuer.url,
        "--auth-audience",
        AUDIENCE,
        "--auth-jwks-url",
        &issuer.jwks_uri,
        "--upstream",
        &url,
        "--upstream-token-url",
        &issuer.exchange_uri,
        "--upstream-client-id",
        "front-gateway",
        "--upstream-client-secret-file",
        &secret,
        "--upstream-scope",
        "mcp:tools",
        "--upstream-token-exchange",
    ]);
    let alice = issuer.token("alice", "mcp");
    let session = open_session(&gw, &alice);
    let echoed = answer(&call_tool(&gw, &alice, &session, "echo"));
    assert_eq!(
        echoed["result"]["content"][0]["text"],
        "hi",
        "{echoed}\n{}",
        gw.stderr_text()
    );
    assert_eq!(
        issuer.send(&json!({"exchanged": true}))["exchanged"],
        1,
        "one exchange for the caller's token, remembered for its other requests"
    );
    let log = upstream.stderr_text();
    assert!(
        log.contains("#alice"),
        "the upstream saw the caller:\n{log}"
    );
    assert!(!log.contains("#front-gateway"), "{log}");
    let bob = issuer.token("bob", "mcp");
    for _ in 0..3 {
        let r = post(&gw, Some(&bob), None, &initialize_body());
        assert_eq!(r.status, 403, "{r:?}");
        let said = String::from_utf8_lossy(&r.body);
        assert!(said.contains("bob may not reach that resource"), "{said}");
    }
    assert_eq!(
        issuer.send(&json!({"exchanged": true}))["asked"],
        2,
        "a refused token is refused again without asking the server"
    );
}
