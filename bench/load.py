"""Bounded load and soak test of both services under gunicorn on 127.0.0.1.

    python bench/load.py [--requests 1000] [--clients 8] [--configs 2x2] [--service both]
    python bench/load.py --requests 10000          # soak: RSS over time, with recycling as shipped

For each service and each gunicorn setting WORKERSxTHREADS it starts gunicorn on a free loopback
port with the shipped docker/gunicorn.conf.py (workers recycled every 2,000 +- 200 requests, as in
production; --max-requests changes that), sends --requests requests from --clients concurrent
clients (stopping early at --max-seconds), and prints throughput, p50/p95/p99 latency, the
statuses (goal: every answer 2xx, recycling included), how many workers were recycled, and the
workers' RSS sampled every --sample-seconds (goal: no growth beyond the first samples).

  bg removal: uploads real catalog photos (../shared/data/catalog) or synthetic street photos,
              oracle ONNX models with the real input sizes (320/768/1024)
  search:     ViT-B-32 with random weights (real cost), index of the sample catalog,
              mostly new queries (the cache rarely helps)
Traffic goes only to 127.0.0.1.
"""
from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import requests  # noqa: E402

from bench.search_latency import percentile  # noqa: E402
from tests.conftest import free_port  # noqa: E402


def worker_pids(master: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == master:
                        pids.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return sorted(pids)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def start(app: str, env: dict, workers: int, threads: int, timeout: float = 300):
    port = free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(REPO / "docker" / "gunicorn.conf.py"),
         "--bind", f"127.0.0.1:{port}", "--workers", str(workers), "--threads", str(threads), app],
        cwd=REPO, env={**os.environ, **env, "PYTHONPATH": str(REPO)}, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    ready = 0
    while time.monotonic() < deadline and ready < workers * 3:
        try:  # every worker loads its own models: poll until several answers in a row are ready
            ready = ready + 1 if requests.get(base + "/readyz", timeout=2).status_code == 200 else 0
        except requests.RequestException:
            ready = 0
        time.sleep(0.3)
    if proc.poll() is not None or ready < workers * 3:
        log.seek(0)
        raise RuntimeError(f"gunicorn did not get ready: {log.read().decode(errors='replace')[-2000:]}")
    proc.log = log  # what the server printed (its JSON request logs carry stage timings)
    return proc, base


class RssSampler:
    """Samples the workers' RSS every `interval` s while the load runs (workers come and go)."""

    def __init__(self, master: int, interval: float, progress):
        self.master, self.interval, self.progress = master, interval, progress
        self.samples: list[tuple[float, int, list[float]]] = []  # (seconds, requests done, RSS MB per worker)
        self.pids_seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = time.monotonic()

    def _sample(self) -> None:
        pids = worker_pids(self.master)
        self.pids_seen.update(pids)
        rss = []
        for pid in pids:
            try:
                rss.append(rss_mb(pid))
            except OSError:  # recycled between listing and reading
                pass
        self.samples.append((time.monotonic() - self._started, self.progress(), rss))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self):
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()


def run_load(send, count: int, clients: int, max_seconds: float, done: list | None = None
             ) -> tuple[list[float], Counter, float]:
    latencies, statuses, lock = (done if done is not None else []), Counter(), threading.Lock()
    issued = iter(range(count))
    stop_at = time.monotonic() + max_seconds
    local = threading.local()

    def client_loop():
        local.session = requests.Session()
        while time.monotonic() < stop_at:
            with lock:
                i = next(issued, None)
            if i is None:
                return
            started = time.perf_counter()
            try:
                status = send(local.session, i)
            except requests.RequestException as exc:
                status = type(exc).__name__
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                statuses[status] += 1

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for _ in range(clients):
            pool.submit(client_loop)
    return latencies, statuses, time.perf_counter() - started


def pct(values: list[float], q: float) -> float:
    return percentile(values, q) * 1000


def report(name: str, setting: str, latencies, statuses, seconds, sampler: RssSampler, first_pids) -> None:
    non_2xx = sum(n for s, n in statuses.items() if not (isinstance(s, int) and 200 <= s < 300))
    recycled = len(sampler.pids_seen - set(first_pids))
    print(f"{name:<9} {setting:<5} {len(latencies):>5} req {len(latencies) / seconds:7.1f} req/s  "
          f"p50 {pct(latencies, 50):7.1f} ms  p95 {pct(latencies, 95):7.1f} ms  p99 {pct(latencies, 99):7.1f} ms  "
          f"statuses {dict(statuses)}  non-2xx {non_2xx}  workers recycled {recycled}")
    print("  RSS over time (MB per worker): " + "  ".join(
        f"{t:.0f}s/{n}req: {'+'.join(f'{r:.0f}' for r in rss)}" for t, n, rss in sampler.samples))
    first, last = sum(sampler.samples[0][2]), sum(sampler.samples[-1][2])
    print(f"  total worker RSS {first:.0f} MB at start -> {last:.0f} MB at the end "
          f"({(last - first) / max(first, 1) * 100:+.1f} %)")


def measure(name: str, app: str, env: dict, workers: int, threads: int, send, args) -> None:
    """Start gunicorn, warm it up (requests numbered apart from the measured ones), measure."""
    proc, base = start(app, env, workers, threads)
    try:
        run_load(lambda s, i: send(base, s, i + 10**6), 4 * args.clients, args.clients, 120)
        first_pids = worker_pids(proc.pid)
        done: list[float] = []
        with RssSampler(proc.pid, args.sample_seconds, lambda: len(done)) as sampler:
            result = run_load(lambda s, i: send(base, s, i), args.requests, args.clients, args.max_seconds, done)
        report(name, f"{workers}x{threads}", *result, sampler, first_pids)
    finally:
        proc.terminate()
        proc.wait(30)


def photos(catalog: Path) -> list[bytes]:
    from tests import scenes

    if catalog.is_dir():
        files = sorted(catalog.glob("*/*.png"))[::4]
        if files:
            return [f.read_bytes() for f in files]
    result = []
    for size in ((600, 800), (480, 640), (900, 1200)):
        buf = io.BytesIO()
        scenes.street_photo(*size)[0].save(buf, "JPEG", quality=90)
        result.append(buf.getvalue())
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--configs", default="2x2", help="comma-separated WORKERSxTHREADS")
    parser.add_argument("--service", choices=("both", "bgremoval", "search"), default="both")
    parser.add_argument("--max-seconds", type=float, default=600, help="per run; stops early after this")
    parser.add_argument("--catalog", type=Path, default=REPO.parent / "shared" / "data" / "catalog")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--max-requests", type=int, default=None,
                        help="gunicorn max_requests (default: as shipped, 2000 +- 200; 0 = never recycle)")
    parser.add_argument("--sample-seconds", type=float, default=10.0, help="RSS sampling interval")
    parser.add_argument("--oracle-scale", type=int, default=0,
                        help="extra full-resolution conv layers in the test models, to add inference cost")
    args = parser.parse_args()
    settings = [tuple(int(x) for x in c.split("x")) for c in args.configs.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        from tests.oracle_models import write_oracle_models

        weights = Path(tmp) / "u2net"
        write_oracle_models(str(weights), extra_layers=args.oracle_scale)
        # Recycling stays as shipped: a figure measured without it would hide the requests a
        # recycle costs. RSS is sampled over time instead, so a leak shows between recycles.
        env = {"U2NET_HOME": str(weights), "ORT_THREADS": "1", "TORCH_THREADS": "1", "GUNICORN_LOG_LEVEL": "warning"}
        if args.max_requests is not None:
            env["GUNICORN_MAX_REQUESTS"] = str(args.max_requests)

        if args.service in ("both", "bgremoval"):
            bodies = photos(args.catalog)

            def send_photo(base, session, i):
                return session.post(base + "/", data=bodies[i % len(bodies)],
                                    headers={"Content-Type": "image/png"}, timeout=60).status_code
            for workers, threads in settings:
                measure("bgremoval", "bgremoval:create_app()", env, workers, threads, send_photo, args)

        if args.service in ("both", "search"):
            index_dir = Path(tmp) / "index"
            env_search = {**env, "CLIP_MODEL": args.model, "CLIP_PRETRAINED": "", "SEARCH_INDEX_DIR": str(index_dir)}
            build = subprocess.run(
                [sys.executable, "-m", "search.index", "build", "--catalog", str(args.catalog), "--out", str(index_dir)],
                cwd=REPO, env={**os.environ, **env_search, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
            if build.returncode:
                print(f"search skipped: index build failed: {build.stderr[-1500:]}")
                return 1
            words = ["pastel", "coloured", "tunic", "floral", "black", "shirt", "crew", "neck", "cotton",
                     "blue", "long", "sleeve", "printed", "maroon", "dress", "collar", "green", "striped"]

            def send_query(base, session, i):
                text = f"{words[i % 18]} {words[(i * 7) % 18]} {words[(i * 11) % 18]} {i}"
                return session.post(base + "/", json={"text": text, "n": 5}, timeout=60).status_code
            for workers, threads in settings:
                measure("search", "search:create_app()", env_search, workers, threads, send_query, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
