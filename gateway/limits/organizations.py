"""`Organizations`: which organisation each API key belongs to, so its keys share one budget.

The API's limits belong to the organisation (reference §1.1), and it names every key's
organisation in the `anthropic-organization-id` response header. With `scope: organization`
(the default) the limiter charges a request to its key's organisation: every key of one
organisation shares one set of buckets.

A key whose organisation is not known yet (its first response has not come back) is charged
to the *assumed* organisation, `ASSUMED`: the fleet's primary organisation, the first one
any instance learned. So a new key can never double an organisation's rate: until a
response proves otherwise it shares the primary's buckets. A key proven to belong to another
organisation gets that organisation's own scope (`org-<id>`); the primary's keys stay on
`ASSUMED`, the very buckets they were charged to before anyone knew, so learning the
mapping moves no debt. A key of another organisation is over-charged to the primary until
its first response: safe, and brief.

With Redis the mapping is shared by the fleet (`LimitBackend.share_organizations`, synced
every few seconds by `LearningSync`, never on a request's path); until an instance has heard
the fleet's primary, it charges every key to `ASSUMED` (two instances may each have learned
a different organisation first). In process, the first organisation learned is the primary.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

ASSUMED = "org"
"""The scope of the primary organisation's keys, and of keys not known yet."""
MAX_KEYS = 10_000
"""Keys remembered per instance; past this, new keys stay on the assumed organisation."""
_ORG_ID = re.compile(r"[A-Za-z0-9-]{1,64}")


class Organizations:
    """Key scope -> organisation, learned from responses; `shared`: synced with a fleet."""

    def __init__(self, *, shared: bool) -> None:
        self._shared = shared
        self._orgs: dict[str, str] = {}
        self._unsent: dict[str, str] = {}
        self._primary: str | None = None

    @property
    def primary(self) -> str | None:
        """The organisation whose keys use `ASSUMED` (None until one is known)."""
        return self._primary

    def scope_for(self, key_scope: str) -> str:
        """The bucket scope to charge a request of this key to."""
        org = self._orgs.get(key_scope)
        if org is None or self._primary is None or org == self._primary:
            return ASSUMED
        return f"org-{org}"

    def learn(self, key_scope: str, org_id: str | None) -> None:
        """What a response said: this key belongs to `org_id` (ignored when absent or not an
        id: the header is the API's, but a proxy in between could send anything)."""
        if org_id is None or not _ORG_ID.fullmatch(org_id):
            return
        if self._orgs.get(key_scope) == org_id or len(self._orgs) >= MAX_KEYS:
            return
        self._orgs[key_scope] = org_id
        if self._shared:
            self._unsent[key_scope] = org_id
        elif self._primary is None:
            self._primary = org_id

    def unsent(self) -> dict[str, str]:
        """Take what this instance learned since its last sync (`adopt` or `restore` it)."""
        unsent, self._unsent = self._unsent, {}
        return unsent

    def restore(self, unsent: Mapping[str, str]) -> None:
        """A sync failed: keep its mappings for the next one."""
        self._unsent = {**unsent, **self._unsent}

    def adopt(self, primary: str | None, mapping: Mapping[str, str]) -> None:
        """The fleet's answer: its primary organisation and every key it knows."""
        self._primary = primary
        for key_scope, org_id in mapping.items():
            if len(self._orgs) < MAX_KEYS or key_scope in self._orgs:
                self._orgs[key_scope] = org_id
