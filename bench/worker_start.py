"""How long a search worker takes to start on a large index, with the start-up check as shipped.

    python bench/worker_start.py [--products 1000000] [--root /tmp/worker-start] [--keep] [--export DIR]

Writes a synthetic index of --products products x 5 images (bench/scale.py's clip-like vectors, in
the service's format) and a catalog of symlinks (one per image, as bench/scale.py), then starts
the app factory (`search.create_app()`, what each gunicorn worker runs) in fresh processes and
reports the ready time (the worker's own `load_s`) and its index part, stage by stage:

    index    Index.load: maps the arrays, checks the product rows for NaN/inf, the BM25 index
    catalog  the catalog folder and SEARCH_STARTUP_IMAGE_SAMPLE images (256) spread over it
    first    one query over the new arrays (pages them in), as the worker does before it is ready

and, for comparison, the check a worker did before (a stat of every image of the index). Runs with
a warm page cache (the index was just written or read), as a recycled worker finds it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

STAGES = r"""
import json, sys, time
from pathlib import Path
from search.config import SearchConfig
from search.index_format import Index
from search.live import check_catalog
from search.vectors import open_store
config = SearchConfig.from_env()
t = {}
s = time.perf_counter(); index = Index.load(config.index_dir); t["index"] = time.perf_counter() - s
s = time.perf_counter(); catalog = check_catalog(index, config.catalog_dir, config.startup_image_sample); t["catalog"] = time.perf_counter() - s
import numpy as np
store = open_store(config.vectors, index)
q = np.ones(index.product_embeddings.shape[1], np.float32); q /= np.linalg.norm(q)
s = time.perf_counter(); store.top(q, 10); t["first"] = time.perf_counter() - s
if "--full" in sys.argv:
    s = time.perf_counter(); checked, missing, _ = index.missing_images(catalog); t["full_check"] = time.perf_counter() - s
    t["full_checked"] = checked
print(json.dumps(t))
"""

APP = r"""
import json, time
s = time.perf_counter()
from search import create_app
app = create_app()
r = app.extensions["readiness"]
print(json.dumps({"ready": r.ready, "error": r.error, "seconds": time.perf_counter() - s}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=1_000_000)
    parser.add_argument("--root", type=Path, default=Path("/tmp/worker-start"))
    parser.add_argument("--keep", action="store_true", help="keep the index and catalog for the next run")
    parser.add_argument("--export", help="a ViT-B-32 (random, seed 0) text-encoder export: the ONNX encoder as shipped")
    parser.add_argument("--starts", type=int, default=3, help="fresh worker processes timed")
    args = parser.parse_args()

    from bench.scale import ClipLike, identity_of, write_catalog, write_generated_index
    from search.index_format import Index

    folder = args.root / f"{args.products}"
    index_dir, catalog = folder / "index", folder / "catalog"
    if not (index_dir / "meta.json").is_file():
        started = time.perf_counter()
        folder.mkdir(parents=True, exist_ok=True)
        identity = identity_of(folder, REPO / "no-sample-index")
        write_generated_index(index_dir, ClipLike(), args.products, identity, catalog)
        print(f"index written in {time.perf_counter() - started:.0f} s")
    if not catalog.is_dir():
        print(f"catalog of symlinks: {write_catalog(catalog, Index.load(index_dir)):.0f} s")
    env = {**os.environ, "PYTHONPATH": str(REPO), "CLIP_MODEL": "ViT-B-32", "CLIP_PRETRAINED": "",
           "SEARCH_INDEX_DIR": str(index_dir), "SEARCH_CATALOG_DIR": str(catalog), "SEARCH_IMAGE_QUERIES": "0",
           "SEARCH_INDEX_POLL_S": "0", "TORCH_THREADS": "1"}
    if args.export:
        from search.text_encoder import EXPORT_DIRNAME

        if not (index_dir / EXPORT_DIRNAME).exists():
            shutil.copytree(args.export, index_dir / EXPORT_DIRNAME)
        env["SEARCH_TEXT_ENCODER"] = "onnx"
    meta = json.loads((index_dir / "meta.json").read_text())
    print(f"{meta['products']:,} products, {meta['images']:,} images; text encoder "
          f"{'onnx' if args.export else 'torch'}; load average {os.getloadavg()[0]:.1f}")

    def run(code: str, *extra: str) -> dict:
        out = subprocess.run([sys.executable, "-c", code, *extra], env=env, capture_output=True, text=True,
                             cwd=REPO, timeout=1800)
        if out.returncode:
            raise RuntimeError(out.stderr[-2000:])
        return json.loads(out.stdout.strip().splitlines()[-1])

    stages = [run(STAGES, "--full") if i == 0 else run(STAGES) for i in range(args.starts)]
    apps = [run(APP) for _ in range(args.starts)]
    for app in apps:
        if not app["ready"]:
            print(f"worker not ready: {app['error']}")
            return 1
    median = lambda values: sorted(values)[len(values) // 2]  # noqa: E731
    print(f"\nworker start (create_app, ready), median of {args.starts}: {median([a['seconds'] for a in apps]):.2f} s")
    print("its index part, median:")
    for key in ("index", "catalog", "first"):
        print(f"  {key:8} {median([s[key] for s in stages]):7.3f} s")
    full = stages[0]
    print(f"the check before (a stat of each of {full['full_checked']:,} images): {full['full_check']:.1f} s, "
          f"{full['full_check'] / max(full['catalog'], 1e-6):,.0f}x the sampled check")
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
