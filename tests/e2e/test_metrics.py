"""Admin endpoints: /metrics (OpenMetrics), /readyz and /healthz, SIGHUP policy reload, JSON logs."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from helpers import POLICY_DIR, UPSTREAM_SECRET, hubgate_env, ident, wait_until

SUPPRESS = {"FindingIdentifiers": [ident("f-own-high")], "Workflow": {"Status": "SUPPRESSED"}}
NOTE_OWN = {"FindingIdentifiers": [ident("f-own-high")], "Note": {"Text": "t", "UpdatedBy": "m"}}
BUF = "BatchUpdateFindings"


def scrape(hg) -> dict:
    """{(sample name, frozenset(labels)): value} from one /metrics scrape."""
    resp = hg.admin("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/openmetrics-text")
    assert resp.text.endswith("# EOF\n")
    out = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def series(samples: dict, name: str) -> list[dict]:
    return [dict(labels) for (n, labels) in samples if n == name]


def req(decision: str, status: int, operation: str = BUF) -> dict:
    return {"operation": operation, "decision": decision, "status": str(status)}


def test_metrics_move_with_requests(make_fake, make_hubgate):
    fake = make_fake()
    hg = make_hubgate({"enrichment": {"enabled": True, "cache_ttl_ms": 60000}}, fake=fake)
    before = scrape(hg)

    denied = hg.buf(SUPPRESS, who="member")
    assert denied.status == 403
    hg.audit_for(denied.headers["x-amzn-requestid"])
    mid = scrape(hg)
    assert (value(mid, "hubgate_requests_total", **req("deny", 403))
            - value(before, "hubgate_requests_total", **req("deny", 403))) == 1
    assert value(mid, "hubgate_requests_total", **req("allow", 200)) == value(
        before, "hubgate_requests_total", **req("allow", 200))

    allowed = hg.buf(NOTE_OWN, who="member")
    assert allowed.status == 200
    # the allowed note is looked up once and written through to the cache when Security Hub
    # processes it, so both lowerings that follow are judged on cached state
    lower = {"FindingIdentifiers": [ident("f-own-high")], "Severity": {"Label": "LOW"}}
    for _ in range(2):
        r = hg.buf(lower, who="member")
        assert r.status == 403 and "lower" in r.text, r.text
    hg.audit_for(r.headers["x-amzn-requestid"])
    after = scrape(hg)

    def moved(name, **labels):
        return value(after, name, **labels) - value(mid, name, **labels)

    assert moved("hubgate_requests_total", **req("allow", 200)) == 1
    assert moved("hubgate_requests_total", **req("deny", 403)) == 2
    assert moved("hubgate_request_duration_seconds_count") == 3
    assert moved("hubgate_policy_duration_seconds_count") == 3
    assert moved("hubgate_upstream_duration_seconds_count") == 1
    assert moved("hubgate_request_duration_seconds_sum") > 0
    assert moved("hubgate_enrichment_lookups_total") == 1
    assert moved("hubgate_enrichment_cache_misses_total") == 1
    assert moved("hubgate_enrichment_cache_hits_total") == 2
    assert value(after, "hubgate_enrichment_cache_entries") == 1
    assert value(after, "hubgate_enrichment_cache_bytes") > 0
    assert value(after, "hubgate_audit_records_total") - value(
        before, "hubgate_audit_records_total") == 4
    assert value(after, "hubgate_audit_write_errors_total") == 0
    assert len(fake.buf_calls()) == 1

    revisions = series(after, "hubgate_policy_revision_info")
    assert len(revisions) == 1, revisions
    ready = hg.admin("/readyz").json()
    assert revisions[0]["revision"] == ready["checks"]["policy"]["revision"]
    assert value(after, "hubgate_policy_revision_info", **revisions[0]) == 1
    assert value(after, "hubgate_policy_last_reload_success_timestamp_seconds") > 0
    assert value(after, "hubgate_policy_last_reload_failure_timestamp_seconds") == 0
    # no secret in the exposition
    assert UPSTREAM_SECRET not in hg.admin("/metrics").text


def test_readyz_checks_and_healthz(hubgate):
    r = hubgate.admin("/readyz")
    assert r.status_code == 200
    body = r.json()
    assert body["ready"] is True
    checks = body["checks"]
    assert {"policy", "audit", "upstream_credentials"} <= set(checks)
    assert all(checks[k]["ok"] is True for k in ("policy", "audit", "upstream_credentials"))
    assert checks["policy"]["revision"].startswith("sha256:")
    assert checks["policy"]["last_reload_error"] is None
    assert hubgate.admin("/healthz").status_code == 200
    assert hubgate.admin("/nowhere").status_code == 404


def test_not_ready_without_upstream_credentials(make_fake, make_hubgate):
    env = {k: v for k, v in hubgate_env().items() if not k.startswith("AWS_")}
    env.update({"AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent",
                "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_REGION": "us-east-1"})
    fake = make_fake()
    hg = make_hubgate({}, fake=fake, env=env, start=False)
    hg.start(ready_path="/healthz")
    r = hg.admin("/readyz")
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["ready"] is False
    assert body["checks"]["upstream_credentials"]["ok"] is False
    assert body["checks"]["upstream_credentials"]["error"]
    assert body["checks"]["policy"]["ok"] is True and body["checks"]["audit"]["ok"] is True
    assert hg.admin("/healthz").status_code == 200


# ---------------------------------------------------------------------------
# SIGHUP reload

TEST_RULE = """package hubgate

deny contains {"msg": "test rule", "finding": null} if {
\tinput.principal.role == "member"
\t"Note.Text" in input.update.fields
}
"""


def test_sighup_reload_keeps_old_set_on_error_and_applies_fixed_set(make_fake, make_hubgate,
                                                                      tmp_path):
    policies = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, policies)
    fake = make_fake()
    hg = make_hubgate({"policy": {"dir": str(policies), "watch_interval_ms": 0}}, fake=fake)
    rev0 = hg.admin("/readyz").json()["checks"]["policy"]["revision"]
    rule_file = policies / "hubgate.rego"
    good = rule_file.read_text()

    # 1. a syntax error: the old set stays in force, readiness says why
    rule_file.write_text(good + "\ndeny contains {\"msg\": if {\n")
    hg.proc.send_signal(signal.SIGHUP)

    def failed():
        r = hg.admin("/readyz")
        return r.json()["checks"]["policy"]["last_reload_error"] and r

    r = wait_until(failed, 10, "/readyz to report the broken reload")
    # the last good set still serves, so the replica stays ready and says what failed
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["checks"]["policy"]["stale"] is True
    assert "hubgate.rego" in (body["checks"]["policy"]["last_reload_error"] or ""), body
    assert body["checks"]["policy"]["revision"] == rev0
    denied = hg.buf(SUPPRESS, who="member")
    assert denied.status == 403 and "may not suppress" in denied.text
    assert hg.buf(NOTE_OWN, who="member").status == 200
    m = scrape(hg)
    assert value(m, "hubgate_policy_last_reload_failure_timestamp_seconds") > 0
    assert series(m, "hubgate_policy_revision_info") == [{"revision": rev0}]

    # 2. fixed: ready again, same revision
    rule_file.write_text(good)
    hg.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: hg.admin("/readyz").json()["checks"]["policy"]["stale"] is False, 10,
               "/readyz to clear the reload error after the fix")
    assert hg.admin("/readyz").json()["checks"]["policy"]["revision"] == rev0

    # 3. a new rule takes effect after SIGHUP, with a new revision everywhere
    (policies / "extra.rego").write_text(TEST_RULE)
    assert hg.buf(NOTE_OWN, who="member").status == 200  # not before the signal
    hg.proc.send_signal(signal.SIGHUP)
    rev1 = wait_until(lambda: (r := hg.admin("/readyz").json()["checks"]["policy"]["revision"])
                      != rev0 and r, 10, "a new revision")
    resp = hg.buf(NOTE_OWN, who="member")
    assert resp.status == 403 and "test rule" in resp.text, resp.text
    assert hg.audit_for(resp.headers["x-amzn-requestid"])["revision"] == rev1
    assert series(scrape(hg), "hubgate_policy_revision_info") == [{"revision": rev1}]
    assert hg.admin("/readyz").status_code == 200
    # the administrator is not affected by the member rule
    assert hg.buf({**NOTE_OWN}, who="admin").status == 200


# ---------------------------------------------------------------------------
# JSON logs


def test_json_logs_carry_the_decision_id(make_fake, make_hubgate):
    fake = make_fake()
    # per-request lines are debug level
    hg = make_hubgate({"log": {"format": "json"}}, fake=fake,
                      env={**hubgate_env(), "RUST_LOG": "info,hubgate=debug"})
    ok = hg.buf(NOTE_OWN, who="member")
    denied = hg.buf(SUPPRESS, who="member")
    assert ok.status == 200 and denied.status == 403
    hg.stop()
    lines = [line for line in hg.stderr_text().splitlines() if line.strip()]
    assert lines
    objs = []
    for line in lines:
        try:
            objs.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON log line: {line!r}")
    assert all(isinstance(o, dict) and "level" in o and "timestamp" in o for o in objs)

    def request_line(rid):
        hits = [o for o in objs if o.get("fields", {}).get("message") == "request"
                and o.get("fields", {}).get("decision_id") == rid]
        assert len(hits) == 1, f"per-request log line for {rid}: {hits}"
        return hits[0]["fields"]

    assert request_line(ok.headers["x-hubgate-decision-id"])["status"] == 200
    assert request_line(denied.headers["x-amzn-requestid"])["status"] == 403


@pytest.mark.parametrize("workers", [1, 3])
def test_worker_threads_sets_the_runtime_and_is_reported(make_fake, make_hubgate, workers):
    """server.worker_threads is the number of threads that run requests (what
    hubgate_runtime_workers reports), whatever the machine's CPU count; requests are served
    and judged on them as on the default."""
    fake = make_fake()
    hg = make_hubgate({"server": {"worker_threads": workers}}, fake=fake)
    assert value(scrape(hg), "hubgate_runtime_workers") == workers
    assert hg.buf(SUPPRESS, who="member").status == 403
    assert hg.buf(NOTE_OWN, who="member").status == 200


def test_default_worker_threads_follow_the_cpus(hubgate):
    """Without server.worker_threads, one worker per CPU this process may use: its CPU
    affinity, lowered by a cgroup v2 CPU quota when there is one (Rust's
    available_parallelism)."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
        if quota != "max":
            cpus = min(cpus, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    assert value(scrape(hubgate), "hubgate_runtime_workers") == cpus
