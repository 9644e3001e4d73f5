#!/usr/bin/env python3
"""tests/fake_securityhub.py with TCP_NODELAY on its connections (same arguments).

The stock fake writes a response's status+headers and its body in two small writes; with Nagle's
algorithm on, the body waits for the client's delayed ACK (~40 ms on Linux), which pins every
Security Hub response of the stock fake at ~44 ms and its throughput at connections / 44 ms.
The e2e suite does not care; a load test does. The fake itself is left unchanged."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

import fake_securityhub  # noqa: E402

fake_securityhub.Handler.disable_nagle_algorithm = True

if __name__ == "__main__":
    fake_securityhub.main()
