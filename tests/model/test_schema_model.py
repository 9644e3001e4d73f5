"""policies/schemas/BatchUpdateFindings.json against the botocore model.

1. The schema's shape (members, required lists, enums, types, patterns, min/max) must match the
   botocore shape BatchUpdateFindingsRequest recursively. Every other constraint in the schema
   must be listed in EXTRAS below, and the doc string that justifies it must still be in the
   model. Drift on either side fails.
2. The schema accepts the bodies botocore serialises for typical calls and rejects each
   violation listed in BAD, at the JSON pointer given there.

Run: .venv/bin/pytest tests/model/test_schema_model.py
"""

import copy
import json
import re
from pathlib import Path

import botocore
import botocore.session
import botocore.serialize
import botocore.validate
import jsonschema
import pytest

REPO = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO / "policies" / "schemas" / "BatchUpdateFindings.json"

ANNOTATIONS = {"title", "description", "$comment", "examples", "$schema", "$defs", "default"}
STRUCTURAL = {"properties", "items", "propertyNames", "additionalProperties", "$ref"}

# The model's NonEmptyString pattern is '.*\S.*'; the schema says the same with an unanchored '\S'.
PATTERN_EQUIVALENTS = {".*\\S.*": "\\S"}

TYPES_PATTERN = (
    "^(Software and Configuration Checks|TTPs|Effects|Unusual Behaviors|Sensitive Data Identifications)"
    "(/[^/]*[^/\\s][^/]*){0,2}$"
)

# Constraints in the schema that the model's shapes do not carry.
# path -> ({keyword: value}, [(model shape name, member or None, text that must be in its doc)])
EXTRAS = {
    "FindingIdentifiers": (
        {"minItems": 1, "maxItems": 100},
        [("BatchUpdateFindingsRequest", "FindingIdentifiers", "up to 100 findings at a time")],
    ),
    "FindingIdentifiers[].Id": (
        {"maxLength": 512},
        [("AwsSecurityFinding", "Id", "Maximum length of 512")],
    ),
    "FindingIdentifiers[].ProductArn": (
        {"minLength": 12, "maxLength": 2048},
        [("AwsSecurityFinding", "ProductArn", "Minimum length of 12. Maximum length of 2048")],
    ),
    "Note.Text": (
        {"maxLength": 512},
        [("Note", "Text", "Maximum of 512")],
    ),
    "Severity": ({"minProperties": 1}, []),  # hubgate's choice: an empty Severity changes nothing
    "Types": (
        {"maxItems": 50},
        [("AwsSecurityFinding", "Types", "Maximum number of 50 items")],
    ),
    "Types[]": (
        {"pattern": TYPES_PATTERN},
        [
            ("BatchUpdateFindingsRequest", "Types", "namespace/category/classifier"),
            ("BatchUpdateFindingsRequest", "Types", "Software and Configuration Checks"),
            ("BatchUpdateFindingsRequest", "Types", "TTPs"),
            ("BatchUpdateFindingsRequest", "Types", "Effects"),
            ("BatchUpdateFindingsRequest", "Types", "Unusual Behaviors"),
            ("BatchUpdateFindingsRequest", "Types", "Sensitive Data Identifications"),
        ],
    ),
    "UserDefinedFields": (
        {"maxProperties": 50},
        [("AwsSecurityFinding", "UserDefinedFields", "up to 50 key-value pairs")],
    ),
    "UserDefinedFields{key}": (
        {"maxLength": 128},
        [("AwsSecurityFinding", "UserDefinedFields", "the key can contain up to 128 characters")],
    ),
    "UserDefinedFields{value}": (
        {"maxLength": 1024},
        [("AwsSecurityFinding", "UserDefinedFields", "the value can contain up to 1024 characters")],
    ),
    "RelatedFindings": (
        {"maxItems": 10},
        [("AwsSecurityFinding", "RelatedFindings", "Maximum number of 10 items")],
    ),
}


@pytest.fixture(scope="module")
def model():
    return botocore.session.get_session().get_service_model("securityhub")


@pytest.fixture(scope="module")
def op(model):
    return model.operation_model("BatchUpdateFindings")


@pytest.fixture(scope="module")
def schema():
    return json.loads(SCHEMA_PATH.read_text())


@pytest.fixture(scope="module")
def validator(schema):
    return jsonschema.Draft202012Validator(schema)


# ---------------------------------------------------------------- schema helpers


def resolve(schema, node):
    """Flatten a node and its local $ref chain into {keyword: [values...]} (annotations dropped)."""
    out = {}
    seen = 0
    while True:
        for k, v in node.items():
            if k in ANNOTATIONS or k == "$ref":
                continue
            out.setdefault(k, []).append(v)
        ref = node.get("$ref")
        if ref is None:
            return out
        assert ref.startswith("#/$defs/"), f"only local $defs refs are used: {ref}"
        node = schema["$defs"][ref[len("#/$defs/"):]]
        seen += 1
        assert seen < 10, "ref loop"


def single(flat, key):
    vals = flat.get(key, [])
    assert len(vals) <= 1, f"{key} given {len(vals)} times"
    return vals[0] if vals else None


def expected_from_model(shape):
    """Non-structural constraints a model shape implies, as {keyword: [values...]}."""
    exp = {}
    t = shape.type_name
    meta = shape.metadata
    if t == "structure":
        exp["type"] = ["object"]
        exp["additionalProperties"] = [False]
        if shape.required_members:
            exp["required"] = [sorted(shape.required_members)]
    elif t == "list":
        exp["type"] = ["array"]
    elif t == "map":
        exp["type"] = ["object"]
    elif t == "string":
        exp["type"] = ["string"]
        if meta.get("enum"):
            exp["enum"] = [list(meta["enum"])]
        if "pattern" in meta:
            assert meta["pattern"] in PATTERN_EQUIVALENTS, f"new model pattern {meta['pattern']!r}"
            exp["pattern"] = [PATTERN_EQUIVALENTS[meta["pattern"]]]
    elif t == "integer" or t == "long":
        exp["type"] = ["integer"]
    elif t in ("double", "float"):
        exp["type"] = ["number"]
    elif t == "boolean":
        exp["type"] = ["boolean"]
    else:
        raise AssertionError(f"shape type {t} not handled by this test")
    if t in ("integer", "long", "double", "float"):
        if "min" in meta:
            exp["minimum"] = [meta["min"]]
        if "max" in meta:
            exp["maximum"] = [meta["max"]]
    elif t == "string":
        if "min" in meta:
            exp["minLength"] = [meta["min"]]
        if "max" in meta:
            exp["maxLength"] = [meta["max"]]
    elif t == "list":
        if "min" in meta:
            exp["minItems"] = [meta["min"]]
        if "max" in meta:
            exp["maxItems"] = [meta["max"]]
    elif t == "map":
        if "min" in meta:
            exp["minProperties"] = [meta["min"]]
        if "max" in meta:
            exp["maxProperties"] = [meta["max"]]
    return exp


def compare(schema, node, shape, path, visited):
    flat = resolve(schema, node)
    exp = expected_from_model(shape)
    extra = EXTRAS.get(path, ({}, []))[0]
    for k, v in extra.items():
        exp.setdefault(k, []).append(v)
    got = {k: v for k, v in flat.items() if k not in STRUCTURAL}
    if flat.get("additionalProperties") == [False]:
        got["additionalProperties"] = [False]  # a constraint here, not a sub-schema
    norm = lambda d: {k: sorted(json.dumps(x, sort_keys=True) for x in v) for k, v in d.items()}
    if "required" in got:
        got["required"] = [sorted(r) for r in got["required"]]
    assert norm(got) == norm(exp), f"constraints differ at {path or '<root>'} (model shape {shape.name})"
    visited.add(path)

    t = shape.type_name
    if t == "structure":
        props = single(flat, "properties") or {}
        assert set(props) == set(shape.members), (
            f"members differ at {path or '<root>'}: schema-only {sorted(set(props) - set(shape.members))}, "
            f"model-only {sorted(set(shape.members) - set(props))}"
        )
        for name, member in shape.members.items():
            compare(schema, props[name], member, f"{path}.{name}" if path else name, visited)
    elif t == "list":
        compare(schema, single(flat, "items"), shape.member, f"{path}[]", visited)
    elif t == "map":
        compare(schema, single(flat, "propertyNames"), shape.key, f"{path}{{key}}", visited)
        compare(schema, single(flat, "additionalProperties"), shape.value, f"{path}{{value}}", visited)
    else:
        for k in ("properties", "items", "propertyNames", "additionalProperties"):
            assert k not in flat, f"scalar {path} has {k}"


# ---------------------------------------------------------------- structure tests


def test_schema_is_valid_2020_12(schema):
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_schema_matches_model(schema, op):
    assert op.http == {"method": "PATCH", "requestUri": "/findings/batchupdate"}
    visited = set()
    compare(schema, schema, op.input_shape, "", visited)
    unused = set(EXTRAS) - visited
    assert not unused, f"EXTRAS for paths the schema/model no longer have: {unused}"


@pytest.mark.parametrize("path", sorted(EXTRAS))
def test_extras_are_still_documented(model, path):
    for shape_name, member, text in EXTRAS[path][1]:
        shape = model.shape_for(shape_name)
        doc = shape.members[member].documentation if member else shape.documentation
        plain = re.sub(r"<[^>]+>", "", doc or "")
        assert text in plain, f"{shape_name}.{member} doc no longer says {text!r} (justifies {path})"


def test_every_object_is_closed(schema):
    """Every object node with fixed properties has additionalProperties false."""

    def walk(node, where):
        if isinstance(node, dict):
            if "properties" in node:
                assert node.get("additionalProperties") is False, where
            for k, v in node.items():
                walk(v, f"{where}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}/{i}")

    walk(schema, "")


def test_patterns_are_portable(schema):
    """Patterns must mean the same in ECMA 262 and the Rust regex engines used by jsonschema-rs."""

    def patterns(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "pattern":
                    yield v
                else:
                    yield from patterns(v)
        elif isinstance(node, list):
            for v in node:
                yield from patterns(v)

    found = list(patterns(schema))
    assert found
    for p in found:
        re.compile(p)
        for bad in ("\\A", "\\Z", "\\z", "(?P", "(?i", "(?s", "(?m", "(?x", "\\d", "\\w", "\\b", "[[:"):
            assert bad not in p, f"{p!r} uses {bad!r}, which differs between regex engines"


# ---------------------------------------------------------------- examples

ARN = "arn:aws:securityhub:us-east-1::product/aws/securityhub"
FID = {"Id": "arn:aws:securityhub:us-east-1:111111111111:finding/1", "ProductArn": ARN}


def body(**kw):
    b = {"FindingIdentifiers": [dict(FID)]}
    b.update(kw)
    return b


GOOD_PARAMS = {
    "resolve_with_note": dict(
        FindingIdentifiers=[FID],
        Workflow={"Status": "RESOLVED"},
        Note={"Text": "fixed in JIRA-123", "UpdatedBy": "alice"},
    ),
    "suppress": dict(FindingIdentifiers=[FID], Workflow={"Status": "SUPPRESSED"}),
    "identifiers_only": dict(FindingIdentifiers=[FID]),
    "severity_label": dict(FindingIdentifiers=[FID], Severity={"Label": "LOW"}),
    "severity_normalized": dict(FindingIdentifiers=[FID], Severity={"Normalized": 0}),
    "severity_product": dict(FindingIdentifiers=[FID], Severity={"Product": 7.5}),
    "severity_all": dict(FindingIdentifiers=[FID], Severity={"Label": "CRITICAL", "Normalized": 100, "Product": 10}),
    "all_fields": dict(
        FindingIdentifiers=[FID, {"Id": "finding-2", "ProductArn": ARN}],
        Note={"Text": "triaged", "UpdatedBy": "arn:aws:iam::111111111111:role/soar"},
        Severity={"Label": "HIGH", "Normalized": 70},
        VerificationState="TRUE_POSITIVE",
        Confidence=100,
        Criticality=0,
        Types=[
            "TTPs",
            "Effects/Data Exfiltration",
            "Software and Configuration Checks/Industry and Regulatory Standards/CIS AWS Foundations Benchmark",
            "TTPs/Command and Control/Backdoor:EC2-C&CActivity.B!DNS",
            "Unusual Behaviors/User",
            "Sensitive Data Identifications/PII/SensitiveData:S3Object-Personal",
        ],
        UserDefinedFields={"ticket": "SEC-42", "owner team": "platform"},
        Workflow={"Status": "NOTIFIED"},
        RelatedFindings=[{"ProductArn": ARN, "Id": "finding-3"}],
    ),
    "hundred_identifiers": dict(FindingIdentifiers=[{"Id": f"f-{i}", "ProductArn": ARN} for i in range(100)]),
    "note_512_unicode": dict(FindingIdentifiers=[FID], Note={"Text": "é" * 512, "UpdatedBy": "ü" * 300}),
    "limits_at_max": dict(
        FindingIdentifiers=[FID],
        Types=["Effects/x"] * 50,
        UserDefinedFields={f"k{i}" + "x" * 100: "v" * 1024 for i in range(50)},
        RelatedFindings=[{"ProductArn": ARN, "Id": f"r{i}"} for i in range(10)],
    ),
    "empty_lists_and_maps": dict(FindingIdentifiers=[FID], Types=[], UserDefinedFields={}, RelatedFindings=[]),
    "padded_values": dict(FindingIdentifiers=[{"Id": " f-1 ", "ProductArn": ARN}], Note={"Text": " x", "UpdatedBy": "y "}),
    "verification_states": dict(FindingIdentifiers=[FID], VerificationState="BENIGN_POSITIVE"),
    "workflow_empty": dict(FindingIdentifiers=[FID], Workflow={}),
}


def boto3_body(op, params):
    """The JSON body botocore sends for these parameters (after its own client-side validation)."""
    report = botocore.validate.ParamValidator().validate(params, op.input_shape)
    assert not report.has_errors(), report.generate_report()
    req = botocore.serialize.create_serializer("rest-json").serialize_to_request(params, op)
    assert req["method"] == "PATCH" and req["url_path"] == "/findings/batchupdate"
    return json.loads(req["body"])


@pytest.mark.parametrize("name", sorted(GOOD_PARAMS))
def test_accepts_boto3_bodies(op, validator, name):
    sent = boto3_body(op, GOOD_PARAMS[name])
    errors = list(validator.iter_errors(sent))
    assert not errors, [(e.json_path, e.message) for e in errors]


# name -> (body, JSON pointer of the expected error)
LONG = "x" * 513
BAD = {
    "not_an_object": ([FID], ""),
    "missing_finding_identifiers": ({"Workflow": {"Status": "NEW"}}, ""),
    "unknown_top_level_member": (body(WorkflowState="NEW"), ""),
    "finding_identifiers_empty": (body(FindingIdentifiers=[]), "/FindingIdentifiers"),
    "finding_identifiers_101": (
        body(FindingIdentifiers=[{"Id": f"f-{i}", "ProductArn": ARN} for i in range(101)]),
        "/FindingIdentifiers",
    ),
    "finding_identifiers_object": (body(FindingIdentifiers=FID), "/FindingIdentifiers"),
    "identifier_missing_id": (body(FindingIdentifiers=[{"ProductArn": ARN}]), "/FindingIdentifiers/0"),
    "identifier_missing_product_arn": (body(FindingIdentifiers=[{"Id": "f"}]), "/FindingIdentifiers/0"),
    "identifier_blank_id": (body(FindingIdentifiers=[{"Id": " \t\n", "ProductArn": ARN}]), "/FindingIdentifiers/0/Id"),
    "identifier_empty_product_arn": (body(FindingIdentifiers=[{"Id": "f", "ProductArn": ""}]), "/FindingIdentifiers/0/ProductArn"),
    "identifier_id_not_string": (body(FindingIdentifiers=[{"Id": 7, "ProductArn": ARN}]), "/FindingIdentifiers/0/Id"),
    "identifier_extra_member": (
        body(FindingIdentifiers=[dict(FID, AwsAccountId="111111111111")]),
        "/FindingIdentifiers/0",
    ),
    "second_identifier_blank": (
        body(FindingIdentifiers=[FID, {"Id": "f", "ProductArn": "  "}]),
        "/FindingIdentifiers/1/ProductArn",
    ),
    "note_null": (body(Note=None), "/Note"),
    "note_missing_updated_by": (body(Note={"Text": "t"}), "/Note"),
    "note_missing_text": (body(Note={"UpdatedBy": "u"}), "/Note"),
    "note_blank_text": (body(Note={"Text": "   ", "UpdatedBy": "u"}), "/Note/Text"),
    "note_blank_updated_by": (body(Note={"Text": "t", "UpdatedBy": ""}), "/Note/UpdatedBy"),
    "note_text_513": (body(Note={"Text": LONG, "UpdatedBy": "u"}), "/Note/Text"),
    "note_extra_updated_at": (body(Note={"Text": "t", "UpdatedBy": "u", "UpdatedAt": "2026-01-01T00:00:00Z"}), "/Note"),
    "severity_empty": (body(Severity={}), "/Severity"),
    "severity_label_lowercase": (body(Severity={"Label": "low"}), "/Severity/Label"),
    "severity_label_unknown": (body(Severity={"Label": "SEVERE"}), "/Severity/Label"),
    "severity_normalized_101": (body(Severity={"Normalized": 101}), "/Severity/Normalized"),
    "severity_normalized_negative": (body(Severity={"Normalized": -1}), "/Severity/Normalized"),
    "severity_normalized_fraction": (body(Severity={"Normalized": 50.5}), "/Severity/Normalized"),
    "severity_normalized_string": (body(Severity={"Normalized": "50"}), "/Severity/Normalized"),
    "severity_product_string": (body(Severity={"Product": "high"}), "/Severity/Product"),
    "severity_extra_original": (body(Severity={"Label": "LOW", "Original": "2"}), "/Severity"),
    "verification_state_unknown": (body(VerificationState="MAYBE"), "/VerificationState"),
    "confidence_101": (body(Confidence=101), "/Confidence"),
    "confidence_negative": (body(Confidence=-1), "/Confidence"),
    "confidence_boolean": (body(Confidence=True), "/Confidence"),
    "criticality_fraction": (body(Criticality=1.5), "/Criticality"),
    "criticality_101": (body(Criticality=101), "/Criticality"),
    "types_not_array": (body(Types="TTPs"), "/Types"),
    "types_blank": (body(Types=["  "]), "/Types/0"),
    "types_unknown_namespace": (body(Types=["Malware/Trojan"]), "/Types/0"),
    "types_lowercase_namespace": (body(Types=["ttps/Initial Access"]), "/Types/0"),
    "types_four_parts": (body(Types=["TTPs/a/b/c"]), "/Types/0"),
    "types_empty_part": (body(Types=["TTPs//c"]), "/Types/0"),
    "types_blank_part": (body(Types=["Effects/ /c"]), "/Types/0"),
    "types_trailing_slash": (body(Types=["Effects/Data Exfiltration/"]), "/Types/0"),
    "types_leading_space": (body(Types=[" TTPs/x"]), "/Types/0"),
    "types_51": (body(Types=["TTPs"] * 51), "/Types"),
    "udf_blank_key": (body(UserDefinedFields={" ": "v"}), "/UserDefinedFields"),
    "udf_empty_value": (body(UserDefinedFields={"k": ""}), "/UserDefinedFields/k"),
    "udf_number_value": (body(UserDefinedFields={"k": 1}), "/UserDefinedFields/k"),
    "udf_key_129": (body(UserDefinedFields={"k" * 129: "v"}), "/UserDefinedFields"),
    "udf_value_1025": (body(UserDefinedFields={"k": "v" * 1025}), "/UserDefinedFields/k"),
    "udf_51_pairs": (body(UserDefinedFields={f"k{i}": "v" for i in range(51)}), "/UserDefinedFields"),
    "workflow_status_unknown": (body(Workflow={"Status": "CLOSED"}), "/Workflow/Status"),
    "workflow_status_lowercase": (body(Workflow={"Status": "resolved"}), "/Workflow/Status"),
    "workflow_extra_member": (body(Workflow={"Status": "NEW", "State": "NEW"}), "/Workflow"),
    "related_missing_id": (body(RelatedFindings=[{"ProductArn": ARN}]), "/RelatedFindings/0"),
    "related_blank_product_arn": (body(RelatedFindings=[{"ProductArn": " ", "Id": "x"}]), "/RelatedFindings/0/ProductArn"),
    "related_extra_member": (body(RelatedFindings=[{"ProductArn": ARN, "Id": "x", "Note": "y"}]), "/RelatedFindings/0"),
    "related_not_array": (body(RelatedFindings={"ProductArn": ARN, "Id": "x"}), "/RelatedFindings"),
    "related_11": (body(RelatedFindings=[{"ProductArn": ARN, "Id": f"r{i}"} for i in range(11)]), "/RelatedFindings"),
}


def pointer(error):
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in error.absolute_path)


@pytest.mark.parametrize("name", sorted(BAD))
def test_rejects_bad_bodies(validator, name):
    b, where = BAD[name]
    errors = list(validator.iter_errors(copy.deepcopy(b)))
    assert errors, f"{name} was accepted"
    paths = sorted({pointer(e) for e in errors})
    assert where in paths, f"{name}: expected an error at {where!r}, got {[(pointer(e), e.message) for e in errors]}"


def test_bad_examples_cover_every_listed_violation():
    assert len(BAD) >= 12
    covered = " ".join(BAD)
    for topic in ("finding_identifiers", "identifier", "note", "severity", "verification_state", "confidence",
                  "criticality", "types", "udf", "workflow", "related", "unknown_top_level"):
        assert topic in covered, topic


def test_botocore_version_recorded():
    # The schema's description names the model version it was written from; a botocore upgrade
    # only needs this string changed once test_schema_matches_model still passes.
    text = SCHEMA_PATH.read_text()
    assert "botocore " in text
    assert botocore.__version__ in text, (
        f"schema was written from another botocore version; venv has {botocore.__version__}: "
        "re-check the model and update the description"
    )
