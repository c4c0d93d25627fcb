//! Content negotiation as FHIR expects it: `Accept` and `_format` for the
//! response, `Content-Type` for the request, `_pretty`, and `Prefer`.
//!
//! Sprig speaks FHIR JSON only; XML, Turtle or anything else asked for gets
//! 406 (response) or 415 (request), with an OperationOutcome saying so.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::error::ApiError;
use crate::fhir::{Issue, IssueType};

/// How to write the response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseFormat {
    /// `application/fhir+json` unless the client asked for plain `application/json`.
    pub content_type: &'static str,
    /// `_pretty=true`: indent the JSON.
    pub pretty: bool,
}

impl ResponseFormat {
    /// A 200 response with `value` written in this format.
    pub fn render(&self, value: &Value) -> Result<Response, ApiError> {
        let text = if self.pretty {
            serde_json::to_string_pretty(value)
        } else {
            serde_json::to_string(value)
        }
        .map_err(|e| ApiError::internal("writing a response", e))?;
        Ok(self.render_text(text))
    }

    /// [`ResponseFormat::render`] of `value` whose compact JSON the caller has written
    /// already (`text`, to store it): sent as it is, not written again, unless `_pretty`
    /// asks for it indented.
    pub fn render_serialized(&self, value: &Value, text: String) -> Result<Response, ApiError> {
        if self.pretty {
            return self.render(value);
        }
        Ok(self.render_text(text))
    }

    /// A 200 response with JSON text, sent as it is (`_pretty` does not apply: a stored
    /// answer is sent again byte for byte), labelled with this format's content type.
    pub fn render_text(&self, json: String) -> Response {
        let mut response = json.into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        response
    }
}

const FHIR_JSON_UTF8: &str = "application/fhir+json; charset=utf-8";
const JSON_UTF8: &str = "application/json; charset=utf-8";

impl<S: Send + Sync> FromRequestParts<S> for ResponseFormat {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        negotiate(&parts.headers, parts.uri.query())
    }
}

/// Chooses the response format from `_format` (which wins) or `Accept`.
pub fn negotiate(headers: &HeaderMap, query: Option<&str>) -> Result<ResponseFormat, ApiError> {
    let mut format_param = None;
    let mut pretty = false;
    for (key, value) in form_pairs(query) {
        match key.as_str() {
            // A literal '+' in a query decodes as a space: undo that for
            // `_format=application/fhir+json`.
            "_format" => format_param = Some(value.replace(' ', "+")),
            "_pretty" => pretty = value == "true",
            _ => {}
        }
    }
    let content_type = match format_param {
        Some(format) => match format.to_ascii_lowercase().as_str() {
            "json" | "application/fhir+json" | "application/json+fhir" => FHIR_JSON_UTF8,
            "application/json" => JSON_UTF8,
            other => {
                return Err(not_acceptable(format!(
                    "_format={other} is not supported: Sprig serves FHIR JSON only (use _format=json or application/fhir+json)"
                )));
            }
        },
        None => match headers.get(header::ACCEPT).map(|v| v.to_str()) {
            None => FHIR_JSON_UTF8,
            Some(Ok(accept)) => choose_from_accept(accept)?,
            Some(Err(_)) => {
                return Err(not_acceptable(
                    "The Accept header is not readable text".into(),
                ));
            }
        },
    };
    Ok(ResponseFormat {
        content_type,
        pretty,
    })
}

fn choose_from_accept(accept: &str) -> Result<&'static str, ApiError> {
    let mut best: Option<(f32, &'static str)> = None;
    for range in accept.split(',').map(str::trim).filter(|r| !r.is_empty()) {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let mut quality = 1.0_f32;
        let mut version_ok = true;
        for param in parts {
            let (name, value) = param.split_once('=').unwrap_or((param, ""));
            let value = value.trim().trim_matches('"');
            match name.trim().to_ascii_lowercase().as_str() {
                "q" => quality = value.parse().unwrap_or(0.0),
                "fhirversion" => version_ok = value == "4.0" || value == "4.0.1",
                _ => {}
            }
        }
        if quality <= 0.0 || !version_ok {
            continue;
        }
        let produced = match media.as_str() {
            "application/json" => JSON_UTF8,
            "application/fhir+json" | "application/json+fhir" | "application/*" | "*/*" => {
                FHIR_JSON_UTF8
            }
            _ => continue,
        };
        if best.is_none_or(|(q, _)| quality > q) {
            best = Some((quality, produced));
        }
    }
    best.map(|(_, produced)| produced).ok_or_else(|| {
        not_acceptable(format!(
            "Accept: {accept} names no format Sprig produces: Sprig serves FHIR R4 JSON (application/fhir+json; fhirVersion=4.0)"
        ))
    })
}

fn not_acceptable(message: String) -> ApiError {
    ApiError::NotAcceptable(Issue::error(
        IssueType::NotSupported,
        "format-not-acceptable",
        message,
    ))
}

/// Checks the request's `Content-Type` names FHIR JSON (or plain JSON).
pub fn require_json_body(headers: &HeaderMap) -> Result<(), ApiError> {
    let unsupported = |message: String| {
        ApiError::UnsupportedMediaType(Issue::error(
            IssueType::NotSupported,
            "unsupported-media-type",
            message,
        ))
    };
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(unsupported(
            "The request has no Content-Type: send the resource as application/fhir+json".into(),
        ));
    };
    let text = value
        .to_str()
        .map_err(|_| unsupported("The Content-Type header is not readable text".into()))?;
    let mut parts = text.split(';').map(str::trim);
    let media = parts.next().unwrap_or("").to_ascii_lowercase();
    if !matches!(
        media.as_str(),
        "application/fhir+json" | "application/json" | "application/json+fhir"
    ) {
        return Err(unsupported(format!(
            "Content-Type {media} is not supported: Sprig reads FHIR JSON only (application/fhir+json)"
        )));
    }
    for param in parts {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        let value = value.trim().trim_matches('"').to_ascii_lowercase();
        match name.trim().to_ascii_lowercase().as_str() {
            "charset" if value != "utf-8" && value != "utf8" => {
                return Err(unsupported(format!(
                    "charset={value} is not supported: FHIR JSON is UTF-8"
                )));
            }
            "fhirversion" if value != "4.0" && value != "4.0.1" => {
                return Err(unsupported(format!(
                    "fhirVersion={value} is not supported: Sprig speaks FHIR R4 (4.0)"
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Why a request's body headers are refused (415) on every route under
/// `/fhir` and `/api`, before anything reads the body: a `Content-Encoding`
/// Sprig does not apply (it decodes none: a gzip body read as JSON would be
/// garbage, and decoding would need a second size limit), a `Content-Type`
/// with an empty parameter (`application/fhir+json;;;`), a charset other
/// than UTF-8, or a FHIR version other than R4. `None`: acceptable.
pub fn body_headers_refusal(headers: &HeaderMap) -> Option<String> {
    for encoding in headers.get_all(header::CONTENT_ENCODING) {
        let Ok(text) = encoding.to_str() else {
            return Some("The Content-Encoding header is not readable text".into());
        };
        for coding in text.split(',').map(str::trim) {
            if !coding.eq_ignore_ascii_case("identity") {
                return Some(format!(
                    "Content-Encoding {coding} is not supported: send the body unencoded (Sprig decodes no content coding)"
                ));
            }
        }
    }
    let content_type = headers.get(header::CONTENT_TYPE)?;
    let Ok(text) = content_type.to_str() else {
        return Some("The Content-Type header is not readable text".into());
    };
    let mut parts = text.split(';');
    let _media = parts.next();
    for param in parts {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        let name = name.trim().to_ascii_lowercase();
        let value = value.trim().trim_matches('"').to_ascii_lowercase();
        if name.is_empty() || value.is_empty() {
            return Some(format!(
                "Content-Type {text} is malformed: each parameter after ';' must be name=value"
            ));
        }
        match name.as_str() {
            "charset" if value != "utf-8" && value != "utf8" => {
                return Some(format!(
                    "charset={value} is not supported: Sprig reads UTF-8 only"
                ));
            }
            "fhirversion" if value != "4.0" && value != "4.0.1" => {
                return Some(format!(
                    "fhirVersion={value} is not supported: Sprig speaks FHIR R4 (4.0)"
                ));
            }
            _ => {}
        }
    }
    None
}

/// What the client asked to get back after a write (`Prefer: return=…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnPreference {
    /// The resource as stored (the default).
    Representation,
    /// No body.
    Minimal,
    /// An OperationOutcome describing the result.
    OperationOutcome,
}

impl ReturnPreference {
    /// Reads `Prefer` (RFC 7240); an absent or unknown preference means
    /// `representation`, as FHIR leaves the default to the server.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        for value in headers.get_all("prefer") {
            let Ok(text) = value.to_str() else { continue };
            for preference in text.split(',') {
                let preference = preference.split(';').next().unwrap_or("").trim();
                let Some((name, value)) = preference.split_once('=') else {
                    continue;
                };
                if name.trim().eq_ignore_ascii_case("return") {
                    match value.trim().trim_matches('"') {
                        "minimal" => return Self::Minimal,
                        "representation" => return Self::Representation,
                        "OperationOutcome" => return Self::OperationOutcome,
                        _ => {}
                    }
                }
            }
        }
        Self::Representation
    }

    /// The value for `Preference-Applied`.
    pub fn applied(self) -> &'static str {
        match self {
            Self::Representation => "return=representation",
            Self::Minimal => "return=minimal",
            Self::OperationOutcome => "return=OperationOutcome",
        }
    }
}

/// `Prefer: handling=lenient` (RFC 7240, FHIR search): ignore unknown or
/// malformed search parameters instead of refusing the search.
pub fn lenient_handling(headers: &HeaderMap) -> bool {
    handling_is(headers, "lenient")
}

/// `Prefer: handling=strict`: refuse a search with a parameter Sprig does not
/// know. Without either preference, unknown parameters are ignored (with a
/// warning) and malformed values of known ones refused.
pub fn strict_handling(headers: &HeaderMap) -> bool {
    handling_is(headers, "strict")
}

fn handling_is(headers: &HeaderMap, wanted: &str) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|p| p.split(';').next())
        .filter_map(|p| p.split_once('='))
        .any(|(name, value)| {
            name.trim().eq_ignore_ascii_case("handling")
                && value.trim().trim_matches('"').eq_ignore_ascii_case(wanted)
        })
}

/// Checks a `_search` body is a form (`application/x-www-form-urlencoded`),
/// as FHIR requires for `POST [type]/_search`.
pub fn require_form_body(headers: &HeaderMap) -> Result<(), ApiError> {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    match media.as_deref() {
        Some("application/x-www-form-urlencoded") => Ok(()),
        other => Err(ApiError::UnsupportedMediaType(Issue::error(
            IssueType::NotSupported,
            "unsupported-media-type",
            format!(
                "POST _search takes its parameters as application/x-www-form-urlencoded (the Content-Type was {}); or use GET with a query string",
                other.unwrap_or("missing")
            ),
        ))),
    }
}

/// Decodes `application/x-www-form-urlencoded` query pairs, skipping any
/// that are not valid.
fn form_pairs(query: Option<&str>) -> Vec<(String, String)> {
    let Some(query) = query else {
        return Vec::new();
    };
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn accept_and_format_choose_json_or_refuse() {
        let ok = |h: &[(&'static str, &'static str)], q: Option<&str>| {
            negotiate(&headers(h), q).map(|f| f.content_type).ok()
        };
        assert_eq!(ok(&[], None), Some(FHIR_JSON_UTF8));
        assert_eq!(ok(&[("accept", "application/json")], None), Some(JSON_UTF8));
        assert_eq!(
            ok(
                &[(
                    "accept",
                    "application/fhir+xml, application/fhir+json;q=0.5"
                )],
                None
            ),
            Some(FHIR_JSON_UTF8)
        );
        assert_eq!(ok(&[("accept", "application/fhir+xml")], None), None);
        assert_eq!(
            ok(
                &[("accept", "application/fhir+json; fhirVersion=3.0")],
                None
            ),
            None
        );
        assert_eq!(
            ok(&[("accept", "text/html, */*;q=0.1")], None),
            Some(FHIR_JSON_UTF8)
        );
        assert_eq!(
            ok(&[("accept", "application/fhir+xml")], Some("_format=json")),
            Some(FHIR_JSON_UTF8)
        );
        assert_eq!(
            ok(&[], Some("_format=application/fhir+json")),
            Some(FHIR_JSON_UTF8)
        );
        assert_eq!(
            ok(&[], Some("_format=application%2Ffhir%2Bjson")),
            Some(FHIR_JSON_UTF8)
        );
        assert_eq!(ok(&[], Some("_format=xml")), None);
        assert!(
            negotiate(&headers(&[]), Some("_pretty=true"))
                .map(|f| f.pretty)
                .unwrap_or(false)
        );
    }

    #[test]
    fn request_content_type_must_be_json_in_utf8() {
        assert!(require_json_body(&headers(&[("content-type", "application/fhir+json")])).is_ok());
        assert!(
            require_json_body(&headers(&[(
                "content-type",
                "application/json; charset=UTF-8"
            )]))
            .is_ok()
        );
        assert!(require_json_body(&headers(&[("content-type", "application/fhir+xml")])).is_err());
        assert!(
            require_json_body(&headers(&[(
                "content-type",
                "application/fhir+json; charset=latin1"
            )]))
            .is_err()
        );
        assert!(require_json_body(&headers(&[])).is_err());
    }

    #[test]
    fn prefer_return_is_read() {
        let pref = |v: &'static str| ReturnPreference::from_headers(&headers(&[("prefer", v)]));
        assert_eq!(pref("return=minimal"), ReturnPreference::Minimal);
        assert_eq!(
            pref("handling=strict, return=OperationOutcome"),
            ReturnPreference::OperationOutcome
        );
        assert_eq!(pref("return=nonsense"), ReturnPreference::Representation);
        assert_eq!(
            ReturnPreference::from_headers(&HeaderMap::new()),
            ReturnPreference::Representation
        );
    }

    #[test]
    fn prefer_handling_is_read() {
        let lenient = |v: &'static str| lenient_handling(&headers(&[("prefer", v)]));
        assert!(lenient("handling=lenient"));
        assert!(lenient("return=minimal, handling=\"lenient\""));
        assert!(!lenient("handling=strict"));
        assert!(!lenient("return=representation"));
        assert!(!lenient_handling(&HeaderMap::new()));
    }

    #[test]
    fn search_bodies_must_be_forms() {
        let form = |v: &'static str| require_form_body(&headers(&[("content-type", v)])).is_ok();
        assert!(form("application/x-www-form-urlencoded"));
        assert!(form("application/x-www-form-urlencoded; charset=utf-8"));
        assert!(!form("application/fhir+json"));
        assert!(require_form_body(&HeaderMap::new()).is_err());
    }

    #[test]
    fn percent_decoding_is_total() {
        assert_eq!(percent_decode("a%2Fb+c"), "a/b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
