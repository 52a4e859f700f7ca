"""The limits file's `tenants:` and `upstream_keys:` sections: who may call, and their shares.

A tenant is a team or an app: its gateway keys (stored only as salted hashes, see
`gateway/identity.py`), the models it may use, the upstream key its calls go out with, and
its sub-quotas. A sub-quota is a bucket of its own nested in the organisation's: a figure
(`input_tokens_per_minute: 40000`) or a share of the group's configured limit
(`input_tokens_per_minute: "20%"`). A request of a tenant with a sub-quota on its group is
checked against both in the same reservation: room in both, or it waits or is refused.

Nothing here holds a secret: upstream keys are named here and read from an environment
variable or a file at start (`startup.py`), never written in the limits file.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, tzinfo
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from gateway.limits.model import LIMIT_FIELDS, Dimension

NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"
KEY_HASH = re.compile(
    r"^sha256:(?P<id>[0-9a-f]{12}):(?P<salt>[0-9a-f]{32}):(?P<digest>[0-9a-f]{64})$"
)
"""A stored gateway key: `sha256:<key id>:<salt>:<SHA-256 of salt + secret>`, as
`claude-gateway keys new` prints it."""
_SHARE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def zone_named(name: str) -> tzinfo:
    """The time zone called `name`: UTC without needing the system's zone database."""
    return UTC if name.upper() == "UTC" else ZoneInfo(name)


Priority = Literal["interactive", "batch"]
"""Lanes: `batch` may use only what lies above the file's `priority_reserve` of a bucket."""


class Share(float):
    """A fraction of the group's configured limit (`"20%"` is `Share(0.2)`)."""


def _figure(value: object) -> int | Share:
    """A whole number >= 0, or `"20%"` as a `Share`."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise PydanticCustomError("figure", "must be >= 0")
        return value
    if isinstance(value, str):
        match = _SHARE.match(value)
        if match is None:
            raise PydanticCustomError("figure", "must be a whole number or a share like '20%'")
        percent = float(match.group(1))
        if not 0 < percent <= 100:
            raise PydanticCustomError("figure", "a share must be above 0% and at most 100%")
        return Share(percent / 100)
    raise PydanticCustomError("figure", "must be a whole number or a share like '20%'")


Figure = Annotated[int | float, PlainValidator(_figure)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TenantGroupLimits(_Section):
    """A tenant's sub-quota on one model group: any of the group's dimensions."""

    requests_per_minute: Figure | None = None
    input_tokens_per_minute: Figure | None = None
    output_tokens_per_minute: Figure | None = None
    tokens_per_minute: Figure | None = None
    tokens_per_day: Figure | None = None

    def figures(self) -> dict[Dimension, int | float]:
        """What this sub-quota sets, per dimension: an int, or a `Share` (a float)."""
        found = {dim: getattr(self, field_name) for dim, field_name in LIMIT_FIELDS}
        return {dim: figure for dim, figure in found.items() if figure is not None}

    def limits(self, group_limits: dict[Dimension, int]) -> dict[Dimension, int]:
        """The absolute limits, shares taken of `group_limits` (rounded down, at least 1
        request a minute: a share never closes a group to its tenant)."""
        limits: dict[Dimension, int] = {}
        for dimension, figure in self.figures().items():
            if isinstance(figure, Share):
                share = math.floor(group_limits[dimension] * figure)
                limits[dimension] = max(share, 1) if dimension is Dimension.REQUESTS else share
            else:
                limits[dimension] = int(figure)
        return limits


MICRO = 1_000_000
"""Micro-dollars in a dollar: spend is counted in whole micro-dollars."""
Dollars = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class TenantBudgets(_Section):
    """A tenant's budgets on calendar periods (the file's `budget_timezone`, UTC unless
    set): spend in USD per day and per month from the `prices` table, and tokens per day.
    Charged from each response's real usage; a request the rest cannot cover is refused."""

    usd_per_day: Dollars | None = None
    usd_per_month: Dollars | None = None
    tokens_per_calendar_day: Annotated[int, Field(gt=0, strict=True)] | None = None

    def limits(self) -> dict[str, int]:
        """Each budget set, by name, in its unit: micro-dollars or tokens."""
        limits: dict[str, int] = {}
        for name in ("usd_per_day", "usd_per_month"):
            dollars = getattr(self, name)
            if dollars is not None:
                limits[name] = round(dollars * MICRO)
        if self.tokens_per_calendar_day is not None:
            limits["tokens_per_calendar_day"] = self.tokens_per_calendar_day
        return limits

    @property
    def spends(self) -> bool:
        """Whether a budget is in dollars (its models then need a price)."""
        return self.usd_per_day is not None or self.usd_per_month is not None


class UpstreamKey(_Section):
    """A named upstream (Anthropic) key, one per workspace, read from `env` or `file`."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    env: Annotated[str, Field(min_length=1)] | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> UpstreamKey:
        if (self.env is None) == (self.file is None):
            raise PydanticCustomError("key_source", "give exactly one of 'env' and 'file'")
        return self


def _key_hash(value: object) -> object:
    if isinstance(value, str) and not KEY_HASH.match(value.strip()):
        raise PydanticCustomError(
            "key_hash",
            "must be a key hash as 'claude-gateway keys new' prints it "
            "(sha256:<id>:<salt>:<digest>), never the key itself",
        )
    return value.strip() if isinstance(value, str) else value


class TenantConfig(_Section):
    """One tenant: its keys, models, upstream key and sub-quotas."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    keys: tuple[Annotated[str, BeforeValidator(_key_hash)], ...] = ()
    """Salted hashes of its gateway keys; several while one is rotated out."""
    models: Annotated[tuple[Annotated[str, Field(min_length=1)], ...], Field(min_length=1)] = ("*",)
    """Glob patterns of the models it may use (403 `permission_error` for others)."""
    upstream_key: Annotated[str, Field(pattern=NAME_PATTERN)] | None = None
    """The name of an `upstream_keys` entry; None: `GATEWAY_UPSTREAM_API_KEY`."""
    limits: dict[str, TenantGroupLimits] = Field(default_factory=dict)
    """Sub-quotas per model group name."""
    budgets: TenantBudgets | None = None
    """Spend and calendar-day token budgets."""
    priority: Priority = "interactive"
    """The highest lane its requests may use (`x-gateway-priority` may only lower it)."""

    def may_use(self, model: str) -> bool:
        """Whether `model` matches one of the tenant's patterns."""
        return any(fnmatchcase(model, pattern) for pattern in self.models)

    def key_ids(self) -> list[str]:
        """The key id of each stored hash (the id is not secret: it finds the hash)."""
        return [key.split(":")[1] for key in self.keys]
