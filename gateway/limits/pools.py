"""`pool_of(model)`: the API's rate-limit pool a model id belongs to.

The API's limits belong to model classes, not model strings (reference §1.5): an alias and
its dated ids (`claude-sonnet-4-5`, `claude-sonnet-4-5-20250929`) draw on one pool, and so do
the members of a family pool (Opus 4.x: 4, 4.1, 4.5 ... 4.8; Sonnet 4.x: 4, 4.5, 4.6). Opus 5
and Sonnet 5 stand alone, as does every other model. Groups learned from the API's headers
are keyed by pool, so two names of one pool never each get the pool's whole limit.
"""

from __future__ import annotations

import re

_DATED = re.compile(r"-(?:\d{8}|latest)$")
_FAMILY_POOLS = re.compile(r"^(claude-(?:opus|sonnet)-[45])(?:-\d+)?$")
"""Opus and Sonnet 4.x and 5.x: each major version is one pool, whatever its minor."""


def pool_of(model: str) -> str:
    """The pool `model` draws on: its family pool, else the model without its date."""
    undated = _DATED.sub("", model.strip().lower())
    family = _FAMILY_POOLS.match(undated)
    return family[1] if family else undated
