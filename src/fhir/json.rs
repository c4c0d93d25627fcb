//! Strict reading of FHIR JSON.
//!
//! FHIR's JSON format has rules a generic JSON parser ignores: no `null`
//! values (except as placeholders in primitive arrays paired with a `_name`
//! array), no empty objects, arrays or strings, no duplicate property names,
//! and decimals whose precision matters (`1.50` is not `1.5`). This reader is
//! serde_json driven by a custom [`DeserializeSeed`], so the JSON grammar,
//! UTF-8 checks and line/column reporting are serde_json's; the FHIR rules
//! are checked on the way through, and all such violations are collected
//! rather than stopping at the first.
//!
//! Decimal fidelity comes from serde_json's `arbitrary_precision` feature:
//! every number keeps the text it was sent as, and is written back the same.

use std::cell::RefCell;
use std::fmt;
use std::str::FromStr;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};
use thiserror::Error;

use super::outcome::{Issue, IssueSeverity, IssueType};
use super::path::{ElementPath, PathLink};

/// serde_json's marker key for a number under `arbitrary_precision`: a
/// number reaches a visitor as a one-entry map from this key to its text.
/// A unit test below pins this behaviour so a serde_json upgrade that
/// changes it fails loudly rather than mangling decimals.
const ARBITRARY_PRECISION_NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// serde_json refuses input nested deeper than this; Sprig's own limit must
/// stay below it to be the one that answers.
pub const MAX_SUPPORTED_DEPTH: usize = 127;

/// `map[name]`, for the lookups validation does per element. serde_json's map hashes a
/// name with SipHash before it looks; most FHIR objects have a handful of properties, and
/// comparing a handful of short keys costs less than hashing one.
#[inline]
pub fn field<'m>(map: &'m Map<String, Value>, name: &str) -> Option<&'m Value> {
    if map.len() <= 8 {
        map.iter()
            .find(|(key, _)| key.as_str() == name)
            .map(|(_, value)| value)
    } else {
        map.get(name)
    }
}

/// Limits applied while reading.
#[derive(Debug, Clone, Copy)]
pub struct JsonLimits {
    /// Deepest nesting of objects and arrays accepted (the root object is 1).
    pub max_depth: usize,
}

impl Default for JsonLimits {
    fn default() -> Self {
        Self { max_depth: 64 }
    }
}

/// A FHIR JSON rule broken at one place in an otherwise well-formed document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonRuleViolation {
    /// `"x": null`.
    Null,
    /// `"x": {}`.
    EmptyObject,
    /// `"x": []`.
    EmptyArray,
    /// `"x": ""`.
    EmptyString,
    /// The same property name twice in one object.
    DuplicateProperty,
    /// A `null` in a primitive array without a matching `_name` entry.
    UnpairedNull {
        /// The property that should carry the extension (`_given`).
        partner: String,
    },
    /// `given` and `_given` arrays of different lengths.
    MismatchedPrimitiveArrays {
        /// The other property of the pair.
        partner: String,
    },
}

/// Why a request body is not a FHIR JSON resource.
#[derive(Debug, Error)]
pub enum JsonError {
    /// Nothing but whitespace.
    #[error("the request body is empty")]
    Empty,
    /// A UTF-8 byte order mark before the JSON: RFC 8259 §8.1 forbids
    /// sending one, and a sender that adds it is not writing JSON for HTTP.
    #[error("the body starts with a UTF-8 byte order mark")]
    ByteOrderMark,
    /// Not JSON at all (serde_json's message, without its position suffix).
    #[error("malformed JSON at line {line}, column {column}: {message}")]
    Syntax {
        /// What serde_json found wrong.
        message: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// JSON, but the root is not an object.
    #[error("the body is a JSON {found}, not a JSON object")]
    NotAnObject {
        /// The JSON type found instead.
        found: &'static str,
    },
    /// Nested deeper than the configured limit.
    #[error("JSON nested deeper than {max_depth} levels")]
    TooDeep {
        /// The limit.
        max_depth: usize,
        /// Where the limit was crossed.
        path: ElementPath,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// Well-formed JSON that breaks FHIR's JSON rules.
    #[error("{} FHIR JSON rule violation(s)", .0.len())]
    Rules(Vec<(ElementPath, JsonRuleViolation)>),
}

impl JsonError {
    /// The error as OperationOutcome issues, with expressions rooted at
    /// `root` (the resource type, when known).
    pub fn to_issues(&self, root: &str) -> Vec<Issue> {
        match self {
            JsonError::Empty => vec![
                Issue::error(
                    IssueType::Structure,
                    "json-empty-body",
                    "The request body is empty: send a FHIR resource as JSON",
                )
                .with_severity(IssueSeverity::Fatal),
            ],
            JsonError::ByteOrderMark => vec![
                Issue::error(
                    IssueType::Structure,
                    "json-byte-order-mark",
                    "The body starts with a UTF-8 byte order mark (EF BB BF), which JSON sent over HTTP must not have (RFC 8259 §8.1); send the JSON without it",
                )
                .with_severity(IssueSeverity::Fatal),
            ],
            JsonError::Syntax {
                message,
                line,
                column,
            } => vec![
                Issue::error(
                    IssueType::Structure,
                    "json-syntax",
                    format!(
                        "The body is not valid JSON: {message} (line {line}, column {column})"
                    ),
                )
                .with_severity(IssueSeverity::Fatal)
                .at_position(*line, *column),
            ],
            JsonError::NotAnObject { found } => vec![
                Issue::error(
                    IssueType::Structure,
                    "json-not-object",
                    format!(
                        "The body is a JSON {found}; a FHIR resource must be a JSON object with a resourceType"
                    ),
                )
                .with_severity(IssueSeverity::Fatal),
            ],
            JsonError::TooDeep {
                max_depth,
                path,
                line,
                column,
            } => vec![
                Issue::error(
                    IssueType::TooLong,
                    "json-too-deep",
                    format!(
                        "JSON is nested deeper than the limit of {max_depth} levels (line {line}, column {column})"
                    ),
                )
                .with_severity(IssueSeverity::Fatal)
                .at(path.to_expression(root))
                .at_position(*line, *column),
            ],
            JsonError::Rules(violations) => violations
                .iter()
                .map(|(path, violation)| violation_issue(path, violation, root))
                .collect(),
        }
    }
}

fn violation_issue(path: &ElementPath, violation: &JsonRuleViolation, root: &str) -> Issue {
    let expression = path.to_expression(root);
    let (code, id, message) = match violation {
        JsonRuleViolation::Null => (
            IssueType::Structure,
            "json-null",
            format!(
                "{expression} is null: FHIR JSON does not allow null values; leave the property out instead"
            ),
        ),
        JsonRuleViolation::EmptyObject => (
            IssueType::Structure,
            "json-empty-object",
            format!(
                "{expression} is an empty object: FHIR JSON does not allow empty objects; leave the property out instead"
            ),
        ),
        JsonRuleViolation::EmptyArray => (
            IssueType::Structure,
            "json-empty-array",
            format!(
                "{expression} is an empty array: FHIR JSON does not allow empty arrays; leave the property out instead"
            ),
        ),
        JsonRuleViolation::EmptyString => (
            IssueType::Value,
            "json-empty-string",
            format!(
                "{expression} is an empty string: FHIR does not allow empty values; leave the property out instead"
            ),
        ),
        JsonRuleViolation::DuplicateProperty => (
            IssueType::Duplicate,
            "json-duplicate-property",
            format!(
                "{expression} appears more than once in the same object: each property may appear only once"
            ),
        ),
        JsonRuleViolation::UnpairedNull { partner } => (
            IssueType::Structure,
            "json-unpaired-null",
            format!(
                "{expression} is null: a null in a primitive array is only allowed when {partner} has an entry at the same position"
            ),
        ),
        JsonRuleViolation::MismatchedPrimitiveArrays { partner } => (
            IssueType::Structure,
            "json-primitive-array-length",
            format!("{expression} and {partner} must have the same number of entries"),
        ),
    };
    Issue::error(code, id, message).at(expression)
}

/// Reads `body` as one FHIR JSON resource: a JSON object obeying FHIR's JSON
/// rules. It does not look at `resourceType` or the content model.
pub fn parse_resource(body: &[u8], limits: JsonLimits) -> Result<Map<String, Value>, JsonError> {
    if body.starts_with(b"\xEF\xBB\xBF") {
        return Err(JsonError::ByteOrderMark);
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(JsonError::Empty);
    }
    let context = Context {
        max_depth: limits.max_depth.min(MAX_SUPPORTED_DEPTH),
        violations: RefCell::new(Vec::new()),
        too_deep_at: RefCell::new(None),
    };
    let parsed = match std::str::from_utf8(body) {
        // UTF-8 checked once for the whole body (long ASCII runs at word speed): serde_json
        // then reads each string without checking it again.
        Ok(text) => read(&mut serde_json::Deserializer::from_str(text), &context),
        // serde_json finds the bad byte and says where it is.
        Err(_) => read(&mut serde_json::Deserializer::from_slice(body), &context),
    };

    let value = match parsed {
        Ok(value) => value,
        Err(error) => {
            if let Some(path) = context.too_deep_at.borrow_mut().take() {
                return Err(JsonError::TooDeep {
                    max_depth: context.max_depth,
                    path,
                    line: error.line(),
                    column: error.column(),
                });
            }
            return Err(syntax_error(&error));
        }
    };
    let object = match value {
        Value::Object(object) => object,
        other => {
            return Err(JsonError::NotAnObject {
                found: json_type_name(&other),
            });
        }
    };
    let violations = context.violations.into_inner();
    if violations.is_empty() {
        Ok(object)
    } else {
        Err(JsonError::Rules(violations))
    }
}

/// The whole document as one value, FHIR's rules checked on the way.
fn read<'de, R: serde_json::de::Read<'de>>(
    deserializer: &mut serde_json::Deserializer<R>,
    context: &Context,
) -> Result<Value, serde_json::Error> {
    NodeSeed {
        context,
        path: &PathLink::Root,
        depth: 1,
    }
    .deserialize(&mut *deserializer)
    .and_then(|value| deserializer.end().map(|()| value))
}

/// The JSON type of a value, in words.
pub fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn syntax_error(error: &serde_json::Error) -> JsonError {
    let full = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    let message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
    JsonError::Syntax {
        message,
        line: error.line(),
        column: error.column(),
    }
}

struct Context {
    max_depth: usize,
    violations: RefCell<Vec<(ElementPath, JsonRuleViolation)>>,
    too_deep_at: RefCell<Option<ElementPath>>,
}

impl Context {
    fn record(&self, path: ElementPath, violation: JsonRuleViolation) {
        self.violations.borrow_mut().push((path, violation));
    }
}

struct NodeSeed<'c, 'p> {
    context: &'c Context,
    path: &'p PathLink<'p>,
    depth: usize,
}

impl NodeSeed<'_, '_> {
    fn enter_container<E: de::Error>(&self) -> Result<(), E> {
        if self.depth > self.context.max_depth {
            *self.context.too_deep_at.borrow_mut() = Some(self.path.to_path());
            return Err(E::custom("nesting limit exceeded"));
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_, '_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NodeSeed<'_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        if v.is_empty() {
            self.context
                .record(self.path.to_path(), JsonRuleViolation::EmptyString);
        }
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        if v.is_empty() {
            self.context
                .record(self.path.to_path(), JsonRuleViolation::EmptyString);
        }
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        // A null inside an array may be a legitimate placeholder; the object
        // holding the array decides (see `check_primitive_array_pairs`).
        if !self.path.is_array_item() {
            self.context
                .record(self.path.to_path(), JsonRuleViolation::Null);
        }
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.enter_container()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(NodeSeed {
            context: self.context,
            path: &PathLink::Index(self.path, items.len()),
            depth: self.depth + 1,
        })? {
            items.push(item);
        }
        if items.is_empty() {
            self.context
                .record(self.path.to_path(), JsonRuleViolation::EmptyArray);
        }
        if !matches!(self.path, PathLink::Key(..)) {
            // Nulls are only ever placeholders in a property's array.
            for (index, item) in items.iter().enumerate() {
                if item.is_null() {
                    self.context
                        .record(self.path.to_path().index(index), JsonRuleViolation::Null);
                }
            }
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let Some(first_key) = map.next_key::<String>()? else {
            self.enter_container()?;
            self.context
                .record(self.path.to_path(), JsonRuleViolation::EmptyObject);
            return Ok(Value::Object(Map::new()));
        };
        if first_key == ARBITRARY_PRECISION_NUMBER_TOKEN {
            let text: String = map.next_value()?;
            return Number::from_str(&text)
                .map(Value::Number)
                .map_err(de::Error::custom);
        }
        self.enter_container()?;
        let mut object = Map::new();
        let mut key = first_key;
        loop {
            let value = map.next_value_seed(NodeSeed {
                context: self.context,
                path: &PathLink::Key(self.path, &key),
                depth: self.depth + 1,
            })?;
            // One hash of the key, not two (`contains_key`, then `insert`).
            match object.entry(key) {
                Entry::Vacant(slot) => {
                    slot.insert(value);
                }
                Entry::Occupied(slot) => self.context.record(
                    self.path.to_path().key(slot.key().clone()),
                    JsonRuleViolation::DuplicateProperty,
                ),
            }
            match map.next_key::<String>()? {
                Some(next) => key = next,
                None => break,
            }
        }
        check_primitive_array_pairs(&object, self.path, self.context);
        Ok(Value::Object(object))
    }
}

/// FHIR represents a repeating primitive with extensions as two parallel
/// arrays, `given` and `_given`, using `null` where one side has nothing.
/// A null is legitimate only if the other array has a value at that index.
fn check_primitive_array_pairs(
    object: &Map<String, Value>,
    path: &PathLink<'_>,
    context: &Context,
) {
    for (key, value) in object {
        let Value::Array(items) = value else { continue };
        // Only primitive arrays have `_name` partners: an array of objects
        // without nulls (most FHIR arrays) needs no partner lookup.
        if items.iter().all(Value::is_object) {
            continue;
        }
        let partner_key = match key.strip_prefix('_') {
            Some(base) => base.to_owned(),
            None => format!("_{key}"),
        };
        let partner = object.get(&partner_key).and_then(Value::as_array);
        if let Some(partner_items) = partner {
            // Report a length mismatch once, on the value array.
            if partner_items.len() != items.len() && !key.starts_with('_') {
                context.record(
                    path.to_path().key(key.clone()),
                    JsonRuleViolation::MismatchedPrimitiveArrays {
                        partner: partner_key.clone(),
                    },
                );
            }
        }
        for (index, item) in items.iter().enumerate() {
            if !item.is_null() {
                continue;
            }
            let paired = partner
                .and_then(|p| p.get(index))
                .is_some_and(|other| !other.is_null());
            if !paired {
                context.record(
                    path.to_path().key(key.clone()).index(index),
                    JsonRuleViolation::UnpairedNull {
                        partner: partner_key.clone(),
                    },
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Map<String, Value>, JsonError> {
        parse_resource(text.as_bytes(), JsonLimits::default())
    }

    fn violations(text: &str) -> Vec<(String, JsonRuleViolation)> {
        match parse(text) {
            Err(JsonError::Rules(v)) => v
                .into_iter()
                .map(|(p, v)| (p.to_expression("R"), v))
                .collect(),
            other => panic!("expected rule violations, got {other:?}"),
        }
    }

    #[test]
    fn keeps_decimals_exactly_as_sent() {
        let object = parse(r#"{"a": 1.50, "b": 1e2, "c": -0.000, "d": 12345678901234567890.123}"#)
            .expect("valid");
        let text = serde_json::to_string(&object).expect("serialises");
        // Precision and digits are kept; serde_json writes an exponent with
        // an explicit sign, the same value in a form FHIR's decimal allows.
        assert_eq!(
            text,
            r#"{"a":1.50,"b":1e+2,"c":-0.000,"d":12345678901234567890.123}"#
        );
    }

    #[test]
    fn keeps_property_order_and_unicode() {
        let object = parse(r#"{"z": "Siân Łukasz 😀", "a": "\u00e9"}"#).expect("valid");
        assert_eq!(
            serde_json::to_string(&object).expect("serialises"),
            r#"{"z":"Siân Łukasz 😀","a":"é"}"#
        );
    }

    #[test]
    fn reports_syntax_errors_with_line_and_column() {
        match parse("{\n  \"a\": 1,\n  \"b\": }") {
            Err(JsonError::Syntax { line, column, .. }) => assert_eq!((line, column), (3, 8)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse("{} x"), Err(JsonError::Syntax { .. })));
        assert!(matches!(
            parse("\"\\ud800\""),
            Err(JsonError::Syntax { .. })
        ));
    }

    #[test]
    fn rejects_invalid_utf8() {
        let body = b"{\"a\": \"\xff\"}";
        assert!(matches!(
            parse_resource(body, JsonLimits::default()),
            Err(JsonError::Syntax { .. })
        ));
    }

    #[test]
    fn rejects_empty_and_non_object_bodies() {
        assert!(matches!(parse("  \n"), Err(JsonError::Empty)));
        assert!(matches!(
            parse("[1]"),
            Err(JsonError::NotAnObject { found: "array" })
        ));
        assert!(matches!(
            parse("12"),
            Err(JsonError::NotAnObject { found: "number" })
        ));
        assert!(
            matches!(parse("\u{feff}{\"a\":1}"), Err(JsonError::ByteOrderMark)),
            "a UTF-8 byte order mark is refused"
        );
    }

    #[test]
    fn collects_every_rule_violation_with_its_place() {
        let found = violations(
            r#"{"a": null, "b": {}, "c": [], "d": "", "e": {"f": 1, "f": 2}, "g": [{"h": null}]}"#,
        );
        assert_eq!(
            found,
            vec![
                ("R.a".into(), JsonRuleViolation::Null),
                ("R.b".into(), JsonRuleViolation::EmptyObject),
                ("R.c".into(), JsonRuleViolation::EmptyArray),
                ("R.d".into(), JsonRuleViolation::EmptyString),
                ("R.e.f".into(), JsonRuleViolation::DuplicateProperty),
                ("R.g[0].h".into(), JsonRuleViolation::Null),
            ]
        );
    }

    #[test]
    fn allows_nulls_paired_with_extension_arrays() {
        let ok = r#"{"given": ["Jim", null], "_given": [null, {"id": "x"}]}"#;
        assert!(parse(ok).is_ok());
        let unpaired = violations(r#"{"given": ["Jim", null]}"#);
        assert_eq!(unpaired[0].0, "R.given[1]");
        let both_null = violations(r#"{"given": [null], "_given": [null]}"#);
        assert_eq!(both_null.len(), 2);
        let mismatched = violations(r#"{"given": ["a", "b"], "_given": [{"id": "x"}]}"#);
        assert_eq!(mismatched[0].0, "R.given");
    }

    #[test]
    fn enforces_the_depth_limit() {
        let limits = JsonLimits { max_depth: 3 };
        assert!(parse_resource(br#"{"a": {"b": [1]}}"#, limits).is_ok());
        match parse_resource(br#"{"a": {"b": [{"c": 1}]}}"#, limits) {
            Err(JsonError::TooDeep { path, .. }) => assert_eq!(path.to_expression("R"), "R.a.b[0]"),
            other => panic!("{other:?}"),
        }
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        assert!(parse(&format!("{{\"a\": {deep}}}")).is_err());
    }
}
