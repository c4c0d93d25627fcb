//! Unit tests of the walk's helpers.

use std::cmp::Ordering;

use super::references::literal_reference_type;
use super::values::{compare, matches_pattern};
use super::*;

#[test]
fn bounds_compare_numbers_exactly() {
    let number = |text: &str| serde_json::from_str::<Value>(text).expect("a JSON number");
    let ten = number("10");
    assert_eq!(
        compare(&number("10.000000000000000001"), &ten),
        Some(Ordering::Greater)
    );
    assert_eq!(compare(&number("10.0"), &ten), Some(Ordering::Equal));
    assert_eq!(compare(&number("9.99"), &ten), Some(Ordering::Less));
    // Beyond a decimal's range: still ordered.
    assert_eq!(compare(&number("1e40"), &ten), Some(Ordering::Greater));
    let quantity = |value: &str| {
        serde_json::from_str::<Value>(&format!(
            r#"{{"value": {value}, "system": "http://unitsofmeasure.org", "code": "kg"}}"#
        ))
        .expect("a Quantity")
    };
    assert_eq!(
        compare(&quantity("70.5"), &quantity("70.50")),
        Some(Ordering::Equal)
    );
}

#[test]
fn literal_references_name_their_type() {
    assert_eq!(literal_reference_type("Patient/1"), Some("Patient"));
    assert_eq!(
        literal_reference_type("https://x.org/fhir/Patient/1/_history/2"),
        Some("Patient")
    );
    assert_eq!(
        literal_reference_type("Observation/2?_format=json"),
        Some("Observation")
    );
    assert_eq!(
        literal_reference_type("Patient/1/_history/2#x"),
        Some("Patient")
    );
    assert_eq!(literal_reference_type("_history/2"), None);
    assert_eq!(literal_reference_type("urn:uuid:0b0b"), None);
    assert_eq!(literal_reference_type("Nonsense/1"), None);
    assert_eq!(literal_reference_type("1"), None);
}

#[test]
fn patterns_match_subsets() {
    let value = serde_json::json!({"coding": [{"system": "s", "code": "a", "display": "A"}, {"system": "t", "code": "b"}]});
    assert!(matches_pattern(
        &value,
        &serde_json::json!({"coding": [{"system": "t", "code": "b"}]})
    ));
    assert!(!matches_pattern(
        &value,
        &serde_json::json!({"coding": [{"system": "t", "code": "a"}]})
    ));
}
