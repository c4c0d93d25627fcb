//! One walk of a resource against compiled definitions, collecting issues.
//!
//! The walk follows the definition, not the JSON: for each element of the
//! StructureDefinition it looks the property up, checks cardinality, then
//! each value (fixed/pattern, bindings, lengths, bounds, references, NHS
//! identifiers) and descends into complex values through inline children,
//! a type's profile, or the base definition of the type. Sliced elements
//! are matched item by item to their slices (see [`Walk::slices`]).
//!
//! This file is the walk itself; `slicing`, `bindings`, `references` and
//! `values` (checks of one value) and `rules` (with `xhtml`) add to the same `impl Walk`.

use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::{BEST_PRACTICE_INVARIANTS, Compiled, Node, ProfilePass, Slot, canonical};
use crate::fhir::json::field;
use crate::fhir::outcome::shorten;
use crate::fhir::reference::{BundleIndex, Contained};
use crate::fhir::{ElementPath, Issue, IssueSeverity, IssueType};
use references::BundleFrame;

mod bindings;
mod references;
mod rules;
mod slicing;
#[cfg(test)]
mod tests;
mod values;
mod xhtml;

/// The resources contained in the resource being walked (inside a
/// contained resource: in its container), for resolving `#id` references,
/// with where the container is.
pub(super) struct ContainedIndex<'v> {
    pub(super) index: Contained<'v>,
    /// The container.
    pub(super) container: &'v Value,
    /// Its path.
    pub(super) path: ElementPath,
    /// Its `fullUrl`, when it is a Bundle entry: the base its relative
    /// references resolve against.
    pub(super) full_url: Option<&'v str>,
}

/// A resource being walked.
#[derive(Debug, Clone)]
struct Frame<'v> {
    resource: &'v Value,
    /// Its container, when it is contained: `%rootResource`.
    container: Option<&'v Value>,
    /// The Bundle it (or, when contained, its container) is an entry of,
    /// indexed once when the walk reached the Bundle: where `resolve()` in
    /// its invariants finds the other entries.
    bundle: Option<Rc<BundleIndex<'v>>>,
}

/// A property of the object being walked, matched to the child element it
/// belongs to.
#[derive(Debug, Clone, Copy)]
struct Hit<'v> {
    child: usize,
    slot: Slot,
    value: &'v Value,
}

pub(super) struct Walk<'p, 'v> {
    pass: &'p ProfilePass,
    root: &'p str,
    issues: Vec<Issue>,
    /// The Bundles being walked, innermost last: references resolve against
    /// the entries of the innermost one.
    bundles: Vec<BundleFrame<'v>>,
    /// The resources being walked, innermost last: `%resource` and
    /// `%rootResource` of invariants.
    resources: Vec<Frame<'v>>,
    /// Each (resource, definition) walked so far, by address: a resource is
    /// checked against a definition once, however many ways lead to it (an
    /// entry and the slice it matches; a reference's target profile).
    walked: HashSet<(usize, usize)>,
    /// How deep the walk is inside extensions Sprig holds no definition
    /// for: their sub-extensions are part of what was not checked, and are
    /// not reported again.
    unknown_extension_depth: usize,
}

impl<'p, 'v> Walk<'p, 'v> {
    pub(super) fn new(pass: &'p ProfilePass, root: &'p str) -> Self {
        Self {
            pass,
            root,
            issues: Vec::new(),
            bundles: Vec::new(),
            resources: Vec::new(),
            walked: HashSet::new(),
            unknown_extension_depth: 0,
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
        container: Option<&ContainedIndex<'v>>,
        required: &[&str],
    ) {
        let Value::Object(resource) = resource_value else {
            return;
        };
        let pass = self.pass;
        let Some(base) = pass.type_definition(type_name) else {
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
        // The Bundle this resource is an entry of, if it is one, and the
        // entry's fullUrl.
        let entry_of = match container {
            Some(_) => None,
            None => self.bundles.last().and_then(|frame| {
                let position = frame.entries.position_of(resource_value)?;
                Some((
                    Rc::clone(&frame.entries),
                    frame.entries.entry(position)?.full_url,
                ))
            }),
        };
        let own_index;
        let contained = match container {
            Some(index) => index,
            None => {
                own_index = ContainedIndex {
                    index: Contained::of_map(resource),
                    container: resource_value,
                    path: path.clone(),
                    full_url: entry_of.as_ref().and_then(|(_, full_url)| *full_url),
                };
                &own_index
            }
        };
        let profiles = self.profiles_of(type_name, resource, path, required);
        let definitions: Vec<Arc<Compiled>> = if profiles.is_empty() {
            vec![Arc::clone(base)]
        } else {
            profiles
        };
        let address = std::ptr::from_ref(resource_value) as usize;
        let definitions: Vec<Arc<Compiled>> = definitions
            .into_iter()
            .filter(|sd| self.walked.insert((address, Arc::as_ptr(sd) as usize)))
            .collect();
        if definitions.is_empty() {
            return;
        }
        let is_bundle = type_name == "Bundle";
        if is_bundle {
            let frame = BundleFrame::build(resource, path, self);
            self.bundles.push(frame);
            self.bundle_rules(resource, path);
        }
        self.resources.push(Frame {
            resource: resource_value,
            container: container.map(|c| c.container),
            // A contained resource's references resolve in its container's Bundle.
            bundle: match container {
                Some(_) => self.resources.last().and_then(|frame| frame.bundle.clone()),
                None => entry_of.map(|(bundle, _)| bundle),
            },
        });
        for sd in definitions {
            self.children(&sd, 0, resource, path, contained);
            self.invariants(&sd, &sd.nodes[0], None, resource_value, path, &[]);
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
    /// Keys in `skip` are not evaluated (already evaluated on this value).
    fn invariants(
        &mut self,
        sd: &Compiled,
        element: &Node,
        focus_type: Option<&str>,
        value: &'v Value,
        path: &ElementPath,
        skip: &[String],
    ) {
        if element.def.constraints.is_empty() {
            return;
        }
        let pass = self.pass;
        let Some(frame) = self.resources.last().cloned() else {
            return;
        };
        // A contained resource's %rootResource is its container.
        let root_resource = frame.container;
        let resource = frame.resource;
        for key in &element.def.constraints {
            if skip.contains(key) {
                continue;
            }
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
                bundle: frame.bundle.as_deref(),
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
    /// names in `meta.profile`. A named profile of another type is an
    /// error. A named profile Sprig does not hold is reported at the
    /// configured level (`validation.unknown_profiles`, a warning by
    /// default), as HL7's validator reports a profile it cannot find: the
    /// resource is not checked against it, but it is still checked against
    /// the profiles that apply (required ones, or the base definition).
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
            if let Some(profile) = pass.definition(canonical(url))
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
            match pass.definition(canonical(url)) {
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
                            "{} names the profile {}, which Sprig does not hold, so the resource is not checked against it (only against the profiles Sprig applies to it)",
                            self.expression(&at),
                            shorten(url, 200)
                        ),
                    )
                    .with_severity(pass.options.unknown_profiles.severity())
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
        contained: &ContainedIndex<'v>,
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
        contained: &ContainedIndex<'v>,
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
        contained: &ContainedIndex<'v>,
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
        contained: &ContainedIndex<'v>,
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
        contained: &ContainedIndex<'v>,
    ) {
        let element = &sd.nodes[node];
        self.fixed_and_pattern(sd, element, value, path);
        self.bounds(sd, element, value, path);
        self.binding(sd, element, type_code, value, path);
        self.core_rules(sd, element, type_code, value, path);
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
        let datatype = pass.type_definition(type_code);
        let is_resource = type_code == "Resource" || datatype.is_some_and(|t| t.kind == "resource");
        if !is_resource {
            // A backbone element's type is its own path (`Patient.contact`).
            let focus_type = if matches!(type_code, "BackboneElement" | "Element") {
                element.def.path.as_str()
            } else {
                type_code
            };
            self.invariants(sd, element, Some(focus_type), value, path, &[]);
            // The datatype's own root invariants (per-1 on Period, att-1,
            // ref-1, qty-3 ...): a snapshot lists only the element's own
            // constraints, so these would otherwise never be evaluated.
            if let Some(datatype) = datatype.filter(|t| {
                t.kind == "complex-type" && !matches!(type_code, "BackboneElement" | "Element")
            }) && let Some(root) = datatype.nodes.first()
            {
                let listed = &element.def.constraints;
                self.invariants(datatype, root, Some(type_code), value, path, listed);
            }
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
        if let Some(profile) = type_profile.and_then(|url| pass.definition(canonical(url))) {
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
        contained: &ContainedIndex<'v>,
    ) {
        let pass = self.pass;
        let url = field(extension, "url")
            .and_then(Value::as_str)
            .unwrap_or("");
        if let Some(definition) = pass
            .definition(canonical(url))
            .filter(|sd| sd.type_name == "Extension")
        {
            self.children(definition, 0, extension, path, contained);
            return;
        }
        let severity = pass.options.unknown_extensions.severity();
        if let Some(severity) = severity
            && !url.is_empty()
            && self.unknown_extension_depth == 0
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
        if let Some(base) = pass.type_definition("Extension") {
            self.unknown_extension_depth += 1;
            self.children(base, 0, extension, path, contained);
            self.unknown_extension_depth -= 1;
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
