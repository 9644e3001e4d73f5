"""The policy author's commands: `hubgate eval`, `hubgate test --coverage --threshold`, `check`."""

import json
import shutil

import pytest

from helpers import POLICY_DIR, PRODUCT_ARN, REPO, run_hubgate

CONFIG = str(REPO / "config" / "demo" / "hubgate.toml")


def write(tmp_path, name, value):
    path = tmp_path / name
    path.write_text(json.dumps(value))
    return str(path)


@pytest.fixture
def request_file(tmp_path):
    return write(tmp_path, "req.json", {
        "FindingIdentifiers": [{"Id": "f-1", "ProductArn": PRODUCT_ARN},
                               {"Id": "f-2", "ProductArn": PRODUCT_ARN}],
        "Severity": {"Label": "LOW"}})


@pytest.fixture
def current_file(tmp_path):
    return write(tmp_path, "current.json", {"Findings": [
        {"Id": "f-1", "ProductArn": PRODUCT_ARN, "AwsAccountId": "222222222222",
         "Severity": {"Label": "HIGH"}, "Workflow": {"Status": "NEW"}}]})


def test_eval_explains_each_violation_with_its_rule(request_file, current_file):
    r = run_hubgate("eval", "--config", CONFIG, "--request", request_file,
                    "--principal", "demo-member", "--current", current_file)
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout
    assert "first pass (request only): ALLOW" in out
    assert "second pass (with finding state): DENY" in out
    assert "member accounts may not lower a finding's severity (HIGH to LOW) [finding f-1" in out
    assert "this account has no such finding [finding f-2" in out
    assert "hubgate.rego:" in out


def test_eval_stops_at_a_first_pass_denial(tmp_path):
    req = write(tmp_path, "s.json", {"FindingIdentifiers": [{"Id": "f", "ProductArn": PRODUCT_ARN}],
                                     "Workflow": {"Status": "SUPPRESSED"},
                                     "Note": {"Text": "RISK-1 accepted", "UpdatedBy": "sec"}})
    r = run_hubgate("eval", "--config", CONFIG, "--request", req, "--as", "member:222222222222")
    assert r.returncode == 1
    assert "first pass (request only): DENY" in r.stdout
    assert "second pass" not in r.stdout
    admin = run_hubgate("eval", "--config", CONFIG, "--request", req,
                        "--as", "administrator:111111111111")
    assert admin.returncode == 0, admin.stdout
    # an administrator's request needs no finding state: the first pass decides
    assert "first pass (request only): ALLOW" in admin.stdout
    assert "second pass" not in admin.stdout and "give --current" not in admin.stdout
    note = write(tmp_path, "n.json", {"FindingIdentifiers": [{"Id": "f", "ProductArn": PRODUCT_ARN}],
                                      "Note": {"Text": "triaged", "UpdatedBy": "m"}})
    member = run_hubgate("eval", "--config", CONFIG, "--request", note, "--as", "member:222222222222")
    assert member.returncode == 0, member.stdout
    assert "give --current" in member.stdout


def test_eval_prints_the_input_document(request_file, current_file):
    r = run_hubgate("eval", "--config", CONFIG, "--request", request_file, "--as",
                    "member:222222222222", "--current", current_file, "--input")
    text = r.stdout
    start = text.index("input (second pass (with finding state)):\n") + len(
        "input (second pass (with finding state)):\n")
    doc, _ = json.JSONDecoder().raw_decode(text[start:])
    assert doc["version"] == 1 and doc["enrichment"] == "complete"
    assert doc["summary"]["missing"] == 1
    assert [f["Id"] for f in doc["findings"]] == ["f-1", "f-2"]
    assert doc["findings"][0]["severity_rank"] == 3
    assert doc["update"]["severity_rank"] == 1
    assert "FindingIdentifiers" not in doc["request"]["body"]


def test_eval_reads_current_findings_as_serve_reads_them(request_file, tmp_path):
    """A finding whose UserDefinedFields key is spelled like serde_json's raw-value marker is
    an ordinary finding to eval, as to serve's lookups: judged, not an unreadable file."""
    current = write(tmp_path, "marker.json", {"Findings": [
        {"Id": "f-1", "ProductArn": PRODUCT_ARN, "AwsAccountId": "222222222222",
         "Severity": {"Label": "HIGH"}, "Workflow": {"Status": "NEW"},
         "UserDefinedFields": {"$serde_json::private::RawValue": "not json"}}]})
    r = run_hubgate("eval", "--config", CONFIG, "--request", request_file,
                    "--principal", "demo-member", "--current", current)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "member accounts may not lower a finding's severity (HIGH to LOW) [finding f-1" \
        in r.stdout, r.stdout + r.stderr


def test_eval_reports_validation_errors(tmp_path):
    bad = write(tmp_path, "bad.json", {"FindingIdentifiers": [], "Confidence": 101})
    r = run_hubgate("eval", "--config", CONFIG, "--request", bad, "--as", "member:222222222222")
    assert r.returncode == 1
    assert "VALIDATION_ERROR" in r.stdout and "/Confidence" in r.stdout


def test_coverage_threshold_gates(tmp_path):
    ok = run_hubgate("test", str(POLICY_DIR), "--coverage", "--threshold", "90")
    assert ok.returncode == 0, ok.stdout
    assert "total" in ok.stdout and "passed, 0 failed" in ok.stdout
    # a rule no test reaches lowers coverage below 100%
    policies = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, policies)
    (policies / "untested.rego").write_text(
        'package hubgate\n\ndeny contains {"msg": "never tested", "finding": null} if {\n'
        '\tinput.operation == "NoSuchOperation"\n\tinput.update.fields[_] == "Types"\n}\n')
    low = run_hubgate("test", str(policies), "--coverage", "--threshold", "100")
    assert low.returncode == 1, low.stdout
    assert "below the threshold" in low.stdout
    assert "untested.rego" in low.stdout


def test_a_failing_rego_test_fails_the_run(tmp_path):
    policies = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, policies)
    (policies / "extra_test.rego").write_text(
        "package extra_test\n\nimport data.hubgate\n\n"
        "test_admins_cannot_suppress if {\n"
        "\tcount(hubgate.deny) > 0 with input as {\"principal\": {\"role\": \"administrator\"}, "
        "\"operation\": \"BatchUpdateFindings\", \"update\": {\"fields\": [\"Workflow.Status\"], \"workflow_status\": \"NOTIFIED\"}, "
        "\"enrichment\": \"pending\"}\n}\n")
    r = run_hubgate("test", str(policies))
    assert r.returncode == 1
    assert "FAIL" in r.stdout and "extra_test.rego:5 test_admins_cannot_suppress" in r.stdout
    assert "1 failed" in r.stdout


def test_check_refuses_a_broken_policy_set(tmp_path):
    policies = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, policies)
    (policies / "hubgate.rego").write_text("package hubgate\n\ndeny contains x if {\n")
    config = tmp_path / "hubgate.toml"
    config.write_text(f'[identity]\ncallers = "{REPO / "config" / "callers.toml"}"\n'
                      f'[policy]\ndir = "{policies}"\n')
    r = run_hubgate("check", "--config", str(config))
    assert r.returncode == 1
    assert "hubgate.rego" in r.stderr
