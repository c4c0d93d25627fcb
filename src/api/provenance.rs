//! Provenance: every version of a ServiceRequest, Task and Observation Sprig stores
//! records who caused it, as a FHIR R4 `Provenance` stored beside it in the same
//! transaction (issue 17).
//!
//! A write handler's transaction collects the versions it wrote (`WriteTx::take_written`);
//! [`record`], called by `AuditHandle::commit` with the request's audit row just before
//! that row is added, stores one Provenance per version: `target` the versioned
//! reference (`Task/t1/_history/2`), `recorded` the version's `lastUpdated`, `activity`
//! create/update/delete (v3-DataOperation), one `agent` (the client, person or open
//! mode as `who`, and the practice it acted for, or the end-user organisation a trusted
//! proxy relayed for, as `onBehalfOf`), and for a later version the one it revised as
//! `entity`. The Provenance is an ordinary stored resource owned by the target's
//! practice, so reads, search (`target`, `recorded`), `_revinclude=Provenance:target`
//! and practice visibility are the store's, unchanged: whoever may read the target may
//! read its Provenance, and another practice's is a 404.
//!
//! Invariants: a Provenance holds ids and codes only (client ids, usernames, ODS
//! codes), never patient data; it commits with the version it records or not at all;
//! clients cannot write one (`capability::SUPPORTED` serves it read-only).

use serde_json::{Value, json};

use super::audit_event::{CLIENT_IDS, STAFF_IDS};
use crate::fhir::identifiers::ODS_ORGANIZATION_SYSTEM;
use crate::fhir::{FhirId, ResourceType};
use crate::store::{
    AuditRecord, HistoryOperation, ResourceWrite, StoreError, WriteTx, WrittenVersion,
};

/// The types whose every version gets a Provenance.
pub const RECORDED_TYPES: [ResourceType; 3] = [
    ResourceType::SERVICE_REQUEST,
    ResourceType::TASK,
    ResourceType::OBSERVATION,
];

const DATA_OPERATION: &str = "http://terminology.hl7.org/CodeSystem/v3-DataOperation";
const PARTICIPANT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/provenance-participant-type";

/// Stores, in `tx`, the Provenance of every version of a [`RECORDED_TYPES`] resource
/// `tx` wrote since the last call, caused by the caller `record` names.
pub async fn record(tx: &mut WriteTx, record: &AuditRecord) -> Result<(), StoreError> {
    let request_id = record.request_id.as_deref().unwrap_or("");
    let versions: Vec<WrittenVersion> = tx
        .take_written()
        .into_iter()
        .filter(|version| RECORDED_TYPES.contains(&version.resource_type))
        .collect();
    let ids: Vec<FhirId> = versions.iter().map(|_| FhirId::generate()).collect();
    // All in one statement per table: each is a round trip with the writer held.
    let writes = versions
        .iter()
        .zip(&ids)
        .map(|(version, id)| ResourceWrite {
            resource_type: ResourceType::PROVENANCE,
            id,
            resource: provenance(version, record),
            received: None,
            request_id,
            owner: version.owner.as_deref(),
        })
        .collect();
    tx.create_all(writes).await.map(drop)
}

/// The Provenance of one version, caused by the caller of `record` (without `id` and
/// `meta`: the store stamps them).
pub fn provenance(version: &WrittenVersion, record: &AuditRecord) -> Value {
    let target = format!(
        "{}/{}/_history/{}",
        version.resource_type, version.id, version.version_id
    );
    let (code, display) = match version.operation {
        HistoryOperation::Create => ("CREATE", "create"),
        HistoryOperation::Update => ("UPDATE", "revise"),
        HistoryOperation::Delete => ("DELETE", "delete"),
    };
    let mut provenance = json!({
        "resourceType": "Provenance",
        "target": [{"reference": target}],
        "recorded": version.recorded.to_fhir(),
        "activity": {"coding": [{"system": DATA_OPERATION, "code": code, "display": display}]},
        "agent": [agent(record)],
    });
    // A later version revises the one before it (after a deletion, re-creates it).
    if version.version_id.get() > 1 {
        let previous = format!(
            "{}/{}/_history/{}",
            version.resource_type,
            version.id,
            version.version_id.get() - 1
        );
        provenance["entity"] = json!([{"role": "revision", "what": {"reference": previous}}]);
    }
    provenance
}

/// Who caused a change: a person of the service (a Practitioner, by username), or a
/// machine client, a trusted proxy or an open mode (a Device, by client id), with the
/// organisation it acted for.
fn agent(record: &AuditRecord) -> Value {
    let author =
        json!({"coding": [{"system": PARTICIPANT_TYPE, "code": "author", "display": "Author"}]});
    let mut agent = match (&record.staff_username, &record.client_id) {
        (Some(username), _) => json!({
            "type": author,
            "who": {"type": "Practitioner", "identifier": {"system": STAFF_IDS, "value": username}},
        }),
        (None, Some(client)) => json!({
            "type": author,
            "who": {"type": "Device", "identifier": {"system": CLIENT_IDS, "value": client}},
        }),
        (None, None) => json!({"type": author, "who": {"display": "unknown"}}),
    };
    if let Some(role) = &record.staff_role {
        agent["role"] = json!([{"text": role}]);
    }
    // Through a trusted proxy, the end-user organisation it relayed for; otherwise the
    // client's one practice.
    if let Some(ods) = record.end_user_ods.as_ref().or(record.ods_code.as_ref()) {
        agent["onBehalfOf"] = json!({
            "type": "Organization",
            "identifier": {"system": ODS_ORGANIZATION_SYSTEM, "value": ods},
        });
    }
    agent
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::{Instant, VersionId};

    fn version(version: i64, operation: HistoryOperation) -> WrittenVersion {
        WrittenVersion {
            resource_type: ResourceType::TASK,
            id: FhirId::parse("t1").expect("id"),
            version_id: VersionId::from_i64(version),
            recorded: Instant::parse("2026-12-04T23:00:00.000Z").expect("instant"),
            operation,
            owner: Some("A81001".into()),
        }
    }

    #[test]
    fn a_relayed_update_names_the_proxy_and_the_end_user_organisation() {
        let record = AuditRecord {
            client_id: Some("bars-proxy".into()),
            proxy_id: Some("bars-proxy".into()),
            end_user_ods: Some("A81001".into()),
            ..AuditRecord::new("update", 200)
        };
        let p = provenance(&version(2, HistoryOperation::Update), &record);
        assert_eq!(p["target"][0]["reference"], "Task/t1/_history/2");
        assert_eq!(p["entity"][0]["what"]["reference"], "Task/t1/_history/1");
        assert_eq!(p["activity"]["coding"][0]["code"], "UPDATE");
        assert_eq!(p["agent"][0]["who"]["identifier"]["value"], "bars-proxy");
        assert_eq!(p["agent"][0]["onBehalfOf"]["identifier"]["value"], "A81001");
    }

    #[test]
    fn a_person_is_a_practitioner_by_username_with_their_role() {
        let record = AuditRecord {
            staff_username: Some("amara".into()),
            staff_role: Some("link-worker".into()),
            ..AuditRecord::new("api:transition", 200)
        };
        let p = provenance(&version(1, HistoryOperation::Create), &record);
        assert_eq!(p["agent"][0]["who"]["type"], "Practitioner");
        assert_eq!(p["agent"][0]["who"]["identifier"]["value"], "amara");
        assert_eq!(p["agent"][0]["role"][0]["text"], "link-worker");
        assert!(p.get("entity").is_none());
        assert!(p["agent"][0].get("onBehalfOf").is_none());
    }
}
