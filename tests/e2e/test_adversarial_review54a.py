"""Adversarial review 54a: the code changed since 879213a (framing's unverified heads and
look-alike header names, the per-caller byte share, the lookup queue's compaction, imports'
scope by importer). The attacker holds MEMBER keys (account 222222222222); the administrator
and another member account share hubgate with it. Each test asserts the SAFE outcome: a
failing test shows a hole.

Probes and what they showed (debug build of 2026-12-07, commit 9a4c9c1; fixes since noted):

- HOLE (fixed in stop 54): the byte share was taken for the caller a head CLAIMS, before its
  signature can be checked (src/proxy.rs `admit`). A member that knows the administrator's
  access key id (not a secret) sent 16 heads naming it, signed with a wrong secret, each
  declaring Content-Length 1048576, and never finished the bodies: the administrator's own
  165-byte note got 503 OVERLOADED "the caller of access key HGTESTADMIN000000001 already has
  16777216 body bytes in flight ... its share of server.max_in_flight_body_bytes", for
  body_read_timeout_ms (30 s by default), renewable at will. (The request share had the same
  shape at 64 connections.) Now a request holds, until its caller is proven, the share of the
  claimed caller's requests from its peer address (src/admission.rs), weighed with the
  caller's proven requests; the member's connections here come from 127.0.0.2.
- HOLE (false refusal, fixed in stop 54): a request with no Content-Length was counted at
  max_body_bytes (src/proxy.rs `declared_length`), a GET with no body included. The
  administrator's 24 concurrent boto3 DescribeHub calls (GET /accounts, no body, Security Hub
  answering in 1.5 s) got 8 x 503 OVERLOADED "... this request's 1048576 would take it past
  16777216". hyper's exact size hint (0 for it) is now the length when no Content-Length is
  sent.
- Held: pipelined Content-Length requests (one write, an empty line before the third) are all
  served; a pipelined repeated Content-Length is refused 400; a chunked request then a
  pipelined repeat: 400 or closed, nothing forwarded.
- Held: Expect: 100-continue on a request refused unread (404), followed by a request with
  Content-Length twice as its "body" and a clean head: hyper drains the body in step with the
  capture (one write) or closes the connection (two writes); nothing forwarded.
- Held: a request refused at admission (401, body sent whole) leaves its keep-alive
  connection usable: the next note is served, not refused as an unverified head.
- Held: fragment spellings ('#', '?#a', '#a#b', '#?x=1', '#%20') with a repeated
  Content-Length: 400, nothing forwarded.
- Held: look-alike names over HTTP/1 (X_AMZ_TARGET, x-amz_target, X_Amz-Target,
  X_Original_URL, x_rewrite_url, X_HTTP_Method_Override, Content_Length, X_Amz_Date,
  x_amzn_errortype, X-Amz-Target_) refused 400; Host_, Connection_ and _x-amz-target (folding
  to no header) pass. Over h2 (x_amz_target, transfer_encoding, x_original_url,
  x-amz_security-token): 400, nothing forwarded.
- Held (no false refusals): boto3 keep-alive notes, GetFindings, an administrator's notes;
  boto3 targets with a percent-encoded ARN, a greedy ARN path and a query string; the headers
  real SDKs add (amz-sdk-*, X-Amzn-Trace-Id, X-Amz-User-Agent) and an unrelated x_custom
  header. (test_boto3.py, test_cli.py and test_tls.py pass on this build too.)
- Held: member_imports "own-findings": the member's import of account 333's identifier
  claiming its own account (plain, and with the claim escaped as \\u0032...) does not lock
  333's finding for the administrator, in flight or after; the member's re-import of its own
  finding does not keep the administrator from suppressing it, in flight or after.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from helpers import ADMIN, MEMBER, MEMBER_ACCOUNT, Creds, ident, sign, wait_until
from test_adversarial_http import h2_request, h2_signed
from test_socket_bounds import connect, head_bytes, read_reply, signed_headers
from test_adversarial_review53d import metric
from test_adversarial_upstream import quirky  # noqa: F401

V1 = "/findings/batchupdate"
IMPORT = "/findings/import"
NOTE = {"Text": "triaged", "UpdatedBy": "soc"}


def note_on(fid: str, text: str = "triaged") -> bytes:
    return json.dumps({"FindingIdentifiers": [ident(fid)],
                       "Note": {"Text": text, "UpdatedBy": "soc"}}).encode()


def writes(fake) -> list[dict]:
    """Every finding-changing call the fake received (anything but a GetFindings lookup)."""
    time.sleep(0.2)
    return [r for r in fake.requests()
            if not (r["method"] == "POST" and r["path"] == "/findings")]


def request_bytes(hg, body: bytes, creds=MEMBER, method="PATCH", target=V1,
                  extra: list | None = None, lengths: int = 1) -> bytes:
    headers = signed_headers(hg, body, method=method, path=target.split("#")[0], creds=creds)
    headers += extra or []
    headers += [("Content-Length", str(len(body)))] * lengths
    return head_bytes(method, target, headers) + body


def replies(port: int, data: bytes, n: int) -> list:
    """Sends `data` on one connection and reads up to n answers (fewer if it closes)."""
    s = connect(port)
    out = []
    try:
        s.sendall(data)
        for _ in range(n):
            try:
                out.append(read_reply(s))
            except (AssertionError, ConnectionResetError, socket.timeout, OSError):
                break
    finally:
        s.close()
    return out


@pytest.fixture
def hg(make_fake, make_hubgate):
    return make_hubgate({"server": {"body_read_timeout_ms": 3000}}, fake=make_fake())


# --------------------------------------------------------------------------------------------
# 1. admission: the byte share is taken for the caller the head CLAIMS, before the signature


def slow_bodies(hg, n: int, creds: Creds, declared: int,
                source: str = "127.0.0.1") -> list[socket.socket]:
    """n connections from `source` (a loopback address) whose heads declare `declared`-byte
    bodies, of which only 16 bytes are sent."""
    body = b"{" + b" " * (declared - 2) + b"}"
    headers = sign(creds, "PATCH", hg.host, V1, body, {"Content-Type": "application/json"})
    head = f"PATCH {V1} HTTP/1.1\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", hg.port), timeout=5,
                                     source_address=(source, 0))
        socks.append(s)
        s.sendall(head.encode() + b"\r\n" + body[:16])
    return socks


def test_slow_bodies_claiming_the_admins_key_id_leave_the_admin_its_byte_share(
        make_fake, make_hubgate):
    """The member knows the administrator's access key id (not a secret: it is in every
    request the administrator signs, in CloudTrail, and hubgate's own 503 names it). It opens
    16 connections whose heads claim that key id (signed with a wrong secret: the signature
    cannot be checked before the body is read) and declare 1 MiB bodies it never finishes.
    The share of step 2 is taken for the claimed caller: 16 x 1 MiB is the administrator's
    whole byte share (a quarter of 64 MiB), so the administrator's own 150-byte note must
    still be served. (The request share had the same shape at 64 connections; the byte share
    makes it 16.) Fixed in stop 54: until the signature is checked, a request holds the share
    of the claimed caller's requests from its peer address, so the member's connections come
    from another loopback address than the administrator's (127.0.0.2): from one address,
    as behind a load balancer that hides clients' addresses, the claims still share one
    share (README, Admission)."""
    hg = make_hubgate({"server": {"body_read_timeout_ms": 8000}}, fake=make_fake())
    forged = Creds(ADMIN.access_key, "not-the-admins-secret")
    socks = []
    try:
        socks = slow_bodies(hg, 16, forged, 1_048_576, source="127.0.0.2")
        wait_until(lambda: metric(hg, "hubgate_requests_in_flight") >= 16, 10,
                   "the forged slow requests in flight")
        resp = hg.send("PATCH", V1, {"FindingIdentifiers": [ident("f-admin")],
                                      "Note": {"Text": "triage", "UpdatedBy": "admin"}},
                       who="admin")
        assert resp.status == 200, (resp.status, resp.text[:400])
    finally:
        for s in socks:
            s.close()


# --------------------------------------------------------------------------------------------
# 2. framing: no false refusals of keep-alive and pipelined traffic; no bypass by pipelining


def test_pipelined_requests_with_content_length_are_all_served(hg):
    """Three of the member's notes pipelined on one connection in one write, the third after
    an empty line (RFC 9112 §2.2): every head is the captured head of its request, none is
    refused as unverified."""
    a = request_bytes(hg, note_on("f-own-high", "a"))
    b = request_bytes(hg, note_on("f-own-high", "b"))
    c = request_bytes(hg, note_on("f-own-high", "c"))
    got = replies(hg.port, a + b + b"\r\n" + c, 3)
    assert [r.status for r in got] == [200, 200, 200], [(r.status, r.text[:200]) for r in got]


def test_a_pipelined_repeated_content_length_is_refused(hg):
    """A legitimate note, then on the same connection the member's suppression with its
    Content-Length twice: the second head is captured in step with hyper and refused."""
    good = request_bytes(hg, note_on("f-own-high"))
    body = json.dumps({"FindingIdentifiers": [ident("f-own-high")],
                       "Workflow": {"Status": "SUPPRESSED"}}).encode()
    bad = request_bytes(hg, body, lengths=2)
    got = replies(hg.port, good + bad, 2)
    assert got and got[0].status == 200, got and got[0].text
    if len(got) > 1:
        assert got[1].status == 400, got[1].text
    assert all("SUPPRESSED" not in json.dumps(w.get("body", "")) for w in writes(hg.fake))


def test_a_body_hidden_as_an_early_refused_requests_body_cannot_carry_a_forged_head(hg):
    """Expect: 100-continue on a request hubgate refuses before reading its body (404, an
    unknown path), declaring N bytes; the N bytes that follow at once are a request with
    Content-Length twice, then a clean head of the same method and target. If hyper read the
    N bytes as the next request while the capture counted them as the refused request's body,
    the clean head would be taken for the duplicate's. Safe: nothing SUPPRESSED forwarded."""
    body = json.dumps({"FindingIdentifiers": [ident("f-own-high")],
                       "Workflow": {"Status": "SUPPRESSED"}}).encode()
    smuggled = request_bytes(hg, body, lengths=2)
    cover = request_bytes(hg, note_on("f-own-high"))
    first = head_bytes("PATCH", "/nope", [("Host", hg.host), ("Expect", "100-continue"),
                                          ("Content-Type", "application/json"),
                                          ("Content-Length", str(len(smuggled)))])
    # in two steps: first the head alone (hubgate answers 404 unread), then the rest
    s = connect(hg.port)
    statuses = []
    try:
        s.sendall(first)
        try:
            statuses.append(read_reply(s).status)
        except (AssertionError, OSError):
            pass
        try:
            s.sendall(smuggled + cover)
            for _ in range(2):
                statuses.append(read_reply(s).status)
        except (AssertionError, OSError):
            pass
    finally:
        s.close()
    # and in one write
    replies(hg.port, first + smuggled + cover, 3)
    assert all("SUPPRESSED" not in json.dumps(w.get("body", "")) for w in writes(hg.fake)), \
        statuses


def test_a_keep_alive_connection_after_an_early_refusal_is_not_refused_as_unverified(hg):
    """A request refused before its body is read (unknown access key: 401 at admission),
    whole body sent, then a good note on the same connection: the note is served, or the
    connection was closed (a client reconnects); never a 400 unverified head."""
    bogus = request_bytes(hg, note_on("f-own-high"),
                          creds=Creds("HGTESTNOBODY00000001", "x"))
    good = request_bytes(hg, note_on("f-own-high"))
    got = replies(hg.port, bogus + good, 2)
    assert got and got[0].status == 401, got and got[0].text
    if len(got) > 1:
        assert got[1].status == 200, got[1].text


def test_boto3_keep_alive_calls_are_not_refused(hg):
    """boto3 (one client, so one kept-alive connection): notes, a GetFindings and an
    administrator's import, in sequence, none refused by the framing or look-alike checks."""
    member, admin = hg.client("member"), hg.client("admin")
    for i in range(3):
        r = member.batch_update_findings(FindingIdentifiers=[ident("f-own-high")],
                                         Note={"Text": f"n{i}", "UpdatedBy": "m"})
        assert r["ResponseMetadata"]["HTTPStatusCode"] == 200
    r = admin.get_findings(Filters={"Id": [{"Value": "f-admin", "Comparison": "EQUALS"}]})
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 200
    for i in range(2):
        r = admin.batch_update_findings(FindingIdentifiers=[ident("f-admin")],
                                        Note={"Text": f"a{i}", "UpdatedBy": "a"})
        assert r["ResponseMetadata"]["HTTPStatusCode"] == 200


# --------------------------------------------------------------------------------------------
# 3. look-alike header names: other spellings, HTTP/2


@pytest.mark.parametrize("name", [
    "X_AMZ_TARGET", "x-amz_target", "X_Amz-Target", "X_Original_URL", "x_rewrite_url",
    "X_HTTP_Method_Override", "Content_Length", "Host_", "X_Amz_Date", "x_amzn_errortype",
    "X-Amz-Target_", "Connection_", "_x-amz-target",
])
def test_look_alike_names_are_refused_over_http1(hg, name):
    """Every name that a front end folding '_' to '-' reads as a checked header, an override
    or an x-amz-* header; plus a trailing and a leading underscore ('X-Amz-Target_' folds to
    an x-amz-* name; '_x-amz-target' folds to '-x-amz-target', which is not one)."""
    body = note_on("f-own-high")
    got = replies(hg.port, request_bytes(hg, body, extra=[(name, "x")]), 1)
    assert got, "no answer"
    folded = name.replace("_", "-").lower()
    checked = folded.startswith(("x-amz-", "x-amzn-")) or folded in {
        "x-original-url", "x-rewrite-url", "x-http-method-override", "content-length",
        "host-", "connection-"}
    if folded in ("host-", "connection-", "-x-amz-target"):
        # no header of those names: passed as sent (a front end reads nothing from them)
        assert got[0].status == 200, (name, got[0].status, got[0].text[:200])
    elif checked:
        assert got[0].status == 400, (name, got[0].status, got[0].text[:200])
        assert writes(hg.fake) == []


@pytest.mark.parametrize("name", ["x_amz_target", "transfer_encoding", "x_original_url",
                                  "x-amz_security-token"])
def test_look_alike_names_are_refused_over_h2(hg, name):
    body = note_on("f-admin")
    headers = h2_signed(hg, body, creds=ADMIN) + [(name, "SecurityHubAPIService.X")]
    reply = h2_request(hg, headers, [body])
    assert reply.status == 400, (name, reply.status, reply.body[:300])
    assert writes(hg.fake) == []


def test_headers_real_sdks_send_are_not_look_alikes(hg):
    """The headers boto3, the CLI, the Go, Java and JS SDKs and Lambda's runtime add: none has
    an underscore, and none is refused."""
    body = note_on("f-own-high")
    extra = [("amz-sdk-invocation-id", "0f8d2f3e-1c2b-4c6a-9a8b-5d3e2f1a0b9c"),
             ("amz-sdk-request", "attempt=1; max=3"),
             ("X-Amzn-Trace-Id", "Root=1-5759e988-bd862e3fe1be46a994272793"),
             ("X-Amz-User-Agent", "aws-sdk-js/3.0"), ("User-Agent", "Boto3/1.34 md/Botocore#1.34"),
             ("Accept-Encoding", "identity"), ("x_custom_trace", "1")]
    got = replies(hg.port, request_bytes(hg, body, extra=extra), 1)
    assert got and got[0].status == 200, got and (got[0].status, got[0].text[:300])


# --------------------------------------------------------------------------------------------
# 4. imports: a member's import claiming its own account does not lock another account's


def test_a_members_own_account_import_of_another_accounts_identifier_does_not_lock_it(
        quirky, make_hubgate, tmp_path):
    """member_imports "own-findings". The member imports a finding with the Id and ProductArn
    of account 333's f-other, claiming its own account (Importer::Member, scoped to 222), and
    Security Hub answers slowly. Meanwhile and after, the administrator notes f-other: served
    (not 503 settling). Then the member's import with the claim written '\\u0032...' (the same
    account once unescaped): still its own, still no lock."""
    from test_adversarial_cache3 import serve_v2
    from test_adversarial_model2 import policies_with, reimport
    serve_v2(quirky)
    quirky.import_delay = 0.8
    policies = policies_with(tmp_path, member_imports="own-findings")
    hg = make_hubgate({"policy": {"dir": str(policies)}, "upstream": {"timeout_ms": 3000}},
                      upstream_endpoint=quirky.endpoint)
    for escaped in (False, True):
        doc = json.dumps({"Findings": [reimport("f-other", MEMBER_ACCOUNT)]})
        if escaped:
            doc = doc.replace(f'"AwsAccountId": "{MEMBER_ACCOUNT}"',
                              '"AwsAccountId": "\\u0032' + MEMBER_ACCOUNT[1:] + '"')
            assert "\\u0032" in doc
        out = {}
        sent = quirky.count(IMPORT)
        t = threading.Thread(target=lambda: out.setdefault("r", hg.send(
            "POST", IMPORT, doc, who="member")))
        t.start()
        wait_until(lambda: quirky.count(IMPORT) > sent, 5, "the import to reach Security Hub")
        during = hg.buf({"FindingIdentifiers": [ident("f-other")], "Note": NOTE}, who="admin")
        t.join(5)
        after = hg.buf({"FindingIdentifiers": [ident("f-other")], "Note": NOTE}, who="admin")
        assert out["r"].status == 200, out["r"].text[:300]
        assert during.status == 200, (escaped, during.status, during.text[:300])
        assert after.status == 200, (escaped, after.status, after.text[:300])


def test_a_members_import_of_its_own_finding_does_not_lock_the_administrator_out(
        quirky, make_hubgate, tmp_path):
    """member_imports "own-findings". The member re-imports its own finding f-own-high
    (claiming its own account: Importer::Member, scoped to 222); Security Hub answers slowly.
    The administrator, meanwhile and after, suppresses that finding (administrators may
    change any finding, whatever its state). If the member's import made the finding
    "settling" for the administrator too, a member could keep the administrator from ever
    suppressing or resolving its findings with one import every settle_ms."""
    from test_adversarial_cache3 import serve_v2
    from test_adversarial_model2 import policies_with, reimport
    serve_v2(quirky)
    quirky.import_delay = 0.8
    policies = policies_with(tmp_path, member_imports="own-findings")
    hg = make_hubgate({"policy": {"dir": str(policies)}, "upstream": {"timeout_ms": 3000}},
                      upstream_endpoint=quirky.endpoint)
    out = {}
    sent = quirky.count(IMPORT)
    t = threading.Thread(target=lambda: out.setdefault("r", hg.send(
        "POST", IMPORT, {"Findings": [reimport("f-own-high", MEMBER_ACCOUNT)]}, who="member")))
    t.start()
    wait_until(lambda: quirky.count(IMPORT) > sent, 5, "the import to reach Security Hub")
    change = {"FindingIdentifiers": [ident("f-own-high")], "Workflow": {"Status": "SUPPRESSED"},
              "Note": {"Text": "accepted risk SEC-1", "UpdatedBy": "admin"}}
    during = hg.buf(change, who="admin")
    t.join(5)
    after = hg.buf(change, who="admin")
    assert out["r"].status == 200, out["r"].text[:300]
    assert during.status == 200, ("during", during.status, during.text[:300])
    assert after.status == 200, ("after", after.status, after.text[:300])


# --------------------------------------------------------------------------------------------
# 5. the byte share: requests with no body


def test_concurrent_bodiless_reads_are_not_refused_for_their_bytes(make_fake, make_hubgate):
    """The administrator's 24 concurrent DescribeHub calls (GET /accounts, boto3, no body) while
    Security Hub answers in 1.5 s. max_in_flight_per_caller is 64 by default: all 24 are within
    the caller's share of requests. A request with no Content-Length is counted at
    max_body_bytes (1 MiB) against the caller's byte share (16 MiB): the 17th bodiless GET
    would get 503 although it can bring no body at all."""
    fake = make_fake()
    hg = make_hubgate({}, fake=fake)
    fake.configure(answer_delay_ms={"DescribeHub": 1500})
    statuses, lock = [], threading.Lock()

    def one():
        client = hg.client("admin")
        try:
            code = client.describe_hub()["ResponseMetadata"]["HTTPStatusCode"]
        except client.exceptions.ClientError as e:
            code = (e.response["ResponseMetadata"]["HTTPStatusCode"],
                    e.response["Error"].get("Message", "")[:160])
        except Exception as e:  # noqa: BLE001
            code = repr(e)[:160]
        with lock:
            statuses.append(code)

    threads = [threading.Thread(target=one) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    refused = [s for s in statuses if s != 200]
    assert len(statuses) == 24 and not refused, (len(refused), refused[:2])


def test_a_chunked_request_then_a_pipelined_one_is_not_forwarded_unverified(hg):
    """A chunked note, then pipelined on the same connection the member's suppression with
    Content-Length twice: the capture loses its place after a chunked body, so the second is
    refused or the connection closed; never forwarded."""
    body = note_on("f-own-high")
    headers = signed_headers(hg, body, creds=MEMBER)
    chunked = head_bytes("PATCH", V1, headers + [("Transfer-Encoding", "chunked")]) \
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    sup = json.dumps({"FindingIdentifiers": [ident("f-own-high")],
                      "Workflow": {"Status": "SUPPRESSED"}}).encode()
    got = replies(hg.port, chunked + request_bytes(hg, sup, lengths=2), 2)
    assert got and got[0].status == 200, got and got[0].text
    if len(got) > 1:
        assert got[1].status == 400, got[1].text
    assert all("SUPPRESSED" not in w.get("body", "") for w in writes(hg.fake))


@pytest.mark.parametrize("call", ["update_standards_control", "update_insight",
                                  "get_insight_results", "list_members"])
def test_boto3_calls_with_encoded_or_queried_targets_are_not_refused_as_unverified(hg, call):
    """boto3 calls whose targets carry a percent-encoded ARN, a greedy ARN path or a query:
    hubgate may forward or refuse them (route, operation), but never as a head it could not
    verify (400 VALIDATION_ERROR on the framing)."""
    admin = hg.client("admin")
    arn = ("arn:aws:securityhub:us-east-1:111111111111:control/"
           "aws-foundational-security-best-practices/v/1.0.0/IAM.1")
    insight = "arn:aws:securityhub:us-east-1:111111111111:insight/111111111111/custom/abc"
    calls = {
        "update_standards_control": lambda: admin.update_standards_control(
            StandardsControlArn=arn, ControlStatus="ENABLED"),
        "update_insight": lambda: admin.update_insight(InsightArn=insight, Name="n"),
        "get_insight_results": lambda: admin.get_insight_results(InsightArn=insight),
        "list_members": lambda: admin.list_members(OnlyAssociated=True, MaxResults=5),
    }
    try:
        calls[call]()
        status, message = 200, ""
    except admin.exceptions.ClientError as e:
        status = e.response["ResponseMetadata"]["HTTPStatusCode"]
        message = e.response["Error"].get("Message", "")
    assert not (status == 400 and ("could not be verified" in message
                                   or "header is not accepted" in message)), message


@pytest.mark.parametrize("target", [
    "/findings/batchupdate#", "/findings/batchupdate?#a", "/findings/batchupdate#a#b",
    "/findings/batchupdate#?x=1", "/findings/batchupdate#%20",
])
def test_a_repeated_content_length_behind_other_fragment_spellings_is_refused(hg, target):
    """The member's suppression with Content-Length twice, behind fragment spellings the
    fragment fix may not have met: refused (the repeat seen, or the head unverified), or not
    routed; never forwarded."""
    sup = json.dumps({"FindingIdentifiers": [ident("f-own-high")],
                      "Workflow": {"Status": "SUPPRESSED"}}).encode()
    got = replies(hg.port, request_bytes(hg, sup, target=target, lengths=2), 1)
    assert got, "no answer"
    assert got[0].status in (400, 404), (got[0].status, got[0].text[:300])
    assert writes(hg.fake) == []
