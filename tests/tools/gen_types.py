#!/usr/bin/env python3
"""Generate src/request/model.rs: typed request bodies of the operations hubgate judges.

One Rust type per botocore shape reachable from each judged operation's request shape:

    structure -> struct, serde(deny_unknown_fields); a required member is a plain field (missing
                 is an error), an optional one is Option<T> read with `present`, so that an
                 explicit `null` is an error, never an absent member
    list      -> Vec<T>;  map -> BTreeMap<String, T>
    string    -> String, or an enum with one variant per model value (and `as_str`)
    integer, long -> i64: serde refuses a JSON number with a fraction or an exponent (3.0, 1e1)
                 and -0, which serde_json reads as floats
    double, float -> f64;  boolean -> bool;  blob -> String
    timestamp, document, union -> Opaque (any non-null JSON value; the schema checks it)

BatchImportFindings carries whole ASFF findings (hundreds of resource shapes). Only the members
of AwsSecurityFinding that policies can judge are typed (scalars, enums, lists and maps of them,
and the structures in IMPORT_TYPED); every other member is Opaque: present, non-null, and
checked by the operation's JSON Schema, but not modelled here.

Usage (from the repo root, with the project venv):
    .venv/bin/python tests/tools/gen_types.py            # write src/request/model.rs
    .venv/bin/python tests/tools/gen_types.py --check    # exit 1 if the file is stale
    .venv/bin/python tests/tools/gen_types.py --stdout   # print instead of writing

tests/model/test_generated_types.py regenerates the file and compares.
"""

import argparse
import re
import subprocess
import sys
from pathlib import Path

import botocore
import botocore.session

REPO = Path(__file__).resolve().parents[2]
OUTPUT = REPO / "src" / "request" / "model.rs"
SCRIPT = "tests/tools/gen_types.py"
SERVICE = "securityhub"

# The operations hubgate judges, in the order of src/request.rs's `Judged` enum.
JUDGED = ["BatchUpdateFindings", "BatchUpdateFindingsV2", "UpdateFindings", "BatchImportFindings"]

# Structures below AwsSecurityFinding that are typed for imports; the rest is Opaque.
IMPORT_TYPED = {
    "AwsSecurityFinding",
    "Severity",
    "Workflow",
    "Note",
    "FindingProviderFields",
    "FindingProviderSeverity",
    "RelatedFinding",
}

RUST_KEYWORDS = {
    "as", "break", "const", "continue", "crate", "else", "enum", "extern", "false", "fn", "for",
    "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return",
    "self", "static", "struct", "super", "trait", "true", "type", "unsafe", "use", "where",
    "while", "async", "await", "dyn", "abstract", "become", "box", "do", "final", "macro",
    "override", "priv", "typeof", "unsized", "virtual", "yield", "try",
}


def snake(name):
    s = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    s = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", s)
    s = re.sub(r"[^A-Za-z0-9]+", "_", s).strip("_").lower()
    if s[0].isdigit():
        s = "n_" + s
    return f"r#{s}" if s in RUST_KEYWORDS else s


def camel(value):
    parts = [p for p in re.split(r"[^A-Za-z0-9]+", value) if p]
    s = "".join(p[:1].upper() + p[1:].lower() for p in parts)
    if not s or s[0].isdigit():
        s = "V" + s
    return s


class Generator:
    def __init__(self, model):
        self.model = model
        self.items = {}  # Rust type name -> source text
        self.order = []

    def is_import_scope(self, scope):
        return scope == "import"

    def rust_type(self, shape, scope):
        """The Rust type for a use of `shape`; emits named types on first use."""
        t = shape.type_name
        if t == "structure":
            if shape.metadata.get("union") or shape.metadata.get("document"):
                return "Opaque"
            if scope == "import" and shape.name not in IMPORT_TYPED:
                return "Opaque"
            self.emit_struct(shape, scope)
            return shape.name
        if t == "list":
            inner = self.rust_type(shape.member, scope)
            return "Opaque" if inner == "Opaque" else f"Vec<{inner}>"
        if t == "map":
            inner = self.rust_type(shape.value, scope)
            return "Opaque" if inner == "Opaque" else f"BTreeMap<String, {inner}>"
        if t == "string":
            if shape.enum:
                self.emit_enum(shape)
                return shape.name
            return "String"
        if t in ("integer", "long"):
            return "i64"
        if t in ("double", "float"):
            return "f64"
        if t == "boolean":
            return "bool"
        if t == "blob":
            return "String"
        return "Opaque"  # timestamp, document

    def emit_enum(self, shape):
        name = shape.name
        if name in self.items:
            return
        self.items[name] = None
        variants = [(camel(v), v) for v in shape.enum]
        if len({v for v, _ in variants}) != len(variants):
            raise SystemExit(f"{name}: enum values collide as Rust variants; extend camel() in {SCRIPT}")
        lines = [
            f"/// Model enum `{name}`.",
            "#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]",
            f"pub enum {name} {{",
        ]
        for variant, value in variants:
            lines.append(f'    #[serde(rename = "{value}")]')
            lines.append(f"    {variant},")
        lines.append("}")
        lines.append("")
        lines.append(f"impl {name} {{")
        lines.append("    /// The value as the model spells it.")
        lines.append("    pub fn as_str(self) -> &'static str {")
        lines.append("        match self {")
        for variant, value in variants:
            lines.append(f'            {name}::{variant} => "{value}",')
        lines.append("        }")
        lines.append("    }")
        lines.append("}")
        self.items[name] = "\n".join(lines)
        self.order.append(name)

    def emit_struct(self, shape, scope):
        name = shape.name
        if name in self.items:
            return
        self.items[name] = None  # placeholder: recursion stops here
        required = set(shape.required_members)
        fields = []
        seen = set()
        for member, mshape in shape.members.items():
            loc = mshape.serialization.get("location")
            if loc:
                raise SystemExit(f"{name}.{member} is bound to {loc}; hubgate only judges body members")
            field = snake(member)
            if field in seen:
                raise SystemExit(f"{name}: member names collide as Rust fields ({field})")
            seen.add(field)
            ty = self.rust_type(mshape, scope)
            fields.append((member, field, ty, member in required))
        lines = [
            f"/// Model structure `{name}`.",
            "#[derive(Debug, Clone, Deserialize)]",
            "#[serde(deny_unknown_fields)]",
            f"pub struct {name} {{",
        ]
        for member, field, ty, req in fields:
            if req:
                lines.append(f'    #[serde(rename = "{member}")]')
                lines.append(f"    pub {field}: {ty},")
            else:
                lines.append(f'    #[serde(rename = "{member}", default, deserialize_with = "present")]')
                lines.append(f"    pub {field}: Option<{ty}>,")
        lines.append("}")
        lines.append("")
        lines.append(f"impl {name} {{")
        lines.append("    /// The model names of the members this value sets, in model order.")
        lines.append("    pub fn members_set(&self) -> Vec<&'static str> {")
        required_names = ", ".join(f'"{m}"' for m, _, _, req in fields if req)
        optional = [(m, f) for m, f, _, req in fields if not req]
        mut = "mut " if optional else ""
        if required_names:
            lines.append(f"        let {mut}out = vec![{required_names}];")
        else:
            lines.append(f"        let {mut}out = Vec::with_capacity({len(optional)});")
        for member, field in optional:
            lines.append(f"        if self.{field}.is_some() {{")
            lines.append(f'            out.push("{member}");')
            lines.append("        }")
        lines.append("        out")
        lines.append("    }")
        lines.append("}")
        self.items[name] = "\n".join(lines)
        self.order.append(name)


def render(model=None):
    model = model or botocore.session.get_session().get_service_model(SERVICE)
    gen = Generator(model)
    for op in JUDGED:
        shape = model.operation_model(op).input_shape
        gen.emit_struct(shape, "import" if op == "BatchImportFindings" else "update")
    api = model.metadata.get("apiVersion", "?")
    head = [
        f"// @generated by {SCRIPT} from the botocore {botocore.__version__} model of {SERVICE} (API {api}).",
        "// Do not edit: change the script and regenerate. tests/model/test_generated_types.py checks",
        "// that this file equals the script's output.",
        "//",
        f"// {len(gen.order)} types for {', '.join(JUDGED)}.",
        "",
        "use std::collections::BTreeMap;",
        "",
        "use serde::Deserialize;",
        "",
        "use super::{present, Opaque};",
        "",
    ]
    body = "\n\n".join(gen.items[n] for n in sorted(gen.order))
    return rustfmt("\n".join(head) + "\n" + body + "\n")


def rustfmt(text):
    """The text as `cargo fmt` leaves it, so formatting the tree never makes the file stale."""
    r = subprocess.run(["rustfmt", "--edition", "2021", "--emit", "stdout"], input=text,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"rustfmt failed on the generated file: {r.stderr}")
    return r.stdout


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
