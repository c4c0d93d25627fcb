//! Finding the resources a referral's mapping reads: the Patient, the
//! requester, the GP practice, the Consent, the MessageHeader and the
//! message's sender, wherever the GP system put them (contained in the
//! ServiceRequest, or entries of the same Bundle), each reference followed by
//! the one rule of [`crate::fhir::reference`].
//!
//! The practice is the Organization the requester gives: the requester
//! itself, a PractitionerRole's `organization`, or, for a Practitioner, the
//! `organization` of the PractitionerRole in the submission whose
//! `practitioner` is that Practitioner. The sender is the Organization
//! `MessageHeader.sender` names (or its PractitionerRole's organization).
//! Which of them (or the organisation the HTTP request declared,
//! [`Declared`]) the practice's ODS code comes from is the mapping's choice
//! (`mappings/inbound.toml`).
//!
//! Pure: references are resolved within the submission only. A reference the
//! submission cannot resolve leaves that input empty, and the mapping then
//! reports any required field it could not fill.

use serde_json::Value;

use super::InboundResources;
use crate::fhir::reference::{self, BundleIndex, Contained, Resolved};

/// The resources around a referral, borrowed from the submission.
#[derive(Debug, Clone, Copy)]
pub struct SubmittedReferral<'a> {
    /// The ServiceRequest.
    pub referral: &'a Value,
    /// The Bundle it came in (transaction or message), if any.
    pub bundle: Option<&'a Value>,
}

/// What the sender declared outside the FHIR content, for the mapping to
/// fall back on: the HTTP layer decodes it and passes it to
/// [`SubmittedReferral::inputs_with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Declared<'a> {
    /// The Organization of BaRS's `NHSD-End-User-Organisation` header (its
    /// base64 JSON decoded): `%end_user_organisation`.
    pub end_user_organisation: Option<&'a Value>,
}

/// A resource found in the submission, with what resolving its own
/// references needs: its container (for `#id`) and its entry's `fullUrl`.
#[derive(Debug, Clone, Copy)]
struct Found<'a> {
    resource: &'a Value,
    container: &'a Value,
    full_url: Option<&'a str>,
}

impl<'a> SubmittedReferral<'a> {
    /// The mapping's inputs: each reference of the ServiceRequest followed.
    pub fn inputs(&self) -> InboundResources<'a> {
        self.inputs_with(Declared::default())
    }

    /// As [`SubmittedReferral::inputs`], with what the request declared besides.
    pub fn inputs_with(&self, declared: Declared<'a>) -> InboundResources<'a> {
        let lookup = Lookup {
            referral: self.referral,
            bundle: self.bundle.map(BundleIndex::new),
        };
        let referral = lookup.entry_found(self.referral);
        let patient = lookup.follow(referral, self.referral.get("subject"));
        let requester = lookup.follow(referral, self.referral.get("requester"));
        let practice = requester.and_then(|r| match type_of(r.resource) {
            Some("Organization") => Some(r),
            Some("PractitionerRole") => lookup.follow(r, r.resource.get("organization")),
            Some("Practitioner") => lookup.organization_of_role_of(r),
            _ => None,
        });
        let consent = self
            .referral
            .get("supportingInfo")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|reference| lookup.follow(referral, Some(reference)))
            .find(|r| type_of(r.resource) == Some("Consent"));
        let message = self.bundle.and_then(|bundle| {
            entries(bundle)
                .next()
                .filter(|first| type_of(first) == Some("MessageHeader"))
        });
        let sender = message
            .and_then(|header| lookup.follow(lookup.entry_found(header), header.get("sender")))
            .and_then(|s| match type_of(s.resource) {
                Some("Organization") => Some(s),
                Some("PractitionerRole") => lookup.follow(s, s.resource.get("organization")),
                _ => None,
            });
        let resource =
            |found: Option<Found<'a>>| found.map(|f| f.resource).filter(|r| type_of(r).is_some());
        InboundResources {
            referral: self.referral,
            patient: resource(patient),
            requester: resource(requester),
            practice: resource(practice).filter(|r| type_of(r) == Some("Organization")),
            consent: resource(consent),
            message,
            bundle: self.bundle,
            sender: resource(sender).filter(|r| type_of(r) == Some("Organization")),
            end_user_organisation: declared.end_user_organisation,
        }
    }
}

/// The submission, indexed once.
struct Lookup<'a> {
    referral: &'a Value,
    bundle: Option<BundleIndex<'a>>,
}

impl<'a> Lookup<'a> {
    /// A resource that is the ServiceRequest or a Bundle entry: its own
    /// container, with its entry's `fullUrl`.
    fn entry_found(&self, resource: &'a Value) -> Found<'a> {
        let full_url = self.bundle.as_ref().and_then(|bundle| {
            let position = bundle.position_of(resource)?;
            bundle.entry(position)?.full_url
        });
        Found {
            resource,
            container: resource,
            full_url,
        }
    }

    /// The resource a Reference held by `from` points at, if it is in the
    /// submission (and resolves to one resource).
    fn follow(&self, from: Found<'a>, reference: Option<&Value>) -> Option<Found<'a>> {
        let text = reference::reference_text(reference?)?;
        let contained = Contained::of(from.container);
        match reference::resolve(text, Some(&contained), self.bundle.as_ref(), from.full_url)
            .ok()?
        {
            Resolved::Container => Some(Found {
                resource: from.container,
                ..from
            }),
            Resolved::Contained { resource, .. } => Some(Found { resource, ..from }),
            Resolved::Entry { resource, .. } => Some(self.entry_found(resource)),
            Resolved::Elsewhere => None,
        }
    }

    /// The organization of the first PractitionerRole in the submission
    /// (contained in the ServiceRequest, or an entry) whose `practitioner`
    /// is `practitioner` and whose `organization` is found.
    fn organization_of_role_of(&self, practitioner: Found<'a>) -> Option<Found<'a>> {
        let contained = self
            .referral
            .get("contained")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|resource| Found {
                resource,
                container: self.referral,
                full_url: self.entry_found(self.referral).full_url,
            });
        let bundled = self
            .bundle
            .iter()
            .flat_map(BundleIndex::entries)
            .map(|(_, entry)| self.entry_found(entry.resource));
        contained
            .chain(bundled)
            .filter(|role| type_of(role.resource) == Some("PractitionerRole"))
            .filter(|role| {
                self.follow(*role, role.resource.get("practitioner"))
                    .is_some_and(|p| std::ptr::eq(p.resource, practitioner.resource))
            })
            .find_map(|role| self.follow(role, role.resource.get("organization")))
    }
}

fn type_of(resource: &Value) -> Option<&str> {
    resource.get("resourceType").and_then(Value::as_str)
}

/// The resources of a Bundle's entries, in order.
pub fn entries(bundle: &Value) -> impl Iterator<Item = &Value> {
    bundle
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.get("resource"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn example(name: &str) -> Value {
        let path = format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(path).expect("example exists"))
            .expect("example is JSON")
    }

    fn referral_in(bundle: &Value) -> &Value {
        entries(bundle)
            .find(|r| type_of(r) == Some("ServiceRequest"))
            .expect("a ServiceRequest entry")
    }

    fn ods(organization: Option<&Value>) -> Option<&str> {
        organization?["identifier"][0]["value"].as_str()
    }

    #[test]
    fn contained_resources_are_found() {
        let referral = example("referral-servicerequest.json");
        let inputs = SubmittedReferral {
            referral: &referral,
            bundle: None,
        }
        .inputs();
        assert_eq!(inputs.patient.and_then(type_of), Some("Patient"));
        assert_eq!(inputs.practice.and_then(type_of), Some("Organization"));
        assert_eq!(inputs.consent.and_then(type_of), Some("Consent"));
        assert!(inputs.message.is_none());
        assert!(inputs.sender.is_none());
    }

    #[test]
    fn bundle_entries_are_found_through_a_practitioner_role() {
        for name in [
            "referral-transaction-bundle.json",
            "referral-message-bundle.json",
        ] {
            let bundle = example(name);
            let inputs = SubmittedReferral {
                referral: referral_in(&bundle),
                bundle: Some(&bundle),
            }
            .inputs();
            assert_eq!(inputs.patient.and_then(type_of), Some("Patient"), "{name}");
            assert_eq!(
                inputs.requester.and_then(type_of),
                Some("PractitionerRole"),
                "{name}"
            );
            assert_eq!(
                inputs.practice.and_then(type_of),
                Some("Organization"),
                "{name}"
            );
            assert_eq!(inputs.consent.and_then(type_of), Some("Consent"), "{name}");
        }
        let message = example("referral-message-bundle.json");
        let inputs = SubmittedReferral {
            referral: referral_in(&message),
            bundle: Some(&message),
        }
        .inputs();
        assert_eq!(inputs.message.and_then(type_of), Some("MessageHeader"));
        assert_eq!(ods(inputs.sender), Some("Y12345"));
    }

    #[test]
    fn a_practitioner_requester_leads_to_its_role_in_the_message_and_the_sender() {
        let mut message = example("referral-message-bundle.json");
        // The requester is the Practitioner, by Type/id against its entry's
        // own type and id; the Consent is referenced without `type`.
        message["entry"][5]["resource"]["id"] = json!("dr-example");
        let referral = &mut message["entry"][1]["resource"];
        referral["requester"] = json!({"reference": "Practitioner/dr-example"});
        referral["supportingInfo"][0]
            .as_object_mut()
            .map(|m| m.shift_remove("type"));
        let inputs = SubmittedReferral {
            referral: &message["entry"][1]["resource"],
            bundle: Some(&message),
        }
        .inputs();
        assert_eq!(inputs.requester.and_then(type_of), Some("Practitioner"));
        assert_eq!(ods(inputs.practice), Some("Y12345"));
        assert_eq!(inputs.consent.and_then(type_of), Some("Consent"));

        // Without the PractitionerRole, no practice: the sender remains.
        let mut without_role = message.clone();
        without_role["entry"]
            .as_array_mut()
            .map(|entries| entries.remove(4));
        let inputs = SubmittedReferral {
            referral: &without_role["entry"][1]["resource"],
            bundle: Some(&without_role),
        }
        .inputs();
        assert!(inputs.practice.is_none());
        assert_eq!(ods(inputs.sender), Some("Y12345"));

        // What the request declared is handed over as it is.
        let declared = json!({"resourceType": "Organization", "identifier": [
            {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "A81001"}]});
        let inputs = SubmittedReferral {
            referral: &without_role["entry"][1]["resource"],
            bundle: Some(&without_role),
        }
        .inputs_with(Declared {
            end_user_organisation: Some(&declared),
        });
        assert_eq!(ods(inputs.end_user_organisation), Some("A81001"));
    }
}
