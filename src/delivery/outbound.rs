//! Turns an outbox message into the request the receiver gets, by the
//! endpoint's mode:
//! - `rest`: `PUT Task/{id}` (the Task's id is stable, so a retry is an
//!   update, never a second Task) and `POST Observation` with `If-None-Exist`
//!   on the Observation's identifier (a retry finds the first one);
//! - `message`: a BaRS-style `servicerequest-response` message Bundle to
//!   `$process-message`, addressed to the `source.endpoint` of the message
//!   that brought the referral.
//!
//! Every request of one message carries the same `X-Request-ID` (derived from
//! the resource version), so a receiver can recognise a repeat.

use serde_json::{Value, json};
use uuid::Uuid;

use super::transport::OutboundRequest;
use crate::fhir::Instant;
use crate::store::outbox::ClaimedMessage;

const FHIR_JSON: &str = "application/fhir+json";
const MESSAGE_EVENTS: &str = "https://fhir.nhs.uk/CodeSystem/message-events-bars";

/// A fixed namespace for the ids of outgoing messages (a v4 UUID chosen once).
const MESSAGE_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2f7e_8d4b_4a55_9b2e_51c0_a7d3_e9f1);

/// Why a message cannot be turned into a request. Retrying does not help.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestBuildError {
    /// REST delivery knows Tasks and Observations only.
    #[error("{0} updates cannot be delivered by REST")]
    UnsupportedType(String),
    /// `If-None-Exist` needs the Observation's identifier.
    #[error(
        "Observation/{0} has no identifier with a system and value to make its POST conditional"
    )]
    ObservationWithoutIdentifier(String),
    /// The stored resource is not JSON (a defect).
    #[error("the stored resource is not valid JSON: {0}")]
    InvalidStoredResource(String),
}

/// What a message-mode request says about Sprig and the referral.
#[derive(Debug, Clone)]
pub struct MessageContext<'a> {
    /// Sprig's FHIR base URL, absolute (for `focus` and `source.endpoint`).
    pub fhir_base: &'a str,
    /// The service's name (`source.name`).
    pub service_name: &'a str,
    /// The `Bundle.id` of the message that brought the referral, if it came
    /// as a message: what `response.identifier` names.
    pub original_message_id: Option<&'a str>,
    /// Where the receiver's own `$process-message` is, when the referral
    /// message gave no `source.endpoint`.
    pub fallback_destination: &'a str,
}

/// The id every attempt to deliver this version carries.
pub fn message_id(message: &ClaimedMessage) -> Uuid {
    Uuid::new_v5(
        &MESSAGE_NAMESPACE,
        format!(
            "{}/{}/_history/{}",
            message.resource_type, message.resource_id, message.version_id
        )
        .as_bytes(),
    )
}

fn common_headers(request: OutboundRequest, message: &ClaimedMessage) -> OutboundRequest {
    request
        .with_header("Content-Type", FHIR_JSON)
        .with_header("Accept", FHIR_JSON)
        .with_header("X-Request-ID", message_id(message).to_string())
        .with_header("X-Correlation-ID", message.referral_id.clone())
}

/// The REST request for `message`, whose stored JSON is `resource`.
pub fn rest_request(
    message: &ClaimedMessage,
    resource: &str,
) -> Result<OutboundRequest, RequestBuildError> {
    match message.resource_type.as_str() {
        "Task" => Ok(common_headers(
            OutboundRequest::new(
                reqwest::Method::PUT,
                format!("Task/{}", message.resource_id),
            ),
            message,
        )
        .with_body(resource.to_owned())),
        "Observation" => {
            let parsed: Value = serde_json::from_str(resource)
                .map_err(|e| RequestBuildError::InvalidStoredResource(e.to_string()))?;
            let token = identifier_token(&parsed).ok_or_else(|| {
                RequestBuildError::ObservationWithoutIdentifier(message.resource_id.clone())
            })?;
            let condition: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("identifier", &token)
                .finish();
            Ok(common_headers(
                OutboundRequest::new(reqwest::Method::POST, "Observation"),
                message,
            )
            .with_header("If-None-Exist", condition)
            .with_body(resource.to_owned()))
        }
        other => Err(RequestBuildError::UnsupportedType(other.to_owned())),
    }
}

/// `system|value` of the first identifier with both, escaped as a FHIR token
/// search value (`\`, `|`, `,` and `$` are escaped with a backslash).
fn identifier_token(resource: &Value) -> Option<String> {
    resource
        .get("identifier")?
        .as_array()?
        .iter()
        .find_map(|identifier| {
            let system = identifier.get("system")?.as_str()?;
            let value = identifier.get("value")?.as_str()?;
            Some(format!("{}|{}", escape_token(system), escape_token(value)))
        })
}

fn escape_token(raw: &str) -> String {
    let mut escaped = String::with_capacity(raw.len());
    for c in raw.chars() {
        if matches!(c, '\\' | '|' | ',' | '$') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The message-mode request for `message`, whose stored JSON is `resource`,
/// stamped `changed_at` (the change's time, so that every attempt sends the
/// same bytes).
pub fn message_request(
    message: &ClaimedMessage,
    resource: &str,
    context: &MessageContext<'_>,
    changed_at: Instant,
) -> Result<OutboundRequest, RequestBuildError> {
    let resource: Value = serde_json::from_str(resource)
        .map_err(|e| RequestBuildError::InvalidStoredResource(e.to_string()))?;
    let bundle_id = message_id(message);
    let header_id = Uuid::new_v5(&bundle_id, b"MessageHeader");
    let resource_url = format!(
        "{}/{}/{}",
        context.fhir_base.trim_end_matches('/'),
        message.resource_type,
        message.resource_id
    );
    let mut header = json!({
        "resourceType": "MessageHeader",
        "id": header_id.to_string(),
        "meta": {"lastUpdated": changed_at.to_fhir()},
        "eventCoding": {"system": MESSAGE_EVENTS, "code": "servicerequest-response"},
        "destination": [{
            "endpoint": message.reply_to.as_deref().unwrap_or(context.fallback_destination),
        }],
        "source": {
            "name": context.service_name,
            "software": "Sprig",
            "version": env!("CARGO_PKG_VERSION"),
            "endpoint": format!("{}/$process-message", context.fhir_base.trim_end_matches('/')),
        },
        "focus": [{"reference": resource_url}],
    });
    if let Some(original) = context.original_message_id {
        // BaRS asynchronous feedback: the answer names the request message.
        header["response"] = json!({"identifier": original, "code": "ok"});
    }
    let bundle = json!({
        "resourceType": "Bundle",
        "id": bundle_id.to_string(),
        "meta": {"lastUpdated": changed_at.to_fhir()},
        "type": "message",
        "timestamp": changed_at.to_fhir(),
        "entry": [
            {"fullUrl": format!("urn:uuid:{header_id}"), "resource": header},
            {"fullUrl": resource_url, "resource": resource},
        ],
    });
    Ok(common_headers(
        OutboundRequest::new(reqwest::Method::POST, "$process-message"),
        message,
    )
    .with_body(bundle.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimed(resource_type: &str, version: i64) -> ClaimedMessage {
        ClaimedMessage {
            seq: 7,
            referral_id: "ref-1".into(),
            resource_type: resource_type.into(),
            resource_id: "abc".into(),
            version_id: version,
            destination_ods: "A81001".into(),
            reply_to: Some("https://fhir.nhs.uk/Id/dos-service-id|2000011147".into()),
            created_at: "2026-11-21T10:00:00.000Z".into(),
            attempts: 1,
            age_from_ms: 0,
        }
    }

    fn header<'a>(request: &'a OutboundRequest, name: &str) -> Option<&'a str> {
        request
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_task_is_put_by_id_with_a_stable_request_id() {
        let body = r#"{"resourceType":"Task","id":"abc"}"#;
        let first = rest_request(&claimed("Task", 2), body).unwrap();
        let again = rest_request(&claimed("Task", 2), body).unwrap();
        let next = rest_request(&claimed("Task", 3), body).unwrap();
        assert_eq!(first.method, reqwest::Method::PUT);
        assert_eq!(first.path, "Task/abc");
        assert_eq!(header(&first, "content-type"), Some(FHIR_JSON));
        assert_eq!(
            header(&first, "x-request-id"),
            header(&again, "x-request-id")
        );
        assert_ne!(
            header(&first, "x-request-id"),
            header(&next, "x-request-id")
        );
        assert_eq!(header(&first, "x-correlation-id"), Some("ref-1"));
        assert_eq!(&first.body[..], body.as_bytes());
    }

    #[test]
    fn an_observation_is_posted_conditionally_on_its_identifier() {
        let body = r#"{"resourceType":"Observation","id":"abc",
            "identifier":[{"value":"no system"},{"system":"https://sprig.example/id/outcome","value":"a|b,c"}]}"#;
        let request = rest_request(&claimed("Observation", 1), body).unwrap();
        assert_eq!(request.method, reqwest::Method::POST);
        assert_eq!(request.path, "Observation");
        assert_eq!(
            header(&request, "if-none-exist"),
            Some("identifier=https%3A%2F%2Fsprig.example%2Fid%2Foutcome%7Ca%5C%7Cb%5C%2Cc")
        );
        let without = rest_request(
            &claimed("Observation", 1),
            r#"{"resourceType":"Observation","id":"abc"}"#,
        );
        assert_eq!(
            without.unwrap_err(),
            RequestBuildError::ObservationWithoutIdentifier("abc".into())
        );
        assert!(matches!(
            rest_request(&claimed("Patient", 1), "{}"),
            Err(RequestBuildError::UnsupportedType(_))
        ));
    }

    #[test]
    fn a_message_answers_the_referral_message() {
        let context = MessageContext {
            fhir_base: "https://sprig.example/fhir/",
            service_name: "Spring",
            original_message_id: Some("orig-1"),
            fallback_destination: "https://gp.example/fhir/$process-message",
        };
        let now = Instant::parse("2026-11-21T10:00:00.000Z").unwrap();
        let request = message_request(
            &claimed("Task", 2),
            r#"{"resourceType":"Task","id":"abc"}"#,
            &context,
            now,
        )
        .unwrap();
        assert_eq!(request.path, "$process-message");
        let bundle: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(bundle["type"], "message");
        assert_eq!(
            bundle["id"].as_str(),
            header(&request, "x-request-id"),
            "the Bundle id is the request id"
        );
        let header = &bundle["entry"][0]["resource"];
        assert_eq!(header["eventCoding"]["code"], "servicerequest-response");
        assert_eq!(
            header["destination"][0]["endpoint"],
            "https://fhir.nhs.uk/Id/dos-service-id|2000011147"
        );
        assert_eq!(header["response"]["identifier"], "orig-1");
        assert_eq!(
            header["focus"][0]["reference"],
            "https://sprig.example/fhir/Task/abc"
        );
        assert_eq!(bundle["entry"][1]["resource"]["resourceType"], "Task");

        let mut no_reply = claimed("Task", 2);
        no_reply.reply_to = None;
        let context = MessageContext {
            original_message_id: None,
            ..context
        };
        let request =
            message_request(&no_reply, r#"{"resourceType":"Task"}"#, &context, now).unwrap();
        let bundle: Value = serde_json::from_slice(&request.body).unwrap();
        let header = &bundle["entry"][0]["resource"];
        assert_eq!(
            header["destination"][0]["endpoint"],
            "https://gp.example/fhir/$process-message"
        );
        assert!(header.get("response").is_none());
    }
}
