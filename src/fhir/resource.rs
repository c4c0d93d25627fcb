//! Operations on a parsed resource (a JSON object) that FHIR defines.

use serde_json::{Map, Value, json};

use super::outcome::{Issue, IssueType};
use super::types::{FhirId, Instant, ResourceType, VersionId};

/// The resource's `resourceType`, if it is present and a string.
pub fn resource_type_of(resource: &Map<String, Value>) -> Option<&str> {
    resource.get("resourceType").and_then(Value::as_str)
}

/// The resource's type, checked: present, a string, an R4 type and, when
/// the caller names one (the URL of a create or `$validate`), that type.
/// Otherwise the issue to report, located at `{type}.resourceType`.
pub fn check_resource_type(
    resource: &Map<String, Value>,
    expected: Option<ResourceType>,
) -> Result<ResourceType, Issue> {
    let root = expected.map(ResourceType::as_str).unwrap_or("Resource");
    let at = format!("{root}.resourceType");
    let found = match resource.get("resourceType") {
        None => {
            let example = expected.map(ResourceType::as_str).unwrap_or("ServiceRequest");
            return Err(Issue::error(
                IssueType::Required,
                "resource-type-missing",
                format!("The resource has no resourceType: add \"resourceType\": \"{example}\""),
            )
            .at(at));
        }
        Some(value) => value.as_str().ok_or_else(|| {
            Issue::error(
                IssueType::Required,
                "resource-type-missing",
                "resourceType must be a JSON string naming the resource type, e.g. \"ServiceRequest\"",
            )
            .at(at.clone())
        })?,
    };
    let resource_type = ResourceType::parse(found).map_err(|e| {
        Issue::error(IssueType::Value, "unknown-resource-type", e.to_string()).at(at.clone())
    })?;
    match expected {
        Some(expected) if expected != resource_type => Err(Issue::error(
            IssueType::Invalid,
            "resource-type-mismatch",
            format!(
                "The body is {} but was sent to the {expected} endpoint; send {} there, or send the {resource_type} to /fhir/{resource_type}",
                super::outcome::with_article(resource_type.as_str()),
                super::outcome::with_article(expected.as_str()),
            ),
        )
        .at(at)),
        _ => Ok(resource_type),
    }
}

/// The resource as the server stores it: `id`, `meta.versionId` and
/// `meta.lastUpdated` are the server's (FHIR: a client's values are
/// ignored on create), the rest of `meta` (profiles, tags, security labels)
/// and every other element are kept as sent, in the order sent. A value
/// that is not a JSON object is not a resource and is returned unchanged.
pub fn stamp(resource: Value, id: &FhirId, version: VersionId, last_updated: Instant) -> Value {
    let Value::Object(mut resource) = resource else {
        return resource;
    };
    let mut stamped = Map::with_capacity(resource.len() + 2);
    if let Some(resource_type) = resource.shift_remove("resourceType") {
        stamped.insert("resourceType".into(), resource_type);
    }
    resource.shift_remove("id");
    stamped.insert("id".into(), json!(id.as_str()));

    let mut meta = match resource.shift_remove("meta") {
        Some(Value::Object(meta)) => meta,
        _ => Map::new(),
    };
    meta.shift_remove("versionId");
    meta.shift_remove("lastUpdated");
    let mut new_meta = Map::with_capacity(meta.len() + 2);
    new_meta.insert("versionId".into(), json!(version.to_string()));
    new_meta.insert("lastUpdated".into(), json!(last_updated.to_fhir()));
    new_meta.extend(meta);
    stamped.insert("meta".into(), Value::Object(new_meta));

    stamped.extend(resource);
    Value::Object(stamped)
}

/// Whether `stored` (a version as [`stamp`] wrote it) and `sent` (a resource to store)
/// say the same thing: equal but for what [`stamp`] sets (`id`, `meta.versionId`,
/// `meta.lastUpdated`), a `meta` left empty without them counting as none. Key order is
/// not content (serde_json's maps compare as maps); a decimal's digits are (`1.0` is not
/// `1.00`: FHIR keeps a decimal's precision). An update whose resource says the same as
/// the current version stores nothing (a "no-op update").
pub fn same_content(stored: &Value, sent: &Value) -> bool {
    let (Value::Object(stored), Value::Object(sent)) = (stored, sent) else {
        return stored == sent;
    };
    same_entries(stored, sent, &["id", "meta"])
        && match (stored.get("meta"), sent.get("meta")) {
            (Some(Value::Object(a)), Some(Value::Object(b))) => same_entries(a, b, &SERVER_META),
            (Some(Value::Object(meta)), None) | (None, Some(Value::Object(meta))) => {
                meta.keys().all(|key| SERVER_META.contains(&key.as_str()))
            }
            (a, b) => a == b,
        }
}

/// The elements of `meta` the server sets on every version.
const SERVER_META: [&str; 2] = ["versionId", "lastUpdated"];

/// Whether two objects hold the same entries, leaving out the keys `skip` names.
fn same_entries(a: &Map<String, Value>, b: &Map<String, Value>, skip: &[&str]) -> bool {
    let kept = |map: &'_ Map<String, Value>| {
        map.iter()
            .filter(|(key, _)| !skip.contains(&key.as_str()))
            .count()
    };
    kept(a) == kept(b)
        && a.iter()
            .filter(|(key, _)| !skip.contains(&key.as_str()))
            .all(|(key, value)| b.get(key) == Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamping_replaces_server_fields_and_keeps_the_rest() {
        let resource = json!({
            "status": "active",
            "resourceType": "ServiceRequest",
            "id": "client-chosen",
            "meta": {"versionId": "9", "profile": ["http://example.org/p"]},
        });
        let id = FhirId::parse("abc").expect("valid id");
        let at = Instant::parse("2026-11-21T10:00:00Z").expect("valid instant");
        let stamped = stamp(resource, &id, VersionId::FIRST, at);
        assert_eq!(
            serde_json::to_string(&stamped).expect("serialises"),
            r#"{"resourceType":"ServiceRequest","id":"abc","meta":{"versionId":"1","lastUpdated":"2026-11-21T10:00:00.000Z","profile":["http://example.org/p"]},"status":"active"}"#
        );
    }
    #[test]
    fn the_same_content_ignores_what_the_server_stamps_and_key_order() {
        let sent = json!({
            "resourceType": "ServiceRequest",
            "status": "active",
            "meta": {"versionId": "1", "profile": ["http://example.org/p"]},
            "intent": "order",
        });
        let id = FhirId::parse("abc").expect("valid id");
        let at = Instant::parse("2026-11-21T10:00:00Z").expect("valid instant");
        let stored = stamp(sent.clone(), &id, VersionId::FIRST.next(), at);
        assert!(same_content(&stored, &sent));
        // No meta at all, against a stored meta holding only the server's stamps.
        let bare = json!({"resourceType": "Task", "status": "ready"});
        let stamped = stamp(bare.clone(), &id, VersionId::FIRST, at);
        assert!(same_content(&stamped, &bare));
        assert!(same_content(
            &stamped,
            &json!({"resourceType": "Task", "status": "ready", "meta": {}})
        ));
    }

    #[test]
    fn any_other_difference_is_a_change() {
        let id = FhirId::parse("abc").expect("valid id");
        let at = Instant::parse("2026-11-21T10:00:00Z").expect("valid instant");
        let sent = json!({"resourceType": "Observation", "status": "final", "valueQuantity": {"value": 1.0}});
        let stored = stamp(sent.clone(), &id, VersionId::FIRST, at);
        let changed = [
            json!({"resourceType": "Observation", "status": "amended", "valueQuantity": {"value": 1.0}}),
            json!({"resourceType": "Observation", "status": "final"}),
            json!({"resourceType": "Observation", "status": "final", "valueQuantity": {"value": 1.0}, "note": []}),
            json!({"resourceType": "Observation", "status": "final", "valueQuantity": {"value": 1.0}, "meta": {"tag": []}}),
        ];
        for other in &changed {
            assert!(!same_content(&stored, other), "{other}");
        }
        let precise: Value = serde_json::from_str(
            r#"{"resourceType": "Observation", "status": "final", "valueQuantity": {"value": 1.00}}"#,
        )
        .expect("JSON");
        assert!(
            !same_content(&stored, &precise),
            "a decimal's precision is content"
        );
    }
}
