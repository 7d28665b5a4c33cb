"""The request counter's packed script calls (ADR 0034): equal to the generic packing."""

from __future__ import annotations

import pytest

from leaky_tokens.runtime.settings import SettingsError, load
from leaky_tokens.token.adapters import redis_rate_counter as m
from leaky_tokens.token.adapters.redis_wire import Endpoint, RedisWire, WireScript
from leaky_tokens.token.bootstrap import TokenSettings
from leaky_tokens.token.domain.rate_counter import CounterHit
from leaky_tokens.token.rls_wiring import RlsSettings

HOT = (CounterHit("leaky.user_id_hot", 10, 1000, 1),)
MIXED = (
    CounterHit("leaky.k_é", 5, 60_000, 2, enforced=False),
    CounterHit("d.x_y", 3, 3_600_000, 1),
)


def counter() -> m.RedisRequestCounter:
    wire = RedisWire(Endpoint(), timeout_s=0.1, connect_timeout_s=0.1)  # never connected
    return m.RedisRequestCounter(wire)


def test_a_batch_packs_exactly_as_the_generic_script_call() -> None:
    c = counter()
    calls = [c._call(HOT, 1_234_567), c._call(MIXED, 1_234_567)]
    keys = [k for call in calls for k in call.keys]
    args = [a for call in calls for a in call.args]
    script = WireScript(m.SHA, m.SCRIPT)
    assert m._script_call(m._HEADS[0], calls) == script.call(keys, args, cached=True)
    assert m._script_call(m._HEADS[1], calls) == script.call(keys, args, cached=False)
    assert keys == [c.key(h, 1_234_567) for h in (*HOT, *MIXED)]


def test_a_plan_packs_once_a_second_and_anew_in_the_next() -> None:
    c = counter()
    first = c._call(HOT, 1_234_000)
    assert c._call(HOT, 1_234_999) is first  # same second: same keys, same TTL
    later = c._call(HOT, 1_235_000)
    assert later is not first
    assert later.keys == (c.key(HOT[0], 1_235_000),)
    # A minute window: the key stays, the TTL (last argument) counts down by the second.
    minute = (CounterHit("leaky.m_1", 5, 60_000, 1),)
    assert c._call(minute, 1_200_000).args[-1] == "61"
    assert c._call(minute, 1_259_000).args[-1] == "2"


def test_hits_of_a_window_off_the_second_are_packed_afresh_every_time() -> None:
    c = counter()
    odd = (CounterHit("leaky.o_1", 5, 1500, 1),)
    assert c._call(odd, 1_000) is not c._call(odd, 1_000)


def test_the_batch_interval_setting_is_bounded() -> None:
    assert RlsSettings().rls_batch_interval_us == 2000
    with pytest.raises(SettingsError, match="rls_batch_interval_us"):
        RlsSettings(rls_batch_interval_us=-1)
    with pytest.raises(SettingsError, match="rls_batch_interval_us"):
        RlsSettings(rls_batch_interval_us=100_001)


@pytest.mark.parametrize("interval", ["-1", "100001"])
def test_the_service_refuses_a_batch_interval_outside_its_bound(interval: str) -> None:
    with pytest.raises(SettingsError, match="rls_batch_interval_us"):
        load(TokenSettings, "LEAKY_TOKEN", {"LEAKY_TOKEN_RLS_BATCH_INTERVAL_US": interval})
