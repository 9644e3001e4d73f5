"""src/routes/operations.rs must be exactly what tests/tools/gen_operations.py makes from the
botocore model in the venv, and its classification must keep hubgate's invariants.

Run: .venv/bin/pytest tests/model/test_operations_table.py
Fix a stale table: .venv/bin/python tests/tools/gen_operations.py
"""

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import botocore.session
import pytest

REPO = Path(__file__).resolve().parents[2]
GEN_PATH = REPO / "tests" / "tools" / "gen_operations.py"
RUST_PATH = REPO / "src" / "routes" / "operations.rs"


def load_gen():
    spec = importlib.util.spec_from_file_location("gen_operations", GEN_PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


gen = load_gen()

ENTRY = re.compile(
    r"    OperationSpec \{\n"
    r'        name: "(?P<name>[A-Za-z0-9]+)",\n'
    r'        method: "(?P<method>[A-Z]+)",\n'
    r'        path: "(?P<path>[^"]*)",\n'
    r"        class: Class::(?P<cls>Guarded|ReadOnly|Blocked),\n"
    r"        changes_findings: (?P<changes>true|false),\n"
    r"    \},\n"
)


@pytest.fixture(scope="module")
def model():
    return botocore.session.get_session().get_service_model("securityhub")


@pytest.fixture(scope="module")
def committed():
    return RUST_PATH.read_text()


@pytest.fixture(scope="module")
def table(committed):
    """The committed Rust table parsed back: name -> entry."""
    entries = [m.groupdict() for m in ENTRY.finditer(committed)]
    body = committed[committed.index("= &[\n") + 5: committed.rindex("];")]
    assert ENTRY.sub("", body).strip() == "", "operations.rs has content the parser does not understand"
    for e in entries:
        e["changes"] = e["changes"] == "true"
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names)), "duplicate operation names"
    return {e["name"]: e for e in entries}


def test_committed_file_equals_generator_output(committed, model):
    fresh = gen.render(model)
    assert committed == fresh, (
        "src/routes/operations.rs differs from the generator's output for botocore "
        f"{botocore.__version__}: run .venv/bin/python tests/tools/gen_operations.py"
    )


def test_one_entry_per_model_operation_sorted(table, model, committed):
    assert sorted(table) == sorted(model.operation_names)
    assert len(table) == len(model.operation_names) == 126
    order = [m.group("name") for m in ENTRY.finditer(committed)]
    assert order == sorted(order)


def test_methods_and_paths_come_from_the_model(table, model):
    for name, e in table.items():
        http = model.operation_model(name).http
        assert e["method"] == http["method"], name
        assert e["path"] == http["requestUri"].split("?", 1)[0], name
        assert "?" not in e["path"], name


def test_method_path_pairs_are_unique(table):
    pairs = [(e["method"], e["path"]) for e in table.values()]
    assert len(pairs) == len(set(pairs))


def test_exactly_one_guarded(table):
    assert [n for n, e in table.items() if e["cls"] == "Guarded"] == ["BatchUpdateFindings"]
    buf = table["BatchUpdateFindings"]
    assert (buf["method"], buf["path"], buf["changes"]) == ("PATCH", "/findings/batchupdate", True)


def test_get_findings_is_read_only(table):
    e = table["GetFindings"]
    assert (e["method"], e["path"], e["cls"], e["changes"]) == ("POST", "/findings", "ReadOnly", False)


def test_update_findings_is_blocked(table):
    e = table["UpdateFindings"]
    assert (e["method"], e["path"], e["cls"], e["changes"]) == ("PATCH", "/findings", "Blocked", True)


@pytest.mark.parametrize(
    "name",
    ["BatchUpdateFindingsV2", "BatchImportFindings", "CreateAutomationRule", "CreateAutomationRuleV2",
     "GenerateRecommendedPolicyV2", "StartExportJobV2", "TagResource", "UpdateInsight"],
)
def test_other_writes_are_blocked(table, name):
    assert table[name]["cls"] == "Blocked"


def test_changes_findings_is_never_read_only(table):
    flagged = {n for n, e in table.items() if e["changes"]}
    assert flagged == gen.CHANGES_FINDINGS
    for n in flagged:
        assert table[n]["cls"] != "ReadOnly", n
    for n in flagged - {"BatchUpdateFindings"}:
        assert table[n]["cls"] == "Blocked", n


def test_read_only_follows_name_prefixes(table):
    for n, e in table.items():
        prefixed = n.startswith(gen.READ_ONLY_PREFIXES) and n not in gen.READ_ONLY_PREFIX_EXCEPTIONS
        assert (e["cls"] == "ReadOnly") == prefixed, n


def test_exception_lists_name_real_operations(model):
    names = set(model.operation_names)
    for group in (gen.GUARDED, gen.CHANGES_FINDINGS, set(gen.READ_ONLY_PREFIX_EXCEPTIONS), set(gen.NOT_READ_ONLY_NOTES)):
        assert group <= names, group - names


def test_known_route_overlaps(table):
    """Same-method templates that can match the same concrete path. A new one needs a look at the router."""
    ops = [
        {"name": n, "method": e["method"], "path": e["path"]} for n, e in sorted(table.items())
    ]
    found = {(a["method"], a["name"], b["name"]) for a, b in gen.overlaps(ops)}
    assert found == {("GET", "GetAutomationRuleV2", "ListAutomationRulesV2")}


def test_overlap_helper():
    assert gen.templates_overlap("/a/{X}", "/a/list")
    assert not gen.templates_overlap("/a/{X}", "/a/b/c")
    assert gen.templates_overlap("/a/{X+}", "/a/b/c")
    assert not gen.templates_overlap("/a/{X+}", "/a")
    assert not gen.templates_overlap("/a/b", "/a/c")


def test_split_uri_strips_query():
    assert gen.split_uri("/x/{Y}?tagKeys={K}") == ("/x/{Y}", "tagKeys={K}")
    assert gen.split_uri("/x") == ("/x", None)


def test_header_names_generator_and_botocore_version(committed):
    head = committed.splitlines()[0]
    assert "@generated" in head and "tests/tools/gen_operations.py" in head
    assert f"botocore {botocore.__version__}" in head


@pytest.mark.skipif(shutil.which("rustfmt") is None, reason="rustfmt not installed")
def test_rustfmt_leaves_it_unchanged(committed, tmp_path):
    # rustfmt skips files marked @generated by default; check a copy without the marker.
    copy = tmp_path / "operations.rs"
    copy.write_text(committed.replace("@generated", "generated", 1))
    r = subprocess.run(["rustfmt", "--check", "--edition", "2021", str(copy)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
