"""Adversarial checks of members' reads (src/reads.rs) and hubgate's own credentials
(CredentialSource in src/upstream.rs)."""

import json
import time

import pytest

from helpers import (MEMBER_ACCOUNT, REPO, CredentialEndpoint, assert_envelope,
                     container_credentials, header, ident, run_hubgate)

NOTE = {"FindingIdentifiers": [ident("f-admin")], "Note": {"Text": "t", "UpdatedBy": "u"}}


def timed_source(hours=-1.0) -> CredentialEndpoint:
    """A container credentials endpoint that hands out hubgate's upstream keys with an
    Expiration `hours` from now (by default an hour past: the fake Security Hub does not
    check the session token's expiry, AWS does, 403 ExpiredTokenException)."""

    def answer(conn, _n):
        conn.settimeout(5)
        conn.recv(65536)
        conn.sendall(container_credentials(hours=hours))

    return CredentialEndpoint(answer)


def test_expired_credentials_from_the_source_are_not_used(make_fake, make_hubgate):
    """A credential source that gives credentials already expired (a clock skew, a stale
    cache in the source): hubgate used to sign with them, and Security Hub's 403
    ExpiredTokenException reached the caller as if its own request were refused for good.
    hubgate refuses them: 502, retryable, and nothing forwarded."""
    source = timed_source()
    try:
        fake = make_fake()
        hg = make_hubgate({"upstream": {"timeout_ms": 2000}}, fake=fake,
                          env=source.env(), start=False)
        hg.start(ready_path="/healthz")
        resp = hg.buf(NOTE, who="admin")
        body = assert_envelope(resp, 502, "UPSTREAM_UNAVAILABLE", "InternalException")
        assert "credentials that expired" in body["error"]["message"], body
        assert fake.buf_calls() == [], "nothing was signed with expired credentials"
        assert fake.findings()["f-admin"]["Note"]["Text"] == "seed"
        assert hg.admin("/readyz").status_code == 503
        before = source.connections
        assert hg.buf(NOTE, who="admin").status == 502
        assert source.connections > before, "expired credentials are not kept"
    finally:
        source.close()



def test_credentials_near_expiry_are_not_refetched_at_every_request(make_fake, make_hubgate):
    """A source that keeps giving credentials within hubgate's 5-minute refresh margin
    (instance metadata serves the old ones until it rotates them) was asked again as soon as
    each refresh ended: once per request. Refreshes are now spaced (10 s)."""
    source = timed_source(hours=2 / 60)
    try:
        hg = make_hubgate(fake=make_fake(),
                          env=source.env(), start=False)
        hg.start(ready_path="/healthz")
        for _ in range(15):
            assert hg.buf(NOTE, who="admin").status == 200
            time.sleep(0.02)
        assert source.connections <= 2, f"{source.connections} fetches for 15 requests"
    finally:
        source.close()

# ---------------------------------------------------------------------------------------------
# members' reads (src/reads.rs)

OWN = json.dumps({"Value": MEMBER_ACCOUNT, "Comparison": "EQUALS"})
OTHER = json.dumps({"Value": "333333333333", "Comparison": "EQUALS"})
CONFINED = '{"Filters": {"AwsAccountId": [%s]}}' % OWN


def forwarded(hg):
    return [(r["method"], r["path"]) for r in hg.fake.requests()]


# JSON text, escapes as sent: names that are no filter attribute of the API model, beside a
# confining AwsAccountId. A reader that stops at NUL, folds case the way Java's
# equalsIgnoreCase does (U+017F to s, U+0130 to i) or drops invisible characters reads the
# second list as AwsAccountId again, and may keep it instead of the first.
LOOKALIKES = {
    "nul": r"AwsAccountId\u0000",
    "long-s": r"Aw\u017fAccountId",
    "dotted-capital-i": r"AwsAccount\u0130d",
    "zero-width-space": r"AwsAccountId\u200b",
    "empty": "",
}


@pytest.mark.parametrize("name", LOOKALIKES.values(), ids=LOOKALIKES.keys())
def test_a_filter_that_is_no_model_attribute_is_not_forwarded(hubgate, name):
    """hubgate refused only ASCII case variants of AwsAccountId and forwarded any other name
    under its own role, reading nothing of it. Filters now holds the model's attributes only."""
    raw = '{"Filters": {"AwsAccountId": [%s], "%s": [%s]}}' % (OWN, name, OTHER)
    resp = hubgate.send("POST", "/findings", raw.encode(), who="member")
    got = assert_envelope(resp, 403, "READ_NOT_CONFINED", "AccessDeniedException")
    assert "unknown field" in got["error"]["message"], got
    assert forwarded(hubgate) == []


def test_a_members_get_findings_is_confined_by_its_body_alone(hubgate):
    """A query string (not read by hubgate) and a body sent as another media type than JSON
    (read by hubgate as JSON) went up under hubgate's role with the confined body. Refused:
    400 and 415; nothing forwarded. An administrator's read is not confined."""
    resp = hubgate.send("POST", "/findings?AwsAccountId=333333333333", CONFINED, who="member")
    got = assert_envelope(resp, 400, "VALIDATION_ERROR", "InvalidInputException")
    assert "takes no query string" in got["error"]["message"], got
    for media in ["application/cbor", "application/x-www-form-urlencoded", None]:
        resp = hubgate.send("POST", "/findings", CONFINED, who="member", content_type=media)
        assert_envelope(resp, 415, "UNSUPPORTED_MEDIA_TYPE", "InvalidInputException")
    assert forwarded(hubgate) == []
    resp = hubgate.send("POST", "/findings?x=1", "{}", who="admin")
    assert resp.status == 200, resp.text
    assert forwarded(hubgate) == [("POST", "/findings")]


def test_escapes_that_spell_the_confinement_are_forwarded_as_sent(hubgate):
    """Held: unicode escapes are read as JSON reads them (so they confine, as AWS reads them
    too), and the bytes checked are the bytes forwarded; a duplicate inside a filter entry and
    a header naming another protocol do not pass."""
    raw = ('{"\\u0046ilters": {"Aws\\u0041ccountId": [{"Value": "\\u0032%s", '
           '"Comparison": "EQUAL\\u0053"}]}}' % MEMBER_ACCOUNT[1:]).encode()
    resp = hubgate.send("POST", "/findings", raw, who="member",
                        extra_headers={"smithy-protocol": "rpc-v2-cbor"})
    assert resp.status == 200, resp.text
    assert {f["AwsAccountId"] for f in resp.json()["Findings"]} == {MEMBER_ACCOUNT}
    (sent,) = hubgate.fake.requests("POST", "/findings")
    assert sent["body"].encode() == raw
    assert header(sent, "smithy-protocol") is None, sent["headers"]
    dup = ('{"Filters": {"AwsAccountId": [{"Value": "%s", "Value": "333333333333", '
           '"Comparison": "EQUALS"}]}}' % MEMBER_ACCOUNT)
    got = assert_envelope(hubgate.send("POST", "/findings", dup, who="member"), 403,
                          "READ_NOT_CONFINED", "AccessDeniedException")
    assert "duplicate key" in got["error"]["message"], got
    resp = hubgate.send("POST", "/findings", CONFINED, who="member",
                        extra_headers={"X-Amz-Target": "SecurityHubAPIService.ListMembers"})
    assert resp.status == 400 and "x-amz-target" in resp.text, resp.text
    assert len(hubgate.fake.requests("POST", "/findings")) == 1


def test_eval_refuses_a_filter_that_is_no_model_attribute(tmp_path):
    body = tmp_path / "body.json"
    body.write_text('{"Filters": {"AwsAccountId": [%s], "AwsAccountId\\u0000": [%s]}}'
                    % (OWN, OTHER))
    r = run_hubgate("eval", "--config", str(REPO / "config" / "demo" / "hubgate.toml"),
                    "--operation", "GetFindings", "--request", str(body),
                    "--as", f"member:{MEMBER_ACCOUNT}")
    assert r.returncode == 1 and r.stdout.startswith("READ_NOT_CONFINED: "), (r.stdout, r.stderr)
