"""Indexing throughput: images/s of `search.index build` with 1 and N worker processes, against
the models alone, in one run.

    python bench/index_throughput.py --weights DIR [--images 24] [--workers 1,2] [--ray-workers 2]

DIR is a U2NET_HOME with the bg models (`../shared/tools/real-cost-models/make_models.py --out DIR`
writes U^2-Net models of rembg's exact shapes: the real cost per image). Without --weights the
tiny oracle models are used, and then the figures show the pipeline's own overhead, not model time.
Catalog: the first --images photos of ../shared/data/catalog (symlinked), one folder per product.

- models alone: in this process, photos decoded beforehand, then garment step + CLIP image
  embedding in batches as the build does: the images/s the models allow on one core
  (ORT_THREADS=1, TORCH_THREADS=1, as each build worker runs).
- build --workers N, and build --ray --workers N (a local Ray with N actors): the real command in
  a fresh process, end to end (scan, sha256, decode, models, pooling, duplicate report, write).
  images/s = embedded images / build_index's seconds (worker or actor start-up and model
  loading included; Ray's own start-up too).
- models alone, N processes at once: the same, N processes side by side on their shares of the
  photos: how far this machine itself scales N model sets.
Goal: >= 0.8 of the models-alone throughput per worker, and linear in workers.
The run also checks that every worker count wrote the same embeddings as --workers 1.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

CATALOG = REPO.parent / "shared" / "data" / "catalog"


def small_catalog(root: Path, count: int) -> Path:
    """The first `count` photos of the sample catalog, as symlinks in product folders."""
    out = root / "catalog"
    photos = sorted(p for p in CATALOG.glob("*/*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    for photo in photos[:count]:
        (out / photo.parent.name).mkdir(parents=True, exist_ok=True)
        os.symlink(photo, out / photo.parent.name / photo.name)
    return out


def models_alone(catalog: Path, env: dict, batch_size: int, share: tuple[int, int] = (0, 1), start=None,
                 results=None) -> tuple[float, int]:
    """images/s of garment step + CLIP on pre-decoded photos (every share[1]-th from share[0]),
    in this process; `start` (a barrier) lines up concurrent runs once their models are loaded."""
    os.environ.update(env)
    from search.config import ClipSettings
    from search.indexing.catalog import scan_catalog
    from search.indexing.embedding import BuildModels
    from shared.errors import Unprocessable
    from shared.images import decode_image

    embedder, garments = BuildModels(ClipSettings.from_env()).load()
    images, _ = scan_catalog(catalog)
    images = images[share[0]::share[1]]
    decoded = [decode_image((catalog / im.product / im.file).read_bytes(), max_side=garments.working_max_side)
               for im in images]
    garments.garment(decoded[0])  # first run of each session allocates
    if start is not None:
        start.wait()
    started = time.perf_counter()
    pictures = []
    for photo in decoded:
        try:
            pictures.append(garments.garment(photo).picture)
        except Unprocessable:
            pass
    for first in range(0, len(pictures), batch_size):
        embedder.encode_images(pictures[first:first + batch_size])
    seconds = time.perf_counter() - started
    if results is not None:
        results.put((len(pictures), seconds))
    return len(pictures) / seconds, len(pictures)


def models_alone_at_once(catalog: Path, env: dict, batch_size: int, processes: int) -> float:
    """images/s of `processes` models-alone runs at the same time, each on its share of the photos:
    what this machine gives N model sets, without any pipeline around them."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(processes), context.Queue()
    runs = [context.Process(target=models_alone, args=(catalog, env, batch_size, (i, processes), start, results))
            for i in range(processes)]
    for run in runs:
        run.start()
    done = [results.get() for _ in runs]
    for run in runs:
        run.join()
    return sum(count for count, _ in done) / max(seconds for _, seconds in done)


def build(catalog: Path, out: Path, env: dict, workers: int, batch_size: int, ray: bool = False) -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "search.index", "build", "--catalog", str(catalog), "--out", str(out),
                           "--workers", str(workers), "--batch-size", str(batch_size), *(["--ray"] if ray else [])],
                          cwd=REPO, env={**os.environ, **env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          check=False)
    wall = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    found = re.search(r"\((\d+) embedded, \d+ reused\) in ([\d.]+) s", done.stdout)
    embedded, seconds = int(found.group(1)), float(found.group(2))
    return {"embedded": embedded, "seconds": seconds, "wall": wall, "rate": embedded / seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", help="U2NET_HOME with the bg models (default: tiny oracle models)")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--ray-workers", type=int, default=2, help="actors of the local-Ray build (0: skip it)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--clip-model", default="ViT-B-32")
    args = parser.parse_args()
    if not CATALOG.is_dir():
        print(f"skipped: {CATALOG} is absent")
        return 0
    from search.index_format import Index

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = args.weights
        if not weights:
            from tests.oracle_models import write_oracle_models

            weights = str(tmp / "oracle")
            write_oracle_models(weights)
        env = {"U2NET_HOME": weights, "MODEL_CHECKSUM_DISABLED": "1", "CLIP_MODEL": args.clip_model,
               "CLIP_PRETRAINED": "", "ORT_THREADS": "1", "TORCH_THREADS": "1", "BG_ALLOW_DOWNLOAD": "0"}
        catalog = small_catalog(tmp, args.images)
        print(f"{args.images} photos, bg models from {weights}, CLIP {args.clip_model} (random weights), "
              f"batch {args.batch_size}, {os.cpu_count()} cores, 1 thread per model per process")
        alone, usable = models_alone(catalog, env, args.batch_size)
        print(f"models alone (1 process, decoded beforehand): {alone:.2f} images/s over {usable} images")
        first = None
        print("| mode | images/s | vs models alone x workers | wall incl. start | same index as --workers 1 |")
        print("|---|---|---|---|---|")
        print(f"| models alone | {alone:.2f} | 1 | - | - |")
        most = max([int(w) for w in args.workers.split(",")] + [args.ray_workers])
        if most > 1:
            together = models_alone_at_once(catalog, env, args.batch_size, most)
            print(f"| models alone, {most} processes at once | {together:.2f} | {together / (alone * most):.2f} | - | - |")
        modes = [(f"build --workers {w}", int(w), False) for w in args.workers.split(",")]
        if args.ray_workers:
            modes.append((f"build --ray --workers {args.ray_workers} (local Ray)", args.ray_workers, True))
        for name, workers, ray in modes:
            out = tmp / f"index-{len(name)}-{workers}"
            r = build(catalog, out, env, workers, args.batch_size, ray)
            vectors = np.asarray(Index.load(out).image_embeddings)
            if first is None:
                first, same = vectors, "-"
            else:
                same = f"max diff {np.abs(vectors - first).max():.1e}" if vectors.shape == first.shape else "NO (shape)"
            print(f"| {name} | {r['rate']:.2f} | {r['rate'] / (alone * workers):.2f} | {r['wall']:.0f} s | {same} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
