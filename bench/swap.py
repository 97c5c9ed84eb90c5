"""Hot swap of index generations under load: what a running search service pays when a build
publishes new generations (search/live.py).

    python bench/swap.py [--products 20000] [--generations 3] [--clients 4] [--steady-seconds 20]

Writes a synthetic index (bench/memory.py: clustered unit vectors, a catalog of symlinks) with the
identity of ViT-B-32 random weights (real cost) and its ONNX text export (as the shipped image
serves), starts the service as shipped (gunicorn, docker/gunicorn.conf.py, 2 workers x 2 threads,
recycling on, TORCH_THREADS=1; photo queries off, as they need the bg models), and keeps --clients clients sending unique text queries. After a
steady phase it publishes --generations new generations one after the other, each with one more
product, through search.index_format.write_index (what a build does last: a new generation folder,
then one atomic switch of meta.json), and measures:

- non-2xx answers over the whole run (goal 0);
- p50/p99 latency, steady against the window of each swap (from the meta.json switch until every
  worker serves the new generation, plus one second); goal: swap p99 <= 2x steady p99. The
  write before the switch runs in this process, on the same 2 cores: its window is shown apart
  (what a build on the serving machine costs the service), not counted in the goal;
- time from the meta.json switch until the new product is visible on every worker (GET
  /products/<id> and /readyz, asked on new connections so both workers answer); goal <= 10 s;
- each worker's RSS before the publish and once the old generation is released; goal within 10 %.
Traffic goes only to 127.0.0.1.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import requests  # noqa: E402

from bench.load import rss_mb, start, worker_pids  # noqa: E402
from bench.memory import WORDS, add_text_encoder, write_synthetic_index  # noqa: E402


class Traffic:
    """--clients threads sending unique queries until stopped; every answer recorded as
    (start time, seconds, status, X-Index-Generation)."""

    def __init__(self, base: str, clients: int):
        self.base, self.records, self._lock = base, [], threading.Lock()
        self._stop = threading.Event()
        self._count = 0
        self._threads = [threading.Thread(target=self._client, args=(c,), daemon=True) for c in range(clients)]

    def _client(self, client: int) -> None:
        session = requests.Session()
        rng = np.random.default_rng(client)
        while not self._stop.is_set():
            with self._lock:
                self._count += 1
                i = self._count
            text = " ".join(rng.choice(WORDS, 3)) + f" {client}-{i}"  # unique: every query is encoded
            started = time.monotonic()
            try:
                response = session.post(self.base + "/", json={"text": text, "n": 10}, timeout=60)
                status, generation = response.status_code, response.headers.get("X-Index-Generation")
            except requests.RequestException as exc:
                status, generation = type(exc).__name__, None
            with self._lock:
                self.records.append((started, time.monotonic() - started, status, generation))

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def between(self, start: float, end: float) -> list[float]:
        with self._lock:
            return [seconds for began, seconds, status, _ in self.records if start <= began <= end]


def percentiles(values: list[float]) -> tuple[float, float, float]:
    if not values:
        return float("nan"), float("nan"), float("nan")
    return (float(np.percentile(values, 50) * 1000), float(np.percentile(values, 99) * 1000), max(values) * 1000)


def serving_everywhere(base: str, workers: set[int], generation: str, product: str, timeout: float) -> float | None:
    """Seconds until every worker answers /readyz with `generation` and the product is found
    (new connections, so the kernel spreads them over the workers); None past the timeout."""
    started = time.monotonic()
    seen: dict[int, str] = {}
    while time.monotonic() - started < timeout:
        ready = requests.get(base + "/readyz", timeout=5)
        if ready.status_code == 200:
            seen[ready.json()["pid"]] = ready.json()["index_generation"]
        if set(seen) >= workers and all(seen[w] == generation for w in workers):
            if requests.get(f"{base}/products/{product}", timeout=5).status_code == 200:
                return time.monotonic() - started
        time.sleep(0.05)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=20_000)
    parser.add_argument("--images-per-product", type=int, default=3)
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--steady-seconds", type=float, default=20.0)
    parser.add_argument("--settle-seconds", type=float, default=5.0, help="after a swap, before RSS is read")
    parser.add_argument("--export", help="a text-encoder export of ViT-B-32 random weights (seed 0): reused when "
                                         "it exists, else written there for the next run")
    args = parser.parse_args()

    from search.config import ClipSettings
    from search.embedder import ClipEmbedder
    from search.index_format import read_meta
    from tests.generations import write_generation_with

    embedder = ClipEmbedder(ClipSettings(model="ViT-B-32", pretrained=""), text_only=True)
    identity = embedder.identity
    with tempfile.TemporaryDirectory() as tmp:
        catalog, index_dir, images, _ = write_synthetic_index(Path(tmp), args.products, args.images_per_product,
                                                              identity, len(identity["probe"]))
        reuse = args.export if args.export and Path(args.export).is_dir() else None
        export = add_text_encoder(index_dir, embedder, reuse)
        if args.export and reuse is None:
            shutil.copytree(export, args.export)  # the next run skips the export
        del embedder
        env = {"CLIP_MODEL": "ViT-B-32", "CLIP_PRETRAINED": "", "SEARCH_INDEX_DIR": str(index_dir),
               "SEARCH_CATALOG_DIR": str(catalog), "TORCH_THREADS": "1", "GUNICORN_LOG_LEVEL": "warning",
               "SEARCH_TEXT_ENCODER": "onnx", "SEARCH_IMAGE_QUERIES": "0"}
        proc, base = start("search:create_app()", env, 2, 2)
        print(f"synthetic index: {args.products:,} products, {images:,} images; 2 workers x 2 threads, ONNX text "
              f"encoder, {args.clients} clients; meta.json polled every 1 s (SEARCH_INDEX_POLL_S)")
        rows, failures = [], 0
        try:
            workers = set(worker_pids(proc.pid))
            like = sorted(p.name for p in catalog.iterdir())[0]
            with Traffic(base, args.clients) as traffic:
                warm_until = time.monotonic() + 5
                time.sleep(5 + args.steady_seconds)
                steady = percentiles(traffic.between(warm_until, time.monotonic()))
                for n in range(args.generations):
                    rss_before = {pid: rss_mb(pid) for pid in workers}
                    product = f"zzz-new-product-{n + 1}"
                    began = time.monotonic()
                    generation = write_generation_with(index_dir, catalog, product, like)["generation"]
                    switched = time.monotonic()
                    write_s = switched - began
                    visible = serving_everywhere(base, workers, generation, product, timeout=30)
                    window_end = time.monotonic() + 1.0
                    time.sleep(max(1.0, args.settle_seconds))
                    window = percentiles(traffic.between(switched, window_end))
                    writing = percentiles(traffic.between(began, switched))
                    rss_after = {pid: rss_mb(pid) for pid in workers}
                    rows.append({"n": n + 1, "write_s": write_s, "visible_s": visible, "writing": writing,
                                 "window": window, "rss": [(rss_before[p], rss_after[p]) for p in sorted(workers)]})
                    if read_meta(index_dir)["generation"] != generation:
                        raise RuntimeError("meta.json moved on unexpectedly")
            statuses = {}
            for _, _, status, _ in traffic.records:
                statuses[status] = statuses.get(status, 0) + 1
            failures = sum(v for k, v in statuses.items() if not (isinstance(k, int) and 200 <= k < 300))
            restarted = set(worker_pids(proc.pid)) != workers
        finally:
            proc.terminate()
            proc.wait(60)

    print(f"\nrequests: {len(traffic.records)}, statuses {statuses}; workers restarted: {restarted}")
    print(f"steady: p50 {steady[0]:.1f} ms, p99 {steady[1]:.1f} ms, max {steady[2]:.1f} ms")
    print("write s: the build's last step (new generation folder, then the meta.json switch); visible s: from "
          "the switch until every worker serves it")
    print(f"{'gen':>3} {'write s':>8} {'write p99':>9} {'visible s':>9} {'swap p50':>8} {'swap p99':>8} {'max ms':>7} "
          f"{'p99 x':>6}  RSS MB per worker (before -> after)")
    worst_ratio, worst_visible, worst_rss = 0.0, 0.0, 0.0
    for row in rows:
        p50, p99, top = row["window"]
        ratio = p99 / steady[1]
        worst_ratio = max(worst_ratio, ratio)
        worst_visible = max(worst_visible, row["visible_s"] if row["visible_s"] is not None else float("inf"))
        rss = ", ".join(f"{b:.0f} -> {a:.0f}" for b, a in row["rss"])
        worst_rss = max([worst_rss] + [abs(a - b) / b for b, a in row["rss"]])
        visible = f"{row['visible_s']:.2f}" if row["visible_s"] is not None else "never"
        print(f"{row['n']:>3} {row['write_s']:8.2f} {row['writing'][1]:9.1f} {visible:>9} {p50:8.1f} {p99:8.1f} {top:7.1f} "
              f"{ratio:6.2f}  {rss}")
    print("\ngoals:")
    print(f"  non-2xx: {failures} (goal 0) {'PASS' if failures == 0 else 'FAIL'}")
    print(f"  swap p99 <= 2x steady p99: worst {worst_ratio:.2f}x {'PASS' if worst_ratio <= 2 else 'FAIL'}")
    print(f"  new product visible on every worker <= 10 s: worst {worst_visible:.2f} s "
          f"{'PASS' if worst_visible <= 10 else 'FAIL'}")
    print(f"  RSS back within 10 %: worst change {worst_rss * 100:.1f} % {'PASS' if worst_rss <= 0.10 else 'FAIL'}")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
