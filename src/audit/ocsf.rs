//! The decision record as an OCSF API Activity event (class 6003, activity Update) with the
//! Security Control profile: `action_id` Allowed/Denied, `disposition_id` (Logged in dry-run)
//! and `policy`. Everything hubgate knows that OCSF has no attribute for goes to `unmapped`.

use serde_json::{json, Value};

/// API Activity has the Security Control profile since OCSF 1.4.0, and `PATCH` is an
/// `http_method` value since 1.6.0.
pub const OCSF_VERSION: &str = "1.6.0";

/// Maps one hubgate record (as built by the proxy) to an OCSF event.
pub fn event(record: &Value, region: &str) -> Value {
    let allow = record
        .pointer("/result/allow")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let dry_run = record
        .get("dry_run")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let forwarded = record
        .get("forwarded")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let status = record.get("status").and_then(Value::as_u64).unwrap_or(0);
    let succeeded = (200..300).contains(&status);
    let time_ms = record
        .get("timestamp")
        .and_then(Value::as_str)
        .and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .unwrap_or(0);
    let decision_id = record.get("decision_id").cloned().unwrap_or(Value::Null);
    let error = record.get("error").filter(|e| !e.is_null());
    let violations = record
        .pointer("/result/violations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();

    // Allowed (1) / Denied (2) is the policy's verdict; disposition says what happened to the
    // request: Allowed (1), Blocked (2), or Logged (17) when dry-run let a denial through.
    let (action_id, action) = if allow && error.is_none() {
        (1, "Allowed")
    } else {
        (2, "Denied")
    };
    let (disposition_id, disposition) = if dry_run && !allow && forwarded {
        (17, "Logged")
    } else if forwarded {
        (1, "Allowed")
    } else {
        (2, "Blocked")
    };

    let principal = record.get("principal").filter(|p| !p.is_null());
    let actor = match principal {
        Some(p) => json!({
            "user": {
                "uid": p.get("id"),
                "name": p.get("id"),
                "type": p.get("role"),
                "account": {"uid": p.get("account_id"), "type": "AWS Account", "type_id": 10},
            }
        }),
        None => json!({"user": {"name": "unauthenticated"}}),
    };
    // The record groups the findings by product: [{ProductArn, Ids}].
    let resources: Vec<Value> = record
        .get("findings")
        .and_then(Value::as_array)
        .map(|groups| {
            groups
                .iter()
                .flat_map(|g| {
                    let arn = g.get("ProductArn");
                    g.get("Ids")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .map(move |id| {
                            json!({"uid": id, "type": "AwsSecurityFinding",
                                   "data": {"ProductArn": arn}})
                        })
                })
                .collect()
        })
        .unwrap_or_default();
    let status_detail = match (error, violations.is_empty()) {
        (Some(e), _) => e.get("message").cloned().unwrap_or(Value::Null),
        (None, false) => Value::from(
            violations
                .iter()
                .filter_map(|v| v.get("msg").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        (None, true) => Value::Null,
    };

    let mut event = json!({
        "class_uid": 6003,
        "class_name": "API Activity",
        "category_uid": 6,
        "category_name": "Application Activity",
        "activity_id": 3,
        "activity_name": "Update",
        "type_uid": 600303,
        "type_name": "API Activity: Update",
        "severity_id": if action_id == 1 { 1 } else { 3 },
        "severity": if action_id == 1 { "Informational" } else { "Medium" },
        "time": time_ms,
        "status_id": if succeeded { 1 } else { 2 },
        "status": if succeeded { "Success" } else { "Failure" },
        "status_code": status.to_string(),
        "action_id": action_id,
        "action": action,
        "disposition_id": disposition_id,
        "disposition": disposition,
        "policy": {
            "name": "hubgate",
            "uid": record.get("revision"),
            "desc": "data.hubgate.deny",
        },
        "metadata": {
            "version": OCSF_VERSION,
            "uid": decision_id,
            "correlation_uid": record.get("upstream_request_id"),
            "product": {"name": "hubgate", "vendor_name": "hubgate", "version": env!("CARGO_PKG_VERSION")},
            "profiles": ["cloud", "security_control"],
            "log_name": "hubgate-decisions",
        },
        "cloud": {"provider": "AWS", "region": region},
        "actor": actor,
        "api": {
            "operation": record.get("operation").cloned().filter(|o| !o.is_null()).unwrap_or(Value::from("unknown")),
            "service": {"name": "securityhub"},
            "request": {"uid": decision_id},
            "response": {
                "code": status,
                "error": error.and_then(|e| e.get("code")),
                "error_message": error.and_then(|e| e.get("message")),
            },
        },
        "src_endpoint": {"ip": record.get("source_ip")},
        "http_request": {
            "http_method": record.get("method"),
            "url": {"path": record.get("request_path")},
        },
        "resources": resources,
        "unmapped": {
            "dry_run": dry_run,
            "forwarded": forwarded,
            "partial": record.get("partial"),
            "upstream_status": record.get("upstream_status"),
            "violations": violations,
            "warnings": record.pointer("/result/warnings"),
            "update": record.get("update"),
            "metrics": record.get("metrics"),
        },
    });
    if let Some(obj) = event.as_object_mut() {
        if let Some(input) = record.get("input") {
            obj["unmapped"]["input"] = input.clone();
        }
        if status_detail.is_string() {
            obj.insert("status_detail".into(), status_detail);
        }
    }
    let mut unmapped = event
        .as_object_mut()
        .and_then(|o| o.remove("unmapped"))
        .unwrap_or(Value::Null);
    prune_nulls(&mut event);
    // `unmapped` keeps hubgate's data as it is, nulls included.
    if let Some(obj) = event.as_object_mut() {
        if let Some(u) = unmapped.as_object_mut() {
            u.retain(|_, v| !v.is_null());
        }
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

    fn record(allow: bool, dry_run: bool, forwarded: bool, status: u16) -> Value {
        json!({
            "decision_id": "d-1", "timestamp": "2026-11-24T02:00:00.5Z",
            "operation": "BatchUpdateFindings",
            "principal": {"id": "m", "account_id": "222222222222", "role": "member"},
            "source_ip": "10.0.0.1", "method": "PATCH", "request_path": "/findings/batchupdate",
            "findings": [{"ProductArn": "p", "Ids": ["f"]}],
            "result": {"allow": allow, "violations": if allow { json!([]) } else { json!([{"msg": "no", "finding": null}]) }, "warnings": []},
            "error": null, "dry_run": dry_run, "forwarded": forwarded, "status": status,
            "revision": "sha256:ab",
        })
    }

    #[test]
    fn allowed_request_is_an_allowed_update() {
        let e = event(&record(true, false, true, 200), "us-east-1");
        assert_eq!(e["class_uid"], 6003);
        assert_eq!(e["activity_id"], 3);
        assert_eq!(e["type_uid"], 600303);
        assert_eq!(e["time"], 1795485600500i64);
        assert_eq!(e["action_id"], 1);
        assert_eq!(e["disposition_id"], 1);
        assert_eq!(e["metadata"]["uid"], "d-1");
        assert_eq!(e["actor"]["user"]["account"]["uid"], "222222222222");
        assert_eq!(e["resources"][0]["uid"], "f");
        // an allowed update has no error: the attributes are absent, not null
        assert!(e["api"]["response"].get("error").is_none());
        assert!(e["metadata"].get("correlation_uid").is_none());
    }

    #[test]
    fn denial_and_dry_run_dispositions() {
        let denied = event(&record(false, false, false, 403), "us-east-1");
        assert_eq!(denied["action_id"], 2);
        assert_eq!(denied["disposition_id"], 2);
        assert_eq!(denied["status_detail"], "no");
        let logged = event(&record(false, true, true, 200), "us-east-1");
        assert_eq!(logged["action_id"], 2);
        assert_eq!(logged["disposition_id"], 17);
        assert_eq!(logged["disposition"], "Logged");
    }
}
