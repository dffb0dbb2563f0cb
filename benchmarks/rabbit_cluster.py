"""A throwaway three-node RabbitMQ cluster on loopback, for the cluster tests and benchmark.

Standard library only, so both ``tests/cluster/conftest.py`` and ``python -m benchmarks.cluster``
use it. Every node gets a name of its own (``rpcc<i>-<random>@localhost``), its own AMQP and
distribution ports, data directory, log directory, plugin list and config file, so it never
meets a developer's ``rabbit@localhost`` or the suite's pytest-rabbitmq node. Nodes run as the
current user through ``/usr/lib/rabbitmq/bin`` (not the ``/usr/sbin`` wrappers, which switch
user and so use another Erlang cookie).

``net_ticktime`` is lowered (default 4 s) so that the cluster notices a frozen node within
seconds: with Erlang's default of 60 s, a quorum queue whose leader is frozen blocks new
consumers for a minute or more. Partitions are healed with ``autoheal``.

    cluster = RabbitCluster(Path("/tmp/somewhere"))
    cluster.start()                   # about 30 s: three nodes, clustered
    cluster.urls                      # amqp://guest:guest@127.0.0.1:PORT// each
    cluster.kill(0); cluster.restart(0)
    cluster.freeze(1); cluster.thaw(1)
    cluster.heal()                    # every node up, running and clustered again
    cluster.stop()
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

BIN = Path("/usr/lib/rabbitmq/bin")
logger = logging.getLogger(__name__)

RABBITMQ_SERVER = BIN / "rabbitmq-server"
RABBITMQCTL = BIN / "rabbitmqctl"

#: Seconds a node may take to boot (a fresh node boots in about 10 s on a 2-core machine).
BOOT_TIMEOUT = 90.0
#: Seconds a single rabbitmqctl command may take.
CTL_TIMEOUT = 60.0


class ClusterError(RuntimeError):
    """A node did not start, join or answer in time."""


def available() -> bool:
    """Whether this machine has the RabbitMQ server scripts the cluster needs."""
    return RABBITMQ_SERVER.exists() and RABBITMQCTL.exists()


def _free_port(low: int = 20000, high: int = 50000, taken: Iterable[int] = ()) -> int:
    """A TCP port free on loopback now, in ``[low, high)`` (distribution ports must stay under
    55525: rabbitmqctl derives its own port range from them by adding 10000)."""
    taken = set(taken)
    for _ in range(500):
        port = random.randrange(low, high)
        if port in taken:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise ClusterError("no free port found")


class Node:
    """One RabbitMQ node of the cluster: its environment, its process, its beam pid."""

    def __init__(self, index: int, name: str, base: Path, port: int, dist_port: int,
                 ctl_ports: tuple[int, int], config: str) -> None:
        self.index = index
        self.name = name
        self.port = port
        self.dist_port = dist_port
        self.dir = base / name.split("@")[0]
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq-env.conf").write_text("")
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{port}\n" + config)
        self.log = self.dir / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.beam_pid: int | None = None
        self.killed = False
        self.frozen = False
        #: Frozen since its last start: restart it on heal (a thawed node may stay partitioned).
        self.was_frozen = False
        base_env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        self.env = {
            **base_env,
            "RABBITMQ_NODENAME": name,
            "RABBITMQ_USE_LONGNAME": "false",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.dir / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(self.dir / "pid"),
            "RABBITMQ_CTL_DIST_PORT_MIN": str(ctl_ports[0]),
            "RABBITMQ_CTL_DIST_PORT_MAX": str(ctl_ports[1]),
            # Distribution on loopback only.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_CTL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }
        if not self.env.get("HOME"):
            self.env["HOME"] = str(Path.home())

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def launch(self) -> None:
        """Start the node's process (it boots in the background; see :meth:`await_startup`)."""
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(RABBITMQ_SERVER)], env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.beam_pid = None
        self.killed = False
        self.frozen = False
        self.was_frozen = False

    def ctl(self, *args: str, timeout: float = CTL_TIMEOUT, check: bool = True,
            target: Node | None = None) -> str:
        """``rabbitmqctl -n <node> args...`` (on ``target``'s node name if given); its stdout."""
        name = (target or self).name
        try:
            done = subprocess.run([str(RABBITMQCTL), "-n", name, *args], env=self.env,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"rabbitmqctl -n {name} {' '.join(args)}: timed out") from exc
        if check and done.returncode != 0:
            raise ClusterError(f"rabbitmqctl -n {name} {' '.join(args)} exited "
                               f"{done.returncode}: {(done.stderr or done.stdout).strip()[-800:]}")
        return done.stdout

    def await_startup(self, timeout: float = BOOT_TIMEOUT) -> None:
        """Wait until the node runs RabbitMQ (its app booted), then note its beam pid."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ClusterError(f"{self.name} exited with {self.proc.returncode}: "
                                   f"{self.tail()}")
            left = max(deadline - time.monotonic(), 1.0)
            try:
                self.ctl("await_startup", "--timeout", str(int(min(left, 30)) or 1),
                         timeout=min(left, 30) + 15)
            except ClusterError as exc:
                last = str(exc)
                time.sleep(0.5)
                continue
            self.beam_pid = int(self.ctl("eval", "list_to_integer(os:getpid()).").strip())
            return
        raise ClusterError(f"{self.name} did not start in {timeout:g} s: {last}\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        if self.beam_pid is None:
            raise ClusterError(f"{self.name}: beam pid unknown")
        os.kill(self.beam_pid, sig)

    def kill(self) -> None:
        """SIGKILL the node's beam process (and reap its launcher)."""
        if self.beam_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.beam_pid, signal.SIGCONT)
                os.kill(self.beam_pid, signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        if self.beam_pid is not None:
            _wait_gone(self.beam_pid, 10)
        self.killed = True
        self.frozen = False

    @property
    def alive(self) -> bool:
        return self.beam_pid is not None and _pid_alive(self.beam_pid) and not self.killed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


#: rabbitmqctl prints Erlang pids as ``<node@host.N.N.N>``.
_PID_NODE = re.compile(r"<([^<>@\s]+@[^.<>\s]+)\.")
_CONN_NAME = re.compile(r'\{"connection_name","((?:[^"\\]|\\.)*)"\}')


class RabbitCluster:
    """Three (``size``) clustered nodes under ``base``; see the module docstring."""

    def __init__(self, base: Path | None = None, *, size: int = 3, prefix: str = "rpcc",
                 net_ticktime: int = 4, partition_handling: str = "autoheal",
                 extra_config: str = "") -> None:
        self.owns_base = base is None
        self.base = Path(base or tempfile.mkdtemp(prefix="rpc-cluster-"))
        self.tag = uuid.uuid4().hex[:6]
        config = (
            "loopback_users.guest = true\n"
            f"net_ticktime = {net_ticktime}\n"
            f"cluster_partition_handling = {partition_handling}\n"
            "log.console = false\n"
            "log.file.level = info\n"
            + extra_config
        )
        self.net_ticktime = net_ticktime
        taken: list[int] = []
        ctl_base = _free_port(40000, 45000)
        self.nodes: list[Node] = []
        for i in range(size):
            port = _free_port(taken=taken)
            taken.append(port)
            dist = _free_port(taken=taken)
            taken.append(dist)
            name = f"{prefix}{i + 1}-{self.tag}@localhost"
            self.nodes.append(Node(i, name, self.base, port, dist,
                                   (ctl_base + 20 * i, ctl_base + 20 * i + 19), config))
        self._lock = threading.Lock()

    # -- addresses ---------------------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def url(self, i: int) -> str:
        return self.nodes[i].url

    def urls_from(self, i: int) -> list[str]:
        """Every node's URL, starting with node ``i``'s (the order a client tries them in)."""
        return self.urls[i:] + self.urls[:i]

    @property
    def names(self) -> list[str]:
        return [node.name for node in self.nodes]

    def index_of(self, name: str) -> int:
        return self.names.index(name)

    # -- life cycle --------------------------------------------------------------------------------

    def start(self, timeout: float = BOOT_TIMEOUT) -> None:
        """Boot every node in parallel, then join nodes 2.. to node 1."""
        for node in self.nodes:
            node.launch()
        try:
            with ThreadPoolExecutor(len(self.nodes)) as pool:
                list(pool.map(lambda n: n.await_startup(timeout), self.nodes))
            first = self.nodes[0]
            for node in self.nodes[1:]:
                node.ctl("stop_app")
                node.ctl("join_cluster", first.name)
                node.ctl("start_app")
            self.wait_clustered(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Kill every node of this cluster (fast: the data is thrown away)."""
        for node in self.nodes:
            node.kill()
        self.reap_leftovers()
        if self.owns_base:
            shutil.rmtree(self.base, ignore_errors=True)

    def reap_leftovers(self) -> None:
        """SIGKILL any beam process still running one of this cluster's node names."""
        names = {f"{n.name.split('@')[0]}" for n in self.nodes}
        for proc_dir in Path("/proc").iterdir():
            if not proc_dir.name.isdigit():
                continue
            try:
                argv = (proc_dir / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if not argv or not argv[0].endswith(b"beam.smp"):
                continue
            args = [a.decode(errors="replace") for a in argv]
            for flag, value in zip(args, args[1:], strict=False):
                if flag in ("-sname", "-name") and value.split("@")[0] in names:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(proc_dir.name), signal.SIGCONT)
                        os.kill(int(proc_dir.name), signal.SIGKILL)

    def kill(self, i: int) -> None:
        """``kill -9`` node ``i``'s beam process."""
        self.nodes[i].kill()

    def restart(self, i: int, timeout: float = BOOT_TIMEOUT) -> None:
        """Start node ``i`` again on its data directory (it rejoins the cluster by itself)."""
        node = self.nodes[i]
        if node.alive:
            node.kill()
        node.launch()
        node.await_startup(timeout)

    def freeze(self, i: int) -> None:
        """SIGSTOP node ``i``: it holds its sockets open and answers nothing."""
        self.nodes[i].signal(signal.SIGSTOP)
        self.nodes[i].frozen = self.nodes[i].was_frozen = True

    def thaw(self, i: int) -> None:
        self.nodes[i].signal(signal.SIGCONT)
        self.nodes[i].frozen = False

    def shutdown(self, i: int, timeout: float = CTL_TIMEOUT) -> None:
        """Stop node ``i`` gracefully (``rabbitmqctl shutdown``: clients get connection.close)."""
        node = self.nodes[i]
        node.ctl("shutdown", timeout=timeout)
        if node.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout)
        if node.beam_pid is not None:
            _wait_gone(node.beam_pid, timeout)
        node.killed = True

    def start_node(self, i: int, timeout: float = BOOT_TIMEOUT) -> None:
        """Start a stopped (shut down or killed) node ``i`` again on its data directory."""
        node = self.nodes[i]
        node.launch()
        node.await_startup(timeout)

    def disturbed(self) -> bool:
        """Whether any node is down, frozen, or was frozen since its last start."""
        return any(n.frozen or n.was_frozen or not n.alive for n in self.nodes)

    def wait_quorum_members_online(self, name: str, timeout: float = 60.0) -> None:
        """Wait until every member of quorum queue ``name`` is online (before taking down
        another node: a quorum queue needs a majority of its members)."""
        def online() -> bool:
            try:
                info = self.queue_info(name)
            except ClusterError:
                return False
            if not info:
                return False
            return sorted(info.get("online") or []) == sorted(info["members"])

        self.wait(online, timeout, f"every member of {name!r} online", interval=0.5)

    def heal(self, timeout: float = BOOT_TIMEOUT) -> None:
        """Bring every node back: restart the killed, thaw and restart the frozen, and wait
        until all of them run clustered, without partitions."""
        clock = time.monotonic()
        broken = [n for n in self.nodes if n.frozen or n.was_frozen or not n.alive]
        for node in broken:
            node.kill()
        for node in broken:
            node.launch()
        with ThreadPoolExecutor(max(len(broken), 1)) as pool:
            list(pool.map(lambda n: n.await_startup(timeout), broken))
        logger.info("restarted %s in %.1f s", [n.name for n in broken], time.monotonic() - clock)
        try:
            self.wait_clustered(min(timeout, 60))
            logger.info("healed in %.1f s", time.monotonic() - clock)
        except ClusterError:
            # A partition that autoheal has not healed: restart the nodes outside node 1's view.
            status = self.status(self.nodes[0])
            running = set(status.get("running_nodes", []))
            for node in self.nodes:
                if node.name not in running:
                    self.restart(node.index, timeout)
            self.wait_clustered(timeout)

    # -- rabbitmqctl -------------------------------------------------------------------------------

    def ctl(self, i: int, *args: str, timeout: float = CTL_TIMEOUT) -> str:
        """``rabbitmqctl -n <node i> args...``: its stdout (ClusterError when it fails)."""
        return self.nodes[i].ctl(*args, timeout=timeout)

    def running(self) -> list[Node]:
        return [n for n in self.nodes if n.alive and not n.frozen]

    def ctl_any(self, *args: str, timeout: float = CTL_TIMEOUT) -> str:
        """rabbitmqctl on the first node that is up (for cluster-wide listings)."""
        last: Exception | None = None
        for node in self.running():
            try:
                return node.ctl(*args, timeout=timeout)
            except ClusterError as exc:
                last = exc
        raise ClusterError(f"no node answered {' '.join(args)}: {last}")

    def json(self, *args: str, i: int | None = None) -> Any:
        args = ("-q", *args, "--formatter", "json")
        out = (self.ctl(i, *args) if i is not None else self.ctl_any(*args)).strip()
        return json.loads(out) if out else []

    def status(self, node: Node | None = None) -> dict[str, Any]:
        """``cluster_status`` as seen from ``node`` (default: the first running node)."""
        args = ("-q", "cluster_status", "--formatter", "json")
        out = node.ctl(*args, timeout=30) if node is not None else self.ctl_any(*args, timeout=30)
        return dict(json.loads(out))

    def clustered(self) -> bool:
        """Every node runs, each sees all of them running, and nobody reports a partition."""
        if len(self.running()) != len(self.nodes):
            return False
        want = set(self.names)

        def agrees(node: Node) -> bool:
            try:
                status = self.status(node)
            except (ClusterError, ValueError):
                return False
            return set(status.get("running_nodes", [])) == want and not any(
                status.get("partitions") or {})

        with ThreadPoolExecutor(len(self.nodes)) as pool:
            return all(list(pool.map(agrees, self.nodes)))

    def wait_clustered(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.clustered():
            if time.monotonic() > deadline:
                raise ClusterError(f"the cluster did not form within {timeout:g} s")
            time.sleep(0.5)

    # -- what the broker sees ----------------------------------------------------------------------

    def connections(self, name_contains: str = "") -> list[dict[str, Any]]:
        """Client connections cluster-wide whose connection_name contains ``name_contains``,
        each with ``node`` (its index), ``pid`` and ``connection_name``."""
        out = self.ctl_any("-q", "list_connections", "--no-table-headers", "pid",
                           "client_properties", timeout=30)
        found = []
        for line in out.splitlines():
            if "\t" not in line:
                continue
            pid, props = line.split("\t", 1)
            match = _CONN_NAME.search(props)
            name = match.group(1) if match else ""
            node = _PID_NODE.search(pid)
            if name_contains in name and node and node.group(1) in self.names:
                found.append({"pid": pid, "connection_name": name,
                              "node": self.index_of(node.group(1))})
        return found

    def node_of_connection(self, name_contains: str) -> int | None:
        """The node index of a client connection whose name contains ``name_contains``."""
        conns = self.connections(name_contains)
        return conns[0]["node"] if conns else None

    def queue_info(self, name: str, vhost: str = "/") -> dict[str, Any] | None:
        """``list_queues`` columns of one queue (type, leader, members, online, consumers,
        messages, arguments ...), or None when it does not exist."""
        rows = self.json("list_queues", "-p", vhost, "name", "type", "durable", "arguments",
                         "leader", "members", "online", "consumers", "messages",
                         "messages_ready", "messages_unacknowledged")
        for row in rows:
            if row.get("name") == name:
                return dict(row)
        return None

    def queue_leader(self, name: str) -> int | None:
        """The node index of a quorum queue's leader."""
        info = self.queue_info(name)
        if not info:
            return None
        leader = info.get("leader")
        return self.index_of(leader) if leader in self.names else None

    def delete_queue(self, name: str) -> None:
        with contextlib.suppress(ClusterError):
            self.ctl_any("delete_queue", name)

    def wait(self, predicate: Callable[[], Any], timeout: float, message: str,
             interval: float = 0.1) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise ClusterError(f"timed out after {timeout:g} s waiting for {message}")
            time.sleep(interval)
