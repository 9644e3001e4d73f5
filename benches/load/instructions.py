#!/usr/bin/env python3
"""Instructions per request: hubgate under callgrind, in front of the native stub upstream.

CPU time on a shared 2-core machine swings by 2x from one hour to the next, so an A/B of two
builds measured with cpu.py can only show large changes. An instruction count does not swing:
for the same binary and the same requests it is the same whatever else the machine is doing.
This runs each given binary under `valgrind --tool=callgrind` (instrumentation off while it
starts), sends each path's requests one at a time on one connection, after a warm-up, and reads
callgrind's total of instructions executed (every thread: the proxy, lookups, the audit writer)
per request. It is a measure of work, not of time: it does not see cache misses, lock contention
or system calls' kernel side, which cpu.py's CPU time does.

valgrind's virtual CPU has no SHA extensions (SHA-NI), so the sha2 crate takes its portable
path under it: a SHA-256 block costs far more instructions there than on the CPU itself, where
perf shows hubgate in `sha2::sha256::x86_sha::compress`. Hashing the caller's body, the
upstream bodies, the SigV4 keys and the audit chain is nearly a quarter of the cold update's
count and two fifths of the denial's, so this also reports, per path, the instructions
inside `sha2::sha256::compress256` (read from the dump with `callgrind_annotate`): a change to
what hubgate hashes moves the count by far more than it moves CPU time.

    .venv/bin/python benches/load/instructions.py --stub target/release/examples/stub_upstream \\
        --workdir /tmp/ir --bin old=/tmp/hubgate-old --bin new=target/release/hubgate

The paths are cpu.py's (deny100, allow100, allow100-notes, allow100-cold; --only picks), and
two more on the cold path: allow100-cold-again sends each request once before counting, so that
every counted request reads findings after its own write shows (the stub applies writes at
once); allow100-cold-lagging does the same on findings whose writes the stub never shows.
"""

from __future__ import annotations

import argparse
import http.client
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench  # noqa: E402
import cpu  # noqa: E402  (Stub, Gate, body, request: the same requests as the CPU benchmark)
from bench import h  # noqa: E402

PATHS = ("deny100", "allow100", "allow100-notes", "allow100-cold", "allow100-cold-again",
         "allow100-cold-lagging")


class Ground(cpu.Gate):
    """cpu.Gate under callgrind; instrumentation is switched on once the paths run."""

    def config(self) -> dict:
        cfg = super().config()
        # valgrind runs hubgate tens of times slower: evaluation time is not what is measured
        cfg["policy"]["eval_timeout_ms"] = 60000
        return cfg

    def start(self):
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "callers.toml").write_text(h.CALLERS_TOML)
        cfg = self.workdir / "hubgate.toml"
        cfg.write_text(h.to_toml(self.config()))
        err = open(self.stderr_path, "ab")
        self.proc = bench.track(subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no",
             f"--callgrind-out-file={self.workdir}/callgrind.out",
             str(self.binary), "serve", "--config", str(cfg)],
            env=h.hubgate_env(), stdout=subprocess.DEVNULL, stderr=err,
            stdin=subprocess.DEVNULL, cwd=self.workdir))
        h.wait_until(self.ready, 120, "hubgate under callgrind /readyz == 200")
        return self

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise h.GiveUp(f"valgrind exited with {self.proc.returncode}:\n"
                           + self.stderr_path.read_text(errors="replace")[-3000:])
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=2)
            conn.request("GET", "/readyz")
            return conn.getresponse().status == 200
        except OSError:
            return False

    def control(self, *flags: str) -> str:
        out = subprocess.run(["callgrind_control", *flags, str(self.proc.pid)],
                             capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"callgrind_control {flags}: {out.stdout}{out.stderr}")
        return out.stdout

    def dump_total(self) -> tuple[int, int]:
        """Dumps the counters; returns the instructions of the dump just written, and of them
        those inside SHA-256's block function (see the module comment)."""
        before = set(self.workdir.glob("callgrind.out*"))
        self.control("-d")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            new = set(self.workdir.glob("callgrind.out*")) - before
            for f in new:
                m = re.search(r"^(?:summary|totals): (\d+)", f.read_text(errors="replace"),
                              re.M)
                if m:
                    return int(m.group(1)), sha256_instructions(f)
            time.sleep(0.2)
        raise RuntimeError("callgrind wrote no dump")


def sha256_instructions(dump: Path) -> int:
    """Instructions inside `sha2::sha256::compress256`, inclusive, from a callgrind dump.

    callgrind_annotate lists a function once under its own name and binary (its whole
    inclusive cost) and again per source file its inlined code came from (parts of it): the
    largest line naming the function with a binary is the whole."""
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(dump)],
                         capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"callgrind_annotate {dump}: {out.stderr[-2000:]}")
    costs = [int(m.group(1).replace(",", "")) for m in re.finditer(
        r"^\s*([\d,]+) .*:sha2::sha256::compress256 \[", out.stdout, re.M)]
    return max(costs, default=0)


def send_all(host: str, port: int, reqs: list[dict], n: int, expect: int):
    conn = http.client.HTTPConnection(host, port, timeout=60)
    for i in range(n):
        r = reqs[i % len(reqs)]
        conn.request(r["method"], r["path"], body=r["body"], headers=r["headers"])
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != expect:
            raise RuntimeError(f"status {resp.status}, expected {expect}: {data[:300]!r}")
    conn.close()


def measure(name: str, binary: Path, args, stub) -> dict[str, tuple[float, float]]:
    """Per path: instructions per request, and of them those inside SHA-256's block function."""
    wd = args.workdir / name
    shutil.rmtree(wd, ignore_errors=True)
    gate = Ground(binary, wd / "hubgate", stub.endpoint, identity="sigv4",
                  quota=bench.binary_knows_quota(binary, wd, stub.endpoint),
                  stdout_devnull=True).start()
    cold = Ground(binary, wd / "hubgate-cold", stub.endpoint, identity="sigv4",
                  quota=bench.binary_knows_quota(binary, wd, stub.endpoint), stdout_devnull=True,
                  enrichment={"enabled": True, "cache_ttl_ms": 0}).start()
    ids = [f"bench-{i:04d}" for i in range(100)]
    raise_ = {"Severity": {"Label": "CRITICAL"}}
    n = args.requests
    # cold: every request (warm-up included) names 100 findings no other request names
    distinct = [[f"cold-{name}-{r:04d}-{i:03d}" for i in range(100)]
                for r in range(n + args.warmup)]
    # cold-again: each body sent once before counting, so every counted request reads its
    # findings after its own write shows; lagging: the stub never shows that write
    again = [[f"again-{name}-{r:04d}-{i:03d}" for i in range(100)] for r in range(n)]
    lagging = [[f"lagging-{name}-{r:04d}-{i:03d}" for i in range(100)] for r in range(n)]
    paths = {
        "deny100": (gate, [cpu.body(ids, {"Workflow": {"Status": "SUPPRESSED"}})], 403),
        "allow100": (gate, [cpu.body(ids, raise_)], 200),
        "allow100-notes": (gate, [cpu.body(ids, {**raise_, "Note": {
            "Text": f"triage pass {x}", "UpdatedBy": "bench"}}) for x in "AB"], 200),
        "allow100-cold": (cold, [cpu.body(f, raise_) for f in distinct], 200),
        "allow100-cold-again": (cold, [cpu.body(f, raise_) for f in again], 200),
        "allow100-cold-lagging": (cold, [cpu.body(f, raise_) for f in lagging], 200),
    }
    out = {}
    try:
        for g in (gate, cold):
            g.control("-i", "on")
        for key in args.only:
            g, datas, expect = paths[key]
            reqs = [cpu.request("sigv4", g.host, d) for d in datas]
            send_all("127.0.0.1", g.port, reqs,
                     len(reqs) if key in ("allow100-cold-again", "allow100-cold-lagging")
                     else args.warmup, expect)
            g.control("-z")
            send_all("127.0.0.1", g.port, reqs[args.warmup:] + reqs[:args.warmup]
                     if key == "allow100-cold" else reqs, n, expect)
            total, sha = g.dump_total()
            out[key] = (total / n, sha / n)
            print(f"  {name:>12} {key:>15} {total / n / 1e6:8.3f} M instructions/request"
                  f" ({sha / n / 1e6:.3f} M of them in SHA-256's portable path)", flush=True)
    finally:
        for g in (gate, cold):
            g.proc.terminate()
            g.proc.wait(60)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", action="append", required=True,
                    help="name=path of a hubgate release binary (repeat to compare)")
    ap.add_argument("--stub", required=True, type=Path)
    ap.add_argument("--workdir", required=True, type=Path)
    ap.add_argument("--only", default=",".join(PATHS))
    ap.add_argument("--requests", type=int, default=30, help="measured requests per path")
    ap.add_argument("--warmup", type=int, default=3, help="requests sent before counting")
    args = ap.parse_args()
    args.only = [p for p in args.only.split(",") if p]
    unknown = set(args.only) - set(PATHS)
    if unknown:
        ap.error(f"unknown paths {sorted(unknown)}; known: {', '.join(PATHS)}")
    if not shutil.which("valgrind"):
        ap.error("valgrind is not installed (apt-get install valgrind)")
    args.workdir.mkdir(parents=True, exist_ok=True)
    stub = cpu.Stub(args.stub, args.workdir, 1).start()
    results = {}
    try:
        for spec in args.bin:
            name, _, path = spec.partition("=")
            results[name] = measure(name, Path(path), args, stub)
    finally:
        stub.proc.terminate()
    names = list(results)
    print()
    two = len(names) == 2
    print("| path | " + " | ".join(f"{n} (M instructions/request)" for n in names)
          + (" | change" if two else "")
          + " | " + " | ".join(f"{n}: of them SHA-256 (M)" for n in names)
          + (" | change without SHA-256 |" if two else " |"))
    print("|---|" + "---:|" * (2 * len(names) + (2 if two else 0)))
    for key in args.only:
        row = [f"{results[n][key][0] / 1e6:.3f}" for n in names]
        if two:
            (a, sa), (b, sb) = results[names[0]][key], results[names[1]][key]
            row.append(f"{(b - a) / a:+.1%}")
        row += [f"{results[n][key][1] / 1e6:.3f}" for n in names]
        if two:
            row.append(f"{((b - sb) - (a - sa)) / (a - sa):+.1%}")
        print(f"| {key} | " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
