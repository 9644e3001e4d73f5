"""Adversarial review 54d: the per-address claim share (src/admission.rs, src/proxy.rs `admit`
and `proven`), the exact size hint of a bodiless request, 16 decisions per request, and an
administrator's imports touching a finding whoever owns it. The attacker holds MEMBER keys, or
no keys at all but knows other callers' access key ids (not secret). Each test asserts the SAFE
outcome: a failing test shows a hole.

Probes and what they showed (debug build of 2026-12-07, commit 7eca628; stop 54's mends noted):

- Held: a keyless client on 127.0.0.2 opening 8 h2 streams on one connection whose heads name
  the administrator's key id (wrong secret) and whose bodies never end: 4 are admitted as
  claims (max_in_flight_per_caller 4), the rest get 503 OVERLOADED at once naming only the key
  id ("the caller of access key HGTESTADMIN000000001"), never the caller id "admin"; the
  administrator's own note from 127.0.0.1 is served meanwhile.
- Held (measured): one member, one address: 4 slow claims admitted, the 5th and 6th 503 at
  once; once the 4 are proven and waiting on Security Hub, a new claim from the same address
  AND from another address gets 503 (claims are weighed with the proven requests). From 4
  addresses: 16 claims in flight at once (4 shares of unproven claims, the accepted design);
  when all 16 bodies complete at once, exactly 4 are forwarded and 12 get 503 OVERLOADED after
  proof, naming the key id only (not "member"), each audited once (status 503, OVERLOADED,
  forwarded false).
- OPEN (residual of the design; xfail, strict): from ONE address, a client with NO keys that knows four
  callers' access key ids (none of them the administrator's) fills max_in_flight: 4 key ids x 4
  slow bodies = 16 = max_in_flight (the default share is a quarter), and the administrator's
  note from 127.0.0.1 gets 503 OVERLOADED "server.max_in_flight" for body_read_timeout_ms,
  renewable at will. The claim share is per (claimed caller, peer address): nothing bounds one
  address's unproven claims across callers (src/admission.rs `Held::weighed`; the README only
  concedes this "from many addresses"). By the same arithmetic (not run) the byte cap
  falls to 4 key ids x 16 slow 1 MiB bodies = 64 MiB, the whole max_in_flight_body_bytes.
  A cap on one address's claims across callers was tried in stop 54 and reverted: every
  caller behind one address (a sidecar's 127.0.0.1, a load balancer that hides clients'
  addresses, and this suite) then shared one share of claims, so one member's slow bodies
  refused every other caller (test_adversarial_review53d.py, test_socket_bounds.py failed).
  README (Socket limits) says what bounds it: per-address connection limits in front.
- HOLE (passthrough; fixed in stop 54): `proven` moved a passthrough request into the caller's own share once
  its key id is MAPPED, and the signature is checked only by AWS. A keyless client on
  127.0.0.2 naming the administrator's key id (wrong secret) sends 4 bodiless DescribeHub calls
  over h2 with SETTINGS_INITIAL_WINDOW_SIZE 0: each is forwarded, AWS's 403 streams back and
  cannot be sent, so each keeps the administrator's proven share until
  response_send_timeout_ms (30 s by default, renewable): the administrator's own DescribeHub
  from 127.0.0.1 gets 503 OVERLOADED "... already has 4 requests in flight ...
  (server.max_in_flight_per_caller)". Now a passthrough request keeps its claim's place (per
  peer address) for as long as it is in flight: only a signature hubgate checks proves a
  caller.
- OPEN (passthrough; xfail, strict): the member of account 222 (or anyone) names the administrator's key id
  on a BatchImportFindings of account 333's f-other, signed with a secret AWS will refuse. It
  is decided and registered in flight as an ADMINISTRATOR's import (src/proxy.rs `enforce`:
  `Importer` from `principal.role`, the principal only mapped; its audit record names
  principal pt-admin, role administrator), which touches the finding whoever owns it: while
  it is in flight (until AWS answers 403), account 333's own member gets 503 STATE_SETTLING on
  its note of f-other ("... being changed through hubgate by BatchImportFindings, sent 56 ms
  ago and not answered yet ..."). A member's own-key import would be scoped to its own account
  and leave 333 alone. AWS refusing the forgery (4xx) leaves nothing settling afterwards
  (held: the note after is 200), but forged imports sent back to back keep another account's
  findings locked, and spend the administrator account's import quota. In resign (sigv4)
  mode a member cannot make an import count as the administrator's (held by construction:
  the role comes from the verified principal). Left open: scoped by the claimed role alone
  until AWS answers, a real administrator's import would reopen review 53c's window (a
  member's update of "its" finding reaching the copy the import gives another account); a
  lock that lasts while forged imports are in flight, paced by quota.BatchImportFindings, is
  the fail-closed side of that trade. README (Passthrough) says so.
- Held: an administrator's note on the member's finding while 24 of the member's notes on it
  race: served (the administrator's decision reads no state, so no write voids it).
- Measured: 24 concurrent member notes (with 400-byte texts) on one finding plus the
  administrator's: all 25 got 200; hubgate_decisions_voided_total went up by 3 to 17
  {kind="replayed"} and 0 or 1 {kind="refused"} (cache_ttl_ms 0 and 60000); hubgate spent
  about 0.12 s of CPU on the whole burst; each request has exactly one audit record, each under
  64 KiB. No STATE_CHANGED seen: the 16-decision ceiling was not reached from one burst (a
  member cannot aim a write into another request's few-millisecond window between decision
  and send; each decision made again is one policy evaluation, bounded by
  policy.eval_timeout_ms).
- Held: 600 source addresses (127.0.10-15.x), each one slow claim naming the administrator's
  key id, then closed: every slot comes back, the administrator is served, and RSS grew by 2.2
  to 2.7 MiB (debug build; under the 16 MiB bound; per-address entries go when their last claim
  ends, src/admission.rs `Drop for Share`).
- Held: a GET with neither Content-Length nor Transfer-Encoding counts 0 bytes: 24 concurrent
  bodiless DescribeHub of one caller whose byte share is one max_body_bytes are all served.
- Held: a dual-stack listener ([::]): 6 claims naming the administrator's key id over ::1 are
  held to its claim share (4 in flight), and the administrator over 127.0.0.1 (seen as
  ::ffff:127.0.0.1) is served. (Note, not a test: IPv4 and IPv6 peers are separate addresses,
  and an IPv6 host commonly holds a whole /64, so "one share per address" is per host only
  over IPv4; claims from other addresses take nothing of a caller's share either way.)
- Not a hole: the 503 a proven request gets names the key id the client sent, never the
  caller id; the STATE_SETTLING answer does tell a member that an import touching that
  identifier is in flight (operation and age), which it could not otherwise learn.
"""

from __future__ import annotations

import json
import os
import select
import socket
import threading
import time

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from helpers import (
    ADMIN,
    ADMIN_ACCOUNT,
    MEMBER,
    MEMBER_ACCOUNT,
    OTHER_ACCOUNT,
    OWN_ACCOUNT_FILTER,
    Creds,
    ident,
    raw_request,
    sign,
    wait_until,
)
from test_passthrough import PT_ADMIN, PT_MEMBER

V1 = "/findings/batchupdate"
GET_FINDINGS = "/findings"
IMPORT = "/findings/import"
WAIT = 5.0


def metric(hg, name: str, **labels) -> float:
    """Sum of the /metrics series of `name` whose labels include `labels`."""
    total = 0.0
    for line in hg.admin("/metrics").text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head != name and not head.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def series(hg, name: str) -> dict:
    out = {}
    for line in hg.admin("/metrics").text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            head, _, value = line.rpartition(" ")
            out[head] = float(value)
    return out


# --------------------------------------------------------------------------------------------
# raw HTTP/1 helpers with a chosen source address


class Slow:
    """One HTTP/1 request from `source` whose head is sent whole and its body only in part."""

    def __init__(self, hg, creds: Creds, body: bytes, source: str = "127.0.0.1",
                 method: str = "PATCH", path: str = V1, sent: int = 10):
        self.body, self.sent = body, sent
        headers = sign(creds, method, hg.host, path, body, {"Content-Type": "application/json"})
        head = f"{method} {path} HTTP/1.1\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.sock = socket.create_connection(("127.0.0.1", hg.port), timeout=WAIT,
                                             source_address=(source, 0))
        self.sock.sendall(head.encode() + b"\r\n" + body[:sent])
        self.buf = b""

    def answered_now(self, wait: float = 0.3) -> bool:
        ready, _, _ = select.select([self.sock], [], [], wait)
        return bool(ready)

    def finish(self):
        self.sock.sendall(self.body[self.sent:])

    def reply(self, timeout: float = WAIT) -> tuple[int, dict, bytes]:
        self.sock.settimeout(timeout)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"closed before an answer: {data!r}")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        while len(rest) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return status, headers, rest[:n]

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def note(fid: str, text: str = "triaged") -> bytes:
    return json.dumps({"FindingIdentifiers": [ident(fid)],
                       "Note": {"Text": text, "UpdatedBy": "soc"}}).encode()


def own_findings_read() -> bytes:
    return json.dumps({"Filters": OWN_ACCOUNT_FILTER}).encode()


# --------------------------------------------------------------------------------------------
# h2 helpers with a chosen source address


class H2:
    """An h2c (prior knowledge) connection from `source`, optionally never opening its
    flow-control window (window=0): response heads are read, bodies never."""

    def __init__(self, hg, source: str, window: int | None = None):
        self.hg = hg
        self.sock = socket.create_connection(("127.0.0.1", hg.port), timeout=WAIT,
                                             source_address=(source, 0))
        self.conn = h2.connection.H2Connection(config=h2.config.H2Configuration(
            client_side=True, validate_outbound_headers=False,
            normalize_outbound_headers=False, validate_inbound_headers=False))
        self.conn.initiate_connection()
        if window is not None:
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.window = window
        self.status: dict[int, int] = {}
        self.body: dict[int, bytes] = {}
        self.sock.sendall(self.conn.data_to_send())

    def request(self, creds: Creds, method: str, path: str, body: bytes | None,
                sent: int | None = None) -> int:
        """A signed request; body None: the head ends the stream; sent: only that many bytes
        of the body are sent and the stream stays open."""
        headers = {"Content-Type": "application/json"}
        signed = sign(creds, method, self.hg.host, path, body or b"", headers)
        fields = [(":method", method), (":path", path), (":scheme", "http"),
                  (":authority", self.hg.host)]
        fields += [(k.lower(), v) for k, v in signed.items() if k.lower() != "host"]
        if body is not None:
            fields.append(("content-length", str(len(body))))
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, fields, end_stream=body is None)
        if body is not None:
            part = body if sent is None else body[:sent]
            self.conn.send_data(sid, part, end_stream=sent is None)
        self.sock.sendall(self.conn.data_to_send())
        return sid

    def pump(self, wait: float = 0.05):
        ready, _, _ = select.select([self.sock], [], [], wait)
        if not ready:
            return
        data = self.sock.recv(65536)
        if not data:
            raise AssertionError("h2 connection closed")
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                self.status[event.stream_id] = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                self.body[event.stream_id] = self.body.get(event.stream_id, b"") + event.data
                if self.window != 0:
                    self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                        event.stream_id)
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)

    def wait_heads(self, n: int, timeout: float = WAIT) -> dict:
        deadline = time.monotonic() + timeout
        while len(self.status) < n and time.monotonic() < deadline:
            self.pump()
        return self.status

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# --------------------------------------------------------------------------------------------
# 1. a keyless client naming the administrator's key id, over h2, from another address


def test_h2_streams_naming_the_admins_key_id_from_elsewhere_leave_the_admin_served(
        make_fake, make_hubgate):
    hg = make_hubgate({"server": {"max_in_flight": 40, "max_in_flight_per_caller": 4,
                                  "body_read_timeout_ms": 6000}}, fake=make_fake())
    forged = Creds(ADMIN.access_key, "not-the-admins-secret")
    attacker = H2(hg, "127.0.0.2")
    try:
        body = note("f-admin")
        for _ in range(8):
            attacker.request(forged, "PATCH", V1, body, sent=5)
        heads = attacker.wait_heads(4, timeout=3)
        refused = [sid for sid, st in heads.items() if st == 503]
        assert len(refused) == 4 and len(heads) == 4, heads
        time.sleep(0.2)
        attacker.pump()
        for sid in refused:
            text = attacker.body.get(sid, b"").decode()
            assert "HGTESTADMIN000000001" in text, text
            assert '"admin"' not in text and "caller admin" not in text, text
        wait_until(lambda: metric(hg, "hubgate_requests_in_flight") >= 4, 3,
                   "the forged claims in flight")
        resp = hg.send("PATCH", V1, note("f-admin", "mine"), who="admin")
        assert resp.status == 200, (resp.status, resp.text[:300])
    finally:
        attacker.close()


# --------------------------------------------------------------------------------------------
# 2. one member: claims + proven from one address, and from four


def test_a_member_holds_one_share_per_address_and_one_proven_share(make_fake, make_hubgate):
    fake = make_fake()
    hg = make_hubgate({"server": {"max_in_flight": 40, "max_in_flight_per_caller": 4,
                                  "body_read_timeout_ms": 8000},
                       "upstream": {"timeout_ms": 6000}}, fake=fake)
    fake.configure(answer_delay_ms={"GetFindings": 2500})
    body = own_findings_read()
    socks: list[Slow] = []
    try:
        # A: one address
        socks = [Slow(hg, MEMBER, body, "127.0.0.3", "POST", GET_FINDINGS) for _ in range(6)]
        answered = [s.answered_now() for s in socks]
        assert answered.count(False) == 4, answered
        for s, a in zip(socks, answered):
            if a:
                assert s.reply()[0] == 503
        held = [s for s, a in zip(socks, answered) if not a]
        for s in held:
            s.finish()
        wait_until(lambda: len(fake.requests("POST", GET_FINDINGS)) >= 4, 5,
                   "the 4 proven reads at Security Hub")
        # proven = 4: a new claim from the same address, and from another, is refused at once
        for source in ("127.0.0.3", "127.0.0.4"):
            extra = Slow(hg, MEMBER, body, source, "POST", GET_FINDINGS)
            assert extra.answered_now(1.0), f"a claim from {source} admitted beside 4 proven"
            st, _, text = extra.reply()
            assert st == 503 and b"max_in_flight_per_caller" in text, (st, text)
            extra.close()
        assert [s.reply(timeout=8)[0] for s in held] == [200] * 4
        for s in socks:
            s.close()

        # B: four addresses, claims first
        before = len(hg.audit_records())
        socks = [Slow(hg, MEMBER, body, f"127.0.0.{3 + i // 4}", "POST", GET_FINDINGS)
                 for i in range(16)]
        wait_until(lambda: metric(hg, "hubgate_requests_in_flight") == 16, 3,
                   "16 claims in flight")
        in_flight_claims = metric(hg, "hubgate_requests_in_flight")
        for s in socks:
            s.finish()
        results = [s.reply(timeout=8) for s in socks]
        statuses = [r[0] for r in results]
        print(f"4 addresses: {in_flight_claims:.0f} claims in flight; after proof: "
              f"{statuses.count(200)} x 200, {statuses.count(503)} x 503")
        assert statuses.count(200) <= 4, statuses
        assert statuses.count(200) + statuses.count(503) == 16, statuses
        for st, headers, text in results:
            if st != 503:
                continue
            err = json.loads(text)["error"]
            assert err["code"] == "OVERLOADED", err
            msg = err["message"]
            assert "HGTESTMEMBER00000001" in msg, msg
            assert "member" not in msg.replace("MEMBER", ""), msg
            rec = hg.audit_for(headers["x-amzn-requestid"])
            assert rec["status"] == 503 and rec["forwarded"] is False, rec
        time.sleep(0.3)
        assert len(hg.audit_records()) - before == 16
    finally:
        for s in socks:
            s.close()


# --------------------------------------------------------------------------------------------
# 3. one address, no keys, four key ids: the whole of max_in_flight


def callers_with(n_members: int) -> tuple[str, list[Creds]]:
    members = [Creds(f"HGTESTMEMBER{i:08d}", f"member-{i}-secret") for i in range(2, 2 + n_members)]
    text = f"""\
[[caller]]
id = "admin"
account_id = "{ADMIN_ACCOUNT}"
role = "administrator"
access_key_id = "{ADMIN.access_key}"
secret_access_key = "{ADMIN.secret_key}"
"""
    for i, c in enumerate(members):
        text += f"""
[[caller]]
id = "member-{i}"
account_id = "{MEMBER_ACCOUNT}"
role = "member"
access_key_id = "{c.access_key}"
secret_access_key = "{c.secret_key}"
"""
    return text, members


@pytest.mark.xfail(strict=True, reason=(
    "open by design: claims are shared per (caller, peer address), and a cap on one address's "
    "claims across callers would make one member's slow bodies refuse every caller behind one "
    "address (a sidecar, a load balancer); README, Socket limits"))
def test_one_keyless_address_naming_four_key_ids_does_not_fill_max_in_flight(
        make_fake, make_hubgate):
    """max_in_flight 16, share 4 (the default quarter). A client with no keys on 127.0.0.2
    names four members' key ids (wrong secrets), four slow bodies each: the administrator on
    127.0.0.1 must still be served."""
    text, members = callers_with(4)
    hg = make_hubgate({"server": {"max_in_flight": 16, "body_read_timeout_ms": 6000}},
                      fake=make_fake(), callers_toml=text)
    socks = []
    try:
        for c in members:
            forged = Creds(c.access_key, "guessed")
            socks += [Slow(hg, forged, note("f-own-high"), "127.0.0.2") for _ in range(4)]
        wait_until(lambda: metric(hg, "hubgate_requests_in_flight") == 16, 3,
                   "the 16 forged claims in flight")
        resp = hg.send("PATCH", V1, note("f-admin", "mine"), who="admin")
        assert resp.status == 200, (resp.status, resp.text[:300])
    finally:
        for s in socks:
            s.close()


# --------------------------------------------------------------------------------------------
# 4. passthrough: a mapped key id is "proven"


PT_OTHER = Creds("AKIAPASSOTHER0000001", "pass-other-secret-known-to-aws-only")
PT_CALLERS = f"""\
[[caller]]
id = "pt-admin"
account_id = "{ADMIN_ACCOUNT}"
role = "administrator"
access_key_id = "{PT_ADMIN.access_key}"

[[caller]]
id = "pt-member"
account_id = "{MEMBER_ACCOUNT}"
role = "member"
access_key_id = "{PT_MEMBER.access_key}"

[[caller]]
id = "pt-other"
account_id = "{OTHER_ACCOUNT}"
role = "member"
access_key_id = "{PT_OTHER.access_key}"
"""


def pt_send(hg, creds: Creds, method: str, path: str, body: bytes = b"") -> object:
    headers = sign(creds, method, hg.host, path, body, {"Content-Type": "application/json"})
    return raw_request(hg.port, method, path, body, headers)


def test_passthrough_keyless_h2_readers_do_not_hold_the_admins_share(make_fake, make_hubgate):
    fake = make_fake(extra_credentials=[PT_ADMIN, PT_MEMBER])
    hg = make_hubgate({"upstream": {"auth": "passthrough"},
                       "server": {"max_in_flight": 40, "max_in_flight_per_caller": 4,
                                  "idle_timeout_ms": 20000,
                                  "response_send_timeout_ms": 8000}},
                      fake=fake, callers_toml=PT_CALLERS)
    forged = Creds(PT_ADMIN.access_key, "not-the-admins-secret")
    attacker = H2(hg, "127.0.0.2", window=0)
    try:
        for _ in range(4):
            attacker.request(forged, "GET", "/accounts", None)
        heads = attacker.wait_heads(4)
        assert len(heads) == 4, heads
        print("forged passthrough answers:", heads)
        resp = pt_send(hg, PT_ADMIN, "GET", "/accounts")
        assert resp.status == 200, (resp.status, resp.text[:300])
    finally:
        attacker.close()


@pytest.mark.xfail(strict=True, reason=(
    "open in passthrough: hubgate cannot tell a forged administrator's import from a real one "
    "until AWS answers, and scoping it by the claimed role would reopen review 53c's window; "
    "README, Passthrough"))
def test_passthrough_forged_admin_import_does_not_lock_another_accounts_finding(
        make_fake, make_hubgate):
    """Passthrough. The member of account 222 (real AWS keys of its own, not the
    administrator's) sends a BatchImportFindings of account 333's f-other naming the
    administrator's key id, with a signature AWS will refuse. Its own-key import would be scoped
    to its own account (Importer::Member) and leave 333's finding alone; mapped as the
    administrator it is unscoped. Meanwhile and after, 333's own member notes f-other: it must
    be served, not 503 STATE_SETTLING."""
    fake = make_fake(extra_credentials=[PT_ADMIN, PT_MEMBER, PT_OTHER])
    hg = make_hubgate({"upstream": {"auth": "passthrough", "timeout_ms": 6000},
                       "enrichment": {"cache_ttl_ms": 60000}},
                      fake=fake, callers_toml=PT_CALLERS)
    from test_adversarial_model2 import reimport
    warm = pt_send(hg, PT_OTHER, "PATCH", V1, note("f-other", "warm"))
    assert warm.status == 200, warm.text[:300]
    fake.configure(delay_ms=1500)  # Security Hub's latency, widened
    forged = Creds(PT_ADMIN.access_key, "the-member-does-not-know-it")
    doc = json.dumps({"Findings": [reimport("f-other", OTHER_ACCOUNT)]}).encode()
    out = {}
    sent = len(fake.requests("POST", IMPORT))
    t = threading.Thread(target=lambda: out.setdefault(
        "r", pt_send(hg, forged, "POST", IMPORT, doc)))
    t.start()
    try:
        wait_until(lambda: len(fake.requests("POST", IMPORT)) > sent, 5,
                   "the forged import at Security Hub")
        during = pt_send(hg, PT_OTHER, "PATCH", V1, note("f-other", "during"))
    finally:
        t.join(10)
    after = pt_send(hg, PT_OTHER, "PATCH", V1, note("f-other", "after"))
    print("forged import:", out["r"].status, "during:", during.status, during.text[:300],
          "after:", after.status)
    assert out["r"].status == 403, out["r"].text[:300]
    rec = [r for r in hg.audit_records() if r.get("operation") == "BatchImportFindings"]
    print("forged import's record principal:", rec and rec[-1].get("principal"))
    assert during.status == 200, ("during", during.status, during.text[:300])
    assert after.status == 200, ("after", after.status, after.text[:300])


# --------------------------------------------------------------------------------------------
# 5. decisions made again: cost, records


@pytest.mark.parametrize("ttl", [0, 60000])
def test_racing_member_notes_are_each_recorded_once_and_bounded(make_fake, make_hubgate, ttl):
    fake = make_fake()
    hg = make_hubgate({"enrichment": {"cache_ttl_ms": ttl}}, fake=fake)
    proc = hg.proc
    assert hg.send("PATCH", V1, note("f-own-high", "warm"), who="member").status == 200

    def cpu() -> float:
        with open(f"/proc/{proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    before_cpu = cpu()
    before_voided = series(hg, "hubgate_decisions_voided_total")
    results, lock = [], threading.Lock()

    def one(i: int, who: str):
        r = hg.send("PATCH", V1, note("f-own-high", f"n{i}-" + "x" * 400), who=who)
        with lock:
            results.append((who, r))

    threads = [threading.Thread(target=one, args=(i, "member")) for i in range(24)]
    threads.append(threading.Thread(target=one, args=(99, "admin")))
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    spent = cpu() - before_cpu
    voided = {k: v - before_voided.get(k, 0)
              for k, v in series(hg, "hubgate_decisions_voided_total").items()}
    statuses = [(w, r.status, r.json()["error"]["code"] if r.status >= 400 else "")
                for w, r in results]
    print("statuses:", statuses)
    print("voided:", voided, f"cpu: {spent:.2f} s")
    admin = [r for w, r in results if w == "admin"]
    assert admin and admin[0].status == 200, admin and admin[0].text[:300]
    for w, r in results:
        assert r.status == 200 or (r.status == 503 and r.json()["error"]["code"]
                                   == "STATE_CHANGED"), (w, r.status, r.text[:300])
        rid = r.headers.get("x-hubgate-decision-id") or r.headers.get("x-amzn-requestid")
        rec = hg.audit_for(rid)
        assert len(json.dumps(rec)) < 65536, len(json.dumps(rec))


# --------------------------------------------------------------------------------------------
# 6. bookkeeping: many source addresses


def test_many_addresses_each_one_claim_leave_nothing_behind(make_fake, make_hubgate):
    hg = make_hubgate({"server": {"body_read_timeout_ms": 5000}}, fake=make_fake())

    def rss() -> int:
        with open(f"/proc/{hg.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    forged = Creds(ADMIN.access_key, "nope")
    body = note("f-admin")
    # warm up
    for i in range(50):
        Slow(hg, forged, body, f"127.0.9.{i + 1}").close()
    wait_until(lambda: metric(hg, "hubgate_requests_in_flight") == 0, 5, "warm-up done")
    start = rss()
    for batch in range(6):
        socks = [Slow(hg, forged, body, f"127.0.{10 + batch}.{i + 1}") for i in range(100)]
        wait_until(lambda: metric(hg, "hubgate_requests_in_flight") >= 100, 5,
                   "a batch of claims in flight")
        for s in socks:
            s.close()
        wait_until(lambda: metric(hg, "hubgate_requests_in_flight") == 0, 5,
                   "the batch's slots back")
    grown = rss() - start
    print(f"RSS grew by {grown / 1024:.0f} KiB over 600 addresses")
    assert grown < 16 << 20, grown
    resp = hg.send("PATCH", V1, note("f-admin", "mine"), who="admin")
    assert resp.status == 200, resp.text[:300]


# --------------------------------------------------------------------------------------------
# 7. bodiless reads within a byte share of one max_body_bytes


def test_bodiless_reads_count_no_bytes(make_fake, make_hubgate):
    fake = make_fake()
    # byte share: 131072 x 32 / 64 = 65536 (one max_body_bytes): counted at max_body_bytes,
    # the second concurrent GET would get 503
    hg = make_hubgate({"server": {"max_body_bytes": 65536, "max_in_flight": 64,
                                  "max_in_flight_per_caller": 32,
                                  "max_in_flight_body_bytes": 131072}}, fake=fake)
    fake.configure(answer_delay_ms={"DescribeHub": 1500})
    statuses, lock = [], threading.Lock()

    def one():
        # no Content-Length, no Transfer-Encoding: hyper's exact hint is 0
        headers = sign(ADMIN, "GET", hg.host, "/accounts", b"", {})
        head = "GET /accounts HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n"
                                                      for k, v in headers.items())
        s = socket.create_connection(("127.0.0.1", hg.port), timeout=10)
        try:
            s.sendall(head.encode() + b"\r\n")
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            status = int(data.split(b" ")[1]) if data else 0
        finally:
            s.close()
        with lock:
            statuses.append((status, data[:200]))

    threads = [threading.Thread(target=one) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert [s for s in statuses if s[0] != 200] == [], statuses[:3]


# --------------------------------------------------------------------------------------------
# 8. a dual-stack listener: IPv6 loopback and IPv4-mapped addresses


def test_claims_over_ipv6_loopback_leave_the_admin_on_ipv4_served(make_fake, make_hubgate):
    """listen on [::] (dual stack): the administrator connects over 127.0.0.1 (seen as
    ::ffff:127.0.0.1), a keyless client over ::1 names the administrator's key id with slow
    bodies up to its claim share: the administrator is served."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    hg = make_hubgate({"server": {"max_in_flight": 40, "max_in_flight_per_caller": 4,
                                  "body_read_timeout_ms": 6000}}, fake=make_fake(), start=False)
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
        probe.bind(("::", 0))
        hg.port = probe.getsockname()[1]
    hg.overrides = {**hg.overrides,
                    "server": {**hg.overrides["server"], "listen": f"[::]:{hg.port}"}}
    hg.start()
    forged = Creds(ADMIN.access_key, "nope")
    body = note("f-admin")
    headers = sign(forged, "PATCH", hg.host, V1, body, {"Content-Type": "application/json"})
    head = f"PATCH {V1} HTTP/1.1\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    socks = []
    try:
        for _ in range(6):
            s = socket.create_connection(("::1", hg.port), timeout=WAIT)
            s.sendall(head.encode() + b"\r\n" + body[:10])
            socks.append(s)
        wait_until(lambda: metric(hg, "hubgate_requests_in_flight") >= 4, 3,
                   "the forged claims over ::1")
        time.sleep(0.3)
        assert metric(hg, "hubgate_requests_in_flight") == 4
        resp = hg.send("PATCH", V1, note("f-admin", "mine"), who="admin")
        assert resp.status == 200, (resp.status, resp.text[:300])
    finally:
        for s in socks:
            s.close()
