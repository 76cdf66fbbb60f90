//! The command line: help, version, completions, and clear errors with exit code 2.

// Test code: panics are the failure report.
#![allow(
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_types
)]

mod support;

use std::process::{Command, Output};

fn shadowcat(args: &[&str]) -> Output {
    support::command()
        .args(args)
        .output()
        .expect("run shadowcat")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_explains_forward_stdio() {
    let out = shadowcat(&["forward", "stdio", "--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for needle in [
        "--max-message-size",
        "--shutdown-timeout",
        "--env",
        "--cwd",
        "SHADOWCAT_MAX_MESSAGE_SIZE",
        "[default: 32MiB]",
    ] {
        assert!(help.contains(needle), "help lacks {needle}:\n{help}");
    }
}

#[test]
fn version_and_completions() {
    let out = shadowcat(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        format!("shadowcat {}", env!("CARGO_PKG_VERSION"))
    );
    let out = shadowcat(&["completions", "bash"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("_shadowcat()"));
}

#[test]
fn a_missing_server_command_or_url_is_a_usage_error() {
    let out = shadowcat(&["forward", "stdio"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("required") && stderr.contains("--url <URL>|CMD"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn a_server_that_cannot_start_is_reported_on_stderr() {
    let out = shadowcat(&["forward", "stdio", "--", "/nonexistent/mcp-server"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot start the MCP server")
            && stderr.contains("/nonexistent/mcp-server"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "stdout must carry only MCP");
}

#[test]
fn bad_option_values_name_the_option() {
    let out = shadowcat(&[
        "forward",
        "stdio",
        "--max-message-size",
        "huge",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--max-message-size"),
        "{}",
        text(&out.stderr)
    );
    let out = support::command()
        .args(["forward", "stdio", "--", "true"])
        .env("SHADOWCAT_SHUTDOWN_TIMEOUT", "whenever")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--shutdown-timeout"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_config_file_with_an_unknown_key_is_rejected_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shadowcat.toml");
    std::fs::write(&path, "shutdown_timeout = \"1s\"\nmax_mesage_size = 5\n").unwrap();
    let out = shadowcat(&[
        "--config",
        path.to_str().unwrap(),
        "forward",
        "stdio",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("line 2") && stderr.contains("max_mesage_size"),
        "{stderr}"
    );
}

#[test]
fn logs_go_to_the_log_file_and_never_to_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("shadowcat.log");
    let out = support::command()
        .args([
            "--log-level",
            "debug",
            "--log-format",
            "json",
            "--log-file",
            log.to_str().unwrap(),
        ])
        .args(["forward", "stdio", "--", "true"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.stdout.is_empty(), "stdout: {}", text(&out.stdout));
    let logged = std::fs::read_to_string(&log).unwrap();
    let first: serde_json::Value = serde_json::from_str(logged.lines().next().unwrap()).unwrap();
    assert!(first["fields"]["message"].is_string(), "{logged}");
    assert!(logged.contains("started the MCP server"));
}

#[test]
fn docs_cli_md_shows_the_current_help() {
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/cli.md")).unwrap();
    for args in [
        &["--help"][..],
        &["forward", "stdio", "--help"],
        &["session", "--help"],
        &["session", "list", "--help"],
        &["session", "show", "--help"],
        &["session", "cleanup", "--help"],
        &["completions", "--help"],
    ] {
        let mut cmd = Command::new(support::shadowcat());
        cmd.args(args).env_remove("COLUMNS");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SHADOWCAT_") {
                cmd.env_remove(key);
            }
        }
        let help = text(&cmd.output().unwrap().stdout);
        let block = format!("```text\n{help}```");
        assert!(
            docs.contains(&block),
            "docs/cli.md is out of date for `shadowcat {}`; it should contain:\n{block}",
            args.join(" ")
        );
    }
}

#[test]
fn the_readme_config_example_is_accepted() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("```toml\n").expect("README has a TOML example") + "```toml\n".len();
    let example = &readme[start..start + readme[start..].find("```").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shadowcat.toml");
    // Point its data dir somewhere harmless.
    let example = example.replace("/var/lib/shadowcat", dir.path().to_str().unwrap());
    std::fs::write(&path, example).unwrap();
    let out = shadowcat(&["--config", path.to_str().unwrap(), "session", "list"]);
    assert!(
        out.status.success(),
        "README's config example is refused: {}",
        text(&out.stderr)
    );
}
