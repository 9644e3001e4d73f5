#!/usr/bin/env python3
"""CPU per request: hubgate against nginx, both in front of the same native stub upstream.

Run it through benches/load/run.sh (which installs wrk and nginx, builds hubgate and
benches/load/stub_upstream.rs, and cleans up), or directly:

    .venv/bin/python benches/load/cpu.py --bin target/release/hubgate \
        --stub target/release/examples/stub_upstream --workdir /tmp/x

Starts on free 127.0.0.1 ports: the stub (no Python in the request path), hubgate (release
build, shipped policies, enrichment on, audit to a file in the work folder) and nginx (plain
reverse proxy with upstream keepalive), with the same number of threads: --workers (1 by
default) is hubgate's server.worker_threads and nginx's worker_processes. For each path it
sends the same request bytes once with Python (status check), then a bounded wrk run to
hubgate and right after it to nginx, and reads:

- the proxy's CPU time (utime + stime from /proc/<pid>/stat; for nginx master + workers) before
  and after the run, divided by the requests wrk completed, and the share of it spent in the
  kernel (stime): nginx's CPU is mostly the kernel's and hubgate's mostly its own code, so a
  machine whose cores run user-space code slower moves the ratio;
- the stub's call counters (GET /_stats) before and after: upstream calls per request;
- wrk's requests/s and latency percentiles.

With --paced-nginx (PACED_NGINX=1), each round also runs nginx paced by wrk's delay() to about
the request rate hubgate reached in it: nginx's CPU per request depends on the rate it runs
at, so this shows the yardstick at hubgate's load. It is reported beside the targets, which
stay judged against nginx flat out.

It prints a Markdown table and writes it to --results.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import bench  # noqa: E402  (Gate, wrk runner, Lua writer, signing, process tracking)
from bench import h  # noqa: E402  (the e2e suite's helpers)

MEMBER_ACCOUNT = h.MEMBER_ACCOUNT
# The targets the team works to (reported against, not asserted): µs of CPU per request and
# the multiple of nginx's CPU per request for the same request bytes.
TARGETS = {
    "deny100": (300, 7.5),
    "allow100": (800, 20.0),
    "allow100-notes": (800, 20.0),
    "allow100-ttl0": (800, 20.0),
    "allow100-cold": (800, 20.0),
    "allow100-cold-lagging": (800, 20.0),
}


# ---------------------------------------------------------------------------
# processes


def tree_cpu(pid: int) -> tuple[float, float] | None:
    """utime and stime of a process and its children (nginx: master + worker), in seconds."""
    total = bench.proc_cpu_split(pid)
    if total is None:
        return None
    user, system = total
    for child in children(pid):
        c = bench.proc_cpu_split(child)
        if c is not None:
            user, system = user + c[0], system + c[1]
    return user, system


def children(pid: int) -> list[int]:
    out = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                out += [int(p) for p in (task / "children").read_text().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


class Stub:
    def __init__(self, binary: Path, workdir: Path, threads: int):
        self.binary = binary
        self.port = h.free_port()
        self.workdir = workdir
        self.threads = threads
        self.proc = None

    endpoint = property(lambda self: f"http://127.0.0.1:{self.port}")

    def start(self):
        err = open(self.workdir / "stub.stderr", "ab")
        self.proc = bench.track(subprocess.Popen(
            [str(self.binary), str(self.port), "--account", MEMBER_ACCOUNT,
             "--threads", str(self.threads)],
            stdout=err, stderr=err, stdin=subprocess.DEVNULL))

        def ready():
            if self.proc.poll() is not None:
                raise h.GiveUp(f"stub exited with {self.proc.returncode}: "
                               + (self.workdir / "stub.stderr").read_text(errors="replace"))
            return requests.get(f"{self.endpoint}/_stats", timeout=1).status_code == 200

        h.wait_until(ready, 10, "stub /_stats == 200")
        return self

    def stats(self) -> dict:
        return requests.get(f"{self.endpoint}/_stats", timeout=5).json()

    def banner(self) -> str:
        return (self.workdir / "stub.stderr").read_text(errors="replace").strip().splitlines()[0]


class Nginx:
    def __init__(self, binary: str, workdir: Path, upstream_port: int, workers: int):
        self.binary = binary
        self.workers = workers
        self.dir = workdir / "nginx"
        self.port = h.free_port()
        self.upstream_port = upstream_port
        self.proc = None

    def config(self) -> str:
        d = self.dir
        user = "user root;\n" if os.geteuid() == 0 else ""
        return f"""\
# generated by benches/load/cpu.py
{user}worker_processes {self.workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp/client_body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    # request and response bodies stay in memory (no temp files): 100 identifiers are ~9 KB
    client_max_body_size 2m;
    client_body_buffer_size 1m;
    proxy_buffer_size 64k;
    proxy_buffers 8 64k;
    proxy_busy_buffers_size 128k;
    # wrk's connections and the upstream connections are never closed by nginx mid-run
    # (hubgate does not close them either)
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream stub {{
        server 127.0.0.1:{self.upstream_port};
        keepalive 32;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{self.port};
        location / {{
            proxy_pass http://stub;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""

    def start(self):
        (self.dir / "tmp").mkdir(parents=True, exist_ok=True)
        conf = self.dir / "nginx.conf"
        conf.write_text(self.config())
        err = open(self.dir / "stderr", "ab")
        self.proc = bench.track(subprocess.Popen(
            [self.binary, "-p", str(self.dir), "-e", str(self.dir / "error.log"),
             "-c", str(conf), "-g", "daemon off;"],
            stdout=err, stderr=err, stdin=subprocess.DEVNULL))

        def ready():
            if self.proc.poll() is not None:
                raise h.GiveUp(f"nginx exited with {self.proc.returncode}: "
                               + (self.dir / "stderr").read_text(errors="replace")
                               + (self.dir / "error.log").read_text(errors="replace"))
            return (children(self.proc.pid) and requests.get(
                f"http://127.0.0.1:{self.port}/_stats", timeout=1).status_code == 200)

        h.wait_until(ready, 10, "nginx proxying GET /_stats to the stub")
        # run.sh's trap kills what the pid file lists: the worker too, should the master die
        if bench.PIDFILE:
            with open(bench.PIDFILE, "a") as f:
                f.writelines(f"{pid}\n" for pid in children(self.proc.pid))
        return self

    def version(self) -> str:
        out = subprocess.run([self.binary, "-v"], capture_output=True, text=True)
        return (out.stderr or out.stdout).strip().replace("nginx version: ", "")


def knows_worker_threads(binary: Path, workdir: Path, upstream: str) -> bool:
    """Whether this hubgate accepts server.worker_threads (`hubgate check`)."""
    probe = bench.Gate(binary, workdir / "workers-probe", upstream,
                       {"server": {"worker_threads": 1}})
    return bench.check(probe).returncode == 0


class Gate(bench.Gate):
    """hubgate against the stub: default enrichment cache TTL unless told otherwise, audit to
    a file in its folder, identity by SigV4 (pre-signed requests) or static (member)."""

    def __init__(self, *a, identity: str, enrichment: dict | None = None, **kw):
        super().__init__(*a, **kw)
        self.identity = identity
        self.enrichment = enrichment or {"enabled": True}

    def config(self) -> dict:
        cfg = super().config()
        cfg["enrichment"] = dict(self.enrichment)  # no cache_ttl_ms: the default
        if self.identity == "static":
            cfg["identity"] = {"mode": "static", "static_principal": "member",
                               "callers": "callers.toml"}
        return cfg


# ---------------------------------------------------------------------------
# requests


def body(ids: list[str], update: dict) -> bytes:
    return json.dumps({"FindingIdentifiers": [h.ident(i) for i in ids], **update},
                      separators=(",", ":")).encode()


def request(identity: str, host: str, data: bytes) -> dict:
    if identity == "sigv4":
        return bench.signed(h.MEMBER, host, data)
    return {"method": "PATCH", "path": "/findings/batchupdate", "body": data,
            "headers": {"Content-Type": "application/json"}}


def write_lua_cycle(path: Path, reqs: list[dict], threads: int):
    """A wrk script that sends reqs in turn, each wrk thread starting at its own offset (so
    that two threads do not send the same request at the same time)."""
    out = ["local data = {}"]
    for r in reqs:
        hdrs = ", ".join(f"[{bench.lua_str(k)}] = {bench.lua_str(v)}"
                         for k, v in r["headers"].items())
        out.append(f"data[#data + 1] = {{m = {bench.lua_str(r['method'])}, "
                   f"p = {bench.lua_str(r['path'])}, h = {{{hdrs}}}, "
                   f"b = {bench.lua_str(r['body'])}}}")
    out.append(f"""
local counter = 0
function setup(thread)
    thread:set("thread_no", counter)
    counter = counter + 1
end
local reqs, i
function init(args)
    reqs = {{}}
    for k, d in ipairs(data) do reqs[k] = wrk.format(d.m, d.p, d.h, d.b) end
    i = (thread_no or 0) * math.floor(#reqs / {max(1, threads)})
end
function request()
    i = i % #reqs + 1
    return reqs[i]
end
""")
    path.write_text("\n".join(out))


# ---------------------------------------------------------------------------
# the run


def measure(args, key: str, proxy: str, port: int, pid: int, cpu_of, reqs: list[dict],
            stub: Stub, expect: int, audit_gate: Gate | None, problems: list,
            delay_ms: int | None = None) -> dict:
    """One wrk run against one proxy. With delay_ms, each connection waits that long before
    each request (wrk's delay()), which paces the run instead of driving it flat out."""
    wd = args.workdir
    req = reqs[0]
    resp = bench.probe(port, req)
    if resp.status != expect:
        raise RuntimeError(f"{key} via {proxy}: probe got {resp.status}, expected {expect}: "
                           f"{resp.body[:500]!r}")
    lua = wd / f"{key}-{proxy}.lua"
    if len(reqs) == 1:
        bench.write_lua(lua, req)
    else:
        write_lua_cycle(lua, reqs, args.threads)
    if delay_ms is not None:
        with lua.open("a") as f:
            f.write(f"\nfunction delay()\n    return {delay_ms}\nend\n")
    time.sleep(0.3)
    audit_before = audit_gate.settled_audit_lines() if audit_gate else 0
    s0, c0, st0 = stub.stats(), cpu_of(pid), bench.proc_cpu(stub.proc.pid)
    w0 = bench.children_cpu()
    w = bench.run_wrk(args, port, lua, wd / f"{key}-{proxy}.wrk.txt", args.threads,
                      args.connections, args.duration)
    w1 = bench.children_cpu()
    time.sleep(0.5)  # requests in flight when wrk stopped finish (their CPU counts too)
    c1, st1, s1 = cpu_of(pid), bench.proc_cpu(stub.proc.pid), stub.stats()
    n = max(1, w["requests"])
    user, system = c1[0] - c0[0], c1[1] - c0[1]
    res = {
        "key": key, "proxy": proxy, "requests": w["requests"], "rps": w["rps"],
        "p50": w["p50"], "p99": w["p99"], "non2xx": w["non2xx"],
        "cpu_us": (user + system) / n * 1e6,
        # The kernel's share: it tells a machine whose kernel path is slow (nginx's CPU is
        # mostly the kernel's) from one whose cores are slow for user-space code (hubgate's).
        "sys_pct": 100 * system / (user + system) if user + system > 0 else 0.0,
        "stub_cpu_us": (st1 - st0) / n * 1e6,
        "wrk_cpu_us": (w1 - w0) / n * 1e6,
        "gf": (s1["GetFindings"] - s0["GetFindings"]) / n,
        "buf": (s1["BatchUpdateFindings"] - s0["BatchUpdateFindings"]) / n,
        "other": (s1["other"] + s1["bad_requests"] - s0["other"] - s0["bad_requests"]),
        "buf_calls": s1["BatchUpdateFindings"] - s0["BatchUpdateFindings"],
        "status": resp.status, "body_bytes": len(req["body"]),
    }
    if w["socket_errors"]:
        problems.append(f"{key} via {proxy}: wrk socket errors: {w['socket_errors']}")
    bad = w["non2xx"] if expect == 200 else w["requests"] - w["non2xx"]
    if bad:
        problems.append(f"{key} via {proxy}: {bad} of {w['requests']} responses had another "
                        f"status class than the expected {expect}")
    if res["other"]:
        problems.append(f"{key} via {proxy}: the stub answered {res['other']} requests with "
                        "404/400")
    if audit_gate:
        after = audit_gate.settled_audit_lines()
        recs = bench.audit_slice(audit_gate, audit_before, after)
        met = [r.get("metrics") or {} for r in recs]
        res["audit"] = len(recs)
        res["statuses"] = dict(collections.Counter(r.get("status") for r in recs))
        res["lookups"] = sum(m.get("counter_lookup_calls") or 0 for m in met)
        res["cache_hits"] = sum(m.get("counter_cache_hits") or 0 for m in met)
        res["forwarded"] = sum(1 for r in recs if r.get("forwarded"))
        # every BatchUpdateFindings the stub saw in this window came from one of this run's
        # requests: each must have an audit record saying it was forwarded
        if res["buf_calls"] > res["forwarded"]:
            problems.append(
                f"{key}: the stub processed {res['buf_calls']} BatchUpdateFindings calls but "
                f"hubgate's audit has {res['forwarded']} forwarded records for the run: "
                f"{res['buf_calls'] - res['forwarded']} updates reached the upstream without "
                "an audit record (requests in flight when wrk closed its connections?)")
        if len(recs) < w["requests"]:
            problems.append(f"{key}: {len(recs)} audit records for {w['requests']} requests")
        # wrk closes its connections when its time is up: a request still waiting then (for
        # its lookups or quota) is abandoned, 499 and not forwarded. At most one per connection.
        abandoned = [r for r in recs if r.get("status") == 499]
        if (set(res["statuses"]) - {expect, 499} or len(abandoned) > args.connections
                or any(r.get("forwarded") for r in abandoned)):
            problems.append(f"{key}: audit statuses {res['statuses']}, expected only {expect} "
                            f"(and at most {args.connections} unforwarded 499s from wrk's end)")
    print(f"  {key:>14} via {proxy:<7} {w['requests']:>7} requests {w['rps']:>8.0f} req/s  "
          f"p50 {bench.fmt_ms(w['p50']):>9}  p99 {bench.fmt_ms(w['p99']):>9}  "
          f"CPU {res['cpu_us']:>7.0f} µs/req ({res['sys_pct']:.0f}% system)  "
          f"upstream {res['gf']:.2f} GetFindings + {res['buf']:.2f} BUF per request", flush=True)
    return res


def run(args) -> int:
    args.loadavg = os.getloadavg()
    wd = args.workdir
    wd.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    notes: list[str] = []

    stub = Stub(args.stub, wd, args.stub_threads).start()
    quota = bench.binary_knows_quota(args.bin, wd, stub.endpoint)
    if quota:
        notes.append("this hubgate has a [quota] section: every limit (default, GetFindings, "
                     "BatchUpdateFindings) was raised to 1,000,000/s so that pacing to Security "
                     "Hub's quotas does not bound the run")
    # The same number of threads for both proxies: nginx's worker processes, hubgate's workers.
    workers = {"server": {"worker_threads": args.workers}}
    if not knows_worker_threads(args.bin, wd, stub.endpoint):
        # A build from before server.worker_threads: tokio reads its own variable instead.
        workers = {}
        os.environ["TOKIO_WORKER_THREADS"] = str(args.workers)
        notes.append("this hubgate predates server.worker_threads: its workers were set with "
                     "tokio's TOKIO_WORKER_THREADS")
    gate = Gate(args.bin, wd / "hubgate", stub.endpoint, workers, identity=args.identity,
                quota=quota, stdout_devnull=True).start()
    cold = Gate(args.bin, wd / "hubgate-cold", stub.endpoint, workers, identity=args.identity,
                quota=quota, stdout_devnull=True,
                enrichment={"enabled": True, "cache_ttl_ms": 0}).start()
    nginx = Nginx(args.nginx, wd, stub.port, args.workers).start()

    ids = [f"bench-{i:04d}" for i in range(100)]
    # The stub applies writes, and nginx forwards the denials: their own findings keep
    # nginx's SUPPRESSED off the findings the allowed paths read.
    deny_ids = [f"deny-{i:04d}" for i in range(100)]
    suppress = {"Workflow": {"Status": "SUPPRESSED"}}
    raise_ = {"Severity": {"Label": "CRITICAL"}}
    # a list of updates: one request per update, sent in turn
    notes_ = [{**raise_, "Note": {"Text": f"triage pass {x}", "UpdatedBy": "bench"}}
              for x in "AB"]
    n_distinct = args.distinct
    distinct = [[f"cold-{r:04d}-{i:03d}" for i in range(100)] for r in range(n_distinct)]
    # the stub never shows a write to these (see stub_upstream.rs)
    lagging = [[f"lagging-{r:04d}-{i:03d}" for i in range(100)] for r in range(n_distinct)]
    scenarios = [
        # key, label, gate, [findings of each request], update, hubgate's expected status
        ("deny1", "denied in the first pass, 1 finding (member SUPPRESSED)",
         gate, [deny_ids[:1]], suppress, 403),
        ("deny100", "denied in the first pass, 100 findings (member SUPPRESSED)",
         gate, [deny_ids], suppress, 403),
        ("allow1", "allowed update, 1 finding (member raises HIGH to CRITICAL), default "
         "cache TTL, the same request over and over", gate, [ids[:1]], raise_, 200),
        ("allow100", "allowed update, 100 findings (member raises HIGH to CRITICAL), default "
         "cache TTL, the same request over and over", gate, [ids], raise_, 200),
        ("allow100-notes", "as allow100, alternating two Note texts: each write-through "
         "changes the cached state of all 100 findings", gate, [ids], notes_, 200),
        ("allow100-ttl0", "as allow100 with enrichment.cache_ttl_ms = 0 (concurrent "
         "identical requests may still share lookups)", cold, [ids], raise_, 200),
        ("allow100-cold", f"allowed update, 100 findings, cache_ttl_ms = 0 and {n_distinct} "
         "requests with distinct findings sent in turn: every finding looked up (a finding's "
         "turn comes round again after its write shows)", cold, distinct, raise_, 200),
        ("allow100-cold-lagging", "as allow100-cold, on findings whose writes never show "
         "(a Security Hub lagging more than the run): hubgate's own pending write is laid over "
         "every finding read, and the request judged twice", cold, lagging, raise_, 200),
    ]
    only = set(filter(None, args.only.split(","))) if args.only else None
    results = []
    paced: list[dict] = []
    for key, label, g, bodies, update, expect in scenarios:
        if only and key not in only:
            continue
        if isinstance(update, list):
            datas = [body(bodies[0], u) for u in update]
        else:
            datas = [body(fids, update) for fids in bodies]
        print(f"{key}: {label} ({len(datas[0])} byte body)", flush=True)
        # sign for hubgate's host; nginx gets the very same bytes and headers
        reqs = [request(args.identity, g.host, d) for d in datas]
        pairs, paced_rounds = [], []
        for _ in range(args.rounds):
            hg = measure(args, key, "hubgate", g.port, g.proc.pid, bench.proc_cpu_split, reqs,
                         stub, expect, g, problems)
            ng = measure(args, key, "nginx", nginx.port, nginx.proc.pid, tree_cpu, reqs, stub,
                         200, None, problems)
            pairs.append((hg, ng))
            if args.paced_nginx:
                pn = measure(args, key, "nginx-paced", nginx.port, nginx.proc.pid, tree_cpu,
                             reqs, stub, 200, None, problems,
                             delay_ms=pacing_delay_ms(args.connections, hg["rps"]))
                paced_rounds.append((hg, pn))
        for r in combine(pairs):
            r["label"] = label
            results.append(r)
        if paced_rounds:
            paced.append(combine_paced(key, paced_rounds))

    # logs under load
    for g in (gate, cold):
        if g.proc.poll() is not None:
            problems.append(f"hubgate ({g.workdir.name}) exited with {g.proc.returncode}")
        text = bench.ANSI.sub("", g.stderr_path.read_text(errors="replace"))
        bad = [line for line in text.splitlines()
               if re.search(r"\b(WARN|ERROR|panicked)\b", line)
               and not bench.IGNORED_STDERR.search(line)]
        if bad:
            problems.append(f"hubgate ({g.workdir.name}) stderr has {len(bad)} WARN/ERROR "
                            f"lines, first: {bad[0][:300]}")
    err = (nginx.dir / "error.log")
    if err.exists() and err.stat().st_size:
        lines = err.read_text(errors="replace").splitlines()
        notes.append(f"nginx error.log has {len(lines)} lines, last: {lines[-1][:200]}")

    write_report(args, results, problems, notes, stub, nginx, quota, paced)
    return 1 if problems else 0


def pacing_delay_ms(connections: int, rps: float) -> int:
    """The wait per request, per connection, that holds wrk's `connections` near `rps` in
    total (a little under it: each request's own latency adds to the wait)."""
    return max(1, int(connections * 1000 / max(rps, 1.0)))


def combine_paced(key: str, rounds: list[tuple[dict, dict]]) -> dict:
    """nginx paced to hubgate's rate, against hubgate in the same round. (nginx flat out is
    the path's combined nginx row, which the report reads from the results.)"""
    ratios = [round_ratio(h, p) for h, p in rounds]
    return {
        "key": key,
        "hubgate_rps": statistics.median(h["rps"] for h, _ in rounds),
        "paced_rps": statistics.median(p["rps"] for _, p in rounds),
        "paced_cpu_us": statistics.median(p["cpu_us"] for _, p in rounds),
        "ratio": statistics.median(ratios),
        "rounds": [p["cpu_us"] for _, p in rounds],
    }


def round_ratio(hg: dict, ng: dict) -> float:
    """hubgate's CPU per request over nginx's, for two runs of one round."""
    return hg["cpu_us"] / ng["cpu_us"] if ng["cpu_us"] > 0 else float("inf")


def combine(pairs: list[tuple[dict, dict]]) -> tuple[dict, dict]:
    """One hubgate row and one nginx row from rounds run in turn (hubgate, nginx, hubgate, ...).

    This machine's CPU time per request drifts by up to 2x within minutes, and both proxies
    drift with it; a ratio taken within a round (the two runs seconds apart) drifts less than
    one taken across rounds. So: CPU per request is the median of the rounds, x nginx the median
    of the rounds' own ratios, and the other columns are the pair whose ratio is that median."""
    ratios = [round_ratio(h, n) for h, n in pairs]
    mid = ratios.index(statistics.median_low(ratios))
    hg, ng = dict(pairs[mid][0]), dict(pairs[mid][1])
    hg["cpu_us"] = statistics.median(h["cpu_us"] for h, _ in pairs)
    ng["cpu_us"] = statistics.median(n["cpu_us"] for _, n in pairs)
    hg["ratio"] = statistics.median(ratios)
    hg["rounds"] = [(h["cpu_us"], n["cpu_us"]) for h, n in pairs]
    return hg, ng


# ---------------------------------------------------------------------------
# report


def source_commit(src: Path) -> str:
    try:
        git = ["git", "-C", str(src)]
        head = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        last = subprocess.run(git + ["log", "-1", "--format=%h %s", "--", "src", "Cargo.toml",
                                     "Cargo.lock", "policies"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        last = last if len(last) <= 100 else last[:99] + "…"
        c = head and f"{head} (src, Cargo.toml, policies last changed in {last})"
        dirty = subprocess.run(git + ["status", "--porcelain", "--", "src", "Cargo.toml",
                                      "Cargo.lock", "policies"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (f"{c} in {src}" + (" + uncommitted changes in src/policies" if dirty else "")
                if c else "unknown")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def times_nginx(hg: dict, ng: dict) -> float:
    """The median of the rounds' ratios; with one round, simply the ratio."""
    if "ratio" in hg:
        return hg["ratio"]
    return round_ratio(hg, ng)


def write_report(args, results, problems, notes, stub: Stub, nginx: Nginx, quota: bool,
                 paced: list[dict]):
    by = {(r["key"], r["proxy"]): r for r in results}
    rows = ["| path | proxy | requests | req/s | p50 | p99 | CPU µs/request | × nginx "
            "| upstream calls/request |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        ng = by.get((r["key"], "nginx"))
        ratio = (f"{times_nginx(r, ng):.1f}×" if r["proxy"] == "hubgate" and ng
                 and ng["cpu_us"] > 0 else "")
        calls = r["gf"] + r["buf"]
        detail = (f"{calls:.2f} ({r['gf']:.2f} GetFindings + {r['buf']:.2f} BatchUpdate)"
                  if r["gf"] else f"{calls:.2f}")
        label = f"{r['key']}: {r['label']}" if r["proxy"] == "hubgate" else f"{r['key']} (same bytes)"
        rows.append(f"| {label} | {r['proxy']} | {r['requests']} | {r['rps']:.0f} "
                    f"| {bench.fmt_ms(r['p50'])} | {bench.fmt_ms(r['p99'])} "
                    f"| **{r['cpu_us']:.0f}** | {ratio} | {detail} |")

    targets = []
    for key, (us, mult) in TARGETS.items():
        hg, ng = by.get((key, "hubgate")), by.get((key, "nginx"))
        if not hg or not ng:
            continue
        x = times_nginx(hg, ng)
        ok_us, ok_x = hg["cpu_us"] <= us, x <= mult
        targets.append(
            f"| {key} | {hg['cpu_us']:.0f} µs | ≤ {us} µs | {'met' if ok_us else 'NOT met'} "
            f"| {x:.1f}× ({ng['cpu_us']:.0f} µs) | ≤ {mult:g}× | {'met' if ok_x else 'NOT met'} |")

    extra = ["| path | proxy | status | proxy CPU in the kernel (stime) | stub CPU µs/request "
             "| wrk CPU µs/request | audit records (forwarded) | BatchUpdate calls at the stub "
             "| lookup calls (audit) | cache hits (audit) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        audit = f"{r['audit']} ({r['forwarded']})" if "audit" in r else "–"
        extra.append(f"| {r['key']} | {r['proxy']} | {r['status']} | {r['sys_pct']:.0f}% "
                     f"| {r['stub_cpu_us']:.0f} "
                     f"| {r['wrk_cpu_us']:.0f} | {audit} | {r['buf_calls']} "
                     f"| {r.get('lookups', '–')} | {r.get('cache_hits', '–')} |")

    identity = ("SigV4: every request pre-signed as the e2e suite's member caller (valid 15 "
                "minutes; hubgate verifies the signature on every request, nginx ignores it)"
                if args.identity == "sigv4" else
                "static (identity.mode = \"static\", static_principal = \"member\"): requests "
                "are unsigned, no signature verification")
    lines = [
        "# hubgate vs nginx: CPU per request against a native stub upstream",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {bench.machine()}; wrk, the proxy and the stub share it; load average at "
        f"the start {args.loadavg[0]:.2f} / {args.loadavg[1]:.2f} (1 / 5 min; anything else "
        "running skews req/s and latency more than CPU per request)",
        f"- hubgate source: {source_commit(args.source)}",
        f"- hubgate: {args.bin} (modified "
        f"{dt.datetime.fromtimestamp(args.bin.stat().st_mtime, dt.timezone.utc):%Y-%m-%d %H:%M}"
        " UTC), shipped policies, enforce, audit.sink = \"file\" (in the work folder), "
        "upstream.auth = \"resign\" (every upstream call SigV4-signed), enrichment on with the "
        "default cache TTL (allow100-ttl0 and allow100-cold*: cache_ttl_ms = 0), policies "
        f"from {h.POLICY_DIR}",
        f"- identity: {identity}",
        f"- workers: {args.workers} (hubgate `server.worker_threads`, nginx `worker_processes`)",
        f"- nginx {nginx.version()}: access_log off, `proxy_http_version 1.1; "
        "proxy_set_header Connection \"\";`, upstream keepalive 32; CPU = master + workers",
        f"- upstream: benches/load/stub_upstream.rs (native, hyper; `{stub.banner()}`), shared "
        "by both proxies; upstream calls counted by the stub (GET /_stats before and after); "
        "it applies each BatchUpdateFindings' Severity.Label, Workflow.Status and Note at once "
        "(but never to `lagging-` findings)",
        f"- load: `wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency`, "
        "127.0.0.1 only; hubgate then nginx for each path, same request bytes; CPU µs/request "
        "= (utime + stime after − before) / requests wrk completed (/proc/<pid>/stat, 10 ms "
        "ticks); the details give stime's share of it, the proxy's CPU spent in the kernel",
        f"- rounds: {args.rounds} per path (hubgate, nginx, hubgate, nginx, ...); CPU "
        "µs/request is the median of the rounds, × nginx the median of each round's own ratio, "
        "the other columns the round with that ratio",
        "",
        *rows,
        "",
        "The nginx rows are the yardstick: nginx forwards every request (also the ones hubgate "
        "denies) to the stub, which answers 200.",
        "",
        "## Targets (reported, not asserted)",
        "",
        "| path | hubgate CPU/request | target | | × nginx | target | |",
        "|---|---:|---:|---|---:|---:|---|",
        *targets,
        "",
        *paced_section(paced, by),
        "## Details",
        "",
        *extra,
        "",
    ]
    for r in results:
        if r["proxy"] == "hubgate" and len(r.get("rounds", [])) > 1:
            each = ", ".join(f"{h:.0f}/{n:.0f} µs ({h / n:.1f}×)" if n > 0 else f"{h:.0f}/–"
                             for h, n in r["rounds"])
            lines.append(f"- {r['key']}: rounds (hubgate/nginx): {each}")
    for r in results:
        if r["proxy"] == "hubgate" and r.get("audit") is not None:
            n = max(1, r["audit"])
            lines.append(f"- {r['key']}: audit statuses {r['statuses']}; per record "
                         f"{r['lookups'] / n:.2f} lookup calls and {r['cache_hits'] / n:.1f} "
                         f"cache hits ({r['audit']} records)")
    for n in notes:
        lines.append(f"- note: {n}")
    for p in problems:
        lines.append(f"- PROBLEM: {p}")
    if not problems:
        lines.append("- no errors: every response had the expected status, no socket errors, "
                     "an audit record per request, no WARN/ERROR in hubgate's logs")
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    args.results.write_text(text)


def paced_section(paced: list[dict], by: dict) -> list[str]:
    """--paced-nginx: nginx's CPU per request at about hubgate's request rate. Information
    only: the targets above are judged against nginx driven flat out, as every round was."""
    if not paced:
        return []
    rows = ["| path | hubgate req/s | nginx paced: req/s | CPU µs/request (rounds) "
            "| nginx flat out: req/s | CPU µs/request | hubgate ÷ nginx paced |",
            "|---|---:|---:|---|---:|---:|---:|"]
    for p in paced:
        each = ", ".join(f"{us:.0f}" for us in p["rounds"])
        flat = by[(p["key"], "nginx")]
        rows.append(f"| {p['key']} | {p['hubgate_rps']:.0f} | {p['paced_rps']:.0f} "
                    f"| {p['paced_cpu_us']:.0f} ({each}) | {flat['rps']:.0f} "
                    f"| {flat['cpu_us']:.0f} | {p['ratio']:.1f}× |")
    return ["## nginx at hubgate's rate (information, not the targets' yardstick)", "",
            "Each round also ran nginx with wrk's `delay()` holding it near the request rate "
            "hubgate reached in that round (pacing is in whole milliseconds per connection, "
            "so a fast path's paced rate can miss hubgate's). nginx's CPU per request depends "
            "on the rate it runs at; the ratio is the median of each round's hubgate ÷ paced "
            "nginx.", "", *rows, ""]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, type=Path, help="hubgate release binary")
    ap.add_argument("--stub", required=True, type=Path, help="stub_upstream example binary")
    ap.add_argument("--nginx", default=os.environ.get("NGINX") or shutil.which("nginx")
                    or "/usr/sbin/nginx")
    ap.add_argument("--workdir", required=True, type=Path)
    ap.add_argument("--pidfile", type=Path)
    ap.add_argument("--duration", type=int, default=int(os.environ.get("DURATION", 10)))
    ap.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", 2)))
    ap.add_argument("--connections", type=int, default=int(os.environ.get("CONNECTIONS", 16)))
    ap.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS", 1)),
                    help="hubgate's server.worker_threads and nginx's worker_processes (the "
                    "same for both; 1 by default)")
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("ROUNDS", 1)),
                    help="rounds of hubgate then nginx per path; the report gives medians (an "
                    "odd number makes the median a round that ran)")
    ap.add_argument("--stub-threads", type=int, default=int(os.environ.get("STUB_THREADS", 1)))
    ap.add_argument("--identity", choices=("sigv4", "static"),
                    default=os.environ.get("IDENTITY", "sigv4"))
    ap.add_argument("--only", default=os.environ.get("ONLY", ""),
                    help="comma-separated scenario keys (deny1,deny100,allow1,allow100,"
                         "allow100-notes,allow100-ttl0,allow100-cold,allow100-cold-lagging)")
    ap.add_argument("--distinct", type=int, default=int(os.environ.get("DISTINCT", 512)),
                    help="allow100-cold*: how many requests with distinct findings wrk cycles "
                         "through")
    ap.add_argument("--paced-nginx", action="store_true",
                    default=os.environ.get("PACED_NGINX", "") not in ("", "0"),
                    help="after each round, run nginx again paced to hubgate's request rate "
                         "and report its CPU per request beside the flat-out yardstick")
    ap.add_argument("--source", type=Path, default=bench.SOURCE,
                    help="the checkout the hubgate binary was built from (for the report)")
    ap.add_argument("--results", type=Path, default=HERE / "results.md")
    args = ap.parse_args()

    bench.PIDFILE = args.pidfile
    h.POLICY_DIR = args.source / "policies"  # those of the checkout hubgate was built from
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, bench._on_signal)
    try:
        return run(args)
    finally:
        bench.stop_all()


if __name__ == "__main__":
    sys.exit(main())
