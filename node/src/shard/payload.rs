//! The payload index: per metadata key, value -> bitmap of the chunk keys that
//! have it, so a filter is a few bitmap unions and intersections instead of a
//! pass over every chunk's metadata.
//!
//! Before it, a filtered search read all chunks' metadata through a `HashMap`
//! and a `serde_json` comparison each (96 ms at 100k chunks, BENCHMARKS.md), and
//! filtered HNSW then called the same per graph candidate. With the bitmap the
//! planner also knows the exact number of matches before it chooses between an
//! exact scan and filtered HNSW (`replica.rs`).
//!
//! Values are indexed under canonical terms that reproduce
//! [`Filter::matches`](super::Filter::matches) exactly: a number under its
//! `f64` value, so a filter string `"2024"` finds `2024`; an array under
//! itself and under each of its elements; objects under their canonical JSON
//! (keys sorted, numbers as `f64`). A property test checks the index against `matches`.
use std::collections::HashMap;

use roaring::RoaringTreemap;
use serde_json::Value;

use super::Filter;
use crate::load::Metadata;

/// A metadata value as the index stores it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Term {
    Str(String),
    /// The bits of the value as `f64` (`-0.0` folded into `0.0`).
    Num(u64),
    Bool(bool),
    Null,
    /// Arrays and objects, as canonical JSON (object keys sorted).
    Json(String),
}

fn num(f: f64) -> Term {
    Term::Num(if f == 0.0 { 0f64.to_bits() } else { f.to_bits() })
}

/// JSON text with object keys sorted and numbers written as `f64` (`-0` as
/// `0`), so values equal under the filter's equality give equal text.
fn canonical(v: &Value) -> String {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(0.0) => "0".to_string(),
            Some(f) => f.to_string(),
            None => n.to_string(),
        },
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let body: Vec<String> =
                entries.into_iter().map(|(k, v)| format!("{}:{}", Value::String(k.clone()), canonical(v))).collect();
            format!("{{{}}}", body.join(","))
        }
        Value::Array(items) => format!("[{}]", items.iter().map(canonical).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

/// The terms a stored value is indexed under.
fn stored_terms(v: &Value, out: &mut Vec<Term>) {
    match v {
        Value::String(s) => out.push(Term::Str(s.clone())),
        Value::Number(n) => {
            if let Some(f) = n.as_f64() {
                out.push(num(f));
            }
        }
        Value::Bool(b) => out.push(Term::Bool(*b)),
        Value::Null => out.push(Term::Null),
        Value::Array(items) => {
            out.push(Term::Json(canonical(v)));
            for item in items {
                stored_terms(item, out);
            }
        }
        Value::Object(_) => out.push(Term::Json(canonical(v))),
    }
}

/// The terms a wanted value matches: a string also as the number or boolean it
/// spells (command-line filters cannot carry JSON types).
fn wanted_terms(v: &Value) -> Vec<Term> {
    match v {
        Value::String(s) => {
            let mut out = vec![Term::Str(s.clone())];
            if let Some(f) = s.parse::<f64>().ok().filter(|f| f.is_finite()) {
                out.push(num(f));
            }
            if let Ok(b) = s.parse::<bool>() {
                out.push(Term::Bool(b));
            }
            out
        }
        Value::Number(n) => n.as_f64().map(num).into_iter().collect(),
        Value::Bool(b) => vec![Term::Bool(*b)],
        Value::Null => vec![Term::Null],
        Value::Array(_) | Value::Object(_) => vec![Term::Json(canonical(v))],
    }
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct PayloadIndex {
    fields: HashMap<String, HashMap<Term, RoaringTreemap>>,
    all: RoaringTreemap,
}

impl PayloadIndex {
    /// Indexes chunk `key` with its metadata.
    pub fn insert(&mut self, key: u64, metadata: &Metadata) {
        self.all.insert(key);
        let mut terms = Vec::new();
        for (field, value) in metadata {
            terms.clear();
            stored_terms(value, &mut terms);
            let values = self.fields.entry(field.clone()).or_default();
            for term in terms.drain(..) {
                values.entry(term).or_default().insert(key);
            }
        }
    }

    /// Forgets chunk `key`, which was indexed with `metadata`.
    pub fn remove(&mut self, key: u64, metadata: &Metadata) {
        self.all.remove(key);
        let mut terms = Vec::new();
        for (field, value) in metadata {
            let Some(values) = self.fields.get_mut(field) else { continue };
            terms.clear();
            stored_terms(value, &mut terms);
            for term in &terms {
                if let Some(bitmap) = values.get_mut(term) {
                    bitmap.remove(key);
                    if bitmap.is_empty() {
                        values.remove(term);
                    }
                }
            }
            if values.is_empty() {
                self.fields.remove(field);
            }
        }
    }

    /// Chunks indexed.
    pub fn len(&self) -> u64 {
        self.all.len()
    }

    /// True when no chunk is indexed.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// The keys of the chunks that satisfy `filter` (all of them for the empty
    /// filter). Conditions are intersected smallest first, so a selective
    /// condition bounds the work of the others.
    pub fn matching(&self, filter: &Filter) -> RoaringTreemap {
        if filter.is_empty() {
            return self.all.clone();
        }
        let mut sets: Vec<RoaringTreemap> = filter
            .must
            .iter()
            .map(|c| {
                let mut set = RoaringTreemap::new();
                if let Some(values) = self.fields.get(&c.key) {
                    for want in &c.values {
                        for term in wanted_terms(want) {
                            if let Some(bitmap) = values.get(&term) {
                                set |= bitmap;
                            }
                        }
                    }
                }
                set
            })
            .collect();
        sets.sort_by_key(|s| s.len());
        let mut iter = sets.into_iter();
        let mut out = iter.next().unwrap_or_default();
        for set in iter {
            if out.is_empty() {
                break;
            }
            out &= set;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::Condition;
    use serde_json::json;

    /// A small pseudo-random generator (xorshift), so the test needs no crate.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// A value from a small space, so that stored and wanted values collide often,
    /// in every JSON type and the cross-type cases the filter allows.
    fn value(rng: &mut Rng, depth: u32) -> Value {
        match rng.below(if depth > 1 { 9 } else { 11 }) {
            0 => json!(rng.below(4)),
            1 => json!(rng.below(4) as f64),
            2 => json!(rng.below(4).to_string()),
            3 => json!(rng.below(2) == 0),
            4 => json!(if rng.below(2) == 0 { "true" } else { "false" }),
            5 => Value::Null,
            6 => json!(["中文", "en", "1.5"][rng.below(3) as usize]),
            7 => json!(1.5),
            8 => json!(-0.0),
            9 => Value::Array((0..rng.below(3)).map(|_| value(rng, depth + 1)).collect()),
            _ => json!({"b": value(rng, depth + 1), "a": rng.below(2)}),
        }
    }

    fn metadata(rng: &mut Rng) -> Metadata {
        let mut m = Metadata::new();
        for key in ["k", "lang", "year"] {
            if rng.below(4) != 0 {
                m.insert(key.into(), value(rng, 0));
            }
        }
        m
    }

    #[test]
    fn the_index_agrees_with_filter_matches_through_inserts_and_removes() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut index = PayloadIndex::default();
        let mut live: HashMap<u64, Metadata> = HashMap::new();
        for key in 0..600u64 {
            let m = metadata(&mut rng);
            index.insert(key, &m);
            live.insert(key, m);
        }
        // Remove a third, re-insert some keys with new metadata.
        for key in (0..600u64).filter(|k| k % 3 == 0) {
            let m = live.remove(&key).unwrap();
            index.remove(key, &m);
        }
        for key in (0..600u64).filter(|k| k % 9 == 0) {
            let m = metadata(&mut rng);
            index.insert(key, &m);
            live.insert(key, m);
        }
        assert_eq!(index.len(), live.len() as u64);
        let mut checked_nonempty = 0;
        for _ in 0..400 {
            let conditions = 1 + rng.below(2);
            let filter = Filter {
                must: (0..conditions)
                    .map(|_| Condition {
                        key: ["k", "lang", "year"][rng.below(3) as usize].into(),
                        values: (0..1 + rng.below(3)).map(|_| value(&mut rng, 0)).collect(),
                    })
                    .collect(),
            };
            let got: Vec<u64> = index.matching(&filter).iter().collect();
            let mut want: Vec<u64> = live.iter().filter(|(_, m)| filter.matches(m)).map(|(k, _)| *k).collect();
            want.sort_unstable();
            assert_eq!(got, want, "filter {filter:?}");
            checked_nonempty += usize::from(!want.is_empty());
        }
        // The generator must produce matches, or the comparison proves little.
        assert!(checked_nonempty > 100, "only {checked_nonempty} filters matched anything");
        assert_eq!(index.matching(&Filter::default()).len(), live.len() as u64);
    }

    #[test]
    fn cross_type_matches_and_cleanup() {
        let mut index = PayloadIndex::default();
        let m = |v: Value| v.as_object().cloned().unwrap();
        let a = m(json!({"year": 2024, "tags": ["rust", "检索"], "draft": false, "o": {"y": 1, "x": [1, 2]}}));
        index.insert(7, &a);
        let one = |key: &str, v: Value| Filter { must: vec![Condition { key: key.into(), values: vec![v] }] };
        assert!(index.matching(&one("year", json!("2024"))).contains(7));
        assert!(index.matching(&one("year", json!(2024.0))).contains(7));
        assert!(index.matching(&one("tags", json!("检索"))).contains(7));
        assert!(index.matching(&one("draft", json!("false"))).contains(7));
        assert!(index.matching(&one("o", json!({"x": [1, 2], "y": 1}))).contains(7));
        assert!(index.matching(&one("year", json!("2023"))).is_empty());
        assert!(index.matching(&one("missing", json!("x"))).is_empty());
        index.remove(7, &a);
        assert!(index.is_empty() && index.fields.is_empty());
    }
}
