"""The limits file's `prices:` table: what a request costs in USD, for tenants' spend budgets.

Prices are USD per million tokens, as the API's pricing page gives them, per model pattern:
input, output, cache writes and cache reads. One token at `p` USD per million costs `p`
micro-dollars, so spend is kept in whole micro-dollars (integers add exactly, in Redis too).
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Annotated, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

Price = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class Spent(NamedTuple):
    """The tokens one response used, as its `usage` reports them."""

    input_tokens: int
    output_tokens: int
    cache_write: int = 0
    cache_read: int = 0

    @property
    def tokens(self) -> int:
        """Every token, as a calendar-day token budget counts them."""
        return sum(self)


class ModelPrice(BaseModel):
    """The prices of the models matching `models` (glob patterns), USD per million tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: Annotated[tuple[Annotated[str, Field(min_length=1)], ...], Field(min_length=1)]
    input: Price
    output: Price
    cache_write: Price | None = None
    """Cache writes (5-minute TTL); None: 1.25 x input, the API's rate."""
    cache_read: Price | None = None
    """Cache reads; None: 0.1 x input, the API's rate."""

    def matches(self, model: str) -> bool:
        """Whether `model` matches one of the patterns."""
        return any(fnmatchcase(model, pattern) for pattern in self.models)

    def micro_usd(
        self, input_tokens: int, output_tokens: int, cache_write: int = 0, cache_read: int = 0
    ) -> int:
        """What these tokens cost, in whole micro-dollars (rounded up: never undercharged)."""
        write = self.input * 1.25 if self.cache_write is None else self.cache_write
        read = self.input * 0.1 if self.cache_read is None else self.cache_read
        total = (
            input_tokens * self.input
            + output_tokens * self.output
            + cache_write * write
            + cache_read * read
        )
        return -int(-total // 1)


def price_for(prices: tuple[ModelPrice, ...], model: str) -> ModelPrice | None:
    """The first entry whose patterns match `model`, or None."""
    return next((price for price in prices if price.matches(model)), None)
