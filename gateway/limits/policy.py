"""The limits file: model groups, their limits, and the buckets one request touches.

`load_limits(path)` validates a YAML file (see `config/limits.example.yaml`) and reports any
mistake as one `LimitsFileError` naming the file, the line and the problem::

    limits.yaml:7: groups[0].requests_per_minute: must be >= 0

Line numbers come from the composed YAML node tree: each pydantic error `loc` is walked down
that tree to the node it names.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from gateway.limits.model import BucketSpec, Dimension

NonNegativeInt = Annotated[int, Field(ge=0, strict=True)]
Loc = tuple[int | str, ...]

_MESSAGES = {
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "extra_forbidden": "unknown key",
    "missing": "required",
    "too_short": "must not be empty",
    "string_too_short": "must not be empty",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "tuple_type": "must be a list",
    "model_type": "must be a mapping",
    "literal_error": "must be {expected}",
    "string_pattern_mismatch": "must contain only letters, digits, '_', '.' and '-'",
}


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


COLD_OUTPUT_ESTIMATE = 1_024
"""Output tokens `estimate` reserves before the group has settled a response."""


@dataclass(frozen=True, slots=True)
class OutputReservation:
    """How many output tokens a request reserves at admission; settlement corrects it.

    `estimate` (the default: the API charges output as it is generated, reference §1.4): the
    group's learned high quantile of output (about its 90th percentile; COLD_OUTPUT_ESTIMATE
    until one response settled), at most `max_tokens`; a stream's output past it is charged
    while it is generated. `max_tokens` (accounts whose upstream still pre-charges
    `max_tokens`: safe, wasteful), `expected` (the learned mean output, at most `max_tokens`;
    `max_tokens` until one response settled), a fraction of `max_tokens`, or `fixed N` (at
    most `max_tokens`).
    """

    mode: Literal["estimate", "max_tokens", "expected", "fraction", "fixed"] = "estimate"
    value: float = 0.0

    @property
    def charges_as_generated(self) -> bool:
        """Whether upstream is taken to charge output as it is generated (any mode but
        `max_tokens`): then `max_tokens` alone never makes a request "never fit", and a
        stream's output past its reservation is charged while it runs."""
        return self.mode != "max_tokens"

    def amount(self, max_tokens: int, expected: float | None, high: float | None) -> int:
        """Tokens to reserve for a request asking for `max_tokens` (0: it named none), given
        the group's learned mean (`expected`) and high quantile (`high`) output."""
        asked = max_tokens if max_tokens > 0 else COLD_OUTPUT_ESTIMATE
        if self.mode == "estimate":
            guess = COLD_OUTPUT_ESTIMATE if high is None else max(1, math.ceil(high))
            return min(asked, guess)
        if self.mode == "fraction":
            return math.ceil(self.value * max_tokens)
        if self.mode == "fixed":
            return min(int(self.value), asked)
        if self.mode == "expected" and expected is not None:
            return min(asked, max(1, math.ceil(expected)))
        return max_tokens


def _output_reservation(value: object) -> OutputReservation:
    """Parse `estimate`, `max_tokens`, `expected`, a number in [0, 1] or `fixed N`."""
    if isinstance(value, OutputReservation):
        return value
    if value in ("estimate", "max_tokens", "expected"):
        return OutputReservation(value)
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
        return OutputReservation("fraction", float(value))
    if isinstance(value, str):
        word, _, number = value.partition(" ")
        if word == "fixed" and number.strip().isdigit():
            return OutputReservation("fixed", int(number))
    raise PydanticCustomError(
        "output_reservation",
        "must be estimate, max_tokens, expected, a fraction from 0 to 1, or 'fixed N'",
    )


class GroupLimits(_Section):
    """Models sharing one set of limits (an upstream model class or a local policy)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    models: Annotated[tuple[Annotated[str, Field(min_length=1)], ...], Field(min_length=1)]
    requests_per_minute: NonNegativeInt | None = None
    input_tokens_per_minute: NonNegativeInt | None = None
    output_tokens_per_minute: NonNegativeInt | None = None
    tokens_per_minute: NonNegativeInt | None = None
    tokens_per_day: NonNegativeInt | None = None
    output_reservation: Annotated[OutputReservation, BeforeValidator(_output_reservation)] = (
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


def load_limits(path: Path) -> LimitsConfig:
    """Read and validate a limits file; an empty one is valid and limits nothing."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LimitsFileError(f"{path}: cannot read: {exc.strerror}") from exc
    loader = yaml.SafeLoader(text)
    try:  # what yaml.safe_load does, keeping the node tree for line numbers
        root = loader.get_single_node()
        data = None if root is None else loader.construct_document(root)
    except yaml.YAMLError as exc:
        raise LimitsFileError(_yaml_problem(path, exc)) from exc
    finally:
        loader.dispose()
    if root is None:
        return LimitsConfig()
    duplicate = _duplicate_key(root, ())
    if duplicate is not None:
        line, loc = duplicate
        raise LimitsFileError(f"{path}:{line}: {_path(loc)}: duplicate key")
    try:
        return LimitsConfig.model_validate(data)
    except ValidationError as exc:
        problems = (_problem(path, root, error) for error in exc.errors(include_url=False))
        raise LimitsFileError("\n".join(problems)) from exc


def _yaml_problem(path: Path, exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        return f"{path}:{exc.problem_mark.line + 1}: invalid YAML: {exc.problem}"
    return f"{path}: invalid YAML: {exc}"


def _problem(path: Path, root: yaml.Node, error: ErrorDetails) -> str:
    """One validation error as `file:line: where: what`."""
    ctx = error.get("ctx", {})
    loc = tuple(error["loc"])
    if "index" in ctx:  # a duplicate group: point at the second one's name
        loc = (*loc, ctx["index"], "name")
    template = _MESSAGES.get(error["type"])
    plain = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in ctx.items()}
    message = template.format(**plain) if template else error["msg"]
    return f"{path}:{_line(root, loc)}: {_path(loc)}: {message}"


def _line(root: yaml.Node, loc: Sequence[int | str]) -> int:
    """The 1-based line of the deepest node `loc` reaches (a mapping entry's key line)."""
    node, line = root, root.start_mark.line
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            entry = next((e for e in node.value if e[0].value == part), None)
            if entry is None:
                break
            line, node = entry[0].start_mark.line, entry[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line
        else:
            break
    return line + 1


def _duplicate_key(node: yaml.Node, loc: Loc) -> tuple[int, Loc] | None:
    """The line and path of the first key repeated in one mapping (YAML keeps the last)."""
    if isinstance(node, yaml.SequenceNode):
        children: list[tuple[int | str, yaml.Node]] = list(enumerate(node.value))
    elif isinstance(node, yaml.MappingNode):
        children, seen = [], set()
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                continue
            if key.value in seen:
                return key.start_mark.line + 1, (*loc, key.value)
            seen.add(key.value)
            children.append((key.value, value))
    else:
        return None
    for part, child in children:
        found = _duplicate_key(child, (*loc, part))
        if found is not None:
            return found
    return None


def _path(loc: Sequence[int | str]) -> str:
    """`('groups', 0, 'name')` as `groups[0].name`; the empty path as `(top level)`."""
    text = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
    return text.lstrip(".") or "(top level)"
