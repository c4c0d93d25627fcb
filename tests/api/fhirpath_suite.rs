//! The official HL7 FHIRPath R4 test suite (`tests/fixtures/fhirpath/`, see its README)
//! against `sprig::fhirpath`.
//!
//! Every test is run. The ones the engine fails are listed, each with a reason, in
//! `known-failures.txt`; this test fails when a test outside the list fails, and also when
//! a listed test passes, so the list stays true. A pass-rate table by group goes to stderr.
//!
//! How the suite's attributes are read: `invalid="syntax"` needs a `Syntax` error, other
//! `invalid` kinds (`semantic`, `execution`) any error, from compiling or evaluating;
//! `predicate="true"` compares `exists()` of the result; `mode="strict"` tests run like the
//! rest (the engine always rejects unknown elements of known types); `checkOrderedFunctions`
//! asks for a static check Sprig lacks, so that test is a listed failure. Outputs compare type
//! and value; untyped outputs (the R5-style groups) compare by value.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use quick_xml::events::Event;
use quick_xml::reader::Reader;
use rust_decimal::Decimal;
use serde_json::Value;
use sprig::fhirpath::{FhirPath, FhirPathError, Item};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fhirpath")
}

#[derive(Debug, Default)]
struct Case {
    group: String,
    name: String,
    input: Option<String>,
    expression: String,
    invalid: Option<String>,
    predicate: bool,
    outputs: Vec<(Option<String>, String)>,
}

fn attribute(
    e: &quick_xml::events::BytesStart<'_>,
    name: &str,
    decoder: quick_xml::encoding::Decoder,
) -> Option<String> {
    e.attributes()
        .filter_map(Result::ok)
        .find(|a| a.key.as_ref() == name.as_bytes())
        .map(|a| {
            a.decoded_and_normalized_value(quick_xml::XmlVersion::Implicit1_0, decoder)
                .expect("attribute text")
                .into_owned()
        })
}

/// Reads every `test` and `modeTest` of the suite, in order.
fn read_suite() -> Vec<Case> {
    let xml = std::fs::read_to_string(fixtures().join("tests-fhir-r4.xml")).expect("suite file");
    let mut reader = Reader::from_str(&xml);
    let decoder = reader.decoder();
    let mut cases = Vec::new();
    let mut group = String::new();
    let mut current: Option<Case> = None;
    let mut text = String::new();
    let mut output_type: Option<String> = None;
    let mut seen: HashMap<String, usize> = HashMap::new();
    loop {
        match reader.read_event().expect("well-formed suite XML") {
            Event::Start(e) => {
                text.clear();
                match e.name().as_ref() {
                    b"group" => group = attribute(&e, "name", decoder).unwrap_or_default(),
                    b"test" | b"modeTest" => {
                        let base = attribute(&e, "name", decoder)
                            .unwrap_or_else(|| format!("{group}#{}", cases.len()));
                        // Two names occur twice in the suite; the second gets a suffix.
                        let n = seen.entry(base.clone()).or_insert(0);
                        *n += 1;
                        let name = if *n > 1 { format!("{base}#{n}") } else { base };
                        current = Some(Case {
                            group: group.clone(),
                            name,
                            input: attribute(&e, "inputfile", decoder),
                            predicate: attribute(&e, "predicate", decoder).as_deref()
                                == Some("true"),
                            ..Case::default()
                        });
                    }
                    b"expression" => {
                        if let Some(c) = current.as_mut() {
                            c.invalid = attribute(&e, "invalid", decoder);
                        }
                    }
                    b"output" => output_type = attribute(&e, "type", decoder),
                    _ => {}
                }
            }
            Event::Text(t) => text.push_str(&t.decode().expect("text")),
            Event::GeneralRef(r) => {
                let entity = r.decode().expect("entity");
                text.push_str(match entity.as_ref() {
                    "lt" => "<",
                    "gt" => ">",
                    "amp" => "&",
                    "quot" => "\"",
                    "apos" => "'",
                    other => panic!("unknown entity {other}"),
                });
            }
            Event::CData(t) => text.push_str(&String::from_utf8_lossy(&t)),
            Event::End(e) => match e.name().as_ref() {
                b"expression" => {
                    if let Some(c) = current.as_mut() {
                        c.expression = text.clone();
                    }
                }
                b"output" => {
                    if let Some(c) = current.as_mut() {
                        c.outputs.push((output_type.take(), text.clone()));
                    }
                }
                b"test" | b"modeTest" => cases.extend(current.take()),
                _ => {}
            },
            Event::Empty(e) if e.name().as_ref() == b"output" => {
                if let Some(c) = current.as_mut() {
                    c.outputs
                        .push((attribute(&e, "type", decoder), String::new()));
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    cases
}

fn decimal_eq(a: &str, b: &str) -> bool {
    match (a.parse::<Decimal>(), b.parse::<Decimal>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// The suite's type for an untyped `<output>` (the R5-style tests), from its text.
fn infer_type(text: &str) -> &'static str {
    if text == "true" || text == "false" {
        "boolean"
    } else if text.starts_with("@T") {
        "time"
    } else if text.starts_with('@') {
        if text.contains('T') {
            "dateTime"
        } else {
            "date"
        }
    } else if text.parse::<Decimal>().is_ok() {
        "number"
    } else if text.ends_with('\'') && text.contains(" '") {
        "Quantity"
    } else {
        "string"
    }
}

/// Does `item` match the expected `(type, text)`?
fn matches(item: &Item, expected_type: &str, text: &str) -> bool {
    let literal = text.strip_prefix('@').unwrap_or(text);
    match (expected_type, item) {
        ("boolean", Item::Boolean(b)) => b.to_string() == text,
        (
            "boolean",
            Item::Element {
                value: Value::Bool(b),
                ..
            },
        ) => b.to_string() == text,
        ("integer", Item::Integer(i)) => i.to_string() == text,
        (
            "integer",
            Item::Element {
                value: Value::Number(n),
                type_name,
            },
        ) => {
            type_name
                .as_deref()
                .is_some_and(|t| t.ends_with("nt") || t == "integer")
                && n.to_string() == text
        }
        ("decimal", Item::Decimal(d)) => decimal_eq(d, text),
        (
            "decimal",
            Item::Element {
                value: Value::Number(n),
                type_name,
            },
        ) => type_name.as_deref() == Some("decimal") && decimal_eq(&n.to_string(), text),
        ("string", Item::String(s)) => s == text,
        (
            "string",
            Item::Element {
                value: Value::String(s),
                type_name,
            },
        ) => type_name.as_deref().is_none_or(|t| t == "string") && s == text,
        (
            "code" | "id" | "uri",
            Item::Element {
                value: Value::String(s),
                type_name,
            },
        ) => type_name.as_deref() == Some(expected_type) && s == text,
        ("date", Item::Date(d)) => d == literal,
        ("untyped date", Item::Date(d) | Item::DateTime(d)) => d == literal,
        (
            "date",
            Item::Element {
                value: Value::String(s),
                type_name,
            },
        ) => type_name.as_deref() == Some("date") && s == literal,
        ("dateTime", Item::DateTime(d)) => d == literal,
        (
            "dateTime",
            Item::Element {
                value: Value::String(s),
                type_name,
            },
        ) => matches!(type_name.as_deref(), Some("dateTime" | "instant")) && s == literal,
        ("time", Item::Time(t)) => Some(t.as_str()) == literal.strip_prefix('T'),
        ("Quantity", Item::Quantity { value, unit }) => format!("{value} '{unit}'") == text,
        // Untyped expected outputs (the R5-style tests): an integer or a decimal of that
        // value; a date-precision DateTime for a date.
        ("number", Item::Integer(_) | Item::Decimal(_)) => {
            matches!(item, Item::Integer(i) if i.to_string() == text)
                || matches!(item, Item::Decimal(d) if d == text)
                || (matches!(item, Item::Decimal(_))
                    && !text.contains('.')
                    && matches!(item, Item::Decimal(d) if decimal_eq(d, text)))
        }
        _ => false,
    }
}

/// Items for a failure message, cut short (some results are whole resources).
fn short(items: &[Item]) -> String {
    let text = format!("{items:?}");
    match text.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text,
    }
}

/// Runs one case; `Err` says why it failed.
fn run(engine: &FhirPath, inputs: &HashMap<String, Value>, case: &Case) -> Result<(), String> {
    let null = Value::Null;
    let input = match &case.input {
        Some(file) => inputs
            .get(file)
            .ok_or_else(|| format!("input {file} missing"))?,
        None => &null,
    };
    let result = engine
        .compile(&case.expression)
        .and_then(|e| e.evaluate(input, input));
    match (&case.invalid, result) {
        (Some(kind), Err(e)) => {
            if kind == "syntax" && !matches!(e, FhirPathError::Syntax { .. }) {
                Err(format!("expected a syntax error, got: {e}"))
            } else {
                Ok(())
            }
        }
        (Some(kind), Ok(r)) => Err(format!("expected a {kind} error, got {}", short(r.items()))),
        (None, Err(e)) => Err(format!("unexpected error: {e}")),
        (None, Ok(r)) => {
            let items: Vec<Item> = if case.predicate {
                vec![Item::Boolean(!r.is_empty())]
            } else {
                r.into_items()
            };
            let ok = items.len() == case.outputs.len()
                && items.iter().zip(&case.outputs).all(|(item, (ty, text))| {
                    let ty = ty.as_deref().unwrap_or_else(|| match infer_type(text) {
                        "date" => "untyped date",
                        other => other,
                    });
                    matches(item, ty, text)
                });
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "expected {:?}, got {}",
                    case.outputs,
                    short(&items)
                ))
            }
        }
    }
}

/// `known-failures.txt`: one `name reason…` per line; `#` starts a comment.
fn known_failures() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(fixtures().join("known-failures.txt"))
        .expect("known failures list");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, reason) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            (name.to_string(), reason.trim().to_string())
        })
        .collect()
}

#[test]
fn the_hl7_fhirpath_r4_suite_passes_except_the_listed_failures() {
    let engine = FhirPath::new().expect("engine");
    let cases = read_suite();
    assert!(
        cases.len() > 900,
        "the suite has its 900-odd tests ({})",
        cases.len()
    );
    let mut inputs = HashMap::new();
    for case in &cases {
        if let Some(file) = &case.input
            && !inputs.contains_key(file)
        {
            let json_name = file.replace(".xml", ".json");
            let text = std::fs::read_to_string(fixtures().join("inputs").join(&json_name))
                .unwrap_or_else(|e| panic!("{json_name}: {e}"));
            inputs.insert(
                file.clone(),
                serde_json::from_str::<Value>(&text).expect("input JSON"),
            );
        }
    }
    let known = known_failures();
    for reason in known.values() {
        assert!(!reason.is_empty(), "every known failure gives a reason");
    }
    let mut by_group: Vec<(String, usize, usize)> = Vec::new();
    let mut unexpected = Vec::new();
    let mut now_passing = Vec::new();
    let mut names = HashSet::new();
    for case in &cases {
        names.insert(case.name.clone());
        let outcome = run(&engine, &inputs, case);
        if by_group.last().is_none_or(|(g, _, _)| *g != case.group) {
            by_group.push((case.group.clone(), 0, 0));
        }
        if let Some(entry) = by_group.last_mut() {
            entry.2 += 1;
            if outcome.is_ok() {
                entry.1 += 1;
            }
        }
        match (outcome, known.contains_key(&case.name)) {
            (Err(why), false) => {
                unexpected.push(format!("{} `{}`: {why}", case.name, case.expression))
            }
            (Ok(()), true) => now_passing.push(case.name.clone()),
            _ => {}
        }
    }
    let stale: Vec<_> = known.keys().filter(|k| !names.contains(*k)).collect();
    let (passed, total) = by_group
        .iter()
        .fold((0, 0), |(p, t), (_, gp, gt)| (p + gp, t + gt));
    eprintln!("FHIRPath R4 suite: {passed}/{total} passed");
    eprintln!("{:<34} {:>7}", "group", "passed");
    for (group, p, t) in &by_group {
        eprintln!("{group:<34} {:>7}", format!("{p}/{t}"));
    }
    assert!(
        unexpected.is_empty() && now_passing.is_empty() && stale.is_empty(),
        "{} unexpected failures:\n  {}\n{} listed in known-failures.txt but passing now (remove them):\n  {}\n\
         listed but not in the suite: {stale:?}",
        unexpected.len(),
        unexpected.join("\n  "),
        now_passing.len(),
        now_passing.join("\n  "),
    );
}
