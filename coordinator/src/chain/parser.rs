//! Output parsers: turn the model's text into a value a program can use.
//!
//! Small models wrap JSON in prose or code fences, so the JSON parser takes the
//! first JSON value anywhere in the output. A parse failure is reported with
//! the raw text, never swallowed; JSON and regex output is generated under
//! the parser's [`OutputParser::constraint`], so it parses unless cut off.
use serde_json::Value;
use thiserror::Error;

/// Why a parser could not be built from a request.
#[derive(Debug, Error, PartialEq)]
pub enum SpecError {
    /// Unknown parser kind.
    #[error("unknown output kind '{0}' (use text, json, list or regex)")]
    UnknownKind(String),
    /// The JSON Schema does not parse or is not a valid schema.
    #[error("invalid JSON Schema: {0}")]
    Schema(String),
    /// The regex does not compile, or is missing.
    #[error("invalid regex: {0}")]
    Regex(String),
}

/// Why an output did not parse; carries the raw text.
#[derive(Debug, Error, PartialEq)]
#[error("{reason}")]
pub struct OutputError {
    /// What was wrong.
    pub reason: String,
    /// The model's output as it was.
    pub raw: String,
}

/// See the module documentation.
pub enum OutputParser {
    /// The text as it is.
    Text,
    /// The first JSON value in the text, optionally checked against a schema.
    Json {
        /// The schema source (for instructions and the constraint) and its validator.
        schema: Option<(Value, Box<jsonschema::Validator>)>,
    },
    /// Items, one per line (bullets and numbering removed) or comma-separated.
    List,
    /// A regex that must match; named groups become an object, other groups an array.
    Regex(regex::Regex),
}

impl std::fmt::Debug for OutputParser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind())
    }
}

impl OutputParser {
    /// Builds a parser from the wire spec (kind, schema JSON, regex pattern).
    pub fn from_spec(kind: &str, schema_json: &str, pattern: &str) -> Result<Self, SpecError> {
        match kind {
            "" | "text" => Ok(Self::Text),
            "json" => {
                if schema_json.trim().is_empty() {
                    return Ok(Self::Json { schema: None });
                }
                let schema: Value = serde_json::from_str(schema_json).map_err(|e| SpecError::Schema(e.to_string()))?;
                let validator = jsonschema::validator_for(&schema).map_err(|e| SpecError::Schema(e.to_string()))?;
                Ok(Self::Json { schema: Some((schema, Box::new(validator))) })
            }
            "list" => Ok(Self::List),
            "regex" => {
                if pattern.is_empty() {
                    return Err(SpecError::Regex("the regex output kind needs a pattern".into()));
                }
                regex::Regex::new(pattern).map(Self::Regex).map_err(|e| SpecError::Regex(e.to_string()))
            }
            other => Err(SpecError::UnknownKind(other.to_string())),
        }
    }

    /// The parser's name.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json { .. } => "json",
            Self::List => "list",
            Self::Regex(_) => "regex",
        }
    }

    /// What the prompt should tell the model about the answer's format.
    pub fn format_instructions(&self) -> String {
        match self {
            Self::Text | Self::Regex(_) => String::new(),
            Self::Json { schema: None } => "Answer with one JSON object and nothing else.".into(),
            Self::Json { schema: Some((s, _)) } => {
                format!("Answer with one JSON value that matches this JSON Schema, and nothing else:\n{s}")
            }
            Self::List => "Answer with a list: one item per line, nothing else.".into(),
        }
    }

    /// The constraint that makes the model's output parse by construction
    /// (tokens that cannot continue a valid output are masked at every step),
    /// or `None` for parsers no grammar expresses (text, list).
    pub fn constraint(&self) -> Option<tessera_proto::v1::OutputConstraint> {
        use tessera_proto::v1::output_constraint::Kind;
        let kind = match self {
            Self::Text | Self::List => return None,
            Self::Json { schema: None } => Kind::JsonObject(true),
            Self::Json { schema: Some((s, _)) } => Kind::JsonSchema(s.to_string()),
            // The grammar engine reads a leading `^` and trailing `$` as the
            // whole-output anchors a constrained output has anyway.
            Self::Regex(re) => Kind::Regex(re.as_str().to_string()),
        };
        Some(tessera_proto::v1::OutputConstraint { kind: Some(kind) })
    }

    /// Parses `text`: `None` for text output, else the parsed value.
    pub fn parse(&self, text: &str) -> Result<Option<Value>, OutputError> {
        let fail = |reason: String| OutputError { reason, raw: text.to_string() };
        match self {
            Self::Text => Ok(None),
            Self::Json { schema } => {
                let value = first_json_value(text).ok_or_else(|| fail("the output contains no JSON value".into()))?;
                if let Some((_, validator)) = schema {
                    let errors: Vec<String> = validator.iter_errors(&value).map(|e| e.to_string()).collect();
                    if !errors.is_empty() {
                        return Err(fail(format!("the JSON does not match the schema: {}", errors.join("; "))));
                    }
                }
                Ok(Some(value))
            }
            Self::List => {
                let items = list_items(text);
                if items.is_empty() {
                    return Err(fail("the output contains no list items".into()));
                }
                Ok(Some(Value::Array(items.into_iter().map(Value::String).collect())))
            }
            Self::Regex(re) => {
                let caps =
                    re.captures(text).ok_or_else(|| fail(format!("the output does not match /{}/", re.as_str())))?;
                let names: Vec<&str> = re.capture_names().flatten().collect();
                let value = if !names.is_empty() {
                    Value::Object(
                        names
                            .iter()
                            .map(|n| {
                                let v = caps.name(n).map(|m| Value::String(m.as_str().into())).unwrap_or(Value::Null);
                                (n.to_string(), v)
                            })
                            .collect(),
                    )
                } else if caps.len() > 1 {
                    Value::Array(
                        (1..caps.len())
                            .map(|i| caps.get(i).map(|m| Value::String(m.as_str().into())).unwrap_or(Value::Null))
                            .collect(),
                    )
                } else {
                    Value::String(caps.get(0).map(|m| m.as_str()).unwrap_or("").to_string())
                };
                Ok(Some(value))
            }
        }
    }
}

/// The first JSON object or array in `text`, or the whole text when it is one JSON value.
pub fn first_json_value(text: &str) -> Option<Value> {
    if let Ok(v) = serde_json::from_str::<Value>(text.trim()) {
        return Some(v);
    }
    for (i, c) in text.char_indices() {
        if c == '{' || c == '[' {
            let mut values = serde_json::Deserializer::from_str(&text[i..]).into_iter::<Value>();
            if let Some(Ok(v)) = values.next() {
                return Some(v);
            }
        }
    }
    None
}

fn list_items(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let raw: Vec<&str> = if lines.len() == 1 { lines[0].split([',', '，', '、']).collect() } else { lines };
    raw.into_iter()
        .map(|item| {
            let item = item.trim();
            let item = item.trim_start_matches(['-', '*', '•']).trim_start();
            // "1." / "2)" numbering
            let digits = item.chars().take_while(char::is_ascii_digit).count();
            let item = if digits > 0 && item[digits..].starts_with(['.', ')']) { &item[digits + 1..] } else { item };
            item.trim().to_string()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_is_found_inside_prose_and_code_fences() {
        let p = OutputParser::from_spec("json", "", "").unwrap();
        let out = "Sure! Here it is:\n```json\n{\"name\": \"cp\", \"flags\": [\"-r\"]}\n```\nHope that helps {";
        assert_eq!(p.parse(out).unwrap(), Some(json!({"name": "cp", "flags": ["-r"]})));
        assert_eq!(p.parse("  42 ").unwrap(), Some(json!(42)));
        assert_eq!(p.parse("[1, 2] and {\"a\": 1}").unwrap(), Some(json!([1, 2])));
        let err = p.parse("no json here {broken").unwrap_err();
        assert_eq!(err.raw, "no json here {broken");
        assert!(err.reason.contains("no JSON"));
    }

    #[test]
    fn json_schema_is_checked_and_bad_schemas_are_refused() {
        let schema = r#"{"type":"object","required":["answer"],"properties":{"answer":{"type":"string"}}}"#;
        let p = OutputParser::from_spec("json", schema, "").unwrap();
        assert!(p.parse(r#"{"answer": "yes"}"#).is_ok());
        let err = p.parse(r#"{"answer": 3}"#).unwrap_err();
        assert!(err.reason.contains("schema"), "{}", err.reason);
        assert!(p.format_instructions().contains("\"required\""));
        assert!(matches!(OutputParser::from_spec("json", "{not json", ""), Err(SpecError::Schema(_))));
        assert!(matches!(OutputParser::from_spec("json", r#"{"type": 12}"#, ""), Err(SpecError::Schema(_))));
    }

    #[test]
    fn lists_accept_bullets_numbers_and_commas_in_any_language() {
        let p = OutputParser::from_spec("list", "", "").unwrap();
        assert_eq!(p.parse("- a\n* b\n1. c\n2) d\n\n").unwrap(), Some(json!(["a", "b", "c", "d"])));
        assert_eq!(p.parse("red, green ,blue").unwrap(), Some(json!(["red", "green", "blue"])));
        assert_eq!(p.parse("苹果、香蕉，橙子").unwrap(), Some(json!(["苹果", "香蕉", "橙子"])));
        assert!(p.parse("  \n ").is_err());
    }

    #[test]
    fn regex_gives_named_groups_positional_groups_or_the_match() {
        let p = OutputParser::from_spec("regex", "", r"(?P<flag>-\w) means (?P<meaning>\w+)").unwrap();
        assert_eq!(p.parse("so -r means recursive.").unwrap(), Some(json!({"flag": "-r", "meaning": "recursive"})));
        let p = OutputParser::from_spec("regex", "", r"(\d+)-(\d+)").unwrap();
        assert_eq!(p.parse("pages 3-7").unwrap(), Some(json!(["3", "7"])));
        let p = OutputParser::from_spec("regex", "", r"\d+").unwrap();
        assert_eq!(p.parse("x 42 y").unwrap(), Some(json!("42")));
        assert!(p.parse("none").unwrap_err().reason.contains("does not match"));
        assert!(matches!(OutputParser::from_spec("regex", "", "("), Err(SpecError::Regex(_))));
        assert!(matches!(OutputParser::from_spec("regex", "", ""), Err(SpecError::Regex(_))));
        assert!(matches!(OutputParser::from_spec("yaml", "", ""), Err(SpecError::UnknownKind(_))));
        assert_eq!(OutputParser::from_spec("text", "", "").unwrap().parse("x").unwrap(), None);
    }
}
