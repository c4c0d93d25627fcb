//! Finding the resources a referral's mapping reads: the Patient, the
//! requester, the GP practice and the Consent, wherever the GP system put
//! them (contained in the ServiceRequest, or entries of the same Bundle).
//!
//! Pure: references are resolved within the submission only. A reference the
//! submission cannot resolve leaves that input empty, and the mapping then
//! reports any required field it could not fill.

use serde_json::Value;

use super::InboundResources;

/// The resources around a referral, borrowed from the submission.
#[derive(Debug, Clone, Copy)]
pub struct SubmittedReferral<'a> {
    /// The ServiceRequest.
    pub referral: &'a Value,
    /// The Bundle it came in (transaction or message), if any.
    pub bundle: Option<&'a Value>,
}

impl<'a> SubmittedReferral<'a> {
    /// The mapping's inputs: each reference of the ServiceRequest followed.
    pub fn inputs(&self) -> InboundResources<'a> {
        let patient = self.follow(self.referral, self.referral.get("subject"));
        let requester = self.follow(self.referral, self.referral.get("requester"));
        let practice = requester.and_then(|r| match type_of(r) {
            Some("Organization") => Some(r),
            Some("PractitionerRole") => self.follow(r, r.get("organization")),
            _ => None,
        });
        let consent = self
            .referral
            .get("supportingInfo")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|reference| self.follow(self.referral, Some(reference)))
            .find(|r| type_of(r) == Some("Consent"));
        let message = self.bundle.and_then(|bundle| {
            entries(bundle)
                .next()
                .filter(|first| type_of(first) == Some("MessageHeader"))
        });
        InboundResources {
            referral: self.referral,
            patient,
            requester,
            practice,
            consent,
            message,
            bundle: self.bundle,
        }
    }

    /// The resource a Reference points at: contained in `holder` (`#id`),
    /// contained in the ServiceRequest, or a Bundle entry (by `fullUrl`, or by
    /// `Type/id` against the entry's resource).
    fn follow(&self, holder: &'a Value, reference: Option<&Value>) -> Option<&'a Value> {
        let target = reference?.get("reference")?.as_str()?;
        if let Some(local) = target.strip_prefix('#') {
            return contained(holder, local).or_else(|| contained(self.referral, local));
        }
        let bundle = self.bundle?;
        let entries = bundle.get("entry")?.as_array()?;
        entries
            .iter()
            .find(|entry| entry.get("fullUrl").and_then(Value::as_str) == Some(target))
            .or_else(|| {
                let (resource_type, id) = target.rsplit_once('/')?;
                let resource_type = resource_type.rsplit('/').next()?;
                entries.iter().find(|entry| {
                    let resource = entry.get("resource");
                    resource.and_then(type_of) == Some(resource_type)
                        && resource.and_then(|r| r.get("id")).and_then(Value::as_str) == Some(id)
                })
            })
            .and_then(|entry| entry.get("resource"))
    }
}

fn contained<'a>(holder: &'a Value, id: &str) -> Option<&'a Value> {
    holder
        .get("contained")?
        .as_array()?
        .iter()
        .find(|r| r.get("id").and_then(Value::as_str) == Some(id))
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
    }
}
