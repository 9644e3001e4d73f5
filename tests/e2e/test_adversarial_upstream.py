"""Adversarial review (what Security Hub answers, and upstream failure modes).

The upstream here is a small scripted Security Hub in this file (`Quirky`), not the fake: real
AWS is not hostile, but it pages, is eventually consistent, answers with findings that were not
asked for (GetFindings ORs its Id and ProductArn filters), and sits behind load balancers that
answer 5xx with HTML. Signatures are not checked: only what hubgate does with the answers
matters.

- HOLE (fixed): a BatchUpdateFindings answer that lists as processed a finding the request did
  not name was written through to that finding's cached state: the cache then said the
  finding had the severity the update set, which Security Hub never gave it, and a member's
  lowering of it was judged on that state and forwarded.
- HOLE (fixed): an upstream answer's hop-by-hop headers (Connection: close, Keep-Alive,
  Upgrade, ...) were relayed to the caller, whose keep-alive connection was then closed.
- HOLE (fixed): a NextToken chain that comes round again was followed to the page limit (20
  calls of the shared GetFindings quota); it now fails at the first repeated token.
- HOLE (fixed): a page throttled mid-chain restarted the chain from its first page.
- Held: a chain that never ends stops at 20 pages (502); an empty page with a NextToken is
  followed.
- Held: a finding answered under an Id that differs only in case is not the finding asked
  for (refused as not found for members); the same key answered for two accounts, or twice
  with differing states, is judged as a finding whose owner hubgate cannot read; an
  AwsAccountId that is absent, null, a number or not exactly the member's text is no
  member's.
- Held: GetFindings answers hubgate cannot interpret (HTML 503, a 200 whose body is an error,
  a truncated body, a gzip body it did not ask for, a wrong JSON type) fail closed with 502,
  nothing forwarded; a lookup answer whose body stalls is 504 within upstream.timeout_ms.
- Held: a forward's 200 whose body is not JSON (applied, but unreadable) goes back as it
  came, and the cached state of the findings it named is dropped (the next decision looks
  them up again).
- Held: a raise Security Hub applied but answered too late (504) or cut short (502) leaves no
  cached state behind: a member's lowering after it is judged on the raise.
- Held: a connection on which the upstream sent an extra response is not reused for the next
  request (that response is never handed to another request).
- HOLE (fixed, session 48): a lookup answered with a 5xx that is not a throttle (503
  ServiceUnavailableException, 500 InternalException) failed the whole update at once with 502,
  though a read can be asked again; now it is asked again up to twice (an SDK's standard
  retries), with jittered backoff within the request's deadline.
"""

from __future__ import annotations

import gzip
import http.client
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from helpers import (ADMIN_ACCOUNT, CALLERS, MEMBER_ACCOUNT, OTHER_ACCOUNT, PRODUCT_ARN,
                     LoopbackServer, assert_envelope, finding, ident, sign, recv_head)

NOTE = {"Text": "triaged", "UpdatedBy": "soc"}


def matches(f: dict, filters: dict) -> bool:
    """Security Hub's EQUALS string filters: values of one attribute ORed, attributes ANDed."""
    for attr, conds in filters.items():
        if not any(f.get(attr) == c["Value"] for c in conds):
            return False
    return True


class Quirky:
    """A scripted Security Hub on 127.0.0.1 (HTTP/1.1, keep-alive). GetFindings filters the
    stored findings on Id and ProductArn; BatchUpdateFindings applies Severity.Label and Note
    and lists the named findings as processed. `on_get` / `on_update` replace an answer:
    called with the request's JSON (and, for GetFindings, the default answer), they return
    (status, headers, body bytes), or None for the default."""

    def __init__(self, findings: list[dict]):
        self.findings = {(f["Id"], f["ProductArn"]): json.loads(json.dumps(f)) for f in findings}
        self.on_get = None
        self.on_update = None
        self.calls: list[tuple[str, str, dict]] = []
        self.lock = threading.Lock()
        quirky = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_):
                pass

            def do_POST(self):
                quirky._serve(self)

            do_PATCH = do_POST
            do_GET = do_POST

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def count(self, path: str) -> int:
        with self.lock:
            return sum(1 for _, p, _ in self.calls if p == path)

    def severity(self, fid: str) -> str:
        return self.findings[(fid, PRODUCT_ARN)]["Severity"]["Label"]

    def _serve(self, h: BaseHTTPRequestHandler):
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            req = json.loads(raw or b"{}")
        except ValueError:
            req = {}
        with self.lock:
            self.calls.append((h.command, h.path, req))
        if h.path == "/findings" and h.command == "POST":
            filters = req.get("Filters", {})
            default = {"Findings": [f for f in self.findings.values() if matches(f, filters)]}
            answer = self.on_get(req, default) if self.on_get else None
            answer = answer or (200, {}, json.dumps(default).encode())
        elif h.path == "/findings/batchupdate":
            answer = self.on_update(req) if self.on_update else None
            answer = answer or self._apply(req)
        else:
            answer = (404, {}, b'{"message": "no such route"}')
        status, headers, body = answer
        h.send_response(status)
        headers = {"Content-Type": "application/json", "x-amzn-RequestId": "quirky-1",
                   **headers}
        for k, v in headers.items():
            h.send_header(k, v)
        if "Content-Length" not in headers:
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _apply(self, req: dict):
        processed = []
        for ident_ in req.get("FindingIdentifiers", []):
            f = self.findings.get((ident_["Id"], ident_["ProductArn"]))
            if f is None:
                continue
            if "Severity" in req and "Label" in req["Severity"]:
                f["Severity"] = {"Label": req["Severity"]["Label"]}
            if "Note" in req:
                f["Note"] = req["Note"]
            processed.append(ident_)
        return (200, {}, json.dumps({"ProcessedFindings": processed,
                                     "UnprocessedFindings": []}).encode())

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def quirky():
    up = Quirky([
        finding("f-own-critical", MEMBER_ACCOUNT, "CRITICAL", 90),
        finding("f-own-high", MEMBER_ACCOUNT, "HIGH", 70),
        finding("f-other", OTHER_ACCOUNT, "MEDIUM", 40),
        finding("f-admin", ADMIN_ACCOUNT, "LOW", 20),
    ])
    yield up
    up.stop()


def hubgate_on(make_hubgate, up, sections: dict | None = None):
    overrides = {"upstream": {"timeout_ms": 1000}}
    for k, v in (sections or {}).items():
        overrides.setdefault(k, {}).update(v)
    return make_hubgate(overrides, upstream_endpoint=up.endpoint)


def upd(fid: str, **fields) -> dict:
    return {"FindingIdentifiers": [ident(fid)], **fields}


# --- the forward's answer ---------------------------------------------------------------


def test_a_processed_finding_the_request_did_not_name_is_not_written_through(quirky,
                                                                             make_hubgate):
    """The member's CRITICAL finding is cached (its note needed a lookup). The administrator
    then lowers another finding to LOW, and the answer lists the member's finding as processed
    too (an answer that does not match the request: it names a finding nobody sent). hubgate
    wrote the LOW through to the member's cached finding, so the member's own CRITICAL to LOW
    was judged LOW to LOW and forwarded. Only the findings the request named may take its
    change; the member's lowering must be refused."""
    hg = hubgate_on(make_hubgate, quirky, {"enrichment": {"cache_ttl_ms": 60000}})
    first = hg.buf(upd("f-own-critical", Note=NOTE), who="member")
    assert first.status == 200, first.text

    def also_the_members(req):
        listed = req["FindingIdentifiers"] + [ident("f-own-critical")]
        return 200, {}, json.dumps({"ProcessedFindings": listed,
                                    "UnprocessedFindings": []}).encode()

    quirky.on_update = also_the_members
    admin = hg.buf(upd("f-admin", Severity={"Label": "LOW"}, Note=NOTE), who="admin")
    assert admin.status == 200, admin.text
    quirky.on_update = None

    lookups = quirky.count("/findings")
    lowering = hg.buf(upd("f-own-critical", Severity={"Label": "LOW"}, Note=NOTE),
                      who="member")
    assert_envelope(lowering, 403, "POLICY_DENIED", "AccessDeniedException")
    assert "lower" in lowering.json()["error"]["message"], lowering.text
    assert quirky.severity("f-own-critical") == "CRITICAL"
    # the listed finding's cached state was dropped: it was looked up again
    assert quirky.count("/findings") == lookups + 1


def test_a_forwards_200_that_is_not_json_goes_back_as_it_came_and_drops_the_cached_state(
        quirky, make_hubgate):
    """The update was applied, but its answer cannot be read: the caller gets Security Hub's
    bytes and status as they came (never a false refusal, never a made-up success body), and
    the named finding's cached state is dropped: the next decision looks it up again."""
    hg = hubgate_on(make_hubgate, quirky, {"enrichment": {"cache_ttl_ms": 60000}})
    assert hg.buf(upd("f-own-high", Note=NOTE), who="member").status == 200
    lookups = quirky.count("/findings")
    def applied_unreadable(req):
        quirky._apply(req)
        return 200, {"Content-Type": "text/html"}, b"<html>OK</html>"

    quirky.on_update = applied_unreadable
    resp = hg.buf(upd("f-own-high", Note={"Text": "second", "UpdatedBy": "soc"}),
                  who="member")
    assert resp.status == 200 and resp.body == b"<html>OK</html>", resp.text
    rec = hg.audit_for(resp.headers["x-hubgate-decision-id"])
    assert rec["forwarded"] is True and rec["upstream_status"] == 200, rec
    quirky.on_update = None
    again = hg.buf(upd("f-own-high", Note=NOTE), who="member")
    assert again.status == 200, again.text
    assert quirky.count("/findings") == lookups + 1, "the cached state outlived the answer"


@pytest.mark.parametrize("how", ["late", "cut-short"])
def test_a_raise_applied_but_not_answered_leaves_no_cached_state_to_lower_it_on(
        quirky, make_hubgate, how):
    """The member's HIGH finding is cached. An administrator raises it to CRITICAL; Security
    Hub applies it but its answer comes after upstream.timeout_ms (504), or is cut short after
    its head (502). The caller cannot tell whether it was applied, and neither can hubgate:
    the member's HIGH on it (a lowering from CRITICAL) must not be judged on the cached HIGH."""
    hg = hubgate_on(make_hubgate, quirky, {"enrichment": {"cache_ttl_ms": 60000}})
    assert hg.buf(upd("f-own-high", Note=NOTE), who="member").status == 200

    def applied_then_lost(req):
        quirky._apply(req)
        if how == "late":
            time.sleep(1.5)
            return None
        return 200, {"Content-Length": "400", "Connection": "close"}, b'{"ProcessedFindings": ['

    quirky.on_update = applied_then_lost
    raise_ = hg.buf(upd("f-own-high", Severity={"Label": "CRITICAL"}), who="admin")
    code = {"late": (504, "UPSTREAM_TIMEOUT"), "cut-short": (502, "UPSTREAM_UNAVAILABLE")}[how]
    assert_envelope(raise_, *code, "InternalException")
    rec = hg.audit_for(raise_.headers["x-amzn-requestid"])
    # the record says the write went out (answered or not)
    assert rec["forwarded"] is True or rec["error"]["message"].endswith(
        "Security Hub may have applied it"), rec
    quirky.on_update = None
    assert quirky.severity("f-own-high") == "CRITICAL"
    lowering = hg.buf(upd("f-own-high", Severity={"Label": "HIGH"}), who="member")
    assert_envelope(lowering, 403, "POLICY_DENIED", "AccessDeniedException")
    assert quirky.severity("f-own-high") == "CRITICAL"


# --- GetFindings answers ------------------------------------------------------------------


@pytest.mark.parametrize("tokens", [["again"], ["a", "b", "c"]])
def test_a_next_token_chain_that_loops_is_left_at_the_first_repeat_and_fails_closed(
        quirky, make_hubgate, tokens):
    """The pages' NextTokens come round again (the same token every time, or a cycle of
    three). hubgate followed them to its page limit (20 calls of the account's GetFindings
    quota, 3/s shared by every caller, and again on each SDK retry of the 502). A token already
    followed is a loop: hubgate stops there, refuses with a 5xx that is not a throttle, and
    forwards nothing."""
    def looping(req, default):
        at = tokens.index(req["NextToken"]) + 1 if req.get("NextToken") in tokens else 0
        return 200, {}, json.dumps({**default, "NextToken": tokens[at % len(tokens)]}).encode()

    quirky.on_get = looping
    hg = hubgate_on(make_hubgate, quirky, {
        "quota": {"max_wait_ms": 20000},
        "quota.limits": {"GetFindings": {"rate": 50.0, "burst": 50}}})
    started = time.monotonic()
    resp = hg.buf(upd("f-own-high", Note=NOTE), who="member")
    assert resp.status in (502, 504), resp.text
    assert resp.headers["x-amzn-errortype"] == "InternalException"
    assert time.monotonic() - started < 25
    assert "NextToken" in resp.json()["error"]["message"], resp.text
    time.sleep(0.5)
    calls = quirky.count("/findings")
    assert calls == len(tokens) + 1, calls
    assert quirky.count("/findings/batchupdate") == 0
    time.sleep(1.0)
    assert quirky.count("/findings") == calls, "hubgate went on paging after it answered"


def test_a_next_token_chain_that_never_ends_stops_at_the_page_limit(quirky, make_hubgate):
    """A new NextToken on every page, and never a last page: hubgate stops at 20 pages and
    refuses with a 5xx (not a throttle), forwarding nothing."""
    quirky.on_get = lambda req, default: (200, {}, json.dumps(
        {**default, "NextToken": f"t{len(quirky.calls)}"}).encode())
    hg = hubgate_on(make_hubgate, quirky, {
        "quota.limits": {"GetFindings": {"rate": 50.0, "burst": 50}}})
    resp = hg.buf(upd("f-own-high", Note=NOTE), who="member")
    body = assert_envelope(resp, 502, "UPSTREAM_UNAVAILABLE", "InternalException")
    assert "more than 20 pages" in body["error"]["message"], body
    time.sleep(0.5)
    assert quirky.count("/findings") == 20
    assert quirky.count("/findings/batchupdate") == 0


def test_an_empty_page_with_a_next_token_is_followed_to_the_finding(quirky, make_hubgate):
    """The first page is empty but says there is more; the finding is on the second. A member
    lowering it is judged on it (refused), not on 'not found' or on the empty page."""
    def paged(req, default):
        if req.get("NextToken") is None:
            return 200, {}, b'{"Findings": [], "NextToken": "page-2"}'
        return 200, {}, json.dumps({**default, "NextToken": None}).encode()

    quirky.on_get = paged
    hg = hubgate_on(make_hubgate, quirky)
    resp = hg.buf(upd("f-own-critical", Severity={"Label": "LOW"}), who="member")
    assert_envelope(resp, 403, "POLICY_DENIED", "AccessDeniedException")
    assert "lower" in resp.json()["error"]["message"], resp.text
    assert quirky.count("/findings") == 2


def test_a_throttled_page_is_asked_for_again_not_the_whole_chain(quirky, make_hubgate):
    """The finding is on the third page; the third page's call is throttled once. hubgate
    retried the lookup from the first page, spending again every page it had read, when the
    account's quota had just run out; it now asks for the throttled page again, and judges on
    what the chain says."""
    throttled = []

    def paged(req, default):
        token = req.get("NextToken")
        if token is None:
            return 200, {}, b'{"Findings": [], "NextToken": "p2"}'
        if token == "p2":
            return 200, {}, b'{"Findings": [], "NextToken": "p3"}'
        if not throttled:
            throttled.append(token)
            return 429, {"x-amzn-ErrorType": "TooManyRequestsException"}, \
                b'{"__type": "TooManyRequestsException", "message": "Rate exceeded"}'
        return 200, {}, json.dumps(default).encode()

    quirky.on_get = paged
    hg = hubgate_on(make_hubgate, quirky)
    resp = hg.buf(upd("f-own-critical", Severity={"Label": "LOW"}), who="member")
    assert_envelope(resp, 403, "POLICY_DENIED", "AccessDeniedException")
    assert "lower" in resp.json()["error"]["message"], resp.text
    tokens = [req.get("NextToken") for _, path, req in quirky.calls if path == "/findings"]
    assert tokens == [None, "p2", "p3", "p3"], tokens
    rec = hg.audit_for(resp.headers["x-amzn-requestid"])
    assert rec["metrics"]["counter_lookup_calls"] == 4, rec["metrics"]


def test_a_finding_answered_under_an_id_of_another_case_is_not_the_one_asked_for(
        quirky, make_hubgate):
    """GetFindings answers F-OWN-CRITICAL (another finding, or a case-folding filter) for
    f-own-critical, which Security Hub does not have. The member's change of f-own-critical
    is refused as not found, never judged on the other finding's state."""
    def case_folded(req, default):
        f = finding("F-OWN-CRITICAL", MEMBER_ACCOUNT, "LOW", 20)
        return 200, {}, json.dumps({"Findings": [f]}).encode()

    quirky.on_get = case_folded
    hg = hubgate_on(make_hubgate, quirky)
    resp = hg.buf(upd("f-own-critical", Severity={"Label": "LOW"}), who="member")
    assert_envelope(resp, 403, "POLICY_DENIED", "AccessDeniedException")
    assert "no such finding" in resp.text, resp.text
    assert quirky.count("/findings/batchupdate") == 0


@pytest.mark.parametrize("order", ["own-first", "other-first", "own-twice-differing"])
def test_one_key_answered_for_two_accounts_is_no_members_finding(quirky, make_hubgate, order):
    """(Id, ProductArn) answered twice: the member's own copy and another account's, or two
    differing states of the member's own (a page boundary that moved between calls). Whichever
    comes first or last, the member may not lower it: neither copy is the one to judge on."""
    def twice(req, default):
        own = finding("f-own-high", MEMBER_ACCOUNT, "HIGH", 70)
        other = finding("f-own-high", OTHER_ACCOUNT, "HIGH", 70)
        pair = {"own-first": [own, other], "other-first": [other, own],
                "own-twice-differing": [own, finding("f-own-high", MEMBER_ACCOUNT, "LOW")]}
        return 200, {}, json.dumps({"Findings": pair[order]}).encode()

    quirky.on_get = twice
    hg = hubgate_on(make_hubgate, quirky)
    resp = hg.buf(upd("f-own-high", Severity={"Label": "LOW"}), who="member")
    assert_envelope(resp, 403, "POLICY_DENIED", "AccessDeniedException")
    assert quirky.count("/findings/batchupdate") == 0


@pytest.mark.parametrize("account", ["absent", None, 222222222222, "222222222222 ",
                                     "0222222222222"])
def test_a_found_finding_whose_account_is_not_the_members_text_is_not_the_members(
        quirky, make_hubgate, account):
    """AwsAccountId missing, null, a number, or a text that is not exactly the member's
    account id: hubgate cannot verify the member owns the finding, so its note is refused."""
    def odd(req, default):
        f = finding("f-own-high", MEMBER_ACCOUNT, "HIGH", 70)
        if account == "absent":
            del f["AwsAccountId"]
        else:
            f["AwsAccountId"] = account
        return 200, {}, json.dumps({"Findings": [f]}).encode()

    quirky.on_get = odd
    hg = hubgate_on(make_hubgate, quirky)
    resp = hg.buf(upd("f-own-high", Note=NOTE), who="member")
    assert_envelope(resp, 403, "POLICY_DENIED", "AccessDeniedException")
    assert quirky.count("/findings/batchupdate") == 0


UNREADABLE = {
    "html-503": (503, {"Content-Type": "text/html"}, b"<html><h1>503 Service Unavailable</h1>"),
    "200-error-body": (200, {}, b'{"__type": "InternalFailure", "message": "oops"}'),
    "truncated": (200, {}, b'{"Findings": [{"Id": "f-own-high", "ProductArn": "arn'),
    "gzip-unasked": (200, {"Content-Encoding": "gzip"},
                     gzip.compress(b'{"Findings": []}')),
    "findings-not-a-list": (200, {}, b'{"Findings": {"Id": "f-own-high"}}'),
    "trailing-garbage": (200, {}, b'{"Findings": []} {"Findings": []}'),
    "html-200": (200, {"Content-Type": "text/html"}, b"<html>maintenance</html>"),
    # the connection ends 14 bytes into a 5000-byte answer
    "reset-mid-body": (200, {"Content-Length": "5000", "Connection": "close"},
                       b'{"Findings": ['),
}


@pytest.mark.parametrize("kind", sorted(UNREADABLE))
def test_a_lookup_answer_hubgate_cannot_read_fails_closed_with_502(quirky, make_hubgate, kind):
    quirky.on_get = lambda req, default: UNREADABLE[kind]
    hg = hubgate_on(make_hubgate, quirky)
    resp = hg.buf(upd("f-own-high", Note=NOTE), who="member")
    body = assert_envelope(resp, 502, "UPSTREAM_UNAVAILABLE", "InternalException")
    assert "GetFindings" in body["error"]["message"], body
    assert quirky.count("/findings/batchupdate") == 0
    rec = hg.audit_for(resp.headers["x-amzn-requestid"])
    assert rec["forwarded"] is False, rec


def test_a_finding_with_a_severity_label_hubgate_does_not_know_cannot_be_lowered(
        quirky, make_hubgate):
    """Severity.Label of a kind hubgate does not rank ('SEVERE', lower case), a number where
    the label belongs, a Normalized that is not an integer: the member may not change the
    severity (the rules cannot tell 'lower')."""
    for severity in [{"Label": "SEVERE"}, {"Label": 90}, {"Label": "critical"},
                     {"Normalized": 95.5}]:
        def odd(req, default, severity=severity):
            f = finding("f-own-high", MEMBER_ACCOUNT, "HIGH", 70)
            f["Severity"] = severity
            return 200, {}, json.dumps({"Findings": [f]}).encode()

        quirky.on_get = odd
        hg = hubgate_on(make_hubgate, quirky, {"enrichment": {"cache_ttl_ms": 0}})
        resp = hg.buf(upd("f-own-high", Severity={"Label": "LOW"}), who="member")
        assert_envelope(resp, 403, "POLICY_DENIED", "AccessDeniedException")
    assert quirky.count("/findings/batchupdate") == 0


# --- timing and connections ------------------------------------------------------------------


def stalling_after(prefix: bytes, hold: float, seen: list):
    """A LoopbackServer answer: reads one request, sends `prefix`, then holds the connection."""
    def answer(conn, _n):
        conn.settimeout(hold + 5)
        data = recv_head(conn)
        if data is None:
            return
        seen.append(data.split(b"\r\n", 1)[0])
        conn.sendall(prefix)
        time.sleep(hold)
    return answer


def test_a_lookup_whose_answer_stalls_mid_body_is_504_within_the_timeout(make_hubgate):
    seen: list = []
    server = LoopbackServer(stalling_after(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"
        b'{"Findings": [', 6, seen))
    try:
        hg = make_hubgate({"upstream": {"timeout_ms": 500}},
                          upstream_endpoint=f"http://127.0.0.1:{server.port}")
        started = time.monotonic()
        resp = hg.buf(upd("f-own-high", Note=NOTE), who="member")
        assert time.monotonic() - started < 3
        assert_envelope(resp, 504, "UPSTREAM_TIMEOUT", "InternalException")
        assert all(line.startswith(b"POST /findings ") for line in seen), seen
    finally:
        server.close()


def test_an_extra_response_on_a_kept_alive_connection_is_never_handed_to_the_next_request(
        make_hubgate):
    """The upstream answers hubgate's read with two responses in one write: the second one
    (a finding list nobody asked for) must not become the answer to hubgate's next call on
    that connection."""
    def two_answers(conn, n):
        conn.settimeout(5)
        while True:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, rest = data.split(b"\r\n\r\n", 1)
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(rest) < length:
                rest += conn.recv(65536)
            body = json.dumps({"Hub": f"connection-{n}"}).encode()
            extra = b'{"Findings": [], "Stale": true}'
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body
                + b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(extra)).encode() + b"\r\n\r\n" + extra)

    server = LoopbackServer(two_answers)
    try:
        hg = make_hubgate({}, upstream_endpoint=f"http://127.0.0.1:{server.port}")
        for _ in range(3):
            resp = hg.send("GET", "/accounts", b"", who="admin")
            assert resp.status == 200, resp.text
            assert b"Stale" not in resp.body, resp.text
            assert resp.json()["Hub"].startswith("connection-"), resp.text
            time.sleep(0.1)
    finally:
        server.close()


def test_a_read_whose_answer_stalls_mid_body_does_not_hold_the_caller_past_the_send_timeout(
        make_hubgate):
    """A forwarded read's answer streams from upstream; when the upstream stops sending half
    way, hubgate must not keep the caller (and its in-flight slot) for as long as the upstream
    holds the connection."""
    seen: list = []
    server = LoopbackServer(stalling_after(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"
        b'{"Hub', 8, seen))
    try:
        hg = make_hubgate({"server": {"response_send_timeout_ms": 1000}},
                          upstream_endpoint=f"http://127.0.0.1:{server.port}")
        started = time.monotonic()
        try:
            resp = hg.send("GET", "/accounts", b"", who="admin")
        except (OSError, http.client.HTTPException):
            pass  # the connection was closed with the answer unfinished
        else:
            assert len(resp.body) < 500, resp.text
        assert time.monotonic() - started < 6, "hubgate held the caller until the upstream let go"
    finally:
        server.close()



def test_an_answers_hop_by_hop_headers_are_not_relayed_to_the_caller(make_hubgate):
    """The upstream ends its connection to hubgate after each answer (`Connection: close`, as
    a load balancer does) and names other hop-by-hop headers. They describe hubgate's hop, not
    the caller's: relayed, the caller's keep-alive connection to hubgate was closed after every
    answer. The caller's connection must stay open, and the hop's headers must not reach it."""
    def closing(conn, _n):
        conn.settimeout(5)
        data = recv_head(conn)
        if data is None:
            return
        body = b'{"HubArn": "arn:hub"}'
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"x-amzn-RequestId: up-1\r\nConnection: close, X-Hop\r\n"
                     b"X-Hop: hop-only\r\nKeep-Alive: timeout=1\r\nUpgrade: h2c\r\n"
                     b"Proxy-Authenticate: Basic\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)

    server = LoopbackServer(closing)
    try:
        hg = make_hubgate({}, upstream_endpoint=f"http://127.0.0.1:{server.port}")
        conn = http.client.HTTPConnection("127.0.0.1", hg.port, timeout=10)
        try:
            for _ in range(2):
                headers = sign(CALLERS["admin"], "GET", hg.host, "/accounts", b"",
                               {"Content-Type": "application/json"})
                conn.request("GET", "/accounts", headers=headers)
                resp = conn.getresponse()
                assert resp.status == 200 and resp.read() == b'{"HubArn": "arn:hub"}'
                names = {k.lower() for k, _ in resp.getheaders()}
                assert not names & {"connection", "x-hop", "keep-alive", "upgrade",
                                    "proxy-authenticate"}, resp.getheaders()
                assert resp.getheader("x-amzn-requestid") == "up-1"
                assert not resp.will_close, "the caller's connection was closed"
            assert conn.sock is not None, "http.client had to reconnect"
        finally:
            conn.close()
    finally:
        server.close()


def test_an_answer_framed_by_chunks_and_a_length_reaches_the_caller_whole(make_hubgate):
    """The upstream's answer is chunked and also carries a Content-Length that is not its
    length (RFC 9112: the coding wins). The caller must get the whole body, never a 200 cut
    to the stray length, nor a connection closed with nothing."""
    body = b'{"HubArn": "arn:aws:securityhub:us-east-1:111111111111:hub/default"}'

    def both(conn, _n):
        conn.settimeout(5)
        data = recv_head(conn)
        if data is None:
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
                     + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
        time.sleep(1)

    server = LoopbackServer(both)
    try:
        hg = make_hubgate({}, upstream_endpoint=f"http://127.0.0.1:{server.port}")
        resp = hg.send("GET", "/accounts", b"", who="admin")
        assert resp.status == 200 and resp.body == body, resp
    finally:
        server.close()


@pytest.mark.parametrize("failures, status", [(1, 200), (3, 502)])
def test_a_lookup_that_meets_a_server_error_is_asked_again(make_fake, make_hubgate, failures,
                                                          status):
    """A member's raise whose lookup meets `failures` 503s in a row: one is asked again and
    the raise goes through; three (the first call and its two retries) fail closed with 502,
    nothing forwarded, every call made counted in the record."""
    fake = make_fake()
    fake.configure(fail_next={"GetFindings": [failures, 503, "ServiceUnavailableException"]})
    hg = make_hubgate({}, fake=fake)
    resp = hg.buf({"FindingIdentifiers": [ident("f-own-high")],
                   "Severity": {"Label": "CRITICAL"}}, who="member")
    calls = [r for r in fake.requests() if r.get("operation") == "GetFindings"]
    record = hg.audit_records()[-1]
    if status == 200:
        assert resp.status == 200, resp.text
        assert len(calls) == 2, calls
        assert record["forwarded"] is True
    else:
        assert_envelope(resp, 502, "UPSTREAM_UNAVAILABLE", "InternalException")
        assert len(calls) == 3, calls
        assert fake.buf_calls() == []
        assert record["forwarded"] is False
    assert record["metrics"]["counter_lookup_calls"] == len(calls), record["metrics"]
