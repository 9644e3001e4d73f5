"""src/request/model.rs, the typed request bodies, against tests/tools/gen_types.py's output.

The generated types are how hubgate reads the judged operations' bodies; a model change that adds
a member must reach them (and then, because normalising destructures every member, the build
fails until the new member is mapped to a policy fact)."""

import sys
from pathlib import Path

import botocore
import botocore.session

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "tools"))
import gen_types  # noqa: E402


def test_committed_file_equals_generator_output():
    fresh = gen_types.render()
    assert gen_types.OUTPUT.read_text() == fresh, (
        f"src/request/model.rs differs from {gen_types.SCRIPT}'s output for botocore "
        f"{botocore.__version__}: run .venv/bin/python {gen_types.SCRIPT}"
    )


def test_every_judged_request_shape_is_typed_with_every_member():
    model = botocore.session.get_session().get_service_model("securityhub")
    text = gen_types.OUTPUT.read_text()
    for op in gen_types.JUDGED:
        shape = model.operation_model(op).input_shape
        assert f"pub struct {shape.name} {{" in text, op
        for member in shape.members:
            assert f'rename = "{member}"' in text, f"{op}.{member}"


def test_integers_are_i64_and_optional_members_refuse_null():
    text = gen_types.OUTPUT.read_text()
    assert "pub normalized: Option<i64>," in text  # SeverityUpdate.Normalized
    assert "pub severity_id: Option<i64>," in text and "pub status_id: Option<i64>," in text
    assert "deny_unknown_fields" in text
    assert 'deserialize_with = "present"' in text


def test_snake_case_and_keywords():
    assert gen_types.snake("AwsAccountId") == "aws_account_id"
    assert gen_types.snake("IpV4Addresses") == "ip_v4_addresses"
    assert gen_types.snake("Type") == "r#type"
    assert gen_types.camel("TRUE_POSITIVE") == "TruePositive"
