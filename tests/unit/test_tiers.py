"""Each tier's tests get that tier's timeout unless they ask for their own."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.tiers import PROPERTY_FACTOR, TESTS, TIMEOUTS, tier


def test_the_tier_is_the_first_folder_under_tests() -> None:
    assert tier(TESTS / "unit" / "test_x.py") == "unit"
    assert tier(TESTS / "e2e" / "sub" / "test_y.py") == "e2e"
    assert tier(TESTS / "support" / "net.py") is None
    assert tier(TESTS.parent / "services" / "x.py") is None


def test_this_unit_test_runs_under_the_unit_timeout(request: pytest.FixtureRequest) -> None:
    marker = request.node.get_closest_marker("timeout")
    assert marker is not None
    assert marker.args == (TIMEOUTS["unit"],)


@settings(max_examples=1)
@given(st.none())
def test_a_property_gets_a_multiple_of_the_tier_timeout(
    request: pytest.FixtureRequest, value: None
) -> None:
    assert value is None
    marker = request.node.get_closest_marker("timeout")
    assert marker is not None
    assert marker.args == (TIMEOUTS["unit"] * PROPERTY_FACTOR,)


@pytest.mark.timeout(42)
def test_an_explicit_timeout_wins(request: pytest.FixtureRequest) -> None:
    marker = request.node.get_closest_marker("timeout")
    assert marker is not None
    assert marker.args == (42,)


def test_the_unit_tier_refuses_io_with_where_to_move_the_test() -> None:
    import socket
    import subprocess

    with pytest.raises(AssertionError, match=r"no I/O \(a process\).*tests/service"):
        subprocess.run(["true"], check=False)
    with pytest.raises(AssertionError, match=r"no I/O \(socket\.connect\)"), socket.socket() as s:
        s.connect(("127.0.0.1", 9))
