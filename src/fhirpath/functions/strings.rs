//! The string functions (FHIRPath section 5.6, String manipulation, and the additional
//! string functions: `trim`, `split`, `join`, `encode`, `decode`, `escape`, `unescape`).

use super::Call;
use crate::fhirpath::eval::{Coll, Ctx, R, error};
use crate::fhirpath::value::Val;

fn one<'a>(v: Val<'a>) -> R<Coll<'a>> {
    Ok(vec![v])
}

/// `f` of the input, a single string; empty for an empty input. Anything else than a string
/// is an error that names the function.
fn on_string<'a>(
    cx: &Ctx<'a>,
    call: &Call<'_, 'a>,
    f: impl FnOnce(String) -> R<Coll<'a>>,
) -> R<Coll<'a>> {
    let Some(s) = cx
        .string_arg(call.base)
        .map_err(|_| error(format!("{}() needs a string", call.def.name)))?
    else {
        return Ok(Vec::new());
    };
    f(s)
}

pub(super) fn index_of<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    on_string(cx, call, |s| {
        let Some(sub) = call.string(cx, 0)? else {
            return Ok(Vec::new());
        };
        one(Val::Int(match s.find(&sub) {
            Some(byte) => s[..byte].chars().count() as i64,
            None => -1,
        }))
    })
}

pub(super) fn substring<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    on_string(cx, call, |s| {
        let Some(start) = call.int(cx, 0)? else {
            return Ok(Vec::new());
        };
        let len = call.int(cx, 1)?;
        let chars: Vec<char> = s.chars().collect();
        if start < 0 || start as usize >= chars.len() {
            return Ok(Vec::new());
        }
        let start = start as usize;
        let end = match len {
            Some(l) => start.saturating_add(l.max(0) as usize).min(chars.len()),
            None => chars.len(),
        };
        one(Val::Str(chars[start..end].iter().collect()))
    })
}

/// Whether `test` holds of the input and the argument, both single strings; empty if
/// either is empty.
fn test_with<'a>(
    cx: &Ctx<'a>,
    call: &Call<'_, 'a>,
    test: impl FnOnce(&str, &str) -> bool,
) -> R<Coll<'a>> {
    on_string(cx, call, |s| {
        let Some(sub) = call.string(cx, 0)? else {
            return Ok(Vec::new());
        };
        one(Val::Bool(test(&s, &sub)))
    })
}

pub(super) fn starts_with<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    test_with(cx, call, |s, sub| s.starts_with(sub))
}

pub(super) fn ends_with<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    test_with(cx, call, |s, sub| s.ends_with(sub))
}

pub(super) fn contains<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    test_with(cx, call, |s, sub| s.contains(sub))
}

pub(super) fn upper<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    on_string(cx, call, |s| one(Val::Str(s.to_uppercase())))
}

pub(super) fn lower<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    on_string(cx, call, |s| one(Val::Str(s.to_lowercase())))
}

pub(super) fn length<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    on_string(cx, call, |s| one(Val::Int(s.chars().count() as i64)))
}

pub(super) fn trim<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    on_string(cx, call, |s| one(Val::Str(s.trim().to_string())))
}

pub(super) fn to_chars<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    on_string(cx, call, |s| {
        Ok(s.chars().map(|c| Val::Str(c.to_string())).collect())
    })
}

pub(super) fn replace<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    on_string(cx, call, |s| {
        let (Some(pattern), Some(with)) = (call.string(cx, 0)?, call.string(cx, 1)?) else {
            return Ok(Vec::new());
        };
        if pattern.is_empty() {
            // Spec: an empty pattern surrounds every character.
            let mut out = with.clone();
            for c in s.chars() {
                out.push(c);
                out.push_str(&with);
            }
            return one(Val::Str(out));
        }
        one(Val::Str(s.replace(&pattern, &with)))
    })
}

/// `matches` (`full`: `matchesFull`).
fn regex_match<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>, full: bool) -> R<Coll<'a>> {
    on_string(cx, call, |s| {
        let Some(pattern) = call.string(cx, 0)? else {
            return Ok(Vec::new());
        };
        let re = cx.regexes.get(&pattern, full)?;
        one(Val::Bool(re.is_match(&s)))
    })
}

pub(super) fn matches<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    regex_match(cx, call, false)
}

pub(super) fn matches_full<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    regex_match(cx, call, true)
}

pub(super) fn replace_matches<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    on_string(cx, call, |s| {
        let (Some(pattern), Some(with)) = (call.string(cx, 0)?, call.string(cx, 1)?) else {
            return Ok(Vec::new());
        };
        if pattern.is_empty() {
            return one(Val::Str(s));
        }
        let re = cx.regexes.get(&pattern, false)?;
        // FHIRPath uses `$1` for groups, as the regex crate does.
        one(Val::Str(re.replace_all(&s, with.as_str()).into_owned()))
    })
}

pub(super) fn split<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    on_string(cx, call, |s| {
        let Some(sep) = call.string(cx, 0)? else {
            return Ok(Vec::new());
        };
        Ok(s.split(sep.as_str())
            .map(|p| Val::Str(p.to_string()))
            .collect())
    })
}

pub(super) fn join<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    let sep = call.string(cx, 0)?.unwrap_or_default();
    let mut parts = Vec::new();
    for v in call.base {
        match v.system(cx.model) {
            Some(Val::Str(s)) => parts.push(s),
            _ => return Err(error("join() needs strings")),
        }
    }
    one(Val::Str(parts.join(&sep)))
}

/// `transform` of the input, in the format the argument names (`hex`, `base64`, `html`…);
/// empty for a format it does not know.
fn in_format<'a>(
    cx: &Ctx<'a>,
    call: &Call<'_, 'a>,
    transform: fn(&str, &str) -> Option<String>,
) -> R<Coll<'a>> {
    on_string(cx, call, |s| {
        let format = call.string(cx, 0)?.unwrap_or_default();
        Ok(transform(&format, &s).map(Val::Str).into_iter().collect())
    })
}

pub(super) fn encode<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    in_format(cx, call, |format, s| codec(true, format, s))
}

pub(super) fn decode<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    in_format(cx, call, |format, s| codec(false, format, s))
}

pub(super) fn escape<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    in_format(cx, call, |format, s| escaped(true, format, s))
}

pub(super) fn unescape<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    in_format(cx, call, |format, s| escaped(false, format, s))
}

fn codec(encode: bool, format: &str, s: &str) -> Option<String> {
    match (format, encode) {
        ("hex", true) => Some(s.bytes().map(|b| format!("{b:02x}")).collect()),
        ("hex", false) => {
            let bytes: Option<Vec<u8>> = (0..s.len())
                .step_by(2)
                .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
                .collect();
            String::from_utf8(bytes?).ok()
        }
        ("base64" | "urlbase64", true) => Some(base64_encode(s.as_bytes(), format == "urlbase64")),
        ("base64" | "urlbase64", false) => String::from_utf8(base64_decode(s)?).ok(),
        _ => None,
    }
}

fn base64_encode(bytes: &[u8], url: bool) -> String {
    let table: &[u8; 64] = if url {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(table[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(v);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    Some(out)
}

fn escaped(escape: bool, format: &str, s: &str) -> Option<String> {
    match (format, escape) {
        ("html", true) => Some(
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;")
                .replace('\'', "&#39;"),
        ),
        ("html", false) => Some(
            s.replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&#39;", "'")
                .replace("&amp;", "&"),
        ),
        ("json", true) => Some(s.replace('\\', "\\\\").replace('"', "\\\"")),
        ("json", false) => Some(s.replace("\\\"", "\"").replace("\\\\", "\\")),
        _ => None,
    }
}
