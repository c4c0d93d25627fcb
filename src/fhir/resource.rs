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
}
