"""A client that goes away while its request is being handled: whatever hubgate already sent
to Security Hub still gets its audit record ("nothing is lost from the audit trail")."""

import json
import socket
import time

from helpers import CALLERS, ident, sign, wait_until


def send_and_hang_up(hg, body: dict, who: str, after: float):
    """Send a signed request on a raw socket and close it `after` seconds later, unanswered."""
    raw = json.dumps(body).encode()
    path = "/findings/batchupdate"
    headers = sign(CALLERS[who], "PATCH", hg.host, path, raw, {"Content-Type": "application/json"})
    head = f"PATCH {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head += f"Content-Length: {len(raw)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", hg.port), timeout=5) as s:
        s.sendall(head.encode() + raw)
        time.sleep(after)


def test_forwarded_update_of_a_departed_client_is_audited(make_fake, make_hubgate):
    fake = make_fake()
    # Security Hub answers slowly: the client is gone long before the answer.
    fake.configure(delay_ms=400)
    hg = make_hubgate(fake=fake)
    for _ in range(3):
        send_and_hang_up(hg, {"FindingIdentifiers": [ident("f-own-high")],
                              "Note": {"Text": "triaged", "UpdatedBy": "m"}}, "member", 0.05)
    wait_until(lambda: len(fake.buf_calls()) == 3, 10, "the three updates reached Security Hub")

    def forwarded():
        return [r for r in hg.audit_records() if r.get("forwarded")]
    wait_until(lambda: len(forwarded()) == 3, 10, "an audit record for every forwarded update")
    assert all(r["operation"] == "BatchUpdateFindings" for r in forwarded())
