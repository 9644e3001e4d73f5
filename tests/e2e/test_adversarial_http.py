"""Adversarial probes at the HTTP and authentication layer (review round adv2): HTTP/2 framing
that disagrees with itself, SigV4 variants a client library would not send, and what hubgate
writes to its logs when the callers file is malformed.

Requests go out on raw sockets (HTTP/1.1) or through the `h2` state machine with its own
header validation switched off, so the bytes are exactly the ones under test."""

from __future__ import annotations

import json
import socket
import time

import h2.config
import h2.connection
import h2.events
import pytest

from helpers import ADMIN, assert_envelope, ident, sign
from test_socket_bounds import exchange, head_bytes, signed_headers

BUF = "/findings/batchupdate"
NOTE = {"FindingIdentifiers": [ident("f-admin")], "Note": {"Text": "t", "UpdatedBy": "u"}}
WAIT = 5.0


class H2Reply:
    def __init__(self):
        self.status = None
        self.headers = {}
        self.body = b""
        self.reset = None
        self.closed = False

    def json(self):
        return json.loads(self.body)


def h2_request(hg, headers: list[tuple[str, str]], frames: list[bytes],
               trailers: list[tuple[str, str]] | None = None) -> H2Reply:
    """One request on a new h2c (prior knowledge) connection: `headers` as given (pseudo
    headers included, no validation or normalisation), then one DATA frame per item of
    `frames`, the last one ending the stream (or the trailers, when given)."""
    config = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                       normalize_outbound_headers=False,
                                       validate_inbound_headers=False)
    conn = h2.connection.H2Connection(config=config)
    sock = socket.create_connection(("127.0.0.1", hg.port), timeout=WAIT)
    reply = H2Reply()
    try:
        conn.initiate_connection()
        conn.send_headers(1, headers, end_stream=not frames and not trailers)
        for i, data in enumerate(frames):
            conn.send_data(1, data, end_stream=(i == len(frames) - 1 and not trailers))
        if trailers:
            conn.send_headers(1, trailers, end_stream=True)
        sock.sendall(conn.data_to_send())
        deadline = time.monotonic() + WAIT
        done = False
        while not done and time.monotonic() < deadline:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                reply.closed = True
                break
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived):
                    hdrs = {k.decode().lower(): v.decode() for k, v in event.headers}
                    reply.status = int(hdrs[":status"])
                    reply.headers = hdrs
                elif isinstance(event, h2.events.DataReceived):
                    reply.body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.StreamEnded):
                    done = True
                elif isinstance(event, h2.events.StreamReset):
                    reply.reset = event.error_code
                    done = True
                elif isinstance(event, h2.events.ConnectionTerminated):
                    reply.closed = True
                    done = True
            sock.sendall(conn.data_to_send())
    finally:
        sock.close()
    return reply


def h2_signed(hg, body: bytes, method: str = "PATCH", path: str = BUF, creds=ADMIN,
              extra: dict | None = None) -> list[tuple[str, str]]:
    headers = {"Content-Type": "application/json", **(extra or {})}
    signed = sign(creds, method, hg.host, path, body, headers)
    return [(":method", method), (":path", path), (":scheme", "http"),
            (":authority", hg.host)] + [(k.lower(), v) for k, v in signed.items()
                                         if k.lower() != "host"]


def nothing_forwarded(hg):
    time.sleep(0.2)
    assert hg.fake.requests() == [], hg.fake.requests()



@pytest.fixture
def hg(make_fake, make_hubgate):
    """A hubgate in front of its own (seeded) fake."""
    return make_hubgate({"server": {"body_read_timeout_ms": 1500}}, fake=make_fake())


def audited_once(hg, before: int) -> dict:
    """The one audit record written since there were `before` records."""
    from helpers import wait_until
    wait_until(lambda: len(hg.audit_records()) > before, 5, "the audit record")
    time.sleep(0.1)
    records = hg.audit_records()[before:]
    assert len(records) == 1, records
    return records[0]


# ---------------------------------------------------------------------------
# HTTP/2 (h2c, prior knowledge): a body whose framing disagrees with itself


@pytest.mark.parametrize("declared", [-5, +5], ids=["content-length-short", "content-length-long"])
def test_h2_content_length_that_disagrees_with_the_data_frames_is_never_forwarded(hg, declared):
    """h2 carries the body in DATA frames and a content-length header may say how long it is.
    When the two disagree, the stream is reset (the h2 layer's PROTOCOL_ERROR), the request is
    audited as an unreadable body, and nothing reaches Security Hub."""
    body = json.dumps(NOTE).encode()
    before = len(hg.audit_records())
    reply = h2_request(hg, h2_signed(hg, body) + [("content-length", str(len(body) + declared))],
                       [body])
    assert reply.status is None and reply.reset is not None, (reply.status, reply.body)
    record = audited_once(hg, before)
    assert record["status"] == 400 and record["forwarded"] is False, record
    assert record["error"]["code"] == "VALIDATION_ERROR", record
    nothing_forwarded(hg)


def test_h2_body_split_into_odd_frames_is_forwarded_whole(hg):
    """The same body in three DATA frames (one empty) is checked and forwarded as one."""
    body = json.dumps(NOTE).encode()
    reply = h2_request(hg, h2_signed(hg, body), [body[:3], b"", body[3:]])
    assert reply.status == 200, reply.body
    [call] = hg.fake.buf_calls()
    assert call["body"] == body.decode(), call


@pytest.mark.parametrize("case", ["trailers", "two content-lengths"])
def test_h2_trailers_and_a_repeated_content_length_are_refused(hg, case):
    """Over h2 the header map holds both content-length values and trailers arrive as a
    HEADERS frame after the data: each is the 400 envelope, with nothing forwarded."""
    body = json.dumps(NOTE).encode()
    headers = h2_signed(hg, body)
    if case == "trailers":
        reply = h2_request(hg, headers, [body], trailers=[("x-amz-date", "20200101T000000Z")])
        words = "trailer"
    else:
        n = str(len(body))
        reply = h2_request(hg, headers + [("content-length", n), ("content-length", n)], [body])
        words = "content-length header appears more than once"
    assert reply.status == 400, (reply.status, reply.reset, reply.body)
    envelope = reply.json()
    assert envelope["error"]["code"] == "VALIDATION_ERROR", envelope
    assert words in envelope["error"]["message"], envelope
    nothing_forwarded(hg)


# ---------------------------------------------------------------------------
# SigV4 variants a hubgate key may not use


def test_a_presigned_url_is_not_a_signature_hubgate_accepts(hg):
    """Query-string (presigned) SigV4 carries no Authorization header: 401, whatever the
    query says, before the query-string check and with no upstream call."""
    from botocore.auth import SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    from helpers import REGION
    body = json.dumps(NOTE).encode()
    req = AWSRequest(method="PATCH", url=f"http://{hg.host}{BUF}", data=body,
                     headers={"Content-Type": "application/json", "Host": hg.host})
    SigV4QueryAuth(Credentials(ADMIN.access_key, ADMIN.secret_key), "securityhub", REGION,
                   300).add_auth(req)
    target = req.url.split(hg.host, 1)[1]
    assert "X-Amz-Signature=" in target
    reply, s = exchange(hg.port, head_bytes("PATCH", target, [
        ("Host", hg.host), ("Content-Type", "application/json"),
        ("Content-Length", str(len(body)))]) + body)
    s.close()
    body_json = assert_envelope(reply, 401, "UNAUTHENTICATED", "UnrecognizedClientException")
    assert "Authorization header is required" in body_json["error"]["message"], body_json
    record = hg.audit_for(reply.headers["x-amzn-requestid"])
    assert "X-Amz-Signature" not in json.dumps(record), record
    nothing_forwarded(hg)


def test_an_unsigned_payload_signature_does_not_verify(hg):
    """`X-Amz-Content-Sha256: UNSIGNED-PAYLOAD` signs the request without its body. hubgate
    always verifies over the hash of the bytes it will forward, so such a signature does not
    match: the body cannot be swapped under a valid signature."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    from helpers import REGION
    body = json.dumps(NOTE).encode()
    req = AWSRequest(method="PATCH", url=f"http://{hg.host}{BUF}", data=body,
                     headers={"Content-Type": "application/json", "Host": hg.host,
                              "X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    SigV4Auth(Credentials(ADMIN.access_key, ADMIN.secret_key), "securityhub",
              REGION).add_auth(req)
    assert "x-amz-content-sha256" in req.headers["Authorization"]
    reply, s = exchange(hg.port, head_bytes("PATCH", BUF, list(req.headers.items())
                                            + [("Content-Length", str(len(body)))]) + body)
    s.close()
    assert_envelope(reply, 401, "UNAUTHENTICATED", "InvalidSignatureException")
    nothing_forwarded(hg)



@pytest.mark.parametrize("repeats", [2, 15_000, 40_000])
def test_a_signed_header_named_twice_is_401_with_its_audit_record(hg, repeats):
    """SignedHeaders is a set (SigV4 lists each name once, sorted). Named again and again,
    `host` used to reach the signature library once per mention: past 32768 entries its header
    map panicked (`size overflows MAX_SIZE`), the request got a retryable 500 and no audit
    record, and all it took was an access key id (no secret: the panic came before the
    signature was compared). A repeated name is now refused like any malformed header. (Since
    a request head may be 96 KiB, 40,000 mentions (200 KiB) no longer reach hubgate at all:
    hyper answers 431 itself.)"""
    body = json.dumps(NOTE).encode()
    headers = dict(signed_headers(hg, body))
    headers["Authorization"] = headers["Authorization"].replace(
        "SignedHeaders=", "SignedHeaders=" + "host;" * repeats)
    before = len(hg.audit_records())
    reply, s = exchange(hg.port, head_bytes("PATCH", BUF, list(headers.items())
                                            + [("Content-Length", str(len(body)))]) + body)
    s.close()
    if repeats == 40_000:
        assert reply.status == 431, (reply.status, reply.text)
        nothing_forwarded(hg)
        assert "panicked" not in hg.stderr_text()
        return
    assert reply.status == 401, (reply.status, reply.text)
    envelope = reply.json()
    assert envelope["error"]["code"] == "UNAUTHENTICATED", envelope
    record = audited_once(hg, before)
    assert record["decision_id"] == reply.headers["x-amzn-requestid"], record
    assert record["status"] == 401 and record["forwarded"] is False, record
    nothing_forwarded(hg)
    assert "panicked" not in hg.stderr_text()


# ---------------------------------------------------------------------------
# HTTP/1.1 bodies that arrive in unusual but valid ways


def test_expect_100_continue_is_answered_and_the_body_forwarded_exactly(hg):
    """A client that waits for `100 Continue` gets it once hubgate reads the body; the body
    is then checked and forwarded byte for byte (and `Expect` is not sent upstream)."""
    from test_socket_bounds import connect, read_reply
    from helpers import header
    body = json.dumps(NOTE).encode()
    s = connect(hg.port)
    try:
        s.sendall(head_bytes("PATCH", BUF, signed_headers(hg, body) + [
            ("Content-Length", str(len(body))), ("Expect", "100-continue")]))
        s.settimeout(WAIT)
        interim = s.recv(64)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), interim
        s.sendall(body)
        reply = read_reply(s)
    finally:
        s.close()
    assert reply.status == 200, reply.text
    [call] = hg.fake.buf_calls()
    assert call["body"] == body.decode(), call
    assert header(call, "Expect") is None, call["headers"]


def test_chunk_extensions_are_not_part_of_the_forwarded_body(hg):
    """Chunk extensions (`1f;name=value`) frame a chunked body on this hop only: the body
    checked and forwarded is the chunks' data, sent upstream with a Content-Length."""
    from helpers import header
    body = json.dumps(NOTE).encode()
    half = len(body) // 2
    framed = (b"%x;ext=1\r\n%s\r\n%x ; q=\"a;b\"\r\n%s\r\n0;last\r\n\r\n"
              % (half, body[:half], len(body) - half, body[half:]))
    reply, s = exchange(hg.port, head_bytes("PATCH", BUF, signed_headers(hg, body)
                                            + [("Transfer-Encoding", "chunked")]) + framed)
    s.close()
    assert reply.status == 200, reply.text
    [call] = hg.fake.buf_calls()
    assert call["body"] == body.decode(), call
    assert header(call, "Content-Length") == str(len(body)), call["headers"]
    assert header(call, "Transfer-Encoding") is None, call["headers"]


# ---------------------------------------------------------------------------
# the callers file: a malformed entry must not put its secret in a log or on /readyz

# A secret of `hubgate keys new`'s shape, on the line that breaks the file.
LEAKED = "RlZvTe+/cm1sQ9AaaSE41LQ2F+iSLHl4EUS75eGY"
BROKEN_CALLERS = {
    # a typo in the key name: deny_unknown_fields refuses the line the secret is on
    "misspelt key": f'secret_acces_key = "{LEAKED}"',
    # a lost closing quote: a syntax error on the secret's line
    "unterminated": f'secret_access_key = "{LEAKED}',
    # the secret pasted into the wrong field: refused as an unknown variant of role
    "wrong field": f'role = "{LEAKED}"',
}


def broken_callers(kind: str) -> str:
    line = BROKEN_CALLERS[kind]
    # the broken line is line 6 of the entry
    fifth = 'secret_env = "HG_OPS_SECRET"' if line.startswith("role") else 'role = "member"'
    return ('[[caller]]\nid = "ops"\naccount_id = "111111111111"\n'
            'access_key_id = "HGOPSKEY000000000001"\n' + fifth + "\n" + line + "\n")


@pytest.mark.parametrize("kind", sorted(BROKEN_CALLERS))
def test_a_broken_callers_file_does_not_print_its_secret(tmp_path, kind):
    """`hubgate check` (and `serve`, which reports the same error) says where the callers file
    is broken without quoting the line: the line holds a caller's secret."""
    from helpers import POLICY_DIR, run_hubgate, to_toml
    (tmp_path / "callers.toml").write_text(broken_callers(kind))
    (tmp_path / "hubgate.toml").write_text(to_toml({
        "upstream": {"endpoint": "http://127.0.0.1:9"},
        "identity": {"mode": "sigv4", "callers": "callers.toml"},
        "policy": {"dir": str(POLICY_DIR)},
    }))
    done = run_hubgate("check", "--config", str(tmp_path / "hubgate.toml"))
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    out = done.stdout + done.stderr
    assert "callers.toml" in out and "line 6" in out, out
    assert LEAKED not in out, out


def test_a_callers_reload_error_does_not_reach_readyz_or_the_log(make_hubgate, make_fake):
    """A running hubgate whose callers file breaks keeps its callers and says why on /readyz
    and in its log, without the secret of the broken line."""
    from helpers import wait_until
    hg = make_hubgate({"policy": {"watch_interval_ms": 200}}, fake=make_fake())
    callers = hg.workdir / "callers.toml"
    callers.write_text(callers.read_text() + "\n" + broken_callers("unterminated"))

    def stale():
        policy = hg.admin("/readyz").json()["checks"]["policy"]
        return policy["stale"] and "callers.toml" in (policy["last_reload_error"] or "")
    wait_until(stale, 10, "the callers reload error on /readyz")
    readyz = hg.admin("/readyz").text
    assert LEAKED not in readyz, readyz
    # the previous callers still work
    body = json.dumps(NOTE).encode()
    reply, s = exchange(hg.port, head_bytes("PATCH", BUF, signed_headers(hg, body)
                                            + [("Content-Length", str(len(body)))]) + body)
    s.close()
    assert reply.status == 200, reply.text
    hg.stop()
    assert "callers reload failed" in hg.stderr_text()
    assert LEAKED not in hg.stderr_text()
