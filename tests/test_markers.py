"""The e2e guard (tests/e2e_guard.py) fails collection for an unmarked real-server test."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

FIXTURES = """
import pytest

@pytest.fixture
def make_server():
    return None

@pytest.fixture
def server():
    return None
"""


def _run(pytester: pytest.Pytester, source: str) -> pytest.RunResult:
    pytester.makeconftest(FIXTURES)
    pytester.makepyfile(test_sample=source)
    return pytester.runpytest("-p", "tests.e2e_guard", "--collect-only", "-q")


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("def test_a(make_server):\n    pass\n", "uses fixture make_server"),
        ("def test_a(server):\n    pass\n", "uses fixture server"),
        (
            "from tests.support import start_sftpd\n\ndef test_a():\n    pass\n",
            "its module uses start_sftpd",
        ),
    ],
)
def test_an_unmarked_real_server_test_fails_collection(
    pytester: pytest.Pytester, source: str, reason: str
) -> None:
    result = _run(pytester, source)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*tests that start a real server must be marked e2e*", f"*test_a: {reason}"]
    )


@pytest.mark.parametrize(
    "source",
    [
        "import pytest\n\npytestmark = pytest.mark.e2e\n\ndef test_a(make_server):\n    pass\n",
        "import pytest\n\n@pytest.mark.e2e\ndef test_a(server):\n    pass\n",
        "def test_a(tmp_path):\n    pass\n",  # starts no server: needs no mark
    ],
)
def test_marked_or_serverless_tests_collect(pytester: pytest.Pytester, source: str) -> None:
    result = _run(pytester, source)
    assert result.ret == pytest.ExitCode.OK, result.stderr.str()
