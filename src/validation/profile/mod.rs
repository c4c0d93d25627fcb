//! The profile pass: validation against StructureDefinition snapshots.
//!
//! Definitions are compiled once, at start-up, into element trees (one per
//! StructureDefinition: children and slices by index, a key index per
//! element, content references resolved) so that validating is a single
//! walk of the resource (`walk`). It checks what the JSON schema cannot:
//! cardinality, choice types, `Reference` targets (`#contained` and Bundle
//! entries), fixed and pattern values, min/max values, `maxLength`,
//! slicing, extensions by their definitions, NHS numbers and ODS codes,
//! terminology bindings against the pre-expanded value sets (required:
//! error; extensible: warning; a value set drawing on a code system Sprig
//! does not hold in full: "not checked", never silently passed), displays,
//! and the invariants (`constraint.expression`), compiled with
//! [`crate::fhirpath`].
//!
//! # Definitions
//!
//! Two definition files are compiled into the binary: `profiles/core/r4-core.json` (R4 core
//! snapshots: datatypes, resources, core extension definitions and constraint profiles, with
//! pre-expanded value sets; made by `profiles/scripts/build-core-definitions.py`) and
//! `profiles/compiled/sprig.json` (Sprig's profiles, value sets and code systems, made by
//! `profiles/scripts/build-sprig-definitions.py` from the differentials in `profiles/sprig/`).
//! Each snapshot becomes a `Compiled` tree at start-up.
//!
//! Which definitions apply to a resource: the held profiles named in `meta.profile`, an
//! explicitly requested profile, or, when it names no held profile of its type, the configured
//! default (`validation.default_profiles`; a ServiceRequest is a social prescribing referral by
//! default); otherwise the base definition. A named profile Sprig does not hold (BaRS, UK Core)
//! is reported per `validation.unknown_profiles` (a warning, "not checked", by default); a named
//! profile of another type is an error. Each (resource, definition) pair is walked once however
//! many ways lead to it (an entry and its slice, a reference's target profile), so each finding
//! is reported once; an unknown extension's sub-extensions are not reported again.
//!
//! # The walk
//!
//! Reference targets are resolved by `fhir::reference` with one index per Bundle, so resolution
//! is linear; a target in the submission is also walked, where it is, against the reference's
//! `targetProfile` when Sprig holds it, as HL7's validator does (a referral's Patient against
//! `sprig-patient`). Slicing: each item of a sliced element is matched to the first slice whose
//! discriminators (value, pattern, type, profile, exists) all hold, then validated against it;
//! slice cardinality, closed and open-at-end rules and order are checked, and a slice left short
//! explains why each item missed it. Issues come in definition order.
//!
//! The walk looks at an object's present properties and at the children that must be present
//! (`Node::required_children`: a minimum, or slices), not at every element of the definition,
//! unless a property matches no child (a choice type the profile ruled out, which only the
//! absent element can name).
//!
//! # Invariants
//!
//! `constraint.expression`s are compiled once and evaluated on every value of an element that
//! has them (`%resource` the innermost resource), and a datatype's root invariants on each of
//! its values (a snapshot element lists only its own). `ele-1` and `bdl-7` are checked natively
//! (every element; `bdl-7` is quadratic as written), as is `ref-1` (see
//! [`NATIVE_INVARIANTS`]); `per-1` is evaluated as written, FHIRPath comparing partial dates
//! at the precision they share (`fhirpath::temporal`); best-practice ones (dom-6) are reported
//! per `validation.best_practice`. A core invariant whose R4 text is wrong is replaced by HL7's
//! later correction ([`INVARIANT_ERRATA`]). Two that read `%resource.type` once per Bundle entry
//! (bdl-3, bdl-4) are evaluated in an equivalent form that reads it once ([`EQUIVALENT_FORMS`]);
//! messages show the published text, and a test compares both forms on every Bundle type with
//! and without requests and responses. An invariant of a Bundle entry is evaluated with the Bundle
//! as `Scope::bundle`, so that `resolve()` finds the other entries by `fhir::reference`'s rule,
//! as HL7's validator does (`sprig-ref-1`: a `urn:uuid:` reference to the Consent).

mod walk;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use serde_json::Value;
use serde_json::value::RawValue;
use thiserror::Error;

use super::{Target, ValidationPass};
use crate::fhir::FastMap;
use crate::fhir::definitions::{
    DefinitionTexts, ElementDefinition, ExpandedValueSet, R4_CORE, SPRIG, StructureDefinition,
};
use crate::fhir::{Issue, IssueSeverity};
use crate::fhirpath::{Expression, FhirPath};

/// The definitions could not be loaded: a build defect, not bad input.
#[derive(Debug, Error)]
pub enum ProfileError {
    /// The embedded definitions file is not what the build script writes.
    #[error("the bundled definitions are unreadable: {0}")]
    Json(#[from] serde_json::Error),
    /// The FHIRPath engine could not start.
    #[error("the FHIRPath engine: {0}")]
    Engine(String),
    /// An invariant's FHIRPath does not compile.
    #[error("invariant {key}: {problem}")]
    Invariant {
        /// The constraint key.
        key: String,
        /// The compiler's message.
        problem: String,
    },
    /// A snapshot is inconsistent.
    #[error("StructureDefinition {url}: {problem}")]
    Snapshot {
        /// The definition.
        url: String,
        /// What is wrong.
        problem: String,
    },
}

/// A snapshot element, compiled.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) def: ElementDefinition,
    /// The JSON property name (`value` for `value[x]`), shared with the
    /// paths built from it.
    pub(crate) name: Arc<str>,
    /// A choice element (`value[x]`).
    pub(crate) choice: bool,
    /// `_name`: where a primitive's id and extensions go.
    pub(crate) extension_name: String,
    /// For a choice element, each allowed type's JSON keys:
    /// (`valueString`, `_valueString`), in `def.types` order.
    pub(crate) choice_keys: Vec<(String, String)>,
    /// For an element defined by `contentReference` (`#Questionnaire.item`),
    /// the node whose children it shares.
    pub(crate) content: Option<usize>,
    /// Child elements, in snapshot order (slices excluded).
    pub(crate) children: Vec<usize>,
    /// For a sliced element, its slices in snapshot order.
    pub(crate) slices: Vec<usize>,
    /// Every JSON key a child may appear under (`status`, `_status`,
    /// `valueQuantity`, `_valueString`…) → (child index into `children`'s
    /// node numbers, how it appears). Validating an object then costs one
    /// lookup per property present rather than one per element defined.
    pub(crate) lookup: FastMap<Box<str>, (usize, Slot)>,
    /// The children that must be looked at even when absent (a minimum
    /// cardinality, or slices that may have one), in `children` order.
    pub(crate) required_children: Vec<usize>,
}

/// How a child element appears under a JSON key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// `name`: the value.
    Value,
    /// `_name`: a primitive's id and extensions.
    Extension,
    /// `nameType`: the value of one type of a choice (index into `types`).
    ChoiceValue(usize),
    /// `_nameType`.
    ChoiceExtension(usize),
}

impl Node {
    /// The slice name, for a slice.
    pub(crate) fn slice_name(&self) -> Option<&str> {
        self.def.slice_name.as_deref()
    }
}

/// A StructureDefinition, compiled.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub(crate) url: String,
    pub(crate) type_name: String,
    pub(crate) kind: String,
    pub(crate) nodes: Vec<Node>,
}

impl Compiled {
    fn compile(sd: crate::fhir::definitions::StructureDefinition) -> Result<Self, ProfileError> {
        let url = sd.url;
        let broken = |problem: String| ProfileError::Snapshot {
            url: url.clone(),
            problem,
        };
        let mut nodes: Vec<Node> = Vec::with_capacity(sd.elements.len());
        // Elements by id (`Bundle.entry:patient.resource`), while compiling.
        let mut by_id = HashMap::with_capacity(sd.elements.len());
        let mut orphans: Vec<String> = Vec::new();
        for def in sd.elements {
            let index = nodes.len();
            // Ids say where an element sits: `Bundle.entry:patient.resource`
            // is the `resource` child of the `patient` slice of `Bundle.entry`.
            match def.id.rsplit_once('.') {
                Some((parent_id, last)) => {
                    if let Some((element, slice)) = last.split_once(':') {
                        // A re-slice (`a:s/r`) slices the slice `a:s`.
                        let sliced = match slice.rsplit_once('/') {
                            Some((outer, _)) => format!("{parent_id}.{element}:{outer}"),
                            None => format!("{parent_id}.{element}"),
                        };
                        let Some(&sliced) = by_id.get(&sliced) else {
                            // HL7's own `catalog` profile slices an element
                            // its snapshot leaves out; such a slice has
                            // nothing to apply to.
                            orphans.push(def.id);
                            continue;
                        };
                        let sliced: &mut Node = &mut nodes[sliced];
                        sliced.slices.push(index);
                    } else {
                        let Some(&parent) = by_id.get(parent_id) else {
                            if orphans
                                .iter()
                                .any(|orphan| def.id.starts_with(orphan.as_str()))
                            {
                                continue;
                            }
                            return Err(broken(format!("{} comes before its parent", def.id)));
                        };
                        let parent: &mut Node = &mut nodes[parent];
                        parent.children.push(index);
                    }
                }
                None if index != 0 => {
                    return Err(broken(format!("second root element {}", def.id)));
                }
                None => {}
            }
            by_id.insert(def.id.clone(), index);
            let last = def.path.rsplit('.').next().unwrap_or(&def.path).to_owned();
            let (name, choice) = match last.strip_suffix("[x]") {
                Some(base) => (base.to_owned(), true),
                None => (last, false),
            };
            let choice_keys = if choice {
                def.types
                    .iter()
                    .map(|t| {
                        let key = format!("{name}{}", walk::capitalise(&t.code));
                        (key.clone(), format!("_{key}"))
                    })
                    .collect()
            } else {
                Vec::new()
            };
            nodes.push(Node {
                extension_name: format!("_{name}"),
                choice_keys,
                def,
                name: Arc::from(name.as_str()),
                choice,
                content: None,
                children: Vec::new(),
                slices: Vec::new(),
                lookup: FastMap::default(),
                required_children: Vec::new(),
            });
        }
        for node in &mut nodes {
            if let Some(reference) = &node.def.content_reference {
                node.content = by_id.get(reference.trim_start_matches('#')).copied();
            }
        }
        for index in 0..nodes.len() {
            let mut lookup = FastMap::default();
            for &child in &nodes[index].children {
                let child_node = &nodes[child];
                if child_node.choice {
                    for (position, (key, extension_key)) in
                        child_node.choice_keys.iter().enumerate()
                    {
                        lookup.insert(key.as_str().into(), (child, Slot::ChoiceValue(position)));
                        lookup.insert(
                            extension_key.as_str().into(),
                            (child, Slot::ChoiceExtension(position)),
                        );
                    }
                } else {
                    lookup.insert((*child_node.name).into(), (child, Slot::Value));
                    lookup.insert(
                        child_node.extension_name.as_str().into(),
                        (child, Slot::Extension),
                    );
                }
            }
            nodes[index].lookup = lookup;
            let required: Vec<usize> = nodes[index]
                .children
                .iter()
                .copied()
                .filter(|&child| nodes[child].def.min > 0 || !nodes[child].slices.is_empty())
                .collect();
            nodes[index].required_children = required;
        }
        if nodes.is_empty() {
            return Err(broken("no snapshot elements".into()));
        }
        Ok(Self {
            url,
            type_name: sd.type_name,
            kind: sd.kind,
            nodes,
        })
    }
}

/// A canonical URL without its `|version`.
pub fn canonical(url: &str) -> &str {
    url.split('|').next().unwrap_or(url)
}

/// An invariant, ready to evaluate.
#[derive(Debug)]
pub(crate) struct CompiledInvariant {
    /// The constraint key (`ele-1`, `sprig-ref-1`).
    pub(crate) key: String,
    pub(crate) severity: IssueSeverity,
    pub(crate) human: String,
    /// The expression as messages show it: as published (or as corrected,
    /// [`INVARIANT_ERRATA`]), even where an equivalent form is evaluated.
    pub(crate) shown: String,
    /// `None` for the invariants Sprig checks natively instead
    /// ([`NATIVE_INVARIANTS`]).
    pub(crate) expression: Option<Expression>,
}

/// Invariants checked by code rather than FHIRPath, because evaluating them
/// as written is needlessly slow: `ele-1` would run on every element of
/// every resource, and `bdl-7` compares every Bundle entry with every other
/// (quadratic; a 10,000-entry Bundle would take seconds). One datatype
/// invariant is checked by code that says more than its expression: `ref-1`
/// (the walk's contained-reference check, which names the missing `#id`).
/// `per-1` is not here: FHIRPath's `<=` compares dates of different
/// precisions as far as they share one (`2020-05` is after `2020-04-30`), and
/// is empty, so the invariant holds, only when they agree that far.
pub const NATIVE_INVARIANTS: [&str; 3] = ["ele-1", "bdl-7", "ref-1"];

/// Core R4 invariants whose published expression is wrong, with the
/// correction HL7 made later: (key, expression used, why).
pub const INVARIANT_ERRATA: [(&str, &str, &str); 2] = [
    (
        "que-7",
        "operator = 'exists' implies (answer is boolean)",
        "R4 writes `answer is Boolean`, the System type, which a FHIR boolean is not, so every \
         'exists' condition failed; R5 corrected it to the FHIR type `boolean`",
    ),
    (
        "que-12",
        "enableWhen.count() > 1 implies enableBehavior.exists()",
        "R4 writes `enableWhen.count() > 2`, so an item with exactly two conditions and no \
         enableBehavior passed, against its own text ('more than one enableWhen'); R5 \
         corrected it to `> 1`, as HL7's validator applies it",
    ),
];

/// Core R4 invariants evaluated in an equivalent, cheaper form: (key, the
/// expression as published, the form evaluated). Messages still show the
/// published one. Both here read `%resource.type` three times for each Bundle
/// entry (about 30 µs each for a 20-entry Bundle, together a tenth of its
/// validation); the forms
/// read `type` once. A test evaluates each pair over every Bundle type, with
/// and without entries, requests and responses, and requires the same answer.
pub const EQUIVALENT_FORMS: [(&str, &str, &str); 2] = [
    (
        "bdl-3",
        "entry.all(request.exists() = (%resource.type = 'batch' or %resource.type = 'transaction' or %resource.type = 'history'))",
        "entry.empty() or (type.exists() and iif(type = 'batch' or type = 'transaction' or type = 'history', entry.all(request.exists()), entry.request.empty()))",
    ),
    (
        "bdl-4",
        "entry.all(response.exists() = (%resource.type = 'batch-response' or %resource.type = 'transaction-response' or %resource.type = 'history'))",
        "entry.empty() or (type.exists() and iif(type = 'batch-response' or type = 'transaction-response' or type = 'history', entry.all(response.exists()), entry.response.empty()))",
    ),
];

/// Invariants HL7 marks as best practice: advice, reported as configured
/// (`validation.best_practice`; by default not at all: a referral without
/// narrative is still a good referral).
pub const BEST_PRACTICE_INVARIANTS: [&str; 1] = ["dom-6"];

/// How a finding that FHIR leaves to the validator's discretion is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportLevel {
    /// Not at all.
    Ignore,
    /// As an information issue.
    Information,
    /// As a warning.
    Warning,
    /// As an error, which refuses the resource.
    Error,
}

impl ReportLevel {
    /// The severity to report at, if any.
    pub fn severity(self) -> Option<IssueSeverity> {
        match self {
            Self::Ignore => None,
            Self::Information => Some(IssueSeverity::Information),
            Self::Warning => Some(IssueSeverity::Warning),
            Self::Error => Some(IssueSeverity::Error),
        }
    }
}

/// How a finding that is always reported is reported: never silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NoticeLevel {
    /// As an information issue.
    Information,
    /// As a warning.
    Warning,
    /// As an error, which refuses the resource.
    Error,
}

impl NoticeLevel {
    /// The severity to report at.
    pub fn severity(self) -> IssueSeverity {
        match self {
            Self::Information => IssueSeverity::Information,
            Self::Warning => IssueSeverity::Warning,
            Self::Error => IssueSeverity::Error,
        }
    }
}

/// How the profile pass behaves where FHIR leaves a choice.
#[derive(Debug, Clone)]
pub struct ProfileOptions {
    /// Extensions with a URL Sprig holds no definition for (default: a
    /// warning: the extension is kept, but the sender hears that nobody
    /// checked it).
    pub unknown_extensions: ReportLevel,
    /// Profiles named in `meta.profile` that Sprig does not hold (BaRS's,
    /// UK Core's): reported once per claim, at this level (default: a
    /// warning, as HL7's validator does); the resource is still checked
    /// against the profiles Sprig applies.
    pub unknown_profiles: NoticeLevel,
    /// Best-practice invariants such as dom-6 (default: ignored).
    pub best_practice: ReportLevel,
}

impl Default for ProfileOptions {
    fn default() -> Self {
        Self {
            unknown_extensions: ReportLevel::Warning,
            unknown_profiles: NoticeLevel::Warning,
            best_practice: ReportLevel::Ignore,
        }
    }
}

/// A StructureDefinition Sprig holds, compiled when a validation first needs it. Of the
/// 660 bundled (every core type and extension), a referral and what comes with it use
/// a few dozen; compiled at start-up, all of them held 18 MiB.
pub(crate) struct Definition {
    url: String,
    type_name: String,
    kind: String,
    /// Its JSON, in the definitions file compiled into the binary.
    text: &'static RawValue,
    compiled: OnceLock<Option<Arc<Compiled>>>,
}

impl Definition {
    /// The compiled definition; `None` only if the bundled text does not compile, which
    /// `every_bundled_definition_compiles` rules out for the files shipped.
    fn compiled(&self) -> Option<&Arc<Compiled>> {
        self.compiled
            .get_or_init(|| {
                let compiled = serde_json::from_str::<StructureDefinition>(self.text.get())
                    .map_err(ProfileError::from)
                    .and_then(Compiled::compile);
                match compiled {
                    Ok(compiled) => Some(Arc::new(compiled)),
                    Err(error) => {
                        tracing::error!(url = %self.url, %error, "a bundled definition does not compile; it is treated as absent");
                        None
                    }
                }
            })
            .as_ref()
    }
}

/// Validates resources against StructureDefinitions: the base definition
/// of their type, or the profiles they claim or are asked to meet.
pub struct ProfilePass {
    /// Every definition held, compiled on first use.
    definitions: Vec<Definition>,
    /// Base definitions by type name (`Patient`, `Reference`, `string`): indexes
    /// into `definitions`. (These maps are looked up for every value walked, with
    /// keys from the definitions: FxHash rather than SipHash.)
    pub(crate) types: FastMap<String, usize>,
    /// Every definition by canonical URL: indexes into `definitions`.
    pub(crate) by_url: FastMap<String, usize>,
    pub(crate) value_sets: FastMap<String, ExpandedValueSet>,
    /// Invariants by the key used in `ElementDefinition::constraints`.
    pub(crate) invariants: FastMap<String, CompiledInvariant>,
    pub(crate) options: ProfileOptions,
}

impl ProfilePass {
    /// Loads and compiles the bundled definitions with default options.
    pub fn load() -> Result<Self, ProfileError> {
        Self::load_with(ProfileOptions::default())
    }

    /// Loads and compiles the bundled definitions.
    pub fn load_with(options: ProfileOptions) -> Result<Self, ProfileError> {
        let mut definitions = Vec::new();
        let mut types = FastMap::default();
        let mut by_url = FastMap::default();
        let mut value_sets = FastMap::default();
        let mut invariants = FastMap::default();
        let core: DefinitionTexts<'static> = serde_json::from_str(R4_CORE)?;
        let sprig: DefinitionTexts<'static> = serde_json::from_str(SPRIG)?;
        // Each definition parsed whole once, for what is looked up before it is compiled
        // and, from the core file, for the FHIRPath type model; then dropped.
        let parse = |file: &DefinitionTexts<'static>| {
            file.structure_definitions
                .iter()
                .map(|text| serde_json::from_str::<StructureDefinition>(text.get()))
                .collect::<Result<Vec<_>, _>>()
        };
        let core_parsed = parse(&core)?;
        let fhirpath = FhirPath::with_r4_definitions(&core_parsed)
            .map_err(|e| ProfileError::Engine(e.to_string()))?;
        let sprig_parsed = parse(&sprig)?;
        for (file, parsed) in [(core, core_parsed), (sprig, sprig_parsed)] {
            for (id, invariant) in file.invariants {
                // The same key with different rules is stored as `key@source`.
                let key = id.split('@').next().unwrap_or(&id).to_owned();
                // What messages quote: HL7's text, or its later correction.
                let text = INVARIANT_ERRATA
                    .iter()
                    .find(|(erratum, _, _)| *erratum == key)
                    .map_or(invariant.expression.as_str(), |(_, corrected, _)| corrected);
                let expression = if NATIVE_INVARIANTS.contains(&key.as_str()) {
                    None
                } else {
                    let evaluated = EQUIVALENT_FORMS
                        .iter()
                        .find(|(form_key, published, _)| *form_key == key && *published == text)
                        .map_or(text, |(_, _, equivalent)| equivalent);
                    Some(
                        fhirpath
                            .compile(evaluated)
                            .map_err(|e| ProfileError::Invariant {
                                key: key.clone(),
                                problem: e.to_string(),
                            })?,
                    )
                };
                let severity = if BEST_PRACTICE_INVARIANTS.contains(&key.as_str()) {
                    match options.best_practice.severity() {
                        Some(severity) => severity,
                        // Not evaluated at all.
                        None => continue,
                    }
                } else if invariant.severity == "error" {
                    IssueSeverity::Error
                } else {
                    IssueSeverity::Warning
                };
                invariants.insert(
                    id,
                    CompiledInvariant {
                        key,
                        severity,
                        human: invariant.human,
                        shown: text.to_owned(),
                        expression,
                    },
                );
            }
            for (text, sd) in file.structure_definitions.into_iter().zip(parsed) {
                let index = definitions.len();
                if sd.derivation.as_deref() != Some("constraint") {
                    types.insert(sd.type_name.clone(), index);
                }
                by_url.insert(sd.url.clone(), index);
                definitions.push(Definition {
                    url: sd.url,
                    type_name: sd.type_name,
                    kind: sd.kind,
                    text,
                    compiled: OnceLock::new(),
                });
            }
            value_sets.extend(file.value_sets.into_iter().map(|vs| (vs.url.clone(), vs)));
        }
        Ok(Self {
            definitions,
            types,
            by_url,
            value_sets,
            invariants,
            options,
        })
    }

    /// Number of StructureDefinitions held.
    pub fn definition_count(&self) -> usize {
        self.by_url.len()
    }

    /// The base definition of a type (`Patient`, `Reference`, `string`).
    pub(crate) fn type_definition(&self, type_name: &str) -> Option<&Arc<Compiled>> {
        let index = *self.types.get(type_name)?;
        self.definitions.get(index)?.compiled()
    }

    /// The definition with this canonical URL (without `|version`).
    pub(crate) fn definition(&self, url: &str) -> Option<&Arc<Compiled>> {
        let index = *self.by_url.get(url)?;
        self.definitions.get(index)?.compiled()
    }

    /// The resource type a profile (canonical URL, `|version` ignored)
    /// constrains, when Sprig holds it.
    pub fn profile_type(&self, url: &str) -> Option<&str> {
        let index = *self.by_url.get(canonical(url))?;
        self.definitions
            .get(index)
            .filter(|sd| sd.kind == "resource")
            .map(|sd| sd.type_name.as_str())
    }
}

impl ValidationPass for ProfilePass {
    fn name(&self) -> &'static str {
        "profiles"
    }

    fn check(&self, target: &Target<'_>, value: &Value) -> Vec<Issue> {
        if !value.is_object() {
            // Not a resource at all: the schema pass reports it.
            return Vec::new();
        }
        let root = target.resource_type.as_str();
        let mut walk = walk::Walk::new(self, root);
        walk.top_level(root, value, target.profiles);
        walk.finish()
    }

    fn profile_type(&self, url: &str) -> Option<&str> {
        ProfilePass::profile_type(self, url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::ResourceType;
    use serde_json::json;
    use std::sync::LazyLock;

    static PASS: LazyLock<ProfilePass> =
        LazyLock::new(|| ProfilePass::load().expect("definitions load"));

    #[test]
    fn equivalent_forms_agree_with_the_published_invariants() {
        let engine = FhirPath::new().expect("engine");
        let types = [
            None,
            Some("document"),
            Some("message"),
            Some("transaction"),
            Some("transaction-response"),
            Some("batch"),
            Some("batch-response"),
            Some("history"),
            Some("searchset"),
            Some("collection"),
        ];
        let plain = json!({"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Basic"}});
        let request = json!({"resource": {"resourceType": "Basic"},
                             "request": {"method": "POST", "url": "Basic"}});
        let response = json!({"response": {"status": "201"}});
        let both = json!({"request": {"method": "GET", "url": "Basic"},
                          "response": {"status": "200"}});
        let entry_sets = [
            vec![],
            vec![plain.clone()],
            vec![request.clone()],
            vec![response.clone()],
            vec![both.clone()],
            vec![request.clone(), request.clone()],
            vec![response.clone(), response],
            vec![plain.clone(), request.clone()],
            vec![request, plain, both],
        ];
        let mut compared = 0;
        for (key, published, equivalent) in EQUIVALENT_FORMS {
            let published = engine.compile(published).expect("published form compiles");
            let equivalent = engine
                .compile(equivalent)
                .expect("equivalent form compiles");
            for bundle_type in types {
                for entries in &entry_sets {
                    let mut bundle = json!({"resourceType": "Bundle"});
                    if let Some(t) = bundle_type {
                        bundle["type"] = json!(t);
                    }
                    if !entries.is_empty() {
                        bundle["entry"] = json!(entries);
                    }
                    let answer = |e: &Expression| {
                        e.evaluate(&bundle, &bundle)
                            .map_err(|e| e.to_string())
                            .and_then(|c| c.to_boolean().map_err(|e| e.to_string()))
                    };
                    // Empty counts as satisfied, as the walk reads it.
                    let satisfied = |r: Result<Option<bool>, String>| r.map(|b| b != Some(false));
                    assert_eq!(
                        satisfied(answer(&published)),
                        satisfied(answer(&equivalent)),
                        "{key} on {bundle}"
                    );
                    compared += 1;
                }
            }
        }
        assert_eq!(compared, 2 * 10 * 9);
        // Both are in the compiled definitions as published, so the forms are used.
        let core: crate::fhir::definitions::DefinitionsFile =
            serde_json::from_str(R4_CORE).expect("core parses");
        for (key, published, _) in EQUIVALENT_FORMS {
            assert_eq!(
                core.invariants.get(key).map(|i| i.expression.as_str()),
                Some(published),
                "{key}"
            );
        }
    }

    /// (expression, message id, severity) of every issue.
    fn check(resource: Value) -> Vec<(String, &'static str, &'static str)> {
        let rt =
            ResourceType::parse(resource["resourceType"].as_str().expect("type")).expect("known");
        let target = Target {
            resource_type: rt,
            profiles: &[],
        };
        PASS.check(&target, &resource)
            .into_iter()
            .filter(|i| i.message_id != "invariant-best-practice")
            .map(|i| {
                (
                    i.expression.unwrap_or_default(),
                    i.message_id,
                    i.severity.code(),
                )
            })
            .collect()
    }

    fn referral() -> Value {
        json!({"resourceType": "ServiceRequest", "status": "active", "intent": "order",
               "subject": {"reference": "Patient/1"}})
    }

    /// The (expression, severity) of each issue with this message id.
    fn found(resource: Value, id: &str) -> Vec<(String, &'static str)> {
        check(resource)
            .into_iter()
            .filter(|(_, message_id, _)| *message_id == id)
            .map(|(expression, _, severity)| (expression, severity))
            .collect()
    }

    fn error_at(expression: &str) -> Vec<(String, &'static str)> {
        vec![(expression.to_owned(), "error")]
    }

    /// base64Binary: "A stream of bytes, base64 encoded (RFC 4648)".
    #[test]
    fn base64_binary_must_decode() {
        let binary = |data: &str| json!({"resourceType": "Binary", "contentType": "text/plain", "data": data});
        assert_eq!(
            found(binary("SGVs*bG8="), "base64-invalid"),
            error_at("Binary.data")
        );
        assert_eq!(
            found(binary("SGVsbG8"), "base64-invalid"),
            error_at("Binary.data")
        );
        assert!(found(binary("SGVsbG8="), "base64-invalid").is_empty());
        assert!(found(binary("SGVs bG8="), "base64-invalid").is_empty());
    }

    /// Attachment.size: "The number of bytes of data that make up this attachment
    /// (before base64 encoding, if that is done)".
    #[test]
    fn attachment_size_is_the_decoded_length() {
        let document = |size: u64| {
            json!({"resourceType": "DocumentReference", "status": "current",
                   "content": [{"attachment": {"contentType": "text/plain", "data": "SGVsbG8=", "size": size}}]})
        };
        assert_eq!(
            found(document(6), "attachment-size-mismatch"),
            error_at("DocumentReference.content[0].attachment.size")
        );
        assert!(found(document(5), "attachment-size-mismatch").is_empty());
    }

    /// "Strings SHALL NOT exceed 1MB (1024*1024 characters) in size".
    #[test]
    fn strings_are_at_most_one_megabyte() {
        let patient = |length: usize| json!({"resourceType": "Patient", "name": [{"text": "é".repeat(length)}]});
        assert_eq!(
            found(patient(1024 * 1024 + 1), "string-too-long"),
            error_at("Patient.name[0].text")
        );
        // Counted in characters, not bytes ("é" is two bytes).
        assert!(found(patient(1024 * 1024), "string-too-long").is_empty());
    }

    /// per-1: "If present, start SHALL have a lower value than end", partial dates
    /// compared at the precision they share.
    #[test]
    fn a_period_may_not_end_before_it_starts_at_any_precision() {
        let patient = |start: &str, end: &str| json!({"resourceType": "Patient", "name": [{"family": "X", "period": {"start": start, "end": end}}]});
        let per_1 = |start: &str, end: &str| -> Vec<(String, &'static str)> {
            check(patient(start, end))
                .into_iter()
                .filter(|(expression, id, _)| {
                    *id == "invariant" && expression.starts_with("Patient.name[0].period")
                })
                .map(|(expression, _, severity)| (expression, severity))
                .collect()
        };
        assert_eq!(
            per_1("2020-05", "2020-04-30"),
            error_at("Patient.name[0].period")
        );
        assert_eq!(
            per_1("2021", "2020-12-31T10:00:00Z"),
            error_at("Patient.name[0].period")
        );
        assert_eq!(
            per_1("2020-05-02", "2020-05-01"),
            error_at("Patient.name[0].period")
        );
        // Times compare as instants, across time zones.
        assert_eq!(
            per_1("2020-01-01T21:00:00Z", "2020-01-01T20:00:00Z"),
            error_at("Patient.name[0].period")
        );
        assert!(per_1("2020-01-02T00:30:00+14:00", "2020-01-01T20:00:00Z").is_empty());
        assert!(per_1("2020-04", "2020-04-30").is_empty());
        assert!(per_1("2020-04-01", "2020-05").is_empty());
        assert!(per_1("2020-04-01", "2020-04-02").is_empty());
    }

    /// Narrative (narrative.html#xhtml): the div is XHTML in the XHTML
    /// namespace, with "some non-whitespace content" (txt-2) and only basic
    /// formatting: no scripts, forms or event attributes (txt-1).
    #[test]
    fn narrative_is_fhir_xhtml() {
        let narrated = |div: &str| {
            let mut patient = json!({"resourceType": "Patient"});
            patient["text"] = json!({"status": "generated", "div": div});
            patient
        };
        let ok =
            narrated(r#"<div xmlns="http://www.w3.org/1999/xhtml"><p>Ann &amp; Bob</p></div>"#);
        assert!(
            check(ok).iter().all(|(_, id, _)| !id.starts_with("xhtml")),
            "a plain narrative is kept"
        );
        for (div, id) in [
            (
                r#"<div xmlns="http://www.w3.org/1999/xhtml"><script>x()</script>a</div>"#,
                "xhtml-element",
            ),
            (
                r#"<div xmlns="http://www.w3.org/1999/xhtml"><p onclick="x()">a</p></div>"#,
                "xhtml-attribute",
            ),
            (
                r#"<div xmlns="http://www.w3.org/1999/xhtml">a&nbsp;b</div>"#,
                "xhtml-entity",
            ),
            (
                r#"<div xmlns="http://www.w3.org/1999/xhtml"><p>a</div>"#,
                "xhtml-malformed",
            ),
            ("<div>a</div>", "xhtml-namespace"),
        ] {
            assert_eq!(
                found(narrated(div), id),
                error_at("Patient.text.div"),
                "{div}"
            );
        }
        // txt-2 (an empty div) is a warning: HL7's own R4 examples have empty divs.
        assert_eq!(
            found(
                narrated(r#"<div xmlns="http://www.w3.org/1999/xhtml"> </div>"#),
                "xhtml-empty"
            ),
            vec![("Patient.text.div".to_owned(), "warning")]
        );
    }

    /// que-12: "If there are more than one enableWhen, enableBehavior must be
    /// specified".
    #[test]
    fn que_12_two_enable_whens_need_a_behaviour() {
        let questionnaire = |behaviour: Option<&str>| {
            let when = json!({"question": "1", "operator": "exists", "answerBoolean": true});
            let mut item =
                json!({"linkId": "2", "type": "string", "enableWhen": [when.clone(), when]});
            if let Some(behaviour) = behaviour {
                item["enableBehavior"] = json!(behaviour);
            }
            json!({"resourceType": "Questionnaire", "status": "active",
                   "item": [{"linkId": "1", "type": "boolean"}, item]})
        };
        let que_12 = |resource: Value| {
            check(resource)
                .into_iter()
                .filter(|(expression, id, _)| {
                    *id == "invariant" && expression == "Questionnaire.item[1]"
                })
                .count()
        };
        assert_eq!(que_12(questionnaire(None)), 1);
        assert_eq!(que_12(questionnaire(Some("all"))), 0);
    }

    fn collection(entries: Value) -> Value {
        json!({"resourceType": "Bundle", "type": "collection", "entry": entries})
    }

    /// Bundle.entry.fullUrl: "fullUrl SHALL be an absolute URL" (not relative).
    #[test]
    fn a_full_url_is_absolute() {
        let bundle = |full_url: &str| {
            collection(
                json!([{"fullUrl": full_url, "resource": {"resourceType": "Patient", "id": "1"}}]),
            )
        };
        assert_eq!(
            found(bundle("Patient/1"), "bundle-full-url-relative"),
            error_at("Bundle.entry[0].fullUrl")
        );
        assert!(
            found(
                bundle("https://x.org/fhir/Patient/1"),
                "bundle-full-url-relative"
            )
            .is_empty()
        );
        assert!(
            found(
                bundle("urn:uuid:53fefa32-fcbb-4ff8-8a92-55ee120877b7"),
                "bundle-full-url-relative"
            )
            .is_empty()
        );
    }

    /// Bundle.link: a relation appears once (each relation names one link).
    #[test]
    fn a_link_relation_is_given_once() {
        let bundle = |second: &str| {
            json!({"resourceType": "Bundle", "type": "searchset", "link": [
                {"relation": "self", "url": "https://x.org/fhir/Patient"},
                {"relation": second, "url": "https://x.org/fhir/Patient?page=2"}]})
        };
        assert_eq!(
            found(bundle("self"), "bundle-link-relation-repeated"),
            error_at("Bundle.link[1].relation")
        );
        assert!(found(bundle("next"), "bundle-link-relation-repeated").is_empty());
    }

    /// References in a Bundle: one that matches two entries is an error, and so is a
    /// versioned reference to a version of an entry the Bundle does not hold.
    #[test]
    fn bundle_references_match_one_entry_at_the_version_named() {
        let bundle = |reference: &str, second_base: &str| {
            collection(json!([
                {"fullUrl": "https://a.org/fhir/Patient/1",
                 "resource": {"resourceType": "Patient", "id": "1", "meta": {"versionId": "2"}}},
                {"fullUrl": format!("{second_base}/Patient/1"),
                 "resource": {"resourceType": "Patient", "id": "1", "meta": {"versionId": "2"}}},
                {"fullUrl": "urn:uuid:53fefa32-fcbb-4ff8-8a92-55ee120877b7",
                 "resource": {"resourceType": "ServiceRequest", "status": "active", "intent": "order",
                              "subject": {"reference": reference}}}]))
        };
        let at = "Bundle.entry[2].resource.subject.reference";
        assert_eq!(
            found(
                bundle("Patient/1", "https://b.org/fhir"),
                "bundle-reference-ambiguous"
            ),
            error_at(at)
        );
        assert!(
            found(
                bundle("https://a.org/fhir/Patient/1", "https://b.org/fhir"),
                "bundle-reference-ambiguous"
            )
            .is_empty()
        );
        assert_eq!(
            found(
                bundle(
                    "https://a.org/fhir/Patient/1/_history/1",
                    "https://b.org/fhir"
                ),
                "bundle-reference-version-not-found"
            ),
            error_at(at)
        );
        assert!(
            found(
                bundle(
                    "https://a.org/fhir/Patient/1/_history/2",
                    "https://b.org/fhir"
                ),
                "bundle-reference-version-not-found"
            )
            .is_empty()
        );
    }

    /// Definitions compile on first use: every bundled one must compile.
    #[test]
    fn every_bundled_definition_compiles() {
        let pass = ProfilePass::load().expect("definitions load");
        assert!(pass.definitions.iter().all(|d| d.compiled.get().is_none()));
        for definition in &pass.definitions {
            let compiled = serde_json::from_str::<StructureDefinition>(definition.text.get())
                .map_err(ProfileError::from)
                .and_then(Compiled::compile);
            if let Err(error) = compiled {
                panic!("{}: {error}", definition.url);
            }
            let compiled = definition.compiled().expect("compiles");
            assert_eq!(compiled.url, definition.url);
            assert_eq!(compiled.type_name, definition.type_name);
            assert_eq!(compiled.kind, definition.kind);
        }
    }

    #[test]
    fn loads_every_core_definition() {
        let sprig = PASS
            .by_url
            .keys()
            .filter(|url| url.starts_with("https://sprig-gateway.org/fhir/"))
            .count();
        assert!(sprig >= 10, "{sprig} Sprig profiles");
        // Every R4 core StructureDefinition with a snapshot, logical models aside.
        assert_eq!(PASS.definition_count() - sprig, 648);
        assert!(check(referral()).is_empty());
    }

    #[test]
    fn minimum_cardinality() {
        let mut sr = referral();
        sr.as_object_mut().map(|m| m.shift_remove("status"));
        assert_eq!(
            check(sr),
            vec![(
                "ServiceRequest.status".into(),
                "profile-cardinality-min",
                "error"
            )]
        );
        // A primitive given only through its extension counts as present.
        let mut sr = referral();
        sr.as_object_mut().map(|m| m.shift_remove("status"));
        sr["_status"] = json!({"extension": [{"url": "http://example.org/x", "valueString": "y"}]});
        assert!(check(sr).is_empty());
    }

    #[test]
    fn maximum_cardinality_in_a_nested_backbone_element() {
        let patient =
            json!({"resourceType": "Patient", "link": [{"other": {"reference": "Patient/2"}}]});
        assert_eq!(
            check(patient),
            vec![(
                "Patient.link[0].type".into(),
                "profile-cardinality-min",
                "error"
            )]
        );
    }

    #[test]
    fn choice_types() {
        let mut sr = referral();
        sr["occurrenceDateTime"] = json!("2026-12-01");
        sr["occurrencePeriod"] = json!({"start": "2026-12-01"});
        assert_eq!(
            check(sr),
            vec![(
                "ServiceRequest.occurrence[x]".into(),
                "profile-choice-repeated",
                "error"
            )]
        );
        let observation = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                                 "valueQuantity": {"value": 1.5, "code": "kg", "system": "http://unitsofmeasure.org"}});
        assert!(check(observation).is_empty());
    }

    #[test]
    fn required_and_extensible_bindings() {
        let mut sr = referral();
        sr["status"] = json!("open");
        sr["priority"] = json!("soon");
        let issues = check(sr);
        assert_eq!(
            issues,
            vec![
                (
                    "ServiceRequest.status".into(),
                    "profile-binding-required",
                    "error"
                ),
                (
                    "ServiceRequest.priority".into(),
                    "profile-binding-required",
                    "error"
                ),
            ]
        );
        // A required CodeableConcept needs a coding from the set; others are fine.
        let observation = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                                 "interpretation": [{"coding": [{"system": "http://example.org", "code": "odd"}]}]});
        assert_eq!(
            check(observation),
            vec![(
                "Observation.interpretation[0]".into(),
                "profile-binding-extensible",
                "warning"
            )]
        );
        // A value set Sprig cannot expand (MIME types) is reported as not checked.
        let attachment = json!({"resourceType": "DocumentReference", "status": "current",
                                "content": [{"attachment": {"contentType": "text/plain"}}]});
        assert_eq!(
            check(attachment),
            vec![(
                "DocumentReference.content[0].attachment.contentType".into(),
                "profile-binding-not-checked",
                "information"
            )]
        );
    }

    #[test]
    fn reference_targets_and_contained_references() {
        let mut sr = referral();
        sr["subject"] = json!({"reference": "Practitioner/9"});
        sr["requester"] = json!({"reference": "#nobody"});
        assert_eq!(
            check(sr),
            vec![
                (
                    "ServiceRequest.subject.reference".into(),
                    "profile-reference-target",
                    "error"
                ),
                (
                    "ServiceRequest.requester.reference".into(),
                    "profile-contained-not-found",
                    "error"
                ),
            ]
        );
        let mut sr = referral();
        sr["contained"] = json!([{"resourceType": "Organization", "id": "gp", "name": "Practice"}]);
        sr["subject"] = json!({"reference": "#gp"});
        assert_eq!(
            check(sr),
            vec![(
                "ServiceRequest.subject.reference".into(),
                "profile-reference-target",
                "error"
            )]
        );
    }

    #[test]
    fn contained_and_bundled_resources_are_checked_as_their_own_types() {
        let mut sr = referral();
        sr["contained"] = json!([{"resourceType": "Patient", "id": "p", "gender": "bloke"}]);
        sr["subject"] = json!({"reference": "#p"});
        assert_eq!(
            check(sr),
            vec![(
                "ServiceRequest.contained[0].gender".into(),
                "profile-binding-required",
                "error"
            )]
        );
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "ServiceRequest", "intent": "order", "subject": {"reference": "Patient/1"}},
             "request": {"method": "POST", "url": "ServiceRequest"}}]});
        assert_eq!(
            check(bundle),
            vec![(
                "Bundle.entry[0].resource.status".into(),
                "profile-cardinality-min",
                "error"
            )]
        );
    }

    #[test]
    fn issues_name_the_definition_they_come_from() {
        let mut sr = referral();
        sr.as_object_mut().map(|m| m.shift_remove("intent"));
        let target = Target {
            resource_type: ResourceType::SERVICE_REQUEST,
            profiles: &[],
        };
        let issues = PASS.check(&target, &sr);
        assert_eq!(
            issues[0].source.as_deref(),
            Some("http://hl7.org/fhir/StructureDefinition/ServiceRequest#ServiceRequest.intent")
        );
    }

    fn vital_sign(profile: &str) -> Value {
        json!({"resourceType": "Observation", "meta": {"profile": [profile]}, "status": "final",
               "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
               "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
               "subject": {"reference": "Patient/1"}, "effectiveDateTime": "2026-11-01",
               "valueQuantity": {"value": 70, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}})
    }

    #[test]
    fn slices_are_matched_and_their_minimums_explained() {
        let bodyweight = "http://hl7.org/fhir/StructureDefinition/bodyweight";
        assert_eq!(check(vital_sign(bodyweight)), vec![]);
        let mut observation = vital_sign(bodyweight);
        observation["category"][0]["coding"][0]["code"] = json!("survey");
        let issues = PASS.check(
            &Target {
                resource_type: ResourceType::parse("Observation").expect("type"),
                profiles: &[],
            },
            &observation,
        );
        let slice_issue = issues
            .iter()
            .find(|i| i.message_id == "profile-slice-min")
            .expect("slice minimum reported");
        assert_eq!(
            slice_issue.expression.as_deref(),
            Some("Observation.category")
        );
        assert!(
            slice_issue.message.contains("'VSCat'")
                && slice_issue
                    .message
                    .contains("Observation.category[0] is not one: coding.code is \"survey\" but the slice requires \"vital-signs\""),
            "{}",
            slice_issue.message
        );
    }

    #[test]
    fn type_slices_of_a_choice_apply_to_that_type() {
        let mut observation = vital_sign("http://hl7.org/fhir/StructureDefinition/bodyweight");
        observation["valueQuantity"]
            .as_object_mut()
            .map(|q| q.shift_remove("code"));
        assert!(check(observation).contains(&(
            "Observation.valueQuantity.code".into(),
            "profile-cardinality-min",
            "error"
        )));
    }

    #[test]
    fn named_profiles_are_held_and_of_the_right_type_or_not_checked() {
        let mut sr = referral();
        sr["meta"] = json!({"profile": ["https://example.org/fhir/StructureDefinition/nope",
                                        "http://hl7.org/fhir/StructureDefinition/bodyweight"]});
        // A profile Sprig does not hold is "not checked" (a warning by
        // default, as HL7's validator says); one of another type is wrong.
        assert_eq!(
            check(sr.clone()),
            vec![
                (
                    "ServiceRequest.meta.profile[0]".into(),
                    "profile-unknown",
                    "warning"
                ),
                (
                    "ServiceRequest.meta.profile[1]".into(),
                    "profile-wrong-type",
                    "error"
                ),
            ]
        );
        let target = Target {
            resource_type: ResourceType::SERVICE_REQUEST,
            profiles: &[],
        };
        for (level, severity) in [
            (NoticeLevel::Information, "information"),
            (NoticeLevel::Error, "error"),
        ] {
            let pass = ProfilePass::load_with(ProfileOptions {
                unknown_profiles: level,
                ..ProfileOptions::default()
            })
            .expect("loads");
            let issues = pass.check(&target, &sr);
            assert_eq!(issues[0].message_id, "profile-unknown");
            assert_eq!(issues[0].severity.code(), severity);
        }
    }

    /// A referral held to sprig-referral, its Patient (no telecom, no
    /// address), practice (no ODS code) and Consent contained.
    fn referral_with_contained() -> Value {
        json!({"resourceType": "ServiceRequest", "status": "active", "intent": "order",
            "contained": [
                {"resourceType": "Patient", "id": "p",
                 "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9000000009"}],
                 "name": [{"family": "Example"}], "birthDate": "1970-01-01"},
                {"resourceType": "Organization", "id": "gp", "name": "A practice"},
                {"resourceType": "Consent", "id": "c", "status": "active",
                 "scope": {"text": "treatment"}, "category": [{"text": "consent"}],
                 "policyRule": {"text": "verbal consent"}}],
            "identifier": [{"system": "https://gp.example/referrals", "value": "1"}],
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "871731000000106"}]},
            "subject": {"reference": "#p"}, "requester": {"reference": "#gp"},
            "authoredOn": "2026-11-20", "reasonCode": [{"text": "lonely"}],
            "supportingInfo": [{"reference": "#c"}]})
    }

    /// The referral's contained resources as entries of a Bundle, referenced
    /// by `urn:uuid:` (subject, Consent without `type`) and `Type/id`
    /// (requester, against a RESTful fullUrl). The ServiceRequest names
    /// sprig-referral and a BaRS profile; the Patient a UK Core one.
    fn referral_bundle() -> Value {
        let sr = referral_with_contained();
        let mut patient = sr["contained"][0].clone();
        patient["meta"] =
            json!({"profile": ["https://fhir.hl7.org.uk/StructureDefinition/UKCore-Patient"]});
        let mut bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [
            {"fullUrl": "urn:uuid:sr", "resource": sr.clone()},
            {"fullUrl": "urn:uuid:p", "resource": patient},
            {"fullUrl": "https://gp.example/fhir/Organization/gp", "resource": sr["contained"][1].clone()},
            {"fullUrl": "urn:uuid:c", "resource": sr["contained"][2].clone()}]});
        let referral = &mut bundle["entry"][0]["resource"];
        referral
            .as_object_mut()
            .map(|m| m.shift_remove("contained"));
        referral["meta"] = json!({"profile": [
            crate::validation::REFERRAL_PROFILE,
            "https://fhir.nhs.uk/StructureDefinition/BARSServiceRequest-request-referral"]});
        referral["subject"] = json!({"reference": "urn:uuid:p"});
        referral["requester"] = json!({"reference": "Organization/gp"});
        referral["supportingInfo"] = json!([{"reference": "urn:uuid:c"}]);
        bundle
    }

    /// (expression, message id, severity) of every error and warning.
    fn findings(
        target: &Target<'_>,
        resource: &Value,
    ) -> Vec<(String, &'static str, &'static str)> {
        PASS.check(target, resource)
            .into_iter()
            .filter(|i| i.severity.is_error() || i.severity.code() == "warning")
            .map(|i| {
                (
                    i.expression.unwrap_or_default(),
                    i.message_id,
                    i.severity.code(),
                )
            })
            .collect()
    }

    #[test]
    fn references_in_the_submission_meet_their_target_profiles() {
        // sprig-referral's subject is a sprig-patient and its requester, when
        // an Organization, a sprig-gp-practice: contained or in the Bundle,
        // the target is checked against it, where it is.
        let referral_profile = [crate::validation::REFERRAL_PROFILE.to_owned()];
        let mut errors = findings(
            &Target {
                resource_type: ResourceType::SERVICE_REQUEST,
                profiles: &referral_profile,
            },
            &referral_with_contained(),
        );
        errors.retain(|(_, _, severity)| *severity == "error");
        errors.dedup_by(|a, b| a.0 == b.0);
        assert_eq!(
            errors,
            vec![
                ("ServiceRequest.contained[0]".into(), "invariant", "error"),
                (
                    "ServiceRequest.contained[1].identifier".into(),
                    "profile-cardinality-min",
                    "error"
                ),
            ]
        );
    }

    #[test]
    fn bundle_references_resolve_by_one_rule_and_unknown_profiles_are_reported_once() {
        // The Patient entry is reached twice (as an entry, and as the target
        // of a reference naming sprig-patient): its UK Core claim is reported
        // once, and it is still checked against sprig-patient. The Consent
        // is found through its urn:uuid (sprig-ref-1 needs no `type`).
        let found = findings(
            &Target {
                resource_type: ResourceType::BUNDLE,
                profiles: &[],
            },
            &referral_bundle(),
        );
        let mut expressions: Vec<(String, &str, &str)> = found.clone();
        expressions.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
        assert_eq!(
            expressions,
            vec![
                (
                    "Bundle.entry[0].resource.meta.profile[1]".into(),
                    "profile-unknown",
                    "warning"
                ),
                (
                    "Bundle.entry[1].resource.meta.profile[0]".into(),
                    "profile-unknown",
                    "warning"
                ),
                ("Bundle.entry[1].resource".into(), "invariant", "error"),
                (
                    "Bundle.entry[2].resource.identifier".into(),
                    "profile-cardinality-min",
                    "error"
                ),
                (
                    "Bundle.entry[2].resource.identifier".into(),
                    "profile-slice-min",
                    "error"
                ),
            ],
            "{found:?}"
        );
        assert_eq!(
            found
                .iter()
                .filter(|(_, id, _)| *id == "profile-unknown")
                .count(),
            2
        );
    }

    #[test]
    fn an_unknown_extension_is_reported_once_not_for_each_sub_extension() {
        let patient = json!({"resourceType": "Patient", "extension": [
            {"url": "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-EthnicCategory",
             "extension": [{"url": "ethnicCategory", "valueCodeableConcept": {"text": "x"}},
                           {"url": "https://example.org/also-unknown", "valueString": "y"}]}]});
        assert_eq!(
            check(patient),
            vec![(
                "Patient.extension[0]".into(),
                "profile-extension-unknown",
                "warning"
            )]
        );
    }

    #[test]
    fn nhs_numbers_and_ods_codes() {
        let patient = json!({"resourceType": "Patient", "identifier": [
            {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9000000008"},
            {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9000000009"}]});
        assert_eq!(
            check(patient),
            vec![(
                "Patient.identifier[0].value".into(),
                "nhs-number-invalid",
                "error"
            )]
        );
        let organization = json!({"resourceType": "Organization", "identifier": [
            {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "a81001"},
            {"system": "https://fhir.nhs.uk/id/ods-organization-code", "value": "A81001"}]});
        assert_eq!(
            check(organization),
            vec![
                (
                    "Organization.identifier[0].value".into(),
                    "ods-code-invalid",
                    "error"
                ),
                (
                    "Organization.identifier[1].system".into(),
                    "identifier-system-case",
                    "warning"
                ),
            ]
        );
    }

    #[test]
    fn extensions_are_checked_by_their_definitions() {
        let mut patient = json!({"resourceType": "Patient", "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace", "valueString": "Kettering"}]});
        assert_eq!(
            check(patient.clone()),
            vec![(
                "Patient.extension[0].valueString".into(),
                "profile-choice-type",
                "error"
            )]
        );
        patient["extension"][0] = json!({"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                                         "valueAddress": {"city": "Kettering"}});
        assert_eq!(check(patient.clone()), vec![]);
        patient["extension"][0] = json!({"url": "https://example.org/unknown", "valueString": "x"});
        assert_eq!(
            check(patient.clone()),
            vec![(
                "Patient.extension[0]".into(),
                "profile-extension-unknown",
                "warning"
            )]
        );
        let strict = ProfilePass::load_with(ProfileOptions {
            unknown_extensions: ReportLevel::Error,
            ..ProfileOptions::default()
        })
        .expect("loads");
        let target = Target {
            resource_type: ResourceType::parse("Patient").expect("type"),
            profiles: &[],
        };
        assert!(strict.check(&target, &patient)[0].severity.is_error());
    }

    #[test]
    fn bundle_references_resolve_to_entries() {
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:9b3a5e9c-1111-4a4a-8a8a-000000000001",
             "resource": {"resourceType": "ServiceRequest", "status": "active", "intent": "order",
                          "subject": {"reference": "urn:uuid:9b3a5e9c-1111-4a4a-8a8a-000000000002"},
                          "requester": {"reference": "urn:uuid:9b3a5e9c-1111-4a4a-8a8a-000000000009"}},
             "request": {"method": "POST", "url": "ServiceRequest"}},
            {"fullUrl": "urn:uuid:9b3a5e9c-1111-4a4a-8a8a-000000000002",
             "resource": {"resourceType": "Organization", "name": "Not a patient"},
             "request": {"method": "POST", "url": "Organization"}},
            {"fullUrl": "urn:uuid:9b3a5e9c-1111-4a4a-8a8a-000000000002",
             "resource": {"resourceType": "Patient"},
             "request": {"method": "POST", "url": "Patient"}}]});
        // Two entries with one fullUrl: bdl-7, and a reference to it is
        // ambiguous (it used to resolve to the first).
        assert_eq!(
            check(bundle),
            vec![
                (
                    "Bundle.entry[2].fullUrl".into(),
                    "bundle-duplicate-full-url",
                    "error"
                ),
                (
                    "Bundle.entry[0].resource.subject.reference".into(),
                    "bundle-reference-ambiguous",
                    "error"
                ),
                (
                    "Bundle.entry[0].resource.requester.reference".into(),
                    "bundle-reference-not-found",
                    "error"
                ),
            ]
        );
    }

    #[test]
    fn displays_are_checked_for_codes_sprig_holds() {
        let mut observation = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                                            "code": "H", "display": "high"}]}]});
        assert_eq!(check(observation.clone()), vec![]);
        observation["interpretation"][0]["coding"][0]["display"] = json!("Low");
        assert_eq!(
            check(observation),
            vec![(
                "Observation.interpretation[0].coding[0].display".into(),
                "profile-display-mismatch",
                "warning"
            )]
        );
    }
}
