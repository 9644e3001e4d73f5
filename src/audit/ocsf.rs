//! The decision record as an OCSF API Activity event (class 6003, the activity the operation's
//! name says: Read, Create, Delete, else Update) with the
//! Security Control profile: `action_id` Allowed/Denied, `disposition_id` (Logged in dry-run)
//! and `policy`. Everything hubgate knows that OCSF has no attribute for goes to `unmapped`.

use serde_json::{json, Value};

use super::Record;

/// API Activity has the Security Control profile since OCSF 1.4.0, and `PATCH` is an
/// `http_method` value since 1.6.0.
pub const OCSF_VERSION: &str = "1.6.0";

/// The API Activity activity of an operation, by the verb its name starts with. Reads
/// (GetFindings, Describe*, List*) recorded as Update made every read of findings look like a
/// change of them to a SIEM; a request no route matched has no operation: Unknown.
fn activity(operation: Option<&str>) -> (u16, &'static str) {
    let Some(op) = operation else {
        return (0, "Unknown");
    };
    let verb = op.strip_prefix("Batch").unwrap_or(op);
    let starts = |prefix: &str| {
        verb.strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()))
    };
    if ["Get", "List", "Describe"].into_iter().any(starts) {
        (2, "Read")
    } else if starts("Create") {
        (1, "Create")
    } else if starts("Delete") {
        (4, "Delete")
    } else {
        (3, "Update")
    }
}

/// The request's method as OCSF names it, or None for a method OCSF does not list.
/// `http_request.http_method` is an enum: a request with any other method (`FOO`, `patch`,
/// `PROPFIND`, which hyper accepts and routing answers 404) made an event that fails the OCSF
/// schema, which a SIEM validating on intake drops: a client without keys could keep its
/// probes out of the SIEM. Such a method is kept in `unmapped.http_method`.
fn ocsf_http_method(method: &str) -> Option<&'static str> {
    const METHODS: [&str; 9] = [
        "OPTIONS", "GET", "HEAD", "POST", "PUT", "DELETE", "TRACE", "CONNECT", "PATCH",
    ];
    METHODS.into_iter().find(|m| *m == method)
}

/// A text the record always has, unless `audit.mask` erased it (read back as empty).
fn present(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

/// Maps one decision record, with the policy input if it is kept and the pointers `audit.mask`
/// erased, to an OCSF event.
pub fn event(record: &Record, input: Option<&Value>, erased: &[Value], region: &str) -> Value {
    let allow = record.result.allow;
    let (dry_run, forwarded, status) = (record.dry_run, record.forwarded, record.status);
    let succeeded = (200..300).contains(&status);
    let time_ms = time::OffsetDateTime::parse(
        &record.timestamp,
        &time::format_description::well_known::Rfc3339,
    )
    .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
    .unwrap_or(0);
    let decision_id = present(&record.decision_id);
    let error = record.error.as_ref();
    let violations = &record.result.violations;
    let (activity_id, activity_name) = activity(record.operation.as_deref());

    // A write sent without an answer may have been applied: its action is the policy's, and
    // its disposition is not Blocked, which a SIEM reads as "nothing happened".
    let unknown = record.outcome_unknown && !forwarded;
    // Allowed (1) / Denied (2) is the policy's verdict; disposition says what happened to the
    // request: Allowed (1), Blocked (2), Logged (17) when dry-run let a denial through, or
    // Unknown (0) when it was sent and Security Hub never answered.
    //
    // An error raised after the request went out (Security Hub throttled the forward and
    // hubgate answered 429 THROTTLED, or refused hubgate's credentials) is not a verdict: the
    // policy allowed a request that was sent. Counted as Denied (severity Medium), a SIEM
    // tallied every throttled forward as a policy denial.
    let sent = forwarded || unknown;
    let (action_id, action) = if allow && (error.is_none() || sent) {
        (1, "Allowed")
    } else {
        (2, "Denied")
    };
    let (disposition_id, disposition) = if dry_run && !allow && forwarded {
        (17, "Logged")
    } else if forwarded {
        (1, "Allowed")
    } else if unknown {
        (0, "Unknown")
    } else {
        (2, "Blocked")
    };

    let actor = match &record.principal {
        Some(p) => json!({
            "user": {
                "uid": present(&p.id),
                "name": present(&p.id),
                "type": p.role,
                "account": {"uid": present(&p.account_id), "type": "AWS Account", "type_id": 10},
            }
        }),
        // Masked whole, the caller is not known to the event, but it was authenticated.
        None if erased.iter().any(|p| p == "/principal") => json!({"user": {"name": "(erased)"}}),
        None => json!({"user": {"name": "unauthenticated"}}),
    };
    let resources: Vec<Value> = record
        .findings
        .iter()
        .flat_map(|group| {
            group.ids.iter().map(move |id| {
                let mut resource = json!({"uid": present(id), "type": "AwsSecurityFinding",
                       "data": {"ProductArn": present(&group.product_arn)}});
                // The account the request named for the finding (V2, imports), as the actor's
                // account is written: without it a V2 finding is named by two of its three
                // identifiers.
                if let Some(account) = group.account_id.as_deref() {
                    resource["owner"] = json!({"account": {"uid": account,
                                               "type": "AWS Account", "type_id": 10}});
                }
                resource
            })
        })
        .collect();
    let status_detail = match error {
        Some(e) => present(&e.message).map(str::to_owned),
        None if !violations.is_empty() => Some(
            violations
                .iter()
                .filter_map(|v| present(&v.msg))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        None => None,
    };

    let mut event = json!({
        "class_uid": 6003,
        "class_name": "API Activity",
        "category_uid": 6,
        "category_name": "Application Activity",
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": 600300 + u32::from(activity_id),
        "type_name": format!("API Activity: {activity_name}"),
        "severity_id": if action_id == 1 { 1 } else { 3 },
        "severity": if action_id == 1 { "Informational" } else { "Medium" },
        "time": time_ms,
        "status_id": if succeeded { 1 } else { 2 },
        "status": if succeeded { "Success" } else { "Failure" },
        "status_code": status.to_string(),
        "status_detail": status_detail,
        "action_id": action_id,
        "action": action,
        "disposition_id": disposition_id,
        "disposition": disposition,
        "policy": {
            "name": "hubgate",
            "uid": present(&record.revision),
            "desc": "data.hubgate.deny",
        },
        "metadata": {
            "version": OCSF_VERSION,
            "uid": decision_id,
            "correlation_uid": record.upstream_request_id,
            "product": {"name": "hubgate", "vendor_name": "hubgate", "version": env!("CARGO_PKG_VERSION")},
            "profiles": ["cloud", "security_control"],
            "log_name": "hubgate-decisions",
        },
        "cloud": {"provider": "AWS", "region": region},
        "actor": actor,
        "api": {
            "operation": record.operation.as_deref().unwrap_or("unknown"),
            "service": {"name": "securityhub"},
            "request": {"uid": decision_id},
            "response": {
                "code": status,
                "error": error.and_then(|e| present(&e.code)),
                "error_message": error.and_then(|e| present(&e.message)),
            },
        },
        "src_endpoint": {"ip": present(&record.source_ip)},
        "http_request": {
            "http_method": ocsf_http_method(&record.method),
            "url": {"path": present(&record.request_path)},
        },
        "resources": resources,
    });
    prune_nulls(&mut event);
    // `unmapped` keeps hubgate's data as it is, nulls included, but for its own top level.
    let mut unmapped = json!({
        "dry_run": dry_run,
        "forwarded": forwarded,
        "outcome_unknown": unknown.then_some(true),
        "partial": record.partial,
        "settling": record.settling,
        "withheld": record.withheld,
        "upstream_status": record.upstream_status,
        "violations": violations,
        "warnings": record.result.warnings,
        "update": record.update,
        "metrics": record.metrics,
        "input": input,
        "erased": (!erased.is_empty()).then_some(erased),
        "http_method": present(&record.method).filter(|m| ocsf_http_method(m).is_none()),
    });
    if let Some(u) = unmapped.as_object_mut() {
        u.retain(|_, v| !v.is_null());
    }
    if let Some(obj) = event.as_object_mut() {
        obj.insert("unmapped".into(), unmapped);
    }
    event
}

/// OCSF attributes are present with a value or absent; a JSON null is a schema violation.
fn prune_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            for v in map.values_mut() {
                prune_nulls(v);
            }
            map.retain(|_, v| !matches!(v, Value::Object(o) if o.is_empty()));
        }
        Value::Array(items) => items.iter_mut().for_each(prune_nulls),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{ProductFindings, RecordPrincipal, RecordViolation, Verdict};
    use crate::identity::Role;

    fn record(allow: bool, dry_run: bool, forwarded: bool, status: u16) -> Record {
        Record {
            decision_id: "d-1".into(),
            timestamp: "2026-11-24T02:00:00.5Z".into(),
            operation: Some("BatchUpdateFindings".into()),
            principal: Some(RecordPrincipal {
                id: "m".into(),
                account_id: "222222222222".into(),
                role: Some(Role::Member),
            }),
            source_ip: "10.0.0.1".into(),
            method: "PATCH".into(),
            request_path: "/findings/batchupdate".into(),
            findings: vec![ProductFindings {
                product_arn: "p".into(),
                ids: vec!["f".into()],
                account_id: None,
            }],
            result: Verdict {
                allow,
                violations: if allow {
                    vec![]
                } else {
                    vec![RecordViolation {
                        msg: "no".into(),
                        ..RecordViolation::default()
                    }]
                },
                warnings: vec![],
            },
            dry_run,
            forwarded,
            status,
            revision: "sha256:ab".into(),
            ..Record::default()
        }
    }

    #[test]
    fn allowed_request_is_an_allowed_update() {
        let e = event(&record(true, false, true, 200), None, &[], "us-east-1");
        assert_eq!(e["class_uid"], 6003);
        assert_eq!(e["activity_id"], 3);
        assert_eq!(e["type_uid"], 600303);
        assert_eq!(e["time"], 1795485600500i64);
        assert_eq!(e["action_id"], 1);
        assert_eq!(e["disposition_id"], 1);
        assert_eq!(e["metadata"]["uid"], "d-1");
        assert_eq!(e["actor"]["user"]["account"]["uid"], "222222222222");
        assert_eq!(e["actor"]["user"]["type"], "member");
        assert_eq!(e["resources"][0]["uid"], "f");
        assert_eq!(e["resources"][0]["data"]["ProductArn"], "p");
        // an allowed update has no error: the attributes are absent, not null
        assert!(e["api"]["response"].get("error").is_none());
        assert!(e["metadata"].get("correlation_uid").is_none());
        assert!(e.get("status_detail").is_none());
        assert!(e["unmapped"].get("erased").is_none());
    }

    /// A finding the request named with its account (V2's CloudAccountUid) names that account
    /// as the resource's owner; one named without (BatchUpdateFindings) has no owner.
    #[test]
    fn a_claimed_account_is_the_resource_s_owner() {
        let mut r = record(true, false, true, 200);
        r.findings.push(ProductFindings {
            product_arn: "p".into(),
            ids: vec!["g".into()],
            account_id: Some("333333333333".into()),
        });
        let e = event(&r, None, &[], "us-east-1");
        assert!(e["resources"][0].get("owner").is_none());
        assert_eq!(e["resources"][1]["uid"], "g");
        assert_eq!(e["resources"][1]["owner"]["account"]["uid"], "333333333333");
    }

    #[test]
    fn a_masked_caller_is_not_reported_unauthenticated() {
        let mut r = record(true, false, true, 200);
        r.principal = None;
        let erased = [Value::from("/principal")];
        let e = event(&r, None, &erased, "us-east-1");
        assert_eq!(e["actor"]["user"]["name"], "(erased)");
        let e = event(&r, None, &[], "us-east-1");
        assert_eq!(e["actor"]["user"]["name"], "unauthenticated");
    }

    /// A method OCSF's enum does not list is not `http_method` (the event would fail the
    /// schema) but `unmapped.http_method`; one it lists is not repeated there.
    #[test]
    fn a_method_ocsf_does_not_list_is_unmapped() {
        for (method, mapped, unmapped) in [
            ("PATCH", Some("PATCH"), None),
            ("patch", None, Some("patch")),
            ("PROPFIND", None, Some("PROPFIND")),
        ] {
            let mut r = record(false, false, false, 404);
            r.method = method.into();
            let e = event(&r, None, &[], "us-east-1");
            assert_eq!(e["http_request"]["http_method"].as_str(), mapped, "{e}");
            assert_eq!(e["unmapped"]["http_method"].as_str(), unmapped, "{e}");
        }
    }

    #[test]
    fn the_activity_is_the_operation_s_verb() {
        for (op, id) in [
            (Some("BatchUpdateFindings"), 3),
            (Some("BatchUpdateFindingsV2"), 3),
            (Some("UpdateFindings"), 3),
            (Some("BatchImportFindings"), 3),
            (Some("GetFindings"), 2),
            (Some("BatchGetSecurityControls"), 2),
            (Some("ListMembers"), 2),
            (Some("DescribeHub"), 2),
            (Some("CreateInsight"), 1),
            (Some("DeleteInsight"), 4),
            (Some("BatchDeleteAutomationRules"), 4),
            (Some("EnableSecurityHub"), 3),
            (Some("Getaway"), 3),
            (None, 0),
        ] {
            let mut r = record(true, false, true, 200);
            r.operation = op.map(Into::into);
            let e = event(&r, None, &[], "us-east-1");
            assert_eq!(e["activity_id"], id, "{op:?}");
            assert_eq!(e["type_uid"], 600300 + id, "{op:?}");
            assert_eq!(
                e["type_name"],
                format!(
                    "API Activity: {}",
                    e["activity_name"].as_str().unwrap_or("")
                ),
            );
        }
    }

    #[test]
    fn denial_and_dry_run_dispositions() {
        let denied = event(&record(false, false, false, 403), None, &[], "us-east-1");
        assert_eq!(denied["action_id"], 2);
        assert_eq!(denied["disposition_id"], 2);
        assert_eq!(denied["status_detail"], "no");
        assert_eq!(denied["unmapped"]["violations"][0]["msg"], "no");
        let logged = event(&record(false, true, true, 200), None, &[], "us-east-1");
        assert_eq!(logged["action_id"], 2);
        assert_eq!(logged["disposition_id"], 17);
        assert_eq!(logged["disposition"], "Logged");
    }

    #[test]
    fn a_forward_security_hub_throttled_is_not_a_policy_denial() {
        let mut throttled = record(true, false, true, 429);
        throttled.upstream_status = Some(429);
        throttled.error = Some(crate::audit::RecordError {
            code: "THROTTLED".into(),
            message: "Security Hub throttled hubgate's BatchUpdateFindings call".into(),
        });
        let e = event(&throttled, None, &[], "us-east-1");
        assert_eq!(
            (e["action"].as_str(), e["disposition"].as_str()),
            (Some("Allowed"), Some("Allowed"))
        );
        assert_eq!(
            (e["severity_id"].as_i64(), e["status_id"].as_i64()),
            (Some(1), Some(2))
        );
        // hubgate's own pacing refusing it before it went out is a refusal
        throttled.forwarded = false;
        throttled.upstream_status = None;
        let e = event(&throttled, None, &[], "us-east-1");
        assert_eq!(
            (e["action"].as_str(), e["disposition"].as_str()),
            (Some("Denied"), Some("Blocked"))
        );
    }

    #[test]
    fn a_write_sent_without_an_answer_is_allowed_with_an_unknown_outcome() {
        let mut sent = record(true, false, false, 504);
        sent.outcome_unknown = true;
        sent.error = Some(crate::audit::RecordError {
            code: "UPSTREAM_TIMEOUT".into(),
            message: "late".into(),
        });
        let e = event(&sent, None, &[], "us-east-1");
        assert_eq!(
            (e["action_id"].as_i64(), e["disposition_id"].as_i64()),
            (Some(1), Some(0))
        );
        assert_eq!(e["disposition"], "Unknown");
        assert_eq!(e["status_id"], 2);
        assert_eq!(e["unmapped"]["outcome_unknown"], true);
        // the same failure before anything was sent is a refusal
        sent.outcome_unknown = false;
        let e = event(&sent, None, &[], "us-east-1");
        assert_eq!(
            (e["action_id"].as_i64(), e["disposition_id"].as_i64()),
            (Some(2), Some(2))
        );
        assert!(e["unmapped"].get("outcome_unknown").is_none());
    }
}
