"""`BucketCache`: each model's group and each (group, scope)'s buckets, built once.

Every admission needs both. Built afresh they cost a glob match per group and a validated
`BucketSpec` per bucket, several times per request: most of the limiter's own CPU. Both are
pure functions of the limits file and the learned limits, so they are kept.

Their keys are client input (model names from request bodies, scopes from API keys), so
each table holds at most `max_entries` and drops its oldest entry to take a new one: a flood
of distinct keys costs rebuilds, never memory. Learned limits are the one input that
changes after start; `forget(group)` drops that group's buckets, so the next admission
builds them with what was just learned.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

from gateway.limits.learned_limits import LearnedLimits
from gateway.limits.model import BucketSpec
from gateway.limits.policy import ENDPOINT_GROUPS, Endpoint, GroupLimits, LimitsConfig

MAX_ENTRIES = 4_096
"""Entries per table: far above the (group, key) pairs one instance sees in a minute."""

Buckets = tuple[BucketSpec, ...]
_K = TypeVar("_K")
_V = TypeVar("_V")


class BucketCache:
    """The limits file's answers for the hot path, memoised in bounded tables."""

    def __init__(
        self,
        config: LimitsConfig,
        learned: LearnedLimits,
        *,
        learn_all: bool,
        max_entries: int = MAX_ENTRIES,
        share: float = 1.0,
    ) -> None:
        """`share`: the part of every limit this instance enforces on its own (1/N for each
        of N workers dividing in-process limits, GATEWAY_WORKER_LIMITS=divide)."""
        self._config = config
        self._share = share
        self._learned = learned
        self._learn_all = learn_all
        self._max_entries = max_entries
        self._by_name: dict[str, GroupLimits] = {}
        for group in config.groups:  # the first of a name wins, as a scan would find it
            self._by_name.setdefault(group.name, group)
        self._models: dict[str, GroupLimits | None] = {}
        self._per_model: dict[str, GroupLimits] = {}
        self._scaled: dict[BucketSpec, BucketSpec] = {}
        self._buckets: dict[tuple[str, str, str], Buckets] = {}

    def __len__(self) -> int:
        """Entries held across every table (for tests of the bound)."""
        return len(self._models) + len(self._per_model) + len(self._buckets) + len(self._scaled)

    def group(self, name: str) -> GroupLimits | None:
        """The configured group called `name`, or None."""
        return self._by_name.get(name)

    def group_for(self, model: str) -> GroupLimits | None:
        """The file's group for `model`; with learning and no groups, one per model name."""
        try:
            group = self._models[model]
        except KeyError:
            group = self._config.group_for(model)
            self._put(self._models, model, group)
        if group is not None or not self._learn_all or self._config.groups:
            return group
        return self._model_group(model)

    def _model_group(self, model: str) -> GroupLimits | None:
        """`LearnedLimits.model_group`, whose pydantic construction costs ~20 us, kept.

        Whether it answers depends on how full the learned table is, so a kept group is
        given only while `model_group` would give it: its name learned, or room to learn.
        """
        group = self._per_model.get(model)
        if group is not None and (group.name in self._learned or self._learned.has_room()):
            return group
        group = self._learned.model_group(model)
        if group is not None:
            self._put(self._per_model, model, group)
        return group

    def buckets(self, group: GroupLimits, scope: str, tenant: str = "") -> Buckets:
        """The buckets a request of `group` touches in `scope`: configured, then learned,
        then the `tenant`'s sub-quota on the group, if it has one.

        Keyed by the group's name: a name means one group (the file's names are unique;
        per-model learning groups exist only without a file and configure nothing).
        """
        key = (group.name, scope, tenant)
        found = self._buckets.get(key)
        if found is None:
            found = self._put(self._buckets, key, self._build(group, scope, tenant))
        return found

    def endpoint_buckets(self, endpoint: Endpoint, scope: str) -> Buckets:
        """The one RPM bucket `endpoint` has in `scope`, or none when the file sets no limit.

        Shares the bucket table: endpoint group names start with '_', which no configured or
        per-model group name can.
        """
        key = (ENDPOINT_GROUPS[endpoint], scope, "")
        found = self._buckets.get(key)
        if found is None:
            built = self._shared(self._config.endpoint_buckets(endpoint, scope))
            found = self._put(self._buckets, key, built)
        return found

    def fallback(self, buckets: Sequence[BucketSpec]) -> list[BucketSpec]:
        """`buckets` holding the file's `fail_open_share`, for the local fail-open backend
        (every request takes this path while the shared backend is down)."""
        local = []
        for bucket in buckets:
            found = self._scaled.get(bucket)
            if found is None:
                scaled = bucket.scaled(self._config.fail_open_share)
                found = self._put(self._scaled, bucket, scaled)
            local.append(found)
        return local

    def recent(self, count: int) -> list[Buckets]:
        """The `count` bucket sets built most recently (the live view reads their levels)."""
        return list(self._buckets.values())[-count:]

    def forget(self, group: str) -> None:
        """Drop `group`'s buckets in every scope: its learned limits changed."""
        self._buckets = {key: value for key, value in self._buckets.items() if key[0] != group}

    def _build(self, group: GroupLimits, scope: str, tenant: str) -> Buckets:
        """Configured buckets, then learned ones for dimensions the group does not set, then
        the tenant's."""
        configured = group.limits()
        learned = (
            self._config.bucket(group, scope, dim, limit)
            for dim, limit in self._learned.limits(group.name).items()
            if dim not in configured
        )
        tenants = self._config.tenant_buckets(group, scope, tenant) if tenant else ()
        return self._shared((*self._config.buckets_for(group, scope), *learned, *tenants))

    def _shared(self, buckets: Iterable[BucketSpec]) -> Buckets:
        """`buckets` holding this instance's `share` of each (all of it by default), scaled
        as `fallback` scales them: one `BucketSpec.scaled` for both."""
        if self._share == 1.0:
            return tuple(buckets)
        return tuple(bucket.scaled(self._share) for bucket in buckets)

    def _put(self, table: dict[_K, _V], key: _K, value: _V) -> _V:
        """Store `value`, first dropping the oldest entry when `table` is full."""
        if len(table) >= self._max_entries:
            del table[next(iter(table))]
        table[key] = value
        return value
