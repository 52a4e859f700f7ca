"""`LimitBackend`: every backend (and the tests' flaky double) has the protocol's methods.

The protocol is not `runtime_checkable`, so this compares each method's name, parameters
(names, kinds, defaults) and whether it is a coroutine with `inspect`; mypy checks the types
wherever a backend is used as a `LimitBackend` (`app.open_backend`, the contract suite).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator

import pytest

from gateway.limits.backend import LimitBackend
from tests.limits.conftest import open_backend
from tests.support.fake_clock import FakeClock
from tests.support.flaky_backend import FlakyBackend

PROTOCOL_METHODS = sorted(
    name
    for name, member in vars(LimitBackend).items()
    if not name.startswith("_") and inspect.isfunction(member)
)
Shape = tuple[bool, list[tuple[str, str, object]]] | None


def shape(method: object) -> Shape:
    """Whether `method` is a coroutine function, and each parameter's name, kind and default
    (None when it is missing or not callable)."""
    if not callable(method):
        return None
    parameters = inspect.signature(method).parameters.values()
    described = [(p.name, p.kind.name, p.default) for p in parameters if p.name != "self"]
    return inspect.iscoroutinefunction(method), described


@pytest.fixture(params=["memory", "fakeredis"])
async def opened(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[object]:
    """MemoryBackend, and RedisBackend on fakeredis."""
    async with open_backend(request.param, clock, request) as backend:
        yield backend


def test_the_protocol_has_the_documented_methods() -> None:
    """The protocol is the six methods its docstring promises (so the checks below bite)."""
    expected = [
        "aclose",
        "adjust",
        "cap",
        "learn",
        "on_change",
        "ping",
        "reserve",
        "share_organizations",
        "share_spend",
    ]
    assert expected == PROTOCOL_METHODS


async def test_each_backend_has_every_protocol_method_as_declared(opened: object) -> None:
    """Each backend defines every protocol method with the same parameters, async where the
    protocol's is async (`adjust` never waits)."""
    expected = {name: shape(getattr(LimitBackend, name)) for name in PROTOCOL_METHODS}
    actual = {name: shape(getattr(type(opened), name, None)) for name in PROTOCOL_METHODS}
    assert expected == actual


def test_the_flaky_double_has_every_protocol_method_as_declared(clock: FakeClock) -> None:
    """The tests' `FlakyBackend` stays a faithful stand-in for a backend."""
    expected = {name: shape(getattr(LimitBackend, name)) for name in PROTOCOL_METHODS}
    actual = {name: shape(getattr(FlakyBackend, name)) for name in PROTOCOL_METHODS}
    assert expected == actual
