//! What the index holds for a resource: `index_entries`.

use serde_json::Value;

use super::date::{self, DateRange, MAX_INSTANT, MIN_INSTANT};
use super::params::{ParamType, SearchParam, compiled};
use crate::fhir::ResourceType;
use crate::fhirpath::Item;

/// One value of one search parameter of a resource, as the index stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// The parameter's name.
    pub param: &'static str,
    /// The value.
    pub value: IndexValue,
}

/// An indexed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexValue {
    /// A code with its system (none for plain codes and identifiers without one).
    Token {
        /// `Coding.system`, `Identifier.system`; `None` for a `code` primitive.
        system: Option<String>,
        /// `Coding.code`, `Identifier.value`, the primitive's value.
        code: String,
    },
    /// A reference: `Type/id` for a relative one, the URL itself otherwise.
    Reference(IndexedReference),
    /// A date, as the inclusive range of instants it covers.
    Date(DateRange),
}

/// A reference as indexed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedReference {
    /// `Patient/123` for a relative reference (any `/_history/n` dropped), or
    /// the absolute URL as written.
    pub reference: String,
    /// The target's type, when the reference names one (`Patient`).
    pub target_type: Option<ResourceType>,
    /// The target's id, for a relative reference (`123`).
    pub target_id: Option<String>,
}

/// What the index holds for `resource` of `resource_type`: every value each of
/// the type's search parameters selects. Tokens come from Identifiers,
/// CodeableConcepts (each coding), Codings and code/string primitives;
/// references are normalised to `Type/id` (contained `#id` references are
/// skipped: they name nothing searchable); dates become ranges.
/// `_id` and `_lastUpdated` are not here: they are columns of `resources`.
/// An expression that fails on an odd resource indexes nothing for that
/// parameter rather than failing the write.
pub fn index_entries(resource_type: ResourceType, resource: &Value) -> Vec<IndexEntry> {
    let Ok(table) = compiled() else {
        return Vec::new();
    };
    let mut entries = Vec::new();
    for (type_name, param, expression) in table {
        if *type_name != resource_type.as_str() {
            continue;
        }
        let Ok(found) = expression.evaluate(resource, resource) else {
            continue;
        };
        for item in found.items() {
            let Item::Element { value, type_name } = item else {
                continue;
            };
            let type_name = type_name.as_deref();
            match param.kind {
                ParamType::Token => tokens(param, value, type_name, &mut entries),
                ParamType::Reference => reference(param, value, &mut entries),
                ParamType::Date => dates(param, value, type_name, &mut entries),
            }
        }
    }
    entries.dedup();
    entries
}

fn push_token(
    param: &SearchParam,
    system: Option<&Value>,
    code: Option<&Value>,
    out: &mut Vec<IndexEntry>,
) {
    let Some(code) = code.and_then(Value::as_str).filter(|c| !c.is_empty()) else {
        return;
    };
    out.push(IndexEntry {
        param: param.name,
        value: IndexValue::Token {
            system: system.and_then(Value::as_str).map(str::to_owned),
            code: code.to_owned(),
        },
    });
}

fn tokens(param: &SearchParam, value: &Value, type_name: Option<&str>, out: &mut Vec<IndexEntry>) {
    match (type_name, value) {
        (Some("Identifier"), _) => push_token(param, value.get("system"), value.get("value"), out),
        (Some("Coding"), _) => push_token(param, value.get("system"), value.get("code"), out),
        (Some("CodeableConcept"), _) => {
            for coding in value
                .get("coding")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                push_token(param, coding.get("system"), coding.get("code"), out);
            }
        }
        (_, Value::String(_)) => push_token(param, None, Some(value), out),
        // Booleans are tokens too (`true`/`false`).
        (_, Value::Bool(b)) => push_token(param, None, Some(&Value::String(b.to_string())), out),
        _ => {}
    }
}

fn reference(param: &SearchParam, value: &Value, out: &mut Vec<IndexEntry>) {
    let Some(text) = value.get("reference").and_then(Value::as_str) else {
        return;
    };
    let Some(indexed) = normalise_reference(text) else {
        return;
    };
    if param.patient_only && indexed.target_type.map(ResourceType::as_str) != Some("Patient") {
        return;
    }
    out.push(IndexEntry {
        param: param.name,
        value: IndexValue::Reference(indexed),
    });
}

/// `Type/id[/_history/n]` → `Type/id`; an absolute URL is kept as written,
/// with its type and id read from its last segments when they are FHIR's;
/// `#contained` and anything unreadable → `None`.
pub(crate) fn normalise_reference(text: &str) -> Option<IndexedReference> {
    if text.is_empty() || text.starts_with('#') {
        return None;
    }
    let absolute = text.contains(':');
    let path = text.split(['?', '#']).next().unwrap_or(text);
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // Drop a trailing `_history/{vid}`.
    let segments = match segments.as_slice() {
        [rest @ .., "_history", _] => rest,
        all => all,
    };
    let typed = match segments {
        [.., t, id] => ResourceType::parse(t)
            .ok()
            .filter(|_| crate::fhir::FhirId::parse(id).is_ok())
            .map(|t| (t, (*id).to_owned())),
        _ => None,
    };
    match (absolute, typed) {
        (false, Some((t, id))) if segments.len() == 2 => Some(IndexedReference {
            reference: format!("{t}/{id}"),
            target_type: Some(t),
            target_id: Some(id),
        }),
        // A relative reference that is not `Type/id` is not valid FHIR.
        (false, _) => None,
        // Another server's `Patient/1` is not this one's: a plain-id search
        // must not find it, so only the type is kept (for `patient`).
        (true, typed) => Some(IndexedReference {
            reference: text.to_owned(),
            target_type: typed.map(|(t, _)| t),
            target_id: None,
        }),
    }
}

fn dates(param: &SearchParam, value: &Value, type_name: Option<&str>, out: &mut Vec<IndexEntry>) {
    let range = match (type_name, value) {
        (Some("Period"), _) | (None, Value::Object(_)) => {
            let start = value
                .get("start")
                .and_then(Value::as_str)
                .map(date::range_of);
            let end = value.get("end").and_then(Value::as_str).map(date::range_of);
            match (start, end) {
                (None, None) | (Some(None), _) | (_, Some(None)) => None,
                (start, end) => Some(DateRange {
                    low: start
                        .flatten()
                        .map_or_else(|| MIN_INSTANT.to_owned(), |r| r.low),
                    high: end
                        .flatten()
                        .map_or_else(|| MAX_INSTANT.to_owned(), |r| r.high),
                }),
            }
        }
        (_, Value::String(text)) => date::range_of(text),
        _ => None,
    };
    if let Some(range) = range {
        out.push(IndexEntry {
            param: param.name,
            value: IndexValue::Date(range),
        });
    }
}
