"""A real Milvus standalone server for the tests (tests/test_milvus_server.py) and the fault bench
(bench/milvus_faults.py): the `milvus` package from PyPI (requirements-dev.txt: milvus==2.3.5, the
one that ships `milvus-server`), which bundles the Milvus 2.3.5 standalone binary with embedded etcd
and RocksMQ - no docker, no MinIO.

    with MilvusServer(tmp_dir) as server:      # started, healthy (bounded wait), always stopped
        uri = server.uri                       # http://127.0.0.1:<proxy port>
        server.kill()                          # kill -9 of its process group
        server.start()                         # the same data folder and the same ports
        server.freeze(); server.thaw()         # SIGSTOP / SIGCONT

It launches the server binary itself (prepared by the package's own config code) rather than
running the `milvus-server` command, because that command cannot fix every port: its embedded etcd
always listens on 2379 and 2380 whatever --etcd-port says, its metrics/health port is the first free
one from 9091, and a busy port silently becomes the next free one. Here every port the server
opens is a free port picked once and kept for restarts:

    proxy (the gRPC/HTTP API clients use), proxy internal, rootCoord, queryCoord, queryNode,
    indexCoord, indexNode, dataCoord, dataNode (the components' gRPC ports), etcd client and etcd
    peer (embedded etcd, through an etcd config file), metrics (/healthz, /metrics)

etcd listens on 127.0.0.1 only. Milvus 2.3 binds the components' gRPC ports and the metrics port
on every interface (it listens on ":port"; no setting changes that), so those are reachable from
outside the machine while a test runs; each component is told ip=127.0.0.1, so they register and
call one another on loopback. Under CI (CI=true) a missing package is a failure; elsewhere the
tests skip and say why (`require_milvus_server`).
"""
from __future__ import annotations

import atexit
import contextlib
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 120.0
# Port settings of the package's config template (configs/milvus.yaml), one per listening socket.
COMPONENT_PORTS = ("proxy_port", "proxy_internal_port", "root_coord_port", "query_coord_port", "query_node_port",
                   "index_coord_port", "index_node_port", "data_coord_port", "data_node_port", "etcd_port")
COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexCoord", "indexNode", "dataCoord", "dataNode")
# Shorter server-side waits, so a test's publish takes seconds, not tens of them (Milvus' defaults in
# comments). They change how soon things happen, not what the service sees.
QUICKER = {
    "dataCoord.segment.assignmentExpiration": 500,  # 2000 ms: a flush waits for segment allocations to expire
    "queryCoord.checkInterval": 200,  # 1000 ms: a load is scheduled at the next check
    "queryCoord.distPullInterval": 200,  # 500 ms: ...and seen loaded at the next pull
    "common.gracefulTime": 1000,  # 5000 ms: Bounded consistency sees writes this much later
}
# common.session.ttl (Milvus: 30 s), the lease of each component's session in etcd, set per start:
# a process killed with -9 and restarted serves its collections only once the dead process's
# sessions expire (its query node goes "offline", its segments are loaded again), which etcd counts
# from its own restart: about TTL + 5 s after the restart. A frozen process must resume before its
# leases run out - at least 2/3 of the TTL is left when it stops (keep-alives come every TTL/3) -
# or it exits by itself on resuming ("requested lease not found"). So the kill scenario kills a
# process started with KILLED_SESSION_TTL_S and the freeze one freezes a process with a TTL that
# outlasts the freeze.
KILLED_SESSION_TTL_S = 10


class MilvusServerError(RuntimeError):
    """The server could not be prepared, started or made healthy (the message has its log's tail)."""


def unavailable_reason() -> str | None:
    """Why a real Milvus server cannot run here, or None when it can."""
    if not sys.platform.startswith("linux"):
        return f"the milvus package's server runs on Linux only (this is {sys.platform})"
    try:
        import milvus
    except ImportError as exc:
        return (f"the real-server tests need the `milvus` package (requirements-dev.txt pins milvus==2.3.5, "
                f"which ships milvus-server): {exc}")
    if not hasattr(milvus, "MilvusServerConfig") or not hasattr(milvus, "_initialize_data_files"):
        return f"the installed milvus package ({getattr(milvus, '__version__', '?')}) is not milvus==2.3.5's server"
    return None


def require_milvus_server() -> None:
    """Skip the calling test (module) when no real server can run here; under CI, fail instead."""
    import pytest

    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and no real Milvus server: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def free_ports(count: int) -> list[int]:
    """Distinct ports free on every interface (Milvus binds most of its ports on all of them)."""
    sockets, ports = [], []
    try:
        while len(ports) < count:
            s = socket.socket()
            s.bind(("", 0))
            sockets.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in sockets:
            s.close()
    return ports


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL it when the thread that started it dies - a test run
    killed with -9 (no atexit) leaves no server behind. Linux's PR_SET_PDEATHSIG; elsewhere nothing."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


def unpacked_binary() -> Path:
    """The server binary and its libraries, unpacked from the package once per machine (about
    250 MB, 10-15 s of lzma) into a cache folder shared by every server and test run."""
    import milvus

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fashion-services"
    folder = cache / f"milvus-{milvus.__version__}-bin"
    if not (folder / "milvus").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="unpacking-", dir=cache))
        try:
            milvus._initialize_data_files(str(staging))  # writes staging/bin
            with contextlib.suppress(OSError):  # another run may have finished first: keep its copy
                os.rename(staging / "bin", folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder / "milvus"


_shared: MilvusServer | None = None
_shared_failure: str | None = None
_shared_lock = threading.Lock()


def shared_server() -> MilvusServer:
    """The test session's one real server (tests of several modules share it): started on first
    use in a temporary folder, stopped and removed when the test process exits; handed out
    running and not frozen (a fault test that failed half-way may have left it otherwise). Skips
    (fails under CI) where no server can run; a server that does not start fails every user."""
    global _shared, _shared_failure
    require_milvus_server()
    with _shared_lock:
        if _shared_failure is not None:
            raise MilvusServerError(_shared_failure)
        if _shared is None:
            folder = Path(tempfile.mkdtemp(prefix="milvus-server-"))
            server = MilvusServer(folder)

            def remove() -> None:
                server._kill_quietly()  # its data goes next: nothing to shut down cleanly for
                shutil.rmtree(folder, ignore_errors=True)

            atexit.register(remove)
            try:
                server.start()
            except MilvusServerError as exc:
                _shared_failure = str(exc)
                raise
            _shared = server
        if _shared.frozen:
            _shared.thaw()
        if not _shared.running:
            _shared.start()
        return _shared


class MilvusServer:
    """One Milvus standalone server: its own process group, a data folder, fixed loopback ports."""

    def __init__(self, data_dir: str | Path, *, start_timeout: float = START_TIMEOUT_S,
                 session_ttl_s: int = KILLED_SESSION_TTL_S):
        self.data_dir = Path(data_dir).resolve()
        self.start_timeout = start_timeout
        self.session_ttl_s = session_ttl_s  # of the running process (see KILLED_SESSION_TTL_S)
        picked = free_ports(len(COMPONENT_PORTS) + 2)
        self.ports = dict(zip((*COMPONENT_PORTS, "etcd_peer_port", "metrics_port"), picked, strict=True))
        self.process: subprocess.Popen | None = None
        self._prepared: tuple[Path, dict] | None = None  # once: a restart reuses config and binary
        self.frozen = False
        self.started_in_s: list[float] = []  # seconds each start took until healthy
        atexit.register(self._kill_quietly)  # whatever happens to the tests, the server goes

    # ---------------------------------------------------------------- addresses

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.ports['proxy_port']}"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['metrics_port']}/healthz"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # ---------------------------------------------------------------- life cycle

    def __enter__(self) -> MilvusServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, *, session_ttl_s: int | None = None) -> None:
        """Start it (on the data already there, if any) and wait until /healthz says OK;
        `session_ttl_s`: common.session.ttl of this process (else the last one's)."""
        if self.running:
            raise MilvusServerError("the Milvus server is already running")
        started = time.monotonic()
        if self._prepared is None:
            # The package's port check binds each port without SO_REUSEADDR, which fails for a
            # while after a kill (connections in TIME_WAIT); the server's own sockets reuse them.
            self._prepared = self._prepare()
        binary, env = self._prepared
        self.session_ttl_s = session_ttl_s or self.session_ttl_s
        yaml = self.data_dir / "configs" / "milvus.yaml"
        text, count = re.subn(r"(?m)^(  session:\n    ttl: )\d+", rf"\g<1>{int(self.session_ttl_s)}", yaml.read_text())
        if count != 1:
            raise MilvusServerError(f"{yaml} has no common.session.ttl line to set")
        yaml.write_text(text)
        logs = self.data_dir / "logs"
        with open(logs / "milvus-stdout.log", "ab") as out, open(logs / "milvus-stderr.log", "ab") as err:
            # Its own session (and process group): kill/freeze reach it and only it.
            self.process = subprocess.Popen([str(binary), "run", "standalone"], cwd=self.data_dir, env=env,
                                            stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                            start_new_session=True, preexec_fn=_die_with_parent)
        self.frozen = False
        try:
            self.wait_healthy(self.start_timeout)
        except BaseException:
            self._kill_quietly()
            raise
        self.started_in_s.append(round(time.monotonic() - started, 2))

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise MilvusServerError(f"the Milvus server exited with {self.process.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.health_url, timeout=2) as answer:
                    if b"OK" in answer.read():
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.2)
        raise MilvusServerError(f"the Milvus server was not healthy within {timeout:.0f} s: {self.log_tail()}")

    def kill(self) -> None:
        """kill -9 of the server's process group, as a crash or an OOM kill would."""
        self._signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self.frozen = False

    def freeze(self) -> None:
        """SIGSTOP: the process keeps its sockets (connections are accepted by the kernel) but never answers."""
        self._signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)
        self.frozen = False

    def restart(self, *, session_ttl_s: int | None = None) -> None:
        """Stop it (kill -9 if it does not stop) and start it again on the same data and ports."""
        self.stop()
        self.start(session_ttl_s=session_ttl_s)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (after SIGCONT: a stopped process ignores it), then SIGKILL; safe to call twice."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGCONT)
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._kill_quietly()
        self._kill_quietly()  # anything left in its group
        self.frozen = False

    def _signal(self, sig: int) -> None:
        if not self.running:
            raise MilvusServerError("the Milvus server is not running")
        os.killpg(self.process.pid, sig)

    def _kill_quietly(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)

    # ---------------------------------------------------------------- configuration

    def _prepare(self) -> tuple[Path, dict]:
        """configs/milvus.yaml (ports, loopback addresses, data folders), the etcd config, the
        unpacked binary and the environment it runs with."""
        reason = unavailable_reason()
        if reason is not None:
            raise MilvusServerError(reason)
        import milvus

        ports = {key: self.ports[key] for key in COMPONENT_PORTS}
        config = milvus.MilvusServerConfig(data_dir=str(self.data_dir), **ports)  # given ports: no fallback
        for component in COMPONENTS:
            config.set(f"{component}.ip", "127.0.0.1")
        for key, value in QUICKER.items():
            config.set(key, value)
        try:
            config.resolve()  # checks every port binds, writes configs/milvus.yaml under data_dir
        except RuntimeError as exc:
            raise MilvusServerError(f"cannot configure the Milvus server: {exc}") from None
        etcd = self.data_dir / "configs" / "etcd.yaml"
        client = f"http://127.0.0.1:{self.ports['etcd_port']}"
        peer = f"http://127.0.0.1:{self.ports['etcd_peer_port']}"
        etcd.write_text("\n".join([
            "name: default",
            f"listen-client-urls: {client}", f"advertise-client-urls: {client}",
            f"listen-peer-urls: {peer}", f"initial-advertise-peer-urls: {peer}",
            f"initial-cluster: default={peer}", ""]))
        yaml = self.data_dir / "configs" / "milvus.yaml"
        text = yaml.read_text()
        if "\netcd:\n" not in f"\n{text}":
            raise MilvusServerError(f"{yaml} has no etcd section to point at {etcd}")
        # The template has no etcd.config.path line to set, so it is added under `etcd:`.
        yaml.write_text(f"\n{text}".replace("\netcd:\n", f"\netcd:\n  config:\n    path: {etcd}\n", 1)[1:])
        binary = unpacked_binary()
        env = {**os.environ, "DEPLOY_MODE": "STANDALONE", "METRICS_PORT": str(self.ports["metrics_port"]),
               "MILVUS_RUN_DIR": str(self.data_dir / "run"), "MILVUSCONF": str(self.data_dir / "configs"),
               "LD_LIBRARY_PATH": ":".join(filter(None, [str(binary.parent), os.environ.get("LD_LIBRARY_PATH")]))}
        return binary, env

    # ---------------------------------------------------------------- diagnostics

    def listening(self) -> list[str]:
        """The sockets the server listens on (`ss -ltnp`), for the docs and for checks."""
        if not self.running:
            return []
        try:
            out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            return []
        return sorted(line.split()[3] for line in out.splitlines() if f"pid={self.process.pid}," in line)

    def log_tail(self, chars: int = 2000) -> str:
        parts = []
        for name in ("milvus-stderr.log", "milvus-stdout.log"):
            path = self.data_dir / "logs" / name
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").strip()
                if text:
                    parts.append(f"[{name}] ...{text[-chars:]}")
        return "\n".join(parts) or "(no log)"


# --------------------------------------------------------------------------- faults under traffic
# The scenarios tests/test_milvus_server.py checks and bench/milvus_faults.py prints: the search
# service (a Flask app with SEARCH_BACKEND=milvus) under a few client threads while the server is
# killed, frozen or loses a collection. Times are seconds (time.monotonic()).

QUERIES = ("red dress", "blue top", "black trousers", "green skirt", "white shoes", "navy coat")


@dataclass(frozen=True)
class Answer:
    started: float
    ended: float
    status: int
    retry_after: str | None
    detail: str  # a problem's detail, or the product names answered

    @property
    def seconds(self) -> float:
        return self.ended - self.started


def ask(client, text: str, n: int = 5) -> Answer:
    started = time.monotonic()
    response = client.post("/", json={"text": text, "n": n})
    ended = time.monotonic()
    body = response.get_json(silent=True)
    if response.status_code == 200:
        detail = ",".join(r["product_name"] for r in body)
    else:
        detail = (body or {}).get("detail") or response.get_data(as_text=True)[:300]
    return Answer(started, ended, response.status_code, response.headers.get("Retry-After"), detail)


class Traffic:
    """`threads` clients posting QUERIES to the app in a loop (a short pause between requests)
    until the block ends, or `limit_s` at most; every answer is kept."""

    def __init__(self, app, *, threads: int = 4, pause_s: float = 0.05, limit_s: float = 180.0):
        self.app, self.threads, self.pause_s, self.limit_s = app, threads, pause_s, limit_s
        self.answers: list[Answer] = []
        self.crashes: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def __enter__(self) -> Traffic:
        deadline = time.monotonic() + self.limit_s
        for i in range(self.threads):
            worker = threading.Thread(target=self._run, args=(i, deadline), name=f"traffic-{i}", daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=30)

    def _run(self, i: int, deadline: float) -> None:
        client = self.app.test_client()
        turn = i
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                answer = ask(client, QUERIES[turn % len(QUERIES)])
            except Exception as exc:  # noqa: BLE001 - a crash in the app is a finding, not a stop
                with self._lock:
                    self.crashes.append(f"{type(exc).__name__}: {exc}")
                answer = None
            if answer is not None:
                with self._lock:
                    self.answers.append(answer)
            turn += 1
            self._stop.wait(self.pause_s)

    def wait_for(self, predicate, timeout: float) -> Answer | None:
        """The first answer (by end time) satisfying `predicate`, waiting up to `timeout` for one."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                found = sorted((a for a in self.answers if predicate(a)), key=lambda a: a.ended)
            if found:
                return found[0]
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def between(self, start: float, end: float) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.ended >= start and a.started <= end]


def burst(app, count: int) -> list[Answer]:
    """`count` requests sent at the same moment, each from its own thread."""
    barrier = threading.Barrier(count)
    out: list[Answer] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        client = app.test_client()
        barrier.wait(timeout=30)
        answer = ask(client, QUERIES[i % len(QUERIES)])
        with lock:
            out.append(answer)

    workers = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    return out


def answers_now(app) -> dict[str, str]:
    client = app.test_client()
    return {text: ask(client, text).detail for text in QUERIES}


def _summary(fault: str, traffic: Traffic, fault_at: float, recovered_from: float, first_503: Answer | None,
             first_200: Answer | None) -> dict:
    """The timeline of one fault: from the fault to the first 503, what came back meanwhile, and
    from the restart (SIGCONT, publish) to the first 200."""
    window = traffic.between(fault_at, first_200.ended if first_200 else time.monotonic())
    failed = [a for a in window if a.status == 503 and a.started >= fault_at]
    return {
        "fault": fault,
        "first_503_s": round(first_503.ended - fault_at, 2) if first_503 else None,
        "answers_503": len(failed),
        "answers_other_errors": sorted({a.status for a in window if a.status not in (200, 503)}),
        "slowest_503_s": round(max((a.seconds for a in failed), default=0.0), 2),
        "retry_after": sorted({a.retry_after or "-" for a in failed}),
        "detail_503": first_503.detail if first_503 else None,
        "recovered_s": round(first_200.ended - recovered_from, 2) if first_200 else None,
        "crashes": list(traffic.crashes),
    }


def _with_session_ttl(server: MilvusServer, app, ttl_s: int) -> None:
    """The server restarted (cleanly) with common.session.ttl = ttl_s unless it runs with it, and
    the service serving again."""
    if server.session_ttl_s == ttl_s and server.running and not server.frozen:
        return
    server.restart(session_ttl_s=ttl_s)
    client, deadline = app.test_client(), time.monotonic() + 60
    while ask(client, QUERIES[0]).status != 200:
        if time.monotonic() > deadline:
            raise AssertionError("the service did not serve within 60 s of a clean restart of the server")
        time.sleep(0.2)


def kill_scenario(app, server: MilvusServer, *, outage_s: float = 3.0, recover_within_s: float = 30.0,
                  restarted_ttl_s: int = 20) -> dict:
    """kill -9 of the server (a process with KILLED_SESSION_TTL_S) under traffic, /readyz while it
    is down, then a restart on the same data (with `restarted_ttl_s`, enough for the freeze);
    recovered_s counts from the restart command (the server's own start is start_s of it)."""
    _with_session_ttl(server, app, KILLED_SESSION_TTL_S)
    before = answers_now(app)
    client = app.test_client()
    with Traffic(app) as traffic:
        if traffic.wait_for(lambda a: a.status == 200, 30) is None:
            raise AssertionError(f"the service did not serve before the fault: {traffic.answers[-3:]}")
        fault_at = time.monotonic()
        server.kill()
        first_503 = traffic.wait_for(lambda a: a.status == 503 and a.started >= fault_at, 30)
        time.sleep(outage_s)
        ready = client.get("/readyz")
        restart_at = time.monotonic()
        server.start(session_ttl_s=restarted_ttl_s)
        healthy_at = time.monotonic()
        first_200 = traffic.wait_for(lambda a: a.status == 200 and a.started >= fault_at,
                                     recover_within_s - (healthy_at - restart_at))
    timeline = _summary("kill -9, restart", traffic, fault_at, restart_at, first_503, first_200)
    timeline.update(killed_session_ttl_s=KILLED_SESSION_TTL_S, start_s=round(healthy_at - restart_at, 2),
                    recovered_after_healthy_s=round(first_200.ended - healthy_at, 2) if first_200 else None,
                    readyz_down=(ready.status_code, (ready.get_json(silent=True) or {}).get("detail")),
                    same_results_after=answers_now(app) == before if first_200 else False)
    return timeline


def freeze_scenario(app, server: MilvusServer, *, frozen_s: float = 10.0, concurrent: int = 6,
                    recover_within_s: float = 30.0) -> dict:
    """SIGSTOP for frozen_s under traffic, with `concurrent` requests sent at once in the middle of
    it (each must end near MILVUS_TIMEOUT: none waits behind another's reconnect), then SIGCONT.
    The frozen process runs with a session TTL its leases outlast the freeze with (see
    KILLED_SESSION_TTL_S); else it is restarted with one first."""
    needed_ttl_s = math.ceil(frozen_s * 1.5) + 5
    if server.session_ttl_s < needed_ttl_s:
        _with_session_ttl(server, app, needed_ttl_s)
    before = answers_now(app)
    with Traffic(app) as traffic:
        if traffic.wait_for(lambda a: a.status == 200, 30) is None:
            raise AssertionError(f"the service did not serve before the fault: {traffic.answers[-3:]}")
        fault_at = time.monotonic()
        server.freeze()
        try:
            first_503 = traffic.wait_for(lambda a: a.status == 503 and a.started >= fault_at, frozen_s)
            time.sleep(max(0.0, fault_at + frozen_s / 3 - time.monotonic()))
            sent_together = burst(app, concurrent)
            time.sleep(max(0.0, fault_at + frozen_s - time.monotonic()))
            frozen = traffic.between(fault_at, time.monotonic())
        finally:
            thaw_at = time.monotonic()
            server.thaw()
        first_200 = traffic.wait_for(lambda a: a.status == 200 and a.ended >= thaw_at and a.started >= fault_at,
                                     recover_within_s)
    timeline = _summary(f"SIGSTOP {frozen_s:g} s, SIGCONT", traffic, fault_at, thaw_at, first_503, first_200)
    timeline.update(
        concurrent_s=sorted(round(a.seconds, 2) for a in sent_together),
        concurrent_status=sorted({a.status for a in sent_together}),
        slowest_while_frozen_s=round(max((a.seconds for a in frozen if a.started < thaw_at), default=0.0), 2),
        same_results_after=answers_now(app) == before if first_200 else False)
    return timeline


def drop_scenario(app, server: MilvusServer, collection: str, republish, *, outage_s: float = 2.0,
                  recover_within_s: float = 30.0) -> dict:
    """The searched collection dropped under traffic (by another client), then `republish()`
    (search.index publish of the same index); recovered_s counts from the publish's start."""
    from search.vectors.milvus import pymilvus

    before = answers_now(app)
    client = app.test_client()
    admin = pymilvus().MilvusClient(uri=server.uri, timeout=30)
    try:
        with Traffic(app) as traffic:
            if traffic.wait_for(lambda a: a.status == 200, 30) is None:
                raise AssertionError(f"the service did not serve before the fault: {traffic.answers[-3:]}")
            fault_at = time.monotonic()
            admin.drop_collection(collection, timeout=30)
            first_503 = traffic.wait_for(lambda a: a.status == 503 and a.started >= fault_at, 30)
            time.sleep(outage_s)
            ready = client.get("/readyz")
            publish_at = time.monotonic()
            republish()
            published_at = time.monotonic()
            first_200 = traffic.wait_for(lambda a: a.status == 200 and a.started >= fault_at, recover_within_s)
    finally:
        admin.close()
    timeline = _summary(f"drop {collection}, publish", traffic, fault_at, publish_at, first_503, first_200)
    timeline.update(publish_s=round(published_at - publish_at, 2),
                    readyz_down=(ready.status_code, (ready.get_json(silent=True) or {}).get("detail")),
                    same_results_after=answers_now(app) == before if first_200 else False)
    return timeline


# --------------------------------------------------------------------------- what the scenarios serve

COLOURS = ("red", "blue", "black", "green", "white", "navy")
GARMENTS = ("dress", "top", "trousers", "skirt", "shoes", "coat")


def service_index(out: Path, identity: dict, *, products: int = 60, seed: int = 0) -> Path:
    """A folder-catalog index of random unit vectors (1-3 images a product) stamped with
    `identity` (an embedder's), so the service accepts it; no image files (serve it with
    startup_image_sample=0)."""
    import numpy as np

    from search.index_format import IndexArrays, write_index
    from search.indexing.pooling import pool_products

    rng = np.random.default_rng(seed)
    dim = len(identity["probe"])
    names = sorted(f"{i}-{COLOURS[i % 6]}-{GARMENTS[i // 6 % 6]}" for i in range(products))
    counts = [1 + i % 3 for i in range(products)]
    images = rng.normal(size=(sum(counts), dim)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    files = [f"photo-{v}.jpg" for c in counts for v in range(c)]
    write_index(out, IndexArrays(images, pool_products(images, counts, "max"), counts, names, files,
                                 ["00" * 32] * len(files), ["garment"] * len(files),
                                 np.zeros((len(files), 4), np.float32)),
                {"embedder": dict(identity), "pooling": "max", "embed_dim": dim, "catalog_dir": str(out),
                 "catalog_fingerprint": "milvus-faults"})
    return out


def service_app(index_dir: Path, uri: str, embedder, *, timeout: float = 2.0, collection: str | None = None):
    """The search service over `index_dir` with SEARCH_BACKEND=milvus at `uri` (MILVUS_TIMEOUT =
    `timeout`, MILVUS_COLLECTION = `collection`), the tiny test model, no photo queries, no index
    polling."""
    from search import create_app
    from search.config import BackendSettings, ClipSettings, SearchConfig
    from tests.conftest import TINY

    config = SearchConfig(clip=ClipSettings(**TINY), index_dir=str(index_dir), startup_image_sample=0,
                          index_poll_s=0, image_queries=False,
                          vectors=BackendSettings(backend="milvus", milvus_uri=uri, milvus_timeout=timeout,
                                                  milvus_collection=collection))
    app = create_app(config, embedder=embedder)
    app.testing = True
    return app
