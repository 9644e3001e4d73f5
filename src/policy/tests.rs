use super::*;
use crate::finding::FindingKey;
use crate::identity::{Principal, Role};
use crate::policy::input::{Enrichment, RequestFacts};
use crate::policy::state::CurrentFinding;
use std::sync::Arc;

fn shipped() -> PolicySet {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    PolicySet::load(&dir, Duration::from_secs(1)).unwrap()
}

fn principal(role: Role) -> Principal {
    Principal {
        id: "p".into(),
        account_id: "222222222222".into(),
        role,
        attributes: Default::default(),
    }
}

const ARN: &str = "arn:aws:securityhub:us-east-1::product/aws/securityhub";

/// The input for `body`, targeting findings (id, account, label); `None` account = not found.
fn doc(
    role: Role,
    body: Value,
    findings: &[(&str, Option<&str>, &str)],
    enrichment: Enrichment,
) -> regorus::Value {
    let p = principal(role);
    let facts = RequestFacts {
        operation: "BatchUpdateFindings",
        principal: &p,
        method: "PATCH",
        path: "/findings/batchupdate",
        headers: Default::default(),
        source_ip: "127.0.0.1".into(),
        request_id: "r",
        time: "2026-11-24T00:00:00Z".into(),
    };
    let keys: Vec<FindingKey> = findings
        .iter()
        .map(|(id, _, _)| FindingKey::new(*id, ARN))
        .collect();
    let current: crate::finding::KeyMap<_> = findings
        .iter()
        .filter_map(|(id, account, label)| {
            let account = (*account)?;
            let f = json!({"Id": id, "ProductArn": ARN, "AwsAccountId": account,
                           "Severity": {"Label": label}, "Workflow": {"Status": "NEW"}});
            Some((
                FindingKey::new(*id, ARN),
                Arc::new(CurrentFinding::new(id, ARN, &f)),
            ))
        })
        .collect();
    let mut full = body.clone();
    full["FindingIdentifiers"] = keys
        .iter()
        .map(|k| json!({"Id": k.id, "ProductArn": k.product_arn}))
        .collect();
    let update = input::update_for(crate::request::Judged::BatchUpdateFindings, &full)
        .expect("a valid update")
        .to_value();
    input::document(&facts, &body, &update, &keys, Some(&current), enrichment)
}

fn messages(d: &Decision) -> Vec<&str> {
    d.deny.iter().map(|v| v.msg.as_str()).collect()
}

#[test]
fn shipped_policies_load_with_a_stable_revision() {
    let a = shipped();
    let b = shipped();
    assert!(a.revision.starts_with("sha256:"));
    assert_eq!(a.revision, b.revision);
    // test files do not serve
    assert!(a.files.iter().all(|f| !is_test_file(f)));
}

#[test]
fn member_suppress_is_denied_in_the_first_pass() {
    let p = shipped();
    let d = p
        .evaluate(doc(
            Role::Member,
            json!({"Workflow": {"Status": "SUPPRESSED"},
                   "Note": {"Text": "RISK-1 accepted", "UpdatedBy": "m"}}),
            &[("f1", None, "HIGH")],
            Enrichment::Pending,
        ))
        .unwrap();
    assert_eq!(
        messages(&d),
        vec!["member accounts may not suppress findings"]
    );
    assert_eq!(d.deny[0].finding, None);
    assert_eq!(d.message(), "member accounts may not suppress findings");
}

#[test]
fn per_finding_violations_name_their_finding() {
    let p = shipped();
    let d = p
        .evaluate(doc(
            Role::Member,
            json!({"Severity": {"Normalized": 10}}),
            &[
                ("mine-high", Some("222222222222"), "HIGH"),
                ("mine-info", Some("222222222222"), "INFORMATIONAL"),
                ("theirs", Some("333333333333"), "INFORMATIONAL"),
                ("gone", None, "LOW"),
            ],
            Enrichment::Complete,
        ))
        .unwrap();
    let mut got: Vec<(String, String)> = d
        .deny
        .iter()
        .map(|v| {
            (
                v.finding.as_ref().unwrap()["Id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                v.msg.clone(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("gone".into(), NOT_MEMBERS.into()),
            (
                "mine-high".into(),
                "member accounts may not lower a finding's severity (HIGH to LOW)".into()
            ),
            ("theirs".into(), NOT_MEMBERS.into()),
        ]
    );
}

#[test]
fn administrators_may_do_what_members_may_not() {
    let p = shipped();
    let d = p
        .evaluate(doc(
            Role::Administrator,
            json!({"Workflow": {"Status": "SUPPRESSED"}, "Severity": {"Label": "LOW"},
                   "Note": {"Text": "RISK-1 accepted", "UpdatedBy": "a"}}),
            &[("theirs", Some("333333333333"), "CRITICAL")],
            Enrichment::Complete,
        ))
        .unwrap();
    assert!(d.allowed(), "{:?}", d.deny);
}

#[test]
fn the_bytecode_vm_agrees_with_the_interpreter() {
    let p = shipped();
    let bodies = [
        json!({"Workflow": {"Status": "SUPPRESSED"}}),
        json!({"Workflow": {"Status": "RESOLVED"}}),
        json!({"Severity": {"Label": "LOW"}}),
        json!({"Severity": {"Normalized": 95}}),
        json!({"Note": {"Text": "t", "UpdatedBy": "u"}}),
    ];
    let findings = [
        ("a", Some("222222222222"), "HIGH"),
        ("b", Some("333333333333"), "LOW"),
        ("c", None, "LOW"),
    ];
    for role in [Role::Member, Role::Administrator] {
        for body in &bodies {
            for phase in [
                Enrichment::Pending,
                Enrichment::Complete,
                Enrichment::Disabled,
            ] {
                let input = doc(role, body.clone(), &findings, phase);
                let mut vm: Vec<_> = p.evaluate(input.clone()).unwrap().deny;
                let mut interp: Vec<_> = p.evaluate_interpreted(input).unwrap().deny;
                let key = |v: &Violation| format!("{}{:?}", v.msg, v.finding);
                vm.sort_by_key(key);
                interp.sort_by_key(key);
                assert_eq!(vm, interp, "{role:?} {body} {phase:?}");
            }
        }
    }
}

fn load_dir(files: &[(&str, &str)]) -> Result<PolicySet, PolicyLoadError> {
    let dir = tempfile::tempdir().unwrap();
    let schemas = dir.path().join("schemas");
    std::fs::create_dir_all(&schemas).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/schemas/BatchUpdateFindings.json"),
        schemas.join("BatchUpdateFindings.json"),
    )
    .unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    PolicySet::load(dir.path(), Duration::from_millis(50))
}

#[test]
fn broken_or_incomplete_policy_sets_are_refused() {
    let err = load_dir(&[("p.rego", "package hubgate\n\ndeny contains x if {")])
        .err()
        .unwrap();
    assert!(err.to_string().contains("p.rego"), "{err}");
    let err = load_dir(&[("p.rego", "package other\n\nallow := true\n")])
        .err()
        .unwrap();
    assert!(err.to_string().contains("data.hubgate.deny"), "{err}");
    let err = load_dir(&[("p.rego", "package hubgate\n\ndeny := true\n")])
        .err()
        .unwrap();
    assert!(err.to_string().contains("set"), "{err}");
    let err = load_dir(&[]).err().unwrap();
    assert!(matches!(err, PolicyLoadError::Empty { .. }));
}

#[test]
fn revision_follows_content() {
    let a = load_dir(&[("p.rego", "package hubgate\n\ndeny contains 1 if false\n")]).unwrap();
    let b = load_dir(&[("p.rego", "package hubgate\n\ndeny contains 2 if false\n")]).unwrap();
    assert_ne!(a.revision, b.revision);
}

#[test]
fn malformed_violations_are_policy_errors_not_denials() {
    let p = load_dir(&[(
        "p.rego",
        "package hubgate\n\ndeny contains \"just a string\" if input.operation\n",
    )])
    .unwrap();
    let input = doc(Role::Member, json!({}), &[], Enrichment::Complete);
    assert!(matches!(
        p.evaluate(input),
        Err(PolicyError::BadDecision(_))
    ));
}

#[test]
fn warn_is_recorded_separately() {
    let p = load_dir(&[(
        "p.rego",
        "package hubgate\n\ndeny contains {\"msg\": \"d\", \"finding\": null} if false\n\nwarn contains {\"msg\": \"w\", \"finding\": null} if input.operation\n",
    )])
    .unwrap();
    let d = p
        .evaluate(doc(Role::Member, json!({}), &[], Enrichment::Complete))
        .unwrap();
    assert!(d.allowed());
    assert_eq!(d.warn.len(), 1);
    assert_eq!(d.warn[0].msg, "w");
}

#[test]
fn a_denial_that_names_only_findings_still_says_whether_state_is_needed() {
    // A per-finding denial of the first pass may end in a partial forward of the other
    // findings: whether they need state must be known. A whole-request denial ends judging.
    let p = load_dir(&[(
        "p.rego",
        "package hubgate\n\n\
         needs_state if input.principal.role == \"member\"\n\n\
         needs_state := false if input.principal.role == \"administrator\"\n\n\
         deny contains {\"msg\": \"f\", \"finding\": {\"Id\": f.Id, \"ProductArn\": f.ProductArn}} if {\n\
         \tsome f in input.findings\n\tf.Id == \"a\"\n}\n\n\
         deny contains {\"msg\": \"w\", \"finding\": null} if input.request.body.Note\n",
    )])
    .unwrap();
    let findings = [("a", None, "LOW"), ("b", None, "LOW")];
    let pass = |role, body| {
        p.evaluate(doc(role, body, &findings, Enrichment::Pending))
            .unwrap()
    };
    let admin = pass(Role::Administrator, json!({}));
    assert_eq!(messages(&admin), vec!["f"]);
    assert!(!admin.needs_state, "asked, and an administrator needs none");
    assert!(pass(Role::Member, json!({})).needs_state);
    let whole = pass(
        Role::Administrator,
        json!({"Note": {"Text": "t", "UpdatedBy": "u"}}),
    );
    assert!(whole.needs_state, "a whole-request denial does not ask");
}

#[test]
fn only_false_skips_the_lookup() {
    // `needs_state if member` alone is undefined for an administrator: the lookup is made.
    // So it is when a body does not hold (an attribute the caller lacks here): read as "not needed",
    // every rule on state would go unevaluated. (A body that errs refuses the request: see
    // `a_needs_state_whose_body_errs_refuses_the_request`.)
    let p = load_dir(&[(
        "p.rego",
        "package hubgate\n\n\
         needs_state if input.principal.role == \"member\"\n\n\
         needs_state if {\n\tinput.principal.role == \"administrator\"\n\tinput.principal.attributes.no_such_attribute == 0\n}\n\n\
         deny contains {\"msg\": \"d\", \"finding\": null} if false\n",
    )])
    .unwrap();
    let pass = |role| {
        p.evaluate(doc(
            role,
            json!({}),
            &[("a", None, "LOW")],
            Enrichment::Pending,
        ))
        .unwrap()
    };
    assert!(pass(Role::Member).needs_state);
    assert!(
        pass(Role::Administrator).needs_state,
        "undefined is not false"
    );
}

#[test]
fn a_needs_state_whose_body_errs_refuses_the_request() {
    // Before the VM aborted on errors this body was undefined, and only the rule above kept
    // it from skipping the lookup.
    let p = load_dir(&[(
        "p.rego",
        r#"package hubgate

needs_state := false if {
	input.principal.role == "administrator"
	count(input.update.types) >= 0
}

deny contains {"msg": "d", "finding": null} if false
"#,
    )])
    .unwrap();
    let r = p.evaluate(doc(
        Role::Administrator,
        json!({}),
        &[("a", None, "LOW")],
        Enrichment::Pending,
    ));
    assert!(
        matches!(&r, Err(PolicyError::Eval(m)) if m.contains("count")),
        "{r:?}"
    );
}

/// What a rule set decides for a member's note: the deny messages, or that evaluation failed.
fn decided(p: &PolicySet, interpreted: bool) -> Result<Vec<String>, String> {
    let input = doc(
        Role::Member,
        json!({"Note": {"Text": "t", "UpdatedBy": "u"}}),
        &[("a", Some("222222222222"), "HIGH")],
        Enrichment::Complete,
    );
    let d = if interpreted {
        p.evaluate_interpreted(input)
    } else {
        p.evaluate(input)
    };
    d.map(|d| {
        let mut m: Vec<String> = d.deny.into_iter().map(|v| v.msg).collect();
        m.sort();
        m
    })
    .map_err(|e| e.to_string())
}

#[test]
fn an_evaluation_error_in_any_rule_body_refuses_as_the_interpreter_does() {
    // Each rule below refuses the request unless its body errs. The served VM used to leave an
    // erring body undefined, so the deny rule did not fire and the request was allowed; now the
    // evaluation fails (500 POLICY_ERROR), as `hubgate test`'s interpreter reports it. `errs`
    // is whether the evaluation must fail; otherwise the rule must fire ("d") or not (none),
    // and in every case the VM and the interpreter agree.
    let cases: &[(&str, &str, Option<bool>)] = &[
        // (what, rules, Some(fires) or None for an error)
        ("a builtin on null", "deny contains v if { count(input.update.types) >= 0; v := D }", None),
        ("a builtin on the wrong type", "deny contains v if { startswith(input.update.severity_rank, \"x\") == false; v := D }", None),
        ("a failed conversion", "deny contains v if { to_number(input.update.note.text) != 1; v := D }", None),
        ("division by zero", "deny contains v if { x := 1 / (count(input.update.note.text) - 1); x != 2; v := D }", None),
        ("modulo by zero", "deny contains v if { x := 1 % (count(input.update.note.text) - 1); x != 2; v := D }", None),
        ("arithmetic on a string", "deny contains v if { x := input.update.note.text + 1; x != 2; v := D }", None),
        ("an invalid regular expression", "deny contains v if { regex.match(concat(\"\", [\"(\", input.update.note.text]), \"a\") == false; v := D }", None),
        ("a bad format", "deny contains v if { s := sprintf(input.update.note.text, 1); s != \"\"; v := D }", None),
        ("an erring helper rule", "deny contains v if { not ok; v := D }\nok if to_number(input.update.note.text) > 0", None),
        ("an erring function", "deny contains v if { f(1) != 2; v := D }\nf(x) := y if y := to_number(input.update.note.text) + x", None),
        ("a conflict in a complete rule", "deny contains v if { x == 1; v := D }\nx := 1 if input.update.note.text\nx := 2 if input.update.note.text", None),
        ("a conflict in a function", "deny contains v if { f(count(input.update.fields)) == 1; v := D }\nf(x) := 1 if x == count(input.update.fields)\nf(x) := 2 if x == count(input.update.fields)", None),
        ("an error in a comprehension", "deny contains v if { xs := [y | some z in [1]; y := to_number(input.update.note.text) + z]; count(xs) == 0; v := D }", None),
        ("an error under every", "deny contains v if { not all_ok; v := D }\nall_ok if { every z in [1] { to_number(input.update.note.text) > z } }", None),
        ("an error in an else branch", "deny contains v if { x != 1; v := D }\nx := 1 if input.operation == \"X\" else := to_number(input.update.note.text)", None),
        ("a range too long to build", "deny contains v if { r := numbers.range(0, count(input.update.note.text) * 1000000); count(r) > 0; v := D }", None),
        ("a network too large to expand", "deny contains v if { hosts := net.cidr_expand(concat(\"\", [\"10.0.0.0/\", format_int(count(input.update.note.text) * 8, 10)])); count(hosts) > 0; v := D }", None),
        ("a partial object with two values for one key", "deny contains v if { m.t == 1; v := D }\nm[k] := 1 if k := input.update.note.text\nm[k] := 2 if k := input.update.note.text", None),
        ("an object comprehension with two values for one key", "deny contains v if { o := {k: x | some x in [1, 2]; k := input.update.note.text}; o.t == 1; v := D }", None),
        // Not errors: these decide, and both engines decide alike.
        ("a condition that does not hold", "deny contains v if { input.operation == \"X\"; v := D }", Some(false)),
        ("a missing key", "deny contains v if { input.operation.nothing == 1; v := D }", Some(false)),
        ("a comparison across types (Rego's total order)", "deny contains v if { input.update.severity_rank < \"a\"; v := D }", Some(true)),
        ("a destructuring that does not match", "deny contains v if { [a, b, c] := input.update.fields; a != c; v := D }", Some(false)),
        ("agreeing definitions", "deny contains v if { x == 1; v := D }\nx := 1 if input.operation\nx := 1 if input.principal", Some(true)),
        ("a partial object that gives a key one value twice", "deny contains v if { m.t == 1; v := D }\nm[k] := 1 if k := input.update.note.text\nm[k] := 1 if k := input.update.note.text", Some(true)),
        ("an object comprehension that gives a key one value twice", "deny contains v if { o := {k: 1 | some _ in [1, 2]; k := input.update.note.text}; o.t == 1; v := D }", Some(true)),
        ("a guarded builtin", "deny contains v if { \"Types\" in input.update.fields; count(input.update.types) >= 0; v := D }", Some(false)),
    ];
    for (what, rules, fires) in cases {
        let text =
            format!("package hubgate\n\nD := {{\"msg\": \"d\", \"finding\": null}}\n\n{rules}\n");
        let p = load_dir(&[("p.rego", &text)]).unwrap_or_else(|e| panic!("{what}: {e}"));
        let (vm, interp) = (decided(&p, false), decided(&p, true));
        match fires {
            None => {
                assert!(vm.is_err(), "{what}: the VM decided {vm:?}");
                assert!(
                    interp.is_err(),
                    "{what}: the interpreter decided {interp:?}"
                );
            }
            Some(fires) => {
                let want: Vec<String> = if *fires { vec!["d".into()] } else { vec![] };
                assert_eq!(vm, Ok(want.clone()), "{what}: the VM");
                assert_eq!(interp, Ok(want), "{what}: the interpreter");
            }
        }
    }
}

#[test]
fn an_undefined_value_decides_in_the_vm_as_in_the_interpreter() {
    // Each rule below refuses the member's note ("t", no ticket, no Severity in the body)
    // because a value it reads is undefined. The published bytecode compiler let an undefined
    // value through where Rego (OPA and the interpreter) makes the body undefined: an
    // assignment (`t := e`), a comprehension term or key, a partial object key, a rule's head
    // value before its `else`; and it called a function with a `default` undefined. Each
    // helper held (or each collection gained an element) on the VM, so the deny rule did not
    // fire and the note was forwarded. `fires`: whether the deny rule must fire; both engines
    // must agree.
    let cases: &[(&str, &str, bool)] = &[
        ("an assignment of an undefined value", "deny contains D if not ticketed\nticketed if { t := regex.find_n(\"RISK-[0-9]+\", input.update.note.text, 1)[0] }", true),
        ("an assignment to `_`", "deny contains D if not ticketed\nticketed if { _ := input.request.body.Note.Ticket }", true),
        ("an array pattern over an object of two members", "deny contains D if not paired\npaired if { [a, b] := input.request.body.Note }", true),
        ("an array comprehension's assigned term", "deny contains D if { ts := [t | t := input.request.body.Note.Ticket]; count(ts) == 0 }", true),
        ("an array comprehension's term", "deny contains D if { ts := [input.request.body.Note.Ticket | true]; count(ts) == 0 }", true),
        ("an object comprehension's value", "deny contains D if { m := {k: v | some k in [\"Ticket\"]; v := input.request.body.Note[k]}; count(m) == 0 }", true),
        ("an object comprehension's key", "deny contains D if { m := {k: 1 | k := input.request.body.Note.Ticket}; count(m) == 0 }", true),
        ("a partial object's key", "deny contains D if count(tickets) == 0\ntickets[input.request.body.Note.Ticket] := true", true),
        ("a head value before its else", "deny contains D if level < 1\nlevel := {\"LOW\": 1}[input.request.body.Severity.Label] if { true } else := 0", true),
        ("a function's default", "deny contains D if rank(input.update.note.text) < 1\ndefault rank(_) := 0\nrank(l) := 1 if l == \"LOW\"", true),
        ("a function's default after a body that does not hold", "deny contains D if rank(input.update.note.text) == \"none\"\ndefault rank(_) := \"none\"\nrank(l) := l if startswith(l, \"RISK-\")", true),
        // Not denials: these must stay as they were.
        ("a function called with an undefined argument (no default)", "deny contains D if rank(input.request.body.Nothing) == 0\ndefault rank(_) := 0\nrank(l) := 1 if l == \"LOW\"", false),
        ("an assignment of false", "deny contains D if { f := input.operation == \"X\"; f == false }", true),
        ("a comprehension over defined values", "deny contains D if { ts := [t | some t in input.update.fields]; count(ts) == count(input.update.fields) }", true),
        ("an assignment that holds", "deny contains D if { t := input.update.note.text; t == \"t\" }", true),
    ];
    for (what, rules, fires) in cases {
        let text =
            format!("package hubgate\n\nD := {{\"msg\": \"d\", \"finding\": null}}\n\n{rules}\n");
        let p = load_dir(&[("p.rego", &text)]).unwrap_or_else(|e| panic!("{what}: {e}"));
        let want: Vec<String> = if *fires { vec!["d".into()] } else { vec![] };
        assert_eq!(
            decided(&p, true),
            Ok(want.clone()),
            "{what}: the interpreter"
        );
        assert_eq!(decided(&p, false), Ok(want), "{what}: the VM");
    }
}

#[test]
fn a_not_over_a_destructuring_pattern_does_not_load() {
    // The VM compiled the pattern's own checks as the body's, so `not [1, _] = x` never held
    // (a deny rule on it never fired); refused when the set loads, with a way out.
    for rule in [
        "deny contains {\"msg\": \"d\", \"finding\": null} if not [\"Types\", _] = input.update.fields",
        "deny contains {\"msg\": \"d\", \"finding\": null} if not {\"Ticket\": _} = input.request.body.Note",
    ] {
        let err = load_dir(&[("p.rego", &format!("package hubgate\n\n{rule}\n"))])
            .err()
            .unwrap_or_else(|| panic!("loaded: {rule}"));
        assert!(err.to_string().contains("helper rule"), "{err}");
    }
    // The helper rule it points to decides as the interpreter does.
    let p = load_dir(&[(
        "p.rego",
        "package hubgate\n\ndeny contains {\"msg\": \"d\", \"finding\": null} if not ticketed\n\nticketed if {\"Ticket\": _} = input.request.body.Note\n",
    )])
    .unwrap();
    assert_eq!(decided(&p, false), Ok(vec!["d".to_string()]));
    assert_eq!(decided(&p, true), Ok(vec!["d".to_string()]));
}

#[test]
fn an_erring_body_leaves_the_kept_vm_sound_for_the_next_request() {
    // A failed run drops the thread's VM; the next decision on the same thread is whole.
    let p = load_dir(&[(
        "p.rego",
        "package hubgate\n\n\
         deny contains {\"msg\": \"bad\", \"finding\": null} if { \"Types\" in input.update.fields; count(input.update.types) < 0 }\n\
         deny contains {\"msg\": \"note\", \"finding\": null} if { input.update.note.text != \"panic\"; to_number(input.update.note.text) > 1 }\n\
         deny contains {\"msg\": \"never\", \"finding\": null} if { input.update.note.text == \"panic\"; strings.count(input.update.note.text, substring(input.update.note.text, 0, 0)) < 0 }\n",
    )])
    .unwrap();
    let note = |text: &str| {
        p.evaluate(doc(
            Role::Member,
            json!({"Note": {"Text": text, "UpdatedBy": "u"}}),
            &[("a", Some("222222222222"), "HIGH")],
            Enrichment::Complete,
        ))
        .map(|d| {
            messages(&d)
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>()
        })
    };
    assert!(note("not a number").is_err());
    assert_eq!(note("5").unwrap(), vec!["note"]);
    // A builtin that panics (strings.count with an empty substring) is a failed evaluation
    // too, and the next decision on the thread is whole.
    assert!(matches!(note("panic"), Err(PolicyError::Eval(m)) if m.contains("panicked")));
    assert_eq!(note("7").unwrap(), vec!["note"]);
    assert!(note("x").is_err());
    assert_eq!(note("0").unwrap(), Vec::<String>::new());
}

#[test]
fn a_needs_state_that_is_not_a_boolean_is_refused() {
    // A set is refused when the set loads; a value only some requests produce fails them.
    let set = load_dir(&[(
        "p.rego",
        "package hubgate\n\nneeds_state contains \"ownership\" if input.principal.role == \"member\"\n\n\
         deny contains {\"msg\": \"d\", \"finding\": null} if false\n",
    )]);
    let err = set
        .err()
        .expect("a set-valued needs_state must not load")
        .to_string();
    assert!(err.contains("needs_state must be true or false"), "{err}");
    let p = load_dir(&[(
        "p.rego",
        "package hubgate\n\nneeds_state := \"ownership\" if input.principal.role == \"member\"\n\n\
         deny contains {\"msg\": \"d\", \"finding\": null} if false\n",
    )])
    .unwrap();
    let r = p.evaluate(doc(
        Role::Member,
        json!({}),
        &[("a", None, "LOW")],
        Enrichment::Pending,
    ));
    assert!(
        matches!(&r, Err(PolicyError::BadDecision(m)) if m.contains("\"ownership\"")),
        "{r:?}"
    );
}

#[test]
fn a_runaway_policy_hits_the_time_limit() {
    let p = load_dir(&[(
        "p.rego",
        "package hubgate\n\ndeny contains {\"msg\": \"x\", \"finding\": null} if {\n\tsome i in numbers.range(1, 5000)\n\tsome j in numbers.range(1, 5000)\n\ti + j < 0\n}\n",
    )]);
    // The smoke evaluation at load already runs the rule; either the load (on its 2 s limit)
    // or the evaluation (on the 50 ms one) must stop, never hang and never allow.
    match p {
        Err(e) => assert!(e.to_string().contains("deny"), "{e}"),
        Ok(p) => {
            let r = p.evaluate(doc(Role::Member, json!({}), &[], Enrichment::Complete));
            assert!(matches!(r, Err(PolicyError::Eval(_))), "{r:?}");
        }
    }
}

/// A thread keeps its VM between evaluations: one request's answer must not leak into the
/// next request's, in either order, and a failed run must not poison the thread's next one.
#[test]
fn a_kept_vm_answers_each_input_as_a_new_one_would() {
    let p = shipped();
    let suppress = || {
        doc(
            Role::Member,
            json!({"Workflow": {"Status": "SUPPRESSED"}}),
            &[("f1", Some("222222222222"), "HIGH")],
            Enrichment::Complete,
        )
    };
    let raise = || {
        doc(
            Role::Member,
            json!({"Severity": {"Label": "CRITICAL"}}),
            &[("f1", Some("222222222222"), "HIGH")],
            Enrichment::Complete,
        )
    };
    for _ in 0..2 {
        let denied = p.evaluate(suppress()).unwrap();
        assert!(!denied.allowed());
        let allowed = p.evaluate(raise()).unwrap();
        assert!(allowed.allowed(), "{:?}", messages(&allowed));
        assert!(allowed.warn.is_empty(), "{:?}", allowed.warn);
    }

    // a failing set evaluated on this thread in between changes nothing for the shipped one
    let failing = load_dir(&[(
        "p.rego",
        "package hubgate\n\ndeny contains \"just a string\" if input.operation\n",
    )])
    .unwrap();
    assert!(failing.evaluate(raise()).is_err());
    assert!(p.evaluate(raise()).unwrap().allowed());
    assert!(!p.evaluate(suppress()).unwrap().allowed());
}

/// A reloaded set gets its own VM: two sets evaluated in turn on one thread each answer with
/// their own rules, and not with the VM the other one left behind.
#[test]
fn sets_evaluated_in_turn_on_one_thread_keep_their_own_rules() {
    let deny_all = load_dir(&[(
        "p.rego",
        "package hubgate\n\ndeny contains {\"msg\": \"closed\", \"finding\": null} if input.operation\n",
    )])
    .unwrap();
    let allow_all = load_dir(&[(
        "p.rego",
        "package hubgate\n\ndeny contains {\"msg\": \"never\", \"finding\": null} if false\n",
    )])
    .unwrap();
    let input = || doc(Role::Member, json!({}), &[], Enrichment::Complete);
    for _ in 0..3 {
        assert_eq!(messages(&deny_all.evaluate(input()).unwrap()), ["closed"]);
        assert!(allow_all.evaluate(input()).unwrap().allowed());
    }
}

/// The evaluations at load prepare the engine, which no decision pays for: held to the time
/// limit of a decision, a load failed where the set would serve (a busy node, a debug build).
/// A limit far below what preparing takes shows it: the set loads, and its decisions, held to
/// that limit, time out as they should.
#[test]
fn a_load_is_not_held_to_the_time_limit_of_one_decision() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let p = PolicySet::load(&dir, Duration::from_nanos(1)).expect("loads");
    let r = p.evaluate(doc(Role::Member, json!({}), &[], Enrichment::Complete));
    assert!(matches!(r, Err(PolicyError::Eval(_))), "{r:?}");
    let r = p.evaluate_interpreted(doc(Role::Member, json!({}), &[], Enrichment::Complete));
    assert!(matches!(r, Err(PolicyError::Eval(_))), "{r:?}");
}

/// One member-side field of a `BatchUpdateFindings` body, as the API allows it.
fn field() -> impl proptest::strategy::Strategy<Value = (&'static str, Value)> {
    use proptest::prelude::*;
    let label = prop::sample::select(vec!["INFORMATIONAL", "LOW", "MEDIUM", "HIGH", "CRITICAL"]);
    let status = prop::sample::select(vec!["NEW", "NOTIFIED", "RESOLVED", "SUPPRESSED"]);
    let verification = prop::sample::select(vec![
        "UNKNOWN",
        "TRUE_POSITIVE",
        "FALSE_POSITIVE",
        "BENIGN_POSITIVE",
    ]);
    prop_oneof![
        label.prop_map(|l| ("Severity", json!({ "Label": l }))),
        (0i64..=100).prop_map(|n| ("Severity", json!({ "Normalized": n }))),
        status.prop_map(|s| ("Workflow", json!({ "Status": s }))),
        "[a-z:0-9 ]{0,8}".prop_map(|t| ("Note", json!({"Text": t, "UpdatedBy": "u"}))),
        verification.prop_map(|v| ("VerificationState", json!(v))),
        (0i64..=100).prop_map(|n| ("Confidence", json!(n))),
        (0i64..=100).prop_map(|n| ("Criticality", json!(n))),
        prop::collection::vec("[A-Za-z/ ]{1,12}", 0..3).prop_map(|t| ("Types", json!(t))),
        prop::collection::btree_map("[a-z]{1,4}", "[a-z]{0,4}", 0..3)
            .prop_map(|m| ("UserDefinedFields", json!(m))),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
    /// On the shipped policies the served VM and the interpreter `hubgate test` runs decide
    /// every request alike: the same violations, or both an error. The shipped rules guard
    /// every value, so neither may err.
    #[test]
    fn the_vm_and_the_interpreter_decide_generated_requests_alike(
        fields in proptest::collection::vec(field(), 1..4),
        targets in proptest::collection::vec(
            (proptest::sample::select(vec![Some("222222222222"), Some("333333333333"), None]),
             proptest::sample::select(vec!["INFORMATIONAL", "LOW", "MEDIUM", "HIGH", "CRITICAL"])),
            1..4),
        admin in proptest::bool::ANY,
        phase in proptest::sample::select(vec![Enrichment::Pending, Enrichment::Complete, Enrichment::Disabled]),
    ) {
        let p = shipped_set();
        let mut body = serde_json::Map::new();
        for (name, value) in fields {
            body.insert(name.to_string(), value);
        }
        let ids: Vec<String> = (0..targets.len()).map(|i| format!("f{i}")).collect();
        let findings: Vec<(&str, Option<&str>, &str)> = ids
            .iter()
            .zip(&targets)
            .map(|(id, (account, label))| (id.as_str(), *account, *label))
            .collect();
        let role = if admin { Role::Administrator } else { Role::Member };
        let input = doc(role, Value::Object(body), &findings, phase);
        let key = |v: &Violation| format!("{}{:?}", v.msg, v.finding);
        let sorted = |d: Decision| {
            let mut deny = d.deny;
            deny.sort_by_key(key);
            deny
        };
        let vm = p.evaluate(input.clone()).map(sorted);
        let interp = p.evaluate_interpreted(input).map(sorted);
        proptest::prop_assert!(vm.is_ok() && interp.is_ok(), "{vm:?} / {interp:?}");
        proptest::prop_assert_eq!(vm.ok(), interp.ok());
    }
}

/// The shipped set, loaded once for the property test's cases.
fn shipped_set() -> &'static PolicySet {
    static SET: std::sync::OnceLock<PolicySet> = std::sync::OnceLock::new();
    SET.get_or_init(shipped)
}

/// The one refusal of a member's finding that is not its own: of another account or not found.
const NOT_MEMBERS: &str =
    "member accounts may only update findings of their own account: this account has no such finding";

/// A member's input gives another account's finding (found with hubgate's role) exactly as one
/// not found: no rule, shipped or written by an operator, can put its severity or status in an
/// answer to the member, nor tell it that the identifier exists. An administrator's input has
/// the whole state.
#[test]
fn a_members_input_withholds_another_accounts_finding_state() {
    let findings = [
        ("mine", Some("222222222222"), "HIGH"),
        ("theirs", Some("333333333333"), "CRITICAL"),
        ("gone", None, "LOW"),
    ];
    let body = json!({"Severity": {"Label": "LOW"}});
    let entry = |d: &regorus::Value, i: usize| {
        serde_json::to_value(&d["findings"][i]).expect("plain values")
    };
    let member = doc(Role::Member, body.clone(), &findings, Enrichment::Complete);
    assert_eq!(
        entry(&member, 1),
        json!({"Id": "theirs", "ProductArn": ARN, "account_id": null,
               "severity_label": null, "severity_rank": null, "workflow_status": null,
               "current": null})
    );
    let mut gone = entry(&member, 2);
    gone["Id"] = json!("theirs");
    assert_eq!(
        entry(&member, 1),
        gone,
        "another account's finding is one not found"
    );
    assert_eq!(entry(&member, 0)["severity_label"], "HIGH");
    assert_eq!(
        serde_json::to_value(&member["summary"]).unwrap(),
        json!({"accounts": ["222222222222"], "max_severity_rank": 3,
               "missing": 2, "unranked": 0})
    );
    let d = shipped().evaluate(member).unwrap();
    let mut got: Vec<(String, &str)> = d
        .deny
        .iter()
        .map(|v| {
            (
                v.finding.as_ref().unwrap()["Id"].to_string(),
                v.msg.as_str(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("\"gone\"".to_string(), NOT_MEMBERS),
            (
                "\"mine\"".to_string(),
                "member accounts may not lower a finding's severity (HIGH to LOW)"
            ),
            ("\"theirs\"".to_string(), NOT_MEMBERS),
        ]
    );
    let admin = doc(Role::Administrator, body, &findings, Enrichment::Complete);
    assert_eq!(entry(&admin, 1)["severity_label"], "CRITICAL");
    assert_eq!(entry(&admin, 1)["current"]["Severity"]["Label"], "CRITICAL");
}
