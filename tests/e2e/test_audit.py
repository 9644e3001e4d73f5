"""The audit trail: exactly one record per request, ids the caller saw, no secrets anywhere."""

import datetime as dt
import json
import re

import pytest
from botocore.exceptions import ClientError

from helpers import (
    ADMIN,
    OWN_ACCOUNT_FILTER,
    SECRETS,
    Creds,
    decision_id_of_boto,
    ident,
    wait_until,
)

SUPPRESS = {"FindingIdentifiers": [ident("f-own-high")], "Workflow": {"Status": "SUPPRESSED"},
            "Note": {"Text": "RISK-1 accepted after review", "UpdatedBy": "sec-team"}}


def boto_call(fn, **kw):
    """(decision id, HTTP status) of one boto3 call, whether it succeeds or raises."""
    try:
        resp = fn(**kw)
    except ClientError as e:
        resp = e.response
    return decision_id_of_boto(resp), resp["ResponseMetadata"]["HTTPStatusCode"]


def raw_call(resp):
    rid = resp.headers.get("x-hubgate-decision-id") or resp.headers.get("x-amzn-requestid")
    return rid, resp.status


@pytest.fixture
def battery(make_fake, make_hubgate):
    """A fresh hubgate that has served one request of every kind; returns (hubgate, calls)."""
    fake = make_fake()
    hg = make_hubgate({"server": {"max_body_bytes": 4096}}, fake=fake)
    admin, member = hg.client("admin"), hg.client("member")
    calls = [
        boto_call(admin.batch_update_findings, **SUPPRESS),                               # 200
        boto_call(member.batch_update_findings, **SUPPRESS),                              # 403
        boto_call(member.batch_update_findings, FindingIdentifiers=[ident("f-own-medium")],
                  Severity={"Normalized": 10}),                                           # 403
        boto_call(member.batch_update_findings, FindingIdentifiers=[ident("f-own-medium")],
                  Severity={"Label": "CRITICAL"}),                                        # 200
        boto_call(member.batch_update_findings, FindingIdentifiers=[ident("f-nope")],
                  Note={"Text": "t", "UpdatedBy": "m"}),                                  # 403
        boto_call(member.get_findings, MaxResults=5, Filters=OWN_ACCOUNT_FILTER),         # 200
        boto_call(admin.describe_hub),                                                    # 200
        raw_call(hg.buf(b"{not json", who="admin")),                                      # 400
        raw_call(hg.buf(b"x" * 5000, who="admin")),                                       # 413
        raw_call(hg.buf(SUPPRESS, who="admin", content_type="text/plain")),               # 415
        raw_call(hg.buf(SUPPRESS, creds=Creds(ADMIN.access_key, "wrong"))),               # 401
        raw_call(hg.buf(SUPPRESS, who=None)),                                             # 401
        raw_call(hg.send("PATCH", "//findings/batchupdate", SUPPRESS, who="admin")),      # 404
        raw_call(hg.send("POST", "/automationrules/create", {"RuleName": "r"},
                         who="admin")),                                                   # 403
    ]
    statuses = [s for _, s in calls]
    assert statuses == [200, 403, 403, 200, 403, 200, 200, 400, 413, 415, 401, 401, 404, 403]
    assert all(rid for rid, _ in calls), calls
    wait_until(lambda: len(hg.audit_records()) >= len(calls), 10, "all audit records")
    return hg, calls


def test_one_record_per_request_with_the_callers_id(battery):
    hg, calls = battery
    records = hg.audit_records()
    assert len(records) == len(calls)
    ids = [r["decision_id"] for r in records]
    assert len(set(ids)) == len(ids), "decision ids must be unique"
    by_id = {r["decision_id"]: r for r in records}
    for rid, status in calls:
        assert rid in by_id, f"no audit record for {rid}"
        assert by_id[rid]["status"] == status


def test_record_fields(battery):
    hg, calls = battery
    for rec in hg.audit_records():
        for key in ("decision_id", "timestamp", "operation", "principal", "source_ip",
                    "method", "request_path", "findings", "update", "result", "error",
                    "dry_run", "forwarded", "status", "upstream_status",
                    "upstream_request_id", "revision", "metrics"):
            assert key in rec, f"{key} missing from {rec}"
        ts = dt.datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00"))
        assert ts.tzinfo is not None
        assert abs((dt.datetime.now(dt.timezone.utc) - ts).total_seconds()) < 300
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", rec["revision"]), rec["revision"]
        assert isinstance(rec["metrics"]["timer_total_ns"], int)
        assert rec["metrics"]["timer_total_ns"] > 0
        assert rec["source_ip"] == "127.0.0.1"
        assert rec["dry_run"] is False
        assert isinstance(rec["result"]["allow"], bool)
        if rec["forwarded"]:
            assert rec["upstream_status"] == 200 and rec["upstream_request_id"]
        if rec["status"] >= 400:
            assert rec["error"]["code"] and rec["error"]["message"]
        else:
            assert rec["error"] is None

    first = hg.audit_for(calls[0][0])
    assert first["operation"] == "BatchUpdateFindings"
    assert first["method"] == "PATCH" and first["request_path"] == "/findings/batchupdate"
    assert first["findings"] == [{"ProductArn": ident("f-own-high")["ProductArn"], "Ids": ["f-own-high"]}]
    assert "SUPPRESSED" in json.dumps(first["update"])
    assert first["result"]["allow"] is True and first["result"]["violations"] == []
    lowered = hg.audit_for(calls[2][0])
    assert lowered["result"]["allow"] is False
    assert lowered["error"]["code"] == "POLICY_DENIED"
    unrouted = hg.audit_for(calls[12][0])
    assert unrouted["operation"] is None


def test_no_secret_reaches_audit_or_logs(battery):
    hg, _ = battery
    hg.stop()
    texts = {"audit": hg.audit_path.read_text(), "stderr": hg.stderr_text(),
             "stdout": (hg.workdir / "hubgate.stdout").read_text(errors="replace")}
    for where, text in texts.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} found in hubgate's {where}"


def test_graceful_stop_exits_zero_and_keeps_every_record(battery):
    hg, calls = battery
    hg.stop()
    assert hg.proc.returncode == 0, hg.stderr_text()
    assert len(hg.audit_records()) == len(calls)


def test_shared_instance_logs_hold_no_secrets(hubgate):
    """The same check on the session's shared hubgate, after whatever ran before."""
    hubgate.buf(SUPPRESS, creds=Creds(ADMIN.access_key, "wrong"))
    hubgate.buf(SUPPRESS, who="member")
    hubgate.client("admin").describe_hub()
    ok = hubgate.buf({"FindingIdentifiers": [ident("f-admin")],
                      "Note": {"Text": "t", "UpdatedBy": "u"}}, who="admin")
    hubgate.audit_for(ok.headers["x-hubgate-decision-id"])
    for where, text in {"audit": hubgate.audit_path.read_text(),
                        "stderr": hubgate.stderr_text()}.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} found in hubgate's {where}"
