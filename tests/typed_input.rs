//! Property test of the typed-input invariant (tests/typed_input/invariant.rs; the `judge_body`
//! fuzz target checks the same one on arbitrary bytes).
//!
//! Generates BatchUpdateFindings, BatchUpdateFindingsV2 and UpdateFindings bodies as raw JSON
//! text: a random subset of the members, in random order, with values from their valid domains,
//! now and then an out-of-range integer, and integers written in forms JSON Schema calls integers
//! but the typed request must refuse (`N.0`, `NeM`, `-0`). Each body runs through strict parse +
//! schema, typed read and normalise. A body is accepted exactly when every integer is a plain
//! in-range literal (and Severity.Label agrees with Severity.Normalized), and an accepted body
//! satisfies the invariant: every member present is a field of `input.update`, no field carries
//! a null fact, and copied facts hold the body's values.

#[path = "typed_input/invariant.rs"]
mod invariant;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use hubgate::policy::input::label_for_normalized;
use hubgate::request::Judged;
use hubgate::validate::Schemas;
use proptest::prelude::*;

use invariant::{judge_front, Outcome};

fn schemas() -> &'static Schemas {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/schemas");
        let ops = [
            Judged::BatchUpdateFindings,
            Judged::BatchUpdateFindingsV2,
            Judged::UpdateFindings,
        ]
        .map(Judged::name);
        Schemas::load(&dir, &ops).expect("the shipped schemas load")
    })
}

/// How an integer is written in the JSON text.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Form {
    Plain,
    /// `N.0`
    Fraction,
    /// `N.000`
    Zeros,
    /// `Ne0`
    Exponent,
    /// `NE+0`
    ExponentUpper,
    /// `Me1` for N = 10M, `0e1` for 0 (`00e-1` is not JSON), else `N0e-1`
    Scaled,
    /// `-0`, whatever N is
    NegZero,
    /// `-0.0`
    NegZeroFraction,
}

/// An integer member's value as written.
#[derive(Debug, Clone)]
struct Int {
    n: i64,
    form: Form,
    in_domain: bool,
}

impl Int {
    fn text(&self) -> String {
        let n = self.n;
        match self.form {
            Form::Plain => n.to_string(),
            Form::Fraction => format!("{n}.0"),
            Form::Zeros => format!("{n}.000"),
            Form::Exponent => format!("{n}e0"),
            Form::ExponentUpper => format!("{n}E+0"),
            Form::Scaled if n != 0 && n % 10 == 0 => format!("{}e1", n / 10),
            Form::Scaled if n == 0 => "0e1".into(),
            Form::Scaled => format!("{n}0e-1"),
            Form::NegZero => "-0".into(),
            Form::NegZeroFraction => "-0.0".into(),
        }
    }

    /// Would be accepted on its own: a plain literal in the member's domain.
    fn acceptable(&self) -> bool {
        self.form == Form::Plain && self.in_domain
    }
}

fn form() -> impl Strategy<Value = Form> {
    prop_oneof![
        12 => Just(Form::Plain),
        1 => Just(Form::Fraction),
        1 => Just(Form::Zeros),
        1 => Just(Form::Exponent),
        1 => Just(Form::ExponentUpper),
        1 => Just(Form::Scaled),
        1 => Just(Form::NegZero),
        1 => Just(Form::NegZeroFraction),
    ]
}

fn non_plain_form() -> impl Strategy<Value = Form> {
    form().prop_filter("not plain", |f| *f != Form::Plain)
}

/// An integer from `domain`, now and then one of `outside`, in any form.
fn int(domain: impl Strategy<Value = i64>, outside: &'static [i64]) -> impl Strategy<Value = Int> {
    let value = prop_oneof![
        15 => domain.prop_map(|n| (n, true)),
        1 => prop::sample::select(outside).prop_map(|n| (n, false)),
    ];
    (value, form()).prop_map(|((n, in_domain), form)| Int { n, form, in_domain })
}

fn ratio_scale() -> impl Strategy<Value = Int> {
    int(0i64..=100, &[-1, 101, 1000])
}

static OCSF_IDS: [i64; 8] = [0, 1, 2, 3, 4, 5, 6, 99];

fn ocsf_id() -> impl Strategy<Value = Int> {
    int(prop::sample::select(&OCSF_IDS[..]), &[-1, 7, 98, 100])
}

/// A JSON string literal for a NonEmptyString (at least one non-whitespace character).
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9][A-Za-z0-9 ._:/-]{0,15}",
        "[ ]{0,2}[a-z]\\PC{0,12}",
    ]
    .prop_map(|s| json_str(&s))
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

fn object(members: &[(String, String)]) -> String {
    let inner: Vec<String> = members
        .iter()
        .map(|(k, v)| format!("{}:{v}", json_str(k)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn array(items: &[String]) -> String {
    format!("[{}]", items.join(","))
}

/// Members in random order.
fn body(members: Vec<(&'static str, String)>) -> impl Strategy<Value = String> {
    let members: Vec<(String, String)> = members
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    Just(members).prop_shuffle().prop_map(|m| object(&m))
}

static LABELS: [&str; 5] = ["INFORMATIONAL", "LOW", "MEDIUM", "HIGH", "CRITICAL"];
static TYPES: [&str; 5] = [
    "Software and Configuration Checks/Vulnerabilities/CVE",
    "TTPs/Initial Access",
    "Effects",
    "Unusual Behaviors/User/Login",
    "Sensitive Data Identifications/PII",
];

/// A JSON string literal for an identifier's ProductArn: 12 to 2048 characters, as a finding's
/// (the schema refuses any other).
fn product_arn() -> impl Strategy<Value = String> {
    "arn:aws:securityhub:[a-z0-9-]{0,12}:[0-9]{0,12}:product/[a-z0-9/_-]{1,20}"
        .prop_map(|s| json_str(&s))
}

fn identifiers() -> impl Strategy<Value = String> {
    prop::collection::vec((text(), product_arn()), 1..4).prop_map(|ids| {
        let items: Vec<String> = ids
            .into_iter()
            .map(|(id, arn)| format!(r#"{{"Id":{id},"ProductArn":{arn}}}"#))
            .collect();
        array(&items)
    })
}

fn note() -> impl Strategy<Value = String> {
    (text(), text()).prop_map(|(t, by)| format!(r#"{{"Text":{t},"UpdatedBy":{by}}}"#))
}

/// How Severity.Label relates to Severity.Normalized.
#[derive(Debug, Clone, Copy)]
enum LabelChoice {
    Absent,
    Derived,
    Any(usize),
}

/// Severity: (JSON, whether its Label and Normalized agree), at least one member.
fn severity() -> impl Strategy<Value = (String, Vec<Int>, bool)> {
    let label = prop_oneof![
        Just(LabelChoice::Absent),
        Just(LabelChoice::Derived),
        (0..LABELS.len()).prop_map(LabelChoice::Any),
    ];
    let product = prop_oneof![-1.0e6f64..1.0e6, (-100i64..=100).prop_map(|n| n as f64),];
    (
        label,
        prop::option::of(ratio_scale()),
        prop::option::of(product),
    )
        .prop_filter("Severity has at least one member", |(l, n, p)| {
            !matches!(l, LabelChoice::Absent) || n.is_some() || p.is_some()
        })
        .prop_flat_map(|(label, normalized, product)| {
            let derived = normalized.as_ref().and_then(|i| label_for_normalized(i.n));
            let label = match label {
                LabelChoice::Absent => None,
                // Derived from an out-of-range Normalized: any label (refused anyway).
                LabelChoice::Derived => Some(derived.unwrap_or(LABELS[0])),
                LabelChoice::Any(i) => Some(LABELS[i]),
            };
            let agree = match (label, &normalized) {
                (Some(l), Some(i)) if i.acceptable() => Some(l) == derived,
                _ => true,
            };
            let mut members = Vec::new();
            if let Some(l) = label {
                members.push(("Label", json_str(l)));
            }
            if let Some(i) = &normalized {
                members.push(("Normalized", i.text()));
            }
            if let Some(p) = product {
                members.push(("Product", p.to_string()));
            }
            let ints: Vec<Int> = normalized.into_iter().collect();
            body(members).prop_map(move |json| (json, ints.clone(), agree))
        })
}

/// A generated body and whether hubgate must accept it.
#[derive(Debug, Clone)]
struct Case {
    body: String,
    accept: bool,
}

fn batch_update_findings() -> impl Strategy<Value = Case> {
    let workflow = prop_oneof![
        3 => prop::sample::select(vec!["NEW", "NOTIFIED", "RESOLVED", "SUPPRESSED"])
            .prop_map(|s| format!(r#"{{"Status":{}}}"#, json_str(s))),
        1 => Just("{}".to_string()),
    ];
    let udf = prop::collection::btree_map("[A-Za-z][A-Za-z0-9_]{0,10}", text(), 0..4)
        .prop_map(|m: BTreeMap<String, String>| object(&m.into_iter().collect::<Vec<_>>()));
    let related = prop::collection::vec((text(), text()), 0..3).prop_map(|r| {
        let items: Vec<String> = r
            .into_iter()
            .map(|(id, arn)| format!(r#"{{"ProductArn":{arn},"Id":{id}}}"#))
            .collect();
        array(&items)
    });
    let types = prop::collection::vec(prop::sample::select(&TYPES[..]), 0..4)
        .prop_map(|t| array(&t.iter().map(|s| json_str(s)).collect::<Vec<_>>()));
    let verification = prop::sample::select(vec![
        "UNKNOWN",
        "TRUE_POSITIVE",
        "FALSE_POSITIVE",
        "BENIGN_POSITIVE",
    ])
    .prop_map(json_str);
    (
        identifiers(),
        prop::option::of(note()),
        prop::option::of(severity()),
        prop::option::of(verification),
        prop::option::of(ratio_scale()),
        prop::option::of(ratio_scale()),
        prop::option::of(types),
        prop::option::of(udf),
        prop::option::of(workflow),
        prop::option::of(related),
    )
        .prop_flat_map(
            |(
                ids,
                note,
                severity,
                verification,
                confidence,
                criticality,
                types,
                udf,
                workflow,
                related,
            )| {
                let mut accept = true;
                let mut members = vec![("FindingIdentifiers", ids)];
                let mut push = |name, v: Option<String>| {
                    if let Some(v) = v {
                        members.push((name, v));
                    }
                };
                push("Note", note);
                push("VerificationState", verification);
                push("Types", types);
                push("UserDefinedFields", udf);
                push("Workflow", workflow);
                push("RelatedFindings", related);
                for (name, i) in [("Confidence", confidence), ("Criticality", criticality)] {
                    if let Some(i) = i {
                        accept &= i.acceptable();
                        members.push((name, i.text()));
                    }
                }
                if let Some((json, ints, agree)) = severity {
                    accept &= agree && ints.iter().all(Int::acceptable);
                    members.push(("Severity", json));
                }
                body(members).prop_map(move |body| Case { body, accept })
            },
        )
}

fn batch_update_findings_v2() -> impl Strategy<Value = Case> {
    let ocsf_ids = prop::collection::vec((text(), text(), text()), 0..3).prop_map(|ids| {
        let items: Vec<String> = ids
            .into_iter()
            .map(|(a, f, p)| {
                format!(
                    r#"{{"CloudAccountUid":{a},"FindingInfoUid":{f},"MetadataProductUid":{p}}}"#
                )
            })
            .collect();
        array(&items)
    });
    let uids = prop::collection::vec(text(), 0..3).prop_map(|u| array(&u));
    // MetadataUids or FindingIdentifiers (never both), or neither. A request that names no
    // finding (neither, or an empty list) is refused.
    let which = prop_oneof![
        Just(None),
        uids.prop_map(|u| Some(("MetadataUids", u))),
        ocsf_ids.prop_map(|f| Some(("FindingIdentifiers", f))),
    ];
    (
        which,
        prop::option::of(text()),
        prop::option::of(ocsf_id()),
        prop::option::of(ocsf_id()),
    )
        .prop_flat_map(|(which, comment, severity_id, status_id)| {
            let mut accept = which.as_ref().is_some_and(|(_, list)| list != "[]");
            let mut members: Vec<(&'static str, String)> = which.into_iter().collect();
            if let Some(c) = comment {
                members.push(("Comment", c));
            }
            for (name, i) in [("SeverityId", severity_id), ("StatusId", status_id)] {
                if let Some(i) = i {
                    accept &= i.acceptable();
                    members.push((name, i.text()));
                }
            }
            body(members).prop_map(move |body| Case { body, accept })
        })
}

fn update_findings() -> impl Strategy<Value = Case> {
    let string_filter = || {
        let comparison = prop::sample::select(vec!["EQUALS", "PREFIX", "NOT_EQUALS", "CONTAINS"]);
        (text(), comparison)
            .prop_map(|(v, c)| format!(r#"[{{"Value":{v},"Comparison":{}}}]"#, json_str(c)))
    };
    // A NumberFilter is a double: any number literal is fine there.
    let number_filter = (0i64..=100, form()).prop_map(|(n, f)| {
        format!(
            r#"[{{"Gte":{}}}]"#,
            Int {
                n,
                form: f,
                in_domain: true
            }
            .text()
        )
    });
    let filters = (
        prop::option::of(string_filter()),
        prop::option::of(string_filter()),
        prop::option::of(number_filter),
    )
        .prop_map(|(id, account, confidence)| {
            let mut m = Vec::new();
            for (k, v) in [
                ("Id", id),
                ("AwsAccountId", account),
                ("Confidence", confidence),
            ] {
                if let Some(v) = v {
                    m.push((k.to_string(), v));
                }
            }
            object(&m)
        });
    let record_state = prop::sample::select(vec!["ACTIVE", "ARCHIVED"]).prop_map(json_str);
    (
        filters,
        prop::option::of(note()),
        prop::option::of(record_state),
    )
        .prop_flat_map(|(filters, note, record_state)| {
            let mut members = vec![("Filters", filters)];
            members.extend(note.map(|n| ("Note", n)));
            members.extend(record_state.map(|r| ("RecordState", r)));
            body(members).prop_map(|body| Case { body, accept: true })
        })
}

fn check(op: Judged, case: &Case) -> Result<(), TestCaseError> {
    // judge_front panics when an accepted body breaks the invariant.
    let outcome = judge_front(schemas(), op, case.body.as_bytes());
    prop_assert_eq!(
        outcome.accepted(),
        case.accept,
        "{} {}\n{:?}",
        op.name(),
        case.body,
        outcome
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn batch_update_findings_members_are_facts(case in batch_update_findings()) {
        check(Judged::BatchUpdateFindings, &case)?;
    }

    #[test]
    fn batch_update_findings_v2_members_are_facts(case in batch_update_findings_v2()) {
        check(Judged::BatchUpdateFindingsV2, &case)?;
    }

    #[test]
    fn update_findings_members_are_facts(case in update_findings()) {
        check(Judged::UpdateFindings, &case)?;
    }

    /// One integer member in a non-integer form, the rest of the body valid: always refused.
    #[test]
    fn non_integer_literals_in_integer_members_are_refused(
        which in 0usize..5,
        n in 0i64..=100,
        id in prop::sample::select(&OCSF_IDS[..]),
        form in non_plain_form(),
    ) {
        let (op, body) = match which {
            0..=2 => {
                let i = Int { n, form, in_domain: true };
                let member = match which {
                    0 => format!(r#""Confidence":{}"#, i.text()),
                    1 => format!(r#""Criticality":{}"#, i.text()),
                    _ => format!(r#""Severity":{{"Normalized":{}}}"#, i.text()),
                };
                let ids = r#""FindingIdentifiers":[{"Id":"f","ProductArn":"arn:aws:securityhub:::product/p"}]"#;
                (Judged::BatchUpdateFindings, format!("{{{ids},{member}}}"))
            }
            _ => {
                let i = Int { n: id, form, in_domain: true };
                let name = if which == 3 { "SeverityId" } else { "StatusId" };
                (Judged::BatchUpdateFindingsV2, format!(r#"{{"MetadataUids":["m"],"{name}":{}}}"#, i.text()))
            }
        };
        let outcome = judge_front(schemas(), op, body.as_bytes());
        prop_assert!(
            matches!(outcome, Outcome::Refused { .. }),
            "{} {} was accepted: {:?}", op.name(), body, outcome
        );
    }
}
