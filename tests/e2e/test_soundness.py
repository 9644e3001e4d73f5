"""Soundness: request shapes a member could use to get past the shipped policies.

Every bypass attempt must end in hubgate's error envelope (400 VALIDATION_ERROR for a malformed
body, 403 POLICY_DENIED for a refused change) with no write reaching the fake Security Hub; the
allowed neighbours of each attack are checked too, so that a refusal is known to come from the
attacked field and not from the test. Bodies that json.dumps would normalise (``10.0``, ``1e1``,
``-0``) are written by hand, byte for byte.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import tomllib

import pytest

from helpers import (
    ADMIN_ACCOUNT,
    MEMBER_ACCOUNT,
    OTHER_ACCOUNT,
    PRODUCT_ARN,
    REPO,
    SEED,
    UPSTREAM_KEY,
    UPSTREAM_SECRET,
    Creds,
    assert_envelope,
    aws,
    finding,
    ident,
    raw_request,
    sign,
)

V1 = "/findings/batchupdate"
V2 = "/findingsv2/batchupdatev2"
IMPORT = "/findings/import"
LOOKUP = ("POST", "/findings")  # GetFindings: hubgate's enrichment, not a write


# ---------------------------------------------------------------------------
# helpers


def v2_ident(uid: str, account: str = MEMBER_ACCOUNT) -> dict:
    return {"CloudAccountUid": account, "FindingInfoUid": uid, "MetadataProductUid": PRODUCT_ARN}


def seed_state() -> dict:
    return {f["Id"]: f for f in SEED}


def assert_no_write(fake):
    """The fake saw nothing but (at most) GetFindings lookups, and every finding is as seeded."""
    others = [(r["method"], r["path"]) for r in fake.requests()
              if (r["method"], r["path"]) != LOOKUP]
    assert others == [], f"the fake received more than lookups: {others}"
    assert fake.findings() == seed_state()


def denied(resp) -> dict:
    return assert_envelope(resp, 403, "POLICY_DENIED", "AccessDeniedException")


def names_path(err: dict, pointer: str) -> bool:
    return pointer in err["message"] or any(
        d.get("path") == pointer or pointer in str(d.get("message", ""))
        for d in err.get("details") or [])


def decoded(resp) -> bytes:
    if "gzip" in (resp.headers.get("content-encoding") or "").lower():
        return gzip.decompress(resp.body)
    return resp.body


# ---------------------------------------------------------------------------
# 1. BatchUpdateFindingsV2: SeverityId and StatusId values a member may not set


@pytest.mark.parametrize("severity_id", [0, 1, 2, 3, 4, 5, 6, 99])
def test_v2_member_may_not_change_severity(hubgate, severity_id):
    """Attack: a member changes (lowers) severity through V2's SeverityId, including the
    values 0 (Unknown), 6 (Fatal) and 99 (Other) that map to no ASFF label."""
    resp = hubgate.send("PATCH", V2, {"FindingIdentifiers": [v2_ident("f-own-high")],
                                      "SeverityId": severity_id}, who="member")
    denied(resp)
    assert_no_write(hubgate.fake)


@pytest.mark.parametrize("status_id", [0, 3, 5, 6, 99])
def test_v2_member_may_not_set_status(hubgate, status_id):
    """Attack: a member closes or hides a finding through V2's StatusId: 3 Suppressed, and
    0 Unknown / 5 Archived / 6 Deleted / 99 Other, which are no status a member may set."""
    resp = hubgate.send("PATCH", V2, {"FindingIdentifiers": [v2_ident("f-own-high")],
                                      "StatusId": status_id, "Comment": "SEC-1 done"},
                        who="member")
    denied(resp)
    assert_no_write(hubgate.fake)


def test_v2_member_comment_only_is_forwarded(hubgate):
    """Control for the V2 attacks: the same member, finding and signing, without SeverityId or
    StatusId, is forwarded (the fake has no V2 implementation; the call reaching it is what
    counts)."""
    resp = hubgate.send("PATCH", V2, {"FindingIdentifiers": [v2_ident("f-own-high")],
                                      "Comment": "looked at it"}, who="member")
    assert resp.headers.get("x-hubgate-decision-id"), (resp.status, resp.text)
    assert len(hubgate.fake.requests("PATCH", V2)) == 1


# ---------------------------------------------------------------------------
# 2. integers accept only integer literals


V1_IDS = '"FindingIdentifiers":[{"Id":"f-own-high","ProductArn":"%s"}]' % PRODUCT_ARN
V2_IDS = ('"FindingIdentifiers":[{"CloudAccountUid":"%s","FindingInfoUid":"f-own-high",'
          '"MetadataProductUid":"%s"}]' % (MEMBER_ACCOUNT, PRODUCT_ARN))

# (route, JSON pointer, literal, body template)
NON_INTEGER_LITERALS = [
    *[(V1, "/Severity/Normalized", lit, '{%s,"Severity":{"Normalized":%s}}' % (V1_IDS, "%s"))
      for lit in ("-0", "0.0", "10.0", "1e1", "1E1", "1.5")],
    (V1, "/Confidence", "5.0", '{%s,"Confidence":%s}' % (V1_IDS, "%s")),
    *[(V2, "/StatusId", lit, '{%s,"StatusId":%s}' % (V2_IDS, "%s")) for lit in ("3.0", "3E0", "-0")],
    (V2, "/SeverityId", "1e0", '{%s,"SeverityId":%s}' % (V2_IDS, "%s")),
]


@pytest.mark.parametrize("path,pointer,literal,template", NON_INTEGER_LITERALS,
                         ids=[f"{ptr}={lit}" for _, ptr, lit, _ in NON_INTEGER_LITERALS])
def test_non_integer_literals_are_validation_errors(hubgate, path, pointer, literal, template):
    """Attack: an integer member spelled as a float, an exponent or negative zero, which a
    lenient reader turns into a value the policy never sees (no severity rank, no status)."""
    body = (template % literal).encode()
    assert literal.encode() in body
    resp = hubgate.send("PATCH", path, body, who="member")
    err = assert_envelope(resp, 400, "VALIDATION_ERROR", "InvalidInputException")["error"]
    assert names_path(err, pointer), f"{pointer} not named in {err}"
    assert_no_write(hubgate.fake)
    assert hubgate.fake.requests() == []  # refused before any lookup


def test_integer_literal_is_accepted_and_forwarded_byte_exact(hubgate):
    """Control for the literal attacks: the same hand-written body with an integer literal
    (raising HIGH to 90) is allowed and reaches the fake byte for byte."""
    body = ('{%s,"Severity":{"Normalized":90}}' % V1_IDS).encode()
    resp = hubgate.send("PATCH", V1, body, who="member")
    assert resp.status == 200, resp.text
    calls = hubgate.fake.buf_calls()
    assert len(calls) == 1 and calls[0]["body"].encode() == body
    assert hubgate.fake.findings()["f-own-high"]["Severity"]["Label"] == "CRITICAL"


# ---------------------------------------------------------------------------
# 3. BatchImportFindings by members


def importable(fid: str, account: str, label: str = "HIGH", status: str = "NEW") -> dict:
    f = finding(fid, account, label, status=status)
    f.pop("WorkflowState")  # deprecated; the import schema does not know SUPPRESSED there
    return f


def test_member_reimport_of_own_finding_to_suppress_and_lower_is_refused(hubgate):
    """Attack: instead of BatchUpdateFindings (which refuses it), a member re-imports its own
    HIGH finding with Severity LOW and Workflow.Status SUPPRESSED."""
    body = {"Findings": [importable("f-own-high", MEMBER_ACCOUNT, "LOW", "SUPPRESSED")]}
    resp = hubgate.send("POST", IMPORT, body, who="member")
    denied(resp)
    assert_no_write(hubgate.fake)


def test_member_import_of_new_own_finding_is_refused_by_default(hubgate):
    """Attack: a member imports findings at all (even a new one of its own account); the
    shipped policies refuse member imports by default."""
    body = {"Findings": [importable("f-member-new", MEMBER_ACCOUNT, "LOW")]}
    resp = hubgate.send("POST", IMPORT, body, who="member")
    denied(resp)
    assert_no_write(hubgate.fake)


def test_admin_import_is_forwarded(hubgate):
    """Control for the import attacks: an administrator's import reaches Security Hub."""
    new = importable("f-admin-new", ADMIN_ACCOUNT, "MEDIUM")
    resp = hubgate.send("POST", IMPORT, {"Findings": [new]}, who="admin")
    assert resp.status == 200, resp.text
    assert resp.json()["SuccessCount"] == 1
    assert resp.headers.get("x-hubgate-decision-id")
    assert len(hubgate.fake.requests("POST", IMPORT)) == 1
    assert hubgate.fake.findings()["f-admin-new"] == new


# ---------------------------------------------------------------------------
# 4. and 5. on_partial_deny = "forward-allowed"


@pytest.fixture
def partial(make_hubgate, seeded_fake):
    return make_hubgate({"policy": {"on_partial_deny": "forward-allowed"}}, fake=seeded_fake)


# (denied A, allowed B, update): A is refused per finding, B is allowed with the same update
SPLITS = {
    "lower-severity": ("f-own-high", "f-own-medium", {"Severity": {"Label": "MEDIUM"}}),
    "other-account": ("f-other", "f-own-high", {"Severity": {"Label": "CRITICAL"}}),
}


@pytest.mark.parametrize("kind", SPLITS)
def test_forward_allowed_duplicate_denied_identifier_forwards_nothing(partial, kind):
    """Attack: name the denied finding twice ([A, A]) so that cutting one copy leaves the
    other (or an empty FindingIdentifiers list) to be forwarded."""
    a, _, update = SPLITS[kind]
    resp = partial.buf({"FindingIdentifiers": [ident(a), ident(a)], **update}, who="member")
    denied(resp)
    assert partial.fake.buf_calls() == []
    assert_no_write(partial.fake)


@pytest.mark.parametrize("kind", SPLITS)
def test_forward_allowed_forwards_only_the_allowed_finding(partial, kind):
    """Attack: hide a denied finding A in a batch with an allowed one B; only B may be
    forwarded, and A must come back as PolicyDenied in UnprocessedFindings."""
    a, b, update = SPLITS[kind]
    resp = partial.buf({"FindingIdentifiers": [ident(a), ident(b)], **update}, who="member")
    assert resp.status == 200, resp.text
    out = resp.json()
    assert [f["Id"] for f in out["ProcessedFindings"]] == [b]
    unprocessed = {u["FindingIdentifier"]["Id"]: u for u in out["UnprocessedFindings"]}
    assert unprocessed[a]["ErrorCode"] == "PolicyDenied", out
    calls = partial.fake.buf_calls()
    assert len(calls) == 1
    sent = json.loads(calls[0]["body"])
    assert sent["FindingIdentifiers"] == [ident(b)]
    assert {k: v for k, v in sent.items() if k != "FindingIdentifiers"} == update
    assert partial.fake.findings()[a] == seed_state()[a]


@pytest.mark.parametrize("mode", ["accept", "always"])
def test_forward_allowed_with_gzip_upstream_never_returns_an_unmerged_answer(partial, mode):
    """Attack: the caller sends Accept-Encoding: gzip so that the upstream's answer comes back
    compressed, hubgate cannot merge the denied finding into it, and the caller sees only
    Security Hub's word (the denied finding silently missing). mode "accept": the fake gzips
    when the forwarded Accept-Encoding allows it; "always": it gzips whatever was asked."""
    a, b, update = SPLITS["lower-severity"]
    partial.fake.configure(gzip_batch_update=mode)
    resp = partial.buf({"FindingIdentifiers": [ident(a), ident(b)], **update}, who="member",
                       extra_headers={"Accept-Encoding": "gzip"})
    if resp.status == 502:
        body = json.loads(decoded(resp))
        assert body["success"] is False and body["error"]["code"], body
        assert resp.headers.get("x-amzn-errortype") == body["__type"], (resp.headers, body)
        return
    assert resp.status == 200, (resp.status, resp.headers, resp.body[:200])
    out = json.loads(decoded(resp))
    unprocessed = {u["FindingIdentifier"]["Id"]: u for u in out.get("UnprocessedFindings", [])}
    assert a in unprocessed and unprocessed[a]["ErrorCode"] == "PolicyDenied", out
    assert [f["Id"] for f in out["ProcessedFindings"]] == [b]


def test_fake_gzip_knob_and_import_route(seeded_fake):
    """Sanity of the fake itself (no hubgate): the gzip knob and POST /findings/import, so that
    the gzip test above is not vacuous."""
    up = Creds(UPSTREAM_KEY, UPSTREAM_SECRET)
    host = f"127.0.0.1:{seeded_fake.port}"

    def call(method, path, body, accept=None):
        data = json.dumps(body).encode()
        extra = {"Content-Type": "application/json"}
        if accept is not None:
            extra["Accept-Encoding"] = accept
        return raw_request(seeded_fake.port, method, path, data,
                           sign(up, method, host, path, data, extra))

    upd = {"FindingIdentifiers": [ident("f-own-high")], "Note": {"Text": "x", "UpdatedBy": "t"}}
    for mode, accept, zipped in [("off", "gzip", False), ("accept", "gzip", True),
                                 ("accept", None, False), ("accept", "identity", False),
                                 ("accept", "gzip;q=0, identity", False),
                                 ("accept", "*", True), ("always", None, True)]:
        seeded_fake.configure(gzip_batch_update=mode)
        r = call("PATCH", V1, upd, accept)
        assert r.status == 200, r.text
        assert (r.headers.get("content-encoding") == "gzip") is zipped, (mode, accept, r.headers)
        assert json.loads(decoded(r))["ProcessedFindings"] == [ident("f-own-high")]
    # lookups are never compressed
    r = call("POST", "/findings", {"MaxResults": 1}, "gzip")
    assert r.status == 200 and "content-encoding" not in r.headers
    r = call("POST", IMPORT, {"Findings": [importable("f-imp", ADMIN_ACCOUNT)]})
    assert r.status == 200 and r.json() == {"FailedCount": 0, "SuccessCount": 1,
                                            "FailedFindings": []}
    assert seeded_fake.findings()["f-imp"]["AwsAccountId"] == ADMIN_ACCOUNT
    seeded_fake.reset()
    assert seeded_fake.configure()["gzip_batch_update"] == "off"


# ---------------------------------------------------------------------------
# 6. the shipped configuration, through the plain AWS CLI


SHIPPED_CONFIG = REPO / "config" / "demo" / "hubgate.toml"
SHIPPED_CALLERS = REPO / "config" / "demo" / "callers.toml"


def demo_creds(role: str) -> Creds:
    callers = tomllib.loads(SHIPPED_CALLERS.read_text())["caller"]
    c = next(c for c in callers if c["role"] == role)
    return Creds(c["access_key_id"], c["secret_access_key"])


@pytest.fixture
def shipped(make_hubgate, seeded_fake):
    """hubgate with the shipped callers file (demo keys) and the shipped [policy] and
    [enrichment] settings; only the listeners, upstream and audit sink are the test's."""
    cfg = tomllib.loads(SHIPPED_CONFIG.read_text())
    policy = dict(cfg["policy"])
    policy["dir"] = str((SHIPPED_CONFIG.parent / policy["dir"]).resolve())
    return make_hubgate({"policy": policy, "enrichment": dict(cfg["enrichment"])},
                        fake=seeded_fake, callers_toml=SHIPPED_CALLERS.read_text())


def cli_update(hg, role: str, finding_id: str, *change) -> subprocess.CompletedProcess:
    return aws(hg, demo_creds(role), "batch-update-findings",
               "--finding-identifiers", f"Id={finding_id},ProductArn={PRODUCT_ARN}", *change)


def test_cli_newcomer_admin_suppress_is_allowed_on_shipped_config(shipped):
    """Usability regression: a newcomer's first administrator suppress with the plain AWS CLI
    and the demo admin key, no Note, must work on the shipped defaults."""
    r = cli_update(shipped, "administrator", "f-own-high", "--workflow", "Status=SUPPRESSED")
    assert r.returncode == 0, r.stderr
    assert '"ProcessedFindings"' in r.stdout and "f-own-high" in r.stdout, r.stdout
    assert len(shipped.fake.buf_calls()) == 1
    assert shipped.fake.findings()["f-own-high"]["Workflow"]["Status"] == "SUPPRESSED"


@pytest.mark.parametrize("change", [("--workflow", "Status=SUPPRESSED"),
                                    ("--severity", "Label=LOW")],
                         ids=["suppress", "lower-severity"])
def test_cli_member_suppress_and_lowering_stay_denied_on_shipped_config(shipped, change):
    """Attack: with the shipped defaults (eased for administrators), the demo member key still
    may not suppress its finding or lower its severity."""
    r = cli_update(shipped, "member", "f-own-high", *change)
    assert r.returncode != 0, r
    assert "AccessDeniedException" in r.stderr, r.stderr
    assert "POLICY_DENIED" in r.stderr, r.stderr
    assert_no_write(shipped.fake)
