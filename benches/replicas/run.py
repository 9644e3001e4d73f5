#!/usr/bin/env python3
"""hubgate two-replica benchmark (issue 12): one quota and one view of the findings.

    .venv/bin/python benches/replicas/run.py --bin target/release/hubgate

Starts a redis-server (127.0.0.1, no persistence), the fake Security Hub with its quota mode on
(GetFindings 3/s burst 6, BatchUpdateFindings 10/s burst 30) and two hubgate replicas sharing
that Redis (`[coordination] redis_url`), each configured with the whole documented quota, so
only the shared buckets keep the pair under it. Then:

  bulk     2,000 HIGH findings of the member's account; the member raises them to CRITICAL with
           a note, 20 BatchUpdateFindings of 100, by 4 workers (2 per replica; boto3 standard
           retries, max_attempts 10).
  crossed  each replica gets the requests the other replica served in `bulk` (a note on the
           same findings): every finding should come from the shared cache.

Prints a Markdown table and writes benches/replicas/results.md. Exit status 1 if a caller saw
an error or Security Hub throttled a GetFindings. Needs redis-server on PATH.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import boto3
from botocore.config import Config

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

import helpers as h  # noqa: E402

h.FAKE_SCRIPT = REPO / "benches" / "load" / "fake_nodelay.py"


def client_for(hg) -> object:
    creds = h.CALLERS["member"]
    return boto3.session.Session().client(
        "securityhub", endpoint_url=hg.url, region_name=h.REGION,
        aws_access_key_id=creds.access_key, aws_secret_access_key=creds.secret_key,
        config=Config(retries={"mode": "standard", "max_attempts": 10}, connect_timeout=5,
                      read_timeout=60, max_pool_connections=8))


def body(ids: list[str], label: str, text: str) -> dict:
    return {"FindingIdentifiers": [h.ident(i) for i in ids],
            "Severity": {"Label": label}, "Note": {"Text": text, "UpdatedBy": "bench"}}


def drive(lanes: list[tuple[object, list[dict]]]) -> tuple[float, list[str]]:
    """Each lane: (replica, bodies) sent by one worker. Returns (seconds, errors)."""
    errors: list[str] = []
    lock = threading.Lock()

    def worker(hg, bodies):
        client = client_for(hg)
        for b in bodies:
            try:
                resp = client.batch_update_findings(**b)
                if resp.get("UnprocessedFindings"):
                    with lock:
                        errors.append(f"unprocessed: {resp['UnprocessedFindings'][:1]}")
            except Exception as e:  # noqa: BLE001 - a caller-visible error, reported
                with lock:
                    errors.append(f"{type(e).__name__}: {e}"[:200])

    threads = [threading.Thread(target=worker, args=lane, daemon=True) for lane in lanes]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return time.monotonic() - started, errors


def audit_sums(hg, since: int) -> dict:
    recs = [r for r in hg.audit_records()[since:] if r.get("operation") == "BatchUpdateFindings"]
    return {"requests": len(recs),
            "hits": sum(r["metrics"]["counter_cache_hits"] for r in recs),
            "lookups": sum(r["metrics"]["counter_lookup_calls"] for r in recs)}


def build_of(binary) -> str:
    """release or debug, from the cargo profile folder the binary is in (or was copied from)."""
    parts = Path(binary).resolve().parts
    return "release" if "release" in parts else "debug" if "debug" in parts else "build unknown"


def settle(replicas, expected: int, timeout: float = 15) -> None:
    """Audit records are written asynchronously: wait until every BatchUpdateFindings
    answered so far has its record, so that one phase's records do not count in the next."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = sum(len([r for r in hg.audit_records() if r.get("operation") == "BatchUpdateFindings"])
                for hg in replicas)
        if n >= expected:
            return
        time.sleep(0.1)
    raise RuntimeError(f"only {n} of {expected} audit records after {timeout} s")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(REPO / "target" / "release" / "hubgate"))
    ap.add_argument("--findings", type=int, default=2000)
    ap.add_argument("--out", default=str(HERE / "results.md"))
    args = ap.parse_args()
    h.HUBGATE_BIN = Path(args.bin).resolve()
    redis_bin = shutil.which("redis-server")
    if not redis_bin:
        print("redis-server is not installed (apt-get install redis-server)", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="hubgate-replicas-"))
    port = h.free_port()
    redis = subprocess.Popen([redis_bin, "--port", str(port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", str(work)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fake = h.FakeUpstream(work / "fake.log").start()
    replicas = []
    try:
        fake.quota_on()
        ids = [f"bench-{i:05d}" for i in range(args.findings)]
        fake.add_findings([h.finding(i, h.MEMBER_ACCOUNT, "HIGH", 70) for i in ids])
        for n in (1, 2):
            hg = h.Hubgate(work / f"replica-{n}", fake.endpoint, {
                "upstream": {"timeout_ms": 10000},
                "enrichment": {"enabled": True, "cache_ttl_ms": 60000},
                "coordination": {"redis_url": f"redis://127.0.0.1:{port}/0"},
            }, fake=fake, env={**h.hubgate_env(), "HUBGATE_INSTANCE_ID": f"replica-{n}"})
            replicas.append(hg.start())
        r1, r2 = replicas
        chunks = [ids[i:i + 100] for i in range(0, len(ids), 100)]
        # bulk: chunk k goes to replica k % 2, two workers per replica
        mine = {0: chunks[0::2], 1: chunks[1::2]}
        lanes = [(replicas[r], [body(c, "CRITICAL", "bulk") for c in mine[r][w::2]])
                 for r in (0, 1) for w in (0, 1)]
        bulk_s, bulk_errors = drive(lanes)
        gf_bulk = fake.op_stats("GetFindings")
        settle(replicas, len(chunks))
        marks = [len(r1.audit_records()), len(r2.audit_records())]
        # crossed: each replica gets the other's chunks
        lanes = [(replicas[r], [body(c, "CRITICAL", "crossed") for c in mine[1 - r][w::2]])
                 for r in (0, 1) for w in (0, 1)]
        crossed_s, crossed_errors = drive(lanes)
        gf_all = fake.op_stats("GetFindings")
        settle(replicas, 2 * len(chunks))
        crossed = [audit_sums(hg, m) for hg, m in zip(replicas, marks)]
        applied = sum(1 for f in fake.findings().values()
                      if f["Id"].startswith("bench-") and f["Note"]["Text"] == "crossed"
                      and f["Severity"]["Label"] == "CRITICAL")
        verify = subprocess.run([str(h.HUBGATE_BIN), "audit", "verify",
                                 *map(str, r1.audit_files() + r2.audit_files())],
                                capture_output=True, text=True)
    finally:
        for hg in replicas:
            hg.stop()
        fake.stop()
        redis.kill()
        redis.wait()

    crossed_hits = sum(c["hits"] for c in crossed)
    crossed_lookups = sum(c["lookups"] for c in crossed)
    rows = [
        ("bulk (2 replicas, 4 workers)", f"{args.findings / bulk_s:.1f}", len(bulk_errors),
         gf_bulk["calls"], gf_bulk["throttled"], "-"),
        ("crossed (each replica the other's findings)", f"{args.findings / crossed_s:.1f}",
         len(crossed_errors), gf_all["calls"] - gf_bulk["calls"],
         gf_all["throttled"] - gf_bulk["throttled"],
         f"{crossed_hits} / {args.findings}"),
    ]
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    lines = [
        "# Two replicas sharing one quota and one cache (benches/replicas/run.py)",
        "",
        f"{stamp}, commit {rev}, binary `{Path(args.bin).name}` "
        f"({build_of(args.bin)}), {os.cpu_count()} cores.",
        "Fake Security Hub with AWS's quotas (GetFindings 3/s burst 6); both replicas "
        "configured with the whole quota, sharing it through one redis-server.",
        "",
        "| phase | findings/s | caller errors | GetFindings | GetFindings throttled | "
        "shared-cache hits |",
        "|---|---|---|---|---|---|",
        *[f"| {' | '.join(map(str, r))} |" for r in rows],
        "",
        f"Findings in the final state: {applied} / {args.findings}. GetFindings lookups made "
        f"in the crossed phase (audit): {crossed_lookups}. "
        f"`hubgate audit verify` over both replicas' files: "
        f"{'; '.join(verify.stdout.strip().splitlines())}",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    Path(args.out).write_text(text)
    if bulk_errors or crossed_errors:
        print(json.dumps((bulk_errors + crossed_errors)[:5], indent=1), file=sys.stderr)
    ok = not bulk_errors and not crossed_errors and gf_all["throttled"] == 0 \
        and applied == args.findings and verify.returncode == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
