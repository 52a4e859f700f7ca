"""Benchmark harness for claude-gateway: `python -m bench [--quick] [--scenario ...]`.

It starts a mock Anthropic upstream, a bare aiohttp passthrough proxy (the floor) and the
gateway as separate processes on loopback, drives them with an aiohttp load generator and
prints a Markdown table. It measures; it asserts nothing. See bench/README.md.
"""

from __future__ import annotations
