//! Values during evaluation. FHIR data is borrowed from the caller's JSON (`Node`); values
//! the expression computes are owned System values.

use std::cmp::Ordering;

use rust_decimal::Decimal;
use serde_json::Value;

use super::model::Model;
use super::quantity;
use super::temporal::{self, Date, DateTime, Time};

/// A FHIR element in the caller's JSON: a complex element, a resource, or a primitive
/// (its JSON value and the `_name` sibling holding its id and extensions).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Node<'a> {
    pub value: Option<&'a Value>,
    pub ext: Option<&'a Value>,
    /// The FHIR type (a model key), when known.
    pub ty: Option<&'a str>,
}

#[derive(Debug, Clone)]
pub(crate) enum Val<'a> {
    Bool(bool),
    Int(i64),
    Long(i64),
    Dec(Decimal),
    Str(String),
    Date(Date),
    DateTime(DateTime),
    Time(Time),
    /// Value and unit (UCUM code or calendar word).
    Quantity(Decimal, String),
    Node(Node<'a>),
    /// A type, as returned by `type()`: namespace and name.
    Type(&'static str, String),
}

/// Parses a JSON number's text (kept exact by serde_json's `arbitrary_precision`).
pub(crate) fn json_decimal(n: &serde_json::Number) -> Option<Decimal> {
    // With `arbitrary_precision` the number is its text: no allocation.
    let text = n.as_str();
    text.parse::<Decimal>()
        .ok()
        .or_else(|| Decimal::from_scientific(text).ok())
}

fn is_quantity_type(model: &Model, ty: &str) -> bool {
    model.derives_from(ty, "Quantity")
}

impl<'a> Val<'a> {
    pub fn node(value: &'a Value, ty: Option<&'a str>) -> Val<'a> {
        Val::Node(Node {
            value: Some(value),
            ext: None,
            ty,
        })
    }

    /// The System value of a FHIR primitive or Quantity node; other values unchanged.
    pub fn system(&self, model: &Model) -> Option<Val<'a>> {
        let Val::Node(node) = self else {
            return Some(self.clone());
        };
        let value = node.value?;
        let ty = node.ty;
        match value {
            Value::Bool(b) => Some(Val::Bool(*b)),
            Value::Number(n) => {
                let is_integer = match ty {
                    Some(t) => model.derives_from(t, "integer"),
                    None => n.is_i64(),
                };
                if is_integer {
                    n.as_i64().map(Val::Int)
                } else {
                    json_decimal(n).map(Val::Dec)
                }
            }
            Value::String(s) => Some(match ty {
                Some("date") => Val::Date(Date::parse(s)?),
                Some("dateTime") | Some("instant") => Val::DateTime(DateTime::parse_fhir(s)?),
                Some("time") => Val::Time(Time::parse(s)?),
                _ => Val::Str(s.clone()),
            }),
            Value::Object(map) => {
                if ty.is_some_and(|t| is_quantity_type(model, t)) {
                    let amount = match map.get("value")? {
                        Value::Number(n) => json_decimal(n)?,
                        _ => return None,
                    };
                    let unit = map
                        .get("code")
                        .or_else(|| map.get("unit"))
                        .and_then(Value::as_str)
                        .unwrap_or("1");
                    Some(Val::Quantity(amount, unit.to_string()))
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// True for values that are (or wrap) a primitive with a value.
    pub fn has_primitive_value(&self, model: &Model) -> bool {
        match self {
            Val::Node(n) => {
                n.value.is_some_and(|v| !v.is_object() && !v.is_array())
                    && n.ty.is_none_or(|t| model.is_primitive(t))
            }
            Val::Type(..) => false,
            _ => true,
        }
    }
}

/// FHIRPath `toString()` of a System value (`None` for complex nodes).
pub(crate) fn to_string(v: &Val<'_>, model: &Model) -> Option<String> {
    Some(match v.system(model)? {
        Val::Bool(b) => b.to_string(),
        Val::Int(i) | Val::Long(i) => i.to_string(),
        Val::Dec(d) => d.to_string(),
        Val::Str(s) => s,
        Val::Date(d) => d.to_string(),
        Val::DateTime(d) => d.to_string(),
        Val::Time(t) => t.to_string(),
        Val::Quantity(v, u) => {
            if temporal::CalendarUnit::from_unit(&u).is_some() && !quantity::is_ucum_code(&u) {
                format!("{v} {u}")
            } else {
                format!("{v} '{u}'")
            }
        }
        Val::Node(_) | Val::Type(..) => return None,
    })
}

/// Deep JSON equality for complex nodes, ignoring `id` and extensions' order is kept.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (json_decimal(x), json_decimal(y)) {
            (Some(x), Some(y)) => x == y,
            _ => x == y,
        },
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| json_equal(v, w))
        }
        _ => a == b,
    }
}

/// `=` on single items: `Some(bool)`, or `None` when the answer is unknown (empty).
pub(crate) fn equals(a: &Val<'_>, b: &Val<'_>, model: &Model) -> Option<bool> {
    if let (Val::Node(x), Val::Node(y)) = (a, b)
        && let (Some(xv), Some(yv)) = (x.value, y.value)
    {
        // The same node (unions of overlapping paths, `descendants()` against itself).
        if std::ptr::eq(xv, yv) {
            return Some(true);
        }
        if xv.is_object() || yv.is_object() {
            return Some(json_equal(xv, yv));
        }
        // Two plain strings (not dates, whose precision matters): compare the text
        // without converting, which would copy both.
        if let (Value::String(p), Value::String(q)) = (xv, yv)
            && !is_temporal(x.ty)
            && !is_temporal(y.ty)
        {
            return Some(p == q);
        }
    }
    let (a, b) = (a.system(model)?, b.system(model)?);
    match (&a, &b) {
        (Val::Bool(x), Val::Bool(y)) => Some(x == y),
        (Val::Str(x), Val::Str(y)) => Some(x == y),
        (Val::Int(x) | Val::Long(x), Val::Int(y) | Val::Long(y)) => Some(x == y),
        (Val::Int(x) | Val::Long(x), Val::Dec(y)) => Some(Decimal::from(*x) == *y),
        (Val::Dec(x), Val::Int(y) | Val::Long(y)) => Some(*x == Decimal::from(*y)),
        (Val::Dec(x), Val::Dec(y)) => Some(x == y),
        (Val::Quantity(..), Val::Quantity(..)) => {
            quantity::compare(&a, &b).map(|o| o == Ordering::Equal)
        }
        (Val::Type(n1, x), Val::Type(n2, y)) => Some(n1 == n2 && x == y),
        (Val::Date(_) | Val::DateTime(_), Val::Date(_) | Val::DateTime(_) | Val::Str(_))
        | (Val::Time(_), Val::Time(_) | Val::Str(_)) => {
            compare(&a, &b, model).map(|o| o == Ordering::Equal)
        }
        (Val::Str(s), Val::Date(_) | Val::DateTime(_) | Val::Time(_)) => {
            // A string compared with a date converts (FHIR JSON untyped data).
            let converted = convert_string_like(s, &b)?;
            compare(&converted, &b, model).map(|o| o == Ordering::Equal)
        }
        _ => Some(false),
    }
}

/// The text of a value whose equality ([`equals`]) with any other such value is the
/// equality of their texts: a string, or a FHIR string-like primitive that is not a date or
/// time (whose precision matters).
pub(crate) fn plain_text<'v>(v: &'v Val<'_>) -> Option<&'v str> {
    match v {
        Val::Str(s) => Some(s),
        Val::Node(Node {
            value: Some(Value::String(s)),
            ty,
            ..
        }) if !is_temporal(*ty) => Some(s),
        _ => None,
    }
}

fn is_temporal(ty: Option<&str>) -> bool {
    matches!(ty, Some("date" | "dateTime" | "instant" | "time"))
}

fn convert_string_like<'a>(s: &str, like: &Val<'_>) -> Option<Val<'a>> {
    match like {
        Val::Date(_) => Date::parse(s).map(Val::Date),
        Val::DateTime(_) => DateTime::parse(s).map(Val::DateTime),
        Val::Time(_) => Time::parse(s).map(Val::Time),
        _ => None,
    }
}

fn normalize_ws(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// `~` on single items.
pub(crate) fn equivalent(a: &Val<'_>, b: &Val<'_>, model: &Model) -> bool {
    if let (Val::Node(x), Val::Node(y)) = (a, b)
        && let (Some(xv), Some(yv)) = (x.value, y.value)
        && (xv.is_object() || yv.is_object())
    {
        return json_equivalent(xv, yv);
    }
    let (Some(a), Some(b)) = (a.system(model), b.system(model)) else {
        return false;
    };
    match (&a, &b) {
        (Val::Str(x), Val::Str(y)) => normalize_ws(x) == normalize_ws(y),
        (Val::Dec(_) | Val::Int(_), Val::Dec(_) | Val::Int(_)) => {
            let (x, y) = (as_decimal(&a), as_decimal(&b));
            match (x, y) {
                (Some(x), Some(y)) => {
                    let scale = x.scale().min(y.scale());
                    x.round_dp(scale) == y.round_dp(scale)
                }
                _ => false,
            }
        }
        (Val::Date(_) | Val::DateTime(_) | Val::Time(_), _) => {
            compare(&a, &b, model) == Some(Ordering::Equal)
        }
        (Val::Quantity(x, xu), Val::Quantity(y, yu)) => {
            // Equivalence compares at the precision of the less precise value.
            match quantity::convert(*y, yu, xu) {
                Some(y) => {
                    let scale = x.scale().min(y.normalize().scale());
                    x.round_dp(scale) == y.round_dp(scale)
                }
                None => false,
            }
        }
        _ => equals(&a, &b, model).unwrap_or(false),
    }
}

fn json_equivalent(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => normalize_ws(x) == normalize_ws(y),
        (Value::Object(x), Value::Object(y)) => {
            let keys = |m: &serde_json::Map<String, Value>| m.keys().filter(|k| *k != "id").count();
            keys(x) == keys(y)
                && x.iter()
                    .filter(|(k, _)| *k != "id")
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equivalent(v, w)))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().all(|v| y.iter().any(|w| json_equivalent(v, w)))
        }
        _ => json_equal(a, b),
    }
}

pub(crate) fn as_decimal(v: &Val<'_>) -> Option<Decimal> {
    match v {
        Val::Int(i) | Val::Long(i) => Some(Decimal::from(*i)),
        Val::Dec(d) => Some(*d),
        _ => None,
    }
}

/// Ordering for `<`, `>`…: `None` when not comparable or the precision leaves it open.
pub(crate) fn compare(a: &Val<'_>, b: &Val<'_>, model: &Model) -> Option<Ordering> {
    let (a, b) = (a.system(model)?, b.system(model)?);
    match (&a, &b) {
        (Val::Int(x) | Val::Long(x), Val::Int(y) | Val::Long(y)) => Some(x.cmp(y)),
        (Val::Int(_) | Val::Long(_) | Val::Dec(_), Val::Int(_) | Val::Long(_) | Val::Dec(_)) => {
            Some(as_decimal(&a)?.cmp(&as_decimal(&b)?))
        }
        (Val::Str(x), Val::Str(y)) => Some(x.cmp(y)),
        (Val::Date(x), Val::Date(y)) => temporal::compare_dates(x, y),
        (Val::DateTime(x), Val::DateTime(y)) => temporal::compare_datetimes(x, y),
        (Val::Date(x), Val::DateTime(y)) => {
            temporal::compare_datetimes(&DateTime::from_date(*x), y)
        }
        (Val::DateTime(x), Val::Date(y)) => {
            temporal::compare_datetimes(x, &DateTime::from_date(*y))
        }
        (Val::Time(x), Val::Time(y)) => temporal::compare_times(x, y),
        (Val::Str(s), Val::Date(_) | Val::DateTime(_) | Val::Time(_)) => {
            compare(&convert_string_like(s, &b)?, &b, model)
        }
        (Val::Date(_) | Val::DateTime(_) | Val::Time(_), Val::Str(s)) => {
            compare(&a, &convert_string_like(s, &a)?, model)
        }
        (Val::Quantity(..), Val::Quantity(..)) => quantity::compare(&a, &b),
        _ => None,
    }
}
