//! Types (FHIRPath section 6.3, and `type()` of Reflection): whether an item is of a type, for
//! the `is` and `as` operators and functions and for `ofType`, and an item's type.

use super::Call;
use crate::fhirpath::eval::{Coll, Ctx, R, error};
use crate::fhirpath::parser::{Expr, TypeSpec};
use crate::fhirpath::value::Val;

const SYSTEM_TYPES: [&str; 9] = [
    "Boolean", "Integer", "Long", "Decimal", "String", "Date", "DateTime", "Time", "Quantity",
];

/// The function form of the `as` operator.
pub(super) fn r#as<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    cx.of_type(call.base, &type_arg(call)?)
}

/// The function form of the `is` operator.
pub(super) fn is<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    cx.single_is(call.base, &type_arg(call)?)
}

pub(super) fn r#type<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    Ok(call.base.iter().map(|v| cx.type_of(v)).collect())
}

/// The type named by the first argument (`Patient`, `FHIR.string`), read, not evaluated.
pub(super) fn type_arg(call: &Call<'_, '_>) -> R<TypeSpec> {
    match call.unevaluated(0) {
        Some(Expr::Ident(name)) => Ok(TypeSpec {
            namespace: None,
            name: name.clone(),
        }),
        Some(Expr::Member(ns, name)) => match ns.as_ref() {
            Expr::Ident(ns) => Ok(TypeSpec {
                namespace: Some(ns.clone()),
                name: name.clone(),
            }),
            _ => Err(error("expected a type name")),
        },
        _ => Err(error("expected a type name")),
    }
}

impl<'a> Ctx<'a> {
    /// `item is spec`.
    pub(crate) fn is_type(&self, item: &Val<'a>, spec: &TypeSpec) -> R<bool> {
        let name = spec.name.as_str();
        let known = match spec.namespace.as_deref() {
            // `x.is(System.Patient)` is simply false.
            Some("System") => true,
            Some("FHIR") => self.model.get(name).is_some() || self.model.is_resource_type(name),
            None => {
                SYSTEM_TYPES.contains(&name)
                    || self.model.get(name).is_some()
                    || self.model.is_resource_type(name)
            }
            Some(_) => false,
        };
        if !known {
            return Err(error(format!("unknown type {name}")));
        }
        let system_name = match item {
            Val::Bool(_) => Some("Boolean"),
            Val::Int(_) => Some("Integer"),
            Val::Long(_) => Some("Long"),
            Val::Dec(_) => Some("Decimal"),
            Val::Str(_) => Some("String"),
            Val::Date(_) => Some("Date"),
            Val::DateTime(_) => Some("DateTime"),
            Val::Time(_) => Some("Time"),
            Val::Quantity(..) => Some("Quantity"),
            _ => None,
        };
        match (spec.namespace.as_deref(), item) {
            (Some("System"), Val::Node(n)) => Ok(n.ty.is_none()
                && item
                    .system(self.model)
                    .is_some_and(|s| self.is_type(&s, spec).unwrap_or(false))),
            (Some("System") | None, _) if system_name.is_some() => Ok(system_name == Some(name)),
            (Some("FHIR"), _) if system_name.is_some() => Ok(false),
            (_, Val::Node(n)) => Ok(match n.ty {
                // FHIR primitives are not each other's subtypes here (`code` is not a
                // `string`), as the HL7 suite expects; complex types inherit.
                Some(t) if self.model.is_primitive(t) => t == name,
                Some(t) => self.model.derives_from(self.model.public_name(t), name) || t == name,
                // Untyped JSON: fall back on the System type of its value.
                None => {
                    spec.namespace.is_none()
                        && SYSTEM_TYPES.contains(&name)
                        && item
                            .system(self.model)
                            .is_some_and(|s| self.is_type(&s, spec).unwrap_or(false))
                }
            }),
            _ => Ok(false),
        }
    }

    pub(crate) fn type_of(&self, item: &Val<'a>) -> Val<'a> {
        let sys = |n: &str| Val::Type("System", n.to_string());
        match item {
            Val::Bool(_) => sys("Boolean"),
            Val::Int(_) => sys("Integer"),
            Val::Long(_) => sys("Long"),
            Val::Dec(_) => sys("Decimal"),
            Val::Str(_) => sys("String"),
            Val::Date(_) => sys("Date"),
            Val::DateTime(_) => sys("DateTime"),
            Val::Time(_) => sys("Time"),
            Val::Quantity(..) => sys("Quantity"),
            Val::Type(..) => sys("TypeInfo"),
            Val::Node(n) => match n.ty {
                Some(t) => Val::Type("FHIR", self.model.public_name(t).to_string()),
                None => match item.system(self.model) {
                    Some(s) if !matches!(s, Val::Node(_)) => self.type_of(&s),
                    _ => sys("Object"),
                },
            },
        }
    }

    /// The items of type `spec` (`as`, `ofType`).
    pub(crate) fn of_type(&self, items: &[Val<'a>], spec: &TypeSpec) -> R<Coll<'a>> {
        let mut out = Vec::new();
        for item in items {
            if self.is_type(item, spec)? {
                out.push(item.clone());
            }
        }
        Ok(out)
    }

    /// Whether the single item is of type `spec` (`is`); empty for no item.
    pub(crate) fn single_is(&self, items: &[Val<'a>], spec: &TypeSpec) -> R<Coll<'a>> {
        match self.single(items)? {
            None => Ok(Vec::new()),
            Some(item) => Ok(vec![Val::Bool(self.is_type(item, spec)?)]),
        }
    }
}
