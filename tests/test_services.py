"""`services.py` declares the app's typed keys; a served app has every one of them set."""

from __future__ import annotations

from aiohttp import web

from gateway import services
from tests.conftest import RunningGateway

DECLARED = {name: key for name, key in vars(services).items() if isinstance(key, web.AppKey)}
OPTIONAL = {"TRACING"}
"""Set only when traces are exported (tests/test_tracing.py checks it is then)."""


def test_services_declares_app_keys() -> None:
    """The module declares typed AppKeys (so the test below checks something)."""
    assert {"CLOCK", "METRICS", "UPSTREAM", "ADMISSIONS"} <= DECLARED.keys()


async def test_a_serving_app_has_every_declared_key_set(gateway: RunningGateway) -> None:
    """Once the app serves (cleanup contexts entered), every AppKey in services.py is set,
    but for the optional ones, which a gateway without tracing leaves unset."""
    assert {name: name not in OPTIONAL for name in DECLARED} == {
        name: key in gateway.app for name, key in DECLARED.items()
    }
