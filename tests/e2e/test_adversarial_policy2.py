"""Adversarial review (policy, second round): the shipped policy set's semantics as the proxy
runs it, attacked by a caller with valid member keys, against the real binary and the fake
Security Hub. The first round (test_adversarial_policy.py) covered forbidden-field paths and
member imports' customer fields; this one does not repeat them.

- HOLE (fixed): a shipped setting of another JSON type than its rule reads switched the rule
  off silently, and `hubgate check` called the set valid. Rego gives no iterations over a
  string and `x in "RESOLVED"` never holds, so `"member_forbidden_fields": "RecordState"` (the
  README's own advice, written without the brackets) forbade nothing: with member imports on,
  a member re-imported its finding with RecordState ARCHIVED and it was forwarded;
  `"ticket_required_for": "RESOLVED"` required no ticket; `"library": "enforce"` left every
  library rule warning. A status list entry no request can set (`"Resolved"`) matched nothing
  too. Such a set now fails to load (serve, reload and check alike), naming the key, as a
  misspelt forbidden field already did (src/policy/settings.rs).
- Held: a stored severity hubgate cannot rank (a label in another case) refuses every severity
  change by a member, a raise included, naming the finding, while a note-only change goes
  through; a stored label and normalized value that disagree are judged by the label (as
  Security Hub shows it), so a member's Normalized-only change below the label is refused.
"""

from __future__ import annotations

import pytest

from helpers import (MEMBER_ACCOUNT, REPO, assert_envelope, finding, ident,
                     run_hubgate)

from test_adversarial_policy import policies_with

IMPORT = "/findings/import"
BUF = "/findings/batchupdate"


# ---------------------------------------------------------------------------
# HOLE (fixed): a setting of the wrong shape switched its rule off, silently


def test_a_forbidden_fields_setting_that_is_no_list_does_not_serve(tmp_path, make_hubgate,
                                                                    seeded_fake):
    """Attack: the administrator turns member imports on and closes the documented RecordState
    route as policies/README.md says, but writes the list without brackets. fields.rego
    iterated over the string (no iterations), so it forbade nothing, hubgate served, and the
    member's re-import of its own finding with RecordState ARCHIVED (out of every default
    view) was forwarded. Now the set does not load: serve exits, naming the setting."""
    policies = policies_with(tmp_path, member_imports="own-findings",
                             member_forbidden_fields="RecordState")
    hg = make_hubgate({"policy": {"dir": str(policies)}}, fake=seeded_fake, start=False)
    try:
        hg.start(ready_timeout=10)
    except AssertionError as e:
        refused = str(e)
    else:
        archive = finding("f-own-high", MEMBER_ACCOUNT, "HIGH", 70)
        for customer in ("Severity", "Workflow", "WorkflowState", "Note"):
            archive.pop(customer)
        archive["FindingProviderFields"] = {"Severity": {"Label": "HIGH"}}
        archive["RecordState"] = "ARCHIVED"
        resp = hg.send("POST", IMPORT, {"Findings": [archive]}, who="member")
        sent = hg.fake.requests("POST", IMPORT)
        pytest.fail(f"served a set whose member_forbidden_fields is a string: the member's "
                    f"archiving re-import got {resp.status}, {len(sent)} import(s) forwarded")
    assert ('hubgate_settings.member_forbidden_fields: "RecordState" is not a list of ASFF '
            'paths, so it forbids nothing') in refused, refused


def test_check_names_every_setting_its_rule_would_read_as_matching_nothing(tmp_path):
    """The other shapes and spellings of the same mistake, each of which `hubgate check`
    passed while its rule was off (or, for member statuses, refused what it was meant to
    allow). The shipped settings and well-formed ones still pass."""
    bad = {
        "ticket-string": ({"library": {"ticket": "enforce"}, "ticket_required_for": "RESOLVED"},
                          'ticket_required_for: "RESOLVED" is not a list of Workflow.Status '
                          'values, so no closure needs a ticket'),
        "library-string": ({"library": "enforce"},
                           'hubgate_settings.library: "enforce" is not an object of library '
                           'rule names'),
        "ticket-status-case": ({"ticket_required_for": ["Resolved"]},
                               'ticket_required_for: "Resolved" is no Workflow.Status a request '
                               'can set'),
        "member-status-case": ({"member_workflow_statuses": ["resolved"]},
                               'member_workflow_statuses: "resolved" is no Workflow.Status'),
    }
    callers = REPO / "config" / "callers.toml"

    def check(name, settings):
        policies = policies_with(tmp_path / name, **settings)
        config = tmp_path / name / "hubgate.toml"
        config.write_text(f'[identity]\ncallers = "{callers}"\n[policy]\ndir = "{policies}"\n')
        return run_hubgate("check", "--config", str(config))

    for name, (settings, says) in bad.items():
        r = check(name, settings)
        assert r.returncode != 0, (name, r.stdout + r.stderr)
        assert says in r.stderr, (name, r.stderr)
    r = check("ok", {"library": {"ticket": "enforce", "reopen": "off"},
                     "ticket_required_for": ["RESOLVED", "ARCHIVED"],
                     "member_workflow_statuses": ["RESOLVED"],
                     "member_forbidden_fields": ["RecordState"]})
    assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------------------
# Held: a stored severity that is odd is judged as Security Hub shows it, or refused


def test_a_stored_severity_hubgate_cannot_rank_refuses_member_severity_changes(hubgate):
    """Attack: the member's own finding was stored with a label in another case ("high", as a
    partner product might send it) or with a label and a normalized value that disagree
    (CRITICAL, 10). The member tries to lower it by a spelling the comparison might read
    kindly: a "raise" to CRITICAL over a label hubgate cannot rank, and Normalized 50 (MEDIUM)
    under the CRITICAL label. Both are refused naming the finding; a note-only change on the
    unrankable finding is forwarded."""
    odd_case = finding("f-odd-case", MEMBER_ACCOUNT, "HIGH", 70)
    odd_case["Severity"] = {"Label": "high", "Normalized": 70}
    disagree = finding("f-disagree", MEMBER_ACCOUNT, "CRITICAL", 10)
    hubgate.fake.add_findings([odd_case, disagree])
    cases = [
        ("f-odd-case", {"Label": "CRITICAL"},
         "hubgate cannot see this finding's current severity, so member accounts may not "
         "change it"),
        ("f-disagree", {"Normalized": 50},
         "member accounts may not lower a finding's severity (CRITICAL to MEDIUM)"),
    ]
    for fid, severity, msg in cases:
        resp = hubgate.buf({"FindingIdentifiers": [ident(fid)], "Severity": severity},
                           who="member")
        body = assert_envelope(resp, 403, "POLICY_DENIED", "AccessDeniedException")
        assert body["error"]["message"] == msg, body
        assert [d["finding"]["Id"] for d in body["error"]["details"]] == [fid], body
        rec = hubgate.audit_for(resp.headers["x-amzn-requestid"])
        assert rec["result"]["allow"] is False, rec
    assert hubgate.fake.buf_calls() == []
    ok = hubgate.buf({"FindingIdentifiers": [ident("f-odd-case")],
                      "Note": {"Text": "looked at it", "UpdatedBy": "member"}}, who="member")
    assert ok.status == 200 and ok.headers.get("x-hubgate-decision-id"), (ok.status, ok.text)
    assert len(hubgate.fake.buf_calls()) == 1
