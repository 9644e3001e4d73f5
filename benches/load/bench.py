#!/usr/bin/env python3
"""hubgate load test driver. Run it through benches/load/run.sh (which installs wrk, builds
the release binary and cleans up), or directly:

    .venv/bin/python benches/load/bench.py --bin target/release/hubgate --workdir /tmp/x

Starts the fake Security Hub (tests/fake_securityhub.py) and hubgate on free 127.0.0.1 ports,
seeds findings, and for each scenario: signs one request with botocore (SigV4, valid for 15
minutes; hubgate has no replay check, so wrk can send the same signed request over and over),
sends it once with Python and checks the status, then runs a bounded wrk run with a Lua script
carrying method, body and headers. Afterwards it checks hubgate's audit file (one record per
request) and prints / writes a Markdown table. Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

import helpers as h  # noqa: E402  (the e2e suite's helpers: signing, fake, config, env)

# The checkout the hubgate binary was built from (run.sh: HUBGATE_SRC), for the report's commit
# and the policies hubgate loads; this repository unless told otherwise.
SOURCE = Path(os.environ.get("HUBGATE_SRC") or REPO).resolve()
h.POLICY_DIR = SOURCE / "policies"

# The stock fake, with TCP_NODELAY on its sockets (see fake_nodelay.py); FAKE=stock for the
# unchanged one, whose responses all take ~44 ms (Nagle + delayed ACK).
if os.environ.get("FAKE", "nodelay") != "stock":
    h.FAKE_SCRIPT = HERE / "fake_nodelay.py"

PROCS: list[subprocess.Popen] = []
PIDFILE: Path | None = None


# ---------------------------------------------------------------------------
# processes


def track(proc: subprocess.Popen) -> subprocess.Popen:
    PROCS.append(proc)
    if PIDFILE:
        with open(PIDFILE, "a") as f:
            f.write(f"{proc.pid}\n")
    return proc


def stop_all():
    for p in reversed(PROCS):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in reversed(PROCS):
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def start_fake(workdir: Path) -> h.FakeUpstream:
    fake = h.FakeUpstream(workdir / "fake.log")
    # FakeUpstream.start() waits for readiness; track the pid as soon as it exists.
    try:
        fake.start()
    finally:
        if fake.proc:
            track(fake.proc)
    return fake


# hubgate paces its upstream calls to Security Hub's documented quotas (GetFindings 3/s,
# BatchUpdateFindings 10/s): a load test would measure the pacer. When the binary has a [quota]
# section, every limit the load tests use is raised out of the way.
QUOTA = {"share": 1.0, "limits": {op: {"rate": 1000000.0, "burst": 1000000}
                                  for op in ("default", "GetFindings", "BatchUpdateFindings")}}


def check(g: "Gate") -> subprocess.CompletedProcess:
    """`hubgate check` on this Gate's config, written to its (throwaway) folder."""
    g.workdir.mkdir(parents=True, exist_ok=True)
    (g.workdir / "callers.toml").write_text(h.CALLERS_TOML)
    (g.workdir / "hubgate.toml").write_text(h.to_toml(g.config()))
    return subprocess.run([str(g.binary), "check", "--config", str(g.workdir / "hubgate.toml")],
                          capture_output=True, text=True, env=h.hubgate_env(), cwd=g.workdir,
                          timeout=60)


def binary_knows_quota(binary: Path, workdir: Path, upstream: str) -> bool:
    """Whether this hubgate accepts a [quota] section (`hubgate check` on a throwaway config)."""
    out = check(Gate(binary, workdir / "quota-probe", upstream, quota=True))
    if out.returncode == 0:
        return True
    text = out.stdout + out.stderr
    if "quota" in text:
        return False
    raise RuntimeError(f"hubgate check failed on the load test's config:\n{text[-3000:]}")


class Gate:
    """One hubgate process (release binary) with its own config folder."""

    def __init__(self, binary: Path, workdir: Path, upstream: str, overrides: dict | None = None,
                 stdout_devnull: bool = False, quota: bool = False):
        self.binary = binary
        self.quota = quota
        self.workdir = workdir
        self.port = h.free_port()
        self.admin_port = h.free_port()
        self.upstream = upstream
        self.overrides = overrides or {}
        self.stdout_devnull = stdout_devnull
        self.proc: subprocess.Popen | None = None

    host = property(lambda self: f"127.0.0.1:{self.port}")
    audit_path = property(lambda self: self.workdir / "audit.ndjson")
    stderr_path = property(lambda self: self.workdir / "hubgate.stderr")

    def config(self) -> dict:
        base = {
            "server": {"listen": self.host, "admin_listen": f"127.0.0.1:{self.admin_port}",
                       "max_body_bytes": 1048576},
            "upstream": {"endpoint": self.upstream, "region": h.REGION, "auth": "resign",
                         "timeout_ms": 10000},
            "identity": {"mode": "sigv4", "callers": "callers.toml"},
            "policy": {"dir": str(h.POLICY_DIR), "mode": "enforce",
                       "on_partial_deny": "reject"},
            "enrichment": {"enabled": True, "cache_ttl_ms": 60000},
            "audit": {"sink": "file", "path": "audit.ndjson", "format": "hubgate"},
        }
        if self.quota:
            base["quota"] = QUOTA
        return h.merge(base, self.overrides)

    def start(self):
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "callers.toml").write_text(h.CALLERS_TOML)
        cfg = self.workdir / "hubgate.toml"
        cfg.write_text(h.to_toml(self.config()))
        out = (subprocess.DEVNULL if self.stdout_devnull
               else open(self.workdir / "hubgate.stdout", "ab"))
        err = open(self.stderr_path, "ab")
        self.proc = track(subprocess.Popen(
            [str(self.binary), "serve", "--config", str(cfg)], env=h.hubgate_env(),
            stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=self.workdir))

        def ready():
            if self.proc.poll() is not None:
                raise h.GiveUp(f"hubgate exited with {self.proc.returncode}:\n"
                               + self.stderr_path.read_text(errors="replace")[-3000:])
            return requests.get(f"http://127.0.0.1:{self.admin_port}/readyz",
                                timeout=1).status_code == 200

        h.wait_until(ready, 20, "hubgate /readyz == 200")
        return self

    def rss_kib(self) -> int | None:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            return None
        return None

    def audit_lines(self) -> int:
        if not self.audit_path.exists():
            return 0
        with open(self.audit_path, "rb") as f:
            return sum(1 for _ in f)

    def settled_audit_lines(self, timeout: float = 5.0) -> int:
        """Audit line count once it stops growing (the sink may be asynchronous)."""
        last, stable_since = -1, time.monotonic()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            n = self.audit_lines()
            if n != last:
                last, stable_since = n, time.monotonic()
            elif time.monotonic() - stable_since > 0.4:
                break
            time.sleep(0.1)
        return last


# ---------------------------------------------------------------------------
# requests


def buf_body(ids: list[str], status: str) -> bytes:
    return json.dumps({
        "FindingIdentifiers": [h.ident(i) for i in ids],
        "Workflow": {"Status": status},
    }, separators=(",", ":")).encode()


def signed(creds: h.Creds, host: str, body: bytes, path: str = "/findings/batchupdate",
           method: str = "PATCH") -> dict:
    return {"method": method, "path": path, "body": body,
            "headers": h.sign(creds, method, host, path, body,
                              {"Content-Type": "application/json"})}


def probe(port: int, req: dict) -> h.Response:
    # the exact bytes and headers wrk will send (Host is among the signed headers)
    return h.raw_request(port, req["method"], req["path"], req["body"], dict(req["headers"]))


def lua_str(s: str | bytes) -> str:
    if isinstance(s, str):
        s = s.encode()
    out = []
    for b in s:
        c = chr(b)
        if c in '\\"':
            out.append("\\" + c)
        elif 32 <= b < 127:
            out.append(c)
        else:
            out.append("\\%03d" % b)
    return '"' + "".join(out) + '"'


def write_lua(path: Path, req: dict):
    lines = [f"wrk.method = {lua_str(req['method'])}",
             f"wrk.path = {lua_str(req['path'])}",
             f"wrk.body = {lua_str(req['body'])}",
             "wrk.headers = {}"]
    for k, v in req["headers"].items():
        lines.append(f"wrk.headers[{lua_str(k)}] = {lua_str(v)}")
    path.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------
# wrk


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def proc_cpu_split(pid: int) -> tuple[float, float] | None:
    """utime and stime of a process (user space, kernel), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def proc_cpu(pid: int) -> float | None:
    """utime + stime of a process, in seconds."""
    split = proc_cpu_split(pid)
    return None if split is None else sum(split)


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_wrk(args, port: int, lua: Path, log: Path, threads: int, conns: int,
            duration: int) -> dict:
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s",
           "--timeout", "5s", "--latency", "-s", str(lua), f"http://127.0.0.1:{port}"]
    proc = track(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, text=True))
    out, _ = proc.communicate(timeout=duration + 60)
    log.write_text(" ".join(cmd) + "\n" + out)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{out}")
    res = {"raw": out, "non2xx": 0, "socket_errors": None}
    m = re.search(r"(\d+) requests in ([\d.]+\w+),", out)
    res["requests"] = int(m.group(1))
    res["rps"] = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    for pct in ("50", "75", "90", "99"):
        res[f"p{pct}"] = _ms(re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.M).group(1))
    m = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", out)
    res["avg"], res["max"] = _ms(m.group(1)), _ms(m.group(3))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        res["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: (.*)", out)
    if m:
        res["socket_errors"] = m.group(1).strip()
    return res


# ---------------------------------------------------------------------------
# scenarios


def fmt_ms(v: float) -> str:
    return f"{v * 1000:.0f} µs" if v < 1 else f"{v:.2f} ms"


def audit_slice(gate: Gate, start: int, end: int) -> list[dict]:
    with open(gate.audit_path, "rb") as f:
        lines = f.readlines()
    return [json.loads(line) for line in lines[start:end] if line.strip()]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, type=Path)
    ap.add_argument("--workdir", required=True, type=Path)
    ap.add_argument("--pidfile", type=Path)
    ap.add_argument("--duration", type=int, default=int(os.environ.get("DURATION", 10)))
    ap.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", 2)))
    ap.add_argument("--connections", type=int, default=int(os.environ.get("CONNECTIONS", 16)))
    ap.add_argument("--results", type=Path, default=HERE / "results.md")
    ap.add_argument("--no-stdout-scenario", action="store_true")
    args = ap.parse_args()

    global PIDFILE
    PIDFILE = args.pidfile
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, _on_signal)
    try:
        return run(args)
    finally:
        stop_all()


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))] if v else 0.0


IGNORED_STDERR = re.compile(r"config file overridden via environment variable not found")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def run(args) -> int:
    args.loadavg = os.getloadavg()
    wd = args.workdir
    wd.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    notes: list[str] = []

    fake = start_fake(wd)
    ids = [f"bench-{i:04d}" for i in range(100)]
    seed = [h.finding(i, h.MEMBER_ACCOUNT, "HIGH", 70) for i in ids]

    def reseed():
        fake.reset()
        fake.add_findings(seed)

    reseed()
    quota = binary_knows_quota(args.bin, wd, fake.endpoint)
    if quota:
        notes.append("this hubgate has a [quota] section: the limits for default, GetFindings "
                     "and BatchUpdateFindings were raised to 1,000,000/s so that pacing to "
                     "Security Hub's quotas does not bound the run")
    gate = Gate(args.bin, wd / "hubgate-file", fake.endpoint, quota=quota).start()
    gates = [gate]
    upstream = h.Creds(h.UPSTREAM_KEY, h.UPSTREAM_SECRET)
    T, C, D = args.threads, args.connections, args.duration
    low_d = max(3, D // 2)

    deny_msg = "member accounts may not suppress findings"
    scenarios = [
        # key, label, target, caller, findings, Workflow.Status, expected status, (t, c, d)
        ("deny1", "1. denied before enrichment, 1 finding (member SUPPRESSED)",
         "gate", h.MEMBER, ids[:1], "SUPPRESSED", 403, (T, C, D)),
        ("deny100", "2. denied before enrichment, 100 findings",
         "gate", h.MEMBER, ids, "SUPPRESSED", 403, (T, C, D)),
        ("allow1", "3. allowed + forwarded, 1 finding (admin NOTIFIED, enrichment cached)",
         "gate", h.ADMIN, ids[:1], "NOTIFIED", 200, (T, C, D)),
        ("allow100", "4. allowed + forwarded, 100 findings (admin NOTIFIED, cached)",
         "gate", h.ADMIN, ids, "NOTIFIED", 200, (T, C, D)),
        ("direct1", "5. baseline: request 3 straight to the fake (no hubgate)",
         "fake", upstream, ids[:1], "NOTIFIED", 200, (T, C, D)),
        ("allow1-c1", "3b. as 3, one connection (fake not saturated)",
         "gate", h.ADMIN, ids[:1], "NOTIFIED", 200, (1, 1, low_d)),
        ("direct1-c1", "5b. as 5, one connection",
         "fake", upstream, ids[:1], "NOTIFIED", 200, (1, 1, low_d)),
    ]
    if not args.no_stdout_scenario:
        scenarios.append(("deny1-stdout", "6. as 1, audit.sink = \"stdout\" to /dev/null",
                          "gate-stdout", h.MEMBER, ids[:1], "SUPPRESSED", 403, (T, C, D)))

    results = []
    for key, label, target, creds, fids, wf, expect, (t, c, d) in scenarios:
        if target == "gate-stdout":
            g = Gate(args.bin, wd / "hubgate-stdout", fake.endpoint,
                     {"audit": {"sink": "stdout"}}, stdout_devnull=True, quota=quota).start()
            gates.append(g)
            port, host, cur = g.port, g.host, g
        elif target == "gate":
            port, host, cur = gate.port, gate.host, gate
        else:
            port, host, cur = fake.port, f"127.0.0.1:{fake.port}", None
        reseed()  # also empties the fake's request log, which grows under load
        req = signed(creds, host, buf_body(fids, wf))
        audited = cur is not None and not cur.stdout_devnull
        audit_before = cur.settled_audit_lines() if audited else None

        # one request with Python first, so the numbers below are not those of errors
        resp = probe(port, req)
        if resp.status != expect:
            raise AssertionError(f"{key}: expected {expect}, got {resp.status}: {resp.text}")
        body = resp.json()
        if expect == 403:
            assert body["error"]["code"] == "POLICY_DENIED", body
            assert deny_msg in body["error"]["message"], body
        else:
            assert len(body.get("ProcessedFindings", [])) == len(fids), body
            assert not body.get("UnprocessedFindings"), body
            if cur:
                assert resp.headers.get("x-hubgate-decision-id"), resp.headers

        lua = wd / f"{key}.lua"
        write_lua(lua, req)
        rss0 = cur.rss_kib() if cur else None
        cpu0 = (proc_cpu(cur.proc.pid) if cur else None, proc_cpu(fake.proc.pid), children_cpu())
        print(f"--- {label}: wrk -t{t} -c{c} -d{d}s", flush=True)
        w = run_wrk(args, port, lua, wd / f"{key}.wrk.txt", t, c, d)
        cpu1 = (proc_cpu(cur.proc.pid) if cur else None, proc_cpu(fake.proc.pid), children_cpu())
        rss1 = cur.rss_kib() if cur else None
        n_req = max(1, w["requests"])
        w.update(key=key, label=label, expect=expect, rss=(rss0, rss1), conns=c,
                 cpu_us={"hubgate": None if cur is None else (cpu1[0] - cpu0[0]) / n_req * 1e6,
                         "fake": (cpu1[1] - cpu0[1]) / n_req * 1e6,
                         "wrk": (cpu1[2] - cpu0[2]) / n_req * 1e6})
        print(f"    {w['requests']} requests, {w['rps']:.0f} req/s, p50 {fmt_ms(w['p50'])}, "
              f"p90 {fmt_ms(w['p90'])}, p99 {fmt_ms(w['p99'])}, max {fmt_ms(w['max'])}"
              + (f", hubgate RSS {rss0} -> {rss1} KiB" if cur else ""), flush=True)

        # response statuses as wrk saw them
        if expect == 200 and w["non2xx"]:
            problems.append(f"{key}: {w['non2xx']} of {w['requests']} responses were not 2xx")
        if expect == 403 and w["non2xx"] != w["requests"]:
            problems.append(f"{key}: {w['requests'] - w['non2xx']} responses were 2xx/3xx, "
                            "expected only 403")
        if w["socket_errors"]:
            problems.append(f"{key}: wrk socket errors: {w['socket_errors']}")

        # hubgate's audit: one record per request, statuses, upstream calls, its own timers
        if audited:
            after = cur.settled_audit_lines()
            recs = audit_slice(cur, audit_before, after)
            n = len(recs)
            w["audit"] = n
            met = [r.get("metrics") or {} for r in recs]
            statuses = collections.Counter(r.get("status") for r in recs)
            lookups = sum(m.get("counter_lookup_calls") or 0 for m in met)
            hits = sum(m.get("counter_cache_hits") or 0 for m in met)
            fwd = sum(1 for r in recs if r.get("forwarded"))
            ups = collections.Counter(r.get("upstream_status") for r in recs if r.get("forwarded"))
            dup = n - len({r.get("decision_id") for r in recs})
            total = [(m.get("timer_total_ns") or 0) / 1e6 for m in met]
            pol = [(m.get("timer_policy_ns") or 0) / 1e6 for m in met]
            upt = [(m.get("timer_upstream_ns") or 0) / 1e6 for m in met]
            w["internal"] = {"total": (pct(total, .5), pct(total, .9), pct(total, .99)),
                             "policy": (pct(pol, .5), pct(pol, .99)),
                             "upstream": (pct(upt, .5), pct(upt, .99))}
            sent = w["requests"] + 1  # + the Python probe
            w["audit_note"] = (f"{n} audit records for {sent} completed requests (wrk + probe); "
                               f"statuses {dict(statuses)}; forwarded {fwd} "
                               f"(upstream statuses {dict(ups)}); enrichment lookup calls "
                               f"{lookups}, cache hits {hits}")
            print("    audit: " + w["audit_note"], flush=True)
            if n < sent:
                problems.append(f"{key}: only {n} audit records for {sent} completed requests")
            if n > sent + c:
                problems.append(f"{key}: {n} audit records for {sent} completed requests "
                                f"(more than the {c} that can be in flight)")
            # wrk closes its connections when its time is up: a request still waiting then is
            # abandoned, 499 and not forwarded. At most one per connection.
            abandoned = [r for r in recs if r.get("status") == 499]
            if (set(statuses) - {499} != {expect} or len(abandoned) > c
                    or any(r.get("forwarded") for r in abandoned)):
                problems.append(f"{key}: audit statuses {dict(statuses)}, expected only {expect} "
                                f"(and at most {c} unforwarded 499s from wrk's end)")
            if dup:
                problems.append(f"{key}: {dup} duplicate decision ids in the audit")
            if expect == 403 and (fwd or lookups):
                problems.append(f"{key}: denied-before-enrichment requests made upstream calls "
                                f"(forwarded {fwd}, lookups {lookups})")
            if expect == 200 and lookups > -(-len(fids) // 20):
                notes.append(f"{key}: {lookups} enrichment lookup calls for {n} requests "
                             "(the cache did not absorb every lookup)")
            # latency the client saw that hubgate's own timers do not account for
            gap = w["p99"] - w["internal"]["total"][2]
            if expect == 200 and gap > 20 and w["internal"]["total"][2] < 0.5 * w["p99"]:
                notes.append(
                    f"{key}: client p99 {fmt_ms(w['p99'])} (p90 {fmt_ms(w['p90'])}) but hubgate's "
                    f"own timer_total_ns p99 is {fmt_ms(w['internal']['total'][2])}: the rest is "
                    "spent outside hubgate's timers, i.e. while the forwarded response is "
                    "written; ~40 ms steps are the signature of Nagle + delayed ACK (hubgate "
                    "writes the response head and the streamed body in two writes and does not "
                    "set TCP_NODELAY)")
        if target != "fake" and expect == 403:
            upstream_reqs = fake.requests()
            if upstream_reqs:
                problems.append(f"{key}: the fake saw {len(upstream_reqs)} requests for a "
                                "scenario that must make no upstream call")
        results.append(w)

    # hubgate's logs: anything at WARN/ERROR level under load?
    for g in gates:
        if g.proc.poll() is not None:
            problems.append(f"hubgate ({g.workdir.name}) exited with {g.proc.returncode}")
        text = ANSI.sub("", g.stderr_path.read_text(errors="replace"))
        lines = text.splitlines()
        bad = [line for line in lines if re.search(r"\b(WARN|ERROR|panicked)\b", line)
               and not IGNORED_STDERR.search(line)]
        if bad:
            problems.append(f"hubgate ({g.workdir.name}) stderr has {len(bad)} WARN/ERROR lines, "
                            f"first: {bad[0][:300]}")
        notes.append(f"hubgate ({g.workdir.name}) wrote {len(lines)} log lines "
                     f"({g.stderr_path.stat().st_size // 1024} KiB) to stderr: one INFO line "
                     "per request")

    write_report(args, results, problems, notes)
    return 1 if problems else 0


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} × {model}"


def commit() -> str:
    src = SOURCE
    try:
        c = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"],
                           capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--", "src",
                                "Cargo.toml", "Cargo.lock", "policies"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return ((c + (" (+ uncommitted changes in src/policies)" if dirty else ""))
                + ("" if src == REPO else f" in {src}"))
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_report(args, results, problems, notes):
    rows = ["| scenario | conns | requests/s | p50 | p90 | p99 | max | requests | audit records |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for w in results:
        rows.append(f"| {w['label']} | {w['conns']} | {w['rps']:.0f} | {fmt_ms(w['p50'])} "
                    f"| {fmt_ms(w['p90'])} | {fmt_ms(w['p99'])} | {fmt_ms(w['max'])} "
                    f"| {w['requests']} | {w.get('audit', '–')} |")
    inner = ["| scenario | hubgate timer_total p50 / p90 / p99 | policy p50 / p99 "
             "| upstream p50 / p99 | CPU µs/request: hubgate / fake / wrk |",
             "|---|---|---|---|---|"]
    for w in results:
        i = w.get("internal")
        cpu = w["cpu_us"]
        cpu_s = " / ".join("–" if cpu[k] is None else f"{cpu[k]:.0f}"
                           for k in ("hubgate", "fake", "wrk"))
        if i:
            inner.append(f"| {w['key']} | {' / '.join(fmt_ms(x) for x in i['total'])} "
                         f"| {' / '.join(fmt_ms(x) for x in i['policy'])} "
                         f"| {' / '.join(fmt_ms(x) for x in i['upstream'])} | {cpu_s} |")
        else:
            inner.append(f"| {w['key']} | – | – | – | {cpu_s} |")
    by = {w["key"]: w for w in results}
    fake_kind = ("tests/fake_securityhub.py with TCP_NODELAY (benches/load/fake_nodelay.py)"
                 if h.FAKE_SCRIPT.name == "fake_nodelay.py" else "tests/fake_securityhub.py")
    lines = [
        "# hubgate load test",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine()} (nproc {os.cpu_count()}); wrk, hubgate and the fake share it; "
        f"load average at the start {args.loadavg[0]:.2f} / {args.loadavg[1]:.2f} (1 / 5 min; "
        "anything else running skews the numbers)",
        f"- commit: {commit()}",
        f"- binary: {args.bin} (modified "
        f"{dt.datetime.fromtimestamp(args.bin.stat().st_mtime, dt.timezone.utc):%Y-%m-%d %H:%M} UTC)",
        f"- load: `wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency` "
        "(3b/5b: `-t1 -c1`), one pre-signed request per scenario, 127.0.0.1 only; each "
        "scenario's request was first sent once with Python and its status checked",
        "- hubgate: release build, audit.sink = \"file\", enrichment.cache_ttl_ms = 60000, "
        "upstream.timeout_ms = 10000, shipped policies",
        f"- fake Security Hub: {fake_kind}",
        "",
        *rows,
        "",
        "Scenarios 3-5 are bounded by the fake Security Hub, a Python `ThreadingHTTPServer` "
        "that verifies every SigV4 signature (one GIL for all its threads), not by hubgate: "
        "compare 3 with 5 (and 3b with 5b) to read off what hubgate adds. Scenarios 1, 2 and 6 "
        "never reach the fake and measure hubgate alone (it shares the 2 cores with wrk).",
    ]
    for a_key, d_key in (("allow1", "direct1"), ("allow1-c1", "direct1-c1")):
        if a_key in by and d_key in by:
            a, d = by[a_key], by[d_key]
            lines.append("")
            lines.append(f"Added by hubgate ({a_key} minus {d_key}): p50 "
                         f"{fmt_ms(a['p50'] - d['p50'])}, p90 {fmt_ms(a['p90'] - d['p90'])}, "
                         f"p99 {fmt_ms(a['p99'] - d['p99'])}.")
    lines += ["", "Inside hubgate, from the audit records' `metrics` (timer_total_ns stops when "
              "the response head is ready; a forwarded body is streamed after it), and CPU "
              "time per request from /proc:", "", *inner, "", "## Checks", ""]
    for w in results:
        if "audit_note" in w:
            lines.append(f"- {w['key']}: {w['audit_note']}")
    rss = [f"{w['key']} {w['rss'][0]}→{w['rss'][1]}" for w in results if w["rss"][0]]
    if rss:
        lines.append(f"- hubgate RSS (KiB) before→after each run: {', '.join(rss)}")
    for n in notes:
        lines.append(f"- note: {n}")
    if problems:
        for p in problems:
            lines.append(f"- PROBLEM: {p}")
    else:
        lines.append("- no errors: every response had the expected status, no socket errors, "
                     "one audit record per request, no WARN/ERROR in hubgate's logs")
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    args.results.write_text(text)
    print(f"(written to {args.results})")


if __name__ == "__main__":
    sys.exit(main())
