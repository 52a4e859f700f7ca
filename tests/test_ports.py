"""`bench.ports`: ports for servers started later are chosen where no outgoing connection goes."""

from __future__ import annotations

import itertools
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bench import ports


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    low = ports.ephemeral_low()
    chosen = [ports.free_port(random.Random(seed)) for seed in range(50)]
    assert len(set(chosen)) == len(chosen)
    assert all(ports.LOWEST_PORT <= port < low - ports.CLUSTER_BUS_OFFSET for port in chosen)
    assert all(ports.is_free(port) for port in chosen)


def test_a_port_in_use_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "ephemeral_low", lambda *_: 65536)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports.free_port()))
        taken.listen()
        port: int = taken.getsockname()[1]
        assert not ports.is_free(port)
        offered = itertools.chain([port, port], itertools.count(ports.LOWEST_PORT))

        class Offer(random.Random):
            def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:
                return next(offered)

        chosen = ports.free_port(Offer())
        assert chosen != port
        assert chosen >= ports.LOWEST_PORT


def test_falls_back_to_the_kernels_choice_when_the_range_below_is_too_small(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ports, "ephemeral_low", lambda *_: ports.LOWEST_PORT + 5)
    port = ports.free_port()
    assert ports.is_free(port)


def test_reads_the_kernels_range_and_survives_a_missing_file(tmp_path: Path) -> None:
    range_file = tmp_path / "ip_local_port_range"
    range_file.write_text("40000\t60999\n")
    assert ports.ephemeral_low(range_file) == 40000
    assert ports.ephemeral_low(tmp_path / "missing") == ports.DEFAULT_EPHEMERAL_LOW


def test_runs_as_a_script_printing_distinct_ports() -> None:
    """`deploy/local-stack.sh` runs the file directly, outside the package."""
    out = subprocess.run(
        [sys.executable, str(Path(ports.__file__)), "4"],
        check=True, capture_output=True, text=True, cwd="/",
    ).stdout.split()  # fmt: skip
    assert len(out) == 4
    assert len(set(out)) == 4
