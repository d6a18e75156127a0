import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from jobkinds_for_tests import STEPS, env_with_test_kinds  # noqa: E402

from lorashear.jobs import KINDS, Registry  # noqa: E402


@pytest.fixture
def registry(tmp_path):
    return Registry(tmp_path / "runs" / "jobs.sqlite")


@pytest.fixture
def test_kinds():
    return {**KINDS, STEPS.name: STEPS}


@pytest.fixture
def worker_env():
    return env_with_test_kinds()
