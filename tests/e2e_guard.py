"""Collection check: every test that starts a real sftpd (or sshd) carries the e2e mark."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

# Fixtures (tests/conftest.py) that start a real sftpd process.
REAL_SERVER_FIXTURES = frozenset({"make_server", "server"})
# Names whose presence in a test module means it starts servers itself (tests/support.py).
REAL_SERVER_HELPERS = frozenset({"start_sftpd", "SftpdProcess"})


def why_e2e(item: pytest.Item) -> str | None:
    """Why ``item`` starts a real server (None: it does not, as far as can be told)."""
    fixtures = REAL_SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ()))
    if fixtures:
        return "uses fixture " + ", ".join(sorted(fixtures))
    module = getattr(item, "module", None)
    helpers = REAL_SERVER_HELPERS.intersection(vars(module)) if module is not None else set()
    if helpers:
        return "its module uses " + ", ".join(sorted(helpers))
    return None


def unmarked_e2e(items: Iterable[pytest.Item]) -> list[str]:
    """One line per test that starts a real server but is not marked e2e."""
    out = []
    for item in items:
        reason = why_e2e(item)
        if reason is not None and item.get_closest_marker("e2e") is None:
            out.append(f"{item.nodeid}: {reason}")
    return out


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    bad = unmarked_e2e(items)
    if bad:
        raise pytest.UsageError(
            "tests that start a real server must be marked e2e "
            "(pytestmark = pytest.mark.e2e in the module, or per test):\n  " + "\n  ".join(bad)
        )
