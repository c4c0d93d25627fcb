//! Just enough UCUM to compare quantities: a table of common units with their dimension
//! and factor to the base unit. Units outside the table compare only with themselves.

use std::cmp::Ordering;

use rust_decimal::Decimal;

use super::temporal::CalendarUnit;
use super::value::Val;

/// (unit, dimension, factor to the dimension's base unit as decimal text)
const UNITS: [(&str, &str, &str); 31] = [
    ("1", "1", "1"),
    ("%", "1", "0.01"),
    ("m", "L", "1"),
    ("km", "L", "1000"),
    ("cm", "L", "0.01"),
    ("mm", "L", "0.001"),
    ("um", "L", "0.000001"),
    ("[in_i]", "L", "0.0254"),
    ("[ft_i]", "L", "0.3048"),
    ("g", "M", "1"),
    ("kg", "M", "1000"),
    ("mg", "M", "0.001"),
    ("ug", "M", "0.000001"),
    ("[lb_av]", "M", "453.59237"),
    ("s", "T", "1"),
    ("ms", "T", "0.001"),
    ("min", "T", "60"),
    ("h", "T", "3600"),
    ("d", "T", "86400"),
    ("wk", "T", "604800"),
    ("mo", "T", "2629800"),
    ("a", "T", "31557600"),
    ("L", "V", "1"),
    ("l", "V", "1"),
    ("dL", "V", "0.1"),
    ("mL", "V", "0.001"),
    ("ml", "V", "0.001"),
    ("Cel", "Cel", "1"),
    ("mm[Hg]", "P", "1"),
    ("/min", "F", "1"),
    ("kg/m2", "BMI", "1"),
];

pub(crate) fn is_ucum_code(unit: &str) -> bool {
    UNITS.iter().any(|(u, _, _)| *u == unit)
}

/// A calendar word as the UCUM unit it equals for comparison; years and months have no
/// exact UCUM equal (spec), so they stay themselves.
fn normalize(unit: &str) -> &str {
    match CalendarUnit::from_word(unit) {
        Some(calendar) => calendar.comparable_unit(),
        None => unit,
    }
}

fn lookup(unit: &str) -> Option<(&'static str, Decimal)> {
    UNITS
        .iter()
        .find(|(u, _, _)| *u == unit)
        .and_then(|(_, dim, factor)| factor.parse().ok().map(|f| (*dim, f)))
}

/// Both units measure the same thing.
pub(crate) fn comparable(a: &str, b: &str) -> bool {
    let (a, b) = (normalize(a), normalize(b));
    a == b || matches!((lookup(a), lookup(b)), (Some((x, _)), Some((y, _))) if x == y)
}

/// Compares two `Val::Quantity`s; `None` when the units are not comparable.
pub(crate) fn compare(a: &Val<'_>, b: &Val<'_>) -> Option<Ordering> {
    let (Val::Quantity(x, xu), Val::Quantity(y, yu)) = (a, b) else {
        return None;
    };
    let (xu, yu) = (normalize(xu), normalize(yu));
    if xu == yu {
        return Some(x.cmp(y));
    }
    let ((xd, xf), (yd, yf)) = (lookup(xu)?, lookup(yu)?);
    if xd != yd {
        return None;
    }
    Some(x.checked_mul(xf)?.cmp(&y.checked_mul(yf)?))
}

/// `value` in `unit` expressed in `target` units, when comparable.
pub(crate) fn convert(value: Decimal, unit: &str, target: &str) -> Option<Decimal> {
    let (unit, target) = (normalize(unit), normalize(target));
    if unit == target {
        return Some(value);
    }
    let ((d1, f1), (d2, f2)) = (lookup(unit)?, lookup(target)?);
    (d1 == d2)
        .then(|| value.checked_mul(f1)?.checked_div(f2))
        .flatten()
}
