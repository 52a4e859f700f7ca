"""The limits file's model: model groups, their limits, and the buckets one request touches.

What a file may say and what it means; reading one (YAML, line numbers in errors) is
`limits_file.py`.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase
from functools import cached_property
from typing import Annotated, Literal, get_args
from zoneinfo import ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from gateway.limits.model import LIMIT_FIELDS, BucketSpec, Dimension
from gateway.limits.prices import ModelPrice
from gateway.limits.reservation import OutputReservation, parse_output_reservation
from gateway.limits.tenants import Share, TenantConfig, UpstreamKey, zone_named

NonNegativeInt = Annotated[int, Field(ge=0, strict=True)]

Endpoint = Literal["count_tokens", "batches"]
"""Endpoints with their own upstream RPM, apart from the Messages buckets (reference 1.8)."""
ENDPOINT_GROUPS: dict[str, str] = {name: f"_{name}" for name in get_args(Endpoint)}
"""The reserved group name of each endpoint's bucket, e.g. `cgw:{<scope>:_batches}:requests`."""
_ENDPOINT_SETTINGS: dict[str, str] = {
    "count_tokens": "count_tokens_requests_per_minute",
    "batches": "batch_requests_per_minute",
}
"""The limits file's key for each endpoint's own RPM."""
LEARNED_DIMENSIONS = (Dimension.REQUESTS, Dimension.INPUT_TOKENS, Dimension.OUTPUT_TOKENS)
"""What `learn_limits` learns from the API's `anthropic-ratelimit-*-limit` headers."""


class LimitsFileError(Exception):
    """A limits file that cannot be used; the message names the file, line and problem."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QueueLimits(_Section):
    """How long requests may wait for capacity."""

    max_wait_seconds: Annotated[float, Field(ge=0, strict=True)] = 30.0


class GroupLimits(_Section):
    """Models sharing one set of limits (an upstream model class or a local policy)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    models: Annotated[tuple[Annotated[str, Field(min_length=1)], ...], Field(min_length=1)]
    requests_per_minute: NonNegativeInt | None = None
    input_tokens_per_minute: NonNegativeInt | None = None
    output_tokens_per_minute: NonNegativeInt | None = None
    tokens_per_minute: NonNegativeInt | None = None
    tokens_per_day: NonNegativeInt | None = None
    output_reservation: Annotated[OutputReservation, BeforeValidator(parse_output_reservation)] = (
        OutputReservation()
    )
    cache_reads_count: Annotated[bool, Field(strict=True)] = False
    """Cache reads count toward ITPM (the models marked with a dagger in the rate-limit docs)."""
    learn_limits: Annotated[bool, Field(strict=True)] = False
    """Learn RPM/ITPM/OTPM the group does not set from the API's `-limit` headers."""
    estimate: Literal["heuristic", "count_tokens"] = "heuristic"
    """How input is estimated at admission: the local heuristic, or one upstream
    `count_tokens` call (the heuristic when it fails, is slow or has no room)."""
    estimate_timeout_seconds: Annotated[float, Field(gt=0, allow_inf_nan=False, strict=True)] = 1.0
    """The longest an exact count may take before the heuristic is used instead."""
    burst_seconds: Annotated[float, Field(gt=0, le=60, allow_inf_nan=False)] | None = None
    """A per-minute bucket holds this many seconds of its limit (None: a whole minute)."""
    enforce: Annotated[bool, Field(strict=True)] | None = None
    """False: shadow mode for this group (decide, count and log, but forward every
    request); None: the file's `enforce`."""

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name.startswith("_"):
            raise PydanticCustomError(
                "reserved_name", "names starting with '_' are reserved for the gateway"
            )
        return name

    def matches(self, model: str) -> bool:
        """Whether `model` matches one of this group's glob patterns."""
        return any(fnmatchcase(model, pattern) for pattern in self.models)

    def limits(self) -> dict[Dimension, int]:
        """The configured limit of each dimension this group sets."""
        found = {}
        for dim, field_name in LIMIT_FIELDS:  # runs for every admitted request
            limit = getattr(self, field_name)
            if limit is not None:
                found[dim] = limit
        return found


class LimitsConfig(_Section):
    """The whole limits file."""

    scope: Literal["organization", "key"] = "organization"
    """Whose buckets a request draws on: its key's organisation (every key of one
    organisation shares them, as the API counts), or its key alone."""
    queue: QueueLimits = Field(default_factory=QueueLimits)
    headroom: Annotated[float, Field(ge=0, lt=1, strict=True)] = 0.02
    priority_reserve: Annotated[float, Field(ge=0, lt=1, strict=True)] = 0.0
    """The share of every bucket batch-priority requests may not use: kept for interactive
    ones (0: one lane, batch is interactive)."""
    fair_share: Annotated[bool, Field(strict=True)] = False
    """Serve a tenant that took more than an equal share of a group in the last minute from
    the batch lane while it stays over (`fairness.py`); needs a `priority_reserve`."""
    groups: tuple[GroupLimits, ...] = ()
    unmatched_models: Literal["reject", "pass"] = "reject"
    redis_failure: Literal["fail_open", "fail_closed"] = "fail_open"
    fail_open_share: Annotated[float, Field(gt=0, le=1, strict=True)] = 1.0
    count_tokens_requests_per_minute: NonNegativeInt | None = None
    batch_requests_per_minute: NonNegativeInt | None = None
    enforce: Annotated[bool, Field(strict=True)] = True
    """False: shadow mode (decisions computed, counted and logged; every request forwarded)."""
    upstream_keys: tuple[UpstreamKey, ...] = ()
    """Named upstream keys (one per workspace) tenants may be assigned."""
    prices: tuple[ModelPrice, ...] = ()
    """USD per million tokens per model pattern, for spend budgets (`prices.py`)."""
    budget_timezone: str = "UTC"
    """The time zone whose calendar days and months budgets reset on."""
    tenants: tuple[TenantConfig, ...] = ()
    """Who may call with a gateway key, and their sub-quotas (`tenants.py`)."""

    @field_validator("budget_timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            zone_named(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise PydanticCustomError(
                "time_zone", "unknown time zone '{name}' (an IANA name like Europe/Paris)",
                {"name": name},
            ) from None  # fmt: skip
        return name

    @field_validator("groups")
    @classmethod
    def _unique_groups(cls, groups: tuple[GroupLimits, ...]) -> tuple[GroupLimits, ...]:
        _unique((group.name for group in groups), "group")
        return groups

    @field_validator("upstream_keys")
    @classmethod
    def _unique_keys(cls, keys: tuple[UpstreamKey, ...]) -> tuple[UpstreamKey, ...]:
        _unique((key.name for key in keys), "upstream key")
        return keys

    @field_validator("fair_share")
    @classmethod
    def _fair_needs_reserve(cls, fair: bool, info: ValidationInfo) -> bool:
        if fair and not info.data.get("priority_reserve"):
            raise PydanticCustomError(
                "fair_share", "fair_share needs a priority_reserve above 0 to hold tenants to"
            )
        return fair

    @field_validator("tenants")
    @classmethod
    def _valid_tenants(
        cls, tenants: tuple[TenantConfig, ...], info: ValidationInfo
    ) -> tuple[TenantConfig, ...]:
        """Unique names and key ids; sub-quotas on groups that exist, shares only of limits
        the group sets; upstream keys that are named in `upstream_keys`."""
        _unique((tenant.name for tenant in tenants), "tenant")
        groups = {group.name: group for group in info.data.get("groups", ())}
        upstream = {key.name for key in info.data.get("upstream_keys", ())}
        seen: set[str] = set()
        for index, tenant in enumerate(tenants):
            for position, key_id in enumerate(tenant.key_ids()):
                if key_id in seen:
                    raise _at(index, "keys", position, problem=f"key id {key_id} is used twice")
                seen.add(key_id)
            if tenant.budgets is not None and not groups:
                raise _at(index, "budgets", problem=(
                    "budgets count the calls a group covers, and the file has no groups"
                ))  # fmt: skip
            if tenant.budgets is not None and tenant.budgets.spends and not info.data.get("prices"):
                raise _at(index, "budgets", problem=(
                    "a budget in USD needs a prices table (prices:) to count spend with"
                ))  # fmt: skip
            if tenant.upstream_key is not None and tenant.upstream_key not in upstream:
                raise _at(index, "upstream_key", problem=(
                    f"'{tenant.upstream_key}' is not one of upstream_keys"
                    f" ({', '.join(sorted(upstream)) or 'none is defined'})"
                ))  # fmt: skip
            for name, quota in tenant.limits.items():
                group = groups.get(name)
                if group is None:
                    raise _at(index, "limits", name, problem=f"no group is called '{name}'")
                configured = group.limits()
                for dimension, figure in quota.figures().items():
                    if isinstance(figure, Share) and dimension not in configured:
                        raise _at(index, "limits", name, dimension.per_period_name, problem=(
                            f"a share needs the group's own {dimension.per_period_name}, "
                            f"which '{name}' does not set"
                        ))  # fmt: skip
        return tenants

    @property
    def sets_limits(self) -> bool:
        """Whether the file limits anything: a group, or an endpoint's own RPM. A file that
        does not (an empty one included) means the same as no file: plain pass-through."""
        return bool(self.groups) or any(
            self.endpoint_limit(endpoint) is not None for endpoint in get_args(Endpoint)
        )

    def closed_limits(self) -> list[str]:
        """One line per limit of 0: it admits nothing, every request it covers gets 413."""
        lines = [
            f"groups[{index}] ({group.name}): {dimension.per_period_name} is 0: every request "
            f"for {', '.join(group.models)} is refused (413)"
            for index, group in enumerate(self.groups)
            for dimension, limit in group.limits().items()
            if limit == 0
        ]
        for endpoint in get_args(Endpoint):
            if self.endpoint_limit(endpoint) == 0:
                lines.append(
                    f"{_ENDPOINT_SETTINGS[endpoint]} is 0: every {endpoint} call is refused (413)"
                )
        return lines

    def group_for(self, model: str) -> GroupLimits | None:
        """The first group whose patterns match `model`, or None."""
        return next((group for group in self.groups if group.matches(model)), None)

    def buckets_for(self, group: GroupLimits, scope: str) -> list[BucketSpec]:
        """The buckets a request of `group` touches in `scope`, headroom taken off."""
        return [
            self.bucket(group, scope, dimension, limit)
            for dimension, limit in group.limits().items()
        ]

    def bucket(
        self, group: GroupLimits, scope: str, dimension: Dimension, limit: int
    ) -> BucketSpec:
        """One bucket of `group` in `scope`, with the file's headroom and the group's burst."""
        return BucketSpec.create(
            scope, group.name, dimension, limit, headroom=self.headroom,
            burst_seconds=group.burst_seconds,
        )  # fmt: skip

    def configured_limits(self) -> dict[tuple[str, str], int]:
        """Each group's configured limit per (group, dimension), for the metrics."""
        return {(g.name, d.value): n for g in self.groups for d, n in g.limits().items()}

    def tenant(self, name: str) -> TenantConfig | None:
        """The tenant called `name`, or None."""
        return self._tenants_by_name.get(name)

    @cached_property
    def _tenants_by_name(self) -> dict[str, TenantConfig]:
        """Tenants by name, built once (read on every request of a tenant)."""
        return {tenant.name: tenant for tenant in self.tenants}

    def tenant_limits(self, group: GroupLimits, tenant: str) -> dict[Dimension, int]:
        """The tenant's sub-quota on `group`, shares resolved (empty when it has none)."""
        config = self.tenant(tenant)
        quota = None if config is None else config.limits.get(group.name)
        return {} if quota is None else quota.limits(group.limits())

    def tenant_buckets(self, group: GroupLimits, scope: str, tenant: str) -> list[BucketSpec]:
        """The tenant's sub-quota buckets on `group` in `scope` (none when it has none).

        No headroom: a sub-quota is the gateway's own policy, not a limit upstream enforces.
        """
        return [
            BucketSpec.create(scope, group.name, dimension, limit, tenant=tenant)
            for dimension, limit in self.tenant_limits(group, tenant).items()
        ]

    def enforces(self, group: str | None) -> bool:
        """Whether decisions on `group` (None: no group) are enforced, or only shadowed."""
        found = None if group is None else next((g for g in self.groups if g.name == group), None)
        if found is not None and found.enforce is not None:
            return found.enforce
        return self.enforce

    def endpoint_limit(self, endpoint: Endpoint) -> int | None:
        """The RPM the file sets for `endpoint`, or None."""
        limit: int | None = getattr(self, _ENDPOINT_SETTINGS[endpoint])
        return limit

    def endpoint_buckets(self, endpoint: Endpoint, scope: str) -> list[BucketSpec]:
        """The one RPM bucket `endpoint` has in `scope`, or none when the file sets no limit."""
        limit = self.endpoint_limit(endpoint)
        if limit is None:
            return []
        group = ENDPOINT_GROUPS[endpoint]
        return [BucketSpec.create(scope, group, Dimension.REQUESTS, limit, headroom=self.headroom)]


def _unique(names: Iterable[str], noun: str) -> None:
    """Raise at the second entry of a repeated name (the loader points at its name)."""
    seen: set[str] = set()
    for index, name in enumerate(names):
        if name in seen:
            raise PydanticCustomError(
                "duplicate_name",
                "duplicate {noun} name '{name}'",
                {"noun": noun, "name": name, "at": [index, "name"]},
            )
        seen.add(name)


def _at(*loc: int | str, problem: str) -> PydanticCustomError:
    """An error the loader reports at `loc` below the field being validated."""
    return PydanticCustomError("tenant", "{problem}", {"problem": problem, "at": list(loc)})
