"""Hot reload when files change (policy.watch_interval_ms): policies and callers."""

import shutil
import time

import pytest

from helpers import POLICY_DIR, assert_envelope, ident, wait_until

NOTE = {"FindingIdentifiers": [ident("f-own-high")], "Note": {"Text": "t", "UpdatedBy": "u"}}

EXTRA_RULE = """package hubgate

deny contains {"msg": "members may not write notes today", "finding": null} if {
\tinput.principal.role == "member"
\t"Note.Text" in input.update.fields
}
"""


@pytest.fixture
def watched(make_hubgate, seeded_fake, tmp_path):
    policies = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, policies)
    hg = make_hubgate({"policy": {"dir": str(policies), "watch_interval_ms": 200}},
                      fake=seeded_fake)
    hg.policies = policies
    return hg


def revision(hg) -> str:
    return hg.admin("/readyz").json()["checks"]["policy"]["revision"]


def test_a_new_rule_applies_without_restart(watched):
    hg = watched
    assert hg.buf(NOTE, who="member").status == 200
    before = revision(hg)
    (hg.policies / "notes.rego").write_text(EXTRA_RULE)
    wait_until(lambda: revision(hg) != before, 10, "the policy revision to change")
    resp = hg.buf(NOTE, who="member")
    body = assert_envelope(resp, 403, "POLICY_DENIED", "AccessDeniedException")
    assert "members may not write notes today" in body["error"]["message"]
    assert hg.audit_for(resp.headers["x-amzn-requestid"])["revision"] == revision(hg)


def test_a_broken_change_keeps_the_last_good_set(watched):
    hg = watched
    good = revision(hg)
    (hg.policies / "broken.rego").write_text("package hubgate\n\ndeny contains x if {\n")
    wait_until(lambda: hg.admin("/readyz").json()["checks"]["policy"]["stale"], 10,
               "readyz to report the failed reload")
    r = hg.admin("/readyz")
    assert r.status_code == 200, "the last good set serves: the replica stays ready"
    ready = r.json()
    assert "broken.rego" in ready["checks"]["policy"]["last_reload_error"]
    assert ready["checks"]["policy"]["revision"] == good
    # the old set still decides: suppress denied, a note allowed
    assert hg.buf({"FindingIdentifiers": [ident("f-own-high")],
                   "Workflow": {"Status": "SUPPRESSED"}}, who="member").status == 403
    assert hg.buf(NOTE, who="member").status == 200
    (hg.policies / "broken.rego").unlink()
    wait_until(lambda: not hg.admin("/readyz").json()["checks"]["policy"]["stale"], 10,
               "readyz to clear the error")


def test_a_removed_caller_stops_working_without_restart(watched):
    hg = watched
    assert hg.buf(NOTE, who="member").status == 200
    callers = hg.workdir / "callers.toml"
    text = callers.read_text()
    member_entry = text[text.index('[[caller]]\nid = "member"'):]
    callers.write_text(text.replace(member_entry, ""))
    time.sleep(0.05)

    def refused():
        return hg.buf(NOTE, who="member").status == 401
    wait_until(refused, 10, "the removed member key to be refused")
    resp = hg.buf(NOTE, who="member")
    assert_envelope(resp, 401, "UNAUTHENTICATED", "UnrecognizedClientException")
    assert hg.buf(NOTE, who="admin").status == 200
