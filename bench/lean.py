"""Lean serving: the search service on torch (today's path) against ONNX Runtime, in one run.

    python bench/lean.py [--products 34] [--queries 300] [--rounds 2] [--export DIR]

Builds ViT-B-32 with random weights (the real cost), exports its text tower (search.export; or
reuses `--export DIR`), writes a synthetic index with that identity, then for each text encoder
(torch as configured today, onnx fp32, onnx int8):
- starts the service under gunicorn as shipped (docker/gunicorn.conf.py: 2 workers x 2 threads,
  worker recycling on, TORCH_THREADS=1) and times cold start to every worker ready;
- sends unique queries one at a time through HTTP (every one misses the query cache): p50/p95;
- reads each worker's RSS and PSS (/proc/<pid>/smaps_rollup) and whether libtorch is mapped;
- times the encoder alone in this process (tokenize + encode), the model-only baseline.
Modes run in turn, `--rounds` times, so a noisy neighbour hits them alike; the table shows the
median over rounds and the ratio to torch. Traffic goes only to 127.0.0.1.
The image size is measured by scripts/container-smoke.sh (podman image ls).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np

MODES = {  # name -> environment of the service
    "torch (today)": {"SEARCH_TEXT_ENCODER": "torch"},
    "onnx fp32": {"SEARCH_TEXT_ENCODER": "onnx"},
    "onnx int8": {"SEARCH_TEXT_ENCODER": "onnx", "CLIP_TEXT_PRECISION": "int8"},
}
COLOURS = ["black", "white", "red", "navy", "green", "pastel", "floral", "striped", "mustard", "olive"]
GARMENTS = ["tunic", "shirt", "dress", "skirt", "trousers", "jacket", "coat", "blouse", "hoodie", "abaya"]


def queries(count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"{rng.choice(COLOURS)} {rng.choice(GARMENTS)} with {rng.choice(COLOURS)} trim, style {seed}-{i}"
            for i in range(count)]


def encoder_alone(mode: dict, export: Path, texts: list[str], threads: int) -> float:
    """p50 ms of tokenize + encode of one uncached query, in this process, one thread."""
    from search.config import ClipSettings
    from search.text_encoder import open_text_encoder

    settings = ClipSettings(model="ViT-B-32", pretrained="", threads=threads,
                            text_precision=mode.get("CLIP_TEXT_PRECISION", "auto"))
    encoder = open_text_encoder(settings, mode["SEARCH_TEXT_ENCODER"], export)
    for text in texts[:10]:
        encoder.encode_query_tokens(encoder.query_tokens(text))
    times = []
    for text in texts:
        started = time.perf_counter()
        encoder.encode_query_tokens(encoder.query_tokens(text))
        times.append(time.perf_counter() - started)
    return float(np.percentile(times, 50) * 1000)


def serve(mode: dict, index_dir: Path, catalog: Path, texts: list[str], threads: int) -> dict:
    from bench.scale import serve_and_measure

    env = {**mode, "SEARCH_INDEX_DIR": str(index_dir), "SEARCH_CATALOG_DIR": str(catalog), "TORCH_THREADS": str(threads)}
    return serve_and_measure("search:create_app()", env, texts, next(index_dir.glob("gen-*")), clients=2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=34,
                        help="synthetic index size; default: the sample catalog's, which the shipped image serves")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="encoder threads per worker (TORCH_THREADS; 1 ships)")
    parser.add_argument("--export", help="a text-encoder folder of ViT-B-32 random weights (seed 0) to reuse")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, of: " + ", ".join(MODES))
    args = parser.parse_args()
    modes = {name: MODES[name] for name in args.modes.split(",")}

    from bench.memory import add_text_encoder, write_synthetic_index
    from search.config import ClipSettings
    from search.embedder import ClipEmbedder
    from search.indexing.export import summary
    from search.text_encoder import read_export_meta

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        embedder = ClipEmbedder(ClipSettings(model="ViT-B-32", pretrained=""), text_only=True)
        identity = embedder.identity
        catalog, index_dir, images, _ = write_synthetic_index(tmp, args.products, 3, identity, len(identity["probe"]))
        export = add_text_encoder(index_dir, embedder, args.export)
        del embedder
        print("\n".join("  " + line for line in summary(export, read_export_meta(export))))
        print(f"synthetic index: {args.products:,} products, {images:,} images\n")

        results: dict[str, list[dict]] = {name: [] for name in modes}
        for round_no in range(args.rounds):
            for n, (name, mode) in enumerate(modes.items()):
                texts = queries(args.queries, seed=100 * round_no + n)
                alone = encoder_alone(mode, export, texts, args.threads)
                figures = serve(mode, index_dir, catalog, texts, args.threads)
                figures["alone_ms"] = alone
                results[name].append(figures)
                workers = figures["workers"]
                rss = "/".join(f"{w['rss']:.0f}" for w in workers)
                pss = "/".join(f"{w['pss']:.0f}" for w in workers)
                libtorch = "yes" if any(w["libtorch"] for w in workers) else "no"
                print(f"round {round_no + 1} {name:14s} ready {figures['ready_s']:5.1f} s  HTTP p50 "
                      f"{figures['p50_ms']:6.2f} ms  p95 {figures['p95_ms']:6.2f} ms  cached {figures['cached_p50_ms']:5.2f} ms  "
                      f"encoder alone {alone:6.2f} ms  "
                      f"RSS {rss} MB  PSS {pss} MB  libtorch mapped: {libtorch}  [{figures['load']}]")

        def med(name, key):
            return statistics.median(r[key] for r in results[name])

        def med_workers(name, key):  # the busiest worker's, as a worker holds once it has served
            return statistics.median(max(w[key] for w in r["workers"]) for r in results[name])

        base = next(iter(modes))
        print(f"\n{args.threads} encoder thread(s) per worker; median of {args.rounds} rounds; ratio = this / {base}; "
              "cached = one query repeated (HTTP, Flask and scoring: the floor without encoding)")
        print("| encoder | HTTP p50 | ratio | HTTP p95 | cached p50 | encoder alone p50 | RSS/worker (max) | PSS/worker (max) | ratio | cold start |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for name in modes:
            print(f"| {name} | {med(name, 'p50_ms'):.2f} ms | {med(name, 'p50_ms') / med(base, 'p50_ms'):.2f} | "
                  f"{med(name, 'p95_ms'):.2f} ms | {med(name, 'cached_p50_ms'):.2f} ms | {med(name, 'alone_ms'):.2f} ms | {med_workers(name, 'rss'):.0f} MB | "
                  f"{med_workers(name, 'pss'):.0f} MB | {med_workers(name, 'pss') / med_workers(base, 'pss'):.2f} | "
                  f"{med(name, 'ready_s'):.1f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
