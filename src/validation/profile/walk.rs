//! One walk of a resource against compiled definitions, collecting issues.
//!
//! The walk follows the definition, not the JSON: for each element of the
//! StructureDefinition it looks the property up, checks cardinality, then
//! each value (fixed/pattern, bindings, lengths, bounds, references, NHS
//! identifiers) and descends into complex values through inline children,
//! a type's profile, or the base definition of the type. Sliced elements
//! are matched item by item to their slices (see [`Walk::slices`]).

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Map, Value};

use super::{BEST_PRACTICE_INVARIANTS, Compiled, Node, ProfilePass, Slot, canonical};
use crate::fhir::identifiers::{NHS_NUMBER_SYSTEM, NhsNumber, ODS_ORGANIZATION_SYSTEM, OdsCode};
use crate::fhir::json::field;
use crate::fhir::outcome::shorten;
use crate::fhir::{ElementPath, Issue, IssueSeverity, IssueType};

/// Ids and types of the resources contained in the resource being walked,
/// for resolving `#id` references.
type ContainedIndex = HashMap<String, String>;

/// A property of the object being walked, matched to the child element it
/// belongs to.
#[derive(Debug, Clone, Copy)]
struct Hit<'v> {
    child: usize,
    slot: Slot,
    value: &'v Value,
}

/// At most this many items are explained when a slice is not matched.
const EXPLAINED_ITEMS: usize = 3;

pub(super) struct Walk<'p, 'v> {
    pass: &'p ProfilePass,
    root: &'p str,
    issues: Vec<Issue>,
    /// The Bundles being walked, innermost last: references resolve against
    /// the entries of the innermost one.
    bundles: Vec<BundleIndex>,
    /// The resources being walked, innermost last, each with whether it is
    /// contained: `%resource` and `%rootResource` of invariants.
    resources: Vec<(&'v Value, bool)>,
}

/// A Bundle's entries by `fullUrl`, built once per Bundle so that resolving
/// every reference in it is linear in its size, not quadratic.
#[derive(Debug, Default)]
struct BundleIndex {
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
    fn build(bundle: &Map<String, Value>, path: &ElementPath, walk: &mut Walk<'_, '_>) -> Self {
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
    pub(super) fn new(pass: &'p ProfilePass, root: &'p str) -> Self {
        Self {
            pass,
            root,
            issues: Vec::new(),
            bundles: Vec::new(),
            resources: Vec::new(),
        }
    }

    /// The issues found, each once: a value checked against a profile and
    /// again against one of its slices (or a second profile) would
    /// otherwise report the same problem twice.
    pub(super) fn finish(self) -> Vec<Issue> {
        let mut seen = HashSet::new();
        self.issues
            .into_iter()
            .filter(|issue| {
                seen.insert((
                    issue.expression.clone(),
                    issue.message_id,
                    issue.message.clone(),
                ))
            })
            .collect()
    }

    fn has_errors(&self) -> bool {
        self.issues.iter().any(|issue| issue.severity.is_error())
    }

    fn expression(&self, path: &ElementPath) -> String {
        path.to_expression(self.root)
    }

    /// Reports an error at `path`, from `node` of `sd`.
    fn fail(
        &mut self,
        sd: &Compiled,
        node: &Node,
        path: &ElementPath,
        code: IssueType,
        message_id: &'static str,
        message: String,
    ) {
        self.report(Issue::error(code, message_id, message), path, sd, node);
    }

    /// Reports a warning at `path`, from `node` of `sd`: advice that does
    /// not refuse the resource.
    fn warn(
        &mut self,
        sd: &Compiled,
        node: &Node,
        path: &ElementPath,
        message_id: &'static str,
        message: String,
    ) {
        let issue = Issue::error(IssueType::Value, message_id, message)
            .with_severity(IssueSeverity::Warning);
        self.report(issue, path, sd, node);
    }

    fn report(&mut self, issue: Issue, path: &ElementPath, sd: &Compiled, node: &Node) {
        let issue = issue
            .at(self.expression(path))
            .from_definition(format!("{}#{}", sd.url, node.def.id));
        self.issues.push(issue);
    }

    /// Validates the resource being checked: against `requested` profiles
    /// (already known to be held) and those it names in `meta.profile`, or,
    /// when there are none, the base definition of its type.
    pub(super) fn top_level(&mut self, type_name: &str, resource: &'v Value, requested: &[String]) {
        let requested: Vec<&str> = requested.iter().map(String::as_str).collect();
        self.resource(type_name, resource, &ElementPath::root(), None, &requested);
    }

    /// Validates a resource of `type_name` found at `path`. `container` is
    /// the contained-resource index of the enclosing resource, if any;
    /// `required` are profiles the definition demands of it.
    fn resource(
        &mut self,
        type_name: &str,
        resource_value: &'v Value,
        path: &ElementPath,
        container: Option<&ContainedIndex>,
        required: &[&str],
    ) {
        let Value::Object(resource) = resource_value else {
            return;
        };
        let pass = self.pass;
        let Some(base) = pass.types.get(type_name) else {
            self.issues.push(
                Issue::error(
                    IssueType::NotSupported,
                    "profile-unknown-type",
                    format!("There is no definition of the resource type '{type_name}'"),
                )
                .at(self.expression(path)),
            );
            return;
        };
        if base.kind != "resource" {
            self.issues.push(
                Issue::error(
                    IssueType::Invalid,
                    "profile-not-a-resource",
                    format!("'{type_name}' is a datatype, not a resource type"),
                )
                .at(self.expression(&path.key("resourceType"))),
            );
            return;
        }
        let own_index;
        let contained = match container {
            Some(index) => index,
            None => {
                own_index = contained_index(resource);
                &own_index
            }
        };
        let profiles = self.profiles_of(type_name, resource, path, required);
        let is_bundle = type_name == "Bundle";
        if is_bundle {
            let index = BundleIndex::build(resource, path, self);
            self.bundles.push(index);
        }
        self.resources.push((resource_value, container.is_some()));
        if profiles.is_empty() {
            self.children(base, 0, resource, path, contained);
            self.invariants(base, &base.nodes[0], None, resource_value, path);
        }
        for profile in profiles {
            self.children(&profile, 0, resource, path, contained);
            self.invariants(&profile, &profile.nodes[0], None, resource_value, path);
        }
        self.resources.pop();
        if is_bundle {
            self.bundles.pop();
        }
    }

    /// Evaluates the invariants (`constraint`s) of `element` on `value`,
    /// with the innermost resource as `%resource`. `focus_type` is the FHIR
    /// type of a non-resource value (`HumanName`, or `Patient.contact` for a
    /// backbone element), which FHIRPath needs for choice elements and `is`.
    fn invariants(
        &mut self,
        sd: &Compiled,
        element: &Node,
        focus_type: Option<&str>,
        value: &'v Value,
        path: &ElementPath,
    ) {
        if element.def.constraints.is_empty() {
            return;
        }
        let pass = self.pass;
        let Some(&(resource, contained)) = self.resources.last() else {
            return;
        };
        // A contained resource's %rootResource is its container.
        let root_resource = contained
            .then(|| self.resources.iter().rev().nth(1).map(|(r, _)| *r))
            .flatten();
        for key in &element.def.constraints {
            let Some(invariant) = pass.invariants.get(key) else {
                continue;
            };
            let Some(expression) = &invariant.expression else {
                // Checked natively (ele-1, bdl-7) or known not to be
                // evaluable: see `ProfilePass::load_with`.
                continue;
            };
            let scope = crate::fhirpath::Scope {
                resource,
                root_resource,
                focus: value,
                focus_type,
                environment: None,
            };
            let issue = match expression.evaluate_boolean_in(scope) {
                Ok(Some(true)) => continue,
                // An empty result is not a failure: FHIR evaluates invariants
                // as "the expression is true or says nothing".
                Ok(None) => continue,
                Ok(Some(false)) => Issue::error(
                    IssueType::Invariant,
                    if BEST_PRACTICE_INVARIANTS.contains(&invariant.key.as_str()) {
                        "invariant-best-practice"
                    } else {
                        "invariant"
                    },
                    format!(
                        "{}: {} ({} failed at {})",
                        invariant.key,
                        invariant.human,
                        shorten(&invariant.shown, 300),
                        self.expression(path)
                    ),
                )
                .with_severity(invariant.severity),
                Err(error) => Issue::information(
                    "invariant-not-evaluated",
                    format!(
                        "{}: could not be evaluated here, so it is not checked ({error})",
                        invariant.key
                    ),
                ),
            };
            self.report(issue, path, sd, element);
        }
    }

    /// The held profiles a resource must meet: `required` ones and those it
    /// names in `meta.profile`. A named profile Sprig does not hold, or one
    /// of another type, is an error: the sender expects a check that
    /// cannot be made.
    fn profiles_of(
        &mut self,
        type_name: &str,
        resource: &'v Map<String, Value>,
        path: &ElementPath,
        required: &[&str],
    ) -> Vec<Arc<Compiled>> {
        let pass = self.pass;
        let mut profiles: Vec<Arc<Compiled>> = Vec::new();
        let mut add = |profile: &Arc<Compiled>| {
            if !profiles.iter().any(|p| p.url == profile.url) {
                profiles.push(Arc::clone(profile));
            }
        };
        for url in required {
            if let Some(profile) = pass.by_url.get(canonical(url))
                && profile.type_name == type_name
            {
                add(profile);
            }
        }
        let claimed = resource
            .get("meta")
            .and_then(|meta| meta.get("profile"))
            .and_then(Value::as_array);
        for (index, url) in claimed.into_iter().flatten().enumerate() {
            let Some(url) = url.as_str() else { continue };
            let at = path.key("meta").key("profile").index(index);
            match pass.by_url.get(canonical(url)) {
                Some(profile) if profile.type_name == type_name && profile.kind == "resource" => {
                    add(profile)
                }
                Some(profile) => {
                    let issue = Issue::error(
                        IssueType::Invalid,
                        "profile-wrong-type",
                        format!(
                            "{} names {url}, a profile of {}, not of {type_name}",
                            self.expression(&at),
                            profile.type_name
                        ),
                    )
                    .at(self.expression(&at));
                    self.issues.push(issue);
                }
                None => {
                    let issue = Issue::error(
                        IssueType::NotSupported,
                        "profile-unknown",
                        format!(
                            "{} names the profile {}, which Sprig does not hold, so the resource cannot be checked against it",
                            self.expression(&at),
                            shorten(url, 200)
                        ),
                    )
                    .at(self.expression(&at));
                    self.issues.push(issue);
                }
            }
        }
        profiles
    }

    /// Validates the properties of `object` against the children of element
    /// `node` of `sd`.
    fn children(
        &mut self,
        sd: &Compiled,
        node: usize,
        object: &'v Map<String, Value>,
        path: &ElementPath,
        contained: &ContainedIndex,
    ) {
        self.children_except(sd, node, object, path, contained, None);
    }

    /// As [`Walk::children`], leaving out the children named in `except`.
    /// Each property present is looked up once; each child present or
    /// required (see below) is then checked in definition order with what
    /// was found for it.
    fn children_except(
        &mut self,
        sd: &Compiled,
        node: usize,
        object: &'v Map<String, Value>,
        path: &ElementPath,
        contained: &ContainedIndex,
        except: Option<&HashSet<&str>>,
    ) {
        let element = &sd.nodes[node];
        let mut hits: Vec<Hit<'v>> = object
            .iter()
            .filter_map(|(key, value)| {
                let &(child, slot) = element.lookup.get(key.as_str())?;
                Some(Hit { child, slot, value })
            })
            .collect();
        // Stable: items of one child stay in document order.
        hits.sort_by_key(|hit| hit.child);
        // A key no child claims (other than a resource's `resourceType`) may
        // be a choice type a profile ruled out, which only the absent choice
        // element can name: then every child is looked at. Otherwise only
        // the children present and those that must be present are, which
        // skips most of a definition's elements (a Patient defines 28).
        let unclaimed = (object.len() - hits.len())
            .saturating_sub(usize::from(field(object, "resourceType").is_some()));
        let absent_too = if unclaimed > 0 {
            &element.children
        } else {
            &element.required_children
        };
        // Both lists and the hits are in child order: merge them.
        let mut absent_too = absent_too.iter().copied().peekable();
        let mut next_hit = 0;
        loop {
            let present = hits.get(next_hit).map(|hit| hit.child);
            let child = match (present, absent_too.peek().copied()) {
                (None, None) => break,
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
            };
            absent_too.next_if_eq(&child);
            let start = next_hit;
            while hits.get(next_hit).is_some_and(|hit| hit.child == child) {
                next_hit += 1;
            }
            let found = &hits[start..next_hit];
            let child_node = &sd.nodes[child];
            if except.is_some_and(|names| names.contains(&*child_node.name)) {
                continue;
            }
            if child_node.choice {
                self.choice_element(sd, child, found, object, path, contained);
            } else {
                self.plain_element(sd, child, found, path, contained);
            }
        }
    }

    fn plain_element(
        &mut self,
        sd: &Compiled,
        node: usize,
        found: &[Hit<'v>],
        path: &ElementPath,
        contained: &ContainedIndex,
    ) {
        let element = &sd.nodes[node];
        let slot = |wanted: Slot| {
            found
                .iter()
                .find(|hit| hit.slot == wanted)
                .map(|hit| hit.value)
        };
        let value = slot(Slot::Value);
        let count = occurrences(value).max(occurrences(slot(Slot::Extension)));
        self.cardinality(sd, element, count, path);
        let Some(value) = value else {
            // Absent (or only `_name`): nothing more to check, and no path to build.
            // Slices with a minimum still need reporting.
            if !element.slices.is_empty() {
                self.slices(
                    sd,
                    node,
                    &[],
                    &path.key(Arc::clone(&element.name)),
                    contained,
                );
            }
            return;
        };
        let type_code = element
            .def
            .types
            .first()
            .map(|t| t.code.as_str())
            .unwrap_or("");
        let element_path = path.key(Arc::clone(&element.name));
        match value {
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    if !item.is_null() {
                        let item_path = element_path.index(index);
                        self.value(sd, node, type_code, item, &item_path, contained);
                    }
                }
                if !element.slices.is_empty() {
                    let items: Vec<(ElementPath, &Value)> = items
                        .iter()
                        .enumerate()
                        .filter(|(_, item)| !item.is_null())
                        .map(|(index, item)| (element_path.index(index), item))
                        .collect();
                    self.slices(sd, node, &items, &element_path, contained);
                }
            }
            item => {
                self.value(sd, node, type_code, item, &element_path, contained);
                if !element.slices.is_empty() {
                    self.slices(
                        sd,
                        node,
                        &[(element_path.clone(), item)],
                        &element_path,
                        contained,
                    );
                }
            }
        }
    }

    fn choice_element(
        &mut self,
        sd: &Compiled,
        node: usize,
        found: &[Hit<'v>],
        object: &'v Map<String, Value>,
        path: &ElementPath,
        contained: &ContainedIndex,
    ) {
        let element = &sd.nodes[node];
        // (type position, value: None when only `_key` is given), in type order.
        let mut positions: Vec<(usize, Option<&'v Value>)> = Vec::with_capacity(found.len());
        for hit in found {
            let (position, value) = match hit.slot {
                Slot::ChoiceValue(position) => (position, Some(hit.value)),
                Slot::ChoiceExtension(position) => (position, None),
                Slot::Value | Slot::Extension => continue,
            };
            match positions.iter_mut().find(|(p, _)| *p == position) {
                Some(entry) => entry.1 = entry.1.or(value),
                None => positions.push((position, value)),
            }
        }
        positions.sort_by_key(|(position, _)| *position);
        // (key, type code, value)
        let present: Vec<(&str, &str, Option<&'v Value>)> = positions
            .into_iter()
            .map(|(position, value)| {
                (
                    element.choice_keys[position].0.as_str(),
                    element.def.types[position].code.as_str(),
                    value,
                )
            })
            .collect();
        let wrong_type = if present.is_empty() {
            // A choice the profile narrowed to types not used here: the
            // other type's key is unknown to the profile, so say which are
            // allowed rather than nothing at all.
            if let Some(key) = other_choice_key(object, &element.name, &element.choice_keys) {
                let keys: Vec<&str> = element
                    .choice_keys
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect();
                let at = path.key(key.clone());
                self.fail(
                    sd,
                    element,
                    &at,
                    IssueType::Structure,
                    "profile-choice-type",
                    format!(
                        "{} is not allowed here: this profile allows only {}",
                        self.expression(&at),
                        shorten(&keys.join(", "), 200)
                    ),
                );
                true
            } else {
                false
            }
        } else {
            false
        };
        if present.len() > 1 || (present.is_empty() && element.def.min > 0 && !wrong_type) {
            let choice_path = path.key(format!("{}[x]", element.name));
            let issue = if present.is_empty() {
                let keys: Vec<&str> = element
                    .choice_keys
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect();
                Issue::error(
                    IssueType::Required,
                    "profile-cardinality-min",
                    format!(
                        "{} is required: give one of {}",
                        self.expression(&choice_path),
                        shorten(&keys.join(", "), 200)
                    ),
                )
            } else {
                let keys: Vec<&str> = present.iter().map(|(k, _, _)| *k).collect();
                Issue::error(
                    IssueType::Structure,
                    "profile-choice-repeated",
                    format!(
                        "{} has several values ({}); only one type may be used",
                        self.expression(&choice_path),
                        keys.join(", ")
                    ),
                )
            };
            self.report(issue, &choice_path, sd, element);
        }
        if element.def.max == Some(0) {
            for (key, _, _) in &present {
                let at = path.key(*key);
                self.fail(
                    sd,
                    element,
                    &at,
                    IssueType::Structure,
                    "profile-cardinality-max",
                    format!(
                        "{} is not allowed here (maximum cardinality 0)",
                        self.expression(&at)
                    ),
                );
            }
        }
        for (key, code, value) in present {
            if let Some(value) = value.filter(|v| !v.is_null()) {
                let at = path.key(key);
                self.value(sd, node, code, value, &at, contained);
                // Type slices (`value[x]:valueQuantity`) constrain one type.
                for &slice in &element.slices {
                    if sd.nodes[slice].slice_name() == Some(key) {
                        self.value(sd, slice, code, value, &at, contained);
                    }
                }
            }
        }
    }

    /// Checks `count` occurrences of `element` under `parent` against its
    /// cardinality; the element's path is only built for a violation.
    fn cardinality(&mut self, sd: &Compiled, element: &Node, count: usize, parent: &ElementPath) {
        let min = element.def.min as usize;
        let max = element.def.max.map(|m| m as usize);
        let (code, id, message) = if count < min {
            let requirement = if min == 1 {
                "is required (minimum cardinality 1) but is missing".to_owned()
            } else {
                format!("must appear at least {min} times but appears {count} times")
            };
            (IssueType::Required, "profile-cardinality-min", requirement)
        } else if let Some(max) = max.filter(|&max| count > max) {
            let requirement = if max == 0 {
                "is not allowed here (maximum cardinality 0)".to_owned()
            } else {
                format!("may appear at most {max} times but appears {count} times")
            };
            (IssueType::Structure, "profile-cardinality-max", requirement)
        } else {
            return;
        };
        let path = parent.key(Arc::clone(&element.name));
        let message = format!("{} {message}", self.expression(&path));
        self.fail(sd, element, &path, code, id, message);
    }

    /// Validates one value of element `node` (of type `type_code`).
    fn value(
        &mut self,
        sd: &Compiled,
        node: usize,
        type_code: &str,
        value: &'v Value,
        path: &ElementPath,
        contained: &ContainedIndex,
    ) {
        let element = &sd.nodes[node];
        self.fixed_and_pattern(sd, element, value, path);
        self.bounds(sd, element, value, path);
        self.binding(sd, element, type_code, value, path);
        if let (Some(max), Some(text)) = (element.def.max_length, value.as_str())
            && text.chars().count() as u64 > max
        {
            self.fail(
                sd,
                element,
                path,
                IssueType::TooLong,
                "profile-max-length",
                format!("{} is longer than {max} characters", self.expression(path)),
            );
        }
        // The pass outlives this walk, so definitions can be held while the
        // walk records issues.
        let pass = self.pass;
        let datatype = pass.types.get(type_code);
        let is_resource = type_code == "Resource" || datatype.is_some_and(|t| t.kind == "resource");
        if !is_resource {
            // A backbone element's type is its own path (`Patient.contact`).
            let focus_type = if matches!(type_code, "BackboneElement" | "Element") {
                element.def.path.as_str()
            } else {
                type_code
            };
            self.invariants(sd, element, Some(focus_type), value, path);
        }
        let Value::Object(object) = value else {
            // Primitives: the JSON schema pass has checked their format.
            return;
        };
        if !is_resource && object.keys().all(|key| key == "id") {
            // ele-1, checked here rather than by FHIRPath on every element.
            self.fail(
                sd,
                element,
                path,
                IssueType::Invariant,
                "invariant",
                format!(
                    "ele-1: All FHIR elements must have a @value or children ({} has only an id)",
                    self.expression(path)
                ),
            );
        }
        let type_profile = element
            .def
            .types
            .iter()
            .find(|t| t.code == type_code)
            .and_then(|t| t.profile.first())
            .map(String::as_str);
        if is_resource {
            // A resource without a resourceType is reported by the schema pass.
            if let Some(nested) = field(object, "resourceType").and_then(Value::as_str) {
                // A contained resource resolves `#` references against its container.
                let container = (&*element.name == "contained").then_some(contained);
                let required: Vec<&str> = element
                    .def
                    .types
                    .iter()
                    .filter(|t| t.code == nested || t.code == "Resource")
                    .flat_map(|t| t.profile.iter().map(String::as_str))
                    .collect();
                self.resource(nested, value, path, container, &required);
            }
            return;
        }
        if type_code == "Reference" {
            self.reference_target(sd, element, object, path, contained);
        }
        if type_code == "Identifier" {
            self.nhs_identifier(sd, element, object, path);
        }
        if !element.children.is_empty() {
            // Children given inline: a backbone element, or a datatype the
            // profile constrains element by element. Those the profile does
            // not list keep the rules of the datatype.
            self.children(sd, node, object, path, contained);
            // A backbone element's inline children are all it has.
            if let Some(datatype) = datatype.filter(|t| {
                t.kind == "complex-type" && !matches!(type_code, "BackboneElement" | "Element")
            }) {
                let listed: HashSet<&str> = element
                    .children
                    .iter()
                    .map(|&child| &*sd.nodes[child].name)
                    .collect();
                self.children_except(datatype, 0, object, path, contained, Some(&listed));
            }
            return;
        }
        if let Some(index) = element.content {
            self.children(sd, index, object, path, contained);
            return;
        }
        if let Some(profile) = type_profile.and_then(|url| pass.by_url.get(canonical(url))) {
            self.children(profile, 0, object, path, contained);
            return;
        }
        if type_code == "Extension" {
            self.extension(object, path, contained);
            return;
        }
        if let Some(datatype) = datatype {
            self.children(datatype, 0, object, path, contained);
        }
    }

    /// An extension validated by its URL: against its definition when Sprig
    /// holds it, otherwise as a plain Extension, reported per the
    /// configured policy.
    fn extension(
        &mut self,
        extension: &'v Map<String, Value>,
        path: &ElementPath,
        contained: &ContainedIndex,
    ) {
        let pass = self.pass;
        let url = field(extension, "url")
            .and_then(Value::as_str)
            .unwrap_or("");
        if let Some(definition) = pass
            .by_url
            .get(canonical(url))
            .filter(|sd| sd.type_name == "Extension")
        {
            self.children(definition, 0, extension, path, contained);
            return;
        }
        let severity = pass.options.unknown_extensions.severity();
        if let Some(severity) = severity
            && !url.is_empty()
        {
            let issue = Issue::error(
                IssueType::Extension,
                "profile-extension-unknown",
                format!(
                    "{}: the extension {} is not one Sprig holds a definition for, so its content is not checked",
                    self.expression(path),
                    shorten(url, 200)
                ),
            )
            .with_severity(severity)
            .at(self.expression(path));
            self.issues.push(issue);
        }
        if let Some(base) = pass.types.get("Extension") {
            self.children(base, 0, extension, path, contained);
        }
    }

    /// NHS numbers must carry a valid check digit and ODS codes have a
    /// shape: mistakes in either send a referral to the wrong person or
    /// practice, so they are errors wherever they appear.
    fn nhs_identifier(
        &mut self,
        sd: &Compiled,
        element: &Node,
        identifier: &Map<String, Value>,
        path: &ElementPath,
    ) {
        let (Some(system), Some(value)) = (
            field(identifier, "system").and_then(Value::as_str),
            field(identifier, "value").and_then(Value::as_str),
        ) else {
            return;
        };
        let problem = if system == NHS_NUMBER_SYSTEM {
            NhsNumber::parse(value)
                .err()
                .map(|e| ("nhs-number-invalid", e.to_string()))
        } else if system == ODS_ORGANIZATION_SYSTEM {
            OdsCode::parse(value)
                .err()
                .map(|e| ("ods-code-invalid", e.to_string()))
        } else if system.eq_ignore_ascii_case(NHS_NUMBER_SYSTEM)
            || system.eq_ignore_ascii_case(ODS_ORGANIZATION_SYSTEM)
        {
            // A known quirk of some senders (`…/id/ods-organization-code`).
            let at = path.key("system");
            let intended = if system.eq_ignore_ascii_case(NHS_NUMBER_SYSTEM) {
                NHS_NUMBER_SYSTEM
            } else {
                ODS_ORGANIZATION_SYSTEM
            };
            self.warn(
                sd,
                element,
                &at,
                "identifier-system-case",
                format!(
                    "{} differs from the NHS identifier system only in letter case; use {intended}",
                    self.expression(&at),
                ),
            );
            None
        } else {
            None
        };
        if let Some((id, message)) = problem {
            let at = path.key("value");
            let message = format!("{}: {message}", self.expression(&at));
            self.fail(sd, element, &at, IssueType::Value, id, message);
        }
    }

    /// Matches the items of a sliced element to its slices, validates each
    /// matched item against its slice, and checks slice cardinality, closed
    /// and open-at-end rules and order. Unmatched items are explained slice
    /// by slice, so the sender learns why an entry was not what the profile
    /// expected.
    fn slices(
        &mut self,
        sd: &Compiled,
        node: usize,
        items: &[(ElementPath, &'v Value)],
        element_path: &ElementPath,
        contained: &ContainedIndex,
    ) {
        let element = &sd.nodes[node];
        let Some(slicing) = &element.def.slicing else {
            return;
        };
        // Each discriminator's path parsed once, and the element it leads to
        // in each slice found once, not again for every item.
        let steps: Vec<Vec<Step<'_>>> = slicing
            .discriminator
            .iter()
            .map(|d| path_steps(&d.path))
            .collect();
        let targets: Vec<Vec<Option<&Node>>> = element
            .slices
            .iter()
            .map(|&slice| steps.iter().map(|s| find_element(sd, slice, s)).collect())
            .collect();
        // For each item, the index (into element.slices) of the slice it
        // matches, or why it matches none of them.
        let mut matched: Vec<Result<usize, Vec<(String, String)>>> =
            Vec::with_capacity(items.len());
        for (item_path, item) in items {
            let mut reasons = Vec::new();
            let mut found = None;
            for (position, &slice) in element.slices.iter().enumerate() {
                let discriminators = Discriminators {
                    slicing,
                    steps: &steps,
                    targets: &targets[position],
                };
                match self.slice_matches(sd, slice, &discriminators, item, item_path, contained) {
                    Ok(()) => {
                        found = Some(position);
                        break;
                    }
                    Err(reason) => reasons.push((
                        sd.nodes[slice].slice_name().unwrap_or("?").to_owned(),
                        reason,
                    )),
                }
            }
            matched.push(found.ok_or(reasons));
        }

        for ((item_path, item), found) in items.iter().zip(&matched) {
            if let Ok(position) = found {
                let slice = element.slices[*position];
                let type_code = sd.nodes[slice]
                    .def
                    .types
                    .first()
                    .or(element.def.types.first())
                    .map(|t| t.code.as_str())
                    .unwrap_or("");
                self.value(sd, slice, type_code, item, item_path, contained);
            }
        }

        let unexplained =
            |matched: &[Result<usize, Vec<(String, String)>>], name: &str| -> String {
                let explanations: Vec<String> = items
                    .iter()
                    .zip(matched)
                    .filter_map(|((path, _), found)| {
                        let reasons = found.as_ref().err()?;
                        let reason = reasons.iter().find(|(slice, _)| slice == name)?;
                        Some(format!(
                            "{} is not one: {}",
                            path.to_expression(self.root),
                            reason.1
                        ))
                    })
                    .take(EXPLAINED_ITEMS)
                    .collect();
                if explanations.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", explanations.join("; "))
                }
            };

        for (position, &slice) in element.slices.iter().enumerate() {
            let slice_node = &sd.nodes[slice];
            let name = slice_node.slice_name().unwrap_or("?");
            let count = matched.iter().filter(|m| **m == Ok(position)).count();
            let min = slice_node.def.min as usize;
            let problem = if count < min {
                Some((
                    IssueType::Required,
                    "profile-slice-min",
                    format!(
                        "{} needs at least {min} item{} matching the slice '{name}'{}, but {count} matched{}",
                        self.expression(element_path),
                        if min == 1 { "" } else { "s" },
                        describe_slice(sd, slice, &slicing.discriminator),
                        unexplained(&matched, name)
                    ),
                ))
            } else {
                slice_node
                    .def
                    .max
                    .filter(|&max| count > max as usize)
                    .map(|max| {
                        (
                            IssueType::Structure,
                            "profile-slice-max",
                            format!(
                                "{} may have at most {max} item{} matching the slice '{name}', but {count} matched",
                                self.expression(element_path),
                                if max == 1 { "" } else { "s" }
                            ),
                        )
                    })
            };
            if let Some((code, id, message)) = problem {
                self.fail(sd, slice_node, element_path, code, id, message);
            }
        }

        let mut last_position = None;
        let mut seen_unmatched = false;
        for ((item_path, _), found) in items.iter().zip(&matched) {
            match found {
                Err(reasons) => {
                    seen_unmatched = true;
                    if slicing.rules == "closed" {
                        let explained: Vec<String> = reasons
                            .iter()
                            .map(|(slice, reason)| format!("'{slice}': {reason}"))
                            .collect();
                        self.fail(
                            sd,
                            element,
                            item_path,
                            IssueType::Structure,
                            "profile-slice-unmatched",
                            format!(
                                "{} matches none of the slices defined for {} and no other items are allowed (closed slicing): {}",
                                self.expression(item_path),
                                self.expression(element_path),
                                shorten(&explained.join("; "), 600)
                            ),
                        );
                    }
                }
                Ok(position) => {
                    if slicing.rules == "openAtEnd" && seen_unmatched {
                        self.fail(
                            sd,
                            element,
                            item_path,
                            IssueType::Structure,
                            "profile-slice-open-at-end",
                            format!(
                                "{} matches the slice '{}', but comes after items that match no slice; those may only come last",
                                self.expression(item_path),
                                sd.nodes[element.slices[*position]]
                                    .slice_name()
                                    .unwrap_or("?")
                            ),
                        );
                    }
                    if slicing.ordered
                        && let Some(last) = last_position
                        && *position < last
                    {
                        let order: Vec<&str> = element
                            .slices
                            .iter()
                            .map(|&s| sd.nodes[s].slice_name().unwrap_or("?"))
                            .collect();
                        self.fail(sd, element, item_path, IssueType::Structure, "profile-slice-order", format!(
                                "{} matches the slice '{}', which must come before the slice '{}': the order is {}",
                                self.expression(item_path),
                                order[*position],
                                order[last],
                                order.join(", ")
                            ));
                    }
                    last_position =
                        Some(last_position.map_or(*position, |l: usize| l.max(*position)));
                }
            }
        }
    }

    /// Whether `item` belongs to slice `slice` of the sliced element
    /// `sliced`, by every discriminator; if not, why not.
    fn slice_matches(
        &self,
        sd: &Compiled,
        slice: usize,
        discriminators: &Discriminators<'_, '_>,
        item: &'v Value,
        item_path: &ElementPath,
        contained: &ContainedIndex,
    ) -> Result<(), String> {
        let slicing = discriminators.slicing;
        if slicing.discriminator.is_empty() {
            return Err("the profile gives no discriminator".into());
        }
        for ((discriminator, steps), &target) in slicing
            .discriminator
            .iter()
            .zip(discriminators.steps)
            .zip(discriminators.targets)
        {
            let path = discriminator.path.as_str();
            let values = select(item, steps);
            let shown_path = if path == "$this" { "the item" } else { path };
            match discriminator.kind.as_str() {
                "value" | "pattern" => {
                    let expected = target
                        .and_then(|node| fixed_or_pattern(node))
                        .cloned()
                        .or_else(|| {
                            // Extension slices name their URL through the type's profile.
                            (path == "url")
                                .then(|| slice_type_profile(&sd.nodes[slice]))
                                .flatten()
                                .map(|url| Value::String(url.to_owned()))
                        });
                    if let Some(expected) = expected {
                        if !values.iter().any(|v| matches_pattern(v, &expected)) {
                            return Err(match values.first() {
                                Some(actual) => format!(
                                    "{shown_path} is {} but the slice requires {}",
                                    shorten(&actual.to_string(), 120),
                                    shorten(&expected.to_string(), 120)
                                ),
                                None => format!(
                                    "it has no {shown_path}; the slice requires {}",
                                    shorten(&expected.to_string(), 120)
                                ),
                            });
                        }
                    } else if let Some(value_set) = target
                        .and_then(|node| node.def.binding.as_ref())
                        .and_then(|b| self.pass.value_sets.get(&b.value_set))
                        .filter(|vs| vs.complete)
                    {
                        let in_set = values.iter().any(|v| {
                            codes_of(v)
                                .iter()
                                .any(|(system, code)| value_set.contains(*system, code))
                        });
                        if !in_set {
                            return Err(format!(
                                "{shown_path} is not in the value set {}",
                                value_set.url
                            ));
                        }
                    } else {
                        return Err(format!(
                            "the profile fixes no value for {shown_path} in this slice"
                        ));
                    }
                }
                "type" => {
                    let Some(target) = target else {
                        return Err(format!(
                            "the profile says nothing of {shown_path} in this slice"
                        ));
                    };
                    let allowed: Vec<&str> =
                        target.def.types.iter().map(|t| t.code.as_str()).collect();
                    let Some(value) = values.first() else {
                        return Err(format!(
                            "it has no {shown_path}; the slice requires a {}",
                            allowed.join(" or ")
                        ));
                    };
                    let actual = type_of(value);
                    if !actual.is_some_and(|actual| allowed.contains(&actual)) {
                        return Err(format!(
                            "{shown_path} is a {}, not a {}",
                            actual.unwrap_or("value of unknown type"),
                            allowed.join(" or ")
                        ));
                    }
                }
                "profile" => {
                    let profiles: Vec<&str> = target
                        .map(|node| {
                            node.def
                                .types
                                .iter()
                                .flat_map(|t| t.profile.iter().chain(&t.target_profile))
                                .map(String::as_str)
                                .collect()
                        })
                        .unwrap_or_default();
                    if profiles.is_empty() {
                        return Err(format!(
                            "the profile names no profile for {shown_path} in this slice"
                        ));
                    }
                    let Some(Value::Object(object)) = values.first() else {
                        return Err(format!("it has no {shown_path}"));
                    };
                    let conforms = profiles.iter().any(|url| {
                        let Some(profile) = self.pass.by_url.get(canonical(url)) else {
                            return false;
                        };
                        if object
                            .get("resourceType")
                            .and_then(Value::as_str)
                            .is_some_and(|t| t != profile.type_name)
                        {
                            return false;
                        }
                        let mut probe = Walk::new(self.pass, self.root);
                        probe.children(profile, 0, object, item_path, contained);
                        !probe.has_errors()
                    });
                    if !conforms {
                        return Err(format!(
                            "{shown_path} does not conform to {}",
                            profiles.join(" or ")
                        ));
                    }
                }
                "exists" => {
                    let Some(target) = target else {
                        return Err(format!(
                            "the profile says nothing of {shown_path} in this slice"
                        ));
                    };
                    if target.def.min > 0 && values.is_empty() {
                        return Err(format!("it has no {shown_path}"));
                    }
                    if target.def.max == Some(0) && !values.is_empty() {
                        return Err(format!("it has {shown_path}, which the slice forbids"));
                    }
                }
                other => {
                    return Err(format!(
                        "the discriminator type '{other}' is not one FHIR defines"
                    ));
                }
            }
        }
        Ok(())
    }

    /// `minValue[x]` and `maxValue[x]`.
    fn bounds(&mut self, sd: &Compiled, element: &Node, value: &Value, path: &ElementPath) {
        for (key, bound) in &element.def.other {
            let (is_min, word) = if key.starts_with("minValue") {
                (true, "at least")
            } else if key.starts_with("maxValue") {
                (false, "at most")
            } else {
                continue;
            };
            let Some(ordering) = compare(value, bound) else {
                continue;
            };
            let out_of_range = if is_min {
                ordering == Ordering::Less
            } else {
                ordering == Ordering::Greater
            };
            if out_of_range {
                self.fail(
                    sd,
                    element,
                    path,
                    IssueType::Value,
                    if is_min {
                        "profile-min-value"
                    } else {
                        "profile-max-value"
                    },
                    format!(
                        "{} is {}, but must be {word} {}",
                        self.expression(path),
                        shorten(&display_scalar(value), 60),
                        // A Quantity bound shows its value.
                        display_scalar(bound)
                    ),
                );
            }
        }
    }
    fn fixed_and_pattern(
        &mut self,
        sd: &Compiled,
        element: &Node,
        value: &Value,
        path: &ElementPath,
    ) {
        for (key, expected) in &element.def.other {
            if key.starts_with("fixed") && value != expected {
                self.fail(
                    sd,
                    element,
                    path,
                    IssueType::Value,
                    "profile-fixed-value",
                    format!(
                        "{} must be exactly {}",
                        self.expression(path),
                        shorten(&expected.to_string(), 200)
                    ),
                );
            } else if key.starts_with("pattern") && !matches_pattern(value, expected) {
                self.fail(
                    sd,
                    element,
                    path,
                    IssueType::Value,
                    "profile-pattern",
                    format!(
                        "{} must contain {}",
                        self.expression(path),
                        shorten(&expected.to_string(), 200)
                    ),
                );
            }
        }
    }

    fn binding(
        &mut self,
        sd: &Compiled,
        element: &Node,
        type_code: &str,
        value: &Value,
        path: &ElementPath,
    ) {
        let Some(binding) = &element.def.binding else {
            return;
        };
        let required = match binding.strength.as_str() {
            "required" => true,
            "extensible" => false,
            _ => return,
        };
        let codings: Vec<(Option<&str>, &str)> = match (type_code, value) {
            ("code" | "string" | "uri", Value::String(code)) => vec![(None, code.as_str())],
            ("Coding", Value::Object(coding)) => coding_pair(coding).into_iter().collect(),
            ("CodeableConcept", Value::Object(concept)) => concept_codes(concept),
            _ => return,
        };
        let value_set_url = binding.value_set.as_str();
        let Some(value_set) = self
            .pass
            .value_sets
            .get(value_set_url)
            .filter(|vs| vs.complete)
        else {
            if required && !codings.is_empty() {
                let issue = Issue::information(
                    "profile-binding-not-checked",
                    format!(
                        "{}: the codes of {value_set_url} are not held by Sprig (not checked)",
                        self.expression(path)
                    ),
                );
                self.report(issue, path, sd, element);
            }
            return;
        };
        if codings.is_empty() {
            if required && type_code == "CodeableConcept" {
                self.fail(sd, element, path, IssueType::CodeInvalid, "profile-binding-required", format!(
                        "{} needs a coding from {value_set_url} (text alone is not enough for a required binding)",
                        self.expression(path)
                    ));
            }
            return;
        }
        self.displays(sd, element, type_code, value, path, value_set);
        if codings
            .iter()
            .any(|(system, code)| value_set.contains(*system, code))
        {
            return;
        }
        let shown: Vec<String> = codings
            .iter()
            .map(|(system, code)| match system {
                Some(system) => format!("{system}|{code}"),
                None => format!("'{code}'"),
            })
            .collect();
        // Listed only when short: counted first, as an extensible binding misses often
        // (a warning) and some value sets hold thousands of codes.
        let allowed_count: usize = value_set.systems.values().map(|codes| codes.len()).sum();
        let allowed_text = if allowed_count <= 12 {
            let mut allowed: Vec<&str> = value_set
                .systems
                .values()
                .flat_map(|codes| codes.keys().map(String::as_str))
                .collect();
            allowed.sort_unstable();
            format!("; allowed: {}", allowed.join(", "))
        } else {
            String::new()
        };
        let (severity, id, strength) = if required {
            (IssueSeverity::Error, "profile-binding-required", "required")
        } else {
            (
                IssueSeverity::Warning,
                "profile-binding-extensible",
                "extensible",
            )
        };
        let issue = Issue::error(
            IssueType::CodeInvalid,
            id,
            format!(
                "{} {} not in the value set {value_set_url} ({strength} binding){allowed_text}",
                shorten(&shown.join(", "), 200),
                if shown.len() == 1 { "is" } else { "are" }
            ),
        )
        .with_severity(severity);
        self.report(issue, path, sd, element);
    }

    /// A Coding's `display` must be the display Sprig holds for its code
    /// (ignoring case and surrounding spaces): a mismatch usually means the
    /// code was mistyped. A warning, as in the HL7 validator, since systems
    /// may use other designations.
    fn displays(
        &mut self,
        sd: &Compiled,
        element: &Node,
        type_code: &str,
        value: &Value,
        path: &ElementPath,
        value_set: &crate::fhir::definitions::ExpandedValueSet,
    ) {
        // (index in CodeableConcept.coding, coding): the path is built only
        // for a mismatch.
        let codings: Vec<(Option<usize>, &Map<String, Value>)> = match (type_code, value) {
            ("Coding", Value::Object(coding)) => vec![(None, coding)],
            ("CodeableConcept", Value::Object(concept)) => field(concept, "coding")
                .and_then(Value::as_array)
                .map(|codings| {
                    codings
                        .iter()
                        .enumerate()
                        .filter_map(|(i, c)| Some((Some(i), c.as_object()?)))
                        .collect()
                })
                .unwrap_or_default(),
            _ => return,
        };
        for (index, coding) in codings {
            let text = |name: &str| field(coding, name).and_then(Value::as_str);
            let (Some(system), Some(code), Some(display)) =
                (text("system"), text("code"), text("display"))
            else {
                continue;
            };
            let Some(Some(held)) = value_set
                .systems
                .get(system)
                .and_then(|codes| codes.get(code))
            else {
                continue;
            };
            if !held.trim().eq_ignore_ascii_case(display.trim()) {
                let at = match index {
                    Some(i) => path.key("coding").index(i),
                    None => path.clone(),
                }
                .key("display");
                self.warn(
                    sd,
                    element,
                    &at,
                    "profile-display-mismatch",
                    format!(
                        "{} is '{}', but the display of {system}|{code} is '{held}'",
                        self.expression(&at),
                        shorten(display, 120)
                    ),
                );
            }
        }
    }

    fn reference_target(
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
                    "{} refers to a {found}, but may only refer to {}",
                    self.expression(&target_path),
                    allowed.join(" or ")
                ),
            );
        }
    }
}

fn occurrences(value: Option<&Value>) -> usize {
    match value {
        None => 0,
        Some(Value::Array(items)) => items.len(),
        Some(_) => 1,
    }
}

pub(super) fn capitalise(code: &str) -> String {
    let mut chars = code.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn coding_pair(coding: &Map<String, Value>) -> Option<(Option<&str>, &str)> {
    let code = field(coding, "code")?.as_str()?;
    Some((field(coding, "system").and_then(Value::as_str), code))
}

/// `pattern[x]` semantics: every property of the pattern is present in the
/// value with a matching value; arrays match if every pattern item matches
/// some value item.
fn matches_pattern(value: &Value, pattern: &Value) -> bool {
    match (value, pattern) {
        (Value::Object(value), Value::Object(pattern)) => pattern.iter().all(|(key, expected)| {
            value
                .get(key)
                .is_some_and(|actual| matches_pattern(actual, expected))
        }),
        (Value::Array(values), Value::Array(patterns)) => patterns.iter().all(|expected| {
            values
                .iter()
                .any(|actual| matches_pattern(actual, expected))
        }),
        (value, pattern) => value == pattern,
    }
}

fn contained_index(resource: &Map<String, Value>) -> ContainedIndex {
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
fn literal_reference_type(reference: &str) -> Option<&str> {
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

/// The `fixed[x]` or `pattern[x]` value of an element, if it has one.
fn fixed_or_pattern(node: &Node) -> Option<&Value> {
    node.def
        .other
        .iter()
        .find(|(key, _)| key.starts_with("fixed") || key.starts_with("pattern"))
        .map(|(_, value)| value)
}

/// The profile a slice's type names (an extension slice's definition URL).
fn slice_type_profile(node: &Node) -> Option<&str> {
    node.def
        .types
        .iter()
        .find_map(|t| t.profile.first())
        .map(String::as_str)
}

/// A short account of what a slice is, for messages:
/// ` (resource of type Patient)`, ` (code = {…})`.
fn describe_slice(
    sd: &Compiled,
    slice: usize,
    discriminators: &[crate::fhir::definitions::Discriminator],
) -> String {
    let parts: Vec<String> = discriminators
        .iter()
        .filter_map(|d| {
            let target = find_element(sd, slice, &path_steps(&d.path))?;
            let shown = if d.path == "$this" {
                "itself"
            } else {
                d.path.as_str()
            };
            match d.kind.as_str() {
                "type" => {
                    let types: Vec<&str> =
                        target.def.types.iter().map(|t| t.code.as_str()).collect();
                    Some(format!("{shown} of type {}", types.join(" or ")))
                }
                "value" | "pattern" => fixed_or_pattern(target)
                    .map(|v| format!("{shown} = {}", shorten(&v.to_string(), 120))),
                "profile" => {
                    let profiles: Vec<&str> = target
                        .def
                        .types
                        .iter()
                        .flat_map(|t| t.profile.iter().chain(&t.target_profile))
                        .map(String::as_str)
                        .collect();
                    Some(format!("{shown} conforming to {}", profiles.join(" or ")))
                }
                "exists" => Some(if target.def.min > 0 {
                    format!("{shown} present")
                } else {
                    format!("{shown} absent")
                }),
                _ => None,
            }
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

/// The element a discriminator path leads to inside a slice: `$this` is
/// the slice itself, `resource` its `resource` child, `code.coding` that
/// child's child. Only inline children are followed: a slice that does not
/// list an element does not constrain it.
fn find_element<'a>(sd: &'a Compiled, slice: usize, steps: &[Step<'_>]) -> Option<&'a Node> {
    let mut node = slice;
    for step in steps {
        match *step {
            Step::This | Step::Resolve | Step::OfType(_) => {}
            Step::Name(name) => {
                node = *sd.nodes[node]
                    .children
                    .iter()
                    .find(|&&child| &*sd.nodes[child].name == name)?;
            }
            Step::Extension(url) => {
                let extension = *sd.nodes[node]
                    .children
                    .iter()
                    .find(|&&child| &*sd.nodes[child].name == "extension")?;
                node = *sd.nodes[extension]
                    .slices
                    .iter()
                    .find(|&&s| slice_type_profile(&sd.nodes[s]) == Some(url))?;
            }
        }
    }
    Some(&sd.nodes[node])
}

/// A slicing's discriminators as one slice is tested against them: each
/// path parsed, and the element it leads to in that slice.
struct Discriminators<'s, 'd> {
    slicing: &'s crate::fhir::definitions::Slicing,
    steps: &'s [Vec<Step<'d>>],
    targets: &'s [Option<&'s Node>],
}

/// One step of a discriminator path (the restricted FHIRPath that
/// discriminators use).
#[derive(Debug, PartialEq)]
enum Step<'a> {
    This,
    Name(&'a str),
    Extension(&'a str),
    OfType(&'a str),
    Resolve,
}

fn path_steps(path: &str) -> Vec<Step<'_>> {
    let mut steps = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        // Split at the next '.' outside parentheses and quotes.
        let mut depth = 0;
        let mut quoted = false;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                '\'' => quoted = !quoted,
                '(' if !quoted => depth += 1,
                ')' if !quoted => depth -= 1,
                '.' if !quoted && depth == 0 => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        let step = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or("");
        steps.push(if step == "$this" {
            Step::This
        } else if step == "resolve()" {
            Step::Resolve
        } else if let Some(inner) = step
            .strip_prefix("extension(")
            .and_then(|s| s.strip_suffix(')'))
        {
            Step::Extension(inner.trim_matches(['\'', '"']))
        } else if let Some(inner) = step
            .strip_prefix("ofType(")
            .and_then(|s| s.strip_suffix(')'))
        {
            Step::OfType(inner)
        } else {
            Step::Name(step)
        });
    }
    steps
}

/// The values a discriminator path selects from an item, arrays flattened.
/// `resolve()` selects nothing: references are not followed here.
fn select<'v>(item: &'v Value, steps: &[Step<'_>]) -> Vec<&'v Value> {
    let mut current = vec![item];
    for step in steps {
        let mut next = Vec::new();
        for value in current {
            match step {
                Step::This => next.push(value),
                Step::Resolve => {}
                Step::Name(name) => {
                    let Value::Object(object) = value else {
                        continue;
                    };
                    let found = object.get(*name).or_else(|| {
                        // A choice element: `value` finds `valueQuantity`.
                        object
                            .iter()
                            .find_map(|(key, v)| is_choice_key(key, name).then_some(v))
                    });
                    match found {
                        Some(Value::Array(items)) => next.extend(items),
                        Some(v) => next.push(v),
                        None => {}
                    }
                }
                Step::Extension(url) => {
                    if let Some(Value::Array(extensions)) = value.get("extension") {
                        next.extend(
                            extensions
                                .iter()
                                .filter(|e| e.get("url").and_then(Value::as_str) == Some(url)),
                        );
                    }
                }
                Step::OfType(type_name) => {
                    if type_of(value).is_none_or(|t| t == *type_name) {
                        next.push(value);
                    }
                }
            }
        }
        current = next;
    }
    current
}

/// The FHIR type of a value, where the JSON tells it: a resource's
/// `resourceType`.
fn type_of(value: &Value) -> Option<&str> {
    field(value.as_object()?, "resourceType").and_then(Value::as_str)
}

/// (system, code) pairs of a CodeableConcept's codings.
fn concept_codes(concept: &Map<String, Value>) -> Vec<(Option<&str>, &str)> {
    field(concept, "coding")
        .and_then(Value::as_array)
        .map(|codings| {
            codings
                .iter()
                .filter_map(Value::as_object)
                .filter_map(coding_pair)
                .collect()
        })
        .unwrap_or_default()
}

/// (system, code) pairs of a code, Coding or CodeableConcept value.
fn codes_of(value: &Value) -> Vec<(Option<&str>, &str)> {
    match value {
        Value::String(code) => vec![(None, code.as_str())],
        Value::Object(object) if object.contains_key("coding") => concept_codes(object),
        Value::Object(object) => coding_pair(object).into_iter().collect(),
        _ => Vec::new(),
    }
}

/// Orders a value against a `minValue[x]`/`maxValue[x]` bound: numbers
/// numerically and exactly (as FHIRPath does: `10.000000000000000001`
/// exceeds a maximum of 10, which f64 would not see), Quantities by value
/// (same unit code), dates and times as text when both have the same
/// precision. `None` when they do not compare.
fn compare(value: &Value, bound: &Value) -> Option<Ordering> {
    match (value, bound) {
        (Value::Number(a), Value::Number(b)) => compare_numbers(a, b),
        (Value::String(a), Value::String(b)) if a.len() == b.len() => Some(a.cmp(b)),
        (Value::Object(a), Value::Object(b)) => {
            let same_unit = a.get("code") == b.get("code") && a.get("system") == b.get("system");
            match (a.get("value"), b.get("value")) {
                (Some(Value::Number(a)), Some(Value::Number(b))) if same_unit => {
                    compare_numbers(a, b)
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// Two JSON numbers in order: exactly as decimals, or, beyond their range
/// (`1e40`), as f64 so that a huge value still fails a maximum.
fn compare_numbers(a: &serde_json::Number, b: &serde_json::Number) -> Option<Ordering> {
    use crate::fhirpath::json_decimal;
    match (json_decimal(a), json_decimal(b)) {
        (Some(a), Some(b)) => Some(a.cmp(&b)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

fn display_scalar(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Object(object) => object
            .get("value")
            .map(|v| v.to_string())
            .unwrap_or_else(|| value.to_string()),
        other => other.to_string(),
    }
}

/// When a choice element has none of its allowed keys, a key for one of
/// the element's other R4 types (`valueString` where a profile allows only
/// `valueInteger`), if present.
fn other_choice_key(
    object: &Map<String, Value>,
    name: &str,
    allowed: &[(String, String)],
) -> Option<String> {
    object
        .keys()
        .find(|key| is_choice_key(key, name) && !allowed.iter().any(|(k, _)| k == *key))
        .cloned()
}

/// Whether `key` is one type's key of the choice element `name`
/// (`valueQuantity` of `value`).
fn is_choice_key(key: &str, name: &str) -> bool {
    key.strip_prefix(name)
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_compare_numbers_exactly() {
        let number = |text: &str| serde_json::from_str::<Value>(text).expect("a JSON number");
        let ten = number("10");
        assert_eq!(
            compare(&number("10.000000000000000001"), &ten),
            Some(Ordering::Greater)
        );
        assert_eq!(compare(&number("10.0"), &ten), Some(Ordering::Equal));
        assert_eq!(compare(&number("9.99"), &ten), Some(Ordering::Less));
        // Beyond a decimal's range: still ordered.
        assert_eq!(compare(&number("1e40"), &ten), Some(Ordering::Greater));
        let quantity = |value: &str| {
            serde_json::from_str::<Value>(&format!(
                r#"{{"value": {value}, "system": "http://unitsofmeasure.org", "code": "kg"}}"#
            ))
            .expect("a Quantity")
        };
        assert_eq!(
            compare(&quantity("70.5"), &quantity("70.50")),
            Some(Ordering::Equal)
        );
    }

    #[test]
    fn literal_references_name_their_type() {
        assert_eq!(literal_reference_type("Patient/1"), Some("Patient"));
        assert_eq!(
            literal_reference_type("https://x.org/fhir/Patient/1/_history/2"),
            Some("Patient")
        );
        assert_eq!(
            literal_reference_type("Observation/2?_format=json"),
            Some("Observation")
        );
        assert_eq!(
            literal_reference_type("Patient/1/_history/2#x"),
            Some("Patient")
        );
        assert_eq!(literal_reference_type("_history/2"), None);
        assert_eq!(literal_reference_type("urn:uuid:0b0b"), None);
        assert_eq!(literal_reference_type("Nonsense/1"), None);
        assert_eq!(literal_reference_type("1"), None);
    }

    #[test]
    fn patterns_match_subsets() {
        let value = serde_json::json!({"coding": [{"system": "s", "code": "a", "display": "A"}, {"system": "t", "code": "b"}]});
        assert!(matches_pattern(
            &value,
            &serde_json::json!({"coding": [{"system": "t", "code": "b"}]})
        ));
        assert!(!matches_pattern(
            &value,
            &serde_json::json!({"coding": [{"system": "t", "code": "a"}]})
        ));
    }
}
