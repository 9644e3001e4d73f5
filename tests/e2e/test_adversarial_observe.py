"""Adversarial review of what SIEMs, SREs and auditors read: OCSF events, the operational
log, metrics, hot reload and the configuration. Each test asserts the promised behaviour."""

from __future__ import annotations

import json
import shutil
import signal
import time

from helpers import OWN_ACCOUNT_FILTER, POLICY_DIR, ident, wait_until

NOTE_OWN = {"FindingIdentifiers": [ident("f-own-high")], "Note": {"Text": "t", "UpdatedBy": "u"}}


def revision(hg) -> str:
    return hg.admin("/readyz").json()["checks"]["policy"]["revision"]


def assert_valid_ocsf(event: dict):
    import jsonschema

    from test_ocsf import schema_for
    body = {k: v for k, v in event.items() if k != "chain"}
    errors = list(jsonschema.Draft202012Validator(schema_for(event)).iter_errors(body))
    assert not errors, [f"/{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


def ocsf_event(hg, decision_id: str, timeout: float = 5) -> dict:
    def find():
        return [r for r in hg.audit_records() if r.get("metadata", {}).get("uid") == decision_id]
    recs = wait_until(find, timeout, f"the OCSF event of {decision_id}")
    assert len(recs) == 1, recs
    return recs[0]


# ---------------------------------------------------------------------------
# hot reload


NOTES_RULE = """package hubgate

deny contains {"msg": "members may not write notes today", "finding": null} if {
\tinput.principal.role == "member"
\t"Note.Text" in input.update.fields
}
"""


def slow_rules(n: int, tag: str = "") -> str:
    """A valid rule file that takes a while to parse and compile: n rules, one a line, that no
    decision reads (so the load's trial evaluation, bounded by eval_timeout_ms, stays quick)."""
    return "package hubgate\n\n" + "".join(
        f'unused_{tag}_{i} if input.operation == "NoSuchOperation{tag}{i}"\n' for i in range(n))


def reloads_logged(hg) -> int:
    return hg.stderr_text().count("callers reloaded")


def test_a_signal_storm_runs_one_reload_at_a_time_and_ends_on_the_files(make_fake, make_hubgate,
                                                                        tmp_path):
    """Every SIGHUP started a reload of its own, all at once: 30 signals compiled the policy
    set 30 times side by side, and one started before a change (reading the old files) could
    store its set after one started after the change, putting the old set back in force with
    nothing saying so. Reloads now run one at a time, and a signal that comes while one waits
    is answered by it (it reads the files after the signal)."""
    policies = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, policies)
    fake = make_fake()
    hg = make_hubgate({"policy": {"dir": str(policies), "watch_interval_ms": 0}}, fake=fake)
    for _ in range(30):
        hg.proc.send_signal(signal.SIGHUP)
        time.sleep(0.01)
    (policies / "a_notes.rego").write_text(NOTES_RULE)
    hg.proc.send_signal(signal.SIGHUP)  # the last signal comes after the change

    last = [-1, time.monotonic()]

    def quiet():
        n = reloads_logged(hg)
        if n != last[0]:
            last[:] = [n, time.monotonic()]
        return n > 0 and time.monotonic() - last[1] > 2.0
    wait_until(quiet, 40, "the reloads to end", interval=0.2)
    n = reloads_logged(hg)
    assert n <= 4, f"31 signals ran {n} reloads"
    resp = hg.buf(NOTE_OWN, who="member")
    assert resp.status == 403 and "notes today" in resp.text, resp.text
    ready = hg.admin("/readyz").json()["checks"]["policy"]
    assert ready["stale"] is False and ready["revision"] == revision(hg), ready


def notes_rule(tag: str) -> str:
    return NOTES_RULE.replace("notes today", f"notes today ({tag})")


def metric(hg, name: str) -> float:
    for line in hg.admin("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


def test_the_revision_is_that_of_the_files_the_set_was_compiled_from(make_fake, make_hubgate,
                                                                      tmp_path):
    """A reload compiled the files, then read them all again to hash them for the revision: a
    file changed meanwhile (an editor saving, a deploy copying files one by one) gave the set a
    revision that is not its own. Records then named, for decisions of the old rules, the
    revision of the new files, and the next reload (of those very files) reported no change."""
    policies = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, policies)
    for i in range(4):
        (policies / f"z_slow{i}.rego").write_text(slow_rules(9000, str(i)))
    notes = policies / "a_notes.rego"  # read first, so the change lands during the compile
    notes.write_text(notes_rule("v1"))
    fake = make_fake()
    hg = make_hubgate({"policy": {"dir": str(policies), "watch_interval_ms": 0}}, fake=fake,
                      start=False).start(ready_timeout=30)
    rev_v1 = revision(hg)
    loaded = metric(hg, "hubgate_policy_last_reload_success_timestamp_seconds")
    time.sleep(1.1)  # the metric has whole seconds
    hg.proc.send_signal(signal.SIGHUP)
    time.sleep(0.6)  # schemas compiled, a_notes.rego read, the slow files parsing
    notes.write_text(notes_rule("v2"))
    wait_until(lambda: metric(hg, "hubgate_policy_last_reload_success_timestamp_seconds")
               > loaded, 30, "the reload to finish")
    resp = hg.buf(NOTE_OWN, who="member")
    assert resp.status == 403, resp.text
    rec = hg.audit_for(resp.headers["x-amzn-requestid"])
    msg = rec["result"]["violations"][0]["msg"]
    if "(v1)" in msg:
        assert rec["revision"] == rev_v1, (
            "decided by the v1 rules, recorded with another revision than v1's "
            f"({rec['revision']} != {rev_v1})")
    else:
        assert "(v2)" in msg and rec["revision"] != rev_v1, (msg, rec["revision"])


def test_a_reload_says_which_settings_of_the_config_file_need_a_restart(make_fake,
                                                                        make_hubgate):
    """An operator switches policy.mode from dry-run to enforce in hubgate.toml and sends
    SIGHUP. hubgate reloaded the callers and policies, logged "callers reloaded", and went on
    forwarding every denial in dry-run, with nothing anywhere saying the edit was not applied.
    Now the reload names the changed settings (names only) in a WARN line, on /readyz and in
    hubgate_config_restart_needed; the settings in force keep serving."""
    fake = make_fake()
    hg = make_hubgate({"policy": {"mode": "dry-run", "watch_interval_ms": 0}}, fake=fake)
    original = hg.config_path.read_text()
    assert 'mode = "dry-run"' in original
    hg.config_path.write_text(original.replace('mode = "dry-run"', 'mode = "enforce"'))
    hg.proc.send_signal(signal.SIGHUP)

    def reported():
        return hg.admin("/readyz").json()["checks"].get("config", {}).get("restart_needed")
    wait_until(reported, 10, "/readyz to report the configuration change")
    ready = hg.admin("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["config"]["changed_settings"] == ["policy.mode"], ready.json()
    assert metric(hg, "hubgate_config_restart_needed") == 1
    warn = [line for line in hg.stderr_text().splitlines() if "restart hubgate" in line]
    assert warn and "WARN" in warn[-1] and "policy.mode" in warn[-1], warn
    # still dry-run: the edit is not in force until a restart
    suppress = hg.buf({"FindingIdentifiers": [ident("f-own-high")],
                       "Workflow": {"Status": "SUPPRESSED"}}, who="member")
    assert suppress.status == 200, suppress.text
    # put back: nothing to restart for
    hg.config_path.write_text(original)
    hg.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: reported() is False, 10, "/readyz to clear the configuration change")
    assert hg.admin("/readyz").json()["checks"]["config"]["changed_settings"] == []
    assert metric(hg, "hubgate_config_restart_needed") == 0


# ---------------------------------------------------------------------------
# OCSF: what a SIEM reads


def test_ocsf_does_not_call_a_write_that_went_out_blocked(make_fake, make_hubgate):
    """Security Hub applies a forwarded write and answers after upstream.timeout_ms. The OCSF
    event said action Denied, disposition Blocked, severity Medium: a SIEM read "hubgate
    blocked the administrator's update" while the finding had changed. The hubgate record
    says the request may have been applied; the event must not say it was blocked."""
    fake = make_fake()
    hg = make_hubgate({"upstream": {"timeout_ms": 500}, "audit": {"format": "ocsf"}}, fake=fake)
    fake.configure(answer_delay_ms={"BatchUpdateFindings": 1500})
    resp = hg.buf({"FindingIdentifiers": [ident("f-admin")], "Workflow": {"Status": "NOTIFIED"},
                   "Note": {"Text": "SEC-9 sent", "UpdatedBy": "e2e"}}, who="admin")
    assert resp.status == 504, resp.text
    event = ocsf_event(hg, resp.headers["x-amzn-requestid"])
    wait_until(lambda: fake.findings()["f-admin"]["Workflow"]["Status"] == "NOTIFIED", 5,
               "the write to be applied")
    assert event["disposition_id"] != 2 and event["disposition"] != "Blocked", event
    assert (event["disposition_id"], event["disposition"]) == (0, "Unknown"), event
    assert (event["action_id"], event["action"]) == (1, "Allowed"), event  # the policy allowed
    assert event["status_id"] == 2 and event["status_code"] == "504", event
    assert event["unmapped"]["outcome_unknown"] is True, event["unmapped"]
    assert "may have applied" in event["status_detail"], event
    assert_valid_ocsf(event)
    # a lookup that timed out sent nothing: that one is blocked
    fake.configure(answer_delay_ms={"GetFindings": 1500})
    lookup = hg.buf(NOTE_OWN, who="member")
    assert lookup.status == 504, lookup.text
    event = ocsf_event(hg, lookup.headers["x-amzn-requestid"])
    assert event["disposition_id"] == 2 and "outcome_unknown" not in event["unmapped"], event


def test_a_secret_file_rotated_in_place_takes_effect_without_a_signal(make_fake, make_hubgate):
    """A caller's secret comes from `secret_file` (a Kubernetes Secret volume, a vault agent's
    file). The file watcher reloaded the callers file on its own changes only: a secret
    rotated (or revoked) by rewriting its secret_file stayed valid until a SIGHUP or a restart,
    although the callers file and the policy directory take effect on their own."""
    from helpers import ADMIN_ACCOUNT, Creds
    old, new = Creds("HGTESTROTATE00000001", "old-secret-rotate-1"), "new-secret-rotate-2"
    callers = f"""\
[[caller]]
id = "rotating"
account_id = "{ADMIN_ACCOUNT}"
role = "administrator"
access_key_id = "{old.access_key}"
secret_file = "rotating.secret"
"""
    fake = make_fake()
    hg = make_hubgate({"policy": {"watch_interval_ms": 200}}, fake=fake, callers_toml=callers,
                      start=False)
    hg.workdir.mkdir(parents=True, exist_ok=True)
    secret = hg.workdir / "rotating.secret"
    secret.write_text(old.secret_key + "\n")
    hg.start()
    note = {"FindingIdentifiers": [ident("f-admin")], "Note": {"Text": "t", "UpdatedBy": "u"}}
    assert hg.buf(note, creds=old).status == 200
    secret.write_text(new + "\n")
    wait_until(lambda: hg.buf(note, creds=old).status == 401, 10,
               "the old secret to be refused")
    assert hg.buf(note, creds=Creds(old.access_key, new)).status == 200


def test_ocsf_reads_are_not_reported_as_updates(make_fake, make_hubgate):
    """Every event said activity Update (600303): each GetFindings a member ran (forwarded,
    read-only) reached the SIEM as an allowed update of findings, and a probe of an unknown
    path as an update of nothing. The activity now follows the operation."""
    fake = make_fake()
    hg = make_hubgate({"audit": {"format": "ocsf"}}, fake=fake)
    read = hg.send("POST", "/findings", {"MaxResults": 1, "Filters": OWN_ACCOUNT_FILTER},
                   who="member")
    assert read.status == 200, read.text
    probe = hg.send("GET", "/no/such/route", b"", who="member")
    assert probe.status == 404, probe.text
    write = hg.buf(NOTE_OWN, who="member")
    assert write.status == 200, write.text
    for resp, want in ((read, (2, "Read")), (probe, (0, "Unknown")), (write, (3, "Update"))):
        rid = resp.headers.get("x-hubgate-decision-id") or resp.headers["x-amzn-requestid"]
        event = ocsf_event(hg, rid)
        assert (event["activity_id"], event["activity_name"]) == want, event
        assert event["type_uid"] == 600300 + want[0], event
        assert event["type_name"] == f"API Activity: {want[1]}", event
        assert_valid_ocsf(event)


# ---------------------------------------------------------------------------
# edges that hold: pinned


def test_a_decision_in_flight_during_a_reload_is_made_by_one_policy_set(make_fake, make_hubgate,
                                                                        tmp_path):
    """A member's request is between its first policy pass and its lookup (Security Hub slow)
    when a reload swaps in a set that denies it. The request is decided whole by the set it
    started with, and its record names that set's revision; the next request meets the new
    one."""
    import threading
    policies = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, policies)
    fake = make_fake()
    hg = make_hubgate({"policy": {"dir": str(policies), "watch_interval_ms": 0},
                       "upstream": {"timeout_ms": 10000}}, fake=fake)
    old = revision(hg)
    # The lookup must outlast the reload: compiling the set took 4 s on a loaded machine,
    # past the 3 s this lookup used to take.
    fake.configure(answer_delay_ms={"GetFindings": 6000})
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("resp", hg.buf(NOTE_OWN, who="member")))
    t.start()
    time.sleep(0.3)  # the request waits for its lookup
    (policies / "a_notes.rego").write_text(NOTES_RULE)
    hg.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: revision(hg) != old, 10, "the reload")
    assert t.is_alive(), "the request was to be in flight when the new set came in force"
    t.join(10)
    resp = out["resp"]
    assert resp.status == 200, resp.text
    rec = hg.audit_for(resp.headers["x-hubgate-decision-id"])
    assert rec["revision"] == old and rec["result"]["allow"] is True, rec
    fake.configure(answer_delay_ms={})
    after = hg.buf(NOTE_OWN, who="member")
    assert after.status == 403 and "notes today" in after.text
    assert hg.audit_for(after.headers["x-amzn-requestid"])["revision"] == revision(hg) != old


def test_who_and_where_come_from_the_connection_and_the_key_not_the_request(make_fake,
                                                                           make_hubgate):
    """A member dresses its request up as the administrator: X-Forwarded-For and Forwarded
    headers, a body whose Note.UpdatedBy names the admin, a User-Agent with a forged JSON tail.
    The record and the OCSF event name the member and the socket's address."""
    fake = make_fake()
    hg = make_hubgate({"audit": {"format": "ocsf"}}, fake=fake)
    body = {"FindingIdentifiers": [ident("f-own-high")],
            "Note": {"Text": "t", "UpdatedBy": "admin"}}
    resp = hg.buf(body, who="member", extra_headers={
        "X-Forwarded-For": "6.6.6.6", "Forwarded": "for=6.6.6.6", "X-Real-IP": "6.6.6.6",
        "User-Agent": 'x", "actor": {"user": {"name": "admin"}}, "y": "'})
    assert resp.status == 200, resp.text
    event = ocsf_event(hg, resp.headers["x-hubgate-decision-id"])
    user = event["actor"]["user"]
    assert (user["uid"], user["type"], user["account"]["uid"]) == (
        "member", "member", "222222222222"), user
    assert event["src_endpoint"] == {"ip": "127.0.0.1"}, event["src_endpoint"]
    line = next(line for line in hg.audit_path.read_text().splitlines()
                if resp.headers["x-hubgate-decision-id"] in line)
    assert "6.6.6.6" not in line
    assert json.loads(line)["actor"] == event["actor"]


def test_metric_labels_take_no_value_a_caller_chooses(make_fake, make_hubgate):
    """Unknown paths, methods, access key ids and operation-like paths are the caller's to
    choose: as label values they would grow /metrics without bound. Every request is counted,
    under operation="unknown" or a known operation name, and none of the strings appears."""
    from helpers import Creds, raw_request
    fake = make_fake()
    hg = make_hubgate({}, fake=fake)
    marks = [f"zq{i}mark" for i in range(12)]
    for i, m in enumerate(marks):
        if i % 3 == 0:
            raw_request(hg.port, "GET", f"/{m}/findings")
        elif i % 3 == 1:
            raw_request(hg.port, "PATCH", f"/findings/batchupdate?{m}=1")
        else:
            hg.buf(NOTE_OWN, creds=Creds(f"HG{m.upper():0<18}"[:20], "nope"))
    text = hg.admin("/metrics").text
    assert not any(m in text or m.upper() in text for m in marks), "a caller's string is a label"
    counted = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line.startswith("hubgate_requests_total{"))
    assert counted >= len(marks)
    operations = {part.split('"')[1] for line in text.splitlines()
                  if line.startswith("hubgate_requests_total{")
                  for part in line.split(",") if part.startswith(("hubgate_requests_total{operation=",
                                                                    "operation="))}
    assert operations <= {"unknown", "BatchUpdateFindings"}, operations


def test_no_secret_in_the_log_at_trace_level(make_fake, make_hubgate):
    """README invites RUST_LOG=debug; at trace level the AWS signing crate logged every request
    it signed or verified, caller keys included. Its events are dropped now, and no secret,
    signature or Authorization value is written."""
    from helpers import SECRETS, hubgate_env
    fake = make_fake()
    hg = make_hubgate({}, fake=fake, env={**hubgate_env(), "RUST_LOG": "trace"})
    assert hg.buf(NOTE_OWN, who="member").status == 200
    assert hg.send("POST", "/findings", {"MaxResults": 1}, who="admin").status == 200
    assert hg.buf(NOTE_OWN, who="admin", extra_headers={"X-Amz-Security-Token": "tok-s3cr3t"}
                  ).status == 401
    time.sleep(0.3)
    text = hg.stderr_text()
    assert "TRACE" in text  # the trace was on
    # The signing crate, which logged each request it signed, never logs (secrets review).
    assert " aws_sigv4" not in text and "HGTESTMEMBER00000001" not in text
    leaked = [s for s in SECRETS + ["tok-s3cr3t", "Credential=HG"] if s in text]
    assert not leaked, leaked


def test_an_audit_max_files_whose_rotation_never_ends_is_refused(tmp_path):
    """audit.max_files = 4294967295 was valid. A rotation moves each kept file up one, looking
    for every index up to max_files: the writer thread spent hours in the first rotation, no
    record after it reached the file, and a stop gave up on them after 5 s (lost)."""
    from helpers import run_hubgate
    (tmp_path / "callers.toml").write_text("")
    cfg = tmp_path / "hubgate.toml"
    cfg.write_text(f'[policy]\ndir = "{POLICY_DIR}"\n[identity]\ncallers = "callers.toml"\n'
                   '[audit]\nsink = "file"\npath = "a.ndjson"\nmax_bytes = 300\n'
                   'max_files = 4294967295\n')
    for cmd in ("check", "serve"):
        out = run_hubgate(cmd, "--config", str(cfg), timeout=20)
        assert out.returncode == 2, (cmd, out.returncode, out.stdout, out.stderr)
        assert "audit.max_files" in out.stderr and "at most 10000" in out.stderr, out.stderr


def test_a_failed_callers_reload_is_newer_than_the_last_success_in_metrics(make_fake,
                                                                          make_hubgate):
    """README: alert on the failure timestamp being newer than the success timestamp. A reload
    whose callers file was broken but whose policies loaded set both to the same second: the
    alert never fired for a callers file (or a certificate) that did not load, say a key
    revocation that never took effect."""
    fake = make_fake()
    hg = make_hubgate({"policy": {"watch_interval_ms": 0}}, fake=fake)
    time.sleep(1.1)  # the timestamps have whole seconds
    callers = hg.workdir / "callers.toml"
    callers.write_text(callers.read_text() + "\n[[caller]\n")
    hg.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: hg.admin("/readyz").json()["checks"]["policy"]["stale"], 10,
               "the failed reload")
    failure = metric(hg, "hubgate_policy_last_reload_failure_timestamp_seconds")
    success = metric(hg, "hubgate_policy_last_reload_success_timestamp_seconds")
    assert failure > success, (failure, success)


def test_a_client_without_keys_cannot_make_records_larger_than_its_request(make_fake,
                                                                         make_hubgate):
    """A client without keys sends GET /aaaa… with a 60 KB path (or a 30 KB Content-Type,
    Content-Encoding, Transfer-Encoding, absolute-form host, or signed-header name beside a
    known access key id). The envelope's message quoted
    it whole, so the answer held it twice, the record twice (request_path and error.message:
    120 KB for the path) and the OCSF event up to four times: for each byte sent, up to four on
    the audit disk, whose filling stops every forward (AUDIT_UNAVAILABLE). Messages now quote
    the first 200 characters and the length, and the record keeps 2048 characters of a path."""
    import datetime as dt

    from helpers import MEMBER, raw_request, sign
    fake = make_fake()
    big = "a" * 30000
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    cases = [
        ("GET", "/" + "a" * 60000, {}, "60001 bytes in all"),
        # signed by a caller: a request that names none is refused before its content type
        ("PATCH", "/findings/batchupdate", lambda hg: sign(
            MEMBER, "PATCH", f"127.0.0.1:{hg.port}", "/findings/batchupdate", b"{}",
            {"Content-Type": big}), "30000 bytes in all"),
        ("PATCH", "/findings/batchupdate",
         {"Content-Type": "application/json", "Content-Encoding": big}, "30000 bytes in all"),
        ("PATCH", "/findings/batchupdate",
         {"Content-Type": "application/json", "Transfer-Encoding": big + ", chunked"}, None),
        ("PATCH", f"http://{big}/findings/batchupdate", {}, None),
        # a known access key id, no secret: SignedHeaders names a header the request lacks
        ("PATCH", "/findings/batchupdate", {
            "Content-Type": "application/json", "X-Amz-Date": now,
            "Authorization": "AWS4-HMAC-SHA256 Credential=HGTESTMEMBER00000001/"
                             f"{now[:8]}/us-east-1/securityhub/aws4_request, "
                             f"SignedHeaders=host;x-amz-date;{big}, Signature={'0' * 64}"},
         "30000 bytes in all"),
    ]
    for fmt in ("hubgate", "ocsf"):
        hg = make_hubgate({"audit": {"format": fmt}}, fake=fake)
        for method, target, headers, says in cases:
            if callable(headers):
                headers = headers(hg)
            resp = raw_request(hg.port, method, target, b"{}", headers)
            assert 400 <= resp.status < 500, resp.status
            what = f"{fmt}, {method} {target[:30]} {list(headers)}"
            assert len(resp.body) < 2000, (what, len(resp.body))
            if says:
                assert says in resp.json()["error"]["message"], (what, resp.text[:300])
            rid = resp.headers["x-amzn-requestid"]
            hg.audit_for(rid) if fmt == "hubgate" else ocsf_event(hg, rid)
            line = next(line for line in hg.audit_path.read_text().splitlines() if rid in line)
            assert len(line) < 8000, f"{what}: a {len(line)}-byte record"
            if target.startswith("/a"):
                rec = json.loads(line)
                recorded = (rec["request_path"] if fmt == "hubgate"
                            else rec["http_request"]["url"]["path"])
                assert recorded.startswith("/aaaa") and recorded.endswith("(60001 bytes in all)")


def configmap_volume(root, files_from, stamp: str):
    """Lays `files_from` out as the kubelet lays a ConfigMap volume out: the files in a
    timestamped hidden folder, `..data` pointing at it, a top-level link per entry."""
    import os
    real = root / f"..{stamp}"
    shutil.copytree(files_from, real)
    tmp = root / "..data_tmp"
    os.symlink(real.name, tmp)
    os.replace(tmp, root / "..data")  # the kubelet's atomic swap
    for entry in os.listdir(real):
        link = root / entry
        if not link.is_symlink():
            os.symlink(f"..data/{entry}", link)
    return real


def checked_revision(policies) -> str:
    from helpers import run_hubgate
    cfg = policies.parent / "check.toml"
    (policies.parent / "check-callers.toml").write_text("")
    cfg.write_text(f'[policy]\ndir = "{policies}"\n[identity]\ncallers = "check-callers.toml"\n')
    out = run_hubgate("check", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    return out.stdout.split("revision ")[1].split(")")[0]


def test_a_configmap_volume_is_one_policy_set_with_the_revision_of_its_files(make_fake,
                                                                             make_hubgate,
                                                                             tmp_path):
    """deploy/kubernetes: "to change them without a rebuild, mount a ConfigMap there". The
    loader walked the hidden `..data` and `..<timestamp>` folders too: every rule was loaded
    three times, both versions' rules at once during a swap, and the revision hashed the
    timestamped paths, so no `hubgate check` of the files (or of their commit) reproduced the
    revision an audit record names, and every update changed it whatever changed."""
    src = tmp_path / "src"
    shutil.copytree(POLICY_DIR, src, ignore=shutil.ignore_patterns("*_test.rego", "README.md"))
    volume = tmp_path / "volume"
    volume.mkdir()
    old = configmap_volume(volume, src, "2026_12_05_20_00_00.000000001")
    fake = make_fake()
    hg = make_hubgate({"policy": {"dir": str(volume), "watch_interval_ms": 200}}, fake=fake)
    assert revision(hg) == checked_revision(src)
    assert hg.buf(NOTE_OWN, who="member").status == 200
    # an update adds a rule file
    (src / "a_notes.rego").write_text(NOTES_RULE)
    configmap_volume(volume, src, "2026_12_05_20_05_00.000000002")
    shutil.rmtree(old)
    want = checked_revision(src)
    wait_until(lambda: revision(hg) == want, 15, "the revision of the new files")
    resp = hg.buf(NOTE_OWN, who="member")
    assert resp.status == 403 and "notes today" in resp.text, resp.text
    assert not hg.admin("/readyz").json()["checks"]["policy"]["stale"]


def test_an_audit_log_beside_the_policies_does_not_reload_them(make_fake, make_hubgate,
                                                               tmp_path):
    """The watcher fingerprinted every file under policy.dir, so an audit log kept there (or
    any file written beside the rules) changed the fingerprint with each record, and the set
    was reloaded every watch interval for as long as traffic lasted. Only what a set is made
    of counts now: .rego and .json files, hidden entries left out; a rule file still does."""
    policies = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, policies)
    fake = make_fake()
    hg = make_hubgate({"policy": {"dir": str(policies), "watch_interval_ms": 100},
                       "audit": {"path": str(policies / "audit" / "audit.ndjson")}}, fake=fake)
    reloads = "policy or callers files changed; reloading"
    for _ in range(15):
        assert hg.buf(NOTE_OWN, who="member").status == 200
        (policies / "notes.txt").write_text(str(time.monotonic()))
        time.sleep(0.1)
    time.sleep(1.0)
    assert reloads not in hg.stderr_text(), hg.stderr_text()[-2000:]
    # a rule file is still watched
    (policies / "a_notes.rego").write_text(NOTES_RULE)
    wait_until(lambda: reloads in hg.stderr_text(), 10, "the reload of a new rule file")


def test_a_sighup_while_starting_does_not_kill_hubgate(make_fake, make_hubgate, tmp_path):
    """SIGHUP's default action ends a process, and hubgate installed its handler only once it
    had loaded the policies, started the audit writer and bound its ports: a reload signal in
    that window (a config reloader reacting to the same ConfigMap update that restarted the
    pod, a `kill -HUP` during a slow start) killed hubgate before it served."""
    import subprocess
    policies = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, policies)
    for i in range(2):  # a start that takes a while: the window is wide open
        (policies / f"z_slow{i}.rego").write_text(slow_rules(9000, str(i)))
    fake = make_fake()
    hg = make_hubgate({"policy": {"dir": str(policies), "watch_interval_ms": 0}}, fake=fake,
                      start=False)
    hg.write_config()
    from helpers import HUBGATE_BIN, hubgate_env
    hg._stderr = open(hg.stderr_path, "ab")
    hg._stdout = open(hg.workdir / "hubgate.stdout", "ab")
    hg.proc = subprocess.Popen([str(HUBGATE_BIN), "serve", "--config", str(hg.config_path)],
                               stdin=subprocess.DEVNULL, stdout=hg._stdout, stderr=hg._stderr,
                               cwd=hg.workdir, env=hubgate_env())
    time.sleep(0.3)
    assert hg.proc.poll() is None and "hubgate is serving" not in hg.stderr_text()
    hg.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: hg.proc.poll() is not None or "hubgate is serving" in hg.stderr_text(),
               30, "hubgate to serve or die")
    assert hg.proc.poll() is None, f"hubgate ended with {hg.proc.returncode} on SIGHUP"
    wait_until(lambda: hg.admin("/readyz", timeout=1).status_code == 200, 15, "ready")
    assert hg.buf(NOTE_OWN, who="member").status == 200


def test_a_masked_note_does_not_escape_through_a_validation_message(make_fake, make_hubgate):
    """audit.mask keeps note texts out of the log, but a request refused before validation
    succeeded has no `update` to mask: the refusal's message is the only copy. A note one
    character too long (513) is refused; its message names the rule, not the text."""
    fake = make_fake()
    mask = ["/update/note/text", "/input/update/note/text", "/input/request/body/Note/Text"]
    hg = make_hubgate({"audit": {"mask": mask, "format": "ocsf"}}, fake=fake)
    secret = "PATIENT-4711-"
    text = (secret * 40)[:513]
    resp = hg.buf({"FindingIdentifiers": [ident("f-own-high")],
                   "Note": {"Text": text, "UpdatedBy": "u"}}, who="member")
    assert resp.status == 400, resp.text
    ocsf_event(hg, resp.headers["x-amzn-requestid"])
    assert secret not in hg.audit_path.read_text()


def test_ocsf_does_not_call_a_caller_whose_principal_is_masked_unauthenticated(make_fake,
                                                                             make_hubgate):
    """audit.mask = ["/principal"] (pseudonymised logs) erased the principal before the event
    was mapped, and the event said actor.user.name "unauthenticated": a SIEM counted every
    authenticated member's request as an anonymous one."""
    fake = make_fake()
    hg = make_hubgate({"audit": {"mask": ["/principal"], "format": "ocsf",
                                 "include_input": False}}, fake=fake)
    resp = hg.buf(NOTE_OWN, who="member")
    assert resp.status == 200, resp.text
    event = ocsf_event(hg, resp.headers["x-hubgate-decision-id"])
    assert event["actor"]["user"].get("name") != "unauthenticated", event["actor"]
    assert "member" not in json.dumps(event["actor"])
    assert event["unmapped"]["erased"] == ["/principal"]
    assert_valid_ocsf(event)
    unauth = hg.buf(NOTE_OWN, who=None)
    assert unauth.status == 401
    assert ocsf_event(hg, unauth.headers["x-amzn-requestid"])["actor"]["user"]["name"] == \
        "unauthenticated"
