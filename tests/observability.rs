//! docs/observability.md lists every metric family the gateway's `/metrics` serves, and only
//! those: scraped from a gateway that has had traffic through rules and a rate limit.

#![allow(
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_types
)]

mod support;

use serde_json::json;
use support::{Gateway, http_request};

#[test]
fn every_metric_served_is_documented_and_every_documented_one_exists() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(
        &rules,
        "version: 1\nrules:\n  - name: calls\n    match: {method: tools/call}\n    log: debug\n",
    )
    .unwrap();
    let gw = Gateway::fixture(&[
        "--admin-listen",
        "127.0.0.1:0",
        "--rules",
        rules.to_str().unwrap(),
        "--rate-limit",
        "client=100/s",
    ]);
    let session = gw.initialize();
    let call = json!({"jsonrpc":"2.0","id":2,"method":"tools/call",
        "params":{"name":"echo","arguments":{"text":"x"}}});
    assert_eq!(gw.post(Some(&session), &call).status, 200);
    let metrics = http_request(&gw.admin_addr(), "GET", "/metrics", &[], b"");
    let served: Vec<String> = String::from_utf8_lossy(&metrics.body)
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    for family in [
        "shadowcat_requests",
        "shadowcat_request_duration_seconds",
        "shadowcat_rule_actions",
        "shadowcat_rate_limit_checks",
        "shadowcat_sessions_open",
        "mcp_server_operation_duration_seconds",
        "mcp_client_operation_duration_seconds",
        "mcp_server_session_duration_seconds",
    ] {
        assert!(served.iter().any(|s| s == family), "{family}: {served:?}");
    }
    // The conventions' histograms counted the call, as the server and as the client.
    let text = String::from_utf8_lossy(&metrics.body);
    for family in [
        "mcp_server_operation_duration_seconds",
        "mcp_client_operation_duration_seconds",
    ] {
        let count = format!("{family}_count{{mcp_method_name=\"tools/call\",error_type=\"\"}} 1");
        assert!(text.contains(&count), "{count}: {text}");
    }
    let docs = include_str!("../docs/observability.md");
    for name in &served {
        assert!(
            docs.contains(&format!("`{name}`")),
            "/metrics serves {name}, which docs/observability.md does not list"
        );
    }
    // The families registered, and those the scrape-time collectors encode.
    let telemetry = [
        include_str!("../src/telemetry.rs"),
        include_str!("../src/telemetry/collectors.rs"),
    ]
    .concat();
    // The metric tables' first column.
    let documented = docs
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
        .filter(|w| w.starts_with("shadowcat_") || w.starts_with("mcp_"));
    for name in documented {
        // A family registered with a unit is named without it in the code.
        let name = name
            .strip_suffix("_seconds")
            .filter(|n| n.starts_with("mcp_"))
            .unwrap_or(name);
        assert!(
            telemetry.contains(&format!("\"{name}\"")),
            "docs/observability.md lists {name}, which the code does not have"
        );
    }
}
