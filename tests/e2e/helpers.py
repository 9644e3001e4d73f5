"""Shared helpers for hubgate's end-to-end tests: processes, signing, raw HTTP, assertions."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import requests
from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
FAKE_SCRIPT = TESTS / "fake_securityhub.py"
POLICY_DIR = REPO / "policies"
HUBGATE_BIN = Path(os.environ.get("HUBGATE_BIN", REPO / "target" / "debug" / "hubgate"))
PYTHON = sys.executable

REGION = "us-east-1"
PRODUCT_ARN = "arn:aws:securityhub:us-east-1::product/aws/securityhub"
OTHER_PRODUCT_ARN = "arn:aws:securityhub:us-east-1::product/aws/guardduty"

ADMIN_ACCOUNT = "111111111111"
MEMBER_ACCOUNT = "222222222222"
# A member's GetFindings through hubgate must be confined to its own account (src/reads.rs).
OWN_ACCOUNT_FILTER = {"AwsAccountId": [{"Value": MEMBER_ACCOUNT, "Comparison": "EQUALS"}]}
OTHER_ACCOUNT = "333333333333"

# hubgate's own upstream credentials (the fake only accepts these)
UPSTREAM_KEY = "HUBGATEUPSTREAM00001"
UPSTREAM_SECRET = "hubgate-upstream-secret"


@dataclass(frozen=True)
class Creds:
    access_key: str
    secret_key: str


ADMIN = Creds("HGTESTADMIN000000001", "admin-secret")
MEMBER_SECRET = "member-secret-from-env-7Qz9"
MEMBER = Creds("HGTESTMEMBER00000001", MEMBER_SECRET)
CALLERS = {"admin": ADMIN, "member": MEMBER}

# Strings that must never appear in an audit record or in hubgate's logs.
SECRETS = ["admin-secret", MEMBER_SECRET, UPSTREAM_SECRET, "Signature="]

CALLERS_TOML = f"""\
[[caller]]
id = "admin"
account_id = "{ADMIN_ACCOUNT}"
role = "administrator"
access_key_id = "{ADMIN.access_key}"
secret_access_key = "{ADMIN.secret_key}"

[[caller]]
id = "member"
account_id = "{MEMBER_ACCOUNT}"
role = "member"
access_key_id = "{MEMBER.access_key}"
secret_env = "HG_TEST_MEMBER_SECRET"
"""

HTTP_TIMEOUT = 15

# Every Hubgate started in this session, for checks over all their files (secrets scan).
STARTED: list = []


# ---------------------------------------------------------------------------
# small utilities


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free on 127.0.0.1 now, never one this test run handed out before: the kernel can
    give a closed port again at once, and a hubgate whose listen and admin_listen ports came out
    the same refused to start."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


class GiveUp(AssertionError):
    """Raised by a wait_until predicate to stop waiting at once (e.g. the process died)."""


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll predicate() until it returns a truthy value; fail after timeout seconds.

    Exceptions from predicate() are retried, except GiveUp."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except GiveUp:
            raise
        except Exception as e:  # noqa: BLE001 - we retry until the deadline
            last_exc = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                         + (f" (last error: {last_exc!r})" if last_exc else ""))


def finding(fid: str, account: str, label: str = "HIGH", normalized: int | None = None,
            status: str = "NEW", product_arn: str = PRODUCT_ARN) -> dict:
    """A minimal but realistic ASFF finding."""
    if normalized is None:
        normalized = {"INFORMATIONAL": 0, "LOW": 20, "MEDIUM": 40, "HIGH": 70,
                      "CRITICAL": 90}[label]
    return {
        "SchemaVersion": "2018-10-08",
        "Id": fid,
        "ProductArn": product_arn,
        "GeneratorId": "hubgate-e2e",
        "AwsAccountId": account,
        "Region": REGION,
        "Types": ["Software and Configuration Checks/Vulnerabilities/CVE"],
        "CreatedAt": "2024-01-01T00:00:00.000Z",
        "UpdatedAt": "2024-01-01T00:00:00.000Z",
        "Severity": {"Label": label, "Normalized": normalized},
        "Title": f"test finding {fid}",
        "Description": "seeded by the hubgate e2e suite",
        "Resources": [{"Type": "AwsAccount", "Id": f"AWS::::Account:{account}"}],
        "Workflow": {"Status": status},
        "WorkflowState": status,
        "RecordState": "ACTIVE",
        "Note": {"Text": "seed", "UpdatedBy": "seed", "UpdatedAt": "2024-01-01T00:00:00.000Z"},
    }


def ident(fid: str, product_arn: str = PRODUCT_ARN) -> dict:
    return {"Id": fid, "ProductArn": product_arn}


# The findings every test starts with (conftest's `hubgate` fixture seeds them).
SEED = [
    finding("f-own-high", MEMBER_ACCOUNT, "HIGH", 70),
    finding("f-own-medium", MEMBER_ACCOUNT, "MEDIUM", 45),
    finding("f-other", OTHER_ACCOUNT, "MEDIUM", 40),
    finding("f-admin", ADMIN_ACCOUNT, "LOW", 20),
]


# ---------------------------------------------------------------------------
# raw HTTP


@dataclass
class Response:
    status: int
    headers: dict  # lower-case names
    body: bytes

    def json(self):
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def raw_request(port: int, method: str, path: str, body: bytes = b"",
                headers: dict | None = None, host: str = "127.0.0.1",
                chunked: bool = False, ssl_context=None) -> Response:
    """Send one request with http.client so that the path goes out exactly as given.

    chunked=True sends the body with Transfer-Encoding: chunked (two chunks).
    ssl_context: send it over HTTPS (a new TLS connection) with that ssl.SSLContext."""
    if ssl_context is not None:
        conn = http.client.HTTPSConnection(host, port, timeout=HTTP_TIMEOUT,
                                           context=ssl_context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=HTTP_TIMEOUT)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        hdrs = {"Host": f"{host}:{port}", **(headers or {})}
        if chunked:
            hdrs["Transfer-Encoding"] = "chunked"
        else:
            hdrs.setdefault("Content-Length", str(len(body)))
        for k, v in hdrs.items():
            conn.putheader(k, v)
        if chunked:
            conn.endheaders()
            half = len(body) // 2
            for part in (body[:half], body[half:]):
                if part:
                    conn.send(b"%x\r\n%s\r\n" % (len(part), part))
            conn.send(b"0\r\n\r\n")
        else:
            try:
                conn.endheaders(body if body else None)
            except (BrokenPipeError, ConnectionResetError):
                # hubgate may answer (a 413 past max_body_bytes) and close before the whole
                # body is sent: its answer is read all the same.
                pass
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


class _FixedTimeSigV4(SigV4Auth):
    """SigV4Auth with a caller-chosen timestamp (to make stale requests)."""

    def __init__(self, creds: Creds, when: dt.datetime):
        super().__init__(Credentials(creds.access_key, creds.secret_key), "securityhub", REGION)
        self._when = when

    def add_auth(self, request):
        request.context["timestamp"] = self._when.strftime(SIGV4_TIMESTAMP)
        self._modify_request_before_signing(request)
        canonical = self.canonical_request(request)
        sts = self.string_to_sign(request, canonical)
        self._inject_signature_to_request(request, self.signature(sts, request))


def sign(creds: Creds, method: str, host: str, path: str, body: bytes,
         headers: dict | None = None, when: dt.datetime | None = None) -> dict:
    """Return the headers (incl. Authorization and X-Amz-Date) for a SigV4-signed request."""
    when = when or dt.datetime.now(dt.timezone.utc)
    req = AWSRequest(method=method, url=f"http://{host}{path}", data=body,
                     headers=dict(headers or {}))
    req.headers["Host"] = host
    _FixedTimeSigV4(creds, when).add_auth(req)
    return dict(req.headers.items())


# ---------------------------------------------------------------------------
# the fake upstream


class FakeUpstream:
    """Runs tests/fake_securityhub.py in a subprocess and talks to its control API."""

    def __init__(self, log_path: Path, access_key: str = UPSTREAM_KEY,
                 secret_key: str = UPSTREAM_SECRET, extra_credentials: list | None = None):
        """extra_credentials: more Creds the fake accepts (--credentials AK:SK)."""
        self.port = free_port()
        self.log_path = log_path
        self.access_key = access_key
        self.secret_key = secret_key
        self.extra_credentials = list(extra_credentials or [])
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [PYTHON, str(FAKE_SCRIPT), "--host", "127.0.0.1", "--port", str(self.port),
             "--access-key", self.access_key, "--secret-key", self.secret_key,
             "--region", REGION,
             *[arg for c in self.extra_credentials
               for arg in ("--credentials", f"{c.access_key}:{c.secret_key}")]],
            stdout=self._log, stderr=self._log, stdin=subprocess.DEVNULL)

        def up():
            if self.proc.poll() is not None:
                raise GiveUp(f"fake upstream exited: {self.log_path.read_text()}")
            return requests.get(f"{self.endpoint}/_fake/findings", timeout=1).ok

        wait_until(up, 15, "the fake Security Hub to answer")
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log:
            self._log.close()
            self._log = None

    # control API
    def _ctl(self, method: str, path: str, body=None):
        r = requests.request(method, f"{self.endpoint}/_fake/{path}", json=body, timeout=5)
        r.raise_for_status()
        return r.json()

    def reset(self):
        return self._ctl("POST", "reset")

    def add_findings(self, findings: list[dict]):
        return self._ctl("POST", "findings", findings)

    def findings(self) -> dict:
        """Stored findings keyed by Id."""
        return {f["Id"]: f for f in self._ctl("GET", "findings")}

    def requests(self, method: str | None = None, path: str | None = None) -> list[dict]:
        """Security Hub requests received, optionally filtered by method and path."""
        return [r for r in self._ctl("GET", "requests")
                if (method is None or r["method"] == method)
                and (path is None or r["path"] == path)]

    def configure(self, **cfg):
        """POST /_fake/config: delay_ms, page_size, gzip_batch_update, quota (bool),
        quota_limits ({"GetFindings": [rate, burst], ...}), throttle_next ({"GetFindings": N})."""
        return self._ctl("POST", "config", cfg)

    def quota_on(self, **limits):
        """Turn on the fake's per-operation quotas (AWS's, or limits Op=(rate, burst)); the
        buckets start full."""
        cfg = {"quota": True}
        if limits:
            cfg["quota_limits"] = {op: list(v) for op, v in limits.items()}
        return self.configure(**cfg)

    def throttle_next(self, **counts):
        """Throttle the next N calls of each operation: throttle_next(GetFindings=2)."""
        return self.configure(throttle_next=counts)

    def stats(self) -> dict:
        """GET /_fake/stats: {operation: {"calls", "throttled"[, "findings_processed",
        "findings_unprocessed"]}}."""
        return self._ctl("GET", "stats")

    def op_stats(self, op: str) -> dict:
        """One operation's stats (zeros if it was never called)."""
        return self.stats().get(op) or {"calls": 0, "throttled": 0}

    def get_findings_calls(self) -> list[dict]:
        return [json.loads(r["body"]) for r in self.requests("POST", "/findings")]

    def buf_calls(self) -> list[dict]:
        return self.requests("PATCH", "/findings/batchupdate")


def header(record: dict, name: str) -> str | None:
    """A header value from a request recorded by the fake."""
    for k, v in record["headers"]:
        if k.lower() == name.lower():
            return v
    return None


def named_findings(record: dict, entry: dict) -> list[dict]:
    """The findings one grouped violation (or warning) of a decision record names, as
    `{"Id", "ProductArn"}`: its places in the record's `findings` (counted across the Ids of
    every product group, in order), then the findings the request did not name."""
    flat = [{"Id": i, "ProductArn": g["ProductArn"]} for g in record["findings"] for i in g["Ids"]]
    return [flat[p] for p in entry["findings"] or []] + entry.get("unlisted", [])


# ---------------------------------------------------------------------------
# hubgate


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"unsupported TOML value {v!r}")


def to_toml(cfg: dict) -> str:
    out = []
    for section, values in cfg.items():
        out.append(f"[{section}]")
        for k, v in values.items():
            if v is not None:
                out.append(f"{k} = {_toml_value(v)}")
        out.append("")
    return "\n".join(out)


def merge(base: dict, overrides: dict) -> dict:
    out = {k: dict(v) for k, v in base.items()}
    for section, values in (overrides or {}).items():
        out.setdefault(section, {}).update(values)
    return out


def hubgate_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({
        "AWS_ACCESS_KEY_ID": UPSTREAM_KEY,
        "AWS_SECRET_ACCESS_KEY": UPSTREAM_SECRET,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "AWS_REGION": REGION,
        "HG_TEST_MEMBER_SECRET": MEMBER_SECRET,
    })
    return env


def container_credentials(hours: float = 1.0, access_key: str = UPSTREAM_KEY,
                          secret_key: str = UPSTREAM_SECRET) -> bytes:
    """A container credentials endpoint's answer: hubgate's upstream keys (or the keys given)
    with a session token, expiring `hours` from now (negative: already expired)."""
    expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=hours)
    body = json.dumps({"AccessKeyId": access_key, "SecretAccessKey": secret_key,
                       "Token": "session-token",
                       "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}).encode()
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)


def recv_head(conn) -> bytes | None:
    """What a socket gives up to and including the end of a request or response head (and
    whatever came with it), or None if it closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    return data


class LoopbackServer:
    """A TCP server on 127.0.0.1 for hand-made upstreams: `answer(conn, n)` serves the n-th
    connection (from 1), each in its own thread; the connection is closed after it."""

    def __init__(self, answer):
        self.answer = answer
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._one, args=(conn, self.connections), daemon=True).start()

    def _one(self, conn, n):
        with conn:
            try:
                self.answer(conn, n)
            except OSError:
                pass

    def close(self):
        self.sock.close()


class CredentialEndpoint(LoopbackServer):
    """A container credentials endpoint (AWS_CONTAINER_CREDENTIALS_FULL_URI) for hubgate's own
    credentials. `env` is hubgate's environment with it as the only credential source."""

    def __init__(self, answer):
        super().__init__(answer)
        self.uri = f"http://127.0.0.1:{self.port}/creds"

    def env(self) -> dict:
        env = {k: v for k, v in hubgate_env().items()
               if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
        env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = self.uri
        return env


def run_hubgate(*args, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run a short-lived hubgate subcommand (check, serve that must fail, ...)."""
    return subprocess.run([str(HUBGATE_BIN), *args], env=hubgate_env(), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@dataclass
class Hubgate:
    """One hubgate process with its own config folder."""

    workdir: Path
    upstream_endpoint: str
    overrides: dict = field(default_factory=dict)
    fake: FakeUpstream | None = None
    port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    env: dict | None = None  # replaces hubgate_env() when given
    popen_kw: dict = field(default_factory=dict)  # e.g. stdout=subprocess.PIPE, preexec_fn
    callers_toml: str | None = None  # the callers file; CALLERS_TOML when None
    scheme: str = "http"  # "https" when the config sets server.tls_cert/tls_key
    ca_file: Path | None = None  # the CA clients verify hubgate's certificate with (https)

    @property
    def config_path(self) -> Path:
        return self.workdir / "hubgate.toml"

    @property
    def audit_path(self) -> Path:
        return self.workdir / "audit.ndjson"

    @property
    def stderr_path(self) -> Path:
        return self.workdir / "hubgate.stderr"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def config(self) -> dict:
        base = {
            "server": {"listen": self.host, "admin_listen": f"127.0.0.1:{self.admin_port}",
                       "max_body_bytes": 1048576},
            "upstream": {"endpoint": self.upstream_endpoint, "region": REGION,
                         "auth": "resign", "timeout_ms": 2000},
            "identity": {"mode": "sigv4", "callers": "callers.toml"},
            "policy": {"dir": str(POLICY_DIR), "mode": "enforce",
                       "on_partial_deny": "reject"},
            "enrichment": {"enabled": True, "cache_ttl_ms": 0},
            "audit": {"sink": "file", "path": "audit.ndjson", "format": "hubgate"},
        }
        return merge(base, self.overrides)

    def write_config(self):
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "callers.toml").write_text(
            CALLERS_TOML if self.callers_toml is None else self.callers_toml)
        self.config_path.write_text(to_toml(self.config()))

    def start(self, ready_timeout: float = 15, ready_path: str = "/readyz"):
        if not HUBGATE_BIN.exists():
            raise AssertionError(f"hubgate binary not found at {HUBGATE_BIN} (set HUBGATE_BIN)")
        self.write_config()
        if self not in STARTED:
            STARTED.append(self)
        self._stderr = open(self.stderr_path, "ab")
        self._stdout = open(self.workdir / "hubgate.stdout", "ab")
        kw = {"env": self.env if self.env is not None else hubgate_env(),
              "stdout": self._stdout, "stderr": self._stderr, **self.popen_kw}
        self.proc = subprocess.Popen(
            [str(HUBGATE_BIN), "serve", "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL, cwd=self.workdir, **kw)

        def ready():
            if self.proc.poll() is not None:
                raise GiveUp(f"hubgate exited with {self.proc.returncode} before it was ready")
            return self.admin(ready_path, timeout=1).status_code == 200

        try:
            wait_until(ready, ready_timeout, "hubgate /readyz == 200")
        except AssertionError as e:
            self.stop()
            raise AssertionError(f"{e}\n--- hubgate stderr ---\n{self.stderr_text()}") from None
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for f in (getattr(self, "_stderr", None), getattr(self, "_stdout", None)):
            if f:
                f.close()

    def admin(self, path: str, timeout: float = 5) -> requests.Response:
        """GET an admin endpoint (/healthz, /readyz, /metrics)."""
        return requests.get(f"http://127.0.0.1:{self.admin_port}{path}", timeout=timeout)

    def audit_files(self) -> list[Path]:
        """The audit file and its rotations, oldest first (file sink)."""
        path = Path(self.config()["audit"].get("path") or "audit.ndjson")
        path = path if path.is_absolute() else self.workdir / path
        rotated = sorted(path.parent.glob(path.name + ".*"),
                         key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
        return [p for p in rotated if p.suffix[1:].isdigit()] + ([path] if path.exists() else [])

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    # -- audit ------------------------------------------------------------

    def audit_records(self) -> list[dict]:
        if not self.audit_path.exists():
            return []
        lines = self.audit_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def audit_for(self, decision_id: str, timeout: float = 5) -> dict:
        """Wait for the audit record of decision_id; assert there is exactly one."""
        assert decision_id, "no decision id to look up"

        def find():
            return [r for r in self.audit_records() if r.get("decision_id") == decision_id]

        recs = wait_until(find, timeout, f"audit record {decision_id}")
        time.sleep(0.05)
        recs = find()
        assert len(recs) == 1, f"expected one audit record for {decision_id}, got {recs}"
        return recs[0]

    # -- clients ----------------------------------------------------------

    def client(self, who: str = "admin", creds: Creds | None = None,
               client_cert: tuple | None = None):
        """A boto3 client for hubgate (over HTTPS, verifying with ca_file, when scheme is
        https); client_cert = (cert.pem, key.pem) presents a client certificate."""
        creds = creds or CALLERS[who]
        return boto3.session.Session().client(
            "securityhub", endpoint_url=self.url, region_name=REGION,
            aws_access_key_id=creds.access_key, aws_secret_access_key=creds.secret_key,
            verify=str(self.ca_file) if self.scheme == "https" and self.ca_file else None,
            config=Config(retries={"total_max_attempts": 1, "mode": "standard"},
                          connect_timeout=5, read_timeout=HTTP_TIMEOUT,
                          client_cert=client_cert))

    def send(self, method: str, path: str, body=b"", who: str | None = "admin",
             creds: Creds | None = None, content_type: str = "application/json",
             when: dt.datetime | None = None, extra_headers: dict | None = None,
             body_for_signature: bytes | None = None, chunked: bool = False,
             ssl_context=None) -> Response:
        """A raw request to hubgate, SigV4-signed for hubgate's host unless who is None.

        body may be bytes, str or a JSON-serialisable object; ssl_context sends it over TLS."""
        if not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        headers = {}
        if content_type is not None:
            headers["Content-Type"] = content_type
        headers.update(extra_headers or {})
        creds = creds or (CALLERS[who] if who else None)
        if creds:
            signed_body = body if body_for_signature is None else body_for_signature
            headers = sign(creds, method, self.host, path, signed_body, headers, when)
        return raw_request(self.port, method, path, body, headers, chunked=chunked,
                           ssl_context=ssl_context)

    def buf(self, body, **kw) -> Response:
        return self.send("PATCH", "/findings/batchupdate", body, **kw)


# ---------------------------------------------------------------------------
# assertions


def assert_envelope(resp: Response, status: int, code: str, error_type: str) -> dict:
    """Check hubgate's error envelope; return the parsed body."""
    assert resp.status == status, f"expected {status}, got {resp.status}: {resp.text}"
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    assert resp.headers.get("x-amzn-errortype") == error_type, resp.headers
    body = resp.json()
    assert body["success"] is False, body
    err = body["error"]
    assert err["code"] == code, body
    assert isinstance(err["message"], str) and err["message"], body
    rid = resp.headers.get("x-amzn-requestid")
    assert rid and err["request_id"] == rid, (resp.headers, body)
    assert body["__type"] == error_type, body
    assert body["message"].startswith(f"{code}: "), body
    assert err["message"] in body["message"], body
    # An answer that asks for a retry says when (curl --retry and most retry libraries wait
    # for it); no other answer does.
    retry_after = resp.headers.get("retry-after")
    if status in (429, 503):
        assert retry_after and retry_after.isdigit() and 1 <= int(retry_after) <= 3600, \
            resp.headers
    else:
        assert retry_after is None, resp.headers
    return body


def decision_id_of_boto(meta_or_exc) -> str:
    """The decision id from a boto3 response dict or ClientError."""
    resp = getattr(meta_or_exc, "response", meta_or_exc)
    hdrs = resp["ResponseMetadata"]["HTTPHeaders"]
    return hdrs.get("x-hubgate-decision-id") or hdrs.get("x-amzn-requestid")


def capture_sent(client) -> list:
    """Record every request a boto3 client sends: list of (method, url, body bytes)."""
    sent = []

    def hook(request, **_):
        body = request.body
        if hasattr(body, "read"):
            pos = body.tell()
            data = body.read()
            body.seek(pos)
            body = data
        sent.append((request.method, request.url, body if isinstance(body, bytes)
                     else (body or "").encode()))

    client.meta.events.register("before-send.securityhub.*", hook)
    return sent


def audit_verify(*files, key_env: str | None = None, env: dict | None = None,
                 timeout: float = 30, min_seq: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run `hubgate audit verify FILE... [--key-env VAR] [--min-seq M]...`."""
    args = [str(HUBGATE_BIN), "audit", "verify", *map(str, files)]
    if key_env:
        args += ["--key-env", key_env]
    for m in min_seq:
        args += ["--min-seq", m]
    return subprocess.run(args, env={**hubgate_env(), **(env or {})}, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def metric(hg, name: str, **labels) -> float:
    """The value of one /metrics series of `hg` (0 when absent)."""
    text = hg.admin("/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    series = f"{name}{{{want}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split(" ")[1])
    return 0.0


# ---------------------------------------------------------------------------
# the AWS CLI

AWS_CLI = REPO / ".venv" / "bin" / "aws"


def aws(hubgate, creds: Creds, *args) -> subprocess.CompletedProcess:
    """`aws securityhub ARGS` pointed at hubgate, with only these credentials and no retries."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({
        "AWS_ACCESS_KEY_ID": creds.access_key,
        "AWS_SECRET_ACCESS_KEY": creds.secret_key,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_MAX_ATTEMPTS": "1",
        "AWS_PAGER": "",
        "AWS_EC2_METADATA_DISABLED": "true",
    })
    return subprocess.run(
        [str(AWS_CLI), "securityhub", *args, "--endpoint-url", hubgate.url,
         "--cli-read-timeout", "15", "--cli-connect-timeout", "5"],
        env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def ocsf_schema_errors(event: dict) -> list[str]:
    """What an OCSF event breaks of its declared version's api_activity schema (with its
    profiles), one line per error; `chain`, hubgate's tamper-evidence envelope, is left out."""
    import jsonschema
    from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

    ocsf = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=event["metadata"]["version"]))
    schema = ocsf.get_class_schema(class_name="api_activity",
                                   profiles=event["metadata"].get("profiles", []))
    body = {k: v for k, v in event.items() if k != "chain"}
    return [f"/{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in jsonschema.Draft202012Validator(schema).iter_errors(body)]
