#!/usr/bin/env python3
"""Generate JSON Schema 2020-12 files for Security Hub request bodies from the botocore model.

Writes policies/schemas/<Operation>.json for each operation in OPERATIONS. The schema describes the
JSON body botocore's rest-json serializer sends for the operation, as the model defines it:

    structure -> object: properties, required, additionalProperties false
                 (a union also gets minProperties 1 / maxProperties 1; a document shape accepts any
                 JSON value)
    list      -> array: items, minItems/maxItems from the model's min/max
    map       -> object: additionalProperties = value schema, propertyNames = key schema when the key
                 shape has constraints, minProperties/maxProperties from min/max
    string    -> string: enum, pattern (rewritten to an ECMA-262-safe form, see PATTERN_REWRITES),
                 minLength/maxLength
    integer, long -> integer with minimum/maximum; double, float -> number with minimum/maximum
    boolean   -> boolean; blob -> string (base64)
    timestamp -> string when the shape says timestampFormat iso8601/rfc822; otherwise number
                 (epoch seconds, what botocore's JSON serializer sends by default)

Every structure, list and map shape, and every scalar shape with a constraint, becomes one entry
of `$defs` named after the shape and is used through `$ref`, so shared and recursive shapes are
written once. Plain scalars are inlined. The request shape itself is the root. Members bound to
the URI, query string or headers (a `location` other than the body) are left out; none of the
operations below has one today (generation notes it in the description if that changes).

Constraints that the model only states in a documentation string are added from DOC_EXTRAS; each
one names the text it is derived from, and generation fails when the model's documentation no
longer says it.

Usage (from the repo root, with the project venv):
    .venv/bin/python tests/tools/gen_schemas.py            # write the schema files
    .venv/bin/python tests/tools/gen_schemas.py --check    # exit 1 if any file is stale
    .venv/bin/python tests/tools/gen_schemas.py --stdout BatchUpdateFindingsV2   # print one

tests/model/test_generated_schemas.py regenerates the files and compares, and checks that each
schema accepts bodies botocore serialises and rejects broken ones.
"""

import argparse
import json
import re
import sys
from pathlib import Path

import botocore
import botocore.session

REPO = Path(__file__).resolve().parents[2]
OUTPUT_DIR = REPO / "policies" / "schemas"
SCRIPT = "tests/tools/gen_schemas.py"
SERVICE = "securityhub"
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

# Operations whose request bodies are generated. (BatchUpdateFindings.json is hand-written and
# checked by tests/model/test_schema_model.py.)
OPERATIONS = ("BatchUpdateFindingsV2", "UpdateFindings", "BatchImportFindings")

# Model patterns are ECMA-262 regexes, not anchored (Smithy `pattern` semantics, the same as JSON
# Schema's). Some are rewritten to an equivalent that every engine treats alike:
#   '.*\S.*' (NonEmptyString) matches a string iff it holds a non-whitespace character, which the
#   unanchored '\S' says without the '.' (which excludes line terminators in ECMA-262 and differs
#   between engines in what it excludes).
PATTERN_REWRITES = {
    ".*\\S.*": "\\S",
}

# Constructs whose meaning differs between ECMA 262, Python `re` and the Rust engines behind
# jsonschema-rs; a model pattern using one must get a PATTERN_REWRITES entry.
NON_PORTABLE = ("\\A", "\\Z", "\\z", "(?P", "(?i", "(?s", "(?m", "(?x", "\\d", "\\w", "\\b", "\\W", "\\D",
                "\\B", "[[:", "\\p", "\\P", "(?<", "\\k")


# Constraints the model states only in documentation strings.
# operation -> [(member, derive(doc) -> {keyword: value} or None)]; derive returns None when the
# documentation no longer says it, and generation fails.
def _enum_from_doc(doc):
    m = re.search(r"The (?:severity|status) ID is an integer with the allowed enum values \[([0-9, ]+)\]", doc)
    return {"enum": [int(x) for x in m.group(1).split(",")]} if m else None


def _status_enum_from_doc(doc):
    """StatusId's documented values plus 6 (OCSF status_id Deleted): SDK documentation disagrees
    on whether 6 is allowed, and refusing a value AWS may accept would break callers for nothing;
    hubgate maps every accepted value to a policy fact, so accepting it judges it."""
    got = _enum_from_doc(doc)
    if got is not None and 6 not in got["enum"]:
        got["enum"] = sorted(got["enum"] + [6])
    return got


def _length_from_doc(doc):
    m = re.search(r"Minimum character length (\d+)\. Maximum character length (\d+)\.", doc)
    return {"minLength": int(m.group(1)), "maxLength": int(m.group(2))} if m else None


DOC_EXTRAS = {
    "BatchUpdateFindingsV2": [
        ("SeverityId", _enum_from_doc),
        ("StatusId", _status_enum_from_doc),
        ("Comment", _length_from_doc),
    ],
}

def _constraint_length_from_doc(doc):
    m = re.search(r"Length Constraints: Minimum length of (\d+)\. Maximum length of (\d+)\.", doc)
    return {"minLength": int(m.group(1)), "maxLength": int(m.group(2))} if m else None


# The same for members of nested shapes: shape -> [(member, derive)]. An imported finding's
# identifiers are bounded as BatchUpdateFindings' are (policies/schemas/BatchUpdateFindings.json):
# hubgate keeps each imported finding's identifier for enrichment.settle_ms after the import, so
# an Id up to the body's size was held for minutes per finding, whatever Security Hub made of it.
SHAPE_DOC_EXTRAS = {
    "AwsSecurityFinding": [
        ("Id", _constraint_length_from_doc),
        ("ProductArn", _constraint_length_from_doc),
    ],
}

# Rules between members that the model states only in documentation strings.
# operation -> [(member whose doc says it, text that must be in that doc, {keyword: value} for the root,
#                what the description says about it)]
DOC_ROOT_EXTRAS = {
    "BatchUpdateFindingsV2": [
        (
            "MetadataUids",
            "Customers cannot use MetadataUids together with FindingIdentifiers.",
            {"not": {"required": ["MetadataUids", "FindingIdentifiers"]}},
            "MetadataUids and FindingIdentifiers not both (root not/required)",
        ),
    ],
}

SCALARS = {
    "string": "string",
    "integer": "integer",
    "long": "integer",
    "double": "number",
    "float": "number",
    "boolean": "boolean",
    "blob": "string",
}


def load_model():
    return botocore.session.get_session().get_service_model(SERVICE)


def plain(doc):
    """A documentation string without HTML tags and with collapsed whitespace."""
    text = re.sub(r"<[^>]+>", " ", doc or "")
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&amp;", "&")
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r" ([.,;:)])", r"\1", text)


def portable_pattern(pattern):
    """The ECMA-safe pattern for a model pattern (PATTERN_REWRITES), or fail if it is not portable."""
    out = PATTERN_REWRITES.get(pattern, pattern)
    re.compile(out)
    for bad in NON_PORTABLE:
        if bad in out:
            raise SystemExit(f"model pattern {pattern!r} uses {bad!r}; add a rewrite to PATTERN_REWRITES in {SCRIPT}")
    return out


class Converter:
    """Converts botocore shapes to schema nodes, collecting named shapes in `defs`."""

    def __init__(self):
        self.defs = {}
        self.rewritten = {}  # model pattern -> pattern written, for the ones rewritten
        self.dropped = []  # (structure, member, location) of members not in the body
        self.shape_extras = []  # (structure, member, {keyword: value}) from SHAPE_DOC_EXTRAS

    @staticmethod
    def needs_def(shape):
        if shape.type_name in ("structure", "list", "map"):
            return True
        meta = shape.metadata
        return any(k in meta for k in ("enum", "pattern", "min", "max")) or shape.type_name == "timestamp"

    def use(self, shape):
        """The schema node for a use of `shape` (a $ref, or an inline plain scalar)."""
        if not self.needs_def(shape):
            return self.convert(shape)
        if shape.name not in self.defs:
            self.defs[shape.name] = None  # placeholder: recursion stops here
            self.defs[shape.name] = self.convert(shape)
        return {"$ref": f"#/$defs/{shape.name}"}

    def convert(self, shape):
        t = shape.type_name
        meta = shape.metadata
        if t == "structure":
            return self.structure(shape)
        if t == "list":
            node = {"type": "array"}
            if "min" in meta:
                node["minItems"] = meta["min"]
            if "max" in meta:
                node["maxItems"] = meta["max"]
            node["items"] = self.use(shape.member)
            return node
        if t == "map":
            node = {"type": "object"}
            if "min" in meta:
                node["minProperties"] = meta["min"]
            if "max" in meta:
                node["maxProperties"] = meta["max"]
            key = shape.key
            if self.needs_def(key) and key.type_name == "string":
                node["propertyNames"] = self.use(key)
            elif key.type_name != "string":
                raise SystemExit(f"map {shape.name} has a {key.type_name} key; JSON object keys are strings")
            node["additionalProperties"] = self.use(shape.value)
            return node
        if t == "timestamp":
            fmt = shape.serialization.get("timestampFormat") or meta.get("timestampFormat")
            if fmt in ("iso8601", "rfc822"):
                return {"type": "string", "description": f"timestamp, {fmt}"}
            return {"type": "number", "description": "timestamp, epoch seconds"}
        if t not in SCALARS:
            raise SystemExit(f"shape {shape.name} has type {t}, which {SCRIPT} does not handle")
        node = {"type": SCALARS[t]}
        if t == "blob":
            node["contentEncoding"] = "base64"
        if t == "string":
            if meta.get("enum"):
                node["enum"] = list(meta["enum"])
            if "pattern" in meta:
                p = portable_pattern(meta["pattern"])
                if p != meta["pattern"]:
                    self.rewritten[meta["pattern"]] = p
                node["pattern"] = p
            if "min" in meta:
                node["minLength"] = meta["min"]
            if "max" in meta:
                node["maxLength"] = meta["max"]
        else:
            if "min" in meta:
                node["minimum"] = meta["min"]
            if "max" in meta:
                node["maximum"] = meta["max"]
        return node

    def body_members(self, shape):
        out = []
        for name, member in shape.members.items():
            loc = member.serialization.get("location")
            if loc not in (None, "body"):
                self.dropped.append((shape.name, name, loc))
                continue
            if member.serialization.get("name", name) != name:
                raise SystemExit(f"{shape.name}.{name} is sent as {member.serialization['name']!r}; not handled")
            out.append((name, member))
        return out

    def structure(self, shape, annotate=False, extras=None):
        meta = shape.metadata
        if meta.get("document"):
            return {"description": f"{shape.name}: a document (free-form JSON value) in the model"}
        node = {"type": "object", "additionalProperties": False}
        members = self.body_members(shape)
        names = [n for n, _ in members]
        required = [r for r in shape.required_members if r in names]
        if required:
            node["required"] = required
        if meta.get("union"):
            node["minProperties"] = 1
            node["maxProperties"] = 1
        extras = dict(extras or {})
        for name, derive in SHAPE_DOC_EXTRAS.get(shape.name, []):
            got = derive(plain(shape.members[name].documentation))
            if got is None:
                raise SystemExit(f"{shape.name}.{name}: the documentation no longer states what {SCRIPT} derives from it")
            extras[name] = got
            self.shape_extras.append((shape.name, name, got))
        props = {}
        for name, member in members:
            use = self.use(member)
            extra = extras.get(name)
            deprecated = bool(shape._shape_model.get("members", {}).get(name, {}).get("deprecated"))
            if annotate or extra or deprecated:
                prop = {}
                if annotate:
                    doc = plain(member.documentation)
                    if doc:
                        prop["description"] = doc
                if deprecated:
                    prop["deprecated"] = True
                prop.update(use)
                if extra:
                    prop.update(extra)
                use = prop
            props[name] = use
        node["properties"] = props
        return node


def doc_extras(op_name, shape):
    """{member: {keyword: value}} and root keywords from DOC_EXTRAS / DOC_ROOT_EXTRAS."""
    members = {}
    for member, derive in DOC_EXTRAS.get(op_name, []):
        doc = plain(shape.members[member].documentation)
        got = derive(doc)
        if got is None:
            raise SystemExit(f"{op_name}.{member}: the documentation no longer states what {SCRIPT} derives from it")
        members[member] = got
    root, labels = {}, []
    for member, text, kw, label in DOC_ROOT_EXTRAS.get(op_name, []):
        if text not in plain(shape.members[member].documentation):
            raise SystemExit(f"{op_name}.{member}: the documentation no longer says {text!r}")
        root.update(kw)
        labels.append(label)
    return members, root, labels


def build(op_name, model=None):
    """The schema (a dict) for the request body of one operation."""
    model = model or load_model()
    op = model.operation_model(op_name)
    shape = op.input_shape
    conv = Converter()
    member_extras, root_extras, root_labels = doc_extras(op_name, shape)
    root_node = conv.structure(shape, annotate=True, extras=member_extras)
    root_node.update(root_extras)

    http = op.http
    notes = []
    if conv.dropped:
        notes.append(
            "Members outside the body, left out: "
            + ", ".join(f"{s}.{m} ({loc})" for s, m, loc in conv.dropped) + "."
        )
    else:
        notes.append("All members of the request shape are in the body.")
    if conv.rewritten:
        notes.append(
            "Model patterns rewritten to an ECMA-262-safe equivalent: "
            + ", ".join(f"{json.dumps(a)} -> {json.dumps(b)}" for a, b in sorted(conv.rewritten.items())) + "."
        )
    if member_extras or root_extras or conv.shape_extras:
        parts = [f"{m} {' '.join(f'{k} {json.dumps(v)}' for k, v in kw.items())}" for m, kw in member_extras.items()]
        parts += [f"{s}.{m} {' '.join(f'{k} {json.dumps(v)}' for k, v in kw.items())}"
                  for s, m, kw in conv.shape_extras]
        parts += root_labels
        notes.append("Constraints taken from the model's documentation strings (not its shapes): " + "; ".join(parts) + ".")

    schema = {
        "$schema": SCHEMA_DIALECT,
        "title": f"{op_name} request body",
        "description": (
            f"Request body of Security Hub {op_name} ({http['method']} {http['requestUri']}), generated from "
            f"botocore {botocore.__version__} (service {SERVICE} {model.metadata.get('apiVersion', '?')}, shape "
            f"{shape.name}) by {SCRIPT}. Do not edit: change the script and regenerate. " + " ".join(notes)
        ),
    }
    schema.update(root_node)
    if conv.defs:
        schema["$defs"] = {name: conv.defs[name] for name in sorted(conv.defs)}
    return schema


def render(op_name, model=None):
    return json.dumps(build(op_name, model), indent=2, ensure_ascii=False) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--check", action="store_true", help="exit 1 if any output file differs")
    g.add_argument("--stdout", metavar="OPERATION", choices=OPERATIONS, help="print one generated schema")
    ap.add_argument("--output-dir", type=Path, default=OUTPUT_DIR)
    args = ap.parse_args(argv)
    model = load_model()
    if args.stdout:
        sys.stdout.write(render(args.stdout, model))
        return 0
    stale = []
    for op_name in OPERATIONS:
        text = render(op_name, model)
        path = args.output_dir / f"{op_name}.json"
        if args.check:
            current = path.read_text() if path.exists() else None
            if current != text:
                stale.append(path)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path} ({len(text.encode())} bytes)", file=sys.stderr)
    if stale:
        for path in stale:
            print(f"{path} is stale; run {SCRIPT}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
