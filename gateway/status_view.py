"""`claude-gateway status`: the live view (`GET /gateway/v1/status`) as a readable table.

`fetch_status` asks a running gateway (the admin token from `GATEWAY_ADMIN_TOKEN`),
`render` turns the JSON into text; `--watch` repeats both every few seconds.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

STATUS_PATH = "/gateway/v1/status"


class StatusUnavailable(Exception):
    """The gateway could not be asked, or refused; the message says which, in one line."""


def fetch_status(url: str, token: str | None, *, timeout: float = 5.0) -> dict[str, Any]:
    """The status document of the gateway at `url`."""
    request = urllib.request.Request(url.rstrip("/") + STATUS_PATH)
    if token:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            document: dict[str, Any] = json.load(response)
            return document
    except urllib.error.HTTPError as exc:
        message = _error_message(exc.read())
        raise StatusUnavailable(f"{exc.code}: {message}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StatusUnavailable(f"cannot reach {url}: {reason}") from None


def _error_message(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body[:200].decode(errors="replace")


def render(document: dict[str, Any]) -> str:
    """The status as text: a header line, then per group its buckets and last minute."""
    lines = [f"identity: {document.get('identity', '?')}"]
    if not document.get("limits"):
        lines.append("limits: none (plain pass-through)")
        return "\n".join(lines)
    lines.append(
        f"enforce: {document['enforce']}   queue depth (this instance): "
        f"{document['queue_depth']}   degraded: {document['degraded']}"
    )
    for budget in document.get("budgets", []):
        shown = "${:,.2f}" if budget["unit"] == "usd" else "{:,}"
        lines.append(
            f"budget {budget['tenant']} {budget['budget']}: "
            f"{shown.format(budget['spent'])} of {shown.format(budget['limit'])}, "
            f"resets {budget['resets_at']}"
        )
    for group in document["groups"]:
        mode = "" if group["enforce"] else "  [shadow: not enforced]"
        lines += ["", f"group {group['name']} ({', '.join(group['models'])}){mode}"]
        rows: list[tuple[str, ...]] = [("scope", "tenant", "dimension", "limit", "level", "used")]
        rows += [
            (
                bucket["scope"],
                bucket["tenant"] or "-",
                bucket["dimension"],
                f"{bucket['limit']:,}",
                f"{bucket['level']:,.0f}",
                "-" if bucket["used_ratio"] is None else f"{bucket['used_ratio']:.0%}",
            )
            for bucket in group["buckets"]
        ]
        if len(rows) == 1:
            lines.append("  no traffic seen yet: limits " + _limits(group["limits"]))
        else:
            lines += _table(rows)
        for tenant, limits in group["tenant_limits"].items():
            lines.append(f"  tenant {tenant}: {_limits(limits)}")
        for decisions in group["decisions_last_minute"]:
            who = decisions.get("tenant") or "(no tenant)"
            counts = ", ".join(f"{k} {v}" for k, v in decisions.items() if k != "tenant")
            lines.append(f"  last minute, {who}: {counts}")
    return "\n".join(lines)


def _limits(limits: dict[str, int]) -> str:
    return ", ".join(f"{name}={value:,}" for name, value in limits.items()) or "none"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            for row in rows]  # fmt: skip
