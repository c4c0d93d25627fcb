//! Newtypes that parse: once constructed, a value is known to be valid.

use std::fmt;

use thiserror::Error;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::resource_types::R4_RESOURCE_TYPES;

/// A value that failed to parse as one of the FHIR newtypes.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TypeError {
    /// Not a FHIR `id`: 1 to 64 of `A-Z a-z 0-9 - .`.
    #[error("'{0}' is not a valid FHIR id (1 to 64 characters from A-Z, a-z, 0-9, '-' and '.')")]
    InvalidId(String),
    /// Not a positive integer version.
    #[error("'{0}' is not a valid version id (a positive integer)")]
    InvalidVersion(String),
    /// Not one of the 146 R4 resource types.
    #[error("'{0}' is not a FHIR R4 resource type")]
    UnknownResourceType(String),
    /// Not an RFC 3339 instant with a time zone.
    #[error("'{0}' is not a valid instant")]
    InvalidInstant(String),
}

/// A FHIR logical id (`[A-Za-z0-9\-\.]{1,64}`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FhirId(String);

impl FhirId {
    /// Parses a logical id as FHIR's `id` datatype defines it.
    pub fn parse(raw: &str) -> Result<Self, TypeError> {
        let valid = (1..=64).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if valid {
            Ok(Self(raw.to_owned()))
        } else {
            Err(TypeError::InvalidId(truncate_for_message(raw)))
        }
    }

    /// A new server-assigned id: a UUID v7, so ids sort by creation time
    /// and index locality stays good.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FhirId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A resource version id. Sprig numbers versions 1, 2, 3… per resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VersionId(i64);

impl VersionId {
    /// The first version of every resource.
    pub const FIRST: VersionId = VersionId(1);

    /// Parses the `{vid}` of a `_history/{vid}` URL.
    pub fn parse(raw: &str) -> Result<Self, TypeError> {
        match raw.parse::<i64>() {
            Ok(n) if n >= 1 && !raw.starts_with('+') => Ok(Self(n)),
            _ => Err(TypeError::InvalidVersion(truncate_for_message(raw))),
        }
    }

    /// Wraps a version number read from the store.
    pub fn from_i64(n: i64) -> Self {
        Self(n)
    }

    /// The version number.
    pub fn get(self) -> i64 {
        self.0
    }

    /// The version after this one.
    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

impl fmt::Display for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One of the 146 FHIR R4 resource type names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceType(&'static str);

impl ResourceType {
    /// `ServiceRequest`, the referral.
    pub const SERVICE_REQUEST: ResourceType = ResourceType("ServiceRequest");
    /// `Task`: the referral's progress, reported back.
    pub const TASK: ResourceType = ResourceType("Task");
    /// `Observation`: an outcome measure.
    pub const OBSERVATION: ResourceType = ResourceType("Observation");
    /// `Provenance`: who caused a version of a referral's resources.
    pub const PROVENANCE: ResourceType = ResourceType("Provenance");
    /// `Bundle`: transactions and messages.
    pub const BUNDLE: ResourceType = ResourceType("Bundle");

    /// A type named in code. Use only with an R4 type name (a test checks
    /// every use in Sprig's tables); text from outside goes through `parse`.
    pub const fn named(type_name: &'static str) -> Self {
        Self(type_name)
    }

    /// Parses a resource type name (case-sensitive, as FHIR requires).
    pub fn parse(raw: &str) -> Result<Self, TypeError> {
        R4_RESOURCE_TYPES
            .binary_search(&raw)
            .map(|i| Self(R4_RESOURCE_TYPES[i]))
            .map_err(|_| TypeError::UnknownResourceType(truncate_for_message(raw)))
    }

    /// The type name.
    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// A point in time in UTC, as FHIR's `instant` (used for `meta.lastUpdated`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Instant(OffsetDateTime);

impl Instant {
    /// Now, truncated to milliseconds (the precision Sprig stores).
    pub fn now() -> Self {
        let now = OffsetDateTime::now_utc();
        let millis = now.millisecond();
        Self(
            now.replace_millisecond(millis)
                .unwrap_or(now)
                .to_offset(time::UtcOffset::UTC),
        )
    }

    /// Parses an RFC 3339 timestamp with a time zone.
    pub fn parse(raw: &str) -> Result<Self, TypeError> {
        OffsetDateTime::parse(raw, &Rfc3339)
            .map(|t| Self(t.to_offset(time::UtcOffset::UTC)))
            .map_err(|_| TypeError::InvalidInstant(truncate_for_message(raw)))
    }

    /// `2026-11-21T11:36:00.123Z`: fixed width, so text order is time order.
    pub fn to_fhir(self) -> String {
        fixed_width_utc(self.0)
    }

    /// The HTTP-date form used by `Last-Modified` (second precision).
    pub fn to_http_date(self) -> String {
        let system: std::time::SystemTime = self.0.into();
        httpdate::fmt_http_date(system)
    }

    /// The instant `t` is, to the millisecond.
    pub fn from_offset(t: OffsetDateTime) -> Self {
        let t = t.to_offset(time::UtcOffset::UTC);
        Self(t.replace_millisecond(t.millisecond()).unwrap_or(t))
    }

    /// The underlying timestamp.
    pub fn as_offset_date_time(self) -> OffsetDateTime {
        self.0
    }

    /// Milliseconds since the Unix epoch (what scheduling columns hold).
    pub fn unix_millis(self) -> i64 {
        i64::try_from(self.0.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
    }

    /// The instant `millis` milliseconds after the Unix epoch.
    pub fn from_unix_millis(millis: i64) -> Option<Self> {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
            .ok()
            .map(Self)
    }
}

/// `t` in UTC as fixed-width text to the millisecond, `2026-11-21T11:36:00.123Z`: the form
/// of `meta.lastUpdated` and of the search index's dates, so that text order is time order
/// (for years 1 to 9999, which callers outside that range clamp to).
pub fn fixed_width_utc(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Keeps echoed input short in error messages.
fn truncate_for_message(raw: &str) -> String {
    super::outcome::shorten(raw, 80)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_fhir_id_datatype() {
        assert!(FhirId::parse("abc-1.2").is_ok());
        assert!(FhirId::parse(&"a".repeat(64)).is_ok());
        assert!(FhirId::parse(&"a".repeat(65)).is_err());
        assert!(FhirId::parse("").is_err());
        assert!(FhirId::parse("a b").is_err());
        assert!(FhirId::parse("a_b").is_err());
        assert!(FhirId::parse(FhirId::generate().as_str()).is_ok());
    }

    #[test]
    fn versions_are_positive_integers() {
        assert_eq!(VersionId::parse("3").map(VersionId::get), Ok(3));
        assert!(VersionId::parse("0").is_err());
        assert!(VersionId::parse("-1").is_err());
        assert!(VersionId::parse("+1").is_err());
        assert!(VersionId::parse("x").is_err());
    }

    #[test]
    fn resource_types_are_case_sensitive() {
        assert_eq!(
            ResourceType::parse("ServiceRequest"),
            Ok(ResourceType::SERVICE_REQUEST)
        );
        assert_eq!(ResourceType::parse("Task"), Ok(ResourceType::TASK));
        assert_eq!(
            ResourceType::parse("Observation"),
            Ok(ResourceType::OBSERVATION)
        );
        assert!(ResourceType::parse("servicerequest").is_err());
        assert!(ResourceType::parse("Referral").is_err());
    }

    #[test]
    fn instants_render_fixed_width_utc() {
        let t = Instant::parse("2026-11-21T12:36:00.5+01:00").expect("valid instant");
        assert_eq!(t.to_fhir(), "2026-11-21T11:36:00.500Z");
        assert_eq!(t.to_http_date(), "Sat, 21 Nov 2026 11:36:00 GMT");
        assert!(Instant::parse("2026-11-21").is_err());
    }
}
