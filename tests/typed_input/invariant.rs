//! The typed-input invariant, shared by the property test (tests/typed_input.rs) and the
//! `judge_body` fuzz target (fuzz/fuzz_targets/judge_body.rs includes this file by path).
//!
//! For any body, either hubgate refuses it before the policy runs (strict parse and JSON Schema,
//! typed read, or normalise: all 400s), or the policy sees the body:
//! - (a) every field in `input.update.fields` that has a fact (`FIELD_FACTS`) has it non-null;
//! - (b) every member the body sets is in `input.update.fields`, and nothing else is;
//! - the facts that copy a member hold the member's value;
//! - an integer member was written as an integer literal (`3.0`, `1e1`, `-0` are refused).
//!
//! A violation panics, so the fuzzer records a crash and the property test fails.
#![allow(dead_code)]

use std::collections::BTreeSet;

use hubgate::policy::input::{label_for_normalized, normalise, FIELD_FACTS};
use hubgate::request::Judged;
use hubgate::validate::Schemas;
use serde_json::{json, Value};

/// What became of one body.
#[derive(Debug)]
pub enum Outcome {
    /// Refused before the policy, at `stage`.
    Refused {
        stage: &'static str,
        message: String,
    },
    /// Accepted: the parsed body and `input.update`.
    Accepted { body: Value, update: Value },
}

impl Outcome {
    pub fn accepted(&self) -> bool {
        matches!(self, Outcome::Accepted { .. })
    }
}

/// Members of the body (JSON pointer) and the field each one must put in `input.update.fields`.
fn member_fields(op: Judged) -> &'static [(&'static str, &'static str)] {
    match op {
        Judged::BatchUpdateFindings => &[
            ("/Workflow/Status", "Workflow.Status"),
            ("/Severity/Label", "Severity.Label"),
            ("/Severity/Normalized", "Severity.Normalized"),
            ("/Severity/Product", "Severity.Product"),
            ("/Note/Text", "Note.Text"),
            ("/Note/UpdatedBy", "Note.UpdatedBy"),
            ("/VerificationState", "VerificationState"),
            ("/Confidence", "Confidence"),
            ("/Criticality", "Criticality"),
            ("/Types", "Types"),
            ("/UserDefinedFields", "UserDefinedFields"),
            ("/RelatedFindings", "RelatedFindings"),
        ],
        Judged::BatchUpdateFindingsV2 => &[
            ("/StatusId", "Workflow.Status"),
            ("/SeverityId", "Severity.Label"),
            ("/Comment", "Note.Text"),
        ],
        Judged::UpdateFindings => &[
            ("/Note/Text", "Note.Text"),
            ("/Note/UpdatedBy", "Note.UpdatedBy"),
            ("/RecordState", "RecordState"),
        ],
        // Per finding; see `check_import_fields`.
        Judged::BatchImportFindings => &[],
    }
}

/// Facts that are a member's value as written: (fact pointer in input.update, body pointer).
fn copied_facts(op: Judged) -> &'static [(&'static str, &'static str)] {
    match op {
        Judged::BatchUpdateFindings => &[
            ("/workflow_status", "/Workflow/Status"),
            ("/severity_normalized", "/Severity/Normalized"),
            ("/note/text", "/Note/Text"),
            ("/note/updated_by", "/Note/UpdatedBy"),
            ("/verification_state", "/VerificationState"),
            ("/confidence", "/Confidence"),
            ("/criticality", "/Criticality"),
            ("/types", "/Types"),
            ("/user_defined_fields", "/UserDefinedFields"),
            ("/related_findings", "/RelatedFindings"),
        ],
        Judged::BatchUpdateFindingsV2 => &[("/note/text", "/Comment")],
        Judged::UpdateFindings => &[
            ("/note/text", "/Note/Text"),
            ("/note/updated_by", "/Note/UpdatedBy"),
            ("/record_state", "/RecordState"),
        ],
        Judged::BatchImportFindings => &[],
    }
}

/// Integer members of the typed request (JSON pointers; imports: relative to each finding).
fn integer_members(op: Judged) -> &'static [&'static str] {
    match op {
        Judged::BatchUpdateFindings => &["/Confidence", "/Criticality", "/Severity/Normalized"],
        Judged::BatchUpdateFindingsV2 => &["/SeverityId", "/StatusId"],
        Judged::UpdateFindings => &[],
        Judged::BatchImportFindings => &[
            "/Confidence",
            "/Criticality",
            "/Severity/Normalized",
            "/FindingProviderFields/Confidence",
            "/FindingProviderFields/Criticality",
        ],
    }
}

/// Import members whose sub-members are listed as `Member.Sub` (as normalise does).
const STRUCTURED_IMPORT_MEMBERS: [&str; 4] =
    ["Severity", "Workflow", "Note", "FindingProviderFields"];

/// Runs strict parse + schema, typed read and normalise on `body`; on acceptance checks the
/// invariant and panics, naming the body, if it does not hold.
pub fn judge_front(schemas: &Schemas, op: Judged, body: &[u8]) -> Outcome {
    let value = match schemas.check(op.name(), body) {
        Ok(v) => v,
        Err(e) => {
            return Outcome::Refused {
                stage: "schema",
                message: e.to_string(),
            }
        }
    };
    let typed = match op.read(&value) {
        Ok(t) => t,
        Err(v) => {
            return Outcome::Refused {
                stage: "read",
                message: format!("{}: {}", v.path(), v.message()),
            }
        }
    };
    let normalised = match normalise(&typed) {
        Ok(n) => n,
        Err(v) => {
            return Outcome::Refused {
                stage: "normalise",
                message: format!("{}: {}", v.path(), v.message()),
            }
        }
    };
    let update = normalised.update.to_value();
    let fields: BTreeSet<String> = normalised.update.fields().map(str::to_string).collect();
    let shown = String::from_utf8_lossy(body);
    let ctx = format!("{} body {shown}\ninput.update {update}", op.name());

    assert_eq!(
        update["fields"],
        json!(fields),
        "input.update.fields is not Update::fields()\n{ctx}"
    );

    for member in integer_members(op) {
        let bases: Vec<&Value> = match op {
            Judged::BatchImportFindings => value["Findings"]
                .as_array()
                .map(|a| a.iter().collect())
                .unwrap_or_default(),
            _ => vec![&value],
        };
        for base in bases {
            if let Some(n) = base.pointer(member) {
                assert!(
                    n.is_i64() || n.is_u64(),
                    "integer member {member} written as {n} was accepted\n{ctx}"
                );
            }
        }
    }

    match op {
        Judged::BatchImportFindings => check_import_fields(&value, &fields, &ctx),
        _ => {
            // (a) a listed field never carries a null fact.
            for (field, fact) in FIELD_FACTS {
                if fields.contains(field) {
                    assert!(
                        !update[fact].is_null(),
                        "field {field} is set but input.update.{fact} is null\n{ctx}"
                    );
                }
            }
            // (b) every member present is a field, and only those.
            let expected: BTreeSet<String> = member_fields(op)
                .iter()
                .filter(|(ptr, _)| value.pointer(ptr).is_some())
                .map(|(_, f)| f.to_string())
                .collect();
            assert_eq!(
                fields, expected,
                "input.update.fields does not match the members the body sets\n{ctx}"
            );
            for (fact, member) in copied_facts(op) {
                if let Some(v) = value.pointer(member) {
                    assert_eq!(
                        update.pointer(fact),
                        Some(v),
                        "input.update{fact} is not the body's {member}\n{ctx}"
                    );
                }
            }
            if op == Judged::BatchUpdateFindings {
                check_severity(&value, &update, &ctx);
            }
        }
    }
    Outcome::Accepted {
        body: value,
        update,
    }
}

/// The severity facts of BatchUpdateFindings: the label as given, else derived from Normalized;
/// Product as given.
fn check_severity(body: &Value, update: &Value, ctx: &str) {
    let label = body.pointer("/Severity/Label").and_then(Value::as_str);
    let derived = body
        .pointer("/Severity/Normalized")
        .and_then(Value::as_i64)
        .and_then(label_for_normalized);
    if let Some(expected) = label.or(derived) {
        assert_eq!(
            update["severity_label"], expected,
            "severity_label is not the body's severity\n{ctx}"
        );
    }
    if let (Some(l), Some(d)) = (label, derived) {
        assert_eq!(
            l, d,
            "Label and Normalized disagree yet were accepted\n{ctx}"
        );
    }
    if let Some(p) = body.pointer("/Severity/Product").and_then(Value::as_f64) {
        assert_eq!(
            update["severity_product"].as_f64(),
            Some(p),
            "severity_product is not the body's Severity.Product\n{ctx}"
        );
    }
}

/// An import's fields: every member of every finding, structured members one level down.
fn check_import_fields(body: &Value, fields: &BTreeSet<String>, ctx: &str) {
    let mut expected = BTreeSet::new();
    for finding in body["Findings"].as_array().into_iter().flatten() {
        for (member, v) in finding.as_object().into_iter().flatten() {
            match v.as_object() {
                Some(subs)
                    if STRUCTURED_IMPORT_MEMBERS.contains(&member.as_str()) && !subs.is_empty() =>
                {
                    expected.extend(subs.keys().map(|s| format!("{member}.{s}")));
                }
                _ => {
                    expected.insert(member.clone());
                }
            }
        }
    }
    assert_eq!(
        fields, &expected,
        "input.update.fields does not match the members the imported findings set\n{ctx}"
    );
}
