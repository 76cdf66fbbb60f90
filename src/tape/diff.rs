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
    let mut out = Vec::new();
    walk(Some(recorded), Some(live), &mut "$".to_owned(), &mut out);
    out
}

fn walk(
    recorded: Option<&Value>,
    live: Option<&Value>,
    path: &mut String,
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
                walk(a.get(key), b.get(key), path, out);
                path.truncate(len);
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) => {
            for i in 0..a.len().max(b.len()) {
                let len = path.len();
                let _ = write!(path, "[{i}]");
                walk(a.get(i), b.get(i), path, out);
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

fn push_key(path: &mut String, key: &str) {
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
}
