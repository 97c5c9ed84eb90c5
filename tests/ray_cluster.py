"""A real multi-node Ray cluster on this machine, for tests: each node is `ray start --block` (the
real CLI) in its own process group, with its own CPUs, its own short temp dir and its own free
ports for everything it listens on, so a test can SIGKILL exactly one node mid-job.

Ray's gRPC servers (GCS, raylets, object managers, workers) bind every interface, whatever
--node-ip-address says. So where the kernel allows it (`unshare -rn`), the whole cluster and its
drivers run in a network namespace of their own, whose only interface is loopback: nothing is
reachable from outside it and no port can clash with another test's. Elsewhere they run on the
host's network (Ray then advertises the host's address, not 127.0.0.1)."""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

RAY = Path(sys.executable).with_name("ray")
STARTED = "Ray runtime started."  # what `ray start` prints once its node is up
# Nothing outlives a test run that died without cleaning up: each node's process group, each
# driver and the network namespace end after this long whatever happens.
LIFETIME_S = 900
WORKER_PORTS_PER_NODE = 24  # one per worker process the node starts (actors, Ray Data's helpers, prestarts)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_ports(count: int) -> list[int]:
    """`count` free loopback ports, each from the kernel (held together so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port_range(size: int, low: int = 20000, high: int = 30000) -> int:
    """The first port of `size` consecutive free loopback ports (Ray's --min/--max-worker-port),
    below the kernel's ephemeral range so the other free ports cannot land in it."""
    start = low + (os.getpid() * 37) % (high - low - size)
    for first in list(range(start, high - size, size)) + list(range(low, start, size)):
        if all(_port_free(p) for p in range(first, first + size)):
            return first
    raise RuntimeError(f"no {size} consecutive free ports in {low}..{high}")


def _live_processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every process that is not a zombie, from /proc
    (psutil is not in the test venv)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            table[int(entry.name)] = (int(fields[1]), int(fields[3]))
    return table


def node_processes(pid: int) -> set[int]:
    """pid, every live process below it and every live one in its process group."""
    table = _live_processes()
    children: dict[int, list[int]] = {}
    for child, (parent, _) in table.items():
        children.setdefault(parent, []).append(child)
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        if current not in found:
            found.add(current)
            todo.extend(children.get(current, []))
    return {p for p in found if p in table} | {p for p, (_, group) in table.items() if group == pid}


_LOOPBACK_UP = """
import fcntl, signal, socket, struct, sys
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack("16sh", fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sh", b"lo", 0)))[1]
fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | IFF_UP))
print("up", flush=True)
signal.alarm(int(sys.argv[1]))  # default action: the holder ends, and the namespace with its last process
signal.pause()
"""


class Network:
    """Where the cluster's processes run: a private network namespace (loopback only) held by one
    sleeping process, or the host's network where namespaces are not allowed."""

    def __init__(self, isolate: bool = True):
        self.holder: subprocess.Popen | None = None
        self.why_shared = ""
        if not isolate:
            self.why_shared = "asked for the host network"
            return
        unshare, nsenter = shutil.which("unshare"), shutil.which("nsenter")
        if not (unshare and nsenter):
            self.why_shared = "unshare/nsenter (util-linux) are missing"
            return
        holder = subprocess.Popen([unshare, "-rn", sys.executable, "-c", _LOOPBACK_UP, str(LIFETIME_S)],
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, start_new_session=True)
        line = holder.stdout.readline().strip()
        if line != "up":
            holder.kill()
            self.why_shared = f"unshare -rn failed: {holder.stderr.read().strip()[:300]}"
            holder.wait()
            return
        self.holder = holder
        self.prefix = [nsenter, "--target", str(holder.pid), "--user", "--net", "--preserve-credentials", "--"]

    @property
    def isolated(self) -> bool:
        return self.holder is not None

    def command(self, command: list[str]) -> list[str]:
        """`command` as run inside this network (nsenter execs it: the pid stays the command's),
        under `timeout`: killed, with its whole process group, after LIFETIME_S."""
        bounded = ["timeout", "-s", "KILL", str(LIFETIME_S), *command]
        return [*self.prefix, *bounded] if self.holder else bounded

    def close(self) -> None:
        if self.holder is not None and self.holder.poll() is None:
            self.holder.kill()
            self.holder.wait()


@dataclass
class RayNode:
    name: str
    process: subprocess.Popen
    temp_dir: Path
    log_path: Path
    ports: dict[str, int] = field(default_factory=dict)

    def processes(self) -> set[int]:
        """Every process of this node: its `ray start --block`, the raylet, agents and workers."""
        return node_processes(self.process.pid)

    def kill(self) -> float:
        """SIGKILL every process of this node (a machine lost), again until none is left (one may
        be starting a worker meanwhile); returns when the first round was sent."""
        killed_at = None
        deadline = time.monotonic() + 10
        while (pids := self.processes()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            killed_at = killed_at or time.monotonic()
            time.sleep(0.05)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        return killed_at or time.monotonic()

    def log(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""


@dataclass
class RayCluster:
    head: RayNode
    workers: list[RayNode]
    root: Path
    network: Network
    env: dict

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.head.ports['gcs']}"

    @property
    def nodes(self) -> list[RayNode]:
        return [node for node in (self.head, *self.workers) if node is not None]

    def alive_nodes(self) -> int:
        """How many nodes the GCS counts as alive (`ray status`'s "Active" list)."""
        out = self.run([str(RAY), "status", "--address", self.address], timeout=30)
        active = out.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
        return active.count(" node_")

    def run(self, command: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
        """A command in the cluster's network and environment (a driver, `ray status`)."""
        kwargs.setdefault("env", self.env)
        return subprocess.run(self.network.command(command), capture_output=True, text=True, timeout=timeout,
                              **kwargs)

    def popen(self, command: list[str], **kwargs) -> subprocess.Popen:
        kwargs.setdefault("env", self.env)
        return subprocess.Popen(self.network.command(command), **kwargs)

    def stop(self) -> None:
        """Kill every node (workers first), the network and the temp dirs; safe to call twice."""
        for node in reversed(self.nodes):
            if node.processes():
                node.kill()
        self.network.close()
        shutil.rmtree(self.root, ignore_errors=True)


def _start_node(name: str, root: Path, network: Network, env: dict, head_address: str | None,
                num_cpus: int) -> RayNode:
    temp_dir = root / name  # short: Ray's unix sockets live under it (108-byte path limit)
    temp_dir.mkdir()
    names = ["node_manager", "object_manager", "runtime_env_agent", "agent_grpc", "agent_http", "metrics",
             "dashboard"] + (["gcs", "client"] if head_address is None else [])
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    first_worker_port = free_port_range(WORKER_PORTS_PER_NODE)
    command = [str(RAY), "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", str(num_cpus),
               "--num-gpus", "0", "--temp-dir", str(temp_dir), "--disable-usage-stats",
               "--object-store-memory", str(128 * 2**20),
               "--node-manager-port", str(ports["node_manager"]),
               "--object-manager-port", str(ports["object_manager"]),
               "--runtime-env-agent-port", str(ports["runtime_env_agent"]),
               "--dashboard-agent-grpc-port", str(ports["agent_grpc"]),
               "--dashboard-agent-listen-port", str(ports["agent_http"]),
               "--metrics-export-port", str(ports["metrics"]),
               "--min-worker-port", str(first_worker_port),
               "--max-worker-port", str(first_worker_port + WORKER_PORTS_PER_NODE - 1)]
    if head_address is None:
        command += ["--head", "--port", str(ports["gcs"]), "--ray-client-server-port", str(ports["client"]),
                    "--include-dashboard", "false", "--dashboard-host", "127.0.0.1",
                    "--dashboard-port", str(ports["dashboard"])]
    else:
        command += ["--address", head_address]
    log_path = root / f"{name}.log"
    with open(log_path, "wb") as log:
        # its own session, hence its own process group: kill() ends this node and no other
        process = subprocess.Popen(network.command(command), env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    return RayNode(name, process, temp_dir, log_path, ports)


def launch_cluster(workers: int = 1, cpus_per_node: int = 1, env: dict | None = None,
                   isolate: bool = True) -> RayCluster:
    """A head and `workers` worker nodes, each with `cpus_per_node` CPUs, all started at once (a
    worker's `ray start --address` waits for the head's GCS); wait_ready() waits for them.
    `env`: the nodes' and drivers' environment (the settings the actors read). `isolate`: in a
    network namespace of its own where the kernel allows it."""
    if not RAY.exists():
        raise RuntimeError(f"{RAY} is missing: pip install -r requirements-ray.txt")
    network = Network(isolate)
    root = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))
    # Token authentication as a real cluster should run, with a token of its own: every node and
    # driver gets it from the environment (a ~/.ray/auth_token left by a local Ray is not used).
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32), **(env or {})}
    cluster = RayCluster(None, [], root, network, env)  # type: ignore[arg-type]
    try:
        cluster.head = _start_node("head", root, network, env, None, cpus_per_node)
        for i in range(workers):
            cluster.workers.append(_start_node(f"w{i}", root, network, env, cluster.address, cpus_per_node))
    except BaseException:
        cluster.stop()
        raise
    return cluster


def wait_ready(cluster: RayCluster, timeout: float = 90.0) -> RayCluster:
    """Returns once every node's `ray start` said it started and the GCS counts them all alive;
    stops the cluster and raises, with the nodes' logs, if that takes longer than `timeout`."""
    deadline = time.monotonic() + timeout
    try:
        _wait_for(lambda: all(STARTED in node.log() for node in cluster.nodes), deadline, cluster, 0.2)
        _wait_for(lambda: cluster.alive_nodes() >= len(cluster.nodes), deadline, cluster, 0.5)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def start_cluster(workers: int = 1, cpus_per_node: int = 1, env: dict | None = None, timeout: float = 90.0,
                  isolate: bool = True) -> RayCluster:
    """launch_cluster, then wait_ready."""
    return wait_ready(launch_cluster(workers, cpus_per_node, env, isolate), timeout)


def _wait_for(ready, deadline: float, cluster: RayCluster, poll_s: float) -> None:
    while time.monotonic() < deadline:
        for node in cluster.nodes:
            if node.process.poll() is not None:
                raise RuntimeError(f"Ray node {node.name} exited ({node.process.returncode}):\n{node.log()}")
        if ready():
            return
        time.sleep(poll_s)
    raise RuntimeError("the Ray cluster did not come up in time:\n" + "\n".join(n.log(1500) for n in cluster.nodes))
