#!/usr/bin/env python3
"""A small fake AWS Security Hub upstream for hubgate's end-to-end tests.

Standard library + botocore only. It

* verifies the SigV4 signature of every Security Hub request (botocore's SigV4Auth,
  recomputed with the request's own X-Amz-Date and the exact body bytes);
* keeps ASFF findings in memory and implements GetFindings (POST /findings),
  BatchUpdateFindings (PATCH /findings/batchupdate), BatchImportFindings (POST /findings/import),
  UpdateFindings (PATCH /findings: Note and RecordState of the findings its Filters match),
  DescribeHub (GET /accounts) and CreateAutomationRuleV2 (accepted, kept nowhere);
* records every Security Hub request it receives;
* exposes control endpoints under /_fake/ (never routed by hubgate):
    POST /_fake/findings   body: list of findings to add or replace (by Id + ProductArn)
    GET  /_fake/findings   all stored findings
    GET  /_fake/requests   every Security Hub request received so far
    POST /_fake/reset      forget findings, requests and config
    POST /_fake/config     {"delay_ms": N, "page_size": N, "gzip_batch_update": MODE}
                           (delay applies to Security Hub routes only; MODE for the
                           BatchUpdateFindings answer: "off" (default), "accept" = gzip it when
                           the request's Accept-Encoding allows gzip, "always" = gzip it anyway)
                           quota knobs (all off after reset):
                           "quota": true|false   per-operation token buckets with Security Hub's
                               documented quotas (QUOTAS below); a call over quota is answered 429
                               TooManyRequestsException "Rate exceeded" and not applied. Setting
                               "quota" or "quota_limits" refills every bucket.
                           "quota_limits": {"GetFindings": [rate, burst], "default": [...], ...}
                           "throttle_next": {"GetFindings": N, ...}  throttle the next N calls of
                               that operation whatever the quota (quota on or off; replaces the
                               previous count; such a call takes no token)
                           "fail_next": {"GetFindings": [N, STATUS, TYPE], ...}  answer the
                               next N calls of that operation with STATUS and error type TYPE
                               (a 500 InternalException, a 503 ServiceUnavailableException),
                               nothing read or applied (replaces the previous map)
                           "answer_delay_ms": {"GetFindings": N, ...}  the operation reads or
                               writes at once and answers N ms later (a slow or large answer;
                               replaces the previous map)
                           "hold_label_ms": {"MEDIUM": N, ...}  a BatchUpdateFindings setting
                               that Severity Label waits N ms before it is read and applied (a
                               request delayed on its way: it lands after one sent later)
                           "apply_delay_ms": N  BatchUpdateFindings answers at once and applies
                               its change N ms later, in order, as AWS's asynchronous processing
                               does ("can take several minutes")
    GET  /_fake/stats      per operation: {"calls", "throttled"} (+ "findings_processed" and
                           "findings_unprocessed" for BatchUpdateFindings); reset clears them

Usage:
    python tests/fake_securityhub.py --host 127.0.0.1 --port N --access-key AK \
        --secret-key SK --region us-east-1 [--credentials AK2:SK2 ...]

--credentials (repeatable) adds key pairs the fake also accepts, e.g. a passthrough caller's own
keys (whose signature covers the Host the caller signed for, as AWS would check it).
"""

from __future__ import annotations

import argparse
import base64
import copy
import datetime as dt
import gzip
import hashlib
import json
import re
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials

SERVICE = "securityhub"
MAX_FILTER_VALUES = 20
MAX_FILTER_ATTRIBUTES = 10
HUB_ARN = "arn:aws:securityhub:us-east-1:111111111111:hub/default"

# Security Hub's documented quotas per account and Region: operation -> (requests/s, burst)
QUOTAS = {
    "GetFindings": (3.0, 6),
    "BatchUpdateFindings": (10.0, 30),
    "BatchImportFindings": (10.0, 30),
    "UpdateFindings": (1.0, 5),
}
DEFAULT_QUOTA = (10.0, 30)  # every other operation

# (method, path) -> operation name, for quotas and stats; implemented or not (an operation the
# fake does not implement is still counted and throttled, then answered 404).
OPERATIONS = {
    ("POST", "/findings"): "GetFindings",
    ("PATCH", "/findings/batchupdate"): "BatchUpdateFindings",
    ("POST", "/findings/import"): "BatchImportFindings",
    ("GET", "/accounts"): "DescribeHub",
    ("PATCH", "/findings"): "UpdateFindings",
    ("PATCH", "/findingsv2/batchupdatev2"): "BatchUpdateFindingsV2",
    ("POST", "/automationrulesv2/create"): "CreateAutomationRuleV2",
}

SEVERITY_LABELS = ["INFORMATIONAL", "LOW", "MEDIUM", "HIGH", "CRITICAL"]
LABEL_TO_NORMALIZED = {"INFORMATIONAL": 0, "LOW": 1, "MEDIUM": 40, "HIGH": 70, "CRITICAL": 90}

# GetFindings string filters the fake understands: filter name -> function(finding) -> value
STRING_FILTER_FIELDS = {
    "Id": lambda f: f.get("Id"),
    "ProductArn": lambda f: f.get("ProductArn"),
    "AwsAccountId": lambda f: f.get("AwsAccountId"),
    "SeverityLabel": lambda f: (f.get("Severity") or {}).get("Label"),
    "WorkflowStatus": lambda f: (f.get("Workflow") or {}).get("Status"),
    "RecordState": lambda f: f.get("RecordState"),
}

AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256\s+"
    r"Credential=(?P<credential>[^,\s]+)\s*,\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+)\s*,\s*"
    r"Signature=(?P<signature>[0-9a-f]{64})\s*$"
)


def label_from_normalized(n: int) -> str:
    if n <= 0:
        return "INFORMATIONAL"
    if n < 40:
        return "LOW"
    if n < 70:
        return "MEDIUM"
    if n < 90:
        return "HIGH"
    return "CRITICAL"


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class TokenBucket:
    """rate tokens/s up to burst, starting full; not thread-safe (State.lock guards it)."""

    def __init__(self, rate: float, burst: float):
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class ApiError(Exception):
    """An AWS-style error response."""

    def __init__(self, status: int, error_type: str, message: str):
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


# ---------------------------------------------------------------------------
# SigV4 verification


class _VerifyingSigV4Auth(SigV4Auth):
    """SigV4Auth that signs exactly the headers the client said it signed."""

    def __init__(self, credentials, service_name, region_name, signed_names):
        super().__init__(credentials, service_name, region_name)
        self._signed_names = signed_names

    def headers_to_sign(self, request):
        header_map = HTTPHeaders()
        for name in self._signed_names:
            for value in request.headers.get_all(name) or []:
                header_map[name] = value
        return header_map


def verify_sigv4(method, raw_path, headers, body, access_key, secret_key, region,
                 extra_credentials=None):
    """Raise ApiError(403, InvalidSignatureException) unless the request is validly signed
    (UnrecognizedClientException for an access key it does not know, as AWS does).

    Accepts access_key/secret_key and any pair in extra_credentials ({key id: secret}).
    Returns the access key id that signed the request."""
    known = {access_key: secret_key, **(extra_credentials or {})}

    def fail(msg):
        raise ApiError(403, "InvalidSignatureException", msg)

    auth = headers.get("Authorization")
    if not auth:
        fail("Missing Authentication Token: no Authorization header")
    m = AUTH_RE.match(auth.strip())
    if not m:
        fail("Authorization header is malformed")
    cred_parts = m.group("credential").split("/")
    if len(cred_parts) != 5:
        fail("Credential is malformed")
    key_id, date, cred_region, service, terminator = cred_parts
    if key_id not in known:
        # What AWS answers for a key it does not know (deleted, rotated, a revoked session).
        raise ApiError(403, "UnrecognizedClientException",
                       "The security token included in the request is invalid.")
    if cred_region != region or service != SERVICE or terminator != "aws4_request":
        fail(f"Credential should be scoped to {region}/{SERVICE}, not {cred_region}/{service}")
    signed_names = m.group("signed").split(";")
    if "host" not in signed_names or "x-amz-date" not in signed_names:
        fail("SignedHeaders must include host and x-amz-date")
    if signed_names != sorted(signed_names):
        fail("SignedHeaders are not sorted")
    for name in signed_names:
        if headers.get(name) is None:
            fail(f"signed header {name} is missing from the request")
    amz_date = headers.get("X-Amz-Date")
    try:
        ts = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
    except (TypeError, ValueError):
        fail("X-Amz-Date is malformed")
    if ts.strftime("%Y%m%d") != date:
        fail("Credential date does not match X-Amz-Date")
    if abs((dt.datetime.now(dt.timezone.utc) - ts).total_seconds()) > 15 * 60:
        fail("Signature expired: request time too skewed")

    request = AWSRequest(method=method, url=f"http://{headers.get('Host')}{raw_path}",
                         data=body)
    for name in signed_names:
        for value in headers.get_all(name) or []:
            request.headers[name] = value
    request.context["timestamp"] = amz_date
    signer = _VerifyingSigV4Auth(Credentials(key_id, known[key_id]), SERVICE, region,
                                 signed_names)
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if expected != m.group("signature"):
        fail("The request signature we calculated does not match the signature you provided. "
             "Check your AWS Secret Access Key and signing method.")
    return key_id


# ---------------------------------------------------------------------------
# State


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.findings: dict[tuple[str, str], dict] = {}
        self.requests: list[dict] = []
        self.delay_ms = 0
        self.page_size = 100
        self.gzip_batch_update = "off"  # off | accept | always
        self.quota = False
        self.quota_limits: dict[str, tuple[float, float]] = {}  # overrides of QUOTAS
        self.buckets: dict[str, TokenBucket] = {}
        self.throttle_next: dict[str, int] = {}
        self.fail_next: dict[str, list] = {}
        self.answer_delay_ms: dict[str, int] = {}
        self.apply_delay_ms = 0
        self.hold_label_ms: dict[str, int] = {}
        for timer in getattr(self, "pending_applies", []):
            timer.cancel()
        self.pending_applies: list[threading.Timer] = []
        self.stats: dict[str, dict] = {}

    def limit(self, op: str) -> tuple[float, float]:
        return self.quota_limits.get(op) or QUOTAS.get(op) \
            or self.quota_limits.get("default") or DEFAULT_QUOTA

    def refill(self):
        self.buckets = {}

    def op_stats(self, op: str) -> dict:
        st = self.stats.get(op)
        if st is None:
            st = self.stats[op] = {"calls": 0, "throttled": 0}
            if op == "BatchUpdateFindings":
                st.update(findings_processed=0, findings_unprocessed=0)
        return st

    def failure(self, op: str):
        """(status, error type) if this call of op is to fail (fail_next), else None."""
        left = self.fail_next.get(op)
        if not left or left[0] <= 0:
            return None
        left[0] -= 1
        return left[1], left[2]

    def admit(self, op: str) -> bool:
        """Count a call of op; False if it is throttled (throttle_next, then the quota)."""
        st = self.op_stats(op)
        st["calls"] += 1
        if self.throttle_next.get(op, 0) > 0:
            self.throttle_next[op] -= 1
            st["throttled"] += 1
            return False
        if self.quota:
            bucket = self.buckets.get(op)
            if bucket is None:
                bucket = self.buckets[op] = TokenBucket(*self.limit(op))
            if not bucket.take():
                st["throttled"] += 1
                return False
        return True

    def config_view(self) -> dict:
        return {"delay_ms": self.delay_ms, "page_size": self.page_size,
                "gzip_batch_update": self.gzip_batch_update, "quota": self.quota,
                "quota_limits": {k: list(v) for k, v in self.quota_limits.items()},
                "throttle_next": dict(self.throttle_next),
                "fail_next": {k: list(v) for k, v in self.fail_next.items()},
                "answer_delay_ms": dict(self.answer_delay_ms),
                "apply_delay_ms": self.apply_delay_ms,
                "hold_label_ms": dict(self.hold_label_ms)}


# ---------------------------------------------------------------------------
# Security Hub operations


def _string_filter_match(value, flt):
    want = flt.get("Value")
    comp = flt.get("Comparison")
    if value is None:
        value = ""
    if comp == "EQUALS":
        return value == want
    if comp == "PREFIX":
        return value.startswith(want)
    if comp == "NOT_EQUALS":
        return value != want
    if comp == "PREFIX_NOT_EQUALS":
        return not value.startswith(want)
    if comp == "CONTAINS":
        return want in value
    if comp == "NOT_CONTAINS":
        return want not in value
    raise ApiError(400, "InvalidInputException", f"unsupported Comparison {comp!r}")


def _matches(finding, filters):
    for name, flts in filters.items():
        value = STRING_FILTER_FIELDS[name](finding)
        positive = [f for f in flts if f.get("Comparison") in ("EQUALS", "PREFIX", "CONTAINS")]
        negative = [f for f in flts if f not in positive]
        if positive and not any(_string_filter_match(value, f) for f in positive):
            return False
        if not all(_string_filter_match(value, f) for f in negative):
            return False
    return True


def get_findings(state: State, req: dict) -> dict:
    if not isinstance(req, dict):
        raise ApiError(400, "InvalidInputException", "request body must be a JSON object")
    filters = req.get("Filters") or {}
    if not isinstance(filters, dict):
        raise ApiError(400, "InvalidInputException", "Filters must be an object")
    if len(filters) > MAX_FILTER_ATTRIBUTES:
        raise ApiError(400, "InvalidInputException",
                       f"Filters may use at most {MAX_FILTER_ATTRIBUTES} finding attributes")
    for name, flts in filters.items():
        if name not in STRING_FILTER_FIELDS:
            raise ApiError(400, "InvalidInputException",
                           f"the fake does not support filter attribute {name!r}")
        if not isinstance(flts, list):
            raise ApiError(400, "InvalidInputException", f"Filters.{name} must be a list")
        if len(flts) > MAX_FILTER_VALUES:
            raise ApiError(400, "InvalidInputException",
                           f"Filters.{name} has {len(flts)} values; at most "
                           f"{MAX_FILTER_VALUES} values are allowed per attribute")
    max_results = req.get("MaxResults", 100)
    if not isinstance(max_results, int) or isinstance(max_results, bool) \
            or not 1 <= max_results <= 100:
        raise ApiError(400, "InvalidInputException", "MaxResults must be between 1 and 100")

    filter_hash = hashlib.sha256(json.dumps(filters, sort_keys=True).encode()).hexdigest()[:16]
    offset = 0
    token = req.get("NextToken")
    if token:
        try:
            decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
            offset = int(decoded["o"])
            if decoded["f"] != filter_hash:
                raise ValueError("filters changed")
        except Exception:
            raise ApiError(400, "InvalidInputException", "NextToken is invalid")

    with state.lock:
        matched = [copy.deepcopy(f) for f in state.findings.values() if _matches(f, filters)]
        page_size = min(max_results, state.page_size)
    page = matched[offset:offset + page_size]
    out = {"Findings": page}
    if offset + page_size < len(matched):
        out["NextToken"] = base64.urlsafe_b64encode(
            json.dumps({"o": offset + page_size, "f": filter_hash}).encode()).decode()
    return out


def _apply_update(finding: dict, req: dict):
    ts = now_iso()
    if "Workflow" in req and "Status" in (req["Workflow"] or {}):
        finding.setdefault("Workflow", {})["Status"] = req["Workflow"]["Status"]
        finding["WorkflowState"] = req["Workflow"]["Status"]
    if "Severity" in req:
        sev = finding.setdefault("Severity", {})
        upd = req["Severity"] or {}
        if "Label" in upd:
            sev["Label"] = upd["Label"]
            if "Normalized" not in upd:
                sev["Normalized"] = LABEL_TO_NORMALIZED.get(upd["Label"], sev.get("Normalized"))
        if "Normalized" in upd:
            sev["Normalized"] = upd["Normalized"]
            if "Label" not in upd:
                sev["Label"] = label_from_normalized(upd["Normalized"])
        if "Product" in upd:
            sev["Product"] = upd["Product"]
    if "Note" in req:
        finding["Note"] = {"Text": req["Note"].get("Text"),
                           "UpdatedBy": req["Note"].get("UpdatedBy"), "UpdatedAt": ts}
    for key in ("VerificationState", "Confidence", "Criticality", "Types", "RelatedFindings"):
        if key in req:
            finding[key] = copy.deepcopy(req[key])
    if "UserDefinedFields" in req:
        finding.setdefault("UserDefinedFields", {}).update(req["UserDefinedFields"] or {})


def batch_update_findings(state: State, req: dict) -> dict:
    if not isinstance(req, dict) or not isinstance(req.get("FindingIdentifiers"), list):
        raise ApiError(400, "InvalidInputException", "FindingIdentifiers is required")
    processed, unprocessed = [], []
    with state.lock:
        for ident in req["FindingIdentifiers"]:
            key = (ident.get("Id"), ident.get("ProductArn"))
            finding = state.findings.get(key)
            if finding is None:
                unprocessed.append({"FindingIdentifier": {"Id": key[0], "ProductArn": key[1]},
                                    "ErrorCode": "FindingNotFound",
                                    "ErrorMessage": "Finding Not Found"})
                continue
            if not state.apply_delay_ms:
                _apply_update(finding, req)
            processed.append({"Id": key[0], "ProductArn": key[1]})
        if state.apply_delay_ms and processed:
            keys = [(p["Id"], p["ProductArn"]) for p in processed]

            def apply_later():
                with state.lock:
                    for k in keys:
                        f = state.findings.get(k)
                        if f is not None:
                            _apply_update(f, req)

            timer = threading.Timer(state.apply_delay_ms / 1000.0, apply_later)
            timer.daemon = True
            state.pending_applies.append(timer)
            timer.start()
    return {"ProcessedFindings": processed, "UnprocessedFindings": unprocessed}


def batch_update_findings_v2(state: State, req: dict) -> dict:
    """Every named finding processed; the new Security Hub keeps OCSF findings apart from the
    ASFF ones this fake stores, so nothing here changes."""
    if not isinstance(req, dict):
        raise ApiError(400, "ValidationException", "body must be an object")
    named = [{"FindingIdentifier": i} for i in req.get("FindingIdentifiers") or []] \
        + [{"MetadataUid": u} for u in req.get("MetadataUids") or []]
    return {"ProcessedFindings": named, "UnprocessedFindings": []}


def update_findings(state: State, req: dict) -> dict:
    """UpdateFindings (PATCH /findings): sets Note and/or RecordState on every finding the
    Filters match (the string filters get_findings supports); answers {}."""
    if not isinstance(req, dict) or not isinstance(req.get("Filters"), dict):
        raise ApiError(400, "InvalidInputException", "Filters is required")
    for name in req["Filters"]:
        if name not in STRING_FILTER_FIELDS:
            raise ApiError(400, "InvalidInputException",
                           f"the fake does not support filter attribute {name!r}")
    ts = now_iso()
    with state.lock:
        for finding in state.findings.values():
            if not _matches(finding, req["Filters"]):
                continue
            if "Note" in req:
                finding["Note"] = {"Text": req["Note"].get("Text"),
                                   "UpdatedBy": req["Note"].get("UpdatedBy"), "UpdatedAt": ts}
            if "RecordState" in req:
                finding["RecordState"] = req["RecordState"]
    return {}


def batch_import_findings(state: State, req: dict) -> dict:
    """Adds or replaces each finding (by Id + ProductArn); the shape of AWS's answer."""
    if not isinstance(req, dict) or not isinstance(req.get("Findings"), list):
        raise ApiError(400, "InvalidInputException", "Findings is required")
    failed = []
    ok = 0
    with state.lock:
        for f in req["Findings"]:
            if not isinstance(f, dict) or not f.get("Id") or not f.get("ProductArn"):
                failed.append({"Id": (f or {}).get("Id") if isinstance(f, dict) else None,
                               "ErrorCode": "InvalidInput",
                               "ErrorMessage": "Id and ProductArn are required"})
                continue
            state.findings[(f["Id"], f["ProductArn"])] = copy.deepcopy(f)
            ok += 1
    return {"FailedCount": len(failed), "SuccessCount": ok, "FailedFindings": failed}


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an Accept-Encoding header value allows gzip (q-values honoured)."""
    if not accept_encoding:
        return False
    q_by_coding = {}
    for part in accept_encoding.split(","):
        coding, _, params = part.strip().partition(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        q_by_coding[coding] = q
    if "gzip" in q_by_coding:
        return q_by_coding["gzip"] > 0
    if "x-gzip" in q_by_coding:
        return q_by_coding["x-gzip"] > 0
    return q_by_coding.get("*", 0) > 0


def describe_hub(state: State, req) -> dict:
    return {"HubArn": HUB_ARN, "SubscribedAt": "2024-01-01T00:00:00.000Z",
            "AutoEnableControls": True}


def create_automation_rule_v2(state: State, req: dict) -> dict:
    """Accepts the rule and keeps nothing: the rule's effect (findings changed later,
    server-side) is what a test of hubgate's cache needs, not the rule."""
    if not isinstance(req, dict) or not req.get("RuleName"):
        raise ApiError(400, "ValidationException", "RuleName is required")
    rule_id = str(uuid.uuid4())
    return {"RuleArn": f"arn:aws:securityhub:us-east-1:111111111111:automation-rulev2/{rule_id}",
            "RuleId": rule_id}


ROUTES = {
    ("POST", "/findings"): get_findings,
    ("PATCH", "/findings/batchupdate"): batch_update_findings,
    ("POST", "/findings/import"): batch_import_findings,
    ("PATCH", "/findingsv2/batchupdatev2"): batch_update_findings_v2,
    ("PATCH", "/findings"): update_findings,
    ("GET", "/accounts"): describe_hub,
    ("POST", "/automationrulesv2/create"): create_automation_rule_v2,
}


def _parse_quota_config(arg: dict) -> dict:
    """The quota knobs of a /_fake/config body, checked; raises ValueError."""
    out = {}
    if "quota" in arg:
        if not isinstance(arg["quota"], bool):
            raise ValueError("quota: true|false")
        out["quota"] = arg["quota"]
    if "quota_limits" in arg:
        limits = arg["quota_limits"]
        if not isinstance(limits, dict):
            raise ValueError('quota_limits: {"Operation": [rate, burst], ...}')
        parsed = {}
        for op, pair in limits.items():
            if (not isinstance(pair, list) or len(pair) != 2
                    or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                               for x in pair)
                    or pair[0] <= 0 or pair[1] < 1):
                raise ValueError(f"quota_limits.{op}: [rate > 0, burst >= 1]")
            parsed[op] = (float(pair[0]), float(pair[1]))
        out["quota_limits"] = parsed
    if "throttle_next" in arg:
        nxt = arg["throttle_next"]
        if not isinstance(nxt, dict) or not all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in nxt.values()):
            raise ValueError('throttle_next: {"Operation": N >= 0, ...}')
        out["throttle_next"] = dict(nxt)
    return out


# ---------------------------------------------------------------------------
# HTTP


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeSecurityHub/1.0"

    # set on the class by main()
    state: State
    access_key: str
    secret_key: str
    region: str
    extra_credentials: dict = {}

    def log_message(self, fmt, *args):
        sys.stderr.write("fake_securityhub: %s - %s\n" % (self.address_string(), fmt % args))

    # -- plumbing ----------------------------------------------------------

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload, headers: dict | None = None, gzip_body=False):
        data = json.dumps(payload).encode()
        if gzip_body:
            data = gzip.compress(data)
            headers = {**(headers or {}), "Content-Encoding": "gzip"}
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _dispatch(self):
        body = self._read_body()
        split = urlsplit(self.path)
        if split.path.startswith("/_fake/"):
            return self._control(split.path, body)
        return self._security_hub(split, body)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = _dispatch

    # -- control API -------------------------------------------------------

    def _control(self, path: str, body: bytes):
        st = self.state
        try:
            arg = json.loads(body) if body else None
        except ValueError as e:
            return self._send(400, {"message": f"bad JSON: {e}"})
        key = (self.command, path)
        if key == ("POST", "/_fake/findings"):
            if not isinstance(arg, list):
                return self._send(400, {"message": "body must be a list of findings"})
            with st.lock:
                for f in arg:
                    st.findings[(f["Id"], f["ProductArn"])] = copy.deepcopy(f)
                n = len(st.findings)
            return self._send(200, {"count": n})
        if key == ("GET", "/_fake/findings"):
            with st.lock:
                return self._send(200, list(st.findings.values()))
        if key == ("GET", "/_fake/requests"):
            with st.lock:
                return self._send(200, list(st.requests))
        if key == ("GET", "/_fake/stats"):
            with st.lock:
                for op in ("GetFindings", "BatchUpdateFindings"):
                    st.op_stats(op)
                return self._send(200, copy.deepcopy(st.stats))
        if key == ("POST", "/_fake/reset"):
            with st.lock:
                st.reset()
            return self._send(200, {"reset": True})
        if key == ("POST", "/_fake/config"):
            if not isinstance(arg, dict):
                return self._send(400, {"message": "body must be an object"})
            with st.lock:
                if "delay_ms" in arg:
                    st.delay_ms = int(arg["delay_ms"])
                if "page_size" in arg:
                    st.page_size = max(1, int(arg["page_size"]))
                if "gzip_batch_update" in arg:
                    if arg["gzip_batch_update"] not in ("off", "accept", "always"):
                        return self._send(400, {"message": "gzip_batch_update: off|accept|always"})
                    st.gzip_batch_update = arg["gzip_batch_update"]
                try:
                    quota_cfg = _parse_quota_config(arg)
                except ValueError as e:
                    return self._send(400, {"message": str(e)})
                if "quota" in quota_cfg:
                    st.quota = quota_cfg["quota"]
                if "quota_limits" in quota_cfg:
                    st.quota_limits = quota_cfg["quota_limits"]
                if "quota" in quota_cfg or "quota_limits" in quota_cfg:
                    st.refill()
                st.throttle_next.update(quota_cfg.get("throttle_next", {}))
                if "fail_next" in arg:
                    nxt = arg["fail_next"]
                    if not isinstance(nxt, dict) or not all(
                            isinstance(v, list) and len(v) == 3 and isinstance(v[0], int)
                            and isinstance(v[1], int) and isinstance(v[2], str)
                            for v in nxt.values()):
                        return self._send(400, {"message": "fail_next: {op: [N, status, type]}"})
                    st.fail_next = {k: list(v) for k, v in nxt.items()}
                if "answer_delay_ms" in arg:
                    delays = arg["answer_delay_ms"]
                    if not isinstance(delays, dict) or not all(
                            isinstance(v, int) and v >= 0 for v in delays.values()):
                        return self._send(400, {"message": "answer_delay_ms: {operation: ms}"})
                    st.answer_delay_ms = dict(delays)
                if "hold_label_ms" in arg:
                    hold = arg["hold_label_ms"]
                    if not isinstance(hold, dict) or not all(
                            isinstance(v, int) and v >= 0 for v in hold.values()):
                        return self._send(400, {"message": "hold_label_ms: {label: ms}"})
                    st.hold_label_ms = dict(hold)
                if "apply_delay_ms" in arg:
                    lag = arg["apply_delay_ms"]
                    if not isinstance(lag, int) or lag < 0:
                        return self._send(400, {"message": "apply_delay_ms: ms"})
                    st.apply_delay_ms = lag
                cfg = st.config_view()
            return self._send(200, cfg)
        return self._send(404, {"message": f"no control route {self.command} {path}"})

    # -- Security Hub ------------------------------------------------------

    def _security_hub(self, split, body: bytes):
        st = self.state
        request_id = str(uuid.uuid4())
        record = {
            "method": self.command,
            "path": split.path,
            "raw_path": self.path,
            "query": split.query,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body": body.decode("utf-8", errors="replace"),
            "body_b64": base64.b64encode(body).decode(),
            "request_id": request_id,
            "time": time.time(),
        }
        with st.lock:
            st.requests.append(record)
            delay = st.delay_ms
            gzip_mode = st.gzip_batch_update
        if delay:
            time.sleep(delay / 1000.0)
        headers = {"x-amzn-RequestId": request_id}
        try:
            record["access_key"] = verify_sigv4(
                self.command, self.path, self.headers, body, self.access_key,
                self.secret_key, self.region, self.extra_credentials)
            record["signature_valid"] = True
            op_name = OPERATIONS.get((self.command, split.path))
            if op_name is not None:
                record["operation"] = op_name
                with st.lock:
                    admitted = st.admit(op_name)
                    failure = None if not admitted else st.failure(op_name)
                if failure is not None:
                    record["status"] = failure[0]
                    headers["x-amzn-ErrorType"] = failure[1]
                    return self._send(failure[0], {"__type": failure[1],
                                                   "message": "injected failure"}, headers)
                if not admitted:
                    record["throttled"] = True
                    record["status"] = 429
                    headers["x-amzn-ErrorType"] = "TooManyRequestsException"
                    return self._send(429, {"__type": "TooManyRequestsException",
                                            "message": "Rate exceeded"}, headers)
            op = ROUTES.get((self.command, split.path))
            if op is None:
                raise ApiError(404, "ResourceNotFoundException",
                               f"no such route {self.command} {split.path}")
            try:
                req = json.loads(body) if body else {}
            except ValueError:
                raise ApiError(400, "InvalidInputException", "request body is not valid JSON")
            if op_name == "BatchUpdateFindings" and isinstance(req.get("Severity"), dict):
                with st.lock:
                    hold = st.hold_label_ms.get(str(req["Severity"].get("Label")), 0)
                if hold:
                    time.sleep(hold / 1000.0)
            result = op(st, req)
            with st.lock:
                answer_delay = st.answer_delay_ms.get(op_name or "", 0)
            if answer_delay:
                time.sleep(answer_delay / 1000.0)
        except ApiError as e:
            if "signature_valid" not in record:
                record["signature_valid"] = False
                record["signature_error"] = e.message
            headers["x-amzn-ErrorType"] = e.error_type
            record["status"] = e.status
            return self._send(e.status, {"message": e.message}, headers)
        record["status"] = 200
        if op_name == "BatchUpdateFindings":
            with st.lock:
                bs = st.op_stats(op_name)
                bs["findings_processed"] += len(result["ProcessedFindings"])
                bs["findings_unprocessed"] += len(result["UnprocessedFindings"])
        gzip_body = (self.command, split.path) == ("PATCH", "/findings/batchupdate") and (
            gzip_mode == "always"
            or (gzip_mode == "accept" and accepts_gzip(self.headers.get("Accept-Encoding"))))
        record["gzipped"] = gzip_body
        return self._send(200, result, headers, gzip_body=gzip_body)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--access-key", required=True)
    p.add_argument("--secret-key", required=True)
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--credentials", action="append", default=[], metavar="AK:SK",
                   help="another access key id and secret the fake accepts (repeatable)")
    args = p.parse_args(argv)
    extra = {}
    for pair in args.credentials:
        key, sep, secret = pair.partition(":")
        if not sep or not key or not secret:
            p.error(f"--credentials {pair!r} is not AK:SK")
        extra[key] = secret

    Handler.state = State()
    Handler.access_key = args.access_key
    Handler.secret_key = args.secret_key
    Handler.region = args.region
    Handler.extra_credentials = extra
    # socketserver listens with a backlog of 5: 20 clients connecting at once on a busy
    # machine overflowed it, and some got "connection reset by peer" instead of an answer.
    ThreadingHTTPServer.request_queue_size = 128
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    sys.stderr.write(f"fake_securityhub: listening on {args.host}:{server.server_address[1]}\n")
    sys.stderr.flush()
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
