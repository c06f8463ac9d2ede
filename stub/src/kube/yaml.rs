//! A small block-style YAML emitter over `serde_json::Value`, so generated kubeadm files are
//! byte-stable (golden-tested) and read like kubeadm's own examples: `apiVersion` and `kind`
//! first, then keys in sorted order (serde_json's map is sorted).
//!
//! Why not a serializer crate: the output must not depend on a library's quoting choices, and
//! kubeadm reads YAML through sigs.k8s.io/yaml (YAML 1.1 rules, where `yes`, `on`, `1:20` or
//! `0x1F` are not strings). Every string that could be read as anything but a string is quoted.

use serde_json::Value;

/// One YAML document (no `---`).
pub fn document(v: &Value) -> String {
    let mut out = String::new();
    emit(v, 0, &mut out);
    out
}

/// Several documents joined with `---`.
pub fn documents(docs: &[Value]) -> String {
    docs.iter().map(document).collect::<Vec<_>>().join("---\n")
}

fn ordered_keys(m: &serde_json::Map<String, Value>) -> Vec<&String> {
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort_by_key(|k| match k.as_str() {
        "apiVersion" => (0, (*k).clone()),
        "kind" => (1, (*k).clone()),
        // list items like extraArgs read best as `- name: …` then `value: …`
        "name" => (2, (*k).clone()),
        _ => (3, (*k).clone()),
    });
    keys
}

fn is_empty_container(v: &Value) -> bool {
    matches!(v, Value::Object(m) if m.is_empty()) || matches!(v, Value::Array(a) if a.is_empty())
}

fn emit(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) => {
            for k in ordered_keys(m) {
                let val = &m[k];
                out.push_str(&format!("{pad}{}:", scalar_str(k)));
                match val {
                    Value::Object(_) | Value::Array(_) if !is_empty_container(val) => {
                        out.push('\n');
                        emit(val, indent + 2, out);
                    }
                    _ => {
                        out.push(' ');
                        out.push_str(&scalar(val));
                        out.push('\n');
                    }
                }
            }
        }
        Value::Array(a) => {
            for item in a {
                if is_empty_container(item) || !matches!(item, Value::Object(_) | Value::Array(_)) {
                    out.push_str(&format!("{pad}- {}\n", scalar(item)));
                    continue;
                }
                // A map item's first key belongs on the dash's line and the rest under it: render
                // the item at the indent its other keys need, then put "- " over the first one.
                let mut inner = String::new();
                emit(item, indent + 2, &mut inner);
                out.push_str(&pad);
                out.push_str("- ");
                out.push_str(&inner[indent + 2..]);
            }
        }
        _ => {
            out.push_str(&pad);
            out.push_str(&scalar(v));
            out.push('\n');
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => scalar_str(s),
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
    }
}

/// A string as a plain scalar when nothing could misread it, else double-quoted (JSON escapes
/// are valid in YAML double-quoted scalars).
fn scalar_str(s: &str) -> String {
    const WORDS: &[&str] = &["true", "false", "yes", "no", "on", "off", "y", "n", "null", "~"];
    let first_ok = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '/');
    let all_ok = s.chars().all(|c| c.is_ascii_alphanumeric() || "._/:@=,+-".contains(c));
    let plain = first_ok
        && all_ok
        && !s.ends_with(':')
        && !s.contains(": ")
        && !WORDS.contains(&s.to_ascii_lowercase().as_str());
    if plain { s.to_string() } else { serde_json::to_string(s).expect("a string serialises") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn emits_block_yaml_that_reads_back_the_same() {
        let v = json!({
            "kind": "K", "apiVersion": "a/v1",
            "list": [{"value": "x", "name": "nm"}, {"name": "m", "value": "10.0.0.1"}],
            "nested": {"deep": {"s": "yes", "n": 5, "b": true, "e": [], "o": {}}},
            "strs": ["1.2.3.4", "a:b", "3.10", "on", "with space", "sha256:ab"],
            "lists": [[1, 2], []],
        });
        let y = document(&v);
        assert!(y.starts_with("apiVersion: a/v1\nkind: K\n"), "{y}");
        assert!(y.contains("  - name: nm\n    value: x\n"), "{y}");
        assert!(y.contains("- \"3.10\"\n") && y.contains("- \"on\"\n") && y.contains("- sha256:ab\n"), "{y}");
        let back: Value = serde_saphyr::from_str(&y).unwrap();
        assert_eq!(back, v, "{y}");
    }
}
