"""The AWS CLI pointed at hubgate with --endpoint-url."""

import subprocess

from helpers import ADMIN, MEMBER, PRODUCT_ARN, Creds, aws


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
