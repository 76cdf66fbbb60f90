//! The official MCP conformance suite (`@modelcontextprotocol/conformance`, pinned in
//! `tests/conformance/`), server scenarios of both protocol eras (`--spec-version 2025-11-25` and
//! `2026-07-28`, `--suite all`), run against our fixture server (tests/peers/conformance_server.py,
//! on the pinned Python SDK) once directly and once through `shadowcat reverse`, in front of the
//! fixture over HTTP and over stdio. The fixture passes every check directly; through the
//! gateway, every check that ran directly must run and end the same way, and nothing may fail
//! that did not fail directly. A difference fails the test, naming the scenario and the check.
//!
//! Installed by `scripts/test.sh` (the suite and the Node 22 it needs, with npm). Without it
//! this test fails with instructions rather than skip.

#![allow(
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_types
)]

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;
use support::Gateway;
use support::sdk::HttpServer;

/// The suite's era versions, each run as its own set of scenarios.
const VERSIONS: [&str; 2] = ["2025-11-25", "2026-07-28"];

/// Checks that cannot apply in front of a stdio server, by spec version and scenario, and why.
/// Every check of a scenario listed here is left out of the stdio comparison.
const NOT_FOR_STDIO: &[(&str, &str, &str)] = &[(
    "2025-11-25",
    "server-sse-polling",
    "the scenario needs the server to close a request's SSE stream mid-call for the client to \
     poll (SEP-1699); a stdio server has no HTTP stream to close, and the gateway, being the \
     HTTP server there, keeps its streams open",
)];

/// `{scenario: {check: status}}`, as tests/peers/conformance_run.py prints it.
type Results = BTreeMap<String, BTreeMap<String, String>>;

/// The pinned suite's Node; fails with instructions if it is not installed.
fn suite_node() -> PathBuf {
    let node = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/conformance/node_modules/.bin/node");
    assert!(
        node.exists(),
        "the conformance suite is not installed ({} is missing): run scripts/test.sh, or \
         npm ci --prefix tests/conformance",
        node.display()
    );
    node
}

/// Runs the suite's server scenarios of `version` against `url`.
fn run_suite(url: &str, version: &str) -> Results {
    let output = Command::new("python3")
        .arg(support::peers().join("conformance_run.py"))
        .args(["--url", url, "--spec-version", version, "--suite", "all"])
        .args(["--node", suite_node().to_str().unwrap()])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run tests/peers/conformance_run.py");
    assert!(
        output.status.success(),
        "the conformance suite did not run against {url} ({version}): {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let parsed: Value = serde_json::from_slice(&output.stdout).expect("the runner's JSON");
    serde_json::from_value(parsed["scenarios"].clone()).expect("scenarios")
}

/// Whether two statuses are the same outcome. INFO is the suite's note, not a verdict: e.g.
/// `server-sse-streams-functional` notes an answer sent as JSON where a server chose SSE,
/// which the gateway does when only the answer arrives (both are the spec's).
fn same_outcome(a: &str, b: &str) -> bool {
    let pass = |s: &str| s == "SUCCESS" || s == "INFO";
    a == b || (pass(a) && pass(b))
}

/// Every way `proxied` differs from `direct` (checks in `skip` left out): a check that ran
/// directly and not through the proxy, or ended another way, or one that failed (or warned)
/// through the proxy only.
fn differences(direct: &Results, proxied: &Results, skip: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for (scenario, checks) in direct {
        if skip.contains(&scenario.as_str()) {
            continue;
        }
        for (check, status) in checks {
            match proxied.get(scenario).and_then(|c| c.get(check)) {
                Some(through) if same_outcome(through, status) => {}
                Some(through) => found.push(format!(
                    "{scenario} / {check}: {status} directly, {through} through the gateway"
                )),
                None => found.push(format!(
                    "{scenario} / {check}: ran directly ({status}), not through the gateway"
                )),
            }
        }
    }
    for (scenario, checks) in proxied {
        for (check, status) in checks {
            let bad = status == "FAILURE" || status == "WARNING";
            let new = direct.get(scenario).and_then(|c| c.get(check)).is_none();
            if bad && new && !skip.contains(&scenario.as_str()) {
                found.push(format!(
                    "{scenario} / {check}: {status} through the gateway only"
                ));
            }
        }
    }
    found
}

#[test]
fn the_conformance_suite_finds_nothing_lost_through_the_gateway() {
    let script = support::peers().join("conformance_server.py");
    let fixture = HttpServer::start_script("2.3.0", script.to_str().unwrap(), &[]);
    let http = Gateway::start(&["--upstream", &fixture.url]);
    let python = support::python("2.3.0");
    let stdio = Gateway::start(&["--", &python, script.to_str().unwrap()]);
    let mut report = Vec::new();
    for version in VERSIONS {
        let direct = run_suite(&fixture.url, version);
        // The reference: our fixture passes every check directly.
        let total: usize = direct.values().map(BTreeMap::len).sum();
        assert!(total > 40, "{version}: only {total} checks ran directly");
        for (scenario, checks) in &direct {
            for (check, status) in checks {
                assert!(
                    status == "SUCCESS" || status == "INFO",
                    "{version}: the fixture itself does not pass {scenario} / {check} ({status})"
                );
            }
        }
        let mut skip = Vec::new();
        for (_, scenario, why) in NOT_FOR_STDIO.iter().filter(|(v, _, _)| *v == version) {
            eprintln!("{version}: {scenario} is not compared over stdio: {why}");
            skip.push(*scenario);
        }
        for (label, gateway, skip) in [("http", &http, &[][..]), ("stdio", &stdio, &skip[..])] {
            let proxied = run_suite(&gateway.url(), version);
            for difference in differences(&direct, &proxied, skip) {
                report.push(format!(
                    "{version} via reverse ({label} upstream): {difference}"
                ));
            }
        }
        eprintln!(
            "{version}: {} scenarios, {total} checks directly",
            direct.len()
        );
    }
    assert!(
        report.is_empty(),
        "the gateway loses what a direct connection has:\n{}",
        report.join("\n")
    );
}

#[test]
fn the_comparison_names_every_kind_of_loss() {
    let results = |pairs: &[(&str, &str, &str)]| -> Results {
        let mut r = Results::new();
        for (scenario, check, status) in pairs {
            r.entry((*scenario).into())
                .or_default()
                .insert((*check).into(), (*status).into());
        }
        r
    };
    let direct = results(&[
        ("a", "x", "SUCCESS"),
        ("a", "y", "SUCCESS"),
        ("b", "z", "INFO"),
        ("b", "v", "SUCCESS"),
        ("b", "u", "SUCCESS"),
    ]);
    let proxied = results(&[
        ("a", "x", "FAILURE"),
        ("b", "z", "SUCCESS"),
        ("b", "w", "WARNING"),
        ("b", "v", "INFO"),
        ("b", "u", "SKIPPED"),
    ]);
    let found = differences(&direct, &proxied, &[]);
    assert_eq!(
        found,
        [
            "a / x: SUCCESS directly, FAILURE through the gateway",
            "a / y: ran directly (SUCCESS), not through the gateway",
            "b / u: SUCCESS directly, SKIPPED through the gateway",
            "b / w: WARNING through the gateway only",
        ]
    );
    assert_eq!(
        differences(&direct, &proxied, &["a", "b"]),
        Vec::<String>::new()
    );
    assert!(differences(&direct, &direct, &[]).is_empty());
}
