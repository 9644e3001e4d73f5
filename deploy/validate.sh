#!/usr/bin/env bash
# Validates what deploy/ ships: renders each kustomization and checks it against the Kubernetes
# API schemas of the versions README claims (strict: unknown fields fail), lints the
# Dockerfile with hadolint, and parses every IAM document. Installs its Python tools (pinned,
# deploy/requirements-validate.txt) into .venv-deploy. Renders with `kubectl kustomize` or
# `kustomize build`, whichever is on PATH. Each step is time-bounded; any error fails.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSIONS=${K8S_VERSIONS:-"1.30.0 1.31.0"}   # preStop.sleep needs 1.30
PYTHON=${PYTHON:-python3}
step() { printf '\n==> %s\n' "$*"; }

step "tools (.venv-deploy, deploy/requirements-validate.txt)"
[ -x .venv-deploy/bin/python ] || "$PYTHON" -m venv .venv-deploy
timeout 300 .venv-deploy/bin/python -m pip install --quiet --disable-pip-version-check \
    -r deploy/requirements-validate.txt
if command -v kubectl >/dev/null; then
    render() { timeout 60 kubectl kustomize "$1"; }
elif command -v kustomize >/dev/null; then
    render() { timeout 60 kustomize build "$1"; }
else
    echo "deploy/validate.sh: needs kubectl (>= 1.27) or kustomize (>= 5) on PATH to render" \
         "deploy/kubernetes" >&2
    exit 1
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for k in deploy/kubernetes deploy/kubernetes/sidecar-example; do
    name=$(echo "$k" | tr / _)
    step "render $k"
    render "$k" >"$out/$name.yaml"
    for v in $VERSIONS; do
        step "kubernetes-validate --strict -k $v $k"
        timeout 120 .venv-deploy/bin/kubernetes-validate --strict --quiet -k "$v" "$out/$name.yaml"
    done
done
# Custom resources (PodMonitor) have no schema in kubernetes-validate: parse them at least.
step "YAML of deploy/kubernetes/monitoring"
for f in deploy/kubernetes/monitoring/*.yaml; do
    .venv-deploy/bin/python -c 'import sys, yaml; list(yaml.safe_load_all(open(sys.argv[1])))' "$f"
done

step "hadolint deploy/Dockerfile"
timeout 60 .venv-deploy/bin/hadolint deploy/Dockerfile

step "json.tool deploy/aws/*.json"
for f in deploy/aws/*.json; do
    .venv-deploy/bin/python -m json.tool "$f" >/dev/null || { echo "invalid JSON: $f" >&2; exit 1; }
done
echo "deploy/: valid"
