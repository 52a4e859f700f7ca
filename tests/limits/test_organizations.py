"""`Organizations`: keys charged to their organisation, unknown keys to the assumed one."""

from __future__ import annotations

import pytest

from gateway.limits.organizations import ASSUMED, MAX_KEYS, Organizations


def test_in_process_the_first_organization_learned_is_the_assumed_one() -> None:
    """Unknown keys and the first organisation's keys share `ASSUMED`; another organisation's
    key gets its own scope once a response named it."""
    orgs = Organizations(shared=False)
    before = orgs.scope_for("k1")
    orgs.learn("k1", "org-a")
    orgs.learn("k2", "org-b")
    assert (ASSUMED, ASSUMED, "org-org-b", ASSUMED, "org-a") == (
        before,
        orgs.scope_for("k1"),
        orgs.scope_for("k2"),
        orgs.scope_for("k3"),
        orgs.primary,
    )


def test_shared_mappings_are_trusted_only_after_the_fleet_named_its_primary() -> None:
    """With a fleet, every key stays on `ASSUMED` until a sync brings the fleet's primary
    (another instance may have learned another organisation first)."""
    orgs = Organizations(shared=True)
    orgs.learn("k2", "org-b")
    unsynced = orgs.scope_for("k2")
    sent = orgs.unsent()
    orgs.adopt("org-a", {"k1": "org-a", **sent})
    assert (ASSUMED, {"k2": "org-b"}, "org-org-b", ASSUMED, {}) == (
        unsynced,
        sent,
        orgs.scope_for("k2"),
        orgs.scope_for("k1"),
        orgs.unsent(),
    )


def test_a_failed_sync_keeps_what_it_would_have_sent() -> None:
    """Mappings taken for a sync that failed go out with the next one."""
    orgs = Organizations(shared=True)
    orgs.learn("k1", "org-a")
    taken = orgs.unsent()
    orgs.learn("k2", "org-b")
    orgs.restore(taken)
    assert {"k1": "org-a", "k2": "org-b"} == orgs.unsent()


@pytest.mark.parametrize("org_id", [None, "", "org a", "x" * 65, "{tag}"])
def test_a_missing_or_odd_organization_header_teaches_nothing(org_id: str | None) -> None:
    """Only an id-shaped `anthropic-organization-id` is learned (it ends up in Redis keys)."""
    orgs = Organizations(shared=False)
    orgs.learn("k1", org_id)
    assert (None, ASSUMED) == (orgs.primary, orgs.scope_for("k1"))


def test_the_table_is_bounded() -> None:
    """Past MAX_KEYS keys, new ones stay on the assumed organisation: a flood of keys costs
    no memory."""
    orgs = Organizations(shared=False)
    orgs.learn("k0", "org-a")
    for index in range(1, MAX_KEYS + 5):
        orgs.learn(f"k{index}", "org-b")
    assert ("org-org-b", ASSUMED) == (orgs.scope_for("k1"), orgs.scope_for(f"k{MAX_KEYS + 1}"))
