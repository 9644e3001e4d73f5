"""What a member may read through hubgate's role (src/reads.rs).

A forwarded call is re-signed with hubgate's AWS credentials; in the administrator account that
role reads every member account's findings. A member key therefore reads only its own account's
findings through hubgate (GetFindings confined by Filters.AwsAccountId), and calls the other
forwarded operations only when policy.members_may_call lists them."""

import json

import pytest
from botocore.exceptions import ClientError

from helpers import (
    MEMBER_ACCOUNT,
    OWN_ACCOUNT_FILTER,
    REPO,
    assert_envelope,
    run_hubgate,
)

OTHER = {"Value": "333333333333", "Comparison": "EQUALS"}
OWN = OWN_ACCOUNT_FILTER["AwsAccountId"][0]


def forwarded(hg):
    return [(r["method"], r["path"]) for r in hg.fake.requests()]


def test_a_members_unconfined_get_findings_is_refused_and_recorded(hubgate):
    with pytest.raises(ClientError) as e:
        hubgate.client("member").get_findings(MaxResults=10)
    err = e.value.response
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert err["Error"]["Code"] == "AccessDeniedException"
    assert "must be confined to its own account: it has no Filters" in err["Error"]["Message"]
    assert f'"Value": "{MEMBER_ACCOUNT}"' in err["Error"]["Message"], "the message names the fix"
    assert forwarded(hubgate) == []
    rec = hubgate.audit_for(err["ResponseMetadata"]["RequestId"])
    assert (rec["status"], rec["forwarded"], rec["error"]["code"]) == (403, False,
                                                                        "READ_NOT_CONFINED")
    assert rec["operation"] == "GetFindings" and rec["principal"]["id"] == "member"


def test_a_member_reads_its_own_findings_only(hubgate):
    """Confined, the member's GetFindings is forwarded as sent, and the fake answers with the
    member's findings alone (the seeded set has three accounts)."""
    hubgate.fake.configure(page_size=1)
    pages = list(hubgate.client("member").get_paginator("get_findings").paginate(
        Filters=OWN_ACCOUNT_FILTER))
    ids = sorted(f["Id"] for p in pages for f in p["Findings"])
    assert ids == ["f-own-high", "f-own-medium"], ids
    sent = [json.loads(r["body"]) for r in hubgate.fake.requests("POST", "/findings")]
    assert len(sent) == 2 and all(s["Filters"] == OWN_ACCOUNT_FILTER for s in sent), sent
    # An administrator's GetFindings is not confined.
    everything = [f for p in hubgate.client("admin").get_paginator("get_findings").paginate()
                  for f in p["Findings"]]
    assert {f["AwsAccountId"] for f in everything} == {"111111111111", MEMBER_ACCOUNT,
                                                       "333333333333"}


@pytest.mark.parametrize("body, why", [
    ({"Filters": {"AwsAccountId": [OWN, OTHER]}}, "[1].Value is not the caller's account"),
    ({"Filters": {"AwsAccountId": [{"Value": MEMBER_ACCOUNT, "Comparison": "PREFIX"}]}},
     'Comparison is not "EQUALS"'),
    ({"Filters": {"AwsAccountId": [{"Value": "2", "Comparison": "PREFIX"}]}},
     'Comparison is not "EQUALS"'),
    ({"Filters": {"AwsAccountId": [{"Value": "333333333333", "Comparison": "NOT_EQUALS"}]}},
     'Comparison is not "EQUALS"'),
    ({"Filters": {"Id": [{"Value": "f-other", "Comparison": "EQUALS"}]}},
     "Filters has no AwsAccountId"),
    ({"Filters": {"AwsAccountId": []}}, "not a non-empty list"),
    ({"Filters": {"AwsAccountId": [OWN], "awsAccountId": [OTHER]}}, "is not spelt AwsAccountId"),
    ({"filters": {"AwsAccountId": [OTHER]}, "Filters": OWN_ACCOUNT_FILTER},
     '"filters" is not a GetFindings member'),
])
def test_a_member_cannot_widen_get_findings(hubgate, body, why):
    resp = hubgate.send("POST", "/findings", body, who="member")
    got = assert_envelope(resp, 403, "READ_NOT_CONFINED", "AccessDeniedException")
    assert why in got["error"]["message"], got
    assert forwarded(hubgate) == []


def test_a_second_filters_member_or_trailing_json_is_refused(hubgate):
    """Two readers must not read two filters from one body: a duplicate key (hubgate would read
    one, AWS maybe the other) and anything after the object are refused."""
    own, other = json.dumps(OWN_ACCOUNT_FILTER), json.dumps({"AwsAccountId": [OTHER]})
    for raw, why in [(f'{{"Filters": {own}, "Filters": {other}}}', "duplicate key"),
                     (f'{{"Filters": {other}, "Filters": {own}}}', "duplicate key"),
                     (f'{{"Filters": {own}}} {{"Filters": {other}}}', "not valid JSON")]:
        resp = hubgate.send("POST", "/findings", raw, who="member")
        got = assert_envelope(resp, 403, "READ_NOT_CONFINED", "AccessDeniedException")
        assert why in got["error"]["message"], got
    assert forwarded(hubgate) == []


def test_other_forwarded_operations_are_for_administrators(hubgate):
    member, admin = hubgate.client("member"), hubgate.client("admin")
    for call in [lambda c: c.describe_hub(), lambda c: c.list_members(),
                 lambda c: c.get_findings_v2()]:
        with pytest.raises(ClientError) as e:
            call(member)
        err = e.value.response
        assert err["ResponseMetadata"]["HTTPStatusCode"] == 403, err
        assert "members may not call" in err["Error"]["Message"], err
        assert "policy.members_may_call" in err["Error"]["Message"], err
    assert forwarded(hubgate) == []
    admin.describe_hub()
    assert forwarded(hubgate) == [("GET", "/accounts")]
    # A catalogue holds no account's data: members may read it by default.
    r = hubgate.send("GET", "/products", b"", who="member", content_type=None)
    assert r.headers.get("x-hubgate-decision-id"), (r.status, r.text)
    assert forwarded(hubgate)[-1] == ("GET", "/products")


def test_members_may_call_lists_more(make_hubgate, seeded_fake):
    hg = make_hubgate({"policy": {"members_may_call": ["DescribeHub", "GetFindings"]}},
                      fake=seeded_fake)
    hg.client("member").describe_hub()
    # GetFindings listed: members read it unconfined (a hubgate whose role sees one account).
    assert hg.client("member").get_findings(MaxResults=1)["ResponseMetadata"][
        "HTTPStatusCode"] == 200
    assert forwarded(hg) == [("GET", "/accounts"), ("POST", "/findings")]
    # The list replaces the default: DescribeProducts is no longer in it.
    r = hg.send("GET", "/products", b"", who="member", content_type=None)
    assert_envelope(r, 403, "OPERATION_NOT_ALLOWED", "AccessDeniedException")


@pytest.mark.parametrize("listed, why", [
    ("GetFindingz", '"GetFindingz" is not a Security Hub operation'),
    ("CreateInsight", 'CreateInsight is routed "deny", not "forward"'),
    ("BatchUpdateFindings", 'BatchUpdateFindings is routed "policy", not "forward"'),
])
def test_members_may_call_names_forwarded_operations_only(tmp_path, listed, why):
    text = (REPO / "config" / "demo" / "hubgate.toml").read_text()
    assert "[policy]\n" in text
    config = tmp_path / "hubgate.toml"
    config.write_text(text.replace("[policy]\n", f'[policy]\nmembers_may_call = ["{listed}"]\n',
                                   1)
                      .replace('dir = "../../policies"', f'dir = "{REPO / "policies"}"')
                      .replace('callers = "callers.toml"',
                               f'callers = "{REPO / "config" / "demo" / "callers.toml"}"'))
    r = run_hubgate("check", "--config", str(config))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "policy.members_may_call" in r.stderr and why in r.stderr, r.stderr


def test_eval_says_what_the_proxy_would_do_with_a_members_read(tmp_path):
    config = str(REPO / "config" / "demo" / "hubgate.toml")
    unconfined, confined = tmp_path / "all.json", tmp_path / "own.json"
    unconfined.write_text(json.dumps({"MaxResults": 5}))
    confined.write_text(json.dumps({"Filters": OWN_ACCOUNT_FILTER}))
    r = run_hubgate("eval", "--config", config, "--operation", "GetFindings", "--request",
                    str(unconfined), "--as", f"member:{MEMBER_ACCOUNT}")
    assert r.returncode == 1 and r.stdout.startswith("READ_NOT_CONFINED: "), (r.stdout, r.stderr)
    r = run_hubgate("eval", "--config", config, "--operation", "GetFindings", "--request",
                    str(confined), "--as", f"member:{MEMBER_ACCOUNT}")
    assert r.returncode == 0 and r.stdout.startswith("FORWARD: "), (r.stdout, r.stderr)
    r = run_hubgate("eval", "--config", config, "--operation", "GetFindings", "--request",
                    str(unconfined), "--as", "administrator:111111111111")
    assert r.returncode == 0 and r.stdout.startswith("FORWARD: "), (r.stdout, r.stderr)
