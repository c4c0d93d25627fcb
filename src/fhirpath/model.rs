//! The FHIR R4 type model FHIRPath needs: which elements each type has, their types,
//! choice elements (`value[x]`), and the type hierarchy for `is`, `as` and `ofType`.
//!
//! Built from Sprig's compiled core definitions (`profiles/core/r4-core.json`): the elements
//! and their types come from the same snapshots the profile pass compiles (parsed once, by
//! it, when the gateway starts); the type hierarchy above them (`base_of`) is written here.

use super::FhirPathError;
use crate::fhir::FastMap;
use crate::fhir::definitions::{DefinitionsFile, ElementDefinition, R4_CORE, StructureDefinition};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Primitive,
    Complex,
    Resource,
    /// A backbone element, named by its path (`Patient.contact`).
    Backbone,
}

#[derive(Debug)]
pub(crate) struct TypeDef {
    pub kind: Kind,
    /// The base type (`DomainResource`, `Element`, `string` for `code`…).
    pub base: Option<String>,
    /// This type and its bases, nearest first.
    pub lineage: Vec<String>,
    /// Element name (without `[x]`) → element, inherited ones included.
    pub elements: FastMap<String, ElementDef>,
}

#[derive(Debug, Clone)]
pub(crate) struct ElementDef {
    /// Type names; for backbone elements the backbone path. More than one only for choices.
    pub types: Vec<String>,
    pub choice: bool,
    /// False when every type is a complex type, a backbone element or a resource: such an
    /// element never has a `_name` sibling (FHIR JSON gives those to primitives only), so
    /// navigation need not search the object's keys for one. True otherwise (primitives,
    /// System types, names the model does not hold).
    pub may_have_sibling: bool,
}

/// The type model.
#[derive(Debug, Default)]
pub(crate) struct Model {
    types: FastMap<String, TypeDef>,
}

/// Complex types whose base is BackboneElement rather than Element in R4.
const BACKBONE_TYPES: [&str; 8] = [
    "Timing",
    "Dosage",
    "ElementDefinition",
    "MarketingStatus",
    "Population",
    "ProdCharacteristic",
    "ProductShelfLife",
    "SubstanceAmount",
];

/// Types that specialise Quantity.
const QUANTITY_TYPES: [&str; 6] = [
    "Age",
    "Count",
    "Distance",
    "Duration",
    "MoneyQuantity",
    "SimpleQuantity",
];

fn base_of(type_name: &str, kind: &str) -> Option<&'static str> {
    Some(match (type_name, kind) {
        ("Resource", _) | ("Element", _) => return None,
        ("DomainResource", _) | ("Bundle", _) | ("Binary", _) | ("Parameters", _) => "Resource",
        (_, "resource") => "DomainResource",
        ("code" | "id" | "markdown", _) => "string",
        ("positiveInt" | "unsignedInt", _) => "integer",
        ("url" | "canonical" | "oid" | "uuid", _) => "uri",
        (t, _) if QUANTITY_TYPES.contains(&t) => "Quantity",
        (t, _) if BACKBONE_TYPES.contains(&t) => "BackboneElement",
        _ => "Element",
    })
}

impl Model {
    /// The R4 model from the compiled core definitions.
    pub fn r4() -> Result<Model, FhirPathError> {
        let file: DefinitionsFile =
            serde_json::from_str(R4_CORE).map_err(|e| FhirPathError::Model {
                message: e.to_string(),
            })?;
        Ok(Self::from_definitions(&file.structure_definitions))
    }

    /// The model of the R4 core `definitions` (already parsed, as the profile pass has them).
    pub fn from_definitions(definitions: &[StructureDefinition]) -> Model {
        let mut model = Model::default();
        for sd in definitions {
            if sd.derivation.as_deref() == Some("constraint") {
                // SimpleQuantity, MoneyQuantity: names for `is`, elements from the base.
                if sd.name != sd.type_name && !model.types.contains_key(&sd.name) {
                    model.types.insert(
                        sd.name.clone(),
                        TypeDef {
                            kind: Kind::Complex,
                            base: Some(sd.type_name.clone()),
                            elements: FastMap::default(),
                            lineage: Vec::new(),
                        },
                    );
                }
                continue;
            }
            if sd.kind == "logical" {
                continue;
            }
            let kind = match sd.kind.as_str() {
                "primitive-type" => Kind::Primitive,
                "resource" => Kind::Resource,
                _ => Kind::Complex,
            };
            model.add(
                &sd.type_name,
                kind,
                base_of(&sd.type_name, &sd.kind),
                &sd.elements,
            );
        }
        model.mark_siblings();
        model.flatten();
        model
    }

    /// Sets [`ElementDef::may_have_sibling`] from the kinds of the elements' types.
    fn mark_siblings(&mut self) {
        let kinds: FastMap<String, Kind> = self
            .types
            .iter()
            .map(|(name, def)| (name.clone(), def.kind))
            .collect();
        for def in self.types.values_mut() {
            for element in def.elements.values_mut() {
                element.may_have_sibling = element.types.is_empty()
                    || element
                        .types
                        .iter()
                        .any(|t| kinds.get(t).is_none_or(|kind| *kind == Kind::Primitive));
            }
        }
    }

    fn add(
        &mut self,
        type_name: &str,
        kind: Kind,
        base: Option<&str>,
        elements: &[ElementDefinition],
    ) {
        self.types.insert(
            type_name.to_string(),
            TypeDef {
                kind,
                base: base.map(str::to_string),
                elements: FastMap::default(),
                lineage: Vec::new(),
            },
        );
        // Paths that have child elements are backbone elements (or the type itself).
        let parents: std::collections::HashSet<&str> = elements
            .iter()
            .filter_map(|e| e.path.rsplit_once('.').map(|(parent, _)| parent))
            .collect();
        let has_children = |path: &str| parents.contains(path);
        for el in elements.iter().skip(1) {
            let Some((parent, name)) = el.path.rsplit_once('.') else {
                continue;
            };
            // Primitive types' `value` elements carry System types; the value is the node.
            if kind == Kind::Primitive && name == "value" {
                continue;
            }
            let (name, choice) = match name.strip_suffix("[x]") {
                Some(n) => (n, true),
                None => (name, false),
            };
            let types = if let Some(reference) = &el.content_reference {
                vec![reference.trim_start_matches('#').to_string()]
            } else if has_children(&el.path) {
                let base = el
                    .types
                    .first()
                    .map_or("BackboneElement", |t| t.code.as_str());
                self.types.insert(
                    el.path.clone(),
                    TypeDef {
                        kind: Kind::Backbone,
                        base: Some(base.to_string()),
                        elements: FastMap::default(),
                        lineage: Vec::new(),
                    },
                );
                vec![el.path.clone()]
            } else if name == "id" && parent == type_name && kind == Kind::Resource {
                // A resource's id is FHIR `id`; the definitions give its System type.
                vec!["id".to_string()]
            } else {
                el.types.iter().map(|t| t.code.clone()).collect()
            };
            if let Some(parent_def) = self.types.get_mut(parent) {
                parent_def.elements.insert(
                    name.to_string(),
                    ElementDef {
                        types,
                        choice,
                        // Set by `mark_siblings` once every type's kind is known.
                        may_have_sibling: true,
                    },
                );
            }
        }
    }

    /// Precomputes each type's lineage and copies inherited elements down, so a lookup is
    /// one hash probe instead of a walk up the hierarchy.
    fn flatten(&mut self) {
        let names: Vec<String> = self.types.keys().cloned().collect();
        for name in names {
            let mut lineage = vec![name.clone()];
            let mut inherited = Vec::new();
            let mut current = self.types.get(&name).and_then(|d| d.base.clone());
            while let Some(base) = current {
                if lineage.contains(&base) || lineage.len() > 16 {
                    break;
                }
                let def = self.types.get(&base);
                if let Some(def) = def {
                    inherited.extend(def.elements.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
                current = def.and_then(|d| d.base.clone());
                lineage.push(base);
            }
            if let Some(def) = self.types.get_mut(&name) {
                def.lineage = lineage;
                for (k, v) in inherited {
                    def.elements.entry(k).or_insert(v);
                }
            }
        }
    }

    pub fn get(&self, type_name: &str) -> Option<&TypeDef> {
        self.types.get(type_name)
    }

    /// The model's own copy of a type name, for borrowing.
    pub fn intern<'m>(&'m self, type_name: &str) -> Option<&'m str> {
        self.types.get_key_value(type_name).map(|(k, _)| k.as_str())
    }

    /// True when `type_name` is `ancestor` or derives from it.
    pub fn derives_from(&self, type_name: &str, ancestor: &str) -> bool {
        type_name == ancestor
            || self
                .types
                .get(type_name)
                .is_some_and(|d| d.lineage.iter().any(|t| t == ancestor))
    }

    pub fn is_resource_type(&self, type_name: &str) -> bool {
        self.types
            .get(type_name)
            .is_some_and(|d| d.kind == Kind::Resource)
            || type_name == "Resource"
            || type_name == "DomainResource"
    }

    pub fn is_primitive(&self, type_name: &str) -> bool {
        self.types
            .get(type_name)
            .is_some_and(|d| d.kind == Kind::Primitive)
    }

    /// The public name of a type: a backbone path's name is `BackboneElement` (or `Element`).
    pub fn public_name<'m>(&'m self, type_name: &'m str) -> &'m str {
        match self.types.get(type_name) {
            Some(TypeDef {
                kind: Kind::Backbone,
                base,
                ..
            }) => base.as_deref().unwrap_or("BackboneElement"),
            _ => type_name,
        }
    }
}
