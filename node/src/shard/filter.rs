//! Metadata filters: every condition must hold; a condition is "the value at
//! `key` equals one of `values`" (one value = equality, several = one-of).
use serde_json::Value;

use crate::load::Metadata;

/// One condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// Metadata key.
    pub key: String,
    /// Accepted values.
    pub values: Vec<Value>,
}

/// A conjunction of conditions; the empty filter matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// All must hold.
    pub must: Vec<Condition>,
}

impl Filter {
    /// True when no condition is set.
    pub fn is_empty(&self) -> bool {
        self.must.is_empty()
    }

    /// Whether `metadata` satisfies every condition. Shards answer filters from
    /// their payload index (`payload.rs`), which is tested to agree with this.
    /// Numbers compare as `f64`; strings given for numeric or
    /// boolean values also match (`--filter year=2024` finds `"year": 2024`), since
    /// command-line filters cannot carry JSON types.
    pub fn matches(&self, metadata: &Metadata) -> bool {
        self.must
            .iter()
            .all(|c| metadata.get(&c.key).is_some_and(|actual| c.values.iter().any(|want| same(actual, want))))
    }
}

fn same(actual: &Value, want: &Value) -> bool {
    if json_eq(actual, want) {
        return true;
    }
    match (actual, want) {
        (Value::Number(a), Value::String(w)) => w.parse::<f64>().ok().zip(a.as_f64()).is_some_and(|(w, a)| w == a),
        (Value::Bool(a), Value::String(w)) => w.parse::<bool>().ok() == Some(*a),
        (Value::Array(items), w) => items.iter().any(|i| same(i, w)),
        _ => false,
    }
}

/// JSON equality with numbers compared as `f64`, at any depth: 2024 and 2024.0
/// are one value to a user (serde_json tells an integer from a float).
pub(super) fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64().is_some_and(|x| y.as_f64() == Some(x)),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(v: Value) -> Metadata {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn equality_one_of_and_conjunction() {
        let m = meta(json!({"lang": "zh", "year": 2024, "draft": false, "tags": ["a", "b"]}));
        let eq = |k: &str, v: Vec<Value>| Filter { must: vec![Condition { key: k.into(), values: v }] };
        assert!(eq("lang", vec![json!("zh")]).matches(&m));
        assert!(!eq("lang", vec![json!("en")]).matches(&m));
        assert!(eq("lang", vec![json!("en"), json!("zh")]).matches(&m));
        assert!(eq("year", vec![json!("2024")]).matches(&m));
        assert!(eq("draft", vec![json!("false")]).matches(&m));
        assert!(eq("tags", vec![json!("b")]).matches(&m));
        assert!(!eq("missing", vec![json!("x")]).matches(&m));
        let both = Filter {
            must: vec![
                Condition { key: "lang".into(), values: vec![json!("zh")] },
                Condition { key: "year".into(), values: vec![json!(2023)] },
            ],
        };
        assert!(!both.matches(&m));
        assert!(Filter::default().matches(&m));
    }
}
