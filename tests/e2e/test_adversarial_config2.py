"""Adversarial review of the configuration contract and `hubgate check`, second round.

The contract: `hubgate check --config F` passes exactly when `hubgate serve --config F` would
start, a bad configuration is exit 2 naming the key, and README's tables give each key's
default and range.

HOLE (fixed): `audit.queue_capacity` had no upper bound. `check` called 2305843009213693952
valid and `serve` panicked at start in tokio's channel (exit 101, a panic where a refusal
naming the key belonged). Now 1 … 1000000, exit 2 from both.
HOLE (fixed): `server.listen = "0.0.0.0:P"` beside `server.admin_listen = "127.0.0.1:P"` (or
`[::]:P` beside any address) passed `check`; `serve` could never bind both (exit 1,
"Address already in use"). Only equal addresses were refused; a wildcard clashes with every
address of its family (`::` with IPv4's too, dual-stack). Now refused as an equal pair is.
HOLE (fixed): `upstream.region = "us-east-1 "` (or "US-EAST-1") passed `check`, and then every
caller's SigV4 signature was refused 401 (its scope is not "us-east-1 ") and hubgate's own
signatures went out with a scope Security Hub refuses. Now a Region name (lower-case letters,
digits, '-') or exit 2.
HOLE (fixed): `server.max_body_bytes` above 2^40 was refused naming
`server.max_in_flight_body_bytes`, with a range ("between server.max_body_bytes (2^63-1) and
2^40") no value fits; it now names `server.max_body_bytes` and its range (1 … 2^40).

HOLE (fixed): `policy.mode = "dry-run"` (denials forwarded: a member may suppress its own
findings) and `audit.max_files = 0` with `max_bytes` (each rotation deletes the audit file,
records included) were named nowhere at start: no caution from `check`, no WARN from `serve`.
Both are cautions now.

HOLE (fixed): `audit.path` naming the configuration file or the callers file (or the HMAC
key, a TLS file) passed `check`; the file sink then appended records to it: the next restart
could not parse its configuration, the callers file stopped reloading. Refused now (same file
by inode when it exists).

Held: every range README's configuration tables give, just inside and just outside each edge
(test_readme_ranges_are_what_check_accepts, parsed from README, not copied).
Held: wrong TOML types (a number as a string, a float for an integer, a negative count), a
misspelt key, keys differing by case, a duplicate table, a key given twice (once dotted):
exit 2 naming the key; dotted keys and inline tables mean the same as tables.
Held: a configuration file that is a folder, not UTF-8, empty (the defaults apply, and the
missing callers file is named), or starts with a UTF-8 BOM: check and serve agree.
Held (checked by hand): client_ca missing, empty, not PEM or a key: check and serve both
refuse with the file named (exit 1); static_principal naming no caller likewise.
Noticed, left alone: `quota.limits.X.rate` below 1e-6 paces as 1e-6 per second (clamped in
quota.rs, request path); a port already in use is found by serve only (check binds nothing,
as README says); `share`/`fallback_share` tiny but above 0 pace as 1e-6 calls per second
(README gives 0 < x ≤ 1); HUBGATE_CONFIG="" is clap's "a value is required for '--config'"
(exit 2, naming the flag rather than the variable). README now gives coordination's
op_timeout_ms, probe_interval_ms and lookup_claim_ms their range (1 … 60000), which the
README test covers.
"""

import re
import subprocess

import pytest

from helpers import REPO, free_port, run_hubgate


def config_text(extra: str = "", server: str = "") -> str:
    """A configuration `check` accepts (shipped policies, the empty production callers
    file, ephemeral ports) with `server` lines added to [server] and `extra` tables after."""
    return (f'[server]\nlisten = "127.0.0.1:0"\nadmin_listen = "127.0.0.1:0"\n{server}'
            f'[policy]\ndir = "{REPO / "policies"}"\n'
            f'[identity]\ncallers = "{REPO / "config" / "callers.toml"}"\n' + extra)


def check(tmp_path, text: str, name: str = "hubgate.toml") -> subprocess.CompletedProcess:
    path = tmp_path / name
    path.write_text(text)
    return run_hubgate("check", "--config", str(path))


def serve_refuses(tmp_path, name: str = "hubgate.toml") -> subprocess.CompletedProcess:
    try:
        r = run_hubgate("serve", "--config", str(tmp_path / name), timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("serve started with a configuration check refuses")
    return r


# ---------------------------------------------------------------------------
# Holes: check said valid, serve could never start (or no caller could ever be served)


def _wildcard_clash():
    port = free_port()
    return f'listen = "0.0.0.0:{port}"\nadmin_listen = "127.0.0.1:{port}"\n'


@pytest.mark.parametrize("case", ["queue_capacity", "wildcard_listen", "wildcard_v6_listen",
                                  "region_space", "region_upper", "audit_is_config",
                                  "audit_is_callers"])
def test_check_refuses_what_serve_cannot_start_or_serve(tmp_path, case):
    port = free_port()
    # A copy: the audit cases must never append to the repository's callers file.
    (tmp_path / "callers.toml").write_text((REPO / "config" / "callers.toml").read_text())
    own_callers = f'callers = "{REPO / "config" / "callers.toml"}"'
    audit_at = '[audit]\nsink = "file"\npath = "{}"\n'.format
    server, extra, key = {
        "queue_capacity": ("", "[audit]\nqueue_capacity = 2305843009213693952\n",
                           "audit.queue_capacity"),
        "wildcard_listen": (None, "", "server.admin_listen"),
        "wildcard_v6_listen": (f'listen = "127.0.0.1:{port}"\nadmin_listen = "[::]:{port}"\n',
                               "", "server.admin_listen"),
        "region_space": ("", '[upstream]\nregion = "us-east-1 "\n', "upstream.region"),
        "region_upper": ("", '[upstream]\nregion = "US-EAST-1"\n', "upstream.region"),
        "audit_is_config": ("", audit_at("hubgate.toml"), "audit.path"),
        "audit_is_callers": ("", audit_at("./callers.toml"), "audit.path"),
    }[case]
    if server is None:
        server = _wildcard_clash()
    text = config_text(extra).replace(own_callers, 'callers = "callers.toml"')
    if server:
        # The listener lines replace the ephemeral ones.
        text = re.sub(r'listen = .*\nadmin_listen = .*\n', server, text, count=1)
    r = check(tmp_path, text)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert f"{key}:" in r.stderr, r.stderr
    assert "is valid" not in r.stdout
    s = serve_refuses(tmp_path)
    assert s.returncode == 2, (s.returncode, s.stderr[-600:])
    assert f"{key}:" in s.stderr and "panicked" not in s.stderr, s.stderr[-600:]


def test_a_body_limit_past_the_in_flight_range_names_itself(tmp_path):
    r = check(tmp_path, config_text(server="max_body_bytes = 9223372036854775807\n"))
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "server.max_body_bytes: must be between 1 and 1099511627776" in r.stderr, r.stderr
    r = check(tmp_path, config_text(server="max_body_bytes = 1099511627776\n"
                                           "max_in_flight_body_bytes = 1099511627776\n"))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("extra,said", [
    ('[policy]\nmode = "dry-run"\n', 'policy.mode = "dry-run": a request the policies deny is '
                                      'forwarded anyway'),
    ('[audit]\nsink = "file"\npath = "a.ndjson"\nmax_bytes = 4096\nmax_files = 0\n',
     "audit.max_files = 0 with audit.max_bytes = 4096: each rotation deletes the full audit file"),
])
def test_settings_that_weaken_a_guarantee_are_named_at_start(tmp_path, make_hubgate, seeded_fake,
                                                              extra, said):
    """Nothing at start said the policies were not enforced (dry-run), or that the audit log
    deleted its records at each rotation: check printed no caution and serve logged none."""
    text = config_text().replace("[policy]\n", extra, 1) if extra.startswith("[policy]") \
        else config_text(extra)
    r = check(tmp_path, text)
    assert r.returncode == 0, r.stderr
    assert f"hubgate: caution: {said}" in r.stderr, r.stderr
    table, _, rest = extra.partition("]\n")
    overrides = {table.strip("["): dict(
        (k.strip(), v.strip().strip('"') if v.strip().startswith('"') else int(v))
        for k, v in (kv.split("=", 1) for kv in rest.strip().splitlines()))}
    hg = make_hubgate(overrides, fake=seeded_fake)
    log = hg.stderr_text()
    assert "WARN" in log and said in log, log[-1500:]


# ---------------------------------------------------------------------------
# Held: README's ranges are what check accepts


def _readme_ranges():
    """(table, key, value, accepted) at each edge of every range README's tables give."""
    section, out = None, []
    for line in (REPO / "README.md").read_text().splitlines():
        m = re.match(r"### `\[(\w+)\]`", line)
        if m:
            section = m.group(1)
            continue
        if line.startswith("## ") or (line.startswith("### ") and "Socket limits" not in line):
            section = None
            continue
        if not (section and line.startswith("| `")):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        key, default = cells[0].strip("`"), cells[1]

        def num(s):
            s = s.strip().strip("`")
            return 1 << 40 if s == "2⁴⁰" else int(s) if s.isascii() and s.isdigit() else None
        span = re.search(r"\((?:[^;)]*; )?([^)…]*?)\s*…\s*([^)]*)\)", default)
        bound = re.search(r"\((?:[^;)]*; )?(≥|≤) ([0-9]+)\)", default)
        cases = []
        if span:
            lo, hi = num(span.group(1)), num(span.group(2))
            if lo is not None:
                cases += [(lo - 1, False), (lo, True)] if lo > 0 else [(lo, True)]
            if hi is not None:
                cases += [(hi, True), (hi + 1, False)]
        elif bound:
            n = int(bound.group(2))
            cases = [(n - 1, False), (n, True)] if bound.group(1) == "≥" else \
                [(n, True), (n + 1, False)]
        out += [(section, key, v, ok) for v, ok in cases]
    return out


def test_readme_ranges_are_what_check_accepts(tmp_path):
    cases = _readme_ranges()
    # The parse found the tables: a README reshuffle must not leave this test checking nothing.
    assert len(cases) > 60 and {c[0] for c in cases} >= {"server", "upstream", "policy",
                                                         "enrichment", "quota", "audit"}
    wrong = []
    for section, key, value, accepted in cases:
        if (section, key, value) == ("audit", "fsync_interval_ms", 0):
            continue  # README: "must be ≥ 1 there" (with fsync = "interval", the default)
        line = f"{key} = {value}\n"
        if key == "max_body_bytes":
            line += f"max_in_flight_body_bytes = {1 << 40}\n"  # must hold one such body
        text = config_text(server=line) if section == "server" else \
            config_text(f"[{section}]\n{line}")
        if section == "policy":
            text = config_text().replace("[policy]\n", f"[policy]\n{line}")
        r = check(tmp_path, text)
        refused_naming = r.returncode == 2 and f"{section}.{key}" in r.stderr
        if (r.returncode == 0) != accepted or (not accepted and not refused_naming):
            wrong.append((section, key, value, accepted, r.returncode, r.stderr[-200:]))
    assert not wrong, wrong


# ---------------------------------------------------------------------------
# Held: TOML tricks and odd files


@pytest.mark.parametrize("text,named", [
    (config_text(server="max_body_bytes = \"100\"\n"), "max_body_bytes"),
    (config_text(server="max_body_bytes = 100.0\n"), "max_body_bytes"),
    (config_text(server="max_connections = -1\n"), "max_connections"),
    (config_text(server="Listen = \"127.0.0.1:0\"\n"), "Listen"),
    (config_text("[Audit]\nsink = \"stdout\"\n"), "Audit"),
    (config_text("[audit]\nsink = \"stdout\"\n[audit]\nformat = \"ocsf\"\n"), "audit"),
    ('audit.sink = "file"\n' + config_text('[audit]\nsink = "stdout"\n'), "audit"),
])
def test_wrong_types_and_toml_tricks_are_refused_naming_the_key(tmp_path, text, named):
    r = check(tmp_path, text)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert named in r.stderr, r.stderr


def test_dotted_keys_and_inline_tables_mean_the_same(tmp_path):
    # Both forms parse as the table form does; a bad value in either is still named.
    text = ('server.listen = "127.0.0.1:0"\nserver.admin_listen = "127.0.0.1:0"\n'
            'audit = { sink = "stdout", format = "ocsf" }\nenrichment.settle_ms = 0\n'
            + config_text().split("\n", 3)[3])
    assert text.count("[server]") == 0 and "[policy]" in text, text
    r = check(tmp_path, text)
    assert r.returncode == 0, r.stderr
    r = check(tmp_path, text.replace("enrichment.settle_ms = 0", "enrichment.settle_ms = 3600001"))
    assert r.returncode == 2 and "enrichment.settle_ms" in r.stderr, r.stderr


@pytest.mark.parametrize("kind", ["folder", "not_utf8", "empty"])
def test_odd_configuration_files_check_and_serve_agree(tmp_path, kind):
    path = tmp_path / "hubgate.toml"
    if kind == "folder":
        path.mkdir()
    elif kind == "not_utf8":
        path.write_bytes(b'[server]\nlisten = "127.0.0.1:0"\n# \xff\xfe\n')
    else:
        path.write_bytes(b"")
    c = run_hubgate("check", "--config", str(path))
    s = serve_refuses(tmp_path)
    want = 1 if kind == "empty" else 2  # empty: valid defaults, the callers file is missing
    assert (c.returncode, s.returncode) == (want, want), (c.stderr, s.stderr[-400:])
    first = c.stderr.splitlines()[0]
    assert first in s.stderr, (first, s.stderr[-400:])
    if kind == "empty":
        assert "identity.callers" in first, first
