"""The model checks compare committed, generated files with the botocore model in the venv.

They are only meaningful against the botocore version those files were generated from, which is
the exact pin in tests/requirements.txt. A venv with another botocore fails here once, with the
fix, instead of failing every model test with advice to regenerate files.
"""

import re
from pathlib import Path

import botocore
import pytest

REQUIREMENTS = Path(__file__).resolve().parents[1] / "requirements.txt"


def pinned_botocore() -> str:
    m = re.search(r"^botocore==(\S+)\s*$", REQUIREMENTS.read_text(), re.M)
    assert m, f"{REQUIREMENTS} has no exact botocore== pin"
    return m.group(1)


@pytest.fixture(autouse=True, scope="session")
def expected_botocore():
    want = pinned_botocore()
    if botocore.__version__ != want:
        pytest.fail(
            f"the model checks expect botocore {want} (pinned in tests/requirements.txt), the venv "
            f"has {botocore.__version__}. Reinstall the pins: .venv/bin/pip install -r "
            "tests/requirements.txt. To move to a newer AWS model on purpose, follow "
            "tests/model/README.md (change the pin, regenerate, review the diff).",
            pytrace=False,
        )
    return want
