#!/usr/bin/env python3
"""hubgate quota benchmark: what Security Hub's per-account quotas cost callers behind hubgate.

    .venv/bin/python benches/quota/run.py --bin target/release/hubgate

Starts the fake Security Hub (tests/fake_securityhub.py with TCP_NODELAY, quota mode on:
GetFindings 3/s burst 6, BatchUpdateFindings 10/s burst 30) and, per hubgate run, a fresh hubgate
(default quota settings, enrichment.cache_ttl_ms = 5000) on free 127.0.0.1 ports. Each scenario runs
direct (boto3 signing with the fake's upstream key, as a caller without hubgate) and through hubgate
(the e2e suite's member / admin keys), every client with
Config(retries={"mode": "standard", "max_attempts": 10}):

  bulk   2,000 HIGH findings of the member's account; the member raises them to CRITICAL with a note,
         20 BatchUpdateFindings of 100 sent by 4 concurrent workers (a SOAR playbook).
  admin  300 findings; the administrator adds a note to all of them (3 requests of 100), twice.
  mixed  bulk, and meanwhile a second member account adds a note to 20 of its own findings once a
         second (5 requests, from 1 s in): how long one account's small update waits while
         another account's bulk job has the lookup quota (hubgate shares it between accounts
         in turn).

Prints a Markdown table and writes it to benches/quota/results.md. Exit status 1 if a caller saw an
error (an exception after boto3's retries) through hubgate, a run timed out or the findings did not
end in the requested state; 2 on a setup failure. Nothing but 127.0.0.1 is contacted; no cargo.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from botocore.config import Config

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

import helpers as h  # noqa: E402  (the e2e suite's helpers: processes, config, keys)

# The stock fake pins every response at ~44 ms (Nagle + delayed ACK); see benches/load.
h.FAKE_SCRIPT = REPO / "benches" / "load" / "fake_nodelay.py"

RETRIES = {"mode": "standard", "max_attempts": 10}
HUBGATE_OVERRIDES = {
    "upstream": {"timeout_ms": 10000},
    "enrichment": {"enabled": True, "cache_ttl_ms": 5000},
}


# ---------------------------------------------------------------------------
# one run


@dataclass
class Run:
    scenario: str
    via: str  # "direct" | "hubgate"
    wall_s: float = 0.0
    calls: int = 0
    errors: list = field(default_factory=list)
    retries: int = 0  # boto3 retries of successful calls
    timed_out: bool = False
    applied: int = 0  # findings the fake processed
    state_ok: int = 0  # findings in the requested end state
    expected: int = 0
    gf_calls: int = 0
    gf_throttled: int = 0
    buf_calls: int = 0
    buf_ok: int = 0
    buf_throttled: int = 0
    hubgate_429: int = 0  # hubgate's own 429 THROTTLED answers (audit)
    hubgate_5xx: int = 0
    side_latencies: list = field(default_factory=list)  # mixed: the second account's, seconds
    side_errors: list = field(default_factory=list)
    side_expected: int = 0
    side_state_ok: int = 0

    @property
    def rate(self) -> float:
        return self.applied / self.wall_s if self.wall_s else 0.0

    @property
    def gf_per_update(self) -> float | None:
        return self.gf_calls / self.buf_ok if self.buf_ok else None


def client_for(endpoint: str, creds: h.Creds):
    return boto3.session.Session().client(
        "securityhub", endpoint_url=endpoint, region_name=h.REGION,
        aws_access_key_id=creds.access_key, aws_secret_access_key=creds.secret_key,
        config=Config(retries=dict(RETRIES), connect_timeout=5, read_timeout=30,
                      max_pool_connections=8))


def drive(endpoint: str, creds: h.Creds, bodies: list[dict], workers: int,
          timeout: float, run: Run):
    """Send bodies (BatchUpdateFindings) with `workers` threads, one client each."""
    work: queue.Queue = queue.Queue()
    for b in bodies:
        work.put(b)
    deadline = time.monotonic() + timeout
    lock = threading.Lock()

    def worker():
        client = client_for(endpoint, creds)
        while time.monotonic() < deadline:
            try:
                body = work.get_nowait()
            except queue.Empty:
                return
            try:
                resp = client.batch_update_findings(**body)
                with lock:
                    run.calls += 1
                    run.retries += resp["ResponseMetadata"].get("RetryAttempts", 0)
                    if resp.get("UnprocessedFindings"):
                        run.errors.append(f"UnprocessedFindings: {resp['UnprocessedFindings'][:2]}")
            except Exception as e:  # noqa: BLE001 - caller-visible error, reported
                with lock:
                    run.calls += 1
                    run.errors.append(f"{type(e).__name__}: {e}"[:300])

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + 1)
    run.wall_s = time.monotonic() - started
    if any(t.is_alive() for t in threads) or not work.empty():
        run.timed_out = True


# ---------------------------------------------------------------------------
# scenarios


def bulk_seed(n: int) -> list[dict]:
    return [h.finding(f"bulk-{i:05d}", h.MEMBER_ACCOUNT, "HIGH") for i in range(n)]


def bulk_bodies(seed: list[dict]) -> list[dict]:
    ids = [f["Id"] for f in seed]
    return [{"FindingIdentifiers": [h.ident(i) for i in ids[k:k + 100]],
             "Severity": {"Label": "CRITICAL"},
             "Note": {"Text": "raised by playbook", "UpdatedBy": "soar"}}
            for k in range(0, len(ids), 100)]


def bulk_ok(f: dict) -> bool:
    return f["Severity"]["Label"] == "CRITICAL" and f["Note"]["Text"] == "raised by playbook"


def admin_seed(n: int) -> list[dict]:
    accounts = [h.MEMBER_ACCOUNT, h.OTHER_ACCOUNT, h.ADMIN_ACCOUNT]
    return [h.finding(f"adm-{i:04d}", accounts[i % 3], "MEDIUM") for i in range(n)]


def admin_bodies(seed: list[dict]) -> list[dict]:
    ids = [f["Id"] for f in seed]
    once = [{"FindingIdentifiers": [h.ident(i) for i in ids[k:k + 100]],
             "Note": {"Text": "reviewed by the SOC", "UpdatedBy": "admin"}}
            for k in range(0, len(ids), 100)]
    return once + [dict(b) for b in once]


def admin_ok(f: dict) -> bool:
    return f["Note"]["Text"] == "reviewed by the SOC"


# mixed: the second member account and its small updates
SIDE = h.Creds("HGBENCHMEMBER0000002", "bench-second-member-secret")
SIDE_CALLERS = h.CALLERS_TOML + f"""
[[caller]]
id = "member-b"
account_id = "{h.OTHER_ACCOUNT}"
role = "member"
access_key_id = "{SIDE.access_key}"
secret_access_key = "{SIDE.secret_key}"
"""
SIDE_REQUESTS, SIDE_SIZE, SIDE_EVERY_S = 5, 20, 1.0


def side_seed() -> list[dict]:
    return [h.finding(f"side-{i:03d}", h.OTHER_ACCOUNT, "HIGH")
            for i in range(SIDE_REQUESTS * SIDE_SIZE)]


def side_ok(f: dict) -> bool:
    return f["Note"]["Text"] == "looked at while the bulk job ran"


def side_caller(endpoint: str, creds: h.Creds, seed: list[dict], run: Run):
    """The second account: one small update a second, each timed."""
    client = client_for(endpoint, creds)
    start = time.monotonic() + SIDE_EVERY_S
    for k in range(SIDE_REQUESTS):
        time.sleep(max(0.0, start + k * SIDE_EVERY_S - time.monotonic()))
        ids = [f["Id"] for f in seed[k * SIDE_SIZE:(k + 1) * SIDE_SIZE]]
        body = {"FindingIdentifiers": [h.ident(i) for i in ids],
                "Note": {"Text": "looked at while the bulk job ran", "UpdatedBy": "analyst"}}
        t0 = time.monotonic()
        try:
            client.batch_update_findings(**body)
            run.side_latencies.append(time.monotonic() - t0)
        except Exception as e:  # noqa: BLE001 - caller-visible error, reported
            run.side_errors.append(f"{type(e).__name__}: {e}"[:300])


SCENARIOS = {
    # key: (title, seed, bodies, end-state check, hubgate caller, workers)
    "bulk": ("Bulk triage: member raises 2,000 findings to CRITICAL + note, 20 x 100, 4 workers",
             bulk_seed, bulk_bodies, bulk_ok, h.MEMBER, 4),
    "admin": ("Admin notes twice: 300 findings, 3 x 100, twice, 1 worker",
              admin_seed, admin_bodies, admin_ok, h.ADMIN, 1),
    "mixed": ("Bulk triage as above, and a second member account's 5 updates of 20, one a second",
              bulk_seed, bulk_bodies, bulk_ok, h.MEMBER, 4),
}


def run_one(key: str, via: str, n: int, fake: h.FakeUpstream, workdir: Path,
            timeout: float) -> Run:
    title, seed_fn, bodies_fn, ok_fn, caller, workers = SCENARIOS[key]
    seed = seed_fn(n)
    side = side_seed() if key == "mixed" else []
    fake.reset()
    fake.add_findings(seed + side)
    fake.quota_on()  # full buckets
    run = Run(key, via, expected=len(seed), side_expected=len(side))
    gate = None
    try:
        if via == "hubgate":
            gate = h.Hubgate(workdir / f"hubgate-{key}", fake.endpoint, HUBGATE_OVERRIDES,
                             callers_toml=SIDE_CALLERS if side else None)
            gate.start(ready_timeout=30)
            endpoint, creds, side_creds = gate.url, caller, SIDE
        else:
            endpoint = fake.endpoint
            creds = side_creds = h.Creds(h.UPSTREAM_KEY, h.UPSTREAM_SECRET)
        print(f"--- {key} / {via}", flush=True)
        second = threading.Thread(target=side_caller, args=(endpoint, side_creds, side, run),
                                  daemon=True)
        if side:
            second.start()
        drive(endpoint, creds, bodies_fn(seed), workers, timeout, run)
        if side:
            second.join(timeout)
        stats = fake.stats()
        gf = stats.get("GetFindings", {})
        buf = stats.get("BatchUpdateFindings", {})
        run.gf_calls, run.gf_throttled = gf.get("calls", 0), gf.get("throttled", 0)
        run.buf_calls, run.buf_throttled = buf.get("calls", 0), buf.get("throttled", 0)
        run.applied = buf.get("findings_processed", 0)
        run.buf_ok = sum(1 for r in fake.requests("PATCH", "/findings/batchupdate")
                         if r.get("status") == 200)
        findings = fake.findings()
        run.state_ok = sum(1 for f in seed if ok_fn(findings[f["Id"]]))
        run.side_state_ok = sum(1 for f in side if side_ok(findings[f["Id"]]))
        if gate is not None:
            time.sleep(0.3)  # let the audit sink catch up
            for rec in gate.audit_records():
                if rec.get("status") == 429:
                    run.hubgate_429 += 1
                elif (rec.get("status") or 0) >= 500:
                    run.hubgate_5xx += 1
    finally:
        if gate is not None:
            gate.stop()
    return run


# ---------------------------------------------------------------------------
# report


def fmt(v, spec="{:.2f}") -> str:
    return "–" if v is None else spec.format(v)


def table(runs: list[Run]) -> str:
    direct = {r.scenario: r for r in runs if r.via == "direct"}
    out = ["| scenario | via | wall s | findings applied/s | vs direct | caller errors | "
           "boto3 retries | GetFindings upstream | GetFindings throttled | GetFindings per "
           "applied update | BUF throttled | hubgate 429 / 5xx | end state |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in runs:
        d = direct.get(r.scenario)
        rel = (r.rate / d.rate) if (d and d.rate and r.via == "hubgate") else None
        end = f"{r.state_ok}/{r.expected}" + (" TIMED OUT" if r.timed_out else "")
        hub = f"{r.hubgate_429} / {r.hubgate_5xx}" if r.via == "hubgate" else "–"
        out.append(
            f"| {r.scenario} | {r.via} | {r.wall_s:.1f} | {r.rate:.0f} | "
            f"{fmt(rel, '{:.2f}x')} | {len(r.errors)} | {r.retries} | {r.gf_calls} | "
            f"{r.gf_throttled} | {fmt(r.gf_per_update)} | {r.buf_throttled} | {hub} | {end} |")
    return "\n".join(out)


def git_rev() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001
        return "?"


def report(args, runs: list[Run]) -> str:
    binary = Path(args.bin).resolve()
    if args.direct_only:
        built = "not used (--direct-only)"
    else:
        mtime = dt.datetime.fromtimestamp(binary.stat().st_mtime, dt.timezone.utc)
        built = f"{binary} (modified {mtime:%Y-%m-%d %H:%M} UTC)"
    lines = [
        "# hubgate quota benchmark",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; commit {git_rev()} "
        f"(working tree may differ); nproc {os.cpu_count()}, load average at the start "
        f"{args.loadavg[0]:.2f} / {args.loadavg[1]:.2f}",
        f"- binary: {built}",
        "- fake Security Hub: tests/fake_securityhub.py with TCP_NODELAY, quota mode on (AWS's "
        "quotas: GetFindings 3/s burst 6, BatchUpdateFindings 10/s burst 30), buckets full at the "
        "start of each run",
        "- hubgate: a fresh process per run, default `[quota]`, enrichment.cache_ttl_ms = 5000, "
        "shipped policies, audit to a file",
        f"- callers: boto3 {boto3.__version__}, `Config(retries={RETRIES})`, one client per "
        f"worker; timeout {args.timeout:.0f} s per run",
        "",
        table(runs),
        "",
        "- findings applied/s: findings the fake processed / wall time. GetFindings per applied "
        "update: GetFindings calls the fake received / BatchUpdateFindings it answered 200. "
        "caller errors: exceptions boto3 raised after its retries. boto3 retries: retries of calls "
        "that succeeded. hubgate 429 / 5xx: hubgate's answers by status (audit records). "
        "end state: findings in the requested state afterwards.",
    ]
    mixed = [r for r in runs if r.side_expected]
    if mixed:
        lines += [
            "",
            "The second account in `mixed`: its 5 updates of 20 findings while the bulk job runs "
            "(seconds from sending to the answer, boto3 retries included).",
            "",
            "| via | answered | caller errors | median s | max s | end state |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for r in mixed:
            lat = sorted(r.side_latencies)
            med = lat[len(lat) // 2] if lat else None
            lines.append(f"| {r.via} | {len(lat)} | {len(r.side_errors)} | {fmt(med)} | "
                         f"{fmt(lat[-1] if lat else None)} | {r.side_state_ok}/{r.side_expected} |")
    for r in runs:
        if r.side_errors:
            lines.append(f"- {r.scenario} / {r.via}: second account: {len(r.side_errors)} caller "
                         f"errors, first: `{r.side_errors[0]}`")
    for r in runs:
        if r.errors:
            lines.append(f"- {r.scenario} / {r.via}: {len(r.errors)} caller errors, first: "
                         f"`{r.errors[0]}`")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=os.environ.get("HUBGATE_BIN",
                                                    str(REPO / "target/release/hubgate")))
    ap.add_argument("--workdir", type=Path, help="configs, logs and audit files (default: temp)")
    ap.add_argument("--results", type=Path, default=HERE / "results.md")
    ap.add_argument("--timeout", type=float, default=180, help="seconds per run")
    ap.add_argument("--only", choices=sorted(SCENARIOS), action="append",
                    help="run only this scenario (repeatable)")
    ap.add_argument("--direct-only", action="store_true",
                    help="skip the runs through hubgate (no binary needed)")
    ap.add_argument("--bulk-findings", type=int, default=2000)
    ap.add_argument("--admin-findings", type=int, default=300)
    args = ap.parse_args()
    args.loadavg = os.getloadavg()
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, _on_signal)

    # Resolved here: the gates run in their own work folders, not in this one.
    h.HUBGATE_BIN = Path(args.bin).resolve()
    if not args.direct_only and not h.HUBGATE_BIN.exists():
        print(f"hubgate binary not found at {h.HUBGATE_BIN} (--bin / HUBGATE_BIN; build it with "
              "`cargo build --release`)", file=sys.stderr)
        return 2
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="hubgate-quota.")
        args.workdir = Path(tmp.name)
    args.workdir.mkdir(parents=True, exist_ok=True)

    fake = h.FakeUpstream(args.workdir / "fake.log")
    runs: list[Run] = []
    try:
        fake.start()
        sizes = {"bulk": args.bulk_findings, "admin": args.admin_findings,
                 "mixed": args.bulk_findings}
        vias = ["direct"] if args.direct_only else ["direct", "hubgate"]
        for key in args.only or list(SCENARIOS):
            for via in vias:
                runs.append(run_one(key, via, sizes[key], fake, args.workdir, args.timeout))
    finally:
        fake.stop()
        if tmp is not None:
            tmp.cleanup()

    text = report(args, runs)
    print(text)
    args.results.write_text(text)
    bad = [r for r in runs if r.via == "hubgate" and (r.errors or r.timed_out
                                                      or r.state_ok != r.expected
                                                      or r.side_errors
                                                      or r.side_state_ok != r.side_expected)]
    bad += [r for r in runs if r.via == "direct" and (r.timed_out or r.state_ok != r.expected)]
    for r in bad:
        print(f"PROBLEM: {r.scenario} / {r.via}: {len(r.errors)} caller errors, "
              f"timed out: {r.timed_out}, end state {r.state_ok}/{r.expected}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
