//! The official Rust SDK (`rmcp`, pinned) as the client, through `shadowcat forward stdio`: its
//! whole session (era detection, initialize, tools/list, tools/call, a server→client sampling
//! request it answers with an error) must look the same with and without shadowcat. And as the
//! server (`examples/rmcp_server.rs`): an rmcp client and an rmcp server, through shadowcat.

// Test code: panics are the failure report.
#![allow(
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_types
)]

mod support;

use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::TokioChildProcess;
use serde_json::{Value, json};
use tokio::process::Command;

fn args(value: Value) -> serde_json::Map<String, Value> {
    value.as_object().unwrap().clone()
}

/// An rmcp client connected to `command`: the client, the server's info and its tools' names.
async fn connect(
    mut command: Command,
) -> (
    rmcp::service::RunningService<rmcp::RoleClient, ()>,
    Value,
    Vec<String>,
) {
    command.stderr(std::process::Stdio::null());
    let client = ().serve(TokioChildProcess::new(command).unwrap()).await.expect("rmcp handshake");
    let info = serde_json::to_value(client.peer_info().expect("server info").as_ref()).unwrap();
    let mut tools: Vec<String> = client
        .list_all_tools()
        .await
        .unwrap()
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    tools.sort();
    (client, info, tools)
}

/// The `echo` tool's answer to `text`.
async fn echo(client: &rmcp::service::RunningService<rmcp::RoleClient, ()>, text: &str) -> Value {
    let answer = client
        .call_tool(CallToolRequestParams::new("echo").with_arguments(args(json!({"text": text}))))
        .await
        .unwrap();
    serde_json::to_value(&answer).unwrap()
}

/// One rmcp client session against `command`; a summary of everything it saw.
async fn session(command: Command) -> Value {
    let (client, info, tools) = connect(command).await;
    let echo = echo(&client, "through rmcp").await;
    // rmcp's default client handler declines sampling; the fixture reports the client's error.
    let sample = client
        .call_tool(
            CallToolRequestParams::new("sample").with_arguments(args(json!({"prompt": "hi"}))),
        )
        .await
        .unwrap();
    client.cancel().await.unwrap();
    json!({
        "info": info,
        "tools": tools,
        "echo": echo,
        "sample": serde_json::to_value(&sample).unwrap(),
    })
}

/// `shadowcat forward stdio -- <server>`.
fn through_shadowcat(server: &std::path::Path) -> Command {
    let mut proxied = Command::from(support::command());
    proxied.args(["forward", "stdio", "--"]).arg(server);
    proxied
}

#[tokio::test]
async fn an_rmcp_client_sees_the_same_session_through_shadowcat() {
    let fixture = support::fixture();
    let direct = session(Command::new(&fixture)).await;
    let proxied = session(through_shadowcat(&fixture)).await;
    assert_eq!(
        direct["echo"]["content"][0]["text"], "through rmcp",
        "{direct}"
    );
    let sample = direct["sample"]["content"][0]["text"].as_str().unwrap();
    assert!(
        sample.starts_with("client "),
        "the sampling round trip did not happen: {sample}"
    );
    assert_eq!(direct, proxied);
}

/// rmcp asks for protocol 2026-07-28 in its `initialize`. Through `forward stdio --url` to the
/// Python SDK 2.3.0 HTTP server (dual-era), its session must be what it is with the same server
/// over stdio: the bridge must not turn the handshake into a stateless request by sending
/// `MCP-Protocol-Version` with it.
#[tokio::test]
async fn an_rmcp_client_reaches_a_python_http_server_through_the_bridge() {
    use support::sdk::{HttpServer, server_script};
    let summary = |value: Value| {
        json!({
            "server": value["info"]["serverInfo"]["name"],
            "version": value["info"]["protocolVersion"],
            "tools": value["tools"],
            "echo": value["echo"],
        })
    };
    async fn calls(command: Command) -> Value {
        let (client, info, tools) = connect(command).await;
        let echo = echo(&client, "bridged").await;
        client.cancel().await.unwrap();
        json!({"info": info, "tools": tools, "echo": echo})
    }
    let mut direct = Command::new(support::python("2.3.0"));
    direct.arg(server_script("2.3.0"));
    let direct = summary(calls(direct).await);
    let server = HttpServer::start("2.3.0", &[]);
    let mut bridged = Command::from(support::command());
    bridged.args(["forward", "stdio", "--url", &server.url]);
    let bridged = summary(calls(bridged).await);
    assert_eq!(direct["echo"]["content"][0]["text"], "bridged", "{direct}");
    assert!(direct["tools"].as_array().unwrap().len() > 3, "{direct}");
    assert_eq!(direct, bridged);
}

/// An rmcp client against the rmcp server (`examples/rmcp_server.rs`): tools, prompts and
/// resources, the same with and without `shadowcat forward stdio` between them.
async fn rmcp_to_rmcp(command: Command) -> Value {
    use rmcp::model::{GetPromptRequestParams, ReadResourceRequestParams};
    let (client, info, tools) = connect(command).await;
    let echo = echo(&client, "rust to rust").await;
    let add = client
        .call_tool(CallToolRequestParams::new("add").with_arguments(args(json!({"a": 40, "b": 2}))))
        .await
        .unwrap();
    let prompts = client.list_all_prompts().await.unwrap();
    let greeting = client
        .get_prompt(
            GetPromptRequestParams::new("greet").with_arguments(args(json!({"name": "Ada"}))),
        )
        .await
        .unwrap();
    let resources = client.list_all_resources().await.unwrap();
    let memo = client
        .read_resource(ReadResourceRequestParams::new("memo://greeting"))
        .await
        .unwrap();
    client.cancel().await.unwrap();
    json!({
        "info": info,
        "tools": tools,
        "echo": echo,
        "add": serde_json::to_value(&add).unwrap(),
        "prompts": serde_json::to_value(&prompts).unwrap(),
        "greeting": serde_json::to_value(&greeting).unwrap(),
        "resources": serde_json::to_value(&resources).unwrap(),
        "memo": serde_json::to_value(&memo).unwrap(),
    })
}

#[tokio::test]
async fn an_rmcp_client_and_an_rmcp_server_see_the_same_session_through_shadowcat() {
    let server = support::rmcp_server();
    let direct = rmcp_to_rmcp(Command::new(&server)).await;
    let proxied = rmcp_to_rmcp(through_shadowcat(&server)).await;
    assert_eq!(
        direct["info"]["serverInfo"]["name"], "rmcp-example-server",
        "{direct}"
    );
    assert_eq!(direct["tools"], json!(["add", "echo"]), "{direct}");
    assert_eq!(
        direct["echo"]["content"][0]["text"], "rust to rust",
        "{direct}"
    );
    assert_eq!(direct["add"]["content"][0]["text"], "42", "{direct}");
    assert!(
        direct["greeting"].to_string().contains("Please greet Ada."),
        "{direct}"
    );
    assert!(
        direct["memo"]
            .to_string()
            .contains("Hello from the rmcp example server."),
        "{direct}"
    );
    assert_eq!(direct, proxied, "different through shadowcat");
}
