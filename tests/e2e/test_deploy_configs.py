"""The hubgate.toml files that deploy/kubernetes ships are configurations hubgate accepts, and
the TLS one (the tls/ component) serves HTTPS with a certificate where the Secret puts it."""

import subprocess
import tomllib
import urllib.request

import pytest
import yaml

from helpers import HUBGATE_BIN, REPO, free_port, hubgate_env, run_hubgate, wait_until
from pki import CA, client_context, try_https_get

K8S = REPO / "deploy" / "kubernetes"


def configmap_toml(path) -> str:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc["kind"] == "ConfigMap" and "hubgate.toml" in doc.get("data", {}):
            return doc["data"]["hubgate.toml"]
    raise AssertionError(f"no hubgate.toml in {path}")


def localize(text: str, root, proxy: int = 18080, admin: int = 19090) -> str:
    """The pod's paths and addresses, moved to a temp folder and loopback."""
    return (text.replace("/etc/hubgate/", f"{root}/etc/")
                .replace("/opt/hubgate/policies", str(REPO / "policies"))
                .replace("/var/log/hubgate/", f"{root}/log/")
                .replace('"0.0.0.0:8080"', f'"127.0.0.1:{proxy}"')
                .replace('"0.0.0.0:8443"', f'"127.0.0.1:{proxy}"')
                .replace('"0.0.0.0:9090"', f'"127.0.0.1:{admin}"'))


def gateway_folder(tmp_path, toml: str, proxy: int = 18080, admin: int = 19090):
    """The gateway pod's files: hubgate.toml, the callers Secret (secrets filled in), a
    certificate pair where the hubgate-tls Secret is mounted."""
    (tmp_path / "etc" / "callers").mkdir(parents=True)
    (tmp_path / "etc" / "tls").mkdir()
    (tmp_path / "log").mkdir()
    secret = next(d for d in yaml.safe_load_all((K8S / "secret.yaml").read_text())
                  if d and d["metadata"]["name"] == "hubgate-callers")
    (tmp_path / "etc" / "callers" / "callers.toml").write_text(secret["stringData"]["callers.toml"])
    (tmp_path / "etc" / "callers" / "soar-runner.secret").write_text("soar-runner-secret-0123456789\n")
    ca = CA()
    server = ca.issue(cn="hubgate.hubgate.svc", dns=["hubgate.hubgate.svc", "localhost"],
                      ips=["127.0.0.1"], server=True, key_kind="ec")
    (tmp_path / "etc" / "tls" / "tls.crt").write_bytes(server.cert_pem())
    server.write(tmp_path, "server", key_format="sec1")
    (tmp_path / "etc" / "tls" / "tls.key").write_bytes((tmp_path / "server.key").read_bytes())
    ca_file = ca.write(tmp_path / "ca.pem")
    config = tmp_path / "etc" / "hubgate.toml"
    config.write_text(localize(toml, tmp_path, proxy, admin))
    env = hubgate_env() | {"HUBGATE_SECRET_SECOPS_ADMIN": "secops-admin-secret-0123456789",
                           "HUBGATE_AUDIT_HMAC_KEY": "00112233445566778899aabbccddeeff",
                           # the replicas' pods get it from redis-password.yaml
                           "HUBGATE_REDIS_PASSWORD": "redis-password-0123456789"}
    return config, env, ca_file


@pytest.mark.parametrize("configmap", ["configmap.yaml", "tls/configmap.yaml",
                                       "../kubernetes-replicas/coordination-config.yaml"])
def test_gateway_configmaps_pass_check(tmp_path, configmap):
    config, env, _ = gateway_folder(tmp_path, configmap_toml(K8S / configmap))
    r = subprocess.run([str(HUBGATE_BIN), "check", "--config", str(config)], env=env,
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "is valid" in r.stdout


def test_tls_configmap_is_the_gateway_configmap_with_tls():
    """tls/configmap.yaml replaces the whole hubgate.toml: it must not drift from the base."""
    base = tomllib.loads(configmap_toml(K8S / "configmap.yaml"))
    tls = tomllib.loads(configmap_toml(K8S / "tls" / "configmap.yaml"))
    assert tls["server"].pop("tls_cert") == "/etc/hubgate/tls/tls.crt"
    assert tls["server"].pop("tls_key") == "/etc/hubgate/tls/tls.key"
    assert tls["server"].pop("listen") == "0.0.0.0:8443"
    assert base["server"].pop("listen") == "0.0.0.0:8080"
    assert tls == base


def test_replicas_configmap_is_the_gateway_configmap_with_coordination():
    """The replicas overlay replaces the whole hubgate.toml too: only [coordination] differs."""
    base = tomllib.loads(configmap_toml(K8S / "configmap.yaml"))
    replicas = tomllib.loads(configmap_toml(REPO / "deploy" / "kubernetes-replicas"
                                            / "coordination-config.yaml"))
    assert replicas.pop("coordination")["redis_url"].startswith("redis://")
    assert replicas == base


def test_sidecar_configmap_passes_check(tmp_path):
    doc = next(d for d in yaml.safe_load_all((K8S / "sidecar" / "configmap.yaml").read_text()) if d)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "callers.toml").write_text(doc["data"]["callers.toml"])
    config = tmp_path / "etc" / "hubgate.toml"
    config.write_text(localize(doc["data"]["hubgate.toml"], tmp_path))
    r = run_hubgate("check", "--config", str(config))
    assert r.returncode == 0, r.stdout + r.stderr


def test_tls_configmap_serves_https(tmp_path):
    proxy, admin = free_port(), free_port()
    config, env, ca_file = gateway_folder(tmp_path, configmap_toml(K8S / "tls" / "configmap.yaml"),
                                          proxy, admin)
    proc = subprocess.Popen([str(HUBGATE_BIN), "serve", "--config", str(config)], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=(tmp_path / "stderr").open("w"))
    try:
        def ready():
            if proc.poll() is not None:
                raise AssertionError((tmp_path / "stderr").read_text())
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=2) as r:
                return r.status == 200 and r.read()
        body = wait_until(ready, 30, "/readyz of the TLS gateway config")
        assert b'"tls":{' in body, body
        got, err = try_https_get(proxy, client_context(ca_file), "/healthz")
        assert err is None and got.startswith(b"HTTP/1.1 "), (got, err)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
