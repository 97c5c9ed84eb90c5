"""Retrieval quality on judged queries: Recall@1, Recall@5 and MRR, per query and overall.

    python -m search.evaluate --catalog ../shared/data/catalog --queries ../shared/data/queries_dev.tsv
           [--index DIR]   # reuse a built index (else one is built into a temporary folder)

Runs with whatever weights are configured (CLIP_MODEL / CLIP_PRETRAINED, U2NET_HOME), and encodes
the queries as the service would: with the index's ONNX export when it has one (search.export), so
`CLIP_TEXT_PRECISION=int8` measures the int8 graph against the default fp32 before you switch. Besides the
configured setting it compares poolings and fusions of the CLIP score with BM25 (weighted sums and
reciprocal rank fusion, by lexical weight; weight 1 = the lexical engine alone), so defaults are
chosen from numbers. With random CLIP weights (CLIP_PRETRAINED empty) only the lexical part means anything.
Queries file: TSV with columns query, relevant_products (comma-separated folder names), kind.
"""
from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from search.config import SearchConfig
from search.index_format import POOLINGS, Index
from search.indexing.builder import build_index
from search.indexing.pooling import pool_products
from search.indexing.report import print_report
from search.searcher import FUSIONS, Fusion, Searcher
from search.text_encoder import export_dir, open_text_encoder
from shared.settings import exit_on_bad_settings

LEXICAL_WEIGHTS = (0.0, 0.1, 0.3, 0.5, 0.7, 1.0)


@dataclass
class Judged:
    query: str
    relevant: set[str]
    kind: str


def read_queries(path: Path) -> list[Judged]:
    with open(path, newline="") as fh:
        return [Judged(r["query"], {p.strip() for p in r["relevant_products"].split(",") if p.strip()},
                       r.get("kind", "")) for r in csv.DictReader(fh, delimiter="\t")]


def metrics(ranked: list[str], relevant: set[str]) -> dict[str, float]:
    first = next((i + 1 for i, name in enumerate(ranked) if name in relevant), None)
    return {
        "R@1": len(relevant & set(ranked[:1])) / len(relevant),
        "R@5": len(relevant & set(ranked[:5])) / len(relevant),
        "MRR": 1.0 / first if first else 0.0,
    }


def repooled(index: Index, method: str) -> Index:
    return index.with_pooling(method, pool_products(index.image_embeddings, index.counts, method))


def evaluate(searcher: Searcher, queries: list[Judged]) -> list[dict]:
    rows = []
    for q in queries:
        ranked = [r.product_name for r in searcher.search(q.query, len(searcher.index.products))]
        rows.append({"query": q.query, "kind": q.kind, **metrics(ranked, q.relevant), "top1": ranked[0]})
    return rows


def summary(rows: list[dict]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in ("R@1", "R@5", "MRR")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", type=Path, required=True)
    parser.add_argument("--queries", type=Path, required=True)
    parser.add_argument("--index", type=Path, help="an index built from --catalog with the configured model")
    args = parser.parse_args(argv)
    config = exit_on_bad_settings(SearchConfig.from_env)

    from search.embedder import ClipEmbedder

    embedder = ClipEmbedder(config.clip)
    queries = read_queries(args.queries)
    with tempfile.TemporaryDirectory() as tmp:
        index_dir = args.index
        if index_dir is None:
            from search.garments import LocalGarments

            index_dir = Path(tmp)
            print_report(build_index(args.catalog, index_dir, embedder, LocalGarments()), index_dir)
        index = Index.load(index_dir)
        index.check_compatible(embedder.identity)
        # The queries are encoded as the service would: the index's ONNX export where it has one.
        encoder = open_text_encoder(config.clip, config.text_encoder, export_dir(config, index_dir),
                                    torch_encoder=embedder)
        index.check_compatible(encoder.identity)

        searcher = Searcher(index, encoder, fusion=config.fusion, cache_size=4096)
        rows = evaluate(searcher, queries)
        print(f"\nmodel={config.clip.model} pretrained={config.clip.pretrained or '(random)'} "
              f"pooling={index.pooling} fusion={config.fusion_method} lexical_weight={config.lexical_weight} "
              f"text_encoder={encoder.describe()}")
        print(f"{'query':<42} {'kind':<17} {'R@1':>5} {'R@5':>5} {'MRR':>5}  top-1")
        for r in rows:
            print(f"{r['query'][:42]:<42} {r['kind']:<17} {r['R@1']:5.2f} {r['R@5']:5.2f} {r['MRR']:5.2f}  {r['top1']}")
        overall = summary(rows)
        print(f"{'OVERALL':<60} {overall['R@1']:5.3f} {overall['R@5']:5.3f} {overall['MRR']:5.3f}")
        for kind in sorted({r["kind"] for r in rows}):
            part = summary([r for r in rows if r["kind"] == kind])
            print(f"  {kind:<58} {part['R@1']:5.3f} {part['R@5']:5.3f} {part['MRR']:5.3f}")

        print("\ncomparison (overall R@1 / R@5 / MRR), by lexical weight:")
        print(f"{'pooling':<10} {'fusion':<9} " + " ".join(f"{'w=' + str(w):>16}" for w in LEXICAL_WEIGHTS))
        for method in POOLINGS:
            variant = repooled(index, method)
            for fusion in FUSIONS:
                cells = []
                for w in LEXICAL_WEIGHTS:
                    s = summary(evaluate(replace_searcher(searcher, variant, Fusion(fusion, w, config.rrf_k,
                                                                                    config.rrf_window)), queries))
                    cells.append(f"{s['R@1']:.2f}/{s['R@5']:.2f}/{s['MRR']:.3f}".rjust(16))
                print(f"{method:<10} {fusion:<9} " + " ".join(cells))
    return 0


def replace_searcher(base: Searcher, index: Index, fusion: Fusion) -> Searcher:
    searcher = Searcher(index, base.embedder, fusion=fusion, cache_size=0)
    searcher.cache = base.cache  # same queries, same embeddings: share them
    return searcher


if __name__ == "__main__":
    sys.exit(main())
