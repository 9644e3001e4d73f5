"""The AWS CLI pointed at hubgate with --endpoint-url."""

import os
import subprocess

from helpers import ADMIN, MEMBER, PRODUCT_ARN, REGION, REPO, Creds

AWS_CLI = REPO / ".venv" / "bin" / "aws"


def aws(hubgate, creds: Creds, *args) -> subprocess.CompletedProcess:
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


def suppress(hubgate, creds: Creds, finding_id: str) -> subprocess.CompletedProcess:
    return aws(hubgate, creds, "batch-update-findings",
               "--finding-identifiers", f"Id={finding_id},ProductArn={PRODUCT_ARN}",
               "--workflow", "Status=SUPPRESSED",
               "--note", "Text=RISK-1 accepted,UpdatedBy=cli")


def test_cli_member_suppress_fails_with_reason(hubgate):
    r = suppress(hubgate, MEMBER, "f-own-high")
    assert r.returncode != 0, r
    assert "AccessDeniedException" in r.stderr, r.stderr
    assert "member accounts may not suppress findings" in r.stderr, r.stderr
    assert hubgate.fake.requests() == []
    assert hubgate.fake.findings()["f-own-high"]["Workflow"]["Status"] == "NEW"


def test_cli_admin_suppress_succeeds(hubgate):
    r = suppress(hubgate, ADMIN, "f-own-high")
    assert r.returncode == 0, r.stderr
    assert '"ProcessedFindings"' in r.stdout and "f-own-high" in r.stdout, r.stdout
    assert hubgate.fake.findings()["f-own-high"]["Workflow"]["Status"] == "SUPPRESSED"
    assert len(hubgate.fake.buf_calls()) == 1
