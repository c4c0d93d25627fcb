//! Resolving a `Reference` within the submission it came in: the one rule
//! Sprig follows wherever it looks a reference up (the profile walk's
//! reference targets, `mapping::intake`'s search for a referral's Patient,
//! practice and Consent, and, to come, FHIRPath's `resolve()`).
//!
//! The rule, as FHIR R4 states it for Bundles (§2.36.4, "Resolving references
//! in Bundles") and as HL7's validator applies it:
//!
//! 1. `#id` is the resource with that id in the container's `contained`
//!    (the container is the resource that holds the reference or, for a
//!    reference inside a contained resource, the resource that contains it);
//!    `#` alone is the container itself. An `#id` that no contained resource
//!    has is an error.
//! 2. Inside a Bundle, a reference equal to an entry's `fullUrl` is that entry.
//! 3. A relative reference `Type/id` is the entry whose `fullUrl` is RESTful
//!    and ends in `/Type/id`, or whose resource is a `Type` with that `id`.
//!    When entries with different bases match, the one on the referring
//!    entry's base wins (a relative reference is relative to the base of the
//!    entry that holds it).
//! 4. A versioned reference (`Type/id/_history/n`, or a `fullUrl` followed by
//!    `/_history/n`) matches only an entry whose `meta.versionId` is `n`; an
//!    entry without `meta.versionId` matches any version.
//! 5. A reference that still matches two entries is an error: two entries
//!    have the same identity. So is a `urn:` reference (`urn:uuid:`,
//!    `urn:oid:`) that no entry has as its `fullUrl`: it can only mean an entry.
//! 6. Anything else (outside a Bundle, or a RESTful or absolute reference no
//!    entry matches) is a resource elsewhere, not resolved here and not an
//!    error. Conditional references (`Type?query`) are never resolved here.
//!
//! Pure: no I/O. An index borrows the submission; building one is linear in
//! its size, and each resolution is a hash lookup.

use serde_json::{Map, Value};
use thiserror::Error;

use super::FastMap;

/// What a reference resolved to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Resolved<'a> {
    /// `#`: the container itself.
    Container,
    /// A resource in the container's `contained`, at `position`.
    Contained {
        /// Its index in `contained`.
        position: usize,
        /// The resource.
        resource: &'a Value,
    },
    /// The resource of the Bundle's entry at `position`.
    Entry {
        /// Its index in `Bundle.entry`.
        position: usize,
        /// The entry's resource.
        resource: &'a Value,
    },
    /// A resource outside the submission (or a conditional reference).
    Elsewhere,
}

impl<'a> Resolved<'a> {
    /// The resource found in the submission, if it is one (not the container).
    pub fn resource(&self) -> Option<&'a Value> {
        match self {
            Self::Contained { resource, .. } | Self::Entry { resource, .. } => Some(resource),
            Self::Container | Self::Elsewhere => None,
        }
    }
}

/// Why a reference that must resolve within the submission does not.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReferenceError {
    /// `#id`, but no contained resource has that id.
    #[error("no contained resource has the id '{0}'")]
    ContainedNotFound(String),
    /// A `urn:` reference that no entry has as its `fullUrl`.
    #[error("no entry of the Bundle has the fullUrl {0}")]
    NotInBundle(String),
    /// The reference matches two entries (positions in `Bundle.entry`).
    #[error("it matches more than one entry of the Bundle (entry[{first}] and entry[{second}])")]
    Ambiguous {
        /// The first entry it matches.
        first: usize,
        /// The second.
        second: usize,
    },
}

/// The resources contained in a container, by id.
#[derive(Debug, Clone, Default)]
pub struct Contained<'a> {
    by_id: FastMap<&'a str, (usize, &'a Value)>,
}

impl<'a> Contained<'a> {
    /// The contained resources of `container` (a resource); none when it is
    /// not an object.
    pub fn of(container: &'a Value) -> Self {
        container.as_object().map(Self::of_map).unwrap_or_default()
    }

    /// As [`Contained::of`], for a resource already known to be an object.
    pub fn of_map(container: &'a Map<String, Value>) -> Self {
        let mut by_id = FastMap::default();
        let items = container.get("contained").and_then(Value::as_array);
        for (position, item) in items.into_iter().flatten().enumerate() {
            if let Some(id) = item.get("id").and_then(Value::as_str) {
                // The first of two with one id (itself an error elsewhere).
                by_id.entry(id).or_insert((position, item));
            }
        }
        Self { by_id }
    }

    /// The contained resource with this id, and its index in `contained`.
    pub fn get(&self, id: &str) -> Option<(usize, &'a Value)> {
        self.by_id.get(id).copied()
    }
}

/// One entry of a Bundle, as references see it.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// `fullUrl`.
    pub full_url: Option<&'a str>,
    /// `resource`.
    pub resource: &'a Value,
    /// `resource.meta.versionId`.
    pub version_id: Option<&'a str>,
}

/// The entry positions one key leads to (almost always one).
#[derive(Debug, Clone)]
enum Positions {
    One(usize),
    Many(Vec<usize>),
}

impl Positions {
    fn as_slice(&self) -> &[usize] {
        match self {
            Self::One(position) => std::slice::from_ref(position),
            Self::Many(positions) => positions,
        }
    }

    fn push(&mut self, position: usize) {
        match self {
            Self::One(first) if *first == position => {}
            Self::One(first) => {
                let first = *first;
                *self = Self::Many(vec![first, position]);
            }
            Self::Many(positions) => {
                if positions.last() != Some(&position) {
                    positions.push(position);
                }
            }
        }
    }
}

/// A Bundle's entries, indexed for resolving references to them.
#[derive(Debug, Clone, Default)]
pub struct BundleIndex<'a> {
    /// By position in `Bundle.entry`; `None` for an entry without a resource.
    entries: Vec<Option<Entry<'a>>>,
    by_full_url: FastMap<&'a str, Positions>,
    /// (type, id), from the resource itself and from a RESTful `fullUrl`.
    by_type_and_id: FastMap<(&'a str, &'a str), Positions>,
    /// The address of each entry's resource → its position.
    by_address: FastMap<usize, usize>,
    /// (first, later) entries with the same `fullUrl` and `meta.versionId`.
    duplicates: Vec<(usize, usize)>,
}

impl<'a> BundleIndex<'a> {
    /// Indexes the entries of `bundle` (a Bundle resource).
    pub fn new(bundle: &'a Value) -> Self {
        bundle.as_object().map(Self::of_map).unwrap_or_default()
    }

    /// As [`BundleIndex::new`], for a Bundle already known to be an object.
    pub fn of_map(bundle: &'a Map<String, Value>) -> Self {
        let items = bundle
            .get("entry")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        let mut index = Self {
            entries: Vec::with_capacity(items.len()),
            ..Self::default()
        };
        for (position, item) in items.iter().enumerate() {
            let resource = item.get("resource").filter(|r| r.is_object());
            let Some(resource) = resource else {
                index.entries.push(None);
                continue;
            };
            let full_url = item.get("fullUrl").and_then(Value::as_str);
            let text = |key: &str| resource.get(key).and_then(Value::as_str);
            let resource_type = text("resourceType");
            let id = text("id");
            let version_id = resource
                .get("meta")
                .and_then(|meta| meta.get("versionId"))
                .and_then(Value::as_str);
            index.by_address.insert(address(resource), position);
            if let Some(full_url) = full_url {
                if let Some(earlier) = index.by_full_url.get(full_url) {
                    let same_version = earlier.as_slice().iter().find(|&&other| {
                        index.entries[other].is_some_and(|e| e.version_id == version_id)
                    });
                    if let Some(&first) = same_version {
                        index.duplicates.push((first, position));
                    }
                }
                add(&mut index.by_full_url, full_url, position);
                if let Some((tail_type, tail_id)) = type_and_id(full_url)
                    && Some(tail_type) == resource_type
                {
                    add(&mut index.by_type_and_id, (tail_type, tail_id), position);
                }
            }
            if let (Some(resource_type), Some(id)) = (resource_type, id) {
                add(&mut index.by_type_and_id, (resource_type, id), position);
            }
            index.entries.push(Some(Entry {
                full_url,
                resource,
                version_id,
            }));
        }
        index
    }

    /// The entry at `position`, if it has a resource.
    pub fn entry(&self, position: usize) -> Option<Entry<'a>> {
        self.entries.get(position).copied().flatten()
    }

    /// The entries with a resource, with their positions.
    pub fn entries(&self) -> impl Iterator<Item = (usize, Entry<'a>)> + '_ {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(position, entry)| entry.map(|e| (position, e)))
    }

    /// The position of the entry whose resource is this very value (by
    /// identity, not equality): where a resource being looked at sits.
    pub fn position_of(&self, resource: &Value) -> Option<usize> {
        self.by_address.get(&address(resource)).copied()
    }

    /// Pairs of entries (first, later) with the same `fullUrl` and
    /// `meta.versionId`: two entries with one identity (bdl-7).
    pub fn duplicate_full_urls(&self) -> &[(usize, usize)] {
        &self.duplicates
    }

    /// The position of the entry `reference` names (rules 2 to 5), or
    /// `None` for a resource elsewhere. `referrer_full_url` is the `fullUrl`
    /// of the entry holding the reference, when known.
    pub fn find(
        &self,
        reference: &str,
        referrer_full_url: Option<&str>,
    ) -> Result<Option<usize>, ReferenceError> {
        if reference.contains('?') {
            return Ok(None);
        }
        let (target, version) = split_version(reference);
        let relative = is_relative(target);
        let found = match self.by_full_url.get(target) {
            Some(positions) => positions.as_slice(),
            None if relative => type_and_id(target)
                .and_then(|key| self.by_type_and_id.get(&key))
                .map_or(&[][..], Positions::as_slice),
            None => &[],
        };
        let of_version = |position: &usize| {
            version.is_none_or(|wanted| {
                self.entries[*position].is_some_and(|e| e.version_id.is_none_or(|v| v == wanted))
            })
        };
        let mut matching = found.iter().copied().filter(of_version);
        let (first, second) = (matching.next(), matching.next());
        match (first, second) {
            (None, _) if target.starts_with("urn:") => {
                Err(ReferenceError::NotInBundle(reference.to_owned()))
            }
            (None, _) => Ok(None),
            (Some(one), None) => Ok(Some(one)),
            (Some(first), Some(second)) => {
                // A relative reference is relative to the referring entry's base.
                let preferred = relative
                    .then(|| referrer_full_url.and_then(restful_base))
                    .flatten()
                    .map(|base| format!("{base}{target}"));
                let on_base: Vec<usize> = preferred
                    .map(|url| {
                        found
                            .iter()
                            .copied()
                            .filter(of_version)
                            .filter(|p| self.entries[*p].and_then(|e| e.full_url) == Some(&url))
                            .collect()
                    })
                    .unwrap_or_default();
                match on_base.as_slice() {
                    [one] => Ok(Some(*one)),
                    [a, b, ..] => Err(ReferenceError::Ambiguous {
                        first: *a,
                        second: *b,
                    }),
                    [] => Err(ReferenceError::Ambiguous { first, second }),
                }
            }
        }
    }
}

fn add<K: std::hash::Hash + Eq>(map: &mut FastMap<K, Positions>, key: K, position: usize) {
    match map.get_mut(&key) {
        Some(positions) => positions.push(position),
        None => {
            map.insert(key, Positions::One(position));
        }
    }
}

fn address(value: &Value) -> usize {
    std::ptr::from_ref(value) as usize
}

/// Resolves `reference` (the text of `Reference.reference`) by the rule
/// above: `#id` against `contained` (the container's contained resources),
/// anything else against `bundle`. `referrer_full_url` is the `fullUrl` of
/// the Bundle entry that holds the reference (for a contained resource, of
/// its container's entry), when known.
pub fn resolve<'a>(
    reference: &str,
    contained: Option<&Contained<'a>>,
    bundle: Option<&BundleIndex<'a>>,
    referrer_full_url: Option<&str>,
) -> Result<Resolved<'a>, ReferenceError> {
    if let Some(id) = reference.strip_prefix('#') {
        if id.is_empty() {
            return Ok(Resolved::Container);
        }
        return contained
            .and_then(|c| c.get(id))
            .map(|(position, resource)| Resolved::Contained { position, resource })
            .ok_or_else(|| ReferenceError::ContainedNotFound(id.to_owned()));
    }
    let Some(bundle) = bundle else {
        return Ok(Resolved::Elsewhere);
    };
    Ok(match bundle.find(reference, referrer_full_url)? {
        Some(position) => match bundle.entry(position) {
            Some(entry) => Resolved::Entry {
                position,
                resource: entry.resource,
            },
            None => Resolved::Elsewhere,
        },
        None => Resolved::Elsewhere,
    })
}

/// The text of a `Reference`'s `reference`, if it has one.
pub fn reference_text(reference: &Value) -> Option<&str> {
    reference.get("reference")?.as_str()
}

/// A reference without its `/_history/n`, and `n`.
fn split_version(reference: &str) -> (&str, Option<&str>) {
    match reference.find("/_history/") {
        Some(at) => {
            let version = &reference[at + "/_history/".len()..];
            (&reference[..at], (!version.is_empty()).then_some(version))
        }
        None => (reference, None),
    }
}

/// Neither a URN nor an absolute URL.
fn is_relative(reference: &str) -> bool {
    !reference.starts_with("urn:") && !reference.contains("://")
}

/// The last two segments of a URL or relative reference: (`Type`, `id`).
fn type_and_id(url: &str) -> Option<(&str, &str)> {
    if url.starts_with("urn:") {
        return None;
    }
    let mut segments = url.rsplit('/');
    let id = segments.next().filter(|s| !s.is_empty())?;
    let type_name = segments.next().filter(|s| !s.is_empty())?;
    type_name
        .starts_with(|c: char| c.is_ascii_uppercase())
        .then_some((type_name, id))
}

/// The base of a RESTful `fullUrl` (`https://x/fhir/` of
/// `https://x/fhir/Patient/1`), with its final `/`.
fn restful_base(full_url: &str) -> Option<&str> {
    if !full_url.contains("://") {
        return None;
    }
    let (type_name, id) = type_and_id(full_url)?;
    let tail = type_name.len() + 1 + id.len();
    super::ResourceType::parse(type_name)
        .ok()
        .map(|_| &full_url[..full_url.len() - tail])
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// What a resolution came to, for the table: the resource's `id`, or the
    /// outcome's name.
    fn outcome(result: Result<Resolved<'_>, ReferenceError>) -> String {
        match result {
            Ok(Resolved::Container) => "container".into(),
            Ok(Resolved::Elsewhere) => "elsewhere".into(),
            Ok(Resolved::Contained { position, resource }) => {
                format!(
                    "contained[{position}] {}",
                    resource["id"].as_str().unwrap_or("?")
                )
            }
            Ok(Resolved::Entry { position, resource }) => {
                format!(
                    "entry[{position}] {}",
                    resource["id"].as_str().unwrap_or("?")
                )
            }
            Err(ReferenceError::ContainedNotFound(_)) => "error: no such contained".into(),
            Err(ReferenceError::NotInBundle(_)) => "error: not in the Bundle".into(),
            Err(ReferenceError::Ambiguous { first, second }) => {
                format!("error: ambiguous ({first}, {second})")
            }
        }
    }

    #[test]
    fn the_rule_as_a_table() {
        let holder = json!({"resourceType": "ServiceRequest", "contained": [
            {"resourceType": "Patient", "id": "p"},
            {"resourceType": "Organization", "id": "o"}]});
        let bundle = json!({"resourceType": "Bundle", "type": "message", "entry": [
            {"fullUrl": "urn:uuid:aaaa", "resource": {"resourceType": "Consent", "id": "c-urn"}},
            {"fullUrl": "https://gp.example/fhir/Practitioner/dr1",
             "resource": {"resourceType": "Practitioner", "id": "dr1"}},
            {"fullUrl": "urn:uuid:bbbb", "resource": {"resourceType": "PractitionerRole", "id": "r1"}},
            {"fullUrl": "https://gp.example/fhir/Patient/7",
             "resource": {"resourceType": "Patient", "id": "7", "meta": {"versionId": "2"}}},
            {"fullUrl": "urn:uuid:cccc", "resource": {"resourceType": "Location", "id": "twin"}},
            {"fullUrl": "urn:uuid:dddd", "resource": {"resourceType": "Location", "id": "twin"}},
            {"fullUrl": "https://gp.example/fhir/Device/d", "resource": {"resourceType": "Device", "id": "d"}},
            {"fullUrl": "https://other.example/fhir/Device/d", "resource": {"resourceType": "Device", "id": "d"}},
            {"fullUrl": "urn:uuid:eeee"}]});
        let contained = Contained::of(&holder);
        let index = BundleIndex::new(&bundle);
        let from_gp = Some("https://gp.example/fhir/Observation/x");
        // (reference, referrer's fullUrl, expected)
        let table: &[(&str, Option<&str>, &str)] = &[
            // 1. contained
            ("#p", None, "contained[0] p"),
            ("#o", None, "contained[1] o"),
            ("#", None, "container"),
            ("#nobody", None, "error: no such contained"),
            // 2. fullUrl
            ("urn:uuid:aaaa", None, "entry[0] c-urn"),
            (
                "https://gp.example/fhir/Practitioner/dr1",
                None,
                "entry[1] dr1",
            ),
            // 3. Type/id: a RESTful fullUrl, or the entry's own type and id
            ("Practitioner/dr1", None, "entry[1] dr1"),
            ("PractitionerRole/r1", None, "entry[2] r1"),
            ("Consent/c-urn", None, "entry[0] c-urn"),
            ("Patient/7", None, "entry[3] 7"),
            // 4. versions: only that version, when the entry has one
            ("Patient/7/_history/2", None, "entry[3] 7"),
            ("Patient/7/_history/1", None, "elsewhere"),
            (
                "https://gp.example/fhir/Patient/7/_history/2",
                None,
                "entry[3] 7",
            ),
            ("PractitionerRole/r1/_history/5", None, "entry[2] r1"),
            // 5. two entries with one identity; the referrer's base decides
            ("Location/twin", None, "error: ambiguous (4, 5)"),
            ("Device/d", None, "error: ambiguous (6, 7)"),
            ("Device/d", from_gp, "entry[6] d"),
            (
                "Device/d",
                Some("https://other.example/fhir/Observation/x"),
                "entry[7] d",
            ),
            ("Device/d", Some("urn:uuid:ffff"), "error: ambiguous (6, 7)"),
            ("urn:uuid:ffff", None, "error: not in the Bundle"),
            ("urn:uuid:eeee", None, "error: not in the Bundle"),
            // 6. elsewhere
            ("Patient/unknown", None, "elsewhere"),
            (
                "https://elsewhere.example/fhir/Practitioner/dr1",
                None,
                "elsewhere",
            ),
            (
                "Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|9000000009",
                None,
                "elsewhere",
            ),
        ];
        let mut failures = Vec::new();
        for (reference, referrer, expected) in table {
            let got = outcome(resolve(
                reference,
                Some(&contained),
                Some(&index),
                *referrer,
            ));
            if got != *expected {
                failures.push(format!(
                    "{reference} from {referrer:?}: {got}, expected {expected}"
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        // Outside a Bundle, only `#` references resolve.
        assert_eq!(
            outcome(resolve("urn:uuid:aaaa", Some(&contained), None, None)),
            "elsewhere"
        );
        assert_eq!(
            outcome(resolve("Patient/p", Some(&contained), None, None)),
            "elsewhere"
        );
        assert_eq!(
            outcome(resolve("#p", None, None, None)),
            "error: no such contained"
        );
    }

    #[test]
    fn duplicates_and_positions_are_known() {
        let bundle = json!({"resourceType": "Bundle", "type": "history", "entry": [
            {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Patient", "meta": {"versionId": "1"}}},
            {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Patient", "meta": {"versionId": "2"}}},
            {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Patient", "meta": {"versionId": "2"}}}]});
        let index = BundleIndex::new(&bundle);
        assert_eq!(index.duplicate_full_urls(), &[(1, 2)]);
        assert_eq!(index.find("urn:uuid:1/_history/1", None), Ok(Some(0)));
        assert_eq!(
            index.find("urn:uuid:1", None),
            Err(ReferenceError::Ambiguous {
                first: 0,
                second: 1
            })
        );
        let second = &bundle["entry"][1]["resource"];
        assert_eq!(index.position_of(second), Some(1));
        // Equal but not the same value: not an entry.
        assert_eq!(index.position_of(&second.clone()), None);
        assert_eq!(index.entries().count(), 3);
    }
}
