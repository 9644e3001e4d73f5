#!/usr/bin/env bash
# hubgate's local demo, no AWS account needed: builds hubgate, starts a local Security Hub
# stand-in on 127.0.0.1 (the test suite's fake, tests/fake_securityhub.py) seeded with a few
# findings, starts hubgate in front of it with config/demo/hubgate.toml, installs the AWS CLI
# into .venv and prints the commands to try. Ctrl-C stops both.
#
# Needs a Rust toolchain and Python 3 (3.9 or newer, with its venv module).
#
# Environment (all optional):
#   HUBGATE_BIN                 use this hubgate binary instead of building one
#   HUBGATE_DEMO_PORT           proxy port (default 8080)
#   HUBGATE_DEMO_ADMIN_PORT     admin port (default 9090)
#   HUBGATE_DEMO_UPSTREAM_PORT  the stand-in's port (default 8085)
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
DEMO=config/demo

PORT=${HUBGATE_DEMO_PORT:-8080}
ADMIN_PORT=${HUBGATE_DEMO_ADMIN_PORT:-9090}
UPSTREAM_PORT=${HUBGATE_DEMO_UPSTREAM_PORT:-8085}
# The stand-in accepts only these (made-up) keys; hubgate signs with them as it would sign for
# Security Hub with its own AWS credentials.
UPSTREAM_KEY=HGDEMOUPSTREAM000001
UPSTREAM_SECRET=demo-upstream-secret

say() { printf '%s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

# 1. hubgate
if [ -n "${HUBGATE_BIN:-}" ]; then
    HUBGATE=$HUBGATE_BIN
else
    say "==> Building hubgate (cargo build). The first build compiles about 300 crates and"
    say "    takes 5 to 13 minutes (2 CPU cores: about 10); later runs take seconds."
    command -v cargo >/dev/null || die "cargo not found: install Rust from https://rustup.rs"
    cargo build --locked
    HUBGATE=$REPO/target/debug/hubgate
fi
[ -x "$HUBGATE" ] || die "$HUBGATE is not an executable"

# 2. Python: botocore for the stand-in, and the AWS CLI (pinned, into .venv)
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    say "==> Creating .venv (Python virtual environment)"
    "$PYTHON" -m venv .venv || die "'$PYTHON -m venv' failed (on Debian/Ubuntu: apt install python3-venv)"
fi
say "==> Installing the AWS CLI and botocore into .venv ($DEMO/requirements.txt)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$DEMO/requirements.txt"

# 3. the configuration: the committed one, or a copy with other ports
CONFIG=$DEMO/hubgate.toml
WORK=$(mktemp -d "${TMPDIR:-/tmp}/hubgate-demo.XXXXXX")
if [ "$PORT:$ADMIN_PORT:$UPSTREAM_PORT" != "8080:9090:8085" ]; then
    CONFIG=$WORK/hubgate.toml
    sed -e "s|127.0.0.1:8080|127.0.0.1:$PORT|" \
        -e "s|127.0.0.1:9090|127.0.0.1:$ADMIN_PORT|" \
        -e "s|127.0.0.1:8085|127.0.0.1:$UPSTREAM_PORT|" \
        -e "s|^callers = \"callers.toml\"|callers = \"$REPO/$DEMO/callers.toml\"|" \
        -e "s|^dir = \"../../policies\"|dir = \"$REPO/policies\"|" \
        "$DEMO/hubgate.toml" >"$CONFIG"
fi

# Background jobs in their own process groups: Ctrl-C reaches only this script, whose trap
# stops hubgate with one SIGTERM (a second signal would make it exit without draining).
set -m
FAKE_PID=
HUBGATE_PID=
stop() {
    trap - INT TERM EXIT
    # hubgate drains and flushes its audit log on SIGTERM; then the stand-in can go.
    if [ -n "$HUBGATE_PID" ] && kill -0 "$HUBGATE_PID" 2>/dev/null; then
        kill -TERM "$HUBGATE_PID" 2>/dev/null || true
        wait "$HUBGATE_PID" 2>/dev/null || true
    fi
    if [ -n "$FAKE_PID" ] && kill -0 "$FAKE_PID" 2>/dev/null; then
        kill -TERM "$FAKE_PID" 2>/dev/null || true
        wait "$FAKE_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap 'say ""; say "==> Stopping"; stop; exit 0' INT TERM
trap stop EXIT

# Waits until URL answers 200, or the process PID exits (then fails).
wait_for() {
    local url=$1 pid=$2 what=$3
    for _ in $(seq 1 150); do
        if ! kill -0 "$pid" 2>/dev/null; then
            [ "$pid" != "$FAKE_PID" ] || cat "$WORK/stand-in.log" >&2
            die "$what exited before it was ready (its output is above)"
        fi
        if .venv/bin/python - "$url" <<'EOF' 2>/dev/null; then return 0; fi
import sys, urllib.request
sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=1).status == 200 else 1)
EOF
        sleep 0.2
    done
    die "$what did not answer on $url within 30 s"
}

# 4. the Security Hub stand-in, seeded
say "==> Starting the local Security Hub stand-in on 127.0.0.1:$UPSTREAM_PORT"
# Its request log would drown the audit records; it goes to a file shown if it fails.
.venv/bin/python tests/fake_securityhub.py --host 127.0.0.1 --port "$UPSTREAM_PORT" \
    --access-key "$UPSTREAM_KEY" --secret-key "$UPSTREAM_SECRET" --region us-east-1 \
    >"$WORK/stand-in.log" 2>&1 &
FAKE_PID=$!
wait_for "http://127.0.0.1:$UPSTREAM_PORT/_fake/findings" "$FAKE_PID" "the stand-in"
.venv/bin/python - "http://127.0.0.1:$UPSTREAM_PORT/_fake/findings" "$DEMO/findings.json" <<'EOF'
import sys, urllib.request
body = open(sys.argv[2], "rb").read()
req = urllib.request.Request(sys.argv[1], data=body, method="POST",
                             headers={"Content-Type": "application/json"})
urllib.request.urlopen(req, timeout=5).read()
EOF

# 5. hubgate, with the stand-in's keys as its AWS credentials and nothing of yours
say "==> Starting hubgate ($CONFIG)"
env -u AWS_PROFILE -u AWS_SESSION_TOKEN -u AWS_ROLE_ARN -u AWS_WEB_IDENTITY_TOKEN_FILE \
    AWS_ACCESS_KEY_ID="$UPSTREAM_KEY" AWS_SECRET_ACCESS_KEY="$UPSTREAM_SECRET" \
    AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null \
    AWS_EC2_METADATA_DISABLED=true AWS_REGION=us-east-1 \
    "$HUBGATE" serve --config "$CONFIG" &
HUBGATE_PID=$!
wait_for "http://127.0.0.1:$ADMIN_PORT/readyz" "$HUBGATE_PID" "hubgate"

ENDPOINT=http://127.0.0.1:$PORT
ARN=arn:aws:securityhub:us-east-1::product/aws/securityhub
AWS="AWS_CONFIG_FILE=$DEMO/aws-config AWS_SHARED_CREDENTIALS_FILE=/dev/null .venv/bin/aws"
cat <<EOF

==> The demo is running: hubgate on $ENDPOINT (admin: http://127.0.0.1:$ADMIN_PORT/readyz),
    in front of a local Security Hub stand-in seeded with 3 findings
    ($DEMO/findings.json). Each request's audit record appears below as one JSON line.

In another terminal, in $REPO, try (the AWS CLI is in .venv/bin/aws;
profiles and demo keys in $DEMO/aws-config):

1. The administrator suppresses a member's finding: allowed, the CLI prints ProcessedFindings.

    $AWS --profile hubgate-demo-admin securityhub batch-update-findings --endpoint-url $ENDPOINT --finding-identifiers Id=demo-s3-bucket-public,ProductArn=$ARN --workflow Status=SUPPRESSED --note Text="accepted risk SEC-42",UpdatedBy=demo-admin

2. The member suppresses its own finding: denied (AccessDeniedException: POLICY_DENIED).

    $AWS --profile hubgate-demo-member securityhub batch-update-findings --endpoint-url $ENDPOINT --finding-identifiers Id=demo-root-mfa,ProductArn=$ARN --workflow Status=SUPPRESSED

3. The member lowers its finding's severity from CRITICAL to LOW: denied.

    $AWS --profile hubgate-demo-member securityhub batch-update-findings --endpoint-url $ENDPOINT --finding-identifiers Id=demo-root-mfa,ProductArn=$ARN --severity Label=LOW

Then look at what the stand-in holds (read-only calls are forwarded):

    $AWS --profile hubgate-demo-admin securityhub get-findings --endpoint-url $ENDPOINT --query 'Findings[].[Id,Severity.Label,Workflow.Status]' --output table

To have hubgate on your PATH: cargo install --path . --locked   (a release build, 5 to 13 minutes)
Press Ctrl-C to stop hubgate and the stand-in.

EOF

# Runs until Ctrl-C, or until hubgate exits on its own.
status=0
wait "$HUBGATE_PID" || status=$?
HUBGATE_PID=
[ "$status" -eq 0 ] || die "hubgate exited with status $status"
