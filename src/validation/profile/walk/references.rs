//! References: each resolved by the one rule of [`crate::fhir::reference`]
//! (`#contained`, Bundle entries), its target's type checked against the
//! types the definition allows, and a target in the submission checked
//! against the reference's `targetProfile`, as HL7's validator does.

use std::rc::Rc;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::{Compiled, ContainedIndex, Node, Walk, canonical};
use crate::fhir::json::field;
use crate::fhir::outcome::shorten;
use crate::fhir::reference::{self, BundleIndex, ReferenceError, Resolved};
use crate::fhir::{ElementPath, Issue, IssueType};

/// A Bundle being walked: its entries indexed once, so that resolving every
/// reference in it is linear in its size, not quadratic.
pub(super) struct BundleFrame<'v> {
    /// Shared with the frames of the resources in it, for `resolve()`.
    pub(super) entries: Rc<BundleIndex<'v>>,
    pub(super) path: ElementPath,
}

impl<'v> BundleFrame<'v> {
    /// Indexes the Bundle's entries, and reports any `fullUrl` given twice
    /// (FHIR's bdl-7: the same fullUrl is only allowed for different
    /// versions, as in a history Bundle).
    pub(super) fn build(
        object: &'v Map<String, Value>,
        path: &ElementPath,
        walk: &mut Walk<'_, 'v>,
    ) -> Self {
        let entries = BundleIndex::of_map(object);
        let is_history = object.get("type").and_then(Value::as_str) == Some("history");
        if !is_history {
            for &(first, later) in entries.duplicate_full_urls() {
                let at = path.key("entry").index(later).key("fullUrl");
                let first_at = path.key("entry").index(first).key("fullUrl");
                let full_url = entries.entry(later).and_then(|e| e.full_url).unwrap_or("");
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
        }
        Self {
            entries: Rc::new(entries),
            path: path.clone(),
        }
    }
}

/// A resource a reference leads to inside the submission: what walking it
/// against a target profile needs.
enum Target<'v> {
    Contained {
        position: usize,
        resource: &'v Value,
    },
    Entry {
        path: ElementPath,
        resource: &'v Value,
    },
}

impl<'p, 'v> Walk<'p, 'v> {
    pub(super) fn reference_target(
        &mut self,
        sd: &Compiled,
        element: &Node,
        reference: &Map<String, Value>,
        path: &ElementPath,
        contained: &ContainedIndex<'v>,
    ) {
        let Some(type_ref) = element.def.types.iter().find(|t| t.code == "Reference") else {
            return;
        };
        let Some(text) = field(reference, "reference").and_then(Value::as_str) else {
            return;
        };
        // Built only for a finding: most references are fine.
        let target_path = || path.key("reference");
        let bundle = self.bundles.last();
        let resolved = reference::resolve(
            text,
            Some(&contained.index),
            bundle.map(|b| &*b.entries),
            contained.full_url,
        );
        let (found, target) = match resolved {
            Ok(Resolved::Container) => return,
            Ok(Resolved::Contained { position, resource }) => (
                type_of(resource),
                Some(Target::Contained { position, resource }),
            ),
            Ok(Resolved::Entry { position, resource }) => (
                type_of(resource),
                bundle.map(|b| Target::Entry {
                    path: b.path.key("entry").index(position).key("resource"),
                    resource,
                }),
            ),
            Ok(Resolved::Elsewhere) => {
                // A versioned reference to a resource the Bundle holds, but
                // not at that version: the reference names a version the
                // submission does not carry (HL7's validator: an error).
                if let (Some(bundle), Some((unversioned, version))) =
                    (bundle, text.split_once("/_history/"))
                    && !version.is_empty()
                    && matches!(
                        bundle.entries.find(unversioned, contained.full_url),
                        Ok(Some(_))
                    )
                {
                    let target_path = target_path();
                    let message = format!(
                        "{} refers to version {} of {}, but the Bundle holds another version of it",
                        self.expression(&target_path),
                        shorten(version, 40),
                        shorten(unversioned, 120)
                    );
                    self.fail(
                        sd,
                        element,
                        &target_path,
                        IssueType::NotFound,
                        "bundle-reference-version-not-found",
                        message,
                    );
                    return;
                }
                (literal_reference_type(text), None)
            }
            Err(error) => {
                let target_path = target_path();
                let (code, id, message) = match &error {
                    ReferenceError::ContainedNotFound(id) => (
                        IssueType::NotFound,
                        "profile-contained-not-found",
                        format!(
                            "{} refers to #{id}, but no contained resource has that id",
                            self.expression(&target_path)
                        ),
                    ),
                    ReferenceError::NotInBundle(_) => (
                        IssueType::NotFound,
                        "bundle-reference-not-found",
                        format!(
                            "{} refers to {}, but no entry of the Bundle has that fullUrl",
                            self.expression(&target_path),
                            shorten(text, 120)
                        ),
                    ),
                    ReferenceError::Ambiguous { first, second } => {
                        let entry = |position: usize| {
                            bundle.map_or_else(String::new, |b| {
                                self.expression(&b.path.key("entry").index(position))
                            })
                        };
                        (
                            IssueType::Invalid,
                            "bundle-reference-ambiguous",
                            format!(
                                "{} refers to {}, which matches more than one entry of the Bundle ({} and {}): each resource may appear in a Bundle only once",
                                self.expression(&target_path),
                                shorten(text, 120),
                                entry(*first),
                                entry(*second)
                            ),
                        )
                    }
                };
                self.fail(sd, element, &target_path, code, id, message);
                return;
            }
        };
        let Some(found) = found else {
            return;
        };
        let pass = self.pass;
        // Target profiles name types: `…/StructureDefinition/Patient`, or a
        // profile of a type (`…/sprig-patient`).
        let held: Vec<&Arc<Compiled>> = type_ref
            .target_profile
            .iter()
            .filter_map(|url| pass.definition(canonical(url)))
            .collect();
        let allowed: Vec<&str> = held.iter().map(|sd| sd.type_name.as_str()).collect();
        // Any type may be referenced when no (or an unknown) target is named.
        let unrestricted = allowed.is_empty()
            || allowed.contains(&"Resource")
            || allowed.len() != type_ref.target_profile.len();
        if !unrestricted && !allowed.contains(&found) {
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
                    crate::fhir::outcome::with_article(found),
                    allowed.join(" or ")
                ),
            );
            return;
        }
        // A target in the submission must meet the profile the reference
        // names for its type (not the base definition, which it meets as
        // an entry or contained resource anyway).
        let Some(target) = target else {
            return;
        };
        let profiles: Vec<Arc<Compiled>> = held
            .into_iter()
            .filter(|profile| {
                profile.type_name == found
                    && profile.kind == "resource"
                    && !pass
                        .type_definition(&profile.type_name)
                        .is_some_and(|base| Arc::ptr_eq(base, profile))
            })
            .cloned()
            .collect();
        let profile = match profiles.as_slice() {
            [] => return,
            [one] => Arc::clone(one),
            // Several profiles of its type: it must meet one of them. Each
            // is tried on its own (references inside it are not followed);
            // if it meets none, its issues against the first are reported.
            [first, ..] => {
                let resource = match &target {
                    Target::Contained { resource, .. } | Target::Entry { resource, .. } => {
                        *resource
                    }
                };
                let met = profiles.iter().find(|profile| {
                    let mut probe = Walk::new(pass, self.root);
                    probe.resource(
                        found,
                        resource,
                        &ElementPath::root(),
                        None,
                        &[profile.url.as_str()],
                    );
                    !probe.has_errors()
                });
                Arc::clone(met.unwrap_or(first))
            }
        };
        let required = [profile.url.as_str()];
        match target {
            Target::Contained { position, resource } => {
                let at = contained.path.key("contained").index(position);
                self.resource(found, resource, &at, Some(contained), &required);
            }
            Target::Entry { path, resource } => {
                self.resource(found, resource, &path, None, &required);
            }
        }
    }
}

fn type_of(resource: &Value) -> Option<&str> {
    resource.get("resourceType").and_then(Value::as_str)
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
