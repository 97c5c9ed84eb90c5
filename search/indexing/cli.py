"""The product index: build it offline from a catalog folder; `search.index_format` loads it for serving.

    python -m search.index build --catalog CATALOG_DIR --out INDEX_DIR [--update] [--pooling max] [--ann hnsw]
    python -m search.index build --feed FEED.jsonl|FEED.csv --out INDEX_DIR [--schema S.json] [--max-bad-rows N]
    python -m search.index info --index INDEX_DIR
    python -m search.index verify --index INDEX_DIR [--decode]   # every image and vector, offline
    python -m search.index ann --index INDEX_DIR --ann hnsw        # FAISS index for SEARCH_BACKEND=faiss
    python -m search.index publish --index INDEX_DIR --milvus URI  # vectors to Milvus (SEARCH_BACKEND=milvus)

Writers (build, ann, publish, and `python -m search.export`) hold the index folder's writer lock for
the whole command: a second one says which command holds it and waits; with --no-wait it exits
with status 2 instead (docs/index-writers.md).

Catalog: one folder per product (folder name = product name), any number of images inside. Or a
shop's feed (search/indexing/feed.py): one row per product with an id, a name, image URLs or paths,
optional description/category/brand/url, and attributes (filterable; results can carry them);
its URL images are downloaded with the service's SSRF-safe fetcher into --image-cache.
Every image goes through the background-removal pipeline (in-process, or the service at
--bg-url) keeping only the product's garment (its classes chosen from its name by
shared/garment_vocabulary.json; all garments where those find none), is cropped to it and
embedded with open_clip; a product's vector pools its images'. The files are described in
`search/index_format.py`; the code of each step is in search/indexing/ (this is its command line).

--update re-embeds only what changed: new or changed image bytes, images whose mask depends
on a bg-pipeline setting or model that changed (the index records the pipeline's identity), and
the products whose garment classes changed (a vocabulary change).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from search.config import SearchConfig
from search.garments import GarmentServiceError
from search.index_format import POOLINGS, GenerationChanged, Index, IndexLoadError
from search.index_guard import WriterBusy, writer_lock
from search.indexing.ann import ANN_KINDS, build_ann
from search.indexing.builder import build_index
from search.indexing.embedding import BuildModels, WorkerModelsError
from search.indexing.feed import FeedError
from search.indexing.feed_catalog import describe_types, load_feed_catalog
from search.indexing.remote_images import ImageFetchError
from search.lexical import LANGUAGES
from search.indexing.ray_build import RayBuildError
from search.indexing.publish import PublishError, key_value, publish, register
from search.indexing.verify import register as register_verify
from search.indexing.report import garment_summary, garment_summary_line, print_report
from search.text_encoder import EXPORT_DIRNAME, EXPORT_META
from shared.garment_vocabulary import Vocabulary
from shared.settings import exit_on_bad_settings

NO_WAIT_HELP = "when another writer holds the index folder, exit with status 2 instead of waiting for it"


def main(argv: list[str] | None = None) -> int:
    settings = exit_on_bad_settings(SearchConfig.from_env)  # a bad variable stops here, named
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="embed a catalog folder or a shop's feed into an index")
    source = build.add_mutually_exclusive_group(required=True)
    source.add_argument("--catalog", type=Path, help="a folder per product (folder name = product name = id)")
    source.add_argument("--feed", type=Path, help="a shop's feed: JSON Lines or CSV (see search/indexing/feed.py)")
    build.add_argument("--out", type=Path, required=True)
    build.add_argument("--schema", type=Path, help="--feed: the attribute types, JSON {\"price\": \"number\", ...} "
                                                   "(else inferred and printed)")
    build.add_argument("--max-bad-rows", type=int, default=0,
                       help="--feed: bad rows allowed (each skipped and listed); more stop the build (default 0)")
    build.add_argument("--fetch-workers", type=int, default=8, help="--feed: concurrent image downloads")
    build.add_argument("--fetch-retries", type=int, default=5,
                       help="--feed: retries per image for 429/5xx/timeouts (exponential backoff), then the build stops")
    build.add_argument("--allow-host", action="append", default=[], metavar="HOST",
                       help="--feed: an image host exempt from the public-address check (a private CDN); "
                            "adds to FETCH_ALLOW_HOSTS")
    build.add_argument("--image-cache", type=Path, default=None,
                       help="--feed: where downloaded images are kept, keyed by URL with their ETag/Last-Modified, "
                            "so --update downloads only what changed (default: OUT/image-cache)")
    build.add_argument("--language", choices=LANGUAGES, default="english",
                       help="the products' text language, for BM25's stemming (default english)")
    build.add_argument("--pooling", choices=POOLINGS, default="max")
    build.add_argument("--batch-size", type=int, default=None,
                       help="images per CLIP call (default 16 on the CPU, 256 with DEVICE=cuda)")
    build.add_argument("--update", action="store_true", help="re-embed only new or changed images")
    build.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                       help="run the garment and embedding steps as a Ray Data job: on a local Ray (no ADDRESS) "
                            "or a cluster (e.g. ray://head:10001 or auto); see search/indexing/ray_build.py")
    build.add_argument("--publish", metavar="MILVUS_URI",
                       help="then upsert the new index into Milvus (as `search.index publish --milvus URI`; "
                            "MILVUS_TOKEN / MILVUS_COLLECTION from the environment)")
    build.add_argument("--workers", type=int, default=1,
                       help="processes, each with its own models (CPU: one per core, with ORT_THREADS and "
                            "TORCH_THREADS at 1); 0 = one per core. The index is the same as with 1")
    build.add_argument("--decode-workers", type=int, default=None,
                       help="processes decoding photos ahead of the models (default: 0 on the CPU, where the models "
                            "use every core; up to 8 with DEVICE=cuda, so the GPU never waits)")
    build.add_argument("--dup-threshold", type=float, default=0.97, help="embedding cosine for the duplicate report")
    build.add_argument("--vocabulary", type=Path, default=settings.vocabulary_path,
                       help="the product-text -> garment classes file (default: GARMENT_VOCABULARY, else the one "
                            "shipped in shared/garment_vocabulary.json)")
    build.add_argument("--bg-url", default=settings.bg_service_url,
                       help="use a running bg-removal service instead of the in-process pipeline")
    build.add_argument("--bg-retries", type=int, default=5,
                       help="retries per image for 429/5xx/timeouts/refused connections (exponential backoff)")
    build.add_argument("--bg-timeout", type=float, default=60.0, help="seconds per request to --bg-url")
    build.add_argument("--ann", choices=(*ANN_KINDS, "none"), default=None,
                       help="also build a FAISS approximate index (SEARCH_BACKEND=faiss); --update keeps the previous one")
    build.add_argument("--ann-param", action="append", default=[], type=key_value, metavar="KEY=VALUE",
                       help="approximate-index parameter, e.g. M=32 (see search/indexing/ann.py)")
    build.add_argument("--no-wait", action="store_true", help=NO_WAIT_HELP)
    info = sub.add_parser("info", help="describe an index")
    info.add_argument("--index", type=Path, required=True)
    ann = sub.add_parser("ann", help="add or replace the FAISS approximate index of an existing index")
    ann.add_argument("--index", type=Path, required=True)
    ann.add_argument("--ann", choices=ANN_KINDS, required=True)
    ann.add_argument("--ann-param", action="append", default=[], type=key_value, metavar="KEY=VALUE")
    ann.add_argument("--no-wait", action="store_true", help=NO_WAIT_HELP)
    register(sub, settings.vectors)
    register_verify(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    if getattr(args, "func", None) is not None:  # subcommands that bring their own runner (publish, verify)
        return args.func(args)
    if args.command == "ann":
        if not args.index.is_dir():  # no lock file (or folder) made for a mistyped path
            print(f"error: there is no index at {args.index}; build it with "
                  f"`python -m search.index build --catalog DIR --out {args.index}`", file=sys.stderr)
            return 1
        try:
            with writer_lock(args.index, "ann", wait=not args.no_wait):
                print(json.dumps(build_ann(args.index, args.ann, dict(args.ann_param)), indent=1))
        except WriterBusy as exc:
            print(exc, file=sys.stderr)
            return WriterBusy.EXIT_STATUS
        except (IndexLoadError, GenerationChanged) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "info":
        index = Index.load(args.index)
        meta = {k: v for k, v in index.meta.items() if k != "skipped"}
        summary = garment_summary(index)
        print(json.dumps({**meta, "skipped": len(index.meta.get("skipped", [])), "garment_classes": summary}, indent=1))
        print(garment_summary_line(summary), file=sys.stderr)
        return 0

    try:  # the whole build holds the folder: an --update's read of the previous index too
        with writer_lock(args.out, "build", wait=not args.no_wait):
            return run_build(args, settings)
    except WriterBusy as exc:
        print(exc, file=sys.stderr)
        return WriterBusy.EXIT_STATUS


def run_build(args, settings: SearchConfig) -> int:
    """`build`, holding the folder's writer lock."""
    models = BuildModels(settings.clip, args.bg_url, args.bg_timeout, args.bg_retries)
    embedder, garments = models.load()  # the build's identity; with --workers, each worker loads its own too
    workers = args.workers or os.cpu_count() or 1
    on_gpu = embedder.device == "cuda"
    batch_size = args.batch_size or (256 if on_gpu else 16)
    decode_workers = args.decode_workers if args.decode_workers is not None else (
        min(8, os.cpu_count() or 1) if on_gpu and workers <= 1 and not args.ray else 0)
    vocabulary = Vocabulary.load(args.vocabulary)
    try:
        feed = None
        if args.feed is not None:
            policy = settings.fetch.model_copy(update={
                "allow_hosts": settings.fetch.allow_hosts | {h.lower() for h in args.allow_host}})
            feed = load_feed_catalog(args.feed, vocabulary=vocabulary, fetch_policy=policy,
                                     cache_dir=args.image_cache or args.out / "image-cache", schema_path=args.schema,
                                     max_bad_rows=args.max_bad_rows, fetch_workers=args.fetch_workers,
                                     fetch_retries=args.fetch_retries)
            print(describe_types(feed), file=sys.stderr)
        report = build_index(args.catalog, args.out, embedder, garments, pooling=args.pooling,
                             batch_size=batch_size, update=args.update, dup_threshold=args.dup_threshold,
                             ann=args.ann, ann_params=dict(args.ann_param), workers=workers, models=models,
                             ray=args.ray, decode_workers=decode_workers, vocabulary=vocabulary, feed=feed,
                             lexical_language=args.language)
    except (GarmentServiceError, FeedError, ImageFetchError, WorkerModelsError, RayBuildError) as exc:
        print(f"error: {exc}\nThe build stopped; the index at {args.out} was left as it was.", file=sys.stderr)
        return 1
    print_report(report, args.out)
    if args.publish:
        try:
            published = publish(args.out, args.publish, token=settings.vectors.milvus_token,
                                collection=settings.vectors.milvus_collection)
        except PublishError as exc:
            print(f"error: the index was built, but publishing it failed: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(published, indent=1))
    export = args.out / EXPORT_DIRNAME / EXPORT_META
    if export.exists() and json.loads(export.read_text()).get("identity") != embedder.identity:
        print(f"warning: the text encoder in {export.parent} was exported from other CLIP weights and the "
              f"service will refuse it; export again: python -m search.export --index {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
