//! Golden tests for `shadowcat rules check` and `shadowcat rules test`: the binary's output
//! for the files in tests/golden/rules/, byte for byte. `demo.jsonl` there is a real recording
//! (the Python SDK client and server through `shadowcat record`).
//!
//! After an intended change of output, regenerate with
//! `UPDATE_GOLDEN=1 cargo test --test rules_cli` and review the diff.

#![allow(clippy::pedantic, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/rules")
}

fn shadowcat(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shadowcat"))
        .args(args)
        .current_dir(cwd)
        .env_remove("SHADOWCAT_CONFIG")
        .env_remove("SHADOWCAT_RULES")
        .env_remove("SHADOWCAT_RULES_MODE")
        .env("SHADOWCAT_LOG_LEVEL", "error")
        .output()
        .expect("run shadowcat")
}

/// Compares `actual` with the golden file `name` (or rewrites it under UPDATE_GOLDEN=1, which
/// CI refuses: there it would turn every golden test into one that cannot fail).
fn assert_golden(name: &str, actual: &str) {
    let path = golden_dir().join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        assert!(
            std::env::var_os("CI").is_none(),
            "UPDATE_GOLDEN is set under CI: golden files are compared there, never rewritten"
        );
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "{} differs from the output, first at line {}:\n--- expected\n{}\n--- actual\n{}\n\
             (UPDATE_GOLDEN=1 cargo test --test rules_cli rewrites it)",
            path.display(),
            first + 1,
            expected.lines().nth(first).unwrap_or("(end)"),
            actual.lines().nth(first).unwrap_or("(end)"),
        );
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[test]
fn rules_check_gives_each_bad_file_s_position_and_exits_1() {
    let dir = golden_dir().join("bad");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert!(files.len() >= 15, "{files:?}");
    let mut transcript = String::new();
    for file in &files {
        let out = shadowcat(&dir, &["rules", "check", file]);
        assert_eq!(out.status.code(), Some(1), "{file}: {out:?}");
        assert!(out.stdout.is_empty(), "{file}: {out:?}");
        let stderr = text(&out.stderr);
        // One line: FILE:LINE:COLUMN: what is wrong.
        assert_eq!(stderr.lines().count(), 1, "{file}: {stderr}");
        let position = format!("shadowcat: {file}:");
        let rest = stderr
            .strip_prefix(&position)
            .unwrap_or_else(|| panic!("{stderr}"));
        let mut parts = rest.splitn(3, ':');
        for part in [parts.next(), parts.next()] {
            let n: usize = part.unwrap().parse().unwrap_or_else(|_| panic!("{stderr}"));
            assert!(n >= 1, "{file}: no position in {stderr}");
        }
        transcript.push_str(&format!(
            "$ shadowcat rules check {file}\n{stderr}exit 1\n\n"
        ));
    }
    assert_golden("check-errors.txt", &transcript);
}

#[test]
fn rules_check_lists_a_valid_file_s_rules_in_the_order_they_run() {
    let out = shadowcat(&golden_dir(), &["rules", "check", "rules.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    assert_golden("check.txt", &text(&out.stdout));
}

#[test]
fn rules_check_of_a_missing_file_is_an_error_not_an_invalid_file() {
    let out = shadowcat(&golden_dir(), &["rules", "check", "no-such-rules.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot read no-such-rules.yaml"),
        "{stderr}"
    );
}

/// `rules test rules.yaml --tape demo.jsonl` with `extra` options.
fn rules_test_demo(extra: &[&str]) -> Output {
    let mut args = vec!["rules", "test", "rules.yaml", "--tape", "demo.jsonl"];
    args.extend_from_slice(extra);
    shadowcat(&golden_dir(), &args)
}

#[test]
fn rules_test_prints_what_each_rule_would_do_to_each_message() {
    let out = rules_test_demo(&[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_golden("test.txt", &text(&out.stdout));

    let out = rules_test_demo(&["--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 11);
    assert_golden("test.json", &text(&out.stdout));
}

#[test]
fn rules_test_in_audit_mode_marks_every_action_as_only_logged() {
    let out = rules_test_demo(&["--rules-mode", "audit"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = text(&out.stdout);
    let actions: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("]: ") || l.contains("] ("))
        .collect();
    assert!(actions.len() >= 9, "{stdout}");
    for line in &actions {
        assert!(line.contains("(audit: only logged)"), "{line}");
    }
    // Nothing is answered by a rule in audit mode, so every answer would still be sent...
    assert!(!stdout.contains("would not be sent"), "{stdout}");
    // ...and the echo call, untagged by the audited tag rule, is not modified.
    assert!(!stdout.contains("shout [modify]"), "{stdout}");
    assert!(
        stdout.contains("never acted: shout, would-mock-ping"),
        "{stdout}"
    );
}

#[test]
fn rules_test_reports_a_bad_tape_or_rule_file() {
    let dir = golden_dir();
    let out = shadowcat(
        &dir,
        &[
            "rules",
            "test",
            "bad/typo-in-action.yaml",
            "--tape",
            "demo.jsonl",
        ],
    );
    // The same exit code and words as `rules check` for an invalid file.
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let check = shadowcat(&dir, &["rules", "check", "bad/typo-in-action.yaml"]);
    assert_eq!(check.status.code(), Some(1), "{check:?}");
    assert_eq!(text(&out.stderr), text(&check.stderr));
    assert!(
        text(&out.stderr).contains("bad/typo-in-action.yaml:5:5: unknown field `blok`"),
        "{out:?}"
    );
    let out = shadowcat(
        &dir,
        &["rules", "test", "rules.yaml", "--tape", "rules.yaml"],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("rules.yaml"), "{out:?}");
}

#[test]
fn the_outputs_shown_in_docs_rules_md_are_the_golden_ones() {
    let docs = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/rules.md"))
        .unwrap();
    let mut shown = 0;
    for part in docs.split("<!-- golden: ").skip(1) {
        let (name, rest) = part.split_once(" -->").unwrap();
        let golden = std::fs::read_to_string(golden_dir().join(name)).unwrap();
        let block = rest
            .split_once("```text\n")
            .and_then(|(_, b)| b.split_once("```"))
            .map(|(b, _)| b)
            .unwrap_or_else(|| panic!("no text block after the {name} marker"));
        // The first line is the command; `...` stands for lines left out.
        let (_, output) = block.split_once('\n').unwrap();
        for chunk in output.split("...\n") {
            assert!(
                golden.contains(chunk),
                "docs/rules.md shows output that {name} does not have:\n{chunk}"
            );
        }
        shown += 1;
    }
    assert_eq!(shown, 3);
}
