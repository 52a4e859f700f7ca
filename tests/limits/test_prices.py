"""The prices table: micro-dollars per token, the API's cache rates by default."""

from __future__ import annotations

from gateway.limits.prices import ModelPrice, Spent, price_for


def test_prices_are_micro_dollars_per_token_rounded_up() -> None:
    price = ModelPrice(models=("claude-sonnet-*",), input=3.0, output=15.0)
    assert price.micro_usd(1_000, 100) == 3_000 + 1_500
    assert price.micro_usd(0, 0, cache_write=1_000, cache_read=1_000) == 3_750 + 300
    assert ModelPrice(models=("x",), input=0.8, output=4.0).micro_usd(1, 0) == 1
    assert Spent(1, 2, 3, 4).tokens == 10
    prices = (price, ModelPrice(models=("*",), input=1, output=1))
    assert price_for(prices, "claude-sonnet-4-5") is price
    assert price_for(prices[:1], "claude-haiku-4-5") is None
