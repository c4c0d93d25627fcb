//! Operations on a parsed resource (a JSON object) that FHIR defines.

use serde_json::{Map, Value, json};

use super::types::{FhirId, Instant, VersionId};

/// The resource's `resourceType`, if it is present and a string.
pub fn resource_type_of(resource: &Map<String, Value>) -> Option<&str> {
    resource.get("resourceType").and_then(Value::as_str)
}

/// The resource as the server stores it: `id`, `meta.versionId` and
/// `meta.lastUpdated` are the server's (FHIR: a client's values are
/// ignored on create), the rest of `meta` (profiles, tags, security labels)
/// and every other element are kept as sent, in the order sent.
pub fn stamp(
    mut resource: Map<String, Value>,
    id: &FhirId,
    version: VersionId,
    last_updated: Instant,
) -> Map<String, Value> {
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
    stamped
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
        let Value::Object(map) = resource else {
            unreachable!()
        };
        let id = FhirId::parse("abc").expect("valid id");
        let at = Instant::parse("2026-11-21T10:00:00Z").expect("valid instant");
        let stamped = stamp(map, &id, VersionId::FIRST, at);
        assert_eq!(
            serde_json::to_string(&stamped).expect("serialises"),
            r#"{"resourceType":"ServiceRequest","id":"abc","meta":{"versionId":"1","lastUpdated":"2026-11-21T10:00:00.000Z","profile":["http://example.org/p"]},"status":"active"}"#
        );
    }
}
