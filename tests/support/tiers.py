"""Per-tier test timeouts, by the test's folder under tests/ (loaded with `-p` from pyproject)."""

from __future__ import annotations

from pathlib import Path

import pytest

# Seconds per test, setup included (pytest-timeout counts fixtures, so a session fixture that
# starts the stack or `leaky up` spends the first test's budget). A test that needs more says
# so with its own @pytest.mark.timeout, which wins.
TIMEOUTS = {"unit": 10, "service": 30, "integration": 300, "e2e": 300}
# A Hypothesis property runs a hundred or more examples in one test: on a loaded 2-core
# machine a pure one took over 10 s (seen while other work shared the cores). Its budget is
# the tier's times this, still a bound that catches a hang.
PROPERTY_FACTOR = 6
TESTS = Path(__file__).resolve().parent.parent


def tier(path: Path) -> str | None:
    """The tier a test file belongs to: the first folder under tests/, if it is one."""
    try:
        first = path.resolve().relative_to(TESTS).parts[0]
    except (ValueError, IndexError):
        return None
    return first if first in TIMEOUTS else None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        found = tier(item.path)
        if found and item.get_closest_marker("timeout") is None:
            factor = PROPERTY_FACTOR if _is_property(item) else 1
            item.add_marker(pytest.mark.timeout(TIMEOUTS[found] * factor))


def _is_property(item: pytest.Item) -> bool:
    return bool(getattr(getattr(item, "obj", None), "is_hypothesis_test", False))
