//! Unit tests of assert evaluation: each TestScript assert kind, passing and failing.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::*;
use crate::conformance::script::Assert;

fn exchange(status: u16, headers: &[(&str, &str)], body: Value) -> Exchange {
    Exchange {
        method: "POST".into(),
        url: "http://server/fhir/ServiceRequest?x=1".into(),
        request_headers: vec![("content-type".into(), "application/fhir+json".into())],
        request_body: Some(json!({"resourceType": "ServiceRequest", "status": "active"})),
        response: Some(Response {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            body: Some(body),
        }),
    }
}

struct Fixed(ProfileOutcome);

impl ProfileCheck for Fixed {
    fn check(&self, _: &Value, _: &str) -> ProfileOutcome {
        self.0.clone()
    }
}

fn run(assert: Assert, last: &Exchange) -> Verdict {
    run_with(assert, last, &HashMap::new(), None)
}

fn run_with(
    assert: Assert,
    last: &Exchange,
    fixtures: &HashMap<String, Value>,
    validator: Option<&dyn ProfileCheck>,
) -> Verdict {
    let engine = FhirPath::new().expect("engine");
    let exchanges: HashMap<String, Arc<Exchange>> =
        HashMap::from([("first".to_owned(), Arc::new(last.clone()))]);
    let profiles = vec![("p".to_owned(), "http://example.org/p".to_owned())];
    evaluate(
        &assert,
        &Sources {
            fixtures,
            exchanges: &exchanges,
            last: Some(last),
        },
        &Tools {
            fhirpath: &engine,
            profiles: &profiles,
            validator,
        },
    )
}

fn created() -> Exchange {
    exchange(
        201,
        &[
            ("Content-Type", "application/fhir+json; charset=utf-8"),
            ("ETag", "W/\"1\""),
            (
                "Location",
                "http://server/fhir/ServiceRequest/abc/_history/1",
            ),
        ],
        json!({"resourceType": "ServiceRequest", "id": "abc", "status": "active",
               "identifier": [{"system": "s", "value": "v1"}, {"system": "t", "value": "v2"}],
               "note": [{"text": "a"}, {"text": "b"}]}),
    )
}

fn strs(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| (*v).to_owned()).collect()
}

#[test]
fn every_operator_over_values() {
    let one = strs(&["5"]);
    let two = strs(&["a", "b"]);
    let none: Vec<String> = Vec::new();
    assert!(operator_holds(Operator::Equals, &one, "5").unwrap());
    assert!(!operator_holds(Operator::Equals, &none, "5").unwrap());
    assert!(!operator_holds(Operator::Equals, &two, "a").unwrap());
    assert!(operator_holds(Operator::NotEquals, &one, "6").unwrap());
    assert!(operator_holds(Operator::NotEquals, &none, "6").unwrap());
    assert!(operator_holds(Operator::In, &two, "a, b,c").unwrap());
    assert!(!operator_holds(Operator::In, &two, "a").unwrap());
    assert!(!operator_holds(Operator::In, &none, "a").unwrap());
    assert!(operator_holds(Operator::NotIn, &two, "c,d").unwrap());
    assert!(!operator_holds(Operator::NotIn, &two, "b").unwrap());
    assert!(
        operator_holds(Operator::GreaterThan, &strs(&["10"]), "9").unwrap(),
        "numbers, not text"
    );
    assert!(!operator_holds(Operator::GreaterThan, &strs(&["10"]), "10").unwrap());
    assert!(operator_holds(Operator::LessThan, &strs(&["2026-01-01"]), "2026-02-01").unwrap());
    assert!(operator_holds(Operator::LessThan, &strs(&["1.5"]), "1.50001").unwrap());
    assert!(operator_holds(Operator::Empty, &none, "").unwrap());
    assert!(!operator_holds(Operator::Empty, &one, "").unwrap());
    assert!(operator_holds(Operator::NotEmpty, &one, "").unwrap());
    assert!(operator_holds(Operator::Contains, &strs(&["W/\"12\""]), "12").unwrap());
    assert!(!operator_holds(Operator::Contains, &none, "x").unwrap());
    assert!(operator_holds(Operator::NotContains, &two, "z").unwrap());
    assert!(!operator_holds(Operator::NotContains, &two, "a").unwrap());
    assert!(operator_holds(Operator::Eval, &one, "").is_err());
}

#[test]
fn response_and_response_code() {
    let last = created();
    let pass = |a: Assert| assert!(matches!(run(a, &last), Verdict::Pass(_)));
    let fail = |a: Assert| assert!(matches!(run(a, &last), Verdict::Fail(_)));
    pass(Assert {
        response: Some("created".into()),
        ..Assert::default()
    });
    fail(Assert {
        response: Some("okay".into()),
        ..Assert::default()
    });
    pass(Assert {
        response: Some("okay".into()),
        operator: Some(Operator::NotEquals),
        ..Assert::default()
    });
    pass(Assert {
        response_code: Some("201".into()),
        ..Assert::default()
    });
    pass(Assert {
        response_code: Some("200,201".into()),
        operator: Some(Operator::In),
        ..Assert::default()
    });
    fail(Assert {
        response_code: Some("200".into()),
        ..Assert::default()
    });
    pass(Assert {
        response_code: Some("300".into()),
        operator: Some(Operator::LessThan),
        ..Assert::default()
    });
}

#[test]
fn warning_only_turns_a_failure_into_a_warning() {
    let verdict = run(
        Assert {
            response: Some("okay".into()),
            warning_only: true,
            ..Assert::default()
        },
        &created(),
    );
    assert!(matches!(verdict, Verdict::Warning(_)), "{verdict:?}");
    assert!(!verdict.is_failure());
}

#[test]
fn content_type_and_headers() {
    let last = created();
    let verdict = |a: Assert| run(a, &last);
    assert!(matches!(
        verdict(Assert {
            content_type: Some("json".into()),
            ..Assert::default()
        }),
        Verdict::Pass(_)
    ));
    assert!(matches!(
        verdict(Assert {
            content_type: Some("xml".into()),
            ..Assert::default()
        }),
        Verdict::Fail(_)
    ));
    assert!(matches!(
        verdict(Assert {
            content_type: Some("application/fhir+json".into()),
            ..Assert::default()
        }),
        Verdict::Pass(_)
    ));
    assert!(matches!(
        verdict(Assert {
            header_field: Some("etag".into()),
            value: Some("W/\"1\"".into()),
            ..Assert::default()
        }),
        Verdict::Pass(_)
    ));
    assert!(
        matches!(
            verdict(Assert {
                header_field: Some("Last-Modified".into()),
                ..Assert::default()
            }),
            Verdict::Fail(_)
        ),
        "absent header"
    );
    assert!(matches!(
        verdict(Assert {
            header_field: Some("Last-Modified".into()),
            operator: Some(Operator::Empty),
            ..Assert::default()
        }),
        Verdict::Pass(_)
    ));
    assert!(matches!(
        verdict(Assert {
            header_field: Some("Location".into()),
            operator: Some(Operator::Contains),
            value: Some("/ServiceRequest/".into()),
            ..Assert::default()
        }),
        Verdict::Pass(_)
    ));
    assert!(matches!(
        verdict(Assert {
            header_field: Some("content-type".into()),
            direction: Direction::Request,
            value: Some("application/fhir+json".into()),
            ..Assert::default()
        }),
        Verdict::Pass(_)
    ));
}

#[test]
fn resource_request_url_and_method() {
    let last = created();
    assert!(matches!(
        run(
            Assert {
                resource: Some("ServiceRequest".into()),
                ..Assert::default()
            },
            &last
        ),
        Verdict::Pass(_)
    ));
    assert!(matches!(
        run(
            Assert {
                resource: Some("Patient".into()),
                ..Assert::default()
            },
            &last
        ),
        Verdict::Fail(_)
    ));
    assert!(matches!(
        run(
            Assert {
                request_url: Some("x=1".into()),
                operator: Some(Operator::Contains),
                ..Assert::default()
            },
            &last
        ),
        Verdict::Pass(_)
    ));
    assert!(matches!(
        run(
            Assert {
                request_method: Some("post".into()),
                ..Assert::default()
            },
            &last
        ),
        Verdict::Pass(_)
    ));
    assert!(matches!(
        run(
            Assert {
                request_method: Some("get".into()),
                ..Assert::default()
            },
            &last
        ),
        Verdict::Fail(_)
    ));
}

#[test]
fn fhirpath_expressions_with_and_without_values() {
    let last = created();
    let verdict = |expression: &str, operator: Option<Operator>, value: Option<&str>| {
        run(
            Assert {
                expression: Some(expression.into()),
                operator,
                value: value.map(str::to_owned),
                ..Assert::default()
            },
            &last,
        )
    };
    assert!(matches!(
        verdict("status = 'active'", None, None),
        Verdict::Pass(_)
    ));
    assert!(matches!(
        verdict("status = 'revoked'", None, None),
        Verdict::Fail(_)
    ));
    assert!(matches!(
        verdict("status = 'active'", Some(Operator::Eval), Some("ignored")),
        Verdict::Pass(_)
    ));
    assert!(matches!(
        verdict("status", None, Some("active")),
        Verdict::Pass(_)
    ));
    assert!(matches!(
        verdict("identifier.value", Some(Operator::Contains), Some("v2")),
        Verdict::Pass(_)
    ));
    assert!(
        matches!(
            verdict("identifier.value", None, Some("v1")),
            Verdict::Fail(_)
        ),
        "two values, not all v1"
    );
    assert!(matches!(
        verdict("note.count()", Some(Operator::GreaterThan), Some("1")),
        Verdict::Pass(_)
    ));
    assert!(matches!(
        verdict("note.count()", Some(Operator::LessThan), Some("2")),
        Verdict::Fail(_)
    ));
    assert!(matches!(
        verdict("subject", Some(Operator::Empty), None),
        Verdict::Pass(_)
    ));
    assert!(matches!(
        verdict("identifier", Some(Operator::NotEmpty), None),
        Verdict::Pass(_)
    ));
    assert!(matches!(
        verdict("identifier.system", Some(Operator::In), Some("s,t")),
        Verdict::Pass(_)
    ));
    assert!(matches!(
        verdict("identifier.system", Some(Operator::NotIn), Some("t")),
        Verdict::Fail(_)
    ));
    // An element the model does not know is an evaluation error, reported as such.
    assert!(matches!(
        verdict("nonsense.here", None, None),
        Verdict::Error(_)
    ));
    assert!(matches!(
        verdict("status = ", None, None),
        Verdict::Error(_)
    ));
}

#[test]
fn compare_to_source_and_minimum_id() {
    let last = created();
    let fixtures = HashMap::from([
        (
            "min".to_owned(),
            json!({"resourceType": "ServiceRequest", "id": "other", "identifier": [{"value": "v2"}]}),
        ),
        (
            "more".to_owned(),
            json!({"resourceType": "ServiceRequest", "identifier": [{"value": "v3"}]}),
        ),
    ]);
    let verdict = |a: Assert| run_with(a, &last, &fixtures, None);
    assert!(matches!(
        verdict(Assert {
            expression: Some("id".into()),
            compare_to_source_id: Some("first".into()),
            compare_to_source_expression: Some("id".into()),
            ..Assert::default()
        }),
        Verdict::Pass(_)
    ));
    assert!(matches!(
        verdict(Assert {
            expression: Some("id".into()),
            compare_to_source_id: Some("min".into()),
            compare_to_source_expression: Some("id".into()),
            ..Assert::default()
        }),
        Verdict::Fail(_)
    ));
    assert!(matches!(
        verdict(Assert {
            expression: Some("id".into()),
            compare_to_source_id: Some("min".into()),
            compare_to_source_expression: Some("id".into()),
            operator: Some(Operator::NotEquals),
            ..Assert::default()
        }),
        Verdict::Pass(_)
    ));
    assert!(matches!(
        verdict(Assert {
            compare_to_source_id: Some("first".into()),
            compare_to_source_expression: Some("status".into()),
            ..Assert::default()
        }),
        Verdict::Pass(_)
    ));
    assert!(
        matches!(
            verdict(Assert {
                minimum_id: Some("min".into()),
                ..Assert::default()
            }),
            Verdict::Pass(_)
        ),
        "id and meta are the server's"
    );
    assert!(matches!(
        verdict(Assert {
            minimum_id: Some("more".into()),
            ..Assert::default()
        }),
        Verdict::Fail(_)
    ));
    // minimumId is not symmetric: the fixture does not hold everything in the response.
    assert!(matches!(
        verdict(Assert {
            minimum_id: Some("first".into()),
            source_id: Some("min".into()),
            ..Assert::default()
        }),
        Verdict::Fail(_)
    ));
    assert!(
        matches!(
            verdict(Assert {
                minimum_id: Some("min".into()),
                source_id: Some("min".into()),
                ..Assert::default()
            }),
            Verdict::Pass(_)
        ),
        "reflexive"
    );
}

#[test]
fn profiles_are_checked_or_the_assert_is_skipped() {
    let last = created();
    let none = HashMap::new();
    let assert = || Assert {
        validate_profile_id: Some("p".into()),
        ..Assert::default()
    };
    assert!(matches!(
        run_with(assert(), &last, &none, Some(&Fixed(ProfileOutcome::Valid))),
        Verdict::Pass(_)
    ));
    let invalid = Fixed(ProfileOutcome::Invalid(vec![
        "ServiceRequest.code: missing".into(),
    ]));
    let verdict = run_with(assert(), &last, &none, Some(&invalid));
    assert!(
        matches!(&verdict, Verdict::Fail(m) if m.contains("ServiceRequest.code")),
        "{verdict:?}"
    );
    let not_held = Fixed(ProfileOutcome::NotHeld("not held".into()));
    assert!(matches!(
        run_with(assert(), &last, &none, Some(&not_held)),
        Verdict::Skip(_)
    ));
    assert!(matches!(
        run_with(assert(), &last, &none, None),
        Verdict::Skip(_)
    ));
}

#[test]
fn sprigs_validator_checks_profiles() {
    let validator = crate::conformance::load_validator().expect("validator");
    let task: Value =
        serde_json::from_str(include_str!("../../../examples/task-accepted.json")).expect("JSON");
    assert_eq!(
        validator.check(&task, crate::validation::TASK_PROFILE),
        ProfileOutcome::Valid
    );
    let mut broken = task.clone();
    broken["status"] = json!("not-a-status");
    assert!(matches!(
        validator.check(&broken, crate::validation::TASK_PROFILE),
        ProfileOutcome::Invalid(_)
    ));
    assert!(matches!(
        validator.check(&task, "http://example.org/unheld"),
        ProfileOutcome::NotHeld(_)
    ));
}

#[test]
fn unsupported_and_missing_sources_never_pass() {
    let last = created();
    let verdict = run(
        Assert {
            path: Some("fhir:Patient".into()),
            unsupported: Some("path".into()),
            ..Assert::default()
        },
        &last,
    );
    assert!(matches!(verdict, Verdict::Skip(_)));
    let mut failed = created();
    failed.response = None;
    let verdict = run(
        Assert {
            response: Some("okay".into()),
            ..Assert::default()
        },
        &failed,
    );
    assert!(matches!(verdict, Verdict::Error(_)), "{verdict:?}");
    let verdict = run(
        Assert {
            resource: Some("Patient".into()),
            source_id: Some("unknown".into()),
            ..Assert::default()
        },
        &last,
    );
    assert!(matches!(verdict, Verdict::Error(_)));
}
