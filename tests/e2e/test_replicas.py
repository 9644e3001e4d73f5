"""Replicas that share one quota and one view of the findings (issue 12): two hubgate replicas in
front of one fake Security Hub with quotas on, sharing a redis-server the test starts on
127.0.0.1. Pacing is shared (the fake throttles no GetFindings although each replica alone
would pace to the whole quota), a write through one replica is a cache hit on the other, a
Redis outage degrades the replicas to local pacing without forwarding anything unjudged, and
`hubgate audit verify` checks both replicas' chains in one call.

redis-server comes from Debian's package (`apt-get install redis-server`; .ci/run installs it).
Without it these tests fail; HUBGATE_ALLOW_SKIP=1 turns that into a skip for local runs."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from helpers import (
    MEMBER_ACCOUNT,
    OTHER_ACCOUNT,
    audit_verify,
    finding,
    free_port,
    hubgate_env,
    ident,
    wait_until,
)
from test_quota import retrying_client, severity

LOWER = "member accounts may not lower a finding's severity"


class RedisServer:
    """A throwaway redis-server: no persistence, 127.0.0.1 only; stop() and start() again on
    the same port play an outage and a recovery."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        binary = shutil.which("redis-server")
        if binary is None:
            msg = "redis-server is not installed (apt-get install redis-server)"
            if os.environ.get("HUBGATE_ALLOW_SKIP"):
                pytest.skip(msg)
            pytest.fail(msg)
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "yes", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)

        def up():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        wait_until(up, 10, "redis-server to answer PING")
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def command(self, *args: str) -> bytes:
        """One command over RESP, for inspecting what the replicas stored."""
        payload = f"*{len(args)}\r\n".encode() + b"".join(
            f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(payload)
            time.sleep(0.05)
            return s.recv(65536)


@pytest.fixture
def redis_server(tmp_path):
    r = RedisServer(tmp_path).start()
    yield r
    r.stop()


@pytest.fixture
def quota_fake(make_fake):
    fake = make_fake()
    fake.quota_on()
    return fake


def coordination(redis: RedisServer) -> dict:
    return {"redis_url": redis.url, "fallback_share": 0.4, "op_timeout_ms": 100,
            "probe_interval_ms": 200, "lookup_claim_ms": 1000}


@pytest.fixture
def replicas(redis_server, quota_fake, make_hubgate):
    """Two replicas, each pacing to the whole documented quota: only sharing keeps them under
    it together."""
    def make(n: int = 2, extra: dict | None = None):
        out = []
        for i in range(1, n + 1):
            overrides = {
                "enrichment": {"enabled": True, "cache_ttl_ms": 60000},
                "quota": {"max_wait_ms": 15000},
                "quota.limits": {"GetFindings": {"rate": 3.0, "burst": 6}},
                "coordination": coordination(redis_server),
                **(extra or {}),
            }
            env = {**hubgate_env(), "HUBGATE_INSTANCE_ID": f"replica-{i}"}
            out.append(make_hubgate(overrides, fake=quota_fake, env=env))
        for hg in out:
            wait_until(lambda hg=hg: coordination_state(hg) == "ok", 10,
                       "the replica to join Redis")
        return out
    return make


def coordination_state(hg) -> str | None:
    r = hg.admin("/readyz", timeout=2)
    return r.json().get("coordination") if r.status_code == 200 else f"unready {r.status_code}"


def note_ids(ids, text="triaged") -> dict:
    return {"FindingIdentifiers": [ident(f) for f in ids],
            "Note": {"Text": text, "UpdatedBy": "replicas-e2e"}}


def bulk(replicas_, ids, per_request=20, workers_per_replica=2, text="triaged",
         pause: threading.Event | None = None):
    """Member notes on `ids`, in requests of `per_request`, spread over the replicas with
    boto3's standard retries. Returns (errors, processed ids, seconds)."""
    chunks = [ids[i:i + per_request] for i in range(0, len(ids), per_request)]
    lanes = [(hg, w) for hg in replicas_ for w in range(workers_per_replica)]
    errors, processed = [], []
    lock = threading.Lock()

    def worker(lane: int):
        hg, _ = lanes[lane]
        client = retrying_client(hg)
        for k in range(lane, len(chunks), len(lanes)):
            try:
                resp = client.batch_update_findings(**note_ids(chunks[k], text))
                with lock:
                    processed.extend(p["Id"] for p in resp["ProcessedFindings"])
                    if resp["UnprocessedFindings"]:
                        errors.append(resp["UnprocessedFindings"])
            except Exception as e:  # noqa: BLE001 - reported by the caller
                with lock:
                    errors.append(repr(e))

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(lanes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "callers still running after 120 s"
    return errors, processed, time.monotonic() - started


def test_two_replicas_share_the_quota_and_the_cache(replicas, quota_fake, redis_server):
    r1, r2 = replicas()
    ids = [f"rep-{i:04d}" for i in range(400)]
    quota_fake.add_findings([finding(i, MEMBER_ACCOUNT, "HIGH", 70) for i in ids])

    errors, processed, _ = bulk([r1, r2], ids)
    assert errors == [], errors[:5]
    assert sorted(processed) == ids
    gf = quota_fake.op_stats("GetFindings")
    # each replica alone paces to 3/s: together they would send 6/s and be throttled
    assert gf["throttled"] == 0, f"Security Hub throttled the replicas' lookups: {gf}"
    assert 20 <= gf["calls"] <= 26, f"400 ids need about 20 GetFindings of 20 ids: {gf}"
    for hg in (r1, r2):
        records = [r for r in hg.audit_records() if r.get("operation") == "BatchUpdateFindings"]
        assert records, f"{hg.host} took no share of the workload"
        assert all(r["chain"]["instance"].startswith("replica-") for r in hg.audit_records())

    # written through replica 1 ...
    raised = r1.buf(severity("f-own-high", "CRITICAL"), who="member")
    assert raised.status == 200, raised.text
    rec1 = r1.audit_for(raised.headers["x-hubgate-decision-id"])
    assert rec1["chain"]["instance"] == "replica-1"
    calls_before = quota_fake.op_stats("GetFindings")["calls"]
    # ... changed behind hubgate's back, within the TTL ...
    quota_fake.add_findings([finding("f-own-high", MEMBER_ACCOUNT, "MEDIUM", 45)])
    # ... and judged on replica 2 from the shared entry replica 1 wrote: CRITICAL to HIGH is a
    # lowering. Replica 2's own lookup (MEDIUM) or no sharing would allow it.
    resp = r2.buf(severity("f-own-high", "HIGH"), who="member")
    assert resp.status == 403, resp.text
    assert f"{LOWER} (CRITICAL to HIGH)" in resp.json()["error"]["message"], resp.text
    rec2 = r2.audit_for(resp.headers["x-amzn-requestid"])
    assert rec2["chain"]["instance"] == "replica-2"
    assert rec2["metrics"]["counter_cache_hits"] == 1, rec2["metrics"]
    assert rec2["metrics"]["counter_lookup_calls"] == 0, rec2["metrics"]
    assert quota_fake.op_stats("GetFindings")["calls"] == calls_before

    # a finding replica 1 looked up (the bulk) is a hit on replica 2 too
    again = r2.buf(note_ids(ids[:20], "second pass"), who="member")
    assert again.status == 200, again.text
    rec = r2.audit_for(again.headers["x-hubgate-decision-id"])
    assert rec["metrics"]["counter_cache_hits"] == 20, rec["metrics"]
    assert rec["metrics"]["counter_lookup_calls"] == 0, rec["metrics"]

    metrics = r2.admin("/metrics").text
    assert "hubgate_coordination_up 1" in metrics
    assert "hubgate_coordination_shared_cache_hits_total" in metrics

    # both replicas' audit files in one call: each chain verifies, per replica
    files = [*r1.audit_files(), *r2.audit_files()]
    out = audit_verify(*files)
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert "replica replica-1: intact" in out.stdout and "replica replica-2: intact" in out.stdout
    # a record deleted from replica 2's file is found, and replica 1 still verifies
    lines = r2.audit_path.read_bytes().split(b"\n")[:-1]
    assert len(lines) >= 3
    tampered = r2.workdir / "tampered.ndjson"
    tampered.write_bytes(b"".join(line + b"\n" for i, line in enumerate(lines) if i != 1))
    out = audit_verify(*r1.audit_files(), tampered)
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "replica replica-1: intact" in out.stdout, out.stdout
    assert f"replica replica-2: BROKEN: {tampered}:2:" in out.stdout, out.stdout
    assert "deleted" in out.stdout


def test_redis_outage_degrades_to_local_pacing_and_the_replicas_rejoin(
        replicas, quota_fake, redis_server):
    r1, r2 = replicas()
    ids = [f"out-{i:04d}" for i in range(600)]
    quota_fake.add_findings([finding(i, MEMBER_ACCOUNT, "HIGH", 70) for i in ids])
    # findings of another account: a member's note on them must be denied, outage or not
    foreign = [f"foreign-{i}" for i in range(4)]
    quota_fake.add_findings([finding(i, OTHER_ACCOUNT, "HIGH", 70) for i in foreign])

    result = {}
    runner = threading.Thread(target=lambda: result.update(
        zip(("errors", "processed", "seconds"), bulk([r1, r2], ids))))
    runner.start()
    wait_until(lambda: quota_fake.op_stats("BatchUpdateFindings").get(
        "findings_processed", 0) >= 100, 30, "the workload to get going")
    redis_server.stop()
    for hg in (r1, r2):
        wait_until(lambda hg=hg: coordination_state(hg) == "degraded", 10,
                   "the replica to say it is degraded")
        ready = hg.admin("/readyz").json()
        assert ready["ready"] is True and ready["checks"]["coordination"]["state"] == "degraded"
        assert "hubgate_coordination_up 0" in hg.admin("/metrics").text
    processed_at_outage = quota_fake.op_stats("BatchUpdateFindings")["findings_processed"]

    # judged while degraded: a forbidden change is refused on both replicas ...
    for hg in (r1, r2):
        client = retrying_client(hg)
        with pytest.raises(ClientError) as e:
            client.batch_update_findings(**note_ids(foreign))
        assert e.value.response["Error"]["Code"] == "AccessDeniedException", e.value.response
    # ... and allowed work keeps flowing, paced locally
    wait_until(lambda: quota_fake.op_stats("BatchUpdateFindings")["findings_processed"]
               >= processed_at_outage + 60, 30, "updates to go on while Redis is down")

    redis_server.start()
    for hg in (r1, r2):
        wait_until(lambda hg=hg: coordination_state(hg) == "ok", 10, "the replica to rejoin")
    runner.join(150)
    assert not runner.is_alive()
    assert result["errors"] == [], result["errors"][:5]
    assert sorted(result["processed"]) == ids

    # nothing unjudged reached Security Hub: every update it received has an allowing decision
    # on one of the replicas, and none of the foreign findings was ever sent
    forwarded = [r for hg in (r1, r2) for r in hg.audit_records()
                 if r.get("operation") == "BatchUpdateFindings" and r.get("forwarded")]
    assert all(r["result"]["allow"] is True for r in forwarded)
    assert len(forwarded) == len(quota_fake.buf_calls())
    sent = {i["Id"] for c in quota_fake.buf_calls() for i in _body(c)["FindingIdentifiers"]}
    assert not sent & set(foreign)
    assert all(quota_fake.findings()[f]["Note"]["Text"] == "seed" for f in foreign)
    for hg in (r1, r2):
        m = re.search(r"^hubgate_coordination_fallbacks_total (\S+)$", hg.admin("/metrics").text,
                      re.M)
        assert m and float(m.group(1)) >= 1, m


def _body(call: dict) -> dict:
    import json
    return json.loads(call["body"])


def test_a_write_through_one_replica_is_laid_over_what_another_reads_while_it_settles(
        replicas, quota_fake):
    """Security Hub applies the administrator's raise (through replica 1) 3 s late. The
    member's lowering through replica 2 reads MEDIUM from GetFindings (nothing cached: TTL 0),
    but replica 1's write reached replica 2 through the shared settle journal: it is judged as
    CRITICAL to MEDIUM. A write replica 1 cannot model leaves the finding's state unknown on
    replica 2 too."""
    r1, r2 = replicas(extra={"enrichment": {"enabled": True, "cache_ttl_ms": 0}})
    quota_fake.configure(apply_delay_ms=3000)
    raised = r1.buf(severity("f-own-medium", "CRITICAL"), who="admin")
    assert raised.status == 200, raised.text
    assert quota_fake.findings()["f-own-medium"]["Severity"]["Label"] == "MEDIUM"
    lowered = r2.buf(severity("f-own-medium", "MEDIUM"), who="member")
    assert lowered.status == 403, lowered.text
    assert f"{LOWER} (CRITICAL to MEDIUM)" in lowered.json()["error"]["message"], lowered.text
    rec = r2.audit_for(lowered.headers["x-amzn-requestid"])
    assert rec["metrics"]["counter_lookup_calls"] == 1, "read from Security Hub, not shared"

    ticket = {"FindingIdentifiers": [ident("f-own-high")],
              "UserDefinedFields": {"ticket": "SEC-7"}}
    assert r1.buf(ticket, who="admin").status == 200
    refused = r2.buf(note_ids(["f-own-high"]), who="member")
    assert refused.status == 503, refused.text
    assert refused.json()["error"]["code"] == "STATE_SETTLING", refused.text
    assert 1 <= int(refused.headers["retry-after"]) <= 300, refused.headers
    time.sleep(3.5)
    assert quota_fake.findings()["f-own-medium"]["Severity"]["Label"] == "CRITICAL"


def test_a_write_made_while_redis_was_down_is_shared_when_the_replica_rejoins(
        replicas, quota_fake, redis_server):
    """While Redis is down, replica 1 forwards the administrator's raise (Security Hub applies
    it 4 s late) and keeps it in its own journal only. Once Redis is back, replica 1 shares its
    journal again, so the member's lowering through replica 2 is judged as CRITICAL to
    MEDIUM."""
    r1, r2 = replicas(extra={"enrichment": {"enabled": True, "cache_ttl_ms": 0}})
    quota_fake.configure(apply_delay_ms=4000)
    redis_server.stop()
    for hg in (r1, r2):
        wait_until(lambda hg=hg: coordination_state(hg) == "degraded", 10,
                   "the replica to say it is degraded")
    raised = r1.buf(severity("f-own-medium", "CRITICAL"), who="admin")
    assert raised.status == 200, raised.text
    redis_server.start()
    for hg in (r1, r2):
        wait_until(lambda hg=hg: coordination_state(hg) == "ok", 10, "the replica to rejoin")
    time.sleep(0.3)  # replica 1 shares its journal again as it rejoins
    assert quota_fake.findings()["f-own-medium"]["Severity"]["Label"] == "MEDIUM"
    lowered = r2.buf(severity("f-own-medium", "MEDIUM"), who="member")
    assert lowered.status == 403, lowered.text
    assert f"{LOWER} (CRITICAL to MEDIUM)" in lowered.json()["error"]["message"], lowered.text


def test_a_refusal_from_the_shared_journal_is_not_paid_for_again_on_retry(replicas, quota_fake):
    """An administrator's ticket field through replica 1 leaves the finding's state unknown for
    the settle window. The member's note through replica 2 learns that from the shared journal
    only after its GetFindings call, and is refused with 503. Its retries (SDKs retry a 503)
    are refused before any GetFindings call; a finding the write did not touch is unaffected."""
    r1, r2 = replicas(extra={"enrichment": {"enabled": True, "cache_ttl_ms": 0}})
    ticket = {"FindingIdentifiers": [ident("f-own-high")],
              "UserDefinedFields": {"ticket": "SEC-8"}}
    assert r1.buf(ticket, who="admin").status == 200
    calls = quota_fake.op_stats("GetFindings")["calls"]
    first = r2.buf(note_ids(["f-own-high"]), who="member")
    assert first.status == 503, first.text
    assert first.json()["error"]["code"] == "STATE_SETTLING", first.text
    assert r2.audit_for(first.headers["x-amzn-requestid"])["metrics"][
        "counter_lookup_calls"] == 1
    assert quota_fake.op_stats("GetFindings")["calls"] == calls + 1
    for _ in range(3):
        again = r2.buf(note_ids(["f-own-high"]), who="member")
        assert again.status == 503, again.text
        assert again.json()["error"]["code"] == "STATE_SETTLING", again.text
        assert 1 <= int(again.headers["retry-after"]) <= 300, again.headers
        assert r2.audit_for(again.headers["x-amzn-requestid"])["metrics"][
            "counter_lookup_calls"] == 0
    assert quota_fake.op_stats("GetFindings")["calls"] == calls + 1, "retries spent quota"
    other = r2.buf(note_ids(["f-own-medium"]), who="member")
    assert other.status == 200, other.text


def test_a_v2_write_to_one_account_keeps_the_shared_cache_of_the_others(replicas, quota_fake):
    """A V2 write names accounts, not findings. The settle journal (read by every lookup after
    its states) refuses those accounts' findings for settle_ms, longer than any cached entry
    lives (cache_ttl_ms), so the shared cache is not retired for it: the other accounts' entries
    stay hits on every replica, and the named account's cached findings are refused."""
    r1, r2 = replicas()
    for fid in ("f-own-high", "f-own-medium"):
        assert r2.buf(note_ids([fid]), who="member").status == 200  # cached, shared
    v2 = {"FindingIdentifiers": [{"CloudAccountUid": OTHER_ACCOUNT, "FindingInfoUid": "f-other",
                                  "MetadataProductUid": "x"}], "Comment": "triaged",
          "StatusId": 2}  # a status: a V2 that only comments leaves nothing unknown
    assert r1.send("PATCH", "/findingsv2/batchupdatev2", v2, who="admin").status == 200
    calls = quota_fake.op_stats("GetFindings")["calls"]
    hit = r2.buf(note_ids(["f-own-high"], "again"), who="member")
    assert hit.status == 200, hit.text
    rec = r2.audit_for(hit.headers["x-hubgate-decision-id"])
    assert rec["metrics"]["counter_cache_hits"] == 1, rec["metrics"]
    assert quota_fake.op_stats("GetFindings")["calls"] == calls

    v2["FindingIdentifiers"][0]["CloudAccountUid"] = MEMBER_ACCOUNT
    assert r1.send("PATCH", "/findingsv2/batchupdatev2", v2, who="admin").status == 200
    refused = r2.buf(note_ids(["f-own-medium"], "again"), who="member")
    assert refused.status == 503, refused.text
    assert refused.json()["error"]["code"] == "STATE_SETTLING", refused.text


def test_without_the_journal_a_v2_write_retires_only_its_accounts_shared_entries(
        replicas, quota_fake):
    """Review 29, F2. With settle_ms = 0 the journal does not cover a V2 write, so the shared
    entries it may have made stale are retired: only those of the accounts it names (each entry
    carries its owner). It used to retire every account's, so any member's V2 writes to its own
    account made every replica look every account's findings up again."""
    r1, r2 = replicas(extra={"enrichment": {"enabled": True, "cache_ttl_ms": 60000,
                                            "settle_ms": 0}})
    assert r2.buf(note_ids(["f-own-high"]), who="member").status == 200  # cached, shared

    def v2(account: str):
        body = {"FindingIdentifiers": [{"CloudAccountUid": account, "FindingInfoUid": "f-x",
                                        "MetadataProductUid": "x"}], "Comment": "triaged"}
        assert r1.send("PATCH", "/findingsv2/batchupdatev2", body, who="admin").status == 200

    def noted(text: str) -> tuple[int, int]:
        """(cache hits, GetFindings calls) of r2's note on f-own-high."""
        calls = quota_fake.op_stats("GetFindings")["calls"]
        resp = r2.buf(note_ids(["f-own-high"], text), who="member")
        assert resp.status == 200, resp.text
        rec = r2.audit_for(resp.headers["x-hubgate-decision-id"])
        return (rec["metrics"]["counter_cache_hits"],
                quota_fake.op_stats("GetFindings")["calls"] - calls)

    v2(OTHER_ACCOUNT)
    assert noted("after another account's write") == (1, 0), "another account's write retired it"
    v2(MEMBER_ACCOUNT)
    assert noted("after its own account's write") == (0, 1), "its account's write left it shared"
    assert noted("looked up again") == (1, 0)


# Review 29, F1: a V2 write naming an account does not retire the shared cache when
# settle_ms >= cache_ttl_ms. A GetFindings call in flight when it was forwarded read the state
# from before it; stored with a full cache_ttl_ms from its late answer, that entry outlived the
# write's settle journal entry and was then served (a member lowered a CRITICAL finding). An
# entry's TTL now counts from its lookup's start.
REVIEW29_FID = "f-own-medium"  # SEED: the member's finding, MEDIUM
# settle_ms == cache_ttl_ms: the shared cache is not retired for a V2 write
REVIEW29_WINDOW_MS = 3000
REVIEW29_NOTE = {"Note": {"Text": "looking into it", "UpdatedBy": "review-29"}}


def _r29_body(*fids: str, **update) -> dict:
    return {"FindingIdentifiers": [ident(f) for f in fids], **update}


def _r29_v2_note(account: str, fid: str) -> dict:
    return {"FindingIdentifiers": [{"CloudAccountUid": account, "FindingInfoUid": fid,
                                    "MetadataProductUid": "x"}], "Comment": "raised",
            "SeverityId": 5}


# (in flight, settle_ms): settle_ms >= cache_ttl_ms keeps the shared cache over the V2 write;
# 2900 < cache_ttl_ms retires it (the control: the stale store is then refused by generation).
@pytest.mark.parametrize("inflight,settle_ms", [
    (True, REVIEW29_WINDOW_MS), (False, REVIEW29_WINDOW_MS), (True, 2900)])
def test_a_lookup_in_flight_across_a_v2_write_is_not_served_after_its_window(
        replicas, quota_fake, inflight, settle_ms):
    """The administrator's V2 write on the member's account raises F to CRITICAL (the fake's V2
    changes no ASFF finding, so the test applies its effect itself, at the moment it is
    forwarded). With `inflight`, the member's own lookup of F was sent just before and read
    F as MEDIUM; its answer comes 1.5 s later. After the settle window (3 s from the V2 write)
    the member lowers F to MEDIUM: that must be judged CRITICAL to MEDIUM (403) or refused as
    settling (503), never allowed."""
    (hg,) = replicas(n=1, extra={"enrichment": {
        "enabled": True, "cache_ttl_ms": REVIEW29_WINDOW_MS, "settle_ms": settle_ms}})
    first = {}
    if inflight:
        quota_fake.configure(answer_delay_ms={"GetFindings": 1500})
        t = threading.Thread(
            target=lambda: first.update(r=hg.buf(_r29_body(REVIEW29_FID, **REVIEW29_NOTE), who="member")))
        t.start()
        time.sleep(0.4)  # the GetFindings call has read F (MEDIUM); it answers at +1.5 s
    else:
        first["r"] = hg.buf(_r29_body(REVIEW29_FID, **REVIEW29_NOTE), who="member")
        assert first["r"].status == 200, first["r"].text  # F cached as MEDIUM, before the V2

    quota_fake.add_findings([finding(REVIEW29_FID, MEMBER_ACCOUNT, "CRITICAL", 90)])  # the V2's effect
    v2 = hg.send("PATCH", "/findingsv2/batchupdatev2", _r29_v2_note(MEMBER_ACCOUNT, REVIEW29_FID), who="admin")
    assert v2.status == 200, v2.text
    journal_written = time.monotonic()
    if inflight:
        t.join(15)
        assert not t.is_alive()
        print("in-flight note:", first["r"].status, first["r"].text[:200])
        quota_fake.configure(answer_delay_ms={})

    # The window (3 s from the V2 write) is over; an entry stored before the write is gone.
    time.sleep(max(0.0, journal_written + REVIEW29_WINDOW_MS / 1000 + 0.4 - time.monotonic()))
    calls = quota_fake.op_stats("GetFindings")["calls"]
    lowered = hg.buf(_r29_body(REVIEW29_FID, Severity={"Label": "MEDIUM"}), who="member")
    print("lowering:", lowered.status, lowered.text[:300])
    rec = hg.audit_for(lowered.headers.get("x-hubgate-decision-id")
                       or lowered.headers["x-amzn-requestid"])
    print("lookup calls:", quota_fake.op_stats("GetFindings")["calls"] - calls,
          "metrics:", rec.get("metrics"))
    print("fake now holds:", quota_fake.findings()[REVIEW29_FID]["Severity"])
    assert lowered.status in (403, 503), (
        f"the member's lowering of a CRITICAL finding was allowed ({lowered.status}): it was "
        f"judged on the state read before the V2 write; the fake now holds "
        f"{quota_fake.findings()[REVIEW29_FID]['Severity']}")
