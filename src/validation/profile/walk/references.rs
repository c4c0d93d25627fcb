//! References: the targets of `#contained`, Bundle and literal references
//! resolved and checked against the types the definition allows.

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::{Map, Value};

use super::{Compiled, ContainedIndex, Node, Walk, canonical};
use crate::fhir::json::field;
use crate::fhir::outcome::shorten;
use crate::fhir::{ElementPath, Issue, IssueType};

/// A Bundle's entries by `fullUrl`, built once per Bundle so that resolving
/// every reference in it is linear in its size, not quadratic.
#[derive(Debug, Default)]
pub(super) struct BundleIndex {
    /// `fullUrl` → resource type.
    by_full_url: HashMap<String, String>,
    /// `Type/id` (the tail of a RESTful `fullUrl`) → resource type, for
    /// relative references.
    by_type_and_id: HashMap<String, String>,
}

impl BundleIndex {
    /// Indexes `bundle`'s entries, and reports any `fullUrl` given twice
    /// (FHIR's bdl-7: the same fullUrl is only allowed for different
    /// versions, as in a history Bundle).
    pub(super) fn build(
        bundle: &Map<String, Value>,
        path: &ElementPath,
        walk: &mut Walk<'_, '_>,
    ) -> Self {
        let mut index = Self::default();
        let Some(entries) = bundle.get("entry").and_then(Value::as_array) else {
            return index;
        };
        let is_history = bundle.get("type").and_then(Value::as_str) == Some("history");
        // fullUrl + versionId → first entry with it.
        let mut first_seen: HashMap<(&str, Option<&str>), usize> = HashMap::new();
        for (position, entry) in entries.iter().enumerate() {
            let Some(full_url) = entry.get("fullUrl").and_then(Value::as_str) else {
                continue;
            };
            let resource = entry.get("resource");
            let Some(resource_type) = resource
                .and_then(|r| r.get("resourceType"))
                .and_then(Value::as_str)
            else {
                continue;
            };
            let version = resource
                .and_then(|r| r.get("meta"))
                .and_then(|m| m.get("versionId"))
                .and_then(Value::as_str);
            if let Some(first) = first_seen.get(&(full_url, version)) {
                if !is_history {
                    let at = path.key("entry").index(position).key("fullUrl");
                    let first_at = path.key("entry").index(*first).key("fullUrl");
                    walk.issues.push(
                        Issue::error(
                            IssueType::Invariant,
                            "bundle-duplicate-full-url",
                            format!(
                                "{} is the same as {} ({}); each entry needs its own fullUrl unless they are versions of one resource (bdl-7)",
                                walk.expression(&at),
                                walk.expression(&first_at),
                                shorten(full_url, 120)
                            ),
                        )
                        .at(walk.expression(&at)),
                    );
                }
                continue;
            }
            first_seen.insert((full_url, version), position);
            index
                .by_full_url
                .insert(full_url.to_owned(), resource_type.to_owned());
            let mut tail = full_url.rsplit('/');
            if let (Some(id), Some(type_name)) = (tail.next(), tail.next())
                && type_name == resource_type
            {
                index
                    .by_type_and_id
                    .insert(format!("{type_name}/{id}"), resource_type.to_owned());
            }
        }
        index
    }
}

impl<'p, 'v> Walk<'p, 'v> {
    pub(super) fn reference_target(
        &mut self,
        sd: &Compiled,
        element: &Node,
        reference: &Map<String, Value>,
        path: &ElementPath,
        contained: &ContainedIndex,
    ) {
        let Some(type_ref) = element.def.types.iter().find(|t| t.code == "Reference") else {
            return;
        };
        let Some(text) = field(reference, "reference").and_then(Value::as_str) else {
            return;
        };
        // Built only for a finding: most references are fine.
        let target_path = || path.key("reference");
        let target_type: Option<Cow<'_, str>> = if let Some(id) = text.strip_prefix('#') {
            match contained.get(id) {
                Some(found) => Some(Cow::Borrowed(found.as_str())),
                None if id.is_empty() => return, // "#": the container itself
                None => {
                    let target_path = target_path();
                    self.fail(
                        sd,
                        element,
                        &target_path,
                        IssueType::NotFound,
                        "profile-contained-not-found",
                        format!(
                            "{} refers to #{id}, but no contained resource has that id",
                            self.expression(&target_path)
                        ),
                    );
                    return;
                }
            }
        } else if let Some(bundle) = self.bundles.last() {
            match bundle
                .by_full_url
                .get(text)
                .or_else(|| bundle.by_type_and_id.get(text))
            {
                // Owned: the Bundle index is part of the walk, which
                // records findings below.
                Some(found) => Some(Cow::Owned(found.clone())),
                None if text.starts_with("urn:") => {
                    let target_path = target_path();
                    self.fail(
                        sd,
                        element,
                        &target_path,
                        IssueType::NotFound,
                        "bundle-reference-not-found",
                        format!(
                            "{} refers to {}, but no entry of the Bundle has that fullUrl",
                            self.expression(&target_path),
                            shorten(text, 120)
                        ),
                    );
                    return;
                }
                None => literal_reference_type(text).map(Cow::Borrowed),
            }
        } else {
            literal_reference_type(text).map(Cow::Borrowed)
        };
        let Some(found) = target_type else {
            return;
        };
        let pass = self.pass;
        // Target profiles name types: `…/StructureDefinition/Patient`, or a
        // profile of a type (`…/sprig-patient`).
        let allowed: Vec<&str> = type_ref
            .target_profile
            .iter()
            .filter_map(|url| pass.by_url.get(canonical(url)))
            .map(|sd| sd.type_name.as_str())
            .collect();
        // Any type may be referenced when no (or an unknown) target is named.
        let unrestricted = allowed.is_empty()
            || allowed.contains(&"Resource")
            || allowed.len() != type_ref.target_profile.len();
        if !unrestricted && !allowed.contains(&found.as_ref()) {
            let target_path = target_path();
            self.fail(
                sd,
                element,
                &target_path,
                IssueType::Structure,
                "profile-reference-target",
                format!(
                    "{} refers to {}, but may only refer to {}",
                    self.expression(&target_path),
                    crate::fhir::outcome::with_article(&found),
                    allowed.join(" or ")
                ),
            );
        }
    }
}

pub(super) fn contained_index(resource: &Map<String, Value>) -> ContainedIndex {
    field(resource, "contained")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|item| {
                    let id = item.get("id")?.as_str()?;
                    let resource_type = item.get("resourceType")?.as_str()?;
                    Some((id.to_owned(), resource_type.to_owned()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The resource type named by a literal reference (`Patient/1`,
/// `https://x/fhir/Patient/1/_history/2`), or `None` for forms that name no
/// type (`urn:uuid:…`).
pub(super) fn literal_reference_type(reference: &str) -> Option<&str> {
    if reference.starts_with("urn:") {
        return None;
    }
    // Bytes, not chars: every reference of a large Bundle or
    // ImplementationGuide comes through here.
    let end = reference
        .bytes()
        .position(|b| b == b'?' || b == b'#')
        .unwrap_or(reference.len());
    let mut segments = reference[..end].rsplit('/');
    let _id_or_version = segments.next()?;
    let mut candidate = segments.next()?;
    if candidate == "_history" {
        let _id = segments.next()?;
        candidate = segments.next()?;
    }
    crate::fhir::ResourceType::parse(candidate)
        .ok()
        .map(|_| candidate)
}
