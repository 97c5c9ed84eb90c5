"""Memory per search worker on a large synthetic index: RSS and PSS, and what the index costs.

    python bench/memory.py [--products 100000] [--images-per-product 3] [--workers 2] [--queries 400]

Writes a synthetic index (random clustered unit vectors, product names made of fashion words,
every image a symlink to one small JPEG so the catalog check passes), starts the search service
under gunicorn with the shipped config (workers recycled as shipped) and ViT-B-32 with random
weights (real size; queries encoded by its ONNX export as in the shipped image, or
`--text-encoder torch`), sends queries so the workers touch every index page, then reads
/proc/<pid>/smaps_rollup of each worker. PSS divides shared pages by the processes that map them:
the memory-mapped index counts once for all workers, not once per worker.
Traffic goes only to 127.0.0.1.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import requests  # noqa: E402

from bench.load import start, worker_pids  # noqa: E402

WORDS = ["black", "white", "red", "navy", "green", "pastel", "floral", "striped", "linen", "cotton",
         "satin", "denim", "oversized", "slim", "long", "short", "sleeve", "collar", "tunic", "shirt",
         "dress", "skirt", "trousers", "jacket", "coat", "blouse", "hoodie", "cardigan", "jumpsuit", "vest"]


def smaps_rollup(pid: int) -> dict[str, float]:
    """MB per field of /proc/<pid>/smaps_rollup (Rss, Pss, Shared_Clean, Private_Dirty...)."""
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                values[parts[0].rstrip(":")] = int(parts[1]) / 1024
    return values


def mapped_file_mb(pid: int, folder: str) -> tuple[float, float]:
    """RSS and PSS (MB) of the mappings of files under `folder` in that process."""
    rss = pss = 0.0
    inside = False
    with open(f"/proc/{pid}/smaps") as fh:
        for line in fh:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                inside = len(head) >= 6 and head[5].startswith(folder)
            elif inside and head[0] == "Rss:":
                rss += int(head[1]) / 1024
            elif inside and head[0] == "Pss:":
                pss += int(head[1]) / 1024
    return rss, pss


def write_synthetic_index(root: Path, products: int, per_product: int, identity: dict, dim: int, seed: int = 0):
    from PIL import Image

    from search.index_format import IndexArrays, write_index

    rng = np.random.default_rng(seed)
    catalog, out = root / "catalog", root / "index"
    photo = root / "photo.jpg"
    Image.new("RGB", (64, 64), (120, 40, 40)).save(photo)
    names = sorted(f"{i:06d}-{'-'.join(rng.choice(WORDS, 4))}-shop-{i}" for i in range(products))
    counts = rng.integers(1, 2 * per_product, size=products)  # mean = per_product
    started = time.perf_counter()
    for name, count in zip(names, counts, strict=True):
        (catalog / name).mkdir(parents=True)
        for j in range(count):
            os.symlink(photo, catalog / name / f"{j}.jpg")
    files_s = time.perf_counter() - started
    centres = rng.standard_normal((512, dim)).astype(np.float32)
    images = centres[rng.integers(0, len(centres), counts.sum())] + 0.5 * rng.standard_normal(
        (counts.sum(), dim)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pooled = np.maximum.reduceat(images, starts)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    content = IndexArrays(image_embeddings=images, product_embeddings=pooled, counts=counts.tolist(),
                          product_names=names, image_files=[f"{j}.jpg" for c in counts for j in range(c)],
                          image_sha256=["00" * 32] * int(counts.sum()), image_sources=["garment"] * int(counts.sum()),
                          thumbs=np.zeros((int(counts.sum()), 256), np.float32))
    write_index(out, content, {"embedder": identity, "garment_pipeline": {}, "embed_dim": dim, "pooling": "max",
                               "catalog_dir": str(catalog), "catalog_fingerprint": "synthetic",
                               "built_at": "synthetic", "skipped": []})
    return catalog, out, int(counts.sum()), files_s


def add_text_encoder(index_dir: Path, embedder, reuse: str | None = None) -> Path:
    """Give a synthetic index the ONNX text encoder the shipped image serves with (search.export),
    or copy `reuse`, an export of the same weights."""
    import shutil

    from search.indexing.export import export_text_encoder
    from search.text_encoder import EXPORT_DIRNAME

    export = index_dir / EXPORT_DIRNAME
    if reuse:
        shutil.copytree(reuse, export)
    else:
        started = time.perf_counter()
        export_text_encoder(embedder, export)
        print(f"export of {embedder.model_name}'s text tower: {time.perf_counter() - started:.0f} s")
    return export


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--images-per-product", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--text-encoder", choices=("onnx", "torch"), default="onnx",
                        help="onnx: as the shipped image serves (exports the text tower first)")
    parser.add_argument("--export", help="reuse this text-encoder export (of --model, random weights, seed 0)")
    args = parser.parse_args()

    from search.config import ClipSettings
    from search.embedder import ClipEmbedder

    embedder = ClipEmbedder(ClipSettings(model=args.model, pretrained=""), text_only=True)
    identity = embedder.identity
    with tempfile.TemporaryDirectory() as tmp:
        catalog, index_dir, images, files_s = write_synthetic_index(
            Path(tmp), args.products, args.images_per_product, identity, len(identity["probe"]))
        if args.text_encoder == "onnx":
            add_text_encoder(index_dir, embedder, args.export)
        del embedder
        generation = next(index_dir.glob("gen-*"))
        sizes = {p.name: p.stat().st_size / 2**20 for p in generation.glob("*.npy")}
        serving = sum(v for k, v in sizes.items() if not k.startswith(("thumbs", "image_sha256", "image_sources")))
        print(f"synthetic index: {args.products:,} products, {images:,} images, serving arrays {serving:.0f} MB "
              f"(image_embeddings {sizes['image_embeddings.npy']:.0f} MB, product_embeddings "
              f"{sizes['product_embeddings.npy']:.0f} MB); catalog of symlinks written in {files_s:.0f} s")
        env = {"CLIP_MODEL": args.model, "CLIP_PRETRAINED": "", "SEARCH_INDEX_DIR": str(index_dir),
               "SEARCH_CATALOG_DIR": str(catalog), "TORCH_THREADS": "1", "GUNICORN_LOG_LEVEL": "warning",
               "SEARCH_TEXT_ENCODER": args.text_encoder}
        started = time.perf_counter()
        proc, base = start("search:create_app()", env, args.workers, args.threads)
        print(f"ready in {time.perf_counter() - started:.1f} s (every worker loads and checks the catalog)")
        try:
            latencies, words = [], np.random.default_rng(1).choice(WORDS, (args.queries, 3))
            session = threading.local()  # one keep-alive connection per client thread

            def query(i: int) -> None:
                session.http = getattr(session, "http", None) or requests.Session()
                t = time.perf_counter()
                response = session.http.post(base + "/", json={"text": " ".join(words[i]) + f" {i}", "n": 10},
                                             timeout=60)
                latencies.append(time.perf_counter() - t)
                assert response.status_code == 200, response.text

            with ThreadPoolExecutor(args.clients) as pool:  # several clients: every worker serves
                list(pool.map(query, range(args.queries)))
            print(f"{args.queries} uncached queries, p50 {np.percentile(latencies, 50) * 1000:.1f} ms, "
                  f"p95 {np.percentile(latencies, 95) * 1000:.1f} ms")
            print(f"{'worker':>8} {'RSS MB':>8} {'PSS MB':>8} {'shared MB':>9} {'private MB':>10} "
                  f"{'anon MB':>8} {'index RSS':>9} {'index PSS':>9}")
            for pid in worker_pids(proc.pid):
                m = smaps_rollup(pid)
                index_rss, index_pss = mapped_file_mb(pid, str(generation))
                shared = m.get("Shared_Clean", 0) + m.get("Shared_Dirty", 0)
                private = m.get("Private_Clean", 0) + m.get("Private_Dirty", 0)
                print(f"{pid:>8} {m['Rss']:8.0f} {m['Pss']:8.0f} {shared:9.0f} {private:10.0f} "
                      f"{m.get('Anonymous', 0):8.0f} {index_rss:9.0f} {index_pss:9.0f}")
        finally:
            proc.terminate()
            proc.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
