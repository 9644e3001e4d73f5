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

from helpers import ADMIN, MEMBER, assert_envelope, ident, sign
from test_socket_bounds import chunked, exchange, head_bytes, signed_headers

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
