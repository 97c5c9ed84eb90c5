"""Search latency and index build throughput with the real CLIP architecture (random weights:
same cost as trained ones), against the naive design measured in the same run.

    python bench/search_latency.py [--catalog ../shared/data/catalog] [--model ViT-B-32] [--queries 200]

Prints:
  index build throughput (images/s): bg removal (oracle ONNX models: real 320/768/1024 inputs)
      + CLIP image tower, and the CLIP part alone
  p50/p95 per uncached query through the Flask app (POST /, warm), and the text encoder alone
      with the truncated and the full 77-token path
  the naive design (encode every catalog image at query time) p50, and the speed-up ratio
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", type=Path, default=REPO.parent / "shared" / "data" / "catalog")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--queries", type=int, default=200, help="uncached queries through the app")
    parser.add_argument("--naive-queries", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not args.catalog.is_dir():
        print(f"skipped: {args.catalog} is absent (needs ../shared/data beside the repo)")
        return 0

    import numpy as np
    import torch

    from bgremoval.config import BgConfig
    from bgremoval.models import load_models
    from bgremoval.pipeline import GarmentPipeline
    from search import create_app
    from search.config import ClipSettings, SearchConfig
    from search.embedder import ClipEmbedder
    from search.garments import LocalGarments
    from search.indexing.builder import build_index
    from search.indexing.catalog import scan_catalog
    from tests.oracle_models import write_oracle_models

    settings = ClipSettings(model=args.model, pretrained="", threads=args.threads)
    embedder = ClipEmbedder(settings)
    print(f"model {args.model} (random weights, real cost), torch threads {torch.get_num_threads()}")

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "u2net"
        write_oracle_models(str(weights))
        os.environ["U2NET_HOME"] = str(weights)
        garments = LocalGarments(GarmentPipeline(load_models(BgConfig(ort_threads=args.threads))))
        index_dir = Path(tmp) / "index"
        report = build_index(args.catalog, index_dir, embedder, garments, progress=False)
        images = report.embedded
        print(f"index build: {images} images in {report.seconds:.1f} s = {images / report.seconds:.2f} images/s "
              "(decode + bg removal + CLIP)")

        from PIL import Image

        catalog_images, _ = scan_catalog(args.catalog)
        pictures = [Image.open(args.catalog / im.product / im.file).convert("RGB") for im in catalog_images]
        start = time.perf_counter()
        for i in range(0, len(pictures), 16):
            embedder.encode_images(pictures[i:i + 16])
        clip_only = time.perf_counter() - start
        print(f"CLIP image tower alone: {len(pictures) / clip_only:.2f} images/s")

        # Text encoder alone: served path (truncated, bf16 where native) vs truncated fp32 vs full.
        texts = [f"pastel coloured tunic number {i}" for i in range(50)]
        paths = {
            f"served ({embedder.text_precision}, truncated)": lambda t: embedder.encode_texts([t]),
            "fp32 truncated": lambda t: embedder.encode_texts([t], tower=embedder.fp32_text),
            "fp32 full 77 tokens": lambda t: embedder.encode_texts_full([t]),
        }
        timings = {}
        for name, encode in paths.items():
            for text in texts[:5]:
                encode(text)
            runs = []
            for text in texts:
                t = time.perf_counter(); encode(text); runs.append(time.perf_counter() - t)
            timings[name] = statistics.median(runs)
        full = embedder.encode_texts_full(texts)
        diff = float(np.abs(embedder.encode_texts(texts, tower=embedder.fp32_text) - full).max())
        cosine = float((embedder.encode_texts(texts) * full).sum(axis=1).min())
        print("text encoder p50: " + ", ".join(f"{k} {v * 1000:.2f} ms" for k, v in timings.items()))
        print(f"  fp32 truncated vs full: max abs diff {diff:.2e}; served vs full: min cosine {cosine:.6f}")

        # Through the Flask app, every query new (cache never hits).
        app = create_app(SearchConfig(clip=settings, index_dir=str(index_dir), query_cache_size=0),
                         embedder=embedder)
        client = app.test_client()
        words = ["pastel", "coloured", "tunic", "floral", "black", "shirt", "crew", "neck", "cotton", "blue",
                 "long", "sleeve", "printed", "maroon", "dress", "collar"]
        rng = np.random.default_rng(0)
        queries = [" ".join(rng.choice(words, size=rng.integers(2, 6))) + f" {i}" for i in range(args.queries + 20)]
        for q in queries[:20]:
            client.post("/", json={"text": q, "n": 5})
        latencies = []
        for q in queries[20:]:
            t = time.perf_counter()
            response = client.post("/", json={"text": q, "n": 5})
            latencies.append(time.perf_counter() - t)
            assert response.status_code == 200
        p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
        print(f"search through Flask, uncached: p50 {p50 * 1000:.2f} ms, p95 {p95 * 1000:.2f} ms "
              f"over {len(latencies)} queries")

        # Naive design: embed every catalog image for each query, then rank.
        naive = []
        for q in queries[:args.naive_queries]:
            t = time.perf_counter()
            vectors = np.concatenate([embedder.encode_images(pictures[i:i + 16]) for i in range(0, len(pictures), 16)])
            scores = vectors @ embedder.encode_texts_full([q])[0]
            np.argsort(-scores)[:5]
            naive.append(time.perf_counter() - t)
        naive_p50 = statistics.median(naive)
        print(f"naive (encode {len(pictures)} images per query): p50 {naive_p50 * 1000:.0f} ms "
              f"over {len(naive)} queries")
        print(f"RATIO naive p50 / indexed p50 = {naive_p50 / p50:.0f}x  (target >= 300x; p50 target <= 15 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
