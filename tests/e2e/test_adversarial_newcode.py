"""Adversarial checks of members' reads (src/reads.rs) and hubgate's own credentials
(CredentialSource in src/upstream.rs)."""

import datetime as dt
import json
import socket
import threading
import time

import pytest

from helpers import (UPSTREAM_KEY, UPSTREAM_SECRET, assert_envelope, hubgate_env, ident,
                     wait_until)


def creds_answer(hours=1.0):
    expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=hours)
    body = json.dumps({"AccessKeyId": UPSTREAM_KEY, "SecretAccessKey": UPSTREAM_SECRET,
                       "Token": "session-token",
                       "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}).encode()
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)


class BodyStallSource:
    """A container credentials endpoint whose first connection gets a response head and half
    a body, then nothing (held open up to `hold` s); every later connection a good answer."""

    def __init__(self, hold=40.0):
        self.hold = hold
        self.connections = 0
        self.done = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def close(self):
        self.done.set()
        self.sock.close()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn, self.connections),
                             daemon=True).start()

    def _answer(self, conn, n):
        with conn:
            conn.settimeout(5)
            try:
                conn.recv(65536)
                if n == 1:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: 400\r\n\r\n{\"AccessKeyId\": ")
                    self.done.wait(self.hold)
                    return
                conn.sendall(creds_answer())
            except OSError:
                pass


def env_with(uri):
    env = {k: v for k, v in hubgate_env().items()
           if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = uri
    return env


NOTE = {"FindingIdentifiers": [ident("f-admin")], "Note": {"Text": "t", "UpdatedBy": "u"}}


class ExpiredCredentialSource:
    """A container credentials endpoint that hands out hubgate's upstream keys with an
    Expiration an hour past: the fake Security Hub does not check the session token's
    expiry, AWS does (403 ExpiredTokenException)."""

    def __init__(self):
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
            with conn:
                conn.settimeout(5)
                try:
                    conn.recv(65536)
                    conn.sendall(creds_answer(hours=-1))
                except OSError:
                    pass


def test_expired_credentials_from_the_source_are_not_used(make_fake, make_hubgate):
    """A credential source that gives credentials already expired (a clock skew, a stale
    cache in the source): hubgate used to sign with them, and Security Hub's 403
    ExpiredTokenException reached the caller as if its own request were refused for good.
    hubgate refuses them: 502, retryable, and nothing forwarded."""
    source = ExpiredCredentialSource()
    try:
        fake = make_fake()
        hg = make_hubgate({"upstream": {"timeout_ms": 2000}}, fake=fake,
                          env=env_with(f"http://127.0.0.1:{source.port}/creds"), start=False)
        hg.start(ready_path="/healthz")
        resp = hg.buf(NOTE, who="admin")
        body = assert_envelope(resp, 502, "UPSTREAM_UNAVAILABLE", "InternalException")
        assert "credentials that expired" in body["error"]["message"], body
        assert fake.buf_calls() == [], "nothing was signed with expired credentials"
        assert fake.findings()["f-admin"]["Note"]["Text"] == "seed"
        assert hg.admin("/readyz").status_code == 503
        before = source.connections
        assert hg.buf(NOTE, who="admin").status == 502
        assert source.connections > before, "expired credentials are not kept"
    finally:
        source.sock.close()
