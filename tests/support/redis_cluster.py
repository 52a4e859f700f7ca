"""`LocalRedisCluster`: a real Redis Cluster of three masters, each with one replica, for tests.

Six `redis-server --cluster-enabled yes` processes on free local ports, each in its own
folder of one temporary directory (persistence off), joined by `redis-cli --cluster create
--cluster-replicas 1`. `start()` returns once every node reports `cluster_state:ok`, all of
them agree on who serves each slot, and every replica is in sync with its master.
`stop()` (and leaving the `with` block) kills every process it started, whatever happened.

Faults, each step by step so a test can keep traffic flowing between the steps:

- `migration(slot, target)`: a `SlotMigration` that marks the slot IMPORTING on the target
  and MIGRATING on its owner (`begin`), MIGRATEs its keys (`move_keys`: from then on the old
  owner answers ASK for them), and hands the slot over with SETSLOT NODE (`finish`: from then
  on a client with the old slot map gets MOVED);
- `kill(master)` then `wait_promoted(master)`: a master dies (SIGKILL) and, after
  `cluster-node-timeout` (1 s here) and an election, its replica serves its slots;
  `restart(node)` brings a killed node back, as a replica of whoever took its slots.

The helpers block (they poll with deadlines, never sleep and hope): from an async test, run
the slow ones in a thread (`asyncio.to_thread`) so the test's traffic keeps flowing.
`error_counts()` and `command_calls()` read `INFO errorstats` / `commandstats` on every live
node, so a test can prove that MOVED, ASK or ASKING really happened.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import redis
from redis.crc import key_slot

from bench.ports import free_port

SLOTS = 16_384
NODE_TIMEOUT_MS = 1_000
"""`cluster-node-timeout`: a master silent this long is suspected, and soon failed over."""
POLL_SECONDS = 0.02


def slot_of(key: str) -> int:
    """The hash slot of `key` (of its `{hash tag}` when it has one)."""
    return int(key_slot(key.encode()))


@dataclass(frozen=True, slots=True)
class NodeView:
    """One line of `CLUSTER NODES`: a node as some node of the cluster sees it."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    slots: frozenset[int]
    moving: tuple[str, ...] = ()
    """Slots it is migrating or importing: `[42->-<id>]`, `[42-<-<id>]`."""

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        return bool({"fail", "fail?"} & self.flags)


def parse_nodes(text: str) -> dict[str, NodeView]:
    """`CLUSTER NODES` output -> the nodes by id (slot ranges expanded; the migrating and
    importing markers, such as `[42->-id]`, apart)."""
    nodes = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        words = line.split()
        node_id, address, flags, master = words[0], words[1], words[2], words[3]
        slots: set[int] = set()
        moving = tuple(item for item in words[8:] if item.startswith("["))
        for item in words[8:]:
            if item.startswith("["):
                continue
            first, _, last = item.partition("-")
            slots.update(range(int(first), int(last or first) + 1))
        port = int(address.split("@")[0].rsplit(":", 1)[1])
        nodes[node_id] = NodeView(
            node_id,
            port,
            frozenset(flags.split(",")),
            None if master == "-" else master,
            frozenset(slots),
            moving,
        )
    return nodes


@dataclass(eq=False)  # one object per process slot: compared and hashed by identity
class ClusterNode:
    """One `redis-server` of the cluster: its port, folder (`nodes.conf`, log) and process."""

    port: int
    home: Path
    process: subprocess.Popen[bytes] | None = None
    node_id: str = ""

    @property
    def url(self) -> str:
        """The node's URL: a seed node for a Cluster client."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self) -> redis.Redis:
        """A new client of this node alone (close it: use it in a `with` block)."""
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_timeout=2.0,
            socket_connect_timeout=1.0,
            decode_responses=True,
        )

    def call(self, *args: str | int) -> object:
        """Run one command on this node; the reply as redis-py parses it."""
        with self.client() as client:
            return client.execute_command(*args)

    def info(self, section: str) -> dict[str, object]:
        """`INFO section`, parsed."""
        with self.client() as client:
            return dict(client.info(section))

    def cluster_nodes(self) -> dict[str, NodeView]:
        """The cluster as this node sees it."""
        with self.client() as client:
            connection = client.connection_pool.get_connection()
            try:  # raw, not through redis-py's CLUSTER NODES parser
                connection.send_command("CLUSTER", "NODES")
                text = connection.read_response()
            finally:
                client.connection_pool.release(connection)
        return parse_nodes(str(text))

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.home / "redis.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class LocalRedisCluster:
    """Three masters and three replicas on 127.0.0.1, started and always stopped by the test."""

    masters: int = 3
    replicas: int = 1
    node_timeout_ms: int = NODE_TIMEOUT_MS
    nodes: list[ClusterNode] = field(default_factory=list)
    _dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        """A seed node's URL, as `GATEWAY_REDIS_URL` (with `GATEWAY_REDIS_CLUSTER=true`)."""
        return self.nodes[0].url

    def __enter__(self) -> LocalRedisCluster:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # Life cycle --------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> LocalRedisCluster:
        """Start the processes, create the cluster, wait until it serves every slot."""
        for binary in ("redis-server", "redis-cli"):
            if shutil.which(binary) is None:
                raise RuntimeError(f"{binary} not found on PATH: install redis-server")
        deadline = time.monotonic() + timeout
        self._dir = tempfile.TemporaryDirectory(prefix="cgw-cluster-")
        try:
            for _ in range(self.masters * (1 + self.replicas)):
                port = free_port()  # port + 10000 (the cluster bus) is free too
                home = Path(self._dir.name) / str(port)
                home.mkdir()
                node = ClusterNode(port, home)
                self.nodes.append(node)
                self._spawn(node)
            for node in self.nodes:
                self._wait(deadline, functools.partial(_answers, node), f"{node.port} to answer")
            self._create(deadline)
            for node in self.nodes:
                node.node_id = str(node.call("CLUSTER", "MYID"))
            self.wait_stable(deadline - time.monotonic())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Kill every process (no persistence to save) and remove the directory."""
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.kill()
        for node in self.nodes:
            if node.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.process.wait(timeout=10)
        self.nodes = []
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def _spawn(self, node: ClusterNode) -> None:
        """Start (or restart, keeping its `nodes.conf`, so its identity) one node."""
        args = [shutil.which("redis-server") or "redis-server", "--port", str(node.port)]
        args += ["--bind", "127.0.0.1", "--dir", str(node.home), "--daemonize", "no"]
        args += ["--save", "", "--appendonly", "no"]
        args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        args += ["--cluster-node-timeout", str(self.node_timeout_ms)]
        args += ["--cluster-replica-validity-factor", "0"]  # a replica may always take over
        args += ["--cluster-allow-replica-migration", "no"]  # the topology stays as tests set it
        args += ["--repl-diskless-sync-delay", "0"]  # replicas sync at once, not after 5 s
        with (node.home / "redis.log").open("ab") as log:
            node.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def _create(self, deadline: float) -> None:
        """`redis-cli --cluster create`: slots to the first three, a replica each."""
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        command = ["redis-cli", "--cluster", "create", *addresses]
        command += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=max(1.0, deadline - time.monotonic()),
            check=False,
        )
        if done.returncode != 0 or "[OK] All 16384 slots covered" not in done.stdout:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}")

    # Topology ------------------------------------------------------------------------

    def live(self) -> list[ClusterNode]:
        """The nodes whose process runs."""
        return [node for node in self.nodes if node.alive]

    def node(self, node_id: str) -> ClusterNode:
        return next(node for node in self.nodes if node.node_id == node_id)

    def view(self) -> dict[str, NodeView]:
        """The cluster as the first live node sees it."""
        return self.live()[0].cluster_nodes()

    def owner(self, slot: int) -> ClusterNode:
        """The master serving `slot`, as the cluster sees it now."""
        for seen in self.view().values():
            if seen.is_master and not seen.failed and slot in seen.slots:
                return self.node(seen.node_id)
        raise LookupError(f"no master serves slot {slot}")

    def replica_of(self, master: ClusterNode) -> ClusterNode:
        """A replica of `master`."""
        for seen in self.view().values():
            if seen.master_id == master.node_id and not seen.failed:
                return self.node(seen.node_id)
        raise LookupError(f"{master.port} has no live replica")

    def other_master(self, than: ClusterNode) -> ClusterNode:
        """A live master other than `than` (a target for a migration)."""
        for seen in self.view().values():
            if seen.is_master and not seen.failed and seen.node_id != than.node_id:
                return self.node(seen.node_id)
        raise LookupError("no other master")

    def flushall(self) -> None:
        """Empty every live master (replicas follow): a test starts from no keys."""
        for seen in self.view().values():
            if seen.is_master and not seen.failed:
                self.node(seen.node_id).call("FLUSHALL")

    def stable(self) -> bool:
        """Whether every live node says `cluster_state:ok`, all agree on which live master
        serves each of the 16,384 slots, no slot is half-migrated, none suspects a live
        node, and every live replica is in sync."""
        return self.unsettled() is None

    def unsettled(self) -> str | None:
        """Why the cluster is not `stable()` yet (None once it is)."""
        views = {}
        for node in self.live():
            try:
                if not _cluster_ok(node):
                    return f"{node.port} says cluster_state is not ok"
                views[node.port] = node.cluster_nodes()
                replication = node.info("replication")
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                return f"{node.port} does not answer: {exc}"
            if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                return f"replica {node.port} is not in sync with its master"
        live = {node.port for node in self.live()}
        owners = {}
        for port, view in views.items():
            if moving := [item for seen in view.values() for item in seen.moving]:
                return f"{port} sees slots moving: {moving}"
            if suspects := sorted(
                seen.port for seen in view.values() if seen.failed and seen.port in live
            ):
                return f"{port} suspects live nodes {suspects}"
            owners[port] = _slot_owners(view)
            if len(owners[port]) != SLOTS:
                return f"{port} sees {len(owners[port])} slots served"
        if len({tuple(sorted(o.items())) for o in owners.values()}) > 1:
            return "the nodes disagree on who serves which slot"
        return None

    def wait_stable(self, timeout: float = 30.0) -> None:
        """Return once `stable()`; fail with the nodes' log tails after `timeout`."""
        self._wait(time.monotonic() + timeout, self.stable, "the cluster to settle")

    # Faults --------------------------------------------------------------------------

    def migration(self, slot: int, target: ClusterNode) -> SlotMigration:
        """A migration of `slot` from its owner to `target`, not begun yet."""
        return SlotMigration(self, slot, self.owner(slot), target)

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL one node, as a crash or an OOM kill would."""
        assert node.process is not None
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(timeout=10)

    def wait_promoted(self, replica: ClusterNode, timeout: float = 20.0) -> None:
        """Wait until `replica` (of a master that died) serves slots as a master and the
        cluster is stable again."""

        def promoted() -> bool:
            seen = self.view().get(replica.node_id)
            return seen is not None and seen.is_master and bool(seen.slots) and self.stable()

        self._wait(time.monotonic() + timeout, promoted, f"{replica.port} to take over")

    def pause(self, node: ClusterNode) -> None:
        """SIGSTOP one node: it accepts connections and answers nothing (a stalled
        master: a long fork, a VM pause), too briefly to be failed over if resumed soon."""
        assert node.process is not None
        node.process.send_signal(signal.SIGSTOP)

    def resume(self, node: ClusterNode) -> None:
        """SIGCONT a paused node: it runs whatever reached it meanwhile."""
        assert node.process is not None
        node.process.send_signal(signal.SIGCONT)

    def fail_over(self, master: ClusterNode, timeout: float = 20.0) -> ClusterNode:
        """Kill `master`, wait until its replica serves its slots; return that replica."""
        replica = self.replica_of(master)
        self.kill(master)
        self.wait_promoted(replica, timeout)
        return replica

    def restart(self, node: ClusterNode, timeout: float = 20.0) -> None:
        """Start a killed node again (its `nodes.conf` keeps its identity; no data): it
        rejoins as a replica of the master that took its slots; wait until stable."""
        self._spawn(node)
        self.wait_stable(timeout)

    # Evidence ------------------------------------------------------------------------

    def error_counts(self) -> dict[str, int]:
        """Error replies by prefix (MOVED, ASK, TRYAGAIN, CLUSTERDOWN, ...) summed over the
        live nodes since they started (`INFO errorstats`)."""
        totals: dict[str, int] = {}
        for node in self.live():
            for name, entry in node.info("errorstats").items():
                prefix = name.removeprefix("errorstat_")
                assert isinstance(entry, dict)
                totals[prefix] = totals.get(prefix, 0) + int(entry["count"])
        return totals

    def command_calls(self, command: str) -> int:
        """Calls of `command` (e.g. `asking`, `evalsha`) summed over the live nodes."""
        total = 0
        for node in self.live():
            entry = node.info("commandstats").get(f"cmdstat_{command}")
            if isinstance(entry, dict):
                total += int(entry["calls"])
        return total

    def _wait(self, deadline: float, ready: Callable[[], bool], what: str) -> None:
        """Poll `ready` until true; past `deadline`, fail saying why the cluster is not
        stable, with every node's log tail."""
        while True:
            try:
                if ready():
                    return
            except (redis.ConnectionError, redis.TimeoutError, LookupError):
                pass
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {n.port}:\n{n.log_tail()}" for n in self.nodes)
                why = self.unsettled() or "stable"
                raise TimeoutError(f"gave up waiting for {what} ({why})\n{tails}")
            time.sleep(POLL_SECONDS)


@dataclass
class SlotMigration:
    """One slot moving from `source` to `target`, in the steps `redis-cli --cluster reshard`
    takes, each a method so traffic can run in between."""

    cluster: LocalRedisCluster
    slot: int
    source: ClusterNode
    target: ClusterNode
    moved: int = 0

    def begin(self) -> None:
        """IMPORTING on the target, then MIGRATING on the source: the source still serves
        the slot's keys it holds and answers ASK for the ones it does not."""
        self.target.call("CLUSTER", "SETSLOT", self.slot, "IMPORTING", self.source.node_id)
        self.source.call("CLUSTER", "SETSLOT", self.slot, "MIGRATING", self.target.node_id)

    def move_keys(self, keys: Sequence[str] | None = None, batch: int = 100) -> int:
        """MIGRATE `keys` (default: every key left in the slot, `batch` at a time) to the
        target, atomically per call; return how many moved. From then on the source answers
        ASK for them, and TRYAGAIN for a command whose keys are split between the two."""
        if keys is not None:
            self._migrate(list(keys))
            return len(keys)
        moved = 0
        while found := self.source.call("CLUSTER", "GETKEYSINSLOT", self.slot, batch):
            assert isinstance(found, list)
            self._migrate(found)
            moved += len(found)
        return moved

    def _migrate(self, keys: list[str]) -> None:
        self.source.call("MIGRATE", "127.0.0.1", self.target.port, "", 0, 5_000, "KEYS", *keys)
        self.moved += len(keys)

    def finish(self, timeout: float = 10.0) -> None:
        """SETSLOT NODE on the target, the source, then every other master; wait until every
        node agrees. Clients with the old slot map now get MOVED."""
        self.target.call("CLUSTER", "SETSLOT", self.slot, "NODE", self.target.node_id)
        self.source.call("CLUSTER", "SETSLOT", self.slot, "NODE", self.target.node_id)
        for seen in self.cluster.view().values():
            if seen.is_master and seen.node_id not in (self.source.node_id, self.target.node_id):
                node = self.cluster.node(seen.node_id)
                node.call("CLUSTER", "SETSLOT", self.slot, "NODE", self.target.node_id)
        self.cluster.wait_stable(timeout)
        assert self.target is self.cluster.owner(self.slot)


def _answers(node: ClusterNode) -> bool:
    if not node.alive:
        raise RuntimeError(f"redis-server on {node.port} exited:\n{node.log_tail()}")
    return node.call("PING") is True


def _cluster_ok(node: ClusterNode) -> bool:
    """`cluster_state`, read with CLUSTER INFO (INFO cluster only says it is enabled)."""
    text = str(node.call("CLUSTER", "INFO"))
    return "cluster_state:ok" in text


def _slot_owners(view: dict[str, NodeView]) -> dict[int, str]:
    """Slot -> node id of the live master serving it, in one node's view."""
    return {
        slot: seen.node_id
        for seen in view.values()
        if seen.is_master and not seen.failed
        for slot in seen.slots
    }
