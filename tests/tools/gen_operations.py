#!/usr/bin/env python3
"""Generate src/routes/operations.rs from the botocore Security Hub model.

One OperationSpec per operation of the model (all of them), sorted by name, with the HTTP method,
the requestUri path template (labels kept as the model writes them: `{X}` is one percent-encoded
path segment, `{X+}` is greedy and may span `/`), a routing class and whether the operation can
change findings, their state or their visibility.

Usage (from the repo root, with the project venv):
    .venv/bin/python tests/tools/gen_operations.py            # write src/routes/operations.rs
    .venv/bin/python tests/tools/gen_operations.py --check    # exit 1 if the file is stale
    .venv/bin/python tests/tools/gen_operations.py --stdout   # print instead of writing

tests/model/test_operations_table.py regenerates the file and compares, so the committed table
cannot drift from the model in the venv.
"""

import argparse
import re
import sys
from pathlib import Path

import botocore
import botocore.session

REPO = Path(__file__).resolve().parents[2]
OUTPUT = REPO / "src" / "routes" / "operations.rs"
SCRIPT = "tests/tools/gen_operations.py"
SERVICE = "securityhub"

# The only operation whose body hubgate checks against policy.
GUARDED = {"BatchUpdateFindings"}

# Name prefixes of operations that only read. Their requests are authenticated and forwarded.
READ_ONLY_PREFIXES = ("Get", "List", "Describe", "BatchGet")

# Operations whose name starts with a read-only prefix but which must not be treated as reads.
# Every operation of the 1.44.5 model that has such a prefix was checked against its documentation
# and only reads; the set is empty, and kept so that a future exception has one obvious place.
# (If an operation listed in CHANGES_FINDINGS ever gets a read-only prefix, generation fails.)
READ_ONLY_PREFIX_EXCEPTIONS = {
    # "OperationName": "reason",
}

# Operations that do not have a read-only prefix, look like reads, and stay Blocked on purpose.
# Listed so that the choice is visible; they get Class::Blocked like every other operation.
NOT_READ_ONLY_NOTES = {
    "GenerateRecommendedPolicyV2": (
        "POST /recommendedPolicyV2/{MetadataUid} 'begins the recommended policy generation': it starts "
        "server-side work for a finding, so it is not a read (its reader is GetRecommendedPolicyV2)"
    ),
    "StartExportJobV2": "starts an export of findings to a destination (202 Accepted): data leaves the hub",
    "CancelExportJobV2": "changes the state of an export job",
}

# Operations that can change findings, their state or their visibility
# (/work/shared/research/securityhub-api.md section 1.2).
CHANGES_FINDINGS = {
    "BatchUpdateFindings",
    "BatchUpdateFindingsV2",
    "UpdateFindings",
    "BatchImportFindings",
    # automation rules, V1 and V2
    "CreateAutomationRule",
    "BatchUpdateAutomationRules",
    "BatchDeleteAutomationRules",
    "CreateAutomationRuleV2",
    "UpdateAutomationRuleV2",
    "DeleteAutomationRuleV2",
    # controls and standards
    "UpdateStandardsControl",
    "BatchUpdateStandardsControlAssociations",
    "BatchDisableStandards",
    "UpdateSecurityControl",
    "UpdateSecurityHubConfiguration",
    # hub, product subscriptions, administrator relationship
    "DisableSecurityHub",
    "DisableSecurityHubV2",
    "DisableImportFindingsForProduct",
    "DisassociateFromAdministratorAccount",
    "DisassociateFromMasterAccount",
    # central configuration
    "CreateConfigurationPolicy",
    "UpdateConfigurationPolicy",
    "StartConfigurationPolicyAssociation",
    "StartConfigurationPolicyDisassociation",
}

LABEL = re.compile(r"^\{[A-Za-z0-9_]+\+?\}$")


def load_model():
    return botocore.session.get_session().get_service_model(SERVICE)


def classify(name):
    if name in GUARDED:
        return "Guarded"
    if name.startswith(READ_ONLY_PREFIXES) and name not in READ_ONLY_PREFIX_EXCEPTIONS:
        return "ReadOnly"
    return "Blocked"


def split_uri(request_uri):
    """Return (path, query) of a requestUri; query is None when there is none."""
    path, sep, query = request_uri.partition("?")
    return path, (query if sep else None)


def segments(path):
    assert path.startswith("/"), path
    return path[1:].split("/")


def check_template(path):
    """Labels must be whole segments and a greedy label must be last; the router relies on it."""
    segs = segments(path)
    for i, seg in enumerate(segs):
        if "{" in seg or "}" in seg:
            assert LABEL.match(seg), f"label is not a whole segment: {path}"
            if seg.endswith("+}"):
                assert i == len(segs) - 1, f"greedy label not last: {path}"
        else:
            assert seg, f"empty segment in {path}"


def _kind(seg):
    if seg.startswith("{"):
        return "greedy" if seg.endswith("+}") else "label"
    return "literal"


def templates_overlap(a, b):
    """True if some concrete path is matched by both path templates."""

    def go(x, y):
        if not x or not y:
            return not x and not y
        kx, ky = _kind(x[0]), _kind(y[0])
        if kx == "greedy" or ky == "greedy":
            return True  # a greedy label swallows one or more segments, and both sides have one
        if kx == "literal" and ky == "literal" and x[0] != y[0]:
            return False
        return go(x[1:], y[1:])

    return go(segments(a), segments(b))


def build(model):
    names = sorted(model.operation_names)
    missing = (GUARDED | CHANGES_FINDINGS | set(READ_ONLY_PREFIX_EXCEPTIONS) | set(NOT_READ_ONLY_NOTES)) - set(names)
    if missing:
        raise SystemExit(f"operations named in {SCRIPT} are not in the model: {sorted(missing)}")
    ops = []
    for name in names:
        http = model.operation_model(name).http
        path, query = split_uri(http["requestUri"])
        check_template(path)
        cls = classify(name)
        changes = name in CHANGES_FINDINGS
        if changes and cls == "ReadOnly":
            raise SystemExit(f"{name} changes findings but would be ReadOnly; add it to READ_ONLY_PREFIX_EXCEPTIONS")
        ops.append(
            {
                "name": name,
                "method": http["method"],
                "path": path,
                "query": query,
                "request_uri": http["requestUri"],
                "class": cls,
                "changes_findings": changes,
            }
        )
    pairs = {}
    for op in ops:
        key = (op["method"], op["path"])
        if key in pairs:
            raise SystemExit(f"{key} is used by {pairs[key]} and {op['name']}")
        pairs[key] = op["name"]
    return ops


def overlaps(ops):
    """(method, literal-ish template, other template, names) for same-method templates that overlap."""
    out = []
    for i, a in enumerate(ops):
        for b in ops[i + 1:]:
            if a["method"] == b["method"] and templates_overlap(a["path"], b["path"]):
                out.append((a, b))
    return out


def rust_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(model=None):
    model = model or load_model()
    ops = build(model)
    version = botocore.__version__
    api_version = model.metadata.get("apiVersion", "?")
    counts = {c: sum(1 for o in ops if o["class"] == c) for c in ("Guarded", "ReadOnly", "Blocked")}
    lines = [
        f"// @generated by {SCRIPT} from the botocore {version} model of {SERVICE} (API {api_version}).",
        "// Do not edit: change the script and regenerate. tests/model/test_operations_table.py checks",
        "// that this file equals the script's output.",
        "//",
        f"// {len(ops)} operations: {counts['Guarded']} Guarded, {counts['ReadOnly']} ReadOnly, "
        f"{counts['Blocked']} Blocked; {sum(o['changes_findings'] for o in ops)} change findings.",
        "// `path` is the model's requestUri template without any query part. `{X}` is one path",
        "// segment (clients percent-encode the value, `/` included); `{X+}` is greedy, one or more",
        "// segments, and is always last.",
    ]
    stripped = [o for o in ops if o["query"] is not None]
    if stripped:
        lines.append("// requestUri query parts stripped:")
        for o in stripped:
            lines.append(f"//   {o['name']}: {o['request_uri']}")
    else:
        lines.append("// No requestUri in this model has a query part.")
    ov = overlaps(ops)
    if ov:
        lines.append("// Same-method templates that match a common path (the router must prefer literal")
        lines.append("// segments over labels):")
        for a, b in ov:
            lines.append(f"//   {a['method']} {a['path']} ({a['name']}) ~ {b['path']} ({b['name']})")
    lines += [
        "//",
        "// Classes are defined in src/routes.rs:",
        "// pub enum Class { Guarded, ReadOnly, Blocked }",
        "// pub struct OperationSpec { pub name: &'static str, pub method: &'static str, pub path: &'static str, "
        "pub class: Class, pub changes_findings: bool }",
        "",
        "use super::{Class, OperationSpec};",
        "",
        "pub(super) const OPERATIONS: &[OperationSpec] = &[",
    ]
    for o in ops:
        if o["query"] is not None:
            lines.append(f"    // requestUri {o['request_uri']}: query part stripped")
        lines += [
            "    OperationSpec {",
            f"        name: {rust_str(o['name'])},",
            f"        method: {rust_str(o['method'])},",
            f"        path: {rust_str(o['path'])},",
            f"        class: Class::{o['class']},",
            f"        changes_findings: {'true' if o['changes_findings'] else 'false'},",
            "    },",
        ]
    lines.append("];")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--check", action="store_true", help="exit 1 if the output file differs")
    g.add_argument("--stdout", action="store_true", help="print the generated file")
    ap.add_argument("--output", type=Path, default=OUTPUT)
    args = ap.parse_args(argv)
    text = render()
    if args.stdout:
        sys.stdout.write(text)
        return 0
    if args.check:
        current = args.output.read_text() if args.output.exists() else None
        if current != text:
            print(f"{args.output} is stale; run {SCRIPT}", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
