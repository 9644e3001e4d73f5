#!/usr/bin/env python3
"""Put shipped hubgate audit lines back in chain order, for `hubgate audit verify`.

Log shippers deliver at least once and in batches whose object names do not follow the
chain: objects can overlap (a batch re-sent after a crash) and arrive out of order. This reads
the shipped objects (plain or .gz NDJSON), drops exact duplicate lines, sorts by chain.seq and
writes the ORIGINAL lines, byte for byte, so that the hash chain can be checked:

    aws s3 cp --recursive s3://AUDIT_ARCHIVE_BUCKET/hubgate/POD/2026/11/24/ shipped/
    python3 deploy/logging/order-shipped.py shipped/ > chain.ndjson
    hubgate audit verify --key-env HUBGATE_AUDIT_HMAC_KEY chain.ndjson

Lines of one chain only: one hubgate instance (one prefix per host in the shipped layout).
Two different lines with the same chain.seq, and lines that are not JSON records with a
chain, are reported on stderr and make the exit status 1; they are written too (a torn line
first), so that `hubgate audit verify` names the place.
"""

import gzip
import json
import os
import sys


def lines_of(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        for raw in f:
            line = raw.rstrip(b"\r\n")
            if line:
                yield line


def files_under(args):
    for arg in args:
        if os.path.isdir(arg):
            for root, _, names in os.walk(arg):
                for name in sorted(names):
                    yield os.path.join(root, name)
        else:
            yield arg


def main(argv):
    if len(argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    by_seq = {}
    broken = []
    problems = 0
    for path in files_under(argv[1:]):
        for line in lines_of(path):
            try:
                seq = json.loads(line)["chain"]["seq"]
                if not isinstance(seq, int):
                    raise TypeError("chain.seq is not an integer")
            except (ValueError, KeyError, TypeError) as e:
                print(f"{path}: not a chained record ({e}): {line[:80]!r}", file=sys.stderr)
                broken.append(line)
                problems += 1
                continue
            seen = by_seq.setdefault(seq, [])
            if line not in seen:
                if seen:
                    print(f"{path}: two different records with chain.seq {seq}", file=sys.stderr)
                    problems += 1
                seen.append(line)
    out = sys.stdout.buffer
    for line in broken:
        out.write(line + b"\n")
    for seq in sorted(by_seq):
        for line in by_seq[seq]:
            out.write(line + b"\n")
    if by_seq:
        print(f"{sum(len(v) for v in by_seq.values())} records, chain.seq "
              f"{min(by_seq)} to {max(by_seq)}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
