//! Unit tests of the public API.

use serde_json::{Value, json};

use super::*;

fn engine() -> FhirPath {
    FhirPath::new().expect("engine")
}

fn referral() -> Value {
    // Parsed from text so the decimal keeps its digits (`1.50`), as FHIR JSON input does.
    let text = json!({
        "resourceType": "ServiceRequest",
        "id": "sr1",
        "contained": [{"resourceType": "Patient", "id": "p1", "active": true}],
        "status": "active",
        "intent": "order",
        "subject": {"reference": "#p1"},
        "authoredOn": "2024-03-01T10:00:00Z",
        "quantityQuantity": {"value": 1.50, "unit": "session", "code": "1"},
        "note": [{"text": "first"}, {"text": "second", "_text": {"extension": [{"url": "http://x", "valueString": "y"}]}}],
        "_priority": {"extension": [{"url": "http://example.org/why", "valueString": "no value"}]}
    })
    .to_string()
    .replace("1.5,", "1.50,");
    serde_json::from_str(&text).expect("JSON")
}

fn eval(expression: &str, resource: &Value) -> Collection {
    engine()
        .compile(expression)
        .expect("compiles")
        .evaluate(resource, resource)
        .unwrap_or_else(|e| panic!("{expression}: {e}"))
}

#[test]
fn syntax_errors_say_where() {
    let err = engine()
        .compile("name.where(given = 'x'")
        .expect_err("unbalanced");
    let FhirPathError::Syntax {
        position,
        line,
        column,
        ..
    } = err
    else {
        panic!("a syntax error");
    };
    assert_eq!((position, line, column), (22, 1, 23));

    let err = engine()
        .compile("a and\n  and b")
        .expect_err("two operators");
    assert!(
        matches!(
            err,
            FhirPathError::Syntax {
                position: 8,
                line: 2,
                column: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("line 2, column 3"), "{err}");

    assert!(matches!(
        engine().compile("1 + 'unterminated"),
        Err(FhirPathError::Syntax { position: 4, .. })
    ));
}

#[test]
fn evaluates_paths_functions_and_types_on_a_resource() {
    let sr = referral();
    assert_eq!(
        eval("ServiceRequest.note.text", &sr).items(),
        [
            Item::Element {
                value: json!("first"),
                type_name: Some("markdown".into())
            },
            Item::Element {
                value: json!("second"),
                type_name: Some("markdown".into())
            },
        ]
    );
    assert_eq!(
        eval("status = 'active' and intent = 'order'", &sr).as_boolean(),
        Some(true)
    );
    // Choice elements by their base name, typed; decimals keep their text.
    assert_eq!(eval("quantity.value", &sr).to_json().to_string(), "[1.50]");
    assert_eq!(eval("quantity is Quantity", &sr).as_boolean(), Some(true));
    assert_eq!(
        eval("quantity.value.toString()", &sr).items(),
        [Item::String("1.50".into())]
    );
    assert_eq!(
        eval("authoredOn > @2024-01-01", &sr).as_boolean(),
        Some(true)
    );
    // A primitive with only an extension has no value.
    assert_eq!(
        eval("priority.exists() and priority.hasValue().not()", &sr).as_boolean(),
        Some(true)
    );
    assert_eq!(
        eval("note[1].text.extension.value", &sr).items(),
        [Item::Element {
            value: json!("y"),
            type_name: Some("string".into())
        }]
    );
    assert_eq!(
        eval("subject.resolve().active", &sr).as_boolean(),
        Some(true)
    );
    assert_eq!(
        eval("contained.ofType(Patient).id", &sr).to_json(),
        json!(["p1"])
    );
    // Unknown elements of a known type are errors, not silent empties.
    assert!(
        engine()
            .compile("ServiceRequest.subjekt")
            .expect("parses")
            .evaluate(&sr, &sr)
            .is_err()
    );
}

#[test]
fn resource_and_focus_are_distinct() {
    let sr = referral();
    let note = &sr["note"][1];
    let e = engine()
        .compile("text.exists() and %resource.status = 'active' and %context.text = $this.text")
        .expect("compiles");
    assert_eq!(
        e.evaluate(&sr, note).expect("evaluates").as_boolean(),
        Some(true)
    );
    let id = engine()
        .compile("%resource.id | %rootResource.id | id")
        .expect("compiles");
    assert_eq!(
        id.evaluate(&sr, note).expect("evaluates").to_json(),
        json!(["sr1"])
    );
    // A focus with its type: choice elements and `is` work below the resource too.
    let scope = Scope {
        resource: &sr,
        root_resource: None,
        bundle: None,
        focus: &sr["note"][1],
        focus_type: Some("Annotation"),
        environment: None,
    };
    let typed = engine().compile("text is markdown").expect("compiles");
    assert_eq!(
        typed.evaluate_in(scope).expect("evaluates").as_boolean(),
        Some(true)
    );
}

#[test]
fn root_resource_is_the_container() {
    let sr = referral();
    let patient = &sr["contained"][0];
    let e = engine()
        .compile("%resource.id = 'p1' and %rootResource.id = 'sr1' and %rootResource.subject.resolve().active")
        .expect("compiles");
    let scope = Scope {
        resource: patient,
        root_resource: Some(&sr),
        bundle: None,
        focus: patient,
        focus_type: None,
        environment: None,
    };
    assert_eq!(
        e.evaluate_in(scope).expect("evaluates").as_boolean(),
        Some(true)
    );
}

#[test]
fn environment_variables() {
    let sr = referral();
    let mut env = Environment::new();
    env.set("limit", Collection::new(vec![Item::Integer(2)]));
    env.set(
        "who",
        Collection::new(vec![Item::Element {
            value: json!({"reference": "#p1"}),
            type_name: Some("Reference".into()),
        }]),
    );
    let e = engine()
        .compile("note.count() <= %limit and %who.reference = subject.reference")
        .expect("compiles");
    assert_eq!(
        e.evaluate_with(&sr, &sr, &env)
            .expect("evaluates")
            .as_boolean(),
        Some(true)
    );
    let missing = engine().compile("%nope").expect("compiles");
    assert!(matches!(
        missing.evaluate(&sr, &sr),
        Err(FhirPathError::Evaluation { .. })
    ));
    assert_eq!(
        eval("%ucum", &sr).items(),
        [Item::String("http://unitsofmeasure.org".into())]
    );
}

#[test]
fn boolean_conversion_follows_singleton_evaluation() {
    let sr = referral();
    assert_eq!(eval("{}", &sr).as_boolean(), None);
    assert_eq!(eval("false", &sr).as_boolean(), Some(false));
    assert_eq!(
        eval("status", &sr).as_boolean(),
        Some(true),
        "one non-boolean item is true"
    );
    assert_eq!(
        eval("contained.active", &sr).as_boolean(),
        Some(true),
        "a FHIR boolean"
    );
    let two = eval("note", &sr);
    assert_eq!(two.as_boolean(), None);
    assert!(two.to_boolean().is_err());
    // Three-valued logic.
    assert_eq!(eval("{} and false", &sr).as_boolean(), Some(false));
    assert_eq!(eval("{} or true", &sr).as_boolean(), Some(true));
    assert_eq!(eval("{} implies false", &sr).as_boolean(), None);
}

/// `evaluate_boolean_in` is `evaluate_in` then `to_boolean`, item for item, on the
/// resource and on elements, through the guard (an absent member) or not, and for errors.
#[test]
fn boolean_evaluation_answers_as_the_collection_does() {
    let sr = referral();
    let engine = engine();
    let subject = &sr["subject"];
    let cases: [(&str, &Value, Option<&str>); 12] = [
        ("{}", &sr, None),
        ("false", &sr, None),
        ("status", &sr, None),
        ("contained.active", &sr, None),
        ("note", &sr, None),
        ("note.text = 'first'", &sr, None),
        ("category.exists() or status = 'active'", &sr, None),
        ("category.empty()", &sr, None),
        ("reference.startsWith('#')", subject, Some("Reference")),
        (
            "display.exists() or reference.exists()",
            subject,
            Some("Reference"),
        ),
        ("identifier.value", subject, Some("Reference")),
        ("nonesuch.exists()", subject, Some("Reference")),
    ];
    for (text, focus, focus_type) in cases {
        let expression = engine.compile(text).expect("compiles");
        let scope = Scope {
            resource: &sr,
            root_resource: None,
            bundle: None,
            focus,
            focus_type,
            environment: None,
        };
        // Twice: the second time the guard answers from what it kept.
        for round in 0..2 {
            let through_items = expression
                .evaluate_in(scope)
                .and_then(|c| c.to_boolean())
                .map_err(|e| e.to_string());
            let direct = expression
                .evaluate_boolean_in(scope)
                .map_err(|e| e.to_string());
            assert_eq!(direct, through_items, "{text} (round {round})");
        }
    }
}

#[test]
fn ele_1_on_elements() {
    let sr = referral();
    let ele1 = engine()
        .compile("hasValue() or (children().count() > id.count())")
        .expect("compiles");
    let check = |focus: &Value, ty: &str| {
        ele1.evaluate_in(Scope {
            resource: &sr,
            root_resource: None,
            bundle: None,
            focus,
            focus_type: Some(ty),
            environment: None,
        })
        .expect("evaluates")
        .as_boolean()
    };
    assert_eq!(check(&sr["subject"], "Reference"), Some(true));
    assert_eq!(
        check(&json!({"id": "x"}), "Reference"),
        Some(false),
        "only an id"
    );
    assert_eq!(check(&sr["status"], "code"), Some(true));
}

#[test]
fn every_r4_core_invariant_compiles() {
    let file: Value = serde_json::from_str(crate::fhir::definitions::R4_CORE).expect("JSON");
    let invariants = file["invariants"].as_object().expect("invariants map");
    assert!(invariants.len() > 200);
    let engine = engine();
    let failures: Vec<String> = invariants
        .iter()
        .filter_map(|(key, inv)| {
            let expression = inv["expression"].as_str().unwrap_or_default();
            engine
                .compile(expression)
                .err()
                .map(|e| format!("{key}: {e}"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "invariants that do not compile:\n{}",
        failures.join("\n")
    );
}

#[test]
fn engine_and_expressions_are_send_sync_and_need_no_runtime() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<FhirPath>();
    assert_send_sync::<Expression>();
    let e = engine().compile("1 + 1").expect("compiles");
    let handle = std::thread::spawn(move || {
        e.evaluate(&Value::Null, &Value::Null)
            .map(|c| c.items().to_vec())
    });
    assert_eq!(
        handle.join().expect("thread").expect("evaluates"),
        [Item::Integer(2)]
    );
}

#[test]
fn pathological_expressions_are_refused_not_overflowing() {
    for text in [
        "1".to_string() + &" + 1".repeat(100_000),
        "-".repeat(100_000) + "1",
        "(".repeat(100_000) + "1" + &")".repeat(100_000),
        "a".to_string() + &".b".repeat(100_000),
    ] {
        assert!(matches!(
            engine().compile(&text),
            Err(FhirPathError::Syntax { .. })
        ));
    }
    assert!(
        engine()
            .compile(&("1".to_string() + &" + 1".repeat(50)))
            .is_ok()
    );
}

#[test]
fn arithmetic_overflow_is_an_error_or_empty_never_a_panic() {
    let sr = referral();
    for text in [
        "9223372036854775807 + 1",
        "79228162514264337593543950335.0 * 10",
        "79228162514264337593543950335 'mg' * 10",
        "@2014-01-01 + 9223372036854775807 days",
        "@2014-01-01T10:00:00Z + 999999999999 'ms'",
        "0.0000000000000000000000000001.lowBoundary()",
    ] {
        let e = engine().compile(text).expect("compiles");
        let _ = e.evaluate(&sr, &sr);
    }
}

/// The R4 core invariants that apply to a ServiceRequest hold on the sample referral.
#[test]
fn service_request_invariants_hold_on_the_sample_referral() {
    let referral: Value =
        serde_json::from_str(include_str!("../../examples/referral-servicerequest.json"))
            .expect("JSON");
    let file: Value = serde_json::from_str(crate::fhir::definitions::R4_CORE).expect("JSON");
    let invariant = |key: &str| {
        let text = file["invariants"][key]["expression"]
            .as_str()
            .expect("invariant");
        engine().compile(text).expect("compiles")
    };
    for key in ["dom-2", "dom-3", "dom-4", "dom-5", "prr-1"] {
        let result = invariant(key).evaluate(&referral, &referral).expect(key);
        assert_eq!(result.as_boolean(), Some(true), "{key}");
    }
    // ele-1 on every top-level element, ref-1 on every Reference, with their types.
    let (ele1, ref1) = (invariant("ele-1"), invariant("ref-1"));
    let mut checked = 0;
    for name in referral.as_object().expect("object").keys() {
        let element = engine()
            .compile(&format!("ServiceRequest.{name}"))
            .expect("compiles");
        if name == "resourceType" {
            continue;
        }
        for item in element.evaluate(&referral, &referral).expect(name).items() {
            let Item::Element {
                value: focus,
                type_name,
            } = item
            else {
                panic!("{name} is an element");
            };
            let scope = Scope {
                resource: &referral,
                root_resource: None,
                bundle: None,
                focus,
                focus_type: type_name.as_deref(),
                environment: None,
            };
            assert_eq!(
                ele1.evaluate_in(scope).expect(name).as_boolean(),
                Some(true),
                "ele-1 {name}"
            );
            if type_name.as_deref() == Some("Reference") {
                assert_eq!(
                    ref1.evaluate_in(scope).expect(name).as_boolean(),
                    Some(true),
                    "ref-1 {name}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 5);
}

/// Bad input never panics: overflowing arithmetic is an error, and nesting is bounded so
/// that evaluation fits a 2 MiB thread stack even in a debug build.
#[test]
fn overflow_and_deep_nesting_are_errors_not_crashes() {
    let engine = engine();
    let patient = json!({"resourceType": "Patient"});
    for expression in [
        "(-9223372036854775807 - 1) mod -1",
        "7922816251426433759354395033.5 div 0.01",
        "1.5.round(4294967298)",
    ] {
        let compiled = engine.compile(expression).expect(expression);
        assert!(
            compiled.evaluate(&patient, &patient).is_err(),
            "{expression} should be an evaluation error"
        );
    }
    assert!(eval("@9999-12-31T23:00:00Z + 2 hours", &patient).is_empty());

    // 90 nested calls: accepted by the parser, more stack than a debug build has in
    // 2 MiB. On a thread with a async runtime worker's stack it ends in an answer, never a crash.
    let nested = (0..90).fold("0".to_owned(), |inner, _| format!("iif(true, {inner}, 1)"));
    let deep = engine.compile(&nested).expect("within the parser's limit");
    let result = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || {
            let patient = json!({"resourceType": "Patient"});
            deep.evaluate(&patient, &patient).map(|c| c.len())
        })
        .expect("thread")
        .join()
        .expect("no stack overflow");
    match result {
        Ok(items) => assert_eq!(items, 1),
        Err(error) => assert!(error.to_string().contains("nested too deeply"), "{error}"),
    }
}

#[test]
fn strict_compilation_refuses_unknown_functions_and_wrong_arity() {
    let engine = engine();
    // `compile` stays lenient: core invariants use functions the engine lacks.
    assert!(engine.compile("name.frobnicate()").is_ok());
    assert!(engine.compile("code.memberOf('http://x')").is_ok());

    let err = engine
        .compile_strict("name.where(use = 'official')\n  .frobnicate().given")
        .expect_err("unknown function");
    let FhirPathError::Function {
        position,
        line,
        column,
        name,
        message,
    } = err
    else {
        panic!("a function error, not {err:?}");
    };
    assert_eq!((position, line, column), (32, 2, 4));
    assert_eq!(name, "frobnicate");
    assert_eq!(message, "unknown function frobnicate()");

    let err = engine
        .compile_strict("name.first(1)")
        .expect_err("first() takes no argument");
    assert_eq!(
        err.to_string(),
        "FHIRPath function error at line 1, column 6: first() takes 0 arguments, not 1"
    );
    let err = engine
        .compile_strict("iif(true)")
        .expect_err("iif takes 2 or 3");
    assert!(
        err.to_string()
            .ends_with("iif() takes 2 or 3 arguments, not 1"),
        "{err}"
    );
    let err = engine
        .compile_strict("code.memberOf('http://x')")
        .expect_err("not supported");
    assert!(err.to_string().contains("terminology server"), "{err}");

    // Calls inside arguments and operands are checked too; the leftmost offender is named.
    let err = engine
        .compile_strict("a.where(b.nope()) | c.alsoNope()")
        .expect_err("nested");
    assert!(matches!(err, FhirPathError::Function { ref name, .. } if name == "nope"));

    // Everything the engine implements passes.
    for ok in [
        "name.where(use = 'official').given.join(' ')",
        "iif(a.exists(), a, b).substring(0, 2)",
        "value.ofType(integer).aggregate($this + $total, 0)",
        "telecom.sort(-rank, system).first().value",
        "%patient.identifier.where(system = 'x').value.single()",
    ] {
        let compiled = engine
            .compile_strict(ok)
            .unwrap_or_else(|e| panic!("{ok}: {e}"));
        assert!(compiled.check_functions().is_ok());
    }
}

#[test]
fn variables_lists_each_environment_variable_once() {
    let compiled = engine()
        .compile("%patient.name | %practice.name | %patient.birthDate | %resource.id")
        .expect("compiles");
    assert_eq!(
        compiled.variables(),
        ["patient", "practice", "resource"].map(String::from)
    );
}

/// The table the strict check uses accepts exactly the argument counts the evaluator does.
#[test]
fn the_function_table_agrees_with_the_evaluator_on_arity() {
    let engine = engine();
    for function in functions::FUNCTIONS {
        let (name, allowed) = (function.name, function.arities);
        for argc in 0..=4 {
            let arg = if matches!(name, "is" | "as" | "ofType") {
                "Patient"
            } else {
                "1"
            };
            let args = vec![arg; argc].join(", ");
            let text = format!("{{}}.{name}({args})");
            let result = engine
                .compile(&text)
                .expect("parses")
                .evaluate(&Value::Null, &Value::Null);
            let refused_for_arity = matches!(
                &result,
                Err(FhirPathError::Evaluation { message }) if message.contains("arguments, not")
            );
            let unknown = matches!(
                &result,
                Err(FhirPathError::Evaluation { message }) if message.contains("unknown function")
            );
            assert!(!unknown, "{text}: the evaluator does not know {name}()");
            assert_eq!(
                refused_for_arity,
                !allowed.contains(&argc),
                "{text}: table says {allowed:?}, evaluator answered {result:?}"
            );
            let strict = engine.compile_strict(&text);
            assert_eq!(strict.is_err(), !allowed.contains(&argc), "{text}");
        }
    }
}

/// One row per name, found by that name, with its argument counts in order; no function is
/// both implemented and listed as unsupported.
#[test]
fn the_function_table_has_one_row_per_name() {
    let mut names = std::collections::HashSet::new();
    for function in functions::FUNCTIONS {
        let name = function.name;
        assert!(names.insert(name), "{name}() has two rows");
        let found = functions::lookup(name).expect("found by name");
        assert!(std::ptr::eq(found, function), "{name}() finds another row");
        assert!(
            !function.arities.is_empty() && function.arities.is_sorted(),
            "{name}(): arities {:?}",
            function.arities
        );
        assert!(
            !functions::UNSUPPORTED.iter().any(|(n, _)| *n == name),
            "{name}() is both implemented and unsupported"
        );
    }
    for (name, _) in functions::UNSUPPORTED {
        let FhirPathError::Evaluation { message } = functions::not_implemented(name) else {
            panic!("an evaluation error");
        };
        assert!(!message.contains("unknown"), "{name}(): {message}");
    }
}

/// The roles the guard and the memo plan read of a call ([`functions::roles`]) are the
/// table's, for every function and argument count, after the target's; a function the table
/// lacks has only `Same` parts.
#[test]
fn call_roles_are_the_function_table_roles() {
    use functions::Role;
    for function in functions::FUNCTIONS {
        let name = function.name;
        for argc in 0..=4 {
            let args = vec!["x"; argc].join(", ");
            for (text, target) in [
                (format!("a.{name}({args})"), true),
                (format!("{name}({args})"), false),
            ] {
                let expr = parser::parse(&text).expect("parses");
                let expected: Vec<Role> = target
                    .then_some(Role::Same)
                    .into_iter()
                    .chain((0..argc).map(|i| function.role(i)))
                    .collect();
                assert_eq!(functions::roles(&expr), expected, "{text}");
            }
        }
    }
    let unknown = parser::parse("a.frobnicate(x, y)").expect("parses");
    assert_eq!(functions::roles(&unknown), [Role::Same; 3]);
}

/// Implementations read their arguments through methods named for a role, which assert (in
/// debug builds, as tests run) that the table gives the argument that role. Evaluating every
/// function, with every argument count it accepts, on inputs and arguments of many kinds
/// makes each read its arguments, so an implementation that disagrees with the table (and
/// would mislead the guard and the memo plan) fails here.
#[test]
fn functions_read_their_arguments_in_the_roles_the_table_gives() {
    let engine = engine();
    let resource = referral();
    let inputs = [
        "{}",
        "'abc'",
        "1",
        "2.5",
        "(1 | 2)",
        "true",
        "@2024-01-01",
        "@2024-01-01T10:00:00Z",
        "@T10:00",
        "1 'mg'",
        "subject",
        "%resource",
    ];
    for function in functions::FUNCTIONS {
        let name = function.name;
        let arguments: &[&str] = if matches!(name, "is" | "as" | "ofType") {
            &["String", "Reference"]
        } else {
            &["1", "'a'", "true", "$this", "-$this", "'hex'", "1 'mg'"]
        };
        for &argc in function.arities {
            for input in inputs {
                for arg in arguments {
                    let args = vec![*arg; argc].join(", ");
                    let text = format!("{input}.{name}({args})");
                    // Errors are answers too: only a failed assertion matters.
                    let _ = engine
                        .compile(&text)
                        .expect("parses")
                        .evaluate(&resource, &resource);
                }
            }
        }
    }
}

/// Every invariant expression of the R4 core and of Sprig's profiles.
fn shipped_invariants() -> Vec<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut expressions = Vec::new();
    for file in ["profiles/core/r4-core.json", "profiles/compiled/sprig.json"] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).expect("definitions");
        let definitions: Value = serde_json::from_str(&text).expect("JSON");
        for invariant in definitions["invariants"]
            .as_object()
            .expect("invariants")
            .values()
        {
            if let Some(expression) = invariant["expression"].as_str() {
                expressions.push(expression.to_owned());
            }
        }
    }
    expressions
}

/// The JSON documents of `folders` (relative to the crate).
fn documents_in(folders: &[&str]) -> Vec<Value> {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut documents = Vec::new();
    for folder in folders {
        for entry in std::fs::read_dir(format!("{root}/{folder}")).expect("folder") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read_to_string(&path).expect("document");
                documents.push(serde_json::from_str::<Value>(&text).expect("JSON"));
            }
        }
    }
    documents
}

/// Every JSON object in `documents`, nested ones included.
fn objects_of(documents: &[Value]) -> Vec<&Value> {
    fn objects_in<'v>(value: &'v Value, out: &mut Vec<&'v Value>) {
        match value {
            Value::Object(map) => {
                out.push(value);
                map.values().for_each(|v| objects_in(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| objects_in(v, out)),
            _ => {}
        }
    }
    let mut objects = Vec::new();
    for document in documents {
        objects_in(document, &mut objects);
    }
    objects
}

/// The focus and resource both `object`, untyped unless it has a `resourceType`.
fn scope_of(object: &Value) -> Scope<'_> {
    Scope {
        resource: object,
        root_resource: None,
        bundle: None,
        focus: object,
        focus_type: None,
        environment: None,
    }
}

/// A result with its error as text, so two evaluations' results compare.
fn comparable(result: Result<Collection, FhirPathError>) -> Result<Collection, String> {
    result.map_err(|e| e.to_string())
}

/// The absent-element shortcut (`guard`) gives what a full evaluation gives: every invariant
/// of the R4 core and of Sprig's profiles, on every JSON object of the shipped examples (each
/// resource typed by its `resourceType`, other objects untyped), both ways.
#[test]
fn the_absent_element_shortcut_agrees_with_full_evaluation() {
    let expressions = shipped_invariants();
    let documents = documents_in(&["examples"]);
    let objects = objects_of(&documents);
    let engine = engine();
    let (mut guarded, mut shortcut_taken) = (0, 0);
    for text in &expressions {
        let expression = engine.compile(text).expect("compiles");
        let Some(guard) = &expression.inner.guard else {
            continue;
        };
        guarded += 1;
        for &object in &objects {
            assert_eq!(
                comparable(expression.evaluate_in(scope_of(object))),
                comparable(expression.evaluate_unguarded(scope_of(object))),
                "{text} on {object}"
            );
            if object.as_object().is_some_and(|o| guard.absent_from(o)) {
                shortcut_taken += 1;
            }
        }
    }
    // Most invariants qualify, and the shortcut was really exercised.
    assert!(
        guarded * 2 > expressions.len(),
        "{guarded} of {}",
        expressions.len()
    );
    assert!(shortcut_taken > 1000, "{shortcut_taken}");
}

/// Parts computed once per evaluation (`memo`) give what computing them each time gives:
/// every invariant on every object of the examples and of Sprig's published definitions
/// (StructureDefinitions, ValueSets and CodeSystems, where the R4 core's heaviest
/// invariants apply).
#[test]
fn kept_parts_agree_with_evaluating_them_each_time() {
    let expressions = shipped_invariants();
    let documents = documents_in(&["examples", "profiles/published"]);
    let objects = objects_of(&documents);
    let engine = engine();
    let mut planned = 0;
    for text in &expressions {
        let kept = engine.compile(text).expect("compiles");
        if kept.inner.memo_slots == 0 {
            continue;
        }
        planned += 1;
        let each_time = engine.compile_planned(text, false).expect("compiles");
        for &object in &objects {
            assert_eq!(
                comparable(kept.evaluate_unguarded(scope_of(object))),
                comparable(each_time.evaluate_unguarded(scope_of(object))),
                "{text} on {object}"
            );
        }
    }
    // sdf-8, sdf-8a, sdf-9, dom-3 and others have parts worth keeping.
    assert!(planned >= 4, "{planned}");
}

/// `resolve()` follows `fhir::reference`'s one rule, within the Bundle the resource is an
/// entry of: the reference, and the entry (by its id) or nothing it resolves to.
#[test]
fn resolve_follows_the_one_reference_rule_within_the_bundle() {
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:9b1a4f6e-0000-4000-8000-000000000001",
         "resource": {"resourceType": "ServiceRequest", "id": "sr",
                      "contained": [{"resourceType": "Patient", "id": "p1"}]}},
        {"fullUrl": "urn:uuid:9b1a4f6e-0000-4000-8000-000000000002",
         "resource": {"resourceType": "Consent", "id": "consent"}},
        {"fullUrl": "https://gp.example/fhir/PractitionerRole/r1",
         "resource": {"resourceType": "PractitionerRole", "id": "r1"}},
        {"resource": {"resourceType": "Organization", "id": "org", "meta": {"versionId": "2"}}},
        {"fullUrl": "https://a.example/fhir/Patient/twice",
         "resource": {"resourceType": "Patient", "id": "twice"}},
        {"fullUrl": "https://b.example/fhir/Patient/twice",
         "resource": {"resourceType": "Patient", "id": "twice"}},
    ]});
    let referral = &bundle["entry"][0]["resource"];
    let resolved = |reference: &str| -> Value {
        let focus = json!({"reference": reference});
        let e = engine().compile("$this.resolve().id").expect("compiles");
        let index = crate::fhir::reference::BundleIndex::new(&bundle);
        e.evaluate_in(Scope {
            resource: referral,
            root_resource: None,
            bundle: Some(&index),
            focus: &focus,
            focus_type: Some("Reference"),
            environment: None,
        })
        .expect("evaluates")
        .to_json()
    };
    for (reference, expected) in [
        ("#p1", json!(["p1"])),
        ("#", json!(["sr"])),
        ("#nobody", json!([])),
        (
            "urn:uuid:9b1a4f6e-0000-4000-8000-000000000002",
            json!(["consent"]),
        ),
        ("urn:uuid:9b1a4f6e-0000-4000-8000-00000000ffff", json!([])),
        ("PractitionerRole/r1", json!(["r1"])),
        ("https://gp.example/fhir/PractitionerRole/r1", json!(["r1"])),
        ("Organization/org", json!(["org"])),
        ("Organization/org/_history/2", json!(["org"])),
        ("Organization/org/_history/1", json!([])),
        ("Patient/twice", json!([])),
        ("https://elsewhere.example/fhir/Patient/p9", json!([])),
        ("Patient?identifier=x|1", json!([])),
    ] {
        assert_eq!(resolved(reference), expected, "{reference}");
    }
    // Without a Bundle, only the contained resources are found.
    let e = engine().compile("subject.resolve().id").expect("compiles");
    let mut alone = referral.clone();
    alone["subject"] = json!({"reference": "#p1"});
    assert_eq!(
        e.evaluate(&alone, &alone).expect("evaluates").to_json(),
        json!(["p1"])
    );
    alone["subject"] = json!({"reference": "Consent/consent"});
    assert_eq!(
        e.evaluate(&alone, &alone).expect("evaluates").to_json(),
        json!([])
    );
}

/// Dates and times of different precisions (FHIRPath §6.2 "Comparison"): compared precision by
/// precision as far as both go; where that decides, that is the answer, and where they agree
/// that far, the answer is unknown (empty). Seconds and milliseconds are one precision. This is
/// what lets `per-1` run as written on partial dates.
#[test]
fn dates_of_different_precisions_compare_as_far_as_they_share() {
    let sr = referral();
    for (expression, expected) in [
        ("@2020-05 <= @2020-04-30", json!([false])),
        ("@2020-05 > @2020-04-30", json!([true])),
        ("@2020-04 <= @2020-04-30", json!([])),
        ("@2020-04-01 <= @2020-05", json!([true])),
        ("@2021 <= @2020-12-31T10:00:00Z", json!([false])),
        ("@2020-12-31T10:00:00Z <= @2020", json!([])),
        (
            "@2020-01-01T10:00:00.000Z <= @2020-01-01T10:00:00Z",
            json!([true]),
        ),
        ("@2020-01-01T10:00Z < @2020-01-01T10:00:30Z", json!([])),
        ("@2020-01-01T09:59Z < @2020-01-01T10:00:30Z", json!([true])),
    ] {
        assert_eq!(eval(expression, &sr).to_json(), expected, "{expression}");
    }
    // per-1 on a Period as the profile walk evaluates a datatype's root invariant.
    let per_1 = engine()
        .compile("start.hasValue().not() or end.hasValue().not() or (start <= end)")
        .expect("compiles");
    let holds = |start: &str, end: &str| {
        let period = json!({"start": start, "end": end});
        per_1
            .evaluate_boolean_in(Scope {
                resource: &sr,
                root_resource: None,
                bundle: None,
                focus: &period,
                focus_type: Some("Period"),
                environment: None,
            })
            .expect("evaluates")
    };
    assert_eq!(holds("2020-05", "2020-04-30"), Some(false));
    assert_eq!(holds("2020-04", "2020-04-30"), None, "unknown: holds");
    assert_eq!(holds("2020-04-01", "2020-05"), Some(true));
    assert_eq!(
        holds("2020-01-02T00:30:00+14:00", "2020-01-01T20:00:00Z"),
        Some(true)
    );
    assert_eq!(
        holds("2020-01-01T21:00:00Z", "2020-01-01T20:00:00Z"),
        Some(false)
    );
}
