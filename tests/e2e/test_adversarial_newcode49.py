"""Adversarial review of session 49's new code (f5c0463..f3044ad): the per-caller lookup queue,
the shared journal's overlap rule, a member's policy input withholding another account's
finding state, the record's per-finding AccountId, and the smaller fixes.

- HOLE (fixed): the new rule that a member's refusal tells nothing of another account's
  finding but that it is not the member's (`Document::withheld`, `own_finding`) stopped at
  the policy. A member naming another account's finding while its state was settling (an
  administrator's UserDefinedFields change, a V2 comment on that account, a re-import in
  flight) got 503 STATE_SETTLING instead of the ownership refusal: "finding "f-other" ... was
  changed through hubgate by BatchUpdateFindings 4 ms ago in a way hubgate cannot model",
  "Retry-After: 60". Polling with a victim's finding id read when, and how, the security
  team worked on a finding the member's credentials cannot read, and its SDK retried a request
  that could only be refused. The settle refusals now judge, for a member, only findings that
  are not another account's (`judged_by` in src/enrich.rs; `FindingState::lookup_for_member`):
  another account's finding has no state in the member's input, so its settling changes no
  judgement. Before the lookup, a member is refused as settling only for findings hubgate has
  read as its own (`State::owners`); the first request on a finding whose account is not known
  costs one lookup (test_settle.py's expectation changed), its retries none.
- Held: the lookup queue per principal: a member cannot claim more turns than the callers
  file gives it (sigv4 and passthrough map a key id only through the callers file; mTLS maps
  one certificate to one caller), and a caller's queue leaves the turns when it empties.
- Held: JOURNAL_WRITE's padding: sent-ago is measured before the Redis call and padded by
  op_timeout_ms, so a change answered while this one was in flight is never missed; a change
  shared again after a fallback counts against the whole window (errs to STATE_SETTLING).
- Held: a member's policy input of another account's finding has its account alone, counted
  in summary.accounts and unranked; no shipped rule allows anything it refused before (the
  ownership rule refuses every such finding).
- Held (checked by hand, not kept as tests): a V2 request naming one FindingInfoUid and
  product in two accounts, which the record's per-account groups and a violation's
  (Id, ProductArn) place could not tell apart, is refused 400 before any policy; at
  RUST_LOG=trace with container credentials, neither hubgate's secret key nor its session
  token reaches stderr (only aws_sigv4 is cut, and the credential fetch logs neither).

Noticed and left alone:
- In passthrough a member that knows another principal's access key id (not a secret) is
  queued in that principal's turn until AWS refuses its signature: with turns per principal,
  its flood now delays only that principal (it delayed the whole account before). As before.
- The gauge hubgate_enrichment_queued_accounts was renamed (..._queued_callers): an alert on
  the old name now sees no series rather than zero.
- A change shared within op_timeout_ms after another's answer (through one replica too) is
  journaled unknown: sequential administrator writes 100 ms apart leave the finding
  STATE_SETTLING for settle_ms. Documented in README (the overlap margin); fails closed.
- The panic hook logs through tracing: with RUST_LOG naming only other targets
  (`hubgate::proxy=debug`), a panic is not written at all.
"""

import pytest

from helpers import OTHER_ACCOUNT, PRODUCT_ARN, assert_envelope, ident
from test_in_flight import in_flight

OWN = "member accounts may only update findings of their own account: this account has no such finding"
NOTE = {"Note": {"Text": "looking into it", "UpdatedBy": "newcode49"}}


def body(*fids, **update):
    return {"FindingIdentifiers": [ident(f) for f in fids], **update}


@pytest.fixture
def stack(make_fake, make_hubgate):
    def make(enrichment):
        fake = make_fake()
        return fake, make_hubgate({"enrichment": {"enabled": True, **enrichment}}, fake=fake)
    return make


def v2_comment(account):
    return {"FindingIdentifiers": [{"CloudAccountUid": account, "FindingInfoUid": "x",
                                    "MetadataProductUid": "x"}], "Comment": "triaged"}


REIMPORT = {"SchemaVersion": "2018-10-08", "Id": "f-other", "ProductArn": PRODUCT_ARN,
            "GeneratorId": "g", "AwsAccountId": OTHER_ACCOUNT, "Types": ["Effects/x"],
            "CreatedAt": "2026-11-24T00:00:00Z", "UpdatedAt": "2026-11-24T00:00:00Z",
            "Severity": {"Label": "CRITICAL"}, "Title": "t", "Description": "d",
            "Resources": [{"Type": "Other", "Id": "r"}]}


def refused_for_ownership(resp):
    got = assert_envelope(resp, 403, "POLICY_DENIED", "AccessDeniedException")
    assert [d["msg"] for d in got["error"]["details"]] == [OWN], got
    assert "retry-after" not in resp.headers, resp.headers


@pytest.mark.parametrize("write", ["unmodelled", "v2", "import_in_flight"])
def test_another_accounts_settling_finding_is_refused_for_ownership_not_as_settling(stack,
                                                                                    write):
    """The administrator changes f-other (account 333333333333) in a way hubgate cannot model;
    the member naming it is refused for ownership, as at any other time, and learns nothing of
    the write. The member's own finding in the same window is still judged as usual."""
    fake, hg = stack({"cache_ttl_ms": 0, "settle_ms": 60000})
    thread = None
    if write == "unmodelled":
        r = hg.buf(body("f-other", UserDefinedFields={"ticket": "SEC-9"}), who="admin")
        assert r.status == 200, r.text
    elif write == "v2":
        r = hg.send("PATCH", "/findingsv2/batchupdatev2", v2_comment(OTHER_ACCOUNT), who="admin")
        assert r.status == 200, r.text
    else:
        fake.configure(answer_delay_ms={"BatchImportFindings": 1500})
        thread, answers = in_flight(
            fake, lambda: hg.send("POST", "/findings/import", {"Findings": [REIMPORT]},
                                  who="admin"),
            path="/findings/import")
    for _ in range(2):  # an SDK's retry: the same answer
        resp = hg.buf(body("f-other", **NOTE), who="member")
        refused_for_ownership(resp)
        assert "SEC-9" not in resp.text and "Batch" not in resp.text, resp.text
    assert hg.buf(body("f-own-high", **NOTE), who="member").status == 200
    if thread is not None:
        assert thread.is_alive(), "the import was answered before the member's request"
        thread.join(30)
        assert answers["admin"].status == 200, answers["admin"].text
