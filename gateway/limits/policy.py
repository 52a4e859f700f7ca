"""The limits file's model: model groups, their limits, and the buckets one request touches.

What a file may say and what it means; reading one (YAML, line numbers in errors) is
`limits_file.py`.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Annotated, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
)
from pydantic_core import PydanticCustomError

from gateway.limits.model import BucketSpec, Dimension
from gateway.limits.reservation import OutputReservation, parse_output_reservation

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
        by_dimension = {
            Dimension.REQUESTS: self.requests_per_minute,
            Dimension.INPUT_TOKENS: self.input_tokens_per_minute,
            Dimension.OUTPUT_TOKENS: self.output_tokens_per_minute,
            Dimension.TOKENS: self.tokens_per_minute,
            Dimension.TOKENS_PER_DAY: self.tokens_per_day,
        }
        return {dim: limit for dim, limit in by_dimension.items() if limit is not None}


class LimitsConfig(_Section):
    """The whole limits file."""

    scope: Literal["organization", "key"] = "organization"
    """Whose buckets a request draws on: its key's organisation (every key of one
    organisation shares them, as the API counts), or its key alone."""
    queue: QueueLimits = Field(default_factory=QueueLimits)
    headroom: Annotated[float, Field(ge=0, lt=1, strict=True)] = 0.02
    groups: tuple[GroupLimits, ...] = ()
    unmatched_models: Literal["reject", "pass"] = "reject"
    redis_failure: Literal["fail_open", "fail_closed"] = "fail_open"
    fail_open_share: Annotated[float, Field(gt=0, le=1, strict=True)] = 1.0
    count_tokens_requests_per_minute: NonNegativeInt | None = None
    batch_requests_per_minute: NonNegativeInt | None = None

    @field_validator("groups")
    @classmethod
    def _unique_names(cls, groups: tuple[GroupLimits, ...]) -> tuple[GroupLimits, ...]:
        seen: set[str] = set()
        for index, group in enumerate(groups):
            if group.name in seen:
                raise PydanticCustomError(
                    "duplicate_group",
                    "duplicate group name '{name}'",
                    {"name": group.name, "index": index},
                )
            seen.add(group.name)
        return groups

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
