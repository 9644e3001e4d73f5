"""Adversarial review of session 50's new code (7ae8fb3..e27a061), against the real binary.

- HOLE (fixed): `hubgate check`'s new lint of deny/warn/needs_state rules outside package
  hubgate (ced8027) took any mention of the rule's package in another file as a read of it:
  a helper of the same package read from hubgate.rego (`data.hubgate.custom.blocked`, the
  usual layout: a team's list beside its deny rule), an `import` of that helper, or a comment
  or message naming the package. The team's deny rule was never read, refused nothing, and
  check said "valid". A rule now counts as read only where code names it
  (`data.hubgate.custom.deny`) or its package whole (`import data.hubgate.custom`,
  `data.hubgate.custom[k]`), comments and strings left out.
- HOLE (fixed): `hubgate test` fails a test file that defines a served rule (ecf479d), but not
  one that defines a rule the served rules READ and no policy file defines: a served `deny`
  reading `data.hubgate.blocked_products` (or a bare `blocked_products`), with the list written
  beside its test in `package hubgate`, was tested with the list, passed, `hubgate test` and
  `hubgate check` exited 0, and serve (without test files) never refused it (eval: ALLOW).
  Such a definition now fails the run, named by file:line; a helper of the tests' own, or a
  name the served rules use as a local variable, does not.
- HOLE (fixed): `hubgate check`'s new lint of `data.NAME` references nothing provides (b781065)
  read the first member only, so the same set checked "valid": `data.hubgate.blocked_products`
  begins with a package's name (hubgate), and no rule of that package provides the member.
  Below a package each member must now be a rule or a package of the set (below a data.json
  value or a rule, anything goes, as before); the unit test's `data.other.z` beside a
  `package other.sub` alone, which it took as provided, is undefined too and is now named.
- Held (read, no test added: the session's own unit and e2e tests pin them): two-level quota
  turns. A caller's account and principal come from the callers file (ids unique, accounts
  checked), never from the request; the pacer takes its two lines in one order only (caller,
  then account; nothing takes them the other way, and both guards drop when `acquire`
  returns); the lookup queue and the lines drop an account's and a caller's entries when they
  empty (the lines stay one per caller of the file, as before); hubgate's own lookups still
  wait as one ticket (`acquire_shared`, no line); the empty CallerId of `send` is unreachable
  (the principal is set before any forward).
- Held: Retry-After is set in one place (`Rejection::to_response`), which every 429/503
  hubgate writes goes through (max_connections included); 1..=60 s from the pace for
  THROTTLED (NaN and 0 rates clamp), the settle window for STATE_SETTLING, 1 s otherwise;
  never on 4xx/5xx that ask for no retry; a passthrough 429 from AWS goes back untouched.
- Held: mTLS name constraints. A chain is classified by every CA that MAY be on its path
  (presented intermediates, any client_ca anchor whose subject issued a presented certificate,
  by raw bytes as webpki matches), taking the least-binding: an extra or same-subject CA can
  only bind more (a 401, never a wider name); excluded-only DNS subtrees are checked by webpki
  as permitted ones are; a reload re-classifies open connections.
- Held: callers-file checks (a BOM or zero-width space in a secret, a key id with `/`, `,` or
  whitespace refused at load; a refused key id is quoted only when shaped like one);
  passthrough forwards of writes are refused for members unless listed; the import scope is
  filtered to account ids before Redis; every audit writer path (hubgate, OCSF, masked, the
  stderr fallback) serialises through LineSafe; verify refuses pipes and devices; SIGTERM,
  SIGINT and SIGQUIT while starting exit 0 before the proxy accepts; the native sidecar's
  startupProbe is on the admin port (0.0.0.0), not the loopback proxy; `hubgate test`'s
  definitions (defaults and `:=` definitions included) each run alone.
- Noticed, left alone: `check`'s lints read text, not the compiled set: a package reached
  through an import alias (`import data.hubgate as h; h.custom.deny`) is read as not read
  (a false positive, as before), and `data.`-lint and `hubgate test`'s reading of served
  rules do not follow aliases into members (`import data.lists as l; l.nope`), nor locals
  introduced by unification or iteration (`x = ...`, `input.a[i]`). A Retry-After of 1 s
  after Security Hub throttled a resign forward is shorter than the slowed pace may be (a
  retry then waits in hubgate, up to max_wait_ms). The passthrough claim of a known key id
  without its secret takes that caller's place in its account's line now (documented in
  README: Passthrough).
"""

from __future__ import annotations

import shutil

import pytest

from helpers import MEMBER_ACCOUNT, POLICY_DIR, run_hubgate
from test_adversarial_authoring2 import config_for, write




# ---------------------------------------------------------------------------
# HOLE (fixed): check took a mention of a package for a read of its deny rule

TEAM = """package hubgate.custom

blocked := {"arn:aws:securityhub:us-east-1::product/aws/guardduty"}

deny contains {"msg": "members may not change GuardDuty findings", "finding": null} if {
	input.principal.role == "member"
	some f in input.findings
	f.ProductArn in blocked
}
"""

READERS = {
    # hubgate.rego's own rule reads the team's list, not its deny rule
    "helper": """package hubgate

warn contains {"msg": "a blocked product", "finding": null} if {
	some f in input.findings
	f.ProductArn in data.hubgate.custom.blocked
}
""",
    "imported_helper": """package hubgate

import data.hubgate.custom.blocked

warn contains {"msg": "a blocked product", "finding": null} if {
	some f in input.findings
	f.ProductArn in blocked
}
""",
    "comment": """package hubgate

# Team rules live in data.hubgate.custom (see custom.rego).
warn contains {"msg": "never", "finding": null} if false
""",
}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_check_names_a_team_deny_rule_beside_a_helper_hubgate_reads(tmp_path, reader):
    policies = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, policies)
    (policies / "custom.rego").write_text(TEAM)
    (policies / "reader.rego").write_text(READERS[reader])
    r = run_hubgate("check", "--config", config_for(tmp_path, policies))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "custom.rego:5: data.hubgate.custom.deny is never read" in r.stderr, r.stderr
    # read from package hubgate, by its path: valid
    (policies / "reader.rego").write_text(
        READERS[reader] + "\ndeny contains v if some v in data.hubgate.custom.deny\n")
    r = run_hubgate("check", "--config", config_for(tmp_path, policies))
    assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------------------
# HOLE (fixed): a rule the served deny reads, defined only beside its test

GUARDDUTY = "arn:aws:securityhub:us-east-1::product/aws/guardduty"

BLOCKED_RULE = """package hubgate

member if input.principal.role == "member"

deny contains {"msg": "members may not change findings of a blocked product", "finding": null} if {
	member
	some f in input.findings
	f.ProductArn in data.hubgate.blocked_products
}
"""

BLOCKED_TEST = f"""package hubgate

blocked_products := {{"{GUARDDUTY}"}}

mock := {{"principal": {{"role": "member"}}, "findings": [{{"ProductArn": "{GUARDDUTY}"}}]}}

test_blocked_product_denied if {{
	d := deny with input as mock
	count(d) == 1
}}
"""


def test_a_rule_the_served_deny_reads_defined_only_beside_its_test_fails_the_run(tmp_path):
    policies = tmp_path / "own"
    policies.mkdir()
    shutil.copytree(POLICY_DIR / "schemas", policies / "schemas")
    write(policies / "rules.rego", BLOCKED_RULE)
    write(policies / "blocked_test.rego", BLOCKED_TEST)
    # the list is not there, so the deny would never hold: eval (as serve and reload, since
    # stop 55) refuses the set rather than allow
    req = write(tmp_path / "req.json", {
        "FindingIdentifiers": [{"Id": "f-1", "ProductArn": GUARDDUTY}],
        "Note": {"Text": "x", "UpdatedBy": "y"}})
    e = run_hubgate("eval", "--config", config_for(tmp_path, policies), "--request", req,
                    "--as", f"member:{MEMBER_ACCOUNT}")
    assert e.returncode != 0 and "ALLOW" not in e.stdout, e.stdout + e.stderr
    assert "data.hubgate.blocked_products" in e.stderr, e.stderr
    r = run_hubgate("test", str(policies))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAIL " in r.stdout and "blocked_test.rego:3 data.hubgate.blocked_products" in r.stdout, \
        r.stdout
    # the test's own helper (mock) is not named
    assert "data.hubgate.mock" not in r.stdout, r.stdout


# ---------------------------------------------------------------------------
# HOLE (fixed): check took data.hubgate.<anything> as provided by package hubgate


def test_check_names_a_package_member_no_rule_provides(tmp_path):
    policies = tmp_path / "own"
    policies.mkdir()
    shutil.copytree(POLICY_DIR / "schemas", policies / "schemas")
    write(policies / "rules.rego", BLOCKED_RULE)
    write(policies / "blocked_test.rego", BLOCKED_TEST)
    # check reads the served files alone: the member nothing provides is named
    r = run_hubgate("check", "--config", config_for(tmp_path, policies))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "rules.rego:8: data.hubgate.blocked_products: no data.json has the key" in r.stderr, \
        r.stderr
    # provided by a rule of the package (moved out of the test file): valid, tests pass
    write(policies / "rules.rego", BLOCKED_RULE + f'\nblocked_products := {{"{GUARDDUTY}"}}\n')
    write(policies / "blocked_test.rego", BLOCKED_TEST.replace(
        f'blocked_products := {{"{GUARDDUTY}"}}\n', ""))
    r = run_hubgate("check", "--config", config_for(tmp_path, policies))
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_hubgate("test", str(policies))
    assert r.returncode == 0, r.stdout + r.stderr
