"""`ChargingTap`: a stream past its reservation is charged ahead of its output, in blocks."""

from __future__ import annotations

import json

from gateway.limits import Admitted, Cost, Dimension, Limiter, LimitsConfig, MemoryBackend
from gateway.live_charge import LIVE_CHARGE_LEAD, ChargingTap
from gateway.usage import UsageTap
from tests.support.fake_clock import FakeClock

CONFIG = LimitsConfig.model_validate(
    {"groups": [{"name": "g", "models": ["m"], "output_tokens_per_minute": 100_000}]}
)


def delta(tokens: int) -> bytes:
    """A text delta of about `tokens` tokens (four characters each)."""
    data = {"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": "x" * (4 * tokens)}}  # fmt: skip
    return (
        f"event: content_block_delta\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
    )


async def test_output_within_the_reservation_is_not_charged_then_past_it_is_charged_ahead() -> None:
    """Up to its reservation of 100 a stream costs nothing more; past it, it is charged
    LIVE_CHARGE_LEAD to twice that ahead of what it generated, in blocks, not per delta."""
    clock = FakeClock()
    limiter = Limiter(MemoryBackend(clock), CONFIG, clock)
    admission = await limiter.admit(scope="s", model="m", cost=Cost(1, 0, 100), max_wait=0)
    assert isinstance(admission, Admitted)
    tap = ChargingTap(UsageTap(stream=True), limiter, admission)
    live = []
    for _ in range(20):  # 20 deltas of 10 tokens: 200 generated
        tap(delta(10))
        live.append(admission.live.output_tokens)
    charged = 100 + live[-1]
    assert [0] * 10 == live[:10]  # within the reservation
    assert 200 + LIVE_CHARGE_LEAD <= charged <= 200 + 2 * LIVE_CHARGE_LEAD
    assert len(set(live)) <= 5  # a few blocks, not one charge per delta
    bucket = admission.reservation.buckets[0]
    assert Dimension.OUTPUT_TOKENS == bucket.dimension
