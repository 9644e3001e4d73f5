"""audit.format = "ocsf": API Activity (6003) events validated against the OCSF schema.

The schema comes from the `ocsf-json-schema` package, which ships the OCSF schema exports
(1.0.0 to 1.8.0) and turns a class plus profiles into a Draft 2020-12 JSON Schema, offline.
Each event is validated against the OCSF version and profiles it declares in `metadata`."""

from __future__ import annotations

import json
import time

import jsonschema
import pytest
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema, get_packaged_versions

from helpers import ADMIN_ACCOUNT, MEMBER_ACCOUNT, audit_verify, ident

SUPPRESS = {"FindingIdentifiers": [ident("f-own-high")], "Workflow": {"Status": "SUPPRESSED"},
            "Note": {"Text": "RISK-1 accepted after review", "UpdatedBy": "sec-team"}}


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    """{kind: (event, decision id the caller saw, hubgate)} for allowed, denied, dry-run-denied."""
    from helpers import SEED, FakeUpstream, Hubgate

    base = tmp_path_factory.mktemp("ocsf")
    fake = FakeUpstream(base / "fake.log").start()
    fake.add_findings(SEED)
    enforce = Hubgate(base / "enforce", fake.endpoint, {"audit": {"format": "ocsf"}}, fake=fake)
    dry = Hubgate(base / "dry", fake.endpoint,
                  {"audit": {"format": "ocsf"}, "policy": {"mode": "dry-run"}}, fake=fake)
    try:
        enforce.start()
        dry.start()
        allowed = enforce.buf(SUPPRESS, who="admin")
        assert allowed.status == 200, allowed.text
        fake.add_findings(SEED)  # un-suppress
        denied = enforce.buf(SUPPRESS, who="member")
        assert denied.status == 403, denied.text
        logged = dry.buf(SUPPRESS, who="member")
        assert logged.status == 200, logged.text
        calls = {
            "allowed": (allowed.headers["x-hubgate-decision-id"], enforce),
            "denied": (denied.headers["x-amzn-requestid"], enforce),
            "dry_run_denied": (logged.headers["x-hubgate-decision-id"], dry),
        }
        out = {}
        for kind, (rid, hg) in calls.items():
            deadline = time.monotonic() + 5
            while True:
                recs = [r for r in hg.audit_records() if r.get("metadata", {}).get("uid") == rid]
                if recs or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert len(recs) == 1, f"{kind}: {len(recs)} OCSF events for {rid}"
            out[kind] = (recs[0], rid, hg)
        yield out
    finally:
        enforce.stop()
        dry.stop()
        fake.stop()


KINDS = ["allowed", "denied", "dry_run_denied"]


def schema_for(event: dict) -> dict:
    version = event["metadata"]["version"]
    assert version in get_packaged_versions(), f"unknown OCSF version {version}"
    ocsf = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=version))
    name = ocsf.lookup_class_name_from_uid(event["class_uid"])
    assert name == "api_activity"
    return ocsf.get_class_schema(class_name=name, profiles=event["metadata"].get("profiles", []))


@pytest.mark.parametrize("kind", KINDS)
def test_event_validates_against_the_declared_ocsf_schema(events, kind):
    event, _, _ = events[kind]
    # `chain` is hubgate's tamper-evidence envelope around the event, not an OCSF attribute
    assert {"seq", "prev", "hash"} <= set(event["chain"])
    body = {k: v for k, v in event.items() if k != "chain"}
    validator = jsonschema.Draft202012Validator(schema_for(event))
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
    assert not errors, (f"OCSF {event['metadata']['version']} "
                        f"profiles={event['metadata'].get('profiles')}:\n" + "\n".join(
                            f"  /{'/'.join(map(str, e.absolute_path))}: {e.message}"
                            for e in errors))


@pytest.mark.parametrize("kind", KINDS)
def test_event_values(events, kind):
    event, rid, hg = events[kind]
    assert event["class_uid"] == 6003 and event["category_uid"] == 6
    assert event["activity_id"] == 3
    assert event["type_uid"] == event["class_uid"] * 100 + event["activity_id"] == 600303
    now_ms = time.time() * 1000
    assert isinstance(event["time"], int) and abs(now_ms - event["time"]) < 120_000, event["time"]
    assert event["metadata"]["uid"] == rid
    assert event["api"]["request"]["uid"] == rid
    assert event["api"]["operation"] == "BatchUpdateFindings"
    assert event["cloud"] == {"provider": "AWS", "region": "us-east-1"}
    revision = hg.admin("/readyz").json()["checks"]["policy"]["revision"]
    assert event["policy"]["uid"] == revision
    assert event["resources"][0]["uid"] == "f-own-high"
    assert event["src_endpoint"]["ip"] == "127.0.0.1"
    account = event["actor"]["user"]["account"]
    want = {"allowed": (1, 1, 200, ADMIN_ACCOUNT), "denied": (2, 2, 403, MEMBER_ACCOUNT),
            "dry_run_denied": (2, 17, 200, MEMBER_ACCOUNT)}[kind]
    assert (event["action_id"], event["disposition_id"], event["api"]["response"]["code"],
            account["uid"]) == want, json.dumps(event)[:2000]
    assert event["action"] == {1: "Allowed", 2: "Denied"}[event["action_id"]]
    assert event["disposition"] == {1: "Allowed", 2: "Blocked", 17: "Logged"}[
        event["disposition_id"]]
    assert event["status_id"] == (1 if want[2] == 200 else 2)
    if kind != "allowed":
        assert "may not suppress" in event["status_detail"]
    assert event["unmapped"]["dry_run"] is (kind == "dry_run_denied")
    assert event["unmapped"]["forwarded"] is (kind != "denied")
    if event["unmapped"]["forwarded"]:
        assert event["metadata"]["correlation_uid"], "the upstream request id"


def test_ocsf_log_chain_verifies(events):
    for hg in {id(h): h for _, _, h in events.values()}.values():
        records = hg.audit_records()
        assert records and all(r["class_uid"] == 6003 for r in records)
        out = audit_verify(hg.audit_path)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"intact: {len(records)} records" in out.stdout
