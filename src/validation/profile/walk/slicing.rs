//! Slicing: each item of a sliced element matched to the first slice whose
//! discriminators all hold, then slice cardinality, closed and open-at-end
//! rules and order checked, and a slice left short explained.

use serde_json::Value;

use super::bindings::codes_of;
use super::values::matches_pattern;
use super::{Compiled, ContainedIndex, Node, Walk, canonical, is_choice_key};
use crate::fhir::json::field;
use crate::fhir::outcome::shorten;
use crate::fhir::{ElementPath, IssueType};

/// At most this many items are explained when a slice is not matched.
const EXPLAINED_ITEMS: usize = 3;

impl<'p, 'v> Walk<'p, 'v> {
    /// Matches the items of a sliced element to its slices, validates each
    /// matched item against its slice, and checks slice cardinality, closed
    /// and open-at-end rules and order. Unmatched items are explained slice
    /// by slice, so the sender learns why an entry was not what the profile
    /// expected.
    pub(super) fn slices(
        &mut self,
        sd: &Compiled,
        node: usize,
        items: &[(ElementPath, &'v Value)],
        element_path: &ElementPath,
        contained: &ContainedIndex<'v>,
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
        contained: &ContainedIndex<'v>,
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
                        let Some(profile) = self.pass.definition(canonical(url)) else {
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
