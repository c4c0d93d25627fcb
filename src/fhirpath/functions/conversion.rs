//! The conversion functions (FHIRPath section 5.5): `iif`, `toBoolean`…`toQuantity`,
//! `toString` and their `convertsTo…` tests.

use rust_decimal::Decimal;

use super::Call;
use crate::fhirpath::eval::{Coll, Ctx, R, error};
use crate::fhirpath::quantity;
use crate::fhirpath::temporal::{self, CalendarUnit};
use crate::fhirpath::value::{self, Val, as_decimal};

pub(super) fn iif<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    if call.base.len() > 1 {
        return Err(error("iif() on a collection of more than one item"));
    }
    let criterion = call.on_input(cx, 0)?;
    let criterion = match cx.single(&criterion)? {
        None => None,
        Some(v) => match v.system(cx.model) {
            Some(Val::Bool(b)) => Some(b),
            _ => return Err(error("iif() criterion must be a boolean")),
        },
    };
    let branch = if criterion == Some(true) { 1 } else { 2 };
    call.on_input(cx, branch)
}

pub(super) fn to_string<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    Ok(cx
        .single(call.base)?
        .and_then(|v| value::to_string(v, cx.model))
        .map(Val::Str)
        .into_iter()
        .collect())
}

pub(super) fn converts_to_string<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    Ok(cx
        .single(call.base)?
        .map(|v| Val::Bool(value::to_string(v, cx.model).is_some()))
        .into_iter()
        .collect())
}

/// The single input converted to the System type `target` (a quantity to the unit the
/// argument names, if any): the value, or (`test`) whether there is one.
fn conversion<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>, target: &str, test: bool) -> R<Coll<'a>> {
    let Some(v) = cx.system_single(call.base)? else {
        return Ok(Vec::new());
    };
    let unit = call.string(cx, 0)?;
    let converted = convert(&v, target, unit.as_deref());
    if test {
        Ok(vec![Val::Bool(converted.is_some())])
    } else {
        Ok(converted.into_iter().collect())
    }
}

pub(super) fn to_boolean<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    conversion(cx, call, "Boolean", false)
}

pub(super) fn to_integer<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    conversion(cx, call, "Integer", false)
}

pub(super) fn to_decimal<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    conversion(cx, call, "Decimal", false)
}

pub(super) fn to_date<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    conversion(cx, call, "Date", false)
}

pub(super) fn to_date_time<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    conversion(cx, call, "DateTime", false)
}

pub(super) fn to_time<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    conversion(cx, call, "Time", false)
}

pub(super) fn to_quantity<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    conversion(cx, call, "Quantity", false)
}

pub(super) fn converts_to_boolean<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    conversion(cx, call, "Boolean", true)
}

pub(super) fn converts_to_integer<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    conversion(cx, call, "Integer", true)
}

pub(super) fn converts_to_decimal<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    conversion(cx, call, "Decimal", true)
}

pub(super) fn converts_to_date<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    conversion(cx, call, "Date", true)
}

pub(super) fn converts_to_date_time<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    conversion(cx, call, "DateTime", true)
}

pub(super) fn converts_to_time<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    conversion(cx, call, "Time", true)
}

pub(super) fn converts_to_quantity<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    conversion(cx, call, "Quantity", true)
}

/// `toX()` conversions; `None` when the value does not convert.
fn convert<'a>(v: &Val<'a>, target: &str, unit: Option<&str>) -> Option<Val<'a>> {
    use Val::*;
    match (target, v) {
        ("Boolean", Bool(b)) => Some(Bool(*b)),
        ("Boolean", Int(1)) => Some(Bool(true)),
        ("Boolean", Int(0)) => Some(Bool(false)),
        ("Boolean", Dec(d)) if *d == Decimal::ONE => Some(Bool(true)),
        ("Boolean", Dec(d)) if d.is_zero() => Some(Bool(false)),
        ("Boolean", Str(s)) => match s.to_lowercase().as_str() {
            "true" | "t" | "yes" | "y" | "1" | "1.0" => Some(Bool(true)),
            "false" | "f" | "no" | "n" | "0" | "0.0" => Some(Bool(false)),
            _ => None,
        },
        ("Integer", Int(i)) => Some(Int(*i)),
        ("Integer", Bool(b)) => Some(Int(i64::from(*b))),
        ("Integer", Str(s)) => {
            let t = s.strip_prefix('+').unwrap_or(s);
            (!t.is_empty()
                && t.trim_start_matches('-')
                    .bytes()
                    .all(|b| b.is_ascii_digit()))
            .then(|| t.parse().ok().map(Int))
            .flatten()
        }
        ("Decimal", Int(i)) => Some(Dec(Decimal::from(*i))),
        ("Decimal", Dec(d)) => Some(Dec(*d)),
        ("Decimal", Bool(b)) => Some(Dec(if *b { Decimal::ONE } else { Decimal::ZERO })),
        ("Decimal", Str(s)) => {
            let t = s.strip_prefix('+').unwrap_or(s);
            let digits = t.trim_start_matches('-');
            let ok = !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
                && digits.matches('.').count() <= 1
                && !digits.starts_with('.')
                && !digits.ends_with('.');
            ok.then(|| t.parse().ok().map(Dec)).flatten()
        }
        ("Date", Date(d)) => Some(Date(*d)),
        ("Date", DateTime(d)) => Some(Date(d.date)),
        ("Date", Str(s)) => temporal::Date::parse(s)
            .or_else(|| temporal::DateTime::parse(s).map(|d| d.date))
            .map(Date),
        ("DateTime", DateTime(d)) => Some(DateTime(*d)),
        ("DateTime", Date(d)) => Some(DateTime(temporal::DateTime::from_date(*d))),
        ("DateTime", Str(s)) => temporal::DateTime::parse(s).map(DateTime),
        ("Time", Time(t)) => Some(Time(*t)),
        ("Time", Str(s)) => temporal::Time::parse(s).map(Time),
        ("Quantity", Quantity(a, u)) => match unit {
            None => Some(Quantity(*a, u.clone())),
            Some(target) => {
                quantity::convert(*a, u, target).map(|v| Quantity(v, target.to_string()))
            }
        },
        ("Quantity", Int(_) | Dec(_)) => Some(Quantity(as_decimal(v)?, "1".into())),
        ("Quantity", Bool(b)) => Some(Quantity(
            if *b { Decimal::ONE } else { Decimal::ZERO },
            "1".into(),
        )),
        ("Quantity", Str(s)) => parse_quantity(s),
        _ => None,
    }
}

/// `'5 mg'`, `"1 'wk'"`, `'1 day'`, `'1.0'`.
fn parse_quantity<'a>(s: &str) -> Option<Val<'a>> {
    let s = s.trim();
    let (number, unit) = match s.split_once(' ') {
        Some((n, u)) => (n, u.trim()),
        None => (s, ""),
    };
    let value: Decimal = number.parse().ok()?;
    if number.starts_with('.') || number.ends_with('.') {
        return None;
    }
    let unit = if unit.is_empty() {
        "1".to_string()
    } else if let Some(u) = unit.strip_prefix('\'').and_then(|u| u.strip_suffix('\'')) {
        u.to_string()
    } else if CalendarUnit::from_word(unit).is_some() {
        unit.to_string()
    } else {
        return None;
    };
    Some(Val::Quantity(value, unit))
}
