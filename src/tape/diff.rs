//! Where two JSON values differ, path by path: `replay` ranks recorded requests by it, and
//! `tape verify` prints it.

use std::fmt::Write as _;

use serde_json::Value;

/// One place where a recorded value and a live one differ.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    /// Where, as a JSONPath (`$.result.content[0].text`).
    pub path: String,
    /// The recorded value there (`None`: absent).
    pub recorded: Option<Value>,
    /// The live value there (`None`: absent).
    pub live: Option<Value>,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Option<Value>| match v {
            Some(v) => short(v, 200),
            None => "(absent)".to_owned(),
        };
        write!(
            f,
            "{}: recorded {}, live {}",
            self.path,
            show(&self.recorded),
            show(&self.live)
        )
    }
}

/// `value` as compact JSON, cut to about `max` characters.
pub fn short(value: &Value, max: usize) -> String {
    let text = value.to_string();
    if text.chars().count() <= max {
        return text;
    }
    let mut cut: String = text.chars().take(max).collect();
    cut.push('…');
    cut
}

/// Every place `recorded` and `live` differ, in document order.
pub fn differences(recorded: &Value, live: &Value) -> Vec<Difference> {
    differences_keyed(recorded, live, &[])
}

/// Arrays of named things that are sets, not sequences: at the path (`$.result.tools`), the
/// elements are matched by the key (`name`), so one added tool is one difference rather than
/// every tool after it shifted by one.
pub type Keyed<'a> = [(&'a str, &'a str)];

/// [`differences`], with the arrays at the `keyed` paths matched element by element on their
/// key (paths then read `$.result.tools[?@.name=='echo'].description`, a JSONPath that
/// `--ignore` takes). An array whose elements do not all carry a distinct string key is
/// compared by index.
pub fn differences_keyed(recorded: &Value, live: &Value, keyed: &Keyed<'_>) -> Vec<Difference> {
    let mut out = Vec::new();
    walk(
        Some(recorded),
        Some(live),
        &mut "$".to_owned(),
        keyed,
        &mut out,
    );
    out
}

/// `items` by their `key`, in order, if every one has a distinct string `key`.
fn by_key<'v>(items: &'v [Value], key: &str) -> Option<Vec<(&'v str, &'v Value)>> {
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    items
        .iter()
        .map(|item| {
            let name = item.get(key)?.as_str()?;
            seen.insert(name).then_some((name, item))
        })
        .collect()
}

/// Walks two keyed arrays: the recorded elements in order, then the live ones the tape lacks.
fn walk_keyed(
    recorded: &[(&str, &Value)],
    live: &[(&str, &Value)],
    key: &str,
    path: &mut String,
    keyed: &Keyed<'_>,
    out: &mut Vec<Difference>,
) {
    fn find<'v>(side: &[(&str, &'v Value)], name: &str) -> Option<&'v Value> {
        side.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
    let extra = live
        .iter()
        .filter(|(name, _)| find(recorded, name).is_none());
    for (name, _) in recorded.iter().chain(extra) {
        let len = path.len();
        let _ = write!(path, "[?@.{key}=={}]", quoted(name));
        walk(find(recorded, name), find(live, name), path, keyed, out);
        path.truncate(len);
    }
}

/// `text` as a JSONPath string literal in single quotes.
fn quoted(text: &str) -> String {
    let json = Value::String(text.to_owned()).to_string();
    // JSON's escapes are JSONPath's, but for the quote: `"` goes bare, `'` escaped.
    let inner = json
        .get(1..json.len().saturating_sub(1))
        .unwrap_or_default()
        .replace("\\\"", "\"")
        .replace('\'', "\\'");
    format!("'{inner}'")
}

fn walk(
    recorded: Option<&Value>,
    live: Option<&Value>,
    path: &mut String,
    keyed: &Keyed<'_>,
    out: &mut Vec<Difference>,
) {
    match (recorded, live) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let mut keys: Vec<&String> = a
                .keys()
                .chain(b.keys().filter(|k| !a.contains_key(*k)))
                .collect();
            keys.sort();
            for key in keys {
                let len = path.len();
                push_key(path, key);
                walk(a.get(key), b.get(key), path, keyed, out);
                path.truncate(len);
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) => {
            let key = keyed.iter().find(|(at, _)| *at == path.as_str());
            if let Some((_, key)) = key
                && let (Some(a), Some(b)) = (by_key(a, key), by_key(b, key))
            {
                walk_keyed(&a, &b, key, path, keyed, out);
                return;
            }
            for i in 0..a.len().max(b.len()) {
                let len = path.len();
                let _ = write!(path, "[{i}]");
                walk(a.get(i), b.get(i), path, keyed, out);
                path.truncate(len);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(Difference {
            path: path.clone(),
            recorded: a.cloned(),
            live: b.cloned(),
        }),
    }
}

/// Appends the member `key` to the JSONPath `path`: `.key`, or `['odd key']`.
pub fn push_key(path: &mut String, key: &str) {
    let plain = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        path.push('.');
        path.push_str(key);
    } else {
        let _ = write!(
            path,
            "[{}]",
            Value::String(key.to_owned()).to_string().replace('"', "'")
        );
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn differences_name_each_path_with_both_values() {
        let a = json!({"result": {"content": [{"type": "text", "text": "hi"}], "odd key": 1}});
        let b = json!({"result": {"content": [{"type": "text", "text": "HI"}, {"type": "text"}], "odd key": 1, "extra": true}});
        let found: Vec<String> = differences(&a, &b)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            found,
            [
                r#"$.result.content[0].text: recorded "hi", live "HI""#,
                r#"$.result.content[1]: recorded (absent), live {"type":"text"}"#,
                "$.result.extra: recorded (absent), live true",
            ]
        );
        assert!(differences(&a, &a).is_empty());
        let d = differences(&json!({"a b": 1}), &json!({"a b": 2}));
        assert_eq!(d[0].path, "$['a b']");
    }

    #[test]
    fn keyed_lists_are_matched_by_name_not_index() {
        let tool =
            |name: &str, description: &str| json!({"name": name, "description": description});
        let recorded =
            json!({"result": {"tools": [tool("a", "A"), tool("b", "B"), tool("c", "C")]}});
        let live = json!({"result": {"tools": [tool("new", "N"), tool("a", "A"), tool("b", "B2"), tool("c", "C")]}});
        let keyed = [("$.result.tools", "name")];
        let found: Vec<String> = differences_keyed(&recorded, &live, &keyed)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            found,
            [
                r#"$.result.tools[?@.name=='b'].description: recorded "B", live "B2""#,
                r#"$.result.tools[?@.name=='new']: recorded (absent), live {"description":"N","name":"new"}"#,
            ]
        );
        // By index, the one insertion shifts every tool.
        assert_eq!(differences(&recorded, &live).len(), 7);
        // Without distinct names, by index.
        let twice = json!({"result": {"tools": [tool("a", "A"), tool("a", "B")]}});
        let swapped = json!({"result": {"tools": [tool("a", "B"), tool("a", "A")]}});
        assert_eq!(differences_keyed(&twice, &swapped, &keyed).len(), 2);
        // A name with quotes reads as a JSONPath string.
        assert_eq!(quoted(r#"it's "x""#), r#"'it\'s "x"'"#);
    }
}
