"""A client that goes away while its request is being handled: whatever hubgate already sent
to Security Hub still gets its audit record ("nothing is lost from the audit trail")."""

import json
import socket
import time

from helpers import CALLERS, ident, sign, wait_until


def send_and_hang_up(hg, body: dict, who: str, after: float, method: str = "PATCH",
                     path: str = "/findings/batchupdate"):
    """Send a signed request (a BatchUpdateFindings unless `method` and `path` say otherwise) on
    a raw socket and close it `after` seconds later, unanswered."""
    send_raw_and_hang_up(hg, json.dumps(body).encode(), who, after, method, path)


def send_raw_and_hang_up(hg, raw: bytes, who: str, after: float, method: str = "PATCH",
                         path: str = "/findings/batchupdate"):
    """`send_and_hang_up` with the body's bytes as given."""
    headers = sign(CALLERS[who], method, hg.host, path, raw, {"Content-Type": "application/json"})
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head += f"Content-Length: {len(raw)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", hg.port), timeout=5) as s:
        s.sendall(head.encode() + raw)
        time.sleep(after)


def test_forwarded_update_of_a_departed_client_is_audited(make_fake, make_hubgate):
    fake = make_fake()
    # Security Hub answers slowly: the client is gone long before the answer. The
    # administrator's note needs no lookup, so it is sent at once, before the client goes (a
    # request whose client leaves before it is sent is not sent: test_adversarial_quota2.py).
    fake.configure(delay_ms=400)
    hg = make_hubgate(fake=fake)
    for _ in range(3):
        send_and_hang_up(hg, {"FindingIdentifiers": [ident("f-own-high")],
                              "Note": {"Text": "triaged", "UpdatedBy": "m"}}, "admin", 0.05)
    wait_until(lambda: len(fake.buf_calls()) == 3, 10, "the three updates reached Security Hub")

    def forwarded():
        return [r for r in hg.audit_records() if r.get("forwarded")]
    wait_until(lambda: len(forwarded()) == 3, 10, "an audit record for every forwarded update")
    assert all(r["operation"] == "BatchUpdateFindings" for r in forwarded())


def test_a_client_that_hangs_up_mid_body_is_recorded_as_an_abort(make_fake, make_hubgate):
    """A body cut short by the client is not a malformed request (400): it is an abort,
    recorded as such (499, CLIENT_ABORTED), with nothing forwarded and no envelope sent."""
    fake = make_fake()
    hg = make_hubgate(fake=fake)
    raw = json.dumps({"FindingIdentifiers": [ident("f-own-high")],
                      "Note": {"Text": "triaged", "UpdatedBy": "m"}}).encode()
    path = "/findings/batchupdate"
    headers = sign(CALLERS["member"], "PATCH", hg.host, path, raw,
                   {"Content-Type": "application/json"})
    head = f"PATCH {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head += f"Content-Length: {len(raw)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", hg.port), timeout=5) as s:
        s.sendall(head.encode() + raw[: len(raw) // 2])
        time.sleep(0.1)
        # Half-close: hubgate sees the body end early, and could still write an answer here.
        s.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    assert answer == b"", answer

    def aborted():
        return [r for r in hg.audit_records()
                if (r.get("error") or {}).get("code") == "CLIENT_ABORTED"]
    wait_until(lambda: len(aborted()) == 1, 10, "an audit record of the abort")
    rec = aborted()[0]
    assert rec["status"] == 499 and rec["forwarded"] is False, rec
    assert rec["operation"] == "BatchUpdateFindings" and rec["result"]["allow"] is False, rec
    assert "closed the connection" in rec["error"]["message"], rec
    assert fake.buf_calls() == []
