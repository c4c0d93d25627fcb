//! FHIR's additions to FHIRPath (<http://hl7.org/fhir/R4/fhirpath.html#functions>):
//! `extension`, `hasValue`, `getValue`, `resolve`, `htmlChecks`, `conformsTo`.

use serde_json::Value;

use super::Call;
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

/// Narrative is checked by the schema pass (xhtml), not here.
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
    /// `resolve()`: local references only (`#id` to a contained resource, or a Bundle
    /// entry's `fullUrl`); never I/O.
    fn resolve(&self, base: &[Val<'a>]) -> Coll<'a> {
        let mut out = Vec::new();
        // References are resolved in the outermost resource (a contained resource's
        // `#id` points into its container).
        let Some(Val::Node(Node {
            value: Some(root), ..
        })) = &self.root_resource
        else {
            return out;
        };
        for v in base {
            let reference = match v {
                Val::Node(Node {
                    value: Some(Value::Object(m)),
                    ..
                }) => m.get("reference").and_then(Value::as_str),
                Val::Node(Node {
                    value: Some(Value::String(s)),
                    ..
                }) => Some(s.as_str()),
                Val::Str(_) => None,
                _ => None,
            };
            let Some(reference) = reference else { continue };
            if let Some(id) = reference.strip_prefix('#') {
                if let Some(Value::Array(contained)) = root.get("contained") {
                    for c in contained {
                        if c.get("id").and_then(Value::as_str) == Some(id) {
                            out.push(self.make_node(Some(c), None, None));
                        }
                    }
                }
            } else if let Some(Value::Array(entries)) = root.get("entry") {
                for e in entries {
                    let full = e.get("fullUrl").and_then(Value::as_str);
                    if (full == Some(reference)
                        || full.is_some_and(|f| f.ends_with(&format!("/{reference}"))))
                        && let Some(r) = e.get("resource")
                    {
                        out.push(self.make_node(Some(r), None, None));
                    }
                }
            }
        }
        out
    }
}
