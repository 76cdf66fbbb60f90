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

/// Each command's summary in `shadowcat --help` is one line: a summary written over two lines
/// of source came out broken mid-sentence ("each HTTP" / "client in its own session").
#[test]
fn every_command_summary_in_help_is_one_line() {
    let help = text(&shadowcat(&["--help"]).stdout);
    let commands = help
        .split("Commands:\n")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .unwrap_or_else(|| panic!("no command list in:\n{help}"));
    let lines: Vec<&str> = commands.lines().collect();
    assert!(lines.len() >= 8, "{commands}");
    for line in lines {
        assert!(
            line.starts_with("  ") && !line.starts_with("   "),
            "a summary goes on past its line:\n{commands}"
        );
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
    // Every shell the README lists, each with what its completion script must contain.
    for (shell, marker) in [
        ("bash", "_shadowcat()"),
        ("zsh", "#compdef shadowcat"),
        ("fish", "complete -c shadowcat"),
        ("powershell", "Register-ArgumentCompleter"),
        ("elvish", "edit:completion:arg-completer[shadowcat]"),
    ] {
        let out = shadowcat(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        let script = text(&out.stdout);
        assert!(script.contains(marker), "{shell}: {script}");
        // Subcommands are completed too.
        assert!(
            script.contains("reverse") && script.contains("replay"),
            "{shell}"
        );
    }
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(readme.contains("`shadowcat completions <bash|zsh|fish|powershell|elvish>`"));
}

#[test]
fn a_missing_server_command_or_url_is_a_usage_error() {
    for mode in [&["forward", "stdio"][..], &["record"]] {
        let out = shadowcat(mode);
        assert_eq!(out.status.code(), Some(2));
        assert_eq!(
            text(&out.stderr),
            "shadowcat: error: no server to proxy: give its command after --, or its URL with \
             --url\n"
        );
        assert!(out.stdout.is_empty());
    }
}

/// The gateway's server is an --upstream URL or a command, not both; a URL from
/// SHADOWCAT_UPSTREAM with a command is named as such (clap's own message named a flag the
/// user never gave), and an upstream's headers are refused with a command.
#[test]
fn reverse_is_given_one_server() {
    let refused = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = support::command();
        cmd.args(["reverse", "--listen", "127.0.0.1:0"]).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        text(&out.stderr)
    };
    let both = "a server command was also given (after --): give one server, a command or a URL";
    assert_eq!(
        refused(&["--upstream", "http://127.0.0.1:9/mcp", "--", "srv"], &[]),
        format!("shadowcat: error: invalid --upstream: {both}\n")
    );
    assert_eq!(
        refused(
            &["--", "srv"],
            &[("SHADOWCAT_UPSTREAM", "http://127.0.0.1:9/mcp")]
        ),
        format!("shadowcat: error: invalid SHADOWCAT_UPSTREAM: {both}\n")
    );
    assert_eq!(
        refused(&["--upstream-header", "X-A: b", "--", "srv"], &[]),
        "shadowcat: error: invalid --upstream-header: applies to an --upstream server, not to a \
         server command\n"
    );
    assert!(refused(&[], &[]).contains("reverse needs a server"));
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
    // From the environment: the variable is named, not a flag the user never passed.
    let out = support::command()
        .args(["forward", "stdio", "--", "true"])
        .env("SHADOWCAT_SHUTDOWN_TIMEOUT", "whenever")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("shadowcat: error: invalid SHADOWCAT_SHUTDOWN_TIMEOUT: "),
        "{err}"
    );
    assert!(!err.contains("--shutdown-timeout"), "{err}");
    // From the config file: its line and key.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("shadowcat.toml");
    std::fs::write(
        &config,
        "# limits\nlog_level = \"info\"\n\nmax_sessions = \"lots\"\n",
    )
    .unwrap();
    let out = support::command()
        .args([
            "--config",
            config.to_str().unwrap(),
            "forward",
            "stdio",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "shadowcat: error: invalid {}:4: max_sessions: ",
            config.display()
        )),
        "{err}"
    );
    // The variable beats the file, and is named; the flag beats both, and is named.
    let out = support::command()
        .args([
            "--config",
            config.to_str().unwrap(),
            "forward",
            "stdio",
            "--",
            "true",
        ])
        .env("SHADOWCAT_MAX_SESSIONS", "many")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(
        err.starts_with("shadowcat: error: invalid SHADOWCAT_MAX_SESSIONS: "),
        "{err}"
    );
    let out = support::command()
        .args(["--config", config.to_str().unwrap(), "forward", "stdio"])
        .args(["--max-sessions", "several", "--", "true"])
        .env("SHADOWCAT_MAX_SESSIONS", "many")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(
        err.starts_with("shadowcat: error: invalid --max-sessions: "),
        "{err}"
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
        .args([
            "forward",
            "stdio",
            "--",
            "sh",
            "-c",
            "echo the-server-says-hello >&2",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.stdout.is_empty(), "stdout: {}", text(&out.stdout));
    let logged = std::fs::read_to_string(&log).unwrap();
    let first: serde_json::Value = serde_json::from_str(logged.lines().next().unwrap()).unwrap();
    assert!(first["fields"]["message"].is_string(), "{logged}");
    assert!(logged.contains("started the MCP server"));
    // The server's stderr reaches the log file too (a client may hide stderr), as a line of
    // its own, and not our stderr.
    let said = logged
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| l["fields"]["message"] == "server: the-server-says-hello");
    assert!(said.is_some(), "{logged}");
    assert!(
        !text(&out.stderr).contains("the-server-says-hello"),
        "{}",
        text(&out.stderr)
    );
}

/// Every command path of the CLI: `[]` for the top level, then each subcommand, depth first.
fn command_paths(cmd: &clap::Command, prefix: &[String], out: &mut Vec<Vec<String>>) {
    out.push(prefix.to_vec());
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        let mut path = prefix.to_vec();
        path.push(sub.get_name().to_owned());
        command_paths(sub, &path, out);
    }
}

#[test]
fn docs_cli_md_shows_the_current_help_of_every_command() {
    use clap::CommandFactory as _;
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/cli.md")).unwrap();
    // Each section the page has is the current help of its command...
    let sections: Vec<Vec<String>> = docs
        .lines()
        .filter_map(|line| line.strip_prefix("## `shadowcat ")?.strip_suffix("--help`"))
        .map(|path| path.split_whitespace().map(str::to_owned).collect())
        .collect();
    for args in &sections {
        let mut cmd = Command::new(support::shadowcat());
        cmd.args(args).arg("--help").env_remove("COLUMNS");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SHADOWCAT_") {
                cmd.env_remove(key);
            }
        }
        let help = text(&cmd.output().unwrap().stdout);
        let block = format!("```text\n{help}```");
        assert!(
            docs.contains(&block),
            "docs/cli.md is out of date for `shadowcat {} --help`; it should contain:\n{block}",
            args.join(" ")
        );
    }
    // ...and every command that does something has a section (the groups `forward`, `tape` and
    // `rules` only list their subcommands, each of which has its own).
    let mut paths = Vec::new();
    command_paths(&shadowcat::cli::Cli::command(), &[], &mut paths);
    let groups: [&[&str]; 3] = [&["forward"], &["tape"], &["rules"]];
    let wanted: Vec<&Vec<String>> = paths
        .iter()
        .filter(|p| {
            !groups
                .iter()
                .any(|g| p.iter().map(String::as_str).eq(g.iter().copied()))
        })
        .collect();
    for path in &wanted {
        assert!(
            sections.contains(path),
            "docs/cli.md has no section for `shadowcat {} --help` (run scripts/gen-cli-docs.sh)",
            path.join(" ")
        );
    }
    assert_eq!(sections.len(), wanted.len(), "sections: {sections:?}");
    assert_eq!(sections.len(), 16);
}

/// The README's configuration file, as the reverse proxy would run with it: every value it sets
/// is the value in force (and `session list` accepts the same file).
#[test]
fn the_readme_config_example_sets_every_value_it_shows() {
    use clap::Parser as _;
    use shadowcat::config::{AllowedOrigins, ReverseUpstream};
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("```toml\n").expect("README has a TOML example") + "```toml\n".len();
    let example = &readme[start..start + readme[start..].find("```").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shadowcat.toml");
    // Point its data dir somewhere harmless.
    let example = example.replace("/var/lib/shadowcat", dir.path().to_str().unwrap());
    std::fs::write(&path, &example).unwrap();
    let out = shadowcat(&["--config", path.to_str().unwrap(), "session", "list"]);
    assert!(
        out.status.success(),
        "README's config example is refused: {}",
        text(&out.stderr)
    );
    // Values set in this test's own environment would win over the file.
    for (key, _) in std::env::vars_os() {
        assert!(
            !key.to_string_lossy().starts_with("SHADOWCAT_") || key == "SHADOWCAT_TEST_ENV",
            "{key:?} is set"
        );
    }
    let cli = shadowcat::cli::Cli::try_parse_from([
        "shadowcat",
        "--config",
        path.to_str().unwrap(),
        "reverse",
    ])
    .unwrap();
    let (config, mode) = shadowcat::config::configure(cli).unwrap();
    assert_eq!(config.log_level, "info");
    assert_eq!(config.log_format, shadowcat::telemetry::LogFormat::Json);
    assert_eq!(config.max_message_size, 16 * 1024 * 1024);
    assert_eq!(config.sessions.max_pending_requests, 10_000);
    assert_eq!(config.shutdown_timeout, std::time::Duration::from_secs(3));
    assert_eq!(
        config.request_timeout,
        Some(std::time::Duration::from_secs(600))
    );
    assert_eq!(config.data_dir, dir.path());
    assert_eq!(config.session_store, shadowcat::config::StoreKind::Sqlite);
    let shadowcat::config::Mode::Reverse(reverse) = mode else {
        panic!("not the gateway: {mode:?}")
    };
    assert_eq!(reverse.listen.to_string(), "127.0.0.1:8080");
    let ReverseUpstream::Http(upstream) = &reverse.upstream else {
        panic!("not an HTTP upstream")
    };
    assert_eq!(upstream.url.to_string(), "http://127.0.0.1:9000/mcp");
    assert_eq!(upstream.headers["x-api-key"], "change-me");
    assert_eq!(upstream.headers.len(), 1);
    assert_eq!(
        reverse.allowed_origins,
        AllowedOrigins::List(vec!["https://app.example.com".into()])
    );
    assert_eq!(
        reverse.admin_listen.map(|a| a.to_string()).as_deref(),
        Some("127.0.0.1:9090")
    );
    // Every key of the example was looked at above.
    let keys: Vec<&str> = example
        .lines()
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k.trim()))
        .filter(|k| !k.starts_with('#'))
        .collect();
    assert_eq!(
        keys.len(),
        13,
        "a new key in the README's example: {keys:?}"
    );
}

/// Flags beat the environment, which beats the file (README): a message size limit from the
/// environment overrides the file's, and the file's holds without it.
#[test]
fn the_environment_beats_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shadowcat.toml");
    std::fs::write(&path, "max_message_size = \"1KiB\"\n").unwrap();
    let big = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{\"text\":\"{}\"}}}}}}",
        "x".repeat(2048)
    );
    let answer_with = |env: Option<&str>, flag: Option<&str>| {
        let mut cmd = support::command();
        cmd.args(["--config", path.to_str().unwrap()]);
        if let Some(size) = env {
            cmd.env("SHADOWCAT_MAX_MESSAGE_SIZE", size);
        }
        cmd.args(["forward", "stdio"]);
        if let Some(size) = flag {
            cmd.args(["--max-message-size", size]);
        }
        cmd.arg("--").arg(support::fixture());
        let mut proxy = support::Proxy::spawn(cmd);
        proxy.initialize();
        proxy.write_raw(big.as_bytes());
        proxy.write_raw(b"\n");
        let answer = proxy.recv();
        proxy.close_stdin();
        assert!(proxy.wait_exit(support::WAIT).success());
        answer
    };
    let from_file = answer_with(None, None);
    assert_eq!(from_file["error"]["code"], -32080, "{from_file}");
    let from_env = answer_with(Some("1MiB"), None);
    assert!(from_env.get("result").is_some(), "{from_env}");
    let from_flag = answer_with(Some("1KiB"), Some("1MiB"));
    assert!(from_flag.get("result").is_some(), "{from_flag}");
}

/// Every error code docs/errors.md lists is produced by shadowcat in some test through the real
/// binary (these files assert its number), so the table cannot promise what nothing checks.
#[test]
fn every_documented_error_code_is_asserted_by_an_end_to_end_test() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests");
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("cli.rs") {
            text += &std::fs::read_to_string(&path).unwrap();
        }
    }
    let missing: Vec<String> = shadowcat::protocol::ErrorCode::ALL
        .iter()
        .map(|code| code.code().to_string())
        .filter(|code| !text.contains(code.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "no end-to-end test asserts these documented codes: {missing:?}"
    );
}

/// A reader that closes stdout early (`shadowcat completions powershell | head -1`,
/// `shadowcat session list | head`) is no failure: exit 0, nothing on stderr, no panic.
#[test]
fn a_closed_stdout_ends_a_command_quietly_with_exit_0() {
    let data = tempfile::tempdir().unwrap();
    for args in [
        vec!["completions", "powershell"],
        vec!["completions", "bash"],
        vec!["session", "list", "--format", "json"],
    ] {
        let mut child = support::command()
            .args(&args)
            .env("SHADOWCAT_DATA_DIR", data.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The reader is gone before anything is written.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("error"), "{args:?}: {stderr}");
    }
}

/// A fatal error is said once on stderr (not again by the log, which goes there too), and the
/// log at debug level carries no Rust debug dumps.
#[test]
fn a_fatal_error_is_said_once_and_logs_carry_no_debug_dumps() {
    let out = support::command()
        .args(["--log-level", "debug"])
        .args(["session", "list", "--redis-url", "redis://127.0.0.1:1"])
        .env_remove("SHADOWCAT_REDIS_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert_eq!(
        stderr
            .matches("session history in Redis at redis://127.0.0.1:1")
            .count(),
        1,
        "{stderr}"
    );
    // Its cause is said once too.
    for args in [
        &["tape", "show", "/nonexistent/tape.jsonl"][..],
        &["rules", "check", "/nonexistent/rules.yaml"],
    ] {
        let out = shadowcat(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = text(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert_eq!(
            stderr.matches("No such file or directory").count(),
            1,
            "{stderr}"
        );
    }
    let out = support::command()
        .args(["--log-level", "debug", "forward", "stdio", "--", "true"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    let totals = stderr
        .lines()
        .find(|l| l.contains("session totals"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(totals.contains("1 created, 0 open, 1 ended"), "{totals}");
    let exiting = stderr
        .lines()
        .find(|l| l.contains("shadowcat exiting"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        exiting.contains("0 messages to the server, 0 to the client"),
        "{exiting}"
    );
    // No Rust debug dumps of structs or enums.
    for dump in ["Snapshot {", "ServerExited(", "ExitStatus("] {
        assert!(!stderr.contains(dump), "{dump}: {stderr}");
    }
}

/// The options the issue found without a variable or a key now have both: a rate limit from
/// `SHADOWCAT_RATE_LIMIT` and one from the file's `rate_limit` refuse the same third ping;
/// `SHADOWCAT_RECORD` and the file's `record` each write a tape. A misspelt `SHADOWCAT_*`
/// variable is warned about by name.
#[test]
fn rate_limit_and_record_come_from_the_environment_or_the_file_and_typos_are_warned() {
    let dir = tempfile::tempdir().unwrap();
    let run = |env: &[(&str, String)], file: &str| {
        let config = dir.path().join("shadowcat.toml");
        std::fs::write(&config, file).unwrap();
        let mut cmd = support::command();
        cmd.args([
            "--config",
            config.to_str().unwrap(),
            "forward",
            "stdio",
            "--",
        ])
        .arg(support::fixture());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut proxy = support::Proxy::spawn(cmd);
        proxy.initialize();
        let answers: Vec<serde_json::Value> = (1..=3)
            .map(|id| proxy.call(id, "ping", serde_json::json!({})))
            .collect();
        proxy.close_stdin();
        assert!(proxy.wait_exit(support::WAIT).success());
        (answers, proxy.stderr_text())
    };
    let limited = |answers: &[serde_json::Value]| {
        answers
            .iter()
            .map(|a| a["error"]["code"] == -32092)
            .collect::<Vec<_>>()
    };
    let tape_env = dir.path().join("env.jsonl");
    let (answers, stderr) = run(
        &[
            // Two limits, one per line: the second is the one that refuses.
            (
                "SHADOWCAT_RATE_LIMIT",
                "method=9/min,method=ping\nmethod=2/min,method=ping".into(),
            ),
            ("SHADOWCAT_RECORD", tape_env.display().to_string()),
            ("SHADOWCAT_MAX_SESIONS", "5".into()),
        ],
        "",
    );
    assert_eq!(limited(&answers), [false, false, true], "{answers:?}");
    assert!(tape_env.exists(), "{stderr}");
    assert!(
        stderr.contains("SHADOWCAT_MAX_SESIONS is set, but no option reads it (see docs/cli.md)"),
        "{stderr}"
    );
    assert!(!stderr.contains("SHADOWCAT_RATE_LIMIT is set"), "{stderr}");
    let tape_file = dir.path().join("file.jsonl");
    let (answers, stderr) = run(
        &[],
        &format!(
            "rate_limit = [\"method=2/min,method=ping\"]\nrecord = {:?}\n",
            tape_file.display().to_string()
        ),
    );
    assert_eq!(limited(&answers), [false, false, true], "{answers:?}");
    assert!(tape_file.exists(), "{stderr}");
    assert!(!stderr.contains("no option reads it"), "{stderr}");
}
