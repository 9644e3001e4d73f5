"""The schemas tests/tools/gen_schemas.py generates from the botocore model.

1. Drift: each committed policies/schemas/<Operation>.json equals a fresh generation from the
   model in the venv, and `gen_schemas.py --check` agrees.
2. Each schema is valid Draft 2020-12, closes every object, resolves every $ref, uses only
   portable patterns, and names the botocore version it came from.
3. Each schema accepts the bodies botocore serialises for typical calls and for a body that sets
   every member of the request tree, and rejects each body in BAD at the JSON pointer given there.

Run: .venv/bin/pytest tests/model/test_generated_schemas.py
Fix stale schemas: .venv/bin/python tests/tools/gen_schemas.py
"""

import copy
import importlib.util
import json
import re
import shutil
from pathlib import Path

import botocore
import botocore.serialize
import botocore.session
import botocore.validate
import jsonschema
import pytest

REPO = Path(__file__).resolve().parents[2]
GEN_PATH = REPO / "tests" / "tools" / "gen_schemas.py"
SCHEMA_DIR = REPO / "policies" / "schemas"


def load_gen():
    spec = importlib.util.spec_from_file_location("gen_schemas", GEN_PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


gen = load_gen()
OPS = list(gen.OPERATIONS)

HTTP = {
    "BatchUpdateFindingsV2": ("PATCH", "/findingsv2/batchupdatev2"),
    "UpdateFindings": ("PATCH", "/findings"),
    "BatchImportFindings": ("POST", "/findings/import"),
}

MAX_BYTES = 1_500_000  # the Rust side compiles each schema once at start; keep them reasonable


@pytest.fixture(scope="module")
def model():
    return botocore.session.get_session().get_service_model("securityhub")


@pytest.fixture(scope="module")
def schemas():
    return {op: json.loads((SCHEMA_DIR / f"{op}.json").read_text()) for op in OPS}


@pytest.fixture(scope="module")
def validators(schemas):
    return {op: jsonschema.Draft202012Validator(s) for op, s in schemas.items()}


# ---------------------------------------------------------------- drift


def test_operations_listed():
    assert set(OPS) == set(HTTP)


@pytest.mark.parametrize("op", OPS)
def test_committed_schema_is_fresh(model, op):
    committed = (SCHEMA_DIR / f"{op}.json").read_text()
    assert committed == gen.render(op, model), f"policies/schemas/{op}.json is stale; run tests/tools/gen_schemas.py"


def test_check_flag(tmp_path, capsys):
    assert gen.main(["--check"]) == 0
    for op in OPS:
        shutil.copy(SCHEMA_DIR / f"{op}.json", tmp_path / f"{op}.json")
    assert gen.main(["--check", "--output-dir", str(tmp_path)]) == 0
    stale = tmp_path / f"{OPS[0]}.json"
    stale.write_text(stale.read_text().replace('"maxItems": 100', '"maxItems": 101', 1))
    assert gen.main(["--check", "--output-dir", str(tmp_path)]) == 1
    (tmp_path / f"{OPS[1]}.json").unlink()
    assert gen.main(["--check", "--output-dir", str(tmp_path)]) == 1
    assert "stale" in capsys.readouterr().err


# ---------------------------------------------------------------- structure


@pytest.mark.parametrize("op", OPS)
def test_schema_is_valid_2020_12(schemas, op):
    s = schemas[op]
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(s)
    assert s["title"] == f"{op} request body"
    assert f"botocore {botocore.__version__}" in s["description"]
    assert "tests/tools/gen_schemas.py" in s["description"]


@pytest.mark.parametrize("op", OPS)
def test_size(op):
    assert (SCHEMA_DIR / f"{op}.json").stat().st_size < MAX_BYTES


def walk(node, where=""):
    """(pointer, node) for every dict in a schema."""
    if isinstance(node, dict):
        yield where, node
        for k, v in node.items():
            yield from walk(v, f"{where}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{where}/{i}")


@pytest.mark.parametrize("op", OPS)
def test_refs_resolve_and_defs_are_used(schemas, op):
    s = schemas[op]
    defs = s.get("$defs", {})
    used = set()
    for where, node in walk(s):
        ref = node.get("$ref")
        if ref is not None:
            assert ref.startswith("#/$defs/"), (where, ref)
            name = ref[len("#/$defs/"):]
            assert name in defs, (where, ref)
            used.add(name)
    assert used == set(defs), f"unused $defs: {sorted(set(defs) - used)}"


@pytest.mark.parametrize("op", OPS)
def test_every_object_is_closed(schemas, op):
    for where, node in walk(schemas[op]):
        if "properties" in node and where.rsplit("/", 1)[-1] != "properties":
            assert node.get("additionalProperties") is False, where


@pytest.mark.parametrize("op", OPS)
def test_patterns_are_portable(schemas, op):
    found = [node["pattern"] for _, node in walk(schemas[op]) if isinstance(node.get("pattern"), str)]
    assert found
    for p in found:
        re.compile(p)
        for bad in gen.NON_PORTABLE:
            assert bad not in p, f"{p!r} uses {bad!r}"
    assert ".*\\S.*" not in found, "NonEmptyString's pattern should be rewritten to \\S"


def test_request_members_are_all_in_the_body(model):
    """The brief for these operations: every request member is a body member. If the model moves
    one to the URI, query or a header, the generator leaves it out and this test says so."""
    for op in OPS:
        shape = model.operation_model(op).input_shape
        outside = {n: m.serialization.get("location") for n, m in shape.members.items()
                   if m.serialization.get("location") not in (None, "body")}
        assert not outside, (op, outside)


def test_batch_import_findings_limits(schemas, model):
    findings = model.operation_model("BatchImportFindings").input_shape.members["Findings"]
    assert findings.metadata.get("min") == 1 and findings.metadata.get("max") == 100
    s = schemas["BatchImportFindings"]
    node = s["$defs"][s["properties"]["Findings"]["$ref"].split("/")[-1]]
    assert (node["minItems"], node["maxItems"]) == (1, 100)
    assert s["required"] == ["Findings"]


def test_batch_update_findings_v2_doc_constraints(schemas):
    p = schemas["BatchUpdateFindingsV2"]["properties"]
    assert p["SeverityId"]["enum"] == [0, 1, 2, 3, 4, 5, 6, 99]
    assert p["StatusId"]["enum"] == [0, 1, 2, 3, 4, 5, 6, 99]  # 6 added: see gen_schemas
    assert "allowed enum values" in p["SeverityId"]["description"]
    assert (p["Comment"]["minLength"], p["Comment"]["maxLength"]) == (1, 512)
    defs = schemas["BatchUpdateFindingsV2"]["$defs"]
    assert defs["MetadataUidList"]["maxItems"] == 100
    assert defs["OcsfFindingIdentifierList"]["maxItems"] == 100


# ---------------------------------------------------------------- bodies botocore sends


def boto_body(model, op, params):
    """The JSON body botocore sends for these parameters (after its own client-side validation)."""
    om = model.operation_model(op)
    report = botocore.validate.ParamValidator().validate(params, om.input_shape)
    assert not report.has_errors(), report.generate_report()
    req = botocore.serialize.create_serializer("rest-json").serialize_to_request(params, om)
    assert (req["method"], req["url_path"]) == HTTP[op]
    return json.loads(req["body"])


def full_params(shape, stack=()):
    """Parameters that set every member of a shape tree once (a shape already on the path is left
    out, so recursive shapes end), with values that meet the model's constraints."""
    t = shape.type_name
    meta = shape.metadata
    if t == "structure":
        if meta.get("document"):
            return {"provider": "x", "nested": {"n": 1, "list": [True, None]}}
        out = {}
        for name, member in shape.members.items():
            if member.name in stack and member.type_name in ("structure", "list", "map"):
                continue
            out[name] = full_params(member, stack + (shape.name,))
            if meta.get("union"):
                break
        return out
    if t == "list":
        return [full_params(shape.member, stack + (shape.name,)) for _ in range(max(meta.get("min", 1), 1))]
    if t == "map":
        key = full_params(shape.key, stack)
        return {key: full_params(shape.value, stack + (shape.name,))}
    if t == "string":
        if meta.get("enum"):
            return meta["enum"][-1]
        return "x" * max(meta.get("min", 1), 1)
    if t in ("integer", "long"):
        return int(meta.get("min", 1))
    if t in ("double", "float"):
        return float(meta.get("min", 1.5))
    if t == "boolean":
        return True
    raise AssertionError(f"{shape.name}: {t} not handled by this test")


ARN = "arn:aws:securityhub:us-east-1:111111111111:product/111111111111/default"
NOW = "2026-01-02T03:04:05.000Z"


def finding(**kw):
    f = {
        "SchemaVersion": "2018-10-08",
        "Id": "finding-1",
        "ProductArn": ARN,
        "GeneratorId": "scanner/rule-7",
        "AwsAccountId": "111111111111",
        "CreatedAt": NOW,
        "UpdatedAt": NOW,
        "Title": "Open S3 bucket",
        "Description": "The bucket allows public reads.",
        "Resources": [{"Type": "AwsS3Bucket", "Id": "arn:aws:s3:::example"}],
    }
    f.update(kw)
    return f


OCSF_ID = {"CloudAccountUid": "111111111111", "FindingInfoUid": "uid-1", "MetadataProductUid": "product-1"}

GOOD = {
    "BatchUpdateFindingsV2": {
        "metadata_uids": dict(MetadataUids=["m-1", "m-2"], StatusId=4, Comment="closed by SOAR"),
        "identifiers": dict(FindingIdentifiers=[OCSF_ID], SeverityId=99, StatusId=0),
        "hundred_ids": dict(FindingIdentifiers=[dict(OCSF_ID, FindingInfoUid=f"u{i}") for i in range(100)], SeverityId=0),
        "comment_512": dict(MetadataUids=["m"], Comment="é" * 512),
        "empty": dict(),
    },
    "UpdateFindings": {
        "archive": dict(
            Filters={"Id": [{"Value": "finding-1", "Comparison": "EQUALS"}]},
            RecordState="ARCHIVED",
        ),
        "note_by_filters": dict(
            Filters={
                "SeverityLabel": [{"Value": "HIGH", "Comparison": "EQUALS"}],
                "Confidence": [{"Gte": 50, "Lte": 100}],
                "ResourceTags": [{"Key": "env", "Value": "prod", "Comparison": "EQUALS"}],
                "UpdatedAt": [{"DateRange": {"Value": 7, "Unit": "DAYS"}}],
                "SourceUrl": [{"Value": "https://", "Comparison": "PREFIX"}],
            },
            Note={"Text": "seen", "UpdatedBy": "alice"},
        ),
        "empty_filters": dict(Filters={}),
    },
    "BatchImportFindings": {
        "minimal": dict(Findings=[finding()]),
        "typical": dict(Findings=[finding(
            ProductName="Scanner",
            CompanyName="Example",
            Region="us-east-1",
            Types=["Software and Configuration Checks/AWS Security Best Practices"],
            FirstObservedAt=NOW,
            Severity={"Label": "HIGH", "Original": "8"},
            Confidence=80,
            Criticality=50,
            Remediation={"Recommendation": {"Text": "Block public access", "Url": "https://example.com/r"}},
            ProductFields={"scanner/rule": "7"},
            UserDefinedFields={"ticket": "SEC-1"},
            Resources=[{
                "Type": "AwsS3Bucket",
                "Id": "arn:aws:s3:::example",
                "Partition": "aws",
                "Region": "us-east-1",
                "Tags": {"env": "prod"},
                "Details": {"AwsS3Bucket": {"OwnerId": "abc", "CreatedAt": NOW}},
            }],
            Compliance={"Status": "FAILED", "RelatedRequirements": ["CIS 2.1"]},
            Workflow={"Status": "NEW"},
            RecordState="ACTIVE",
            Note={"Text": "imported", "UpdatedBy": "scanner", "UpdatedAt": NOW},
            Network={"Direction": "IN", "SourceIpV4": "10.0.0.1", "SourcePort": 443},
            Vulnerabilities=[{"Id": "CVE-2024-0001", "Cvss": [{"BaseScore": 9.8, "Version": "3.1"}]}],
        )]),
        "hundred": dict(Findings=[finding(Id=f"f-{i}") for i in range(100)]),
        "iam_role_policy": dict(Findings=[finding(Resources=[{
            "Type": "AwsIamRole", "Id": "arn:aws:iam::111111111111:role/r",
            "Details": {"AwsIamRole": {"AssumeRolePolicyDocument": '{"Version":"2012-10-17"}', "MaxSessionDuration": 3600}},
        }])]),
        "document_details": dict(Findings=[finding(Resources=[{
            "Type": "AzureVm", "Id": "/subscriptions/x", "Details": {"AzureResource": {"vm": {"size": "B2"}}},
        }])]),
    },
}


@pytest.mark.parametrize("op,name", [(op, n) for op in OPS for n in sorted(GOOD[op])])
def test_accepts_botocore_bodies(model, validators, op, name):
    sent = boto_body(model, op, copy.deepcopy(GOOD[op][name]))
    errors = list(validators[op].iter_errors(sent))
    assert not errors, [(e.json_path, e.message) for e in errors[:5]]


@pytest.mark.parametrize("op", OPS)
def test_accepts_body_with_every_member(model, validators, op):
    shape = model.operation_model(op).input_shape
    params = full_params(shape)
    if op == "BatchUpdateFindingsV2":
        # the API documentation rules out both identifier lists at once; check each in turn
        params.update(SeverityId=1, StatusId=1)
        for drop in ("MetadataUids", "FindingIdentifiers"):
            p = {k: v for k, v in params.items() if k != drop}
            errors = list(validators[op].iter_errors(boto_body(model, op, p)))
            assert not errors, [(e.json_path, e.message) for e in errors[:5]]
        return
    if op == "BatchImportFindings":
        # a finding's ProductArn is 12 to 2048 characters (its documentation, SHAPE_DOC_EXTRAS)
        params["Findings"][0]["ProductArn"] = ARN
    sent = boto_body(model, op, params)
    errors = list(validators[op].iter_errors(sent))
    assert not errors, [(e.json_path, e.message) for e in errors[:5]]


# ---------------------------------------------------------------- bad bodies


def v2(**kw):
    b = {"MetadataUids": ["m-1"]}
    b.update(kw)
    return b


def uf(**kw):
    b = {"Filters": {"Id": [{"Value": "finding-1", "Comparison": "EQUALS"}]}}
    b.update(kw)
    return b


def bif(**kw):
    return {"Findings": [finding(**kw)]}


def drop(d, key):
    return {k: v for k, v in d.items() if k != key}


# op -> name -> (body, JSON pointer of the expected error)
BAD = {
    "BatchUpdateFindingsV2": {
        "not_an_object": (["m-1"], ""),
        "unknown_top_level_member": (v2(Workflow={"Status": "RESOLVED"}), ""),
        "both_identifier_lists": (v2(FindingIdentifiers=[OCSF_ID]), ""),
        "identifier_missing_required": (
            {"FindingIdentifiers": [drop(OCSF_ID, "MetadataProductUid")]}, "/FindingIdentifiers/0"),
        "identifier_extra_member": ({"FindingIdentifiers": [dict(OCSF_ID, Id="x")]}, "/FindingIdentifiers/0"),
        "identifier_blank": ({"FindingIdentifiers": [dict(OCSF_ID, FindingInfoUid="  ")]},
                             "/FindingIdentifiers/0/FindingInfoUid"),
        "metadata_uids_101": ({"MetadataUids": [f"m{i}" for i in range(101)]}, "/MetadataUids"),
        "metadata_uids_string": ({"MetadataUids": "m-1"}, "/MetadataUids"),
        "metadata_uid_number": ({"MetadataUids": [1]}, "/MetadataUids/0"),
        "severity_id_string": (v2(SeverityId="3"), "/SeverityId"),
        "severity_id_not_in_enum": (v2(SeverityId=7), "/SeverityId"),
        "severity_id_fraction": (v2(SeverityId=1.5), "/SeverityId"),
        "status_id_not_in_enum": (v2(StatusId=7), "/StatusId"),
        "status_id_boolean": (v2(StatusId=True), "/StatusId"),
        "comment_513": (v2(Comment="x" * 513), "/Comment"),
        "comment_blank": (v2(Comment=" \n"), "/Comment"),
        "comment_null": (v2(Comment=None), "/Comment"),
    },
    "UpdateFindings": {
        "not_an_object": ("Filters", ""),
        "missing_filters": ({"RecordState": "ARCHIVED"}, ""),
        "unknown_top_level_member": (uf(Workflow={"Status": "RESOLVED"}), ""),
        "filters_not_object": ({"Filters": []}, "/Filters"),
        "unknown_filter": (uf(Filters={"Owner": [{"Value": "x", "Comparison": "EQUALS"}]}), "/Filters"),
        "filter_not_array": (uf(Filters={"Id": {"Value": "x", "Comparison": "EQUALS"}}), "/Filters/Id"),
        "filter_comparison_unknown": (uf(Filters={"Id": [{"Value": "x", "Comparison": "LIKE"}]}),
                                      "/Filters/Id/0/Comparison"),
        "filter_extra_member": (uf(Filters={"Id": [{"Value": "x", "Comparison": "EQUALS", "Case": "I"}]}),
                                "/Filters/Id/0"),
        "number_filter_string": (uf(Filters={"Confidence": [{"Gte": "50"}]}), "/Filters/Confidence/0/Gte"),
        "boolean_filter_string": (uf(Filters={"Sample": [{"Value": "true"}]}), "/Filters/Sample/0/Value"),
        "date_range_unit_unknown": (uf(Filters={"UpdatedAt": [{"DateRange": {"Value": 1, "Unit": "HOURS"}}]}),
                                    "/Filters/UpdatedAt/0/DateRange/Unit"),
        "record_state_unknown": (uf(RecordState="DELETED"), "/RecordState"),
        "note_missing_updated_by": (uf(Note={"Text": "t"}), "/Note"),
        "note_blank_text": (uf(Note={"Text": " ", "UpdatedBy": "u"}), "/Note/Text"),
        "note_extra_member": (uf(Note={"Text": "t", "UpdatedBy": "u", "UpdatedAt": NOW}), "/Note"),
    },
    "BatchImportFindings": {
        "not_an_object": ([finding()], ""),
        "missing_findings": ({}, ""),
        "unknown_top_level_member": ({"Findings": [finding()], "Region": "us-east-1"}, ""),
        "findings_empty": ({"Findings": []}, "/Findings"),
        "findings_101": ({"Findings": [finding(Id=f"f{i}") for i in range(101)]}, "/Findings"),
        "findings_object": ({"Findings": finding()}, "/Findings"),
        "finding_missing_title": ({"Findings": [drop(finding(), "Title")]}, "/Findings/0"),
        "finding_missing_resources": ({"Findings": [drop(finding(), "Resources")]}, "/Findings/0"),
        "finding_unknown_member": (bif(Score=5), "/Findings/0"),
        "finding_blank_id": (bif(Id="   "), "/Findings/0/Id"),
        "finding_id_longer_than_a_findings": (bif(Id="i" * 513), "/Findings/0/Id"),
        "finding_product_arn_too_long": (bif(ProductArn="a" * 2049), "/Findings/0/ProductArn"),
        "finding_product_arn_too_short": (bif(ProductArn="a" * 11), "/Findings/0/ProductArn"),
        "finding_confidence_string": (bif(Confidence="high"), "/Findings/0/Confidence"),
        "finding_confidence_fraction": (bif(Confidence=1.5), "/Findings/0/Confidence"),
        "severity_label_unknown": (bif(Severity={"Label": "SEVERE"}), "/Findings/0/Severity/Label"),
        "severity_extra_member": (bif(Severity={"Label": "LOW", "Score": 1}), "/Findings/0/Severity"),
        "resource_missing_type": (bif(Resources=[{"Id": "r"}]), "/Findings/0/Resources/0"),
        "resource_details_unknown_kind": (bif(Resources=[{"Type": "X", "Id": "r", "Details": {"AwsFoo": {}}}]),
                                          "/Findings/0/Resources/0/Details"),
        "deep_unknown_member": (
            bif(Resources=[{"Type": "AwsS3Bucket", "Id": "r", "Details": {"AwsS3Bucket": {"Owner": "x"}}}]),
            "/Findings/0/Resources/0/Details/AwsS3Bucket"),
        "iam_policy_document_empty": (
            bif(Resources=[{"Type": "AwsIamRole", "Id": "r",
                            "Details": {"AwsIamRole": {"AssumeRolePolicyDocument": ""}}}]),
            "/Findings/0/Resources/0/Details/AwsIamRole/AssumeRolePolicyDocument"),
        "user_defined_field_number": (bif(UserDefinedFields={"k": 1}), "/Findings/0/UserDefinedFields/k"),
        "types_not_array": (bif(Types="TTPs"), "/Findings/0/Types"),
        "workflow_status_lowercase": (bif(Workflow={"Status": "new"}), "/Findings/0/Workflow/Status"),
        "network_port_string": (bif(Network={"SourcePort": "443"}), "/Findings/0/Network/SourcePort"),
    },
}


def pointer(error):
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in error.absolute_path)


@pytest.mark.parametrize("op,name", [(op, n) for op in OPS for n in sorted(BAD[op])])
def test_rejects_bad_bodies(validators, op, name):
    b, where = BAD[op][name]
    errors = list(validators[op].iter_errors(copy.deepcopy(b)))
    assert errors, f"{op} {name} was accepted"
    paths = sorted({pointer(e) for e in errors})
    assert where in paths, f"{name}: expected an error at {where!r}, got {[(pointer(e), e.message) for e in errors]}"


@pytest.mark.parametrize("op", OPS)
def test_bad_bodies_cover_the_basics(op):
    names = " ".join(BAD[op])
    assert len(BAD[op]) >= 5
    for topic in ("unknown", "missing", "string"):
        assert topic in names, (op, topic)
