//! FHIR's additions to FHIRPath (<http://hl7.org/fhir/R4/fhirpath.html#functions>):
//! `extension`, `hasValue`, `getValue`, `resolve`, `htmlChecks`, `conformsTo`.

use serde_json::Value;

use super::Call;
use crate::fhir::reference::{self, BundleIndex, Contained, Resolved};
use crate::fhirpath::eval::{Coll, Ctx, R, error};
use crate::fhirpath::value::{Node, Val};

pub(super) fn has_value<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    let base = call.base;
    Ok(vec![Val::Bool(
        base.len() == 1 && base[0].has_primitive_value(cx.model),
    )])
}

pub(super) fn get_value<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    Ok(match call.base {
        [v] if v.has_primitive_value(cx.model) => v.system(cx.model).into_iter().collect(),
        _ => Vec::new(),
    })
}

pub(super) fn extension<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    let url = call.string(cx, 0)?;
    let mut exts = Vec::new();
    for v in call.base {
        if let Val::Node(n) = v {
            let map = match (n.value, n.ext) {
                (Some(Value::Object(m)), _) | (_, Some(Value::Object(m))) => m,
                _ => continue,
            };
            cx.push_json(
                map.get("extension"),
                None,
                cx.model.intern("Extension"),
                &mut exts,
            );
        }
    }
    Ok(exts
        .into_iter()
        .filter(|e| match (e, &url) {
            (
                Val::Node(Node {
                    value: Some(Value::Object(m)),
                    ..
                }),
                Some(url),
            ) => m.get("url").and_then(Value::as_str) == Some(url.as_str()),
            _ => false,
        })
        .collect())
}

pub(super) fn resolve<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    Ok(cx.resolve(call.base))
}

/// `txt-1`/`txt-2`: Narrative.div is checked natively by the profile walk
/// (validation/profile/walk/xhtml.rs), not here.
pub(super) fn html_checks<'a>(_: &Ctx<'a>, _: &Call<'_, 'a>) -> R<Coll<'a>> {
    Ok(vec![Val::Bool(true)])
}

/// Only the core profiles, which the type model knows: whether the item's type is or
/// derives from the profile's type.
pub(super) fn conforms_to<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    let model = cx.model;
    let url = call.string(cx, 0)?.unwrap_or_default();
    let Some(t) = url.strip_prefix("http://hl7.org/fhir/StructureDefinition/") else {
        return Err(error("conformsTo() knows only core definitions"));
    };
    if model.get(t).is_none() {
        return Err(error(format!("unknown profile {url}")));
    }
    Ok(match cx.single(call.base)? {
        None => Vec::new(),
        Some(Val::Node(Node { ty: Some(ty), .. })) => {
            vec![Val::Bool(model.derives_from(ty, t))]
        }
        Some(_) => vec![Val::Bool(false)],
    })
}

impl<'a> Ctx<'a> {
    /// `resolve()`: references within the submission only, never I/O, by the one rule
    /// of [`crate::fhir::reference`]: `#id` among the contained resources of
    /// `%rootResource` (a contained resource's `#id` points into its container); any
    /// other reference among the entries of the Bundle `%rootResource` is an entry of
    /// (`Scope::bundle`), or of `%rootResource` itself when it is a Bundle. A reference
    /// that is not there, or that the rule calls an error (two entries with one
    /// identity), resolves to nothing.
    fn resolve(&self, base: &[Val<'a>]) -> Coll<'a> {
        let mut out = Vec::new();
        let Some(Val::Node(Node {
            value: Some(root), ..
        })) = &self.root_resource
        else {
            return out;
        };
        let root: &'a Value = root;
        let references: Vec<&str> = base
            .iter()
            .filter_map(|v| match v {
                Val::Node(Node {
                    value: Some(Value::Object(m)),
                    ..
                }) => m.get("reference").and_then(Value::as_str),
                Val::Node(Node {
                    value: Some(Value::String(s)),
                    ..
                }) => Some(s.as_str()),
                _ => None,
            })
            .collect();
        if references.is_empty() {
            return out;
        }
        let contained = Contained::of(root);
        // The caller's index (built once per Bundle), or `%rootResource`'s own entries
        // (built once per evaluation).
        let index = self.bundle.or_else(|| {
            (root.get("resourceType").and_then(Value::as_str) == Some("Bundle"))
                .then(|| self.own_bundle.get_or_init(|| BundleIndex::new(root)))
        });
        let referrer = index.and_then(|index| {
            index
                .position_of(root)
                .and_then(|position| index.entry(position))
                .and_then(|entry| entry.full_url)
        });
        for text in references {
            match reference::resolve(text, Some(&contained), index, referrer) {
                Ok(Resolved::Container) => out.push(self.make_node(Some(root), None, None)),
                Ok(found) => {
                    if let Some(resource) = found.resource() {
                        out.push(self.make_node(Some(resource), None, None));
                    }
                }
                Err(_) => {}
            }
        }
        out
    }
}
