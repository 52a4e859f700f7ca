"""`RedisServer`: a real `redis-server` on a free local port, for tests.

Started with persistence off (`--save "" --appendonly no`) in a temporary directory; `start()`
returns once it answers PING (and, for a one-node cluster, once every slot is served).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import redis

from bench.ports import free_port

_SLOTS = 16_384


@dataclass
class RedisServer:
    """One `redis-server` process; `cluster=True` makes it a one-node cluster owning all slots."""

    cluster: bool = False
    binary: str = "redis-server"
    port: int = field(default_factory=free_port)
    _process: subprocess.Popen[bytes] | None = None
    _dir: tempfile.TemporaryDirectory[str] | None = None
    _slots_claimed: bool = False

    @property
    def url(self) -> str:
        """The server's URL, database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def _log(self) -> Path:
        """The server's output (its log), kept in its temporary directory."""
        assert self._dir is not None
        return Path(self._dir.name) / "redis.log"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server and wait until it serves commands; fails if it cannot start."""
        executable = shutil.which(self.binary)
        if executable is None:
            raise RuntimeError(f"{self.binary} not found on PATH: install redis-server")
        self._dir = tempfile.TemporaryDirectory(prefix="cgw-redis-")
        args = [executable, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", self._dir.name]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            args += ["--cluster-port", str(free_port())]  # default port+10000 may not exist
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self._wait_ready(time.monotonic() + timeout)
        return self

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _wait_ready(self, deadline: float) -> None:
        """Poll PING (then cluster state) until ready or `deadline`."""
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1.0)
        try:
            while not self._ready(client):
                assert self._process is not None
                if self._process.poll() is not None or time.monotonic() > deadline:
                    output = self._log.read_text(errors="replace")[-2_000:]
                    self.stop()
                    raise RuntimeError(f"redis-server did not start on {self.port}:\n{output}")
                time.sleep(0.01)
        finally:
            client.close()

    def _ready(self, client: redis.Redis) -> bool:
        """Whether the server answers (a cluster node: after claiming every slot, once ok)."""
        try:
            client.ping()
            if not self.cluster:
                return True
            if not self._slots_claimed:
                client.cluster("ADDSLOTSRANGE", 0, _SLOTS - 1)
                self._slots_claimed = True
            info = client.cluster("INFO")
        except redis.ConnectionError:
            return False
        return bool(info.get("cluster_state") == "ok")
