//! The tree navigation functions (FHIRPath section 5.8): `children`, `descendants`.

use serde_json::Value;

use super::Call;
use crate::fhir::json::field;
use crate::fhirpath::eval::{Coll, Ctx, R, type_suffix_matches, underscore};
use crate::fhirpath::model::TypeDef;
use crate::fhirpath::value::Val;

pub(super) fn children<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    let mut out = Vec::new();
    for v in call.base {
        cx.children(v, &mut out);
    }
    Ok(out)
}

pub(super) fn descendants<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    let mut out = Vec::new();
    let mut frontier = call.base.to_vec();
    while !frontier.is_empty() {
        let mut next = Vec::new();
        for v in &frontier {
            cx.children(v, &mut next);
        }
        out.extend(next.iter().cloned());
        frontier = next;
    }
    Ok(out)
}

impl<'a> Ctx<'a> {
    /// Appends the children of one item, in the JSON's order.
    fn children(&self, item: &Val<'a>, out: &mut Coll<'a>) {
        let Val::Node(node) = item else { return };
        let map = match (node.value, node.ext) {
            (Some(Value::Object(m)), _) => m,
            (_, Some(Value::Object(m))) => m,
            _ => return,
        };
        // Looked up once for all the children, not per key.
        let def = node.ty.and_then(|t| self.model.get(t));
        // Most objects have no `_name` siblings: then no key needs a search for one (a
        // search per key is n² over a large object).
        let siblings = map.keys().any(|key| key.starts_with('_'));
        for (key, v) in map {
            if key == "resourceType" {
                continue;
            }
            let (name, value, ext) = match key.strip_prefix('_') {
                // A `_name` with a `name` beside it was consumed with that name.
                Some(base) if field(map, base).is_some() => continue,
                Some(base) => (base, None, Some(v)),
                None => (
                    key.as_str(),
                    Some(v),
                    if siblings { underscore(map, key) } else { None },
                ),
            };
            let ty = def.and_then(|d| child_type(d, name));
            // For primitives (node.value not an object) the children are id and extension.
            self.push_json(value, ext, ty, out);
        }
    }
}

/// The type of JSON key `key` (a plain or choice element name) in type `def`.
fn child_type<'m>(def: &'m TypeDef, key: &str) -> Option<&'m str> {
    if let Some(el) = def.elements.get(key)
        && !el.choice
    {
        return el.types.first().map(String::as_str);
    }
    // Choice: the longest element-name prefix whose suffix names one of its types.
    // A choice key is `name` + capitalised type: try the splits before capitals only.
    for (i, c) in key.char_indices().rev() {
        if i == 0 {
            break;
        }
        if !c.is_ascii_uppercase() {
            continue;
        }
        if let Some(el) = def.elements.get(&key[..i])
            && el.choice
        {
            let suffix = &key[i..];
            return el
                .types
                .iter()
                .find(|t| type_suffix_matches(t, suffix))
                .map(String::as_str);
        }
    }
    None
}
