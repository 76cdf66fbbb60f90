//! The crate's layers stay true: every module uses only the modules below its own.
//!
//! The order is written once, in `src/lib.rs`'s Layout list (each `- [`name`]:` line, lowest
//! first); this test reads it and every `crate::` path in `src/`, and fails on a file that
//! reaches above its own module's layer. Paths in comments are not imports and are skipped.
//!
//! `KNOWN` would list imports that still point up while a change is under way (empty since
//! issue 21 made the layers true). It may only shrink: an import gone from the code must go
//! from the list too, so the list never hides a new one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// `(file under src/, the module above its layer that it imports)`, still to be moved.
const KNOWN: &[(&str, &str)] = &[];

/// The same inside `proxy` (its layers listed in `src/proxy.rs`); empty since the HTTP upstream
/// session moved to `proxy::upstream` (issue 21).
const KNOWN_IN_PROXY: &[(&str, &str)] = &[];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The layer order from `src/lib.rs`: the modules of its Layout list, lowest first.
fn layers() -> Vec<String> {
    layers_in("lib.rs")
}

/// The layer order a module file under `src/` lists: its `- [`name`]:` doc lines, in order.
fn layers_in(file: &str) -> Vec<String> {
    let lib = std::fs::read_to_string(src().join(file)).unwrap();
    lib.lines()
        .filter_map(|line| line.strip_prefix("//! - [`"))
        .filter_map(|rest| rest.split_once("`]:").map(|(name, _)| name.to_owned()))
        .collect()
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a file's code names as `crate::name` (comments left out).
fn crate_paths(text: &str) -> BTreeSet<String> {
    paths_after(text, "crate::")
}

/// The names that follow `prefix` in a file's code (comments left out).
fn paths_after(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().next_back();
            rest = &rest[at + prefix.len()..];
            // `shadowcat_crate::x`, `$crate::`, `super::super::` are not the paths looked for.
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$' || c == ':') {
                continue;
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

#[test]
fn every_module_uses_only_the_layers_below_its_own() {
    let order = layers();
    assert!(order.len() >= 10, "src/lib.rs lists no layers: {order:?}");
    let rank = |name: &str| order.iter().position(|m| m == name);
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut upward = BTreeSet::new();
    let mut unlisted = BTreeSet::new();
    for file in &files {
        let rel = file
            .strip_prefix(src())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if rel == "lib.rs" || rel == "main.rs" {
            continue;
        }
        let module = rel.split('/').next().unwrap().trim_end_matches(".rs");
        let Some(own) = rank(module) else {
            unlisted.insert(module.to_owned());
            continue;
        };
        for used in crate_paths(&std::fs::read_to_string(file).unwrap()) {
            if rank(&used).is_some_and(|r| r > own) {
                upward.insert((rel.clone(), used));
            }
        }
    }
    assert!(
        unlisted.is_empty(),
        "modules missing from src/lib.rs's Layout list (place each in its layer): {unlisted:?}"
    );
    compare(&upward, KNOWN, "KNOWN", &order);
}

#[test]
fn every_part_of_the_proxy_uses_only_the_parts_below_its_own() {
    let order = layers_in("proxy.rs");
    assert!(order.len() >= 8, "src/proxy.rs lists no layers: {order:?}");
    let rank = |name: &str| order.iter().position(|m| m == name);
    let mut files = Vec::new();
    rust_files(&src().join("proxy"), &mut files);
    let mut upward = BTreeSet::new();
    for file in &files {
        let rel = file
            .strip_prefix(src().join("proxy"))
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let part = rel.split('/').next().unwrap().trim_end_matches(".rs");
        let own = rank(part)
            .unwrap_or_else(|| panic!("proxy::{part} is missing from src/proxy.rs's list"));
        let text = std::fs::read_to_string(file).unwrap();
        let mut used = paths_after(&text, "crate::proxy::");
        if !rel.contains('/') {
            // In src/proxy/<part>.rs, `super::` is the proxy itself.
            used.extend(paths_after(&text, "super::"));
        }
        for used in used {
            if rank(&used).is_some_and(|r| r > own) {
                upward.insert((rel.clone(), used));
            }
        }
    }
    compare(&upward, KNOWN_IN_PROXY, "KNOWN_IN_PROXY", &order);
}

/// Fails on an upward import not in `known`, and on an entry of `known` (named `list`) that is
/// no longer imported upward.
fn compare(
    upward: &BTreeSet<(String, String)>,
    known: &[(&str, &str)],
    list: &str,
    order: &[String],
) {
    let known: BTreeSet<(String, String)> = known
        .iter()
        .map(|(f, m)| ((*f).to_owned(), (*m).to_owned()))
        .collect();
    let new: Vec<_> = upward.difference(&known).collect();
    assert!(
        new.is_empty(),
        "these files import from a layer above their own (order: {}):\n{new:#?}",
        order.join(" → ")
    );
    let gone: Vec<_> = known.difference(upward).collect();
    assert!(
        gone.is_empty(),
        "no longer imported upward: take these out of {list} in tests/layers.rs: {gone:#?}"
    );
}

/// The check itself: an upward path is seen, one in a comment is not.
#[test]
fn crate_paths_are_read_from_code_not_comments() {
    let text = "use crate::proxy::Pipeline;\n// crate::app is only named here\nlet x = crate::tape::MASK; // crate::cli\n";
    let found: Vec<String> = crate_paths(text).into_iter().collect();
    assert_eq!(found, ["proxy", "tape"]);
}
