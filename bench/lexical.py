"""Lexical ranking candidates for product text, measured before one is chosen.

    python bench/lexical.py [--catalog ../shared/data/catalog] [--queries ../shared/data/queries_dev.tsv]
                            [--products 100000] [--queries-timed 200]

1. Quality, names only (the sample catalog's 32 folder names; no images, no CLIP): MRR, R@1, R@5
   on the judged queries, all of them and those of kind `name_words`, for
   - the share-of-words name match the service had before BM25 (re-implemented here as the baseline),
   - search.lexical, the engine that ships (bm25s weights, its own analysis),
   - bm25s (BM25, Lucene variant) with no stemming, the English and the Turkish Snowball stemmer
     (PyStemmer), over text folded as shared.garment_vocabulary.fold does (Turkish I/i, accents),
   - tantivy (Lucene-like, BM25) with its `en_stem` analyser.
   Equal scores are ranked in random orders and the metrics averaged (the baseline ties a lot).
2. Cost at --products synthetic names (words drawn from the sample's names): index build seconds
   and per-query latency p50/p95, as ratios to today's name match.

bm25s and PyStemmer are pinned in requirements-search.txt (bm25s with Snowball won: search/lexical.py);
tantivy is not: `pip install tantivy` to run this.
"""
from __future__ import annotations

import argparse
import csv
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from search.lexical import LexicalIndex  # noqa: E402
from shared.garment_vocabulary import fold  # noqa: E402

LETTERS = re.compile(r"[^\W\d_]+")


def analysed(text: str) -> str:
    """Product text as every candidate sees it: folded (Turkish İ/ı, case, accents), letters only
    (the folder names' numeric prefix and id dropped)."""
    return " ".join(LETTERS.findall(fold(text.replace("-", " "))))


def words(text: str) -> set[str]:
    return {w for w in re.findall(r"[^\W\d_]+", text.lower()) if len(w) > 1}


class ShareOfWords:
    name = "share of words (before)"

    def __init__(self, texts: list[str]):
        self.names = [words(t) for t in texts]

    def scores(self, query: str) -> np.ndarray:
        asked = words(query)
        return np.array([len(asked & name) / len(asked) if asked else 0.0 for name in self.names], np.float32)


class Shipped:
    name = "search.lexical (ships)"

    def __init__(self, texts: list[str]):
        self.index = LexicalIndex(LexicalIndex.arrays(texts), len(texts))

    def scores(self, query: str) -> np.ndarray:
        return self.index.scores(query)


class Bm25s:
    def __init__(self, texts: list[str], stemmer: str | None):
        import bm25s
        import Stemmer

        self.bm25s = bm25s
        self.stemmer = Stemmer.Stemmer(stemmer) if stemmer else None
        self.name = f"bm25s, {stemmer or 'no'} stemmer"
        self.retriever = bm25s.BM25()
        tokens = bm25s.tokenize([analysed(t) for t in texts], stopwords=None, stemmer=self.stemmer, show_progress=False)
        self.retriever.index(tokens, show_progress=False)
        self.n = len(texts)

    def scores(self, query: str) -> np.ndarray:
        tokens = self.bm25s.tokenize([analysed(query)], stopwords=None, stemmer=self.stemmer, show_progress=False,
                                     return_ids=False)
        return self.retriever.get_scores(tokens[0]).astype(np.float32)


class Tantivy:
    name = "tantivy, en_stem"

    def __init__(self, texts: list[str]):
        import tantivy

        builder = tantivy.SchemaBuilder()
        builder.add_integer_field("row", stored=True, fast=True)
        builder.add_text_field("text", tokenizer_name="en_stem")
        self.schema = builder.build()
        self.folder = tempfile.TemporaryDirectory()
        self.index = tantivy.Index(self.schema, path=self.folder.name)
        writer = self.index.writer(heap_size=100_000_000)
        for row, text in enumerate(texts):
            writer.add_document(tantivy.Document(row=row, text=analysed(text)))
        writer.commit()
        writer.wait_merging_threads()
        self.index.reload()
        self.n = len(texts)

    def scores(self, query: str, limit: int | None = None) -> np.ndarray:
        out = np.zeros(self.n, np.float32)
        terms = analysed(query).split()
        if not terms:
            return out
        parsed = self.index.parse_query(" OR ".join(terms), ["text"])
        searcher = self.index.searcher()
        for score, address in searcher.search(parsed, limit or self.n).hits:
            out[searcher.doc(address)["row"][0]] = score
        return out


TIE_ORDERS = 200


def ranked(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Best first; equal scores in a random order (lexsort: last key first)."""
    return np.lexsort((rng.random(len(scores)), -scores))


def quality(method, names: list[str], judged: list[dict]) -> dict[str, dict[str, float]]:
    """Each metric is its mean over TIE_ORDERS random orders of equal scores: a method that ties
    many products (share of words does) gets the rank it would get on average, not by luck."""
    rows = []
    rng = np.random.default_rng(0)
    for q in judged:
        scores, relevant = method.scores(q["query"]), q["relevant"]
        sums = {"MRR": 0.0, "R@1": 0.0, "R@5": 0.0}
        for _ in range(TIE_ORDERS):
            order = [names[i] for i in ranked(scores, rng)]
            first = next((i + 1 for i, name in enumerate(order) if name in relevant), None)
            sums["MRR"] += 1.0 / first if first else 0.0
            sums["R@1"] += len(relevant & set(order[:1])) / len(relevant)
            sums["R@5"] += len(relevant & set(order[:5])) / len(relevant)
        rows.append({"kind": q["kind"], **{m: v / TIE_ORDERS for m, v in sums.items()}})
    out = {}
    for label, part in (("all", rows), ("name_words", [r for r in rows if r["kind"] == "name_words"])):
        out[label] = {m: float(np.mean([r[m] for r in part])) if part else float("nan") for m in ("MRR", "R@1", "R@5")}
    return out


def synthetic_names(names: list[str], n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    vocabulary = sorted({w for name in names for w in words(name)})
    lengths = rng.integers(3, 9, n)
    return [" ".join(rng.choice(vocabulary, size=k)) for k in lengths]


def timed(method_factory, texts: list[str], queries: list[str], top: int = 10):
    started = time.perf_counter()
    method = method_factory(texts)
    build_s = time.perf_counter() - started
    latencies = []
    for query in queries:
        started = time.perf_counter()
        scores = method.scores(query, top) if isinstance(method, Tantivy) else method.scores(query)
        np.argpartition(-scores, top)[:top]
        latencies.append(time.perf_counter() - started)
    return method.name, build_s, statistics.median(latencies), float(np.percentile(latencies, 95))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", type=Path, default=REPO.parent / "shared" / "data" / "catalog")
    parser.add_argument("--queries", type=Path, default=REPO.parent / "shared" / "data" / "queries_dev.tsv")
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--queries-timed", type=int, default=200)
    args = parser.parse_args(argv)
    if not args.catalog.is_dir() or not args.queries.is_file():
        print(f"needs {args.catalog} and {args.queries}", file=sys.stderr)
        return 2
    names = sorted(p.name for p in args.catalog.iterdir() if p.is_dir())
    with open(args.queries, newline="") as fh:
        judged = [{"query": r["query"], "kind": r.get("kind", ""),
                   "relevant": {p.strip() for p in r["relevant_products"].split(",") if p.strip()}}
                  for r in csv.DictReader(fh, delimiter="\t")]
    methods = [ShareOfWords(names), Shipped(names), Bm25s(names, None), Bm25s(names, "english"), Bm25s(names, "turkish"),
               Tantivy(names)]
    print(f"quality on {len(judged)} judged queries over {len(names)} product names (names only)")
    print(f"{'method':<26} {'MRR':>6} {'R@1':>6} {'R@5':>6}   {'name_words MRR':>14} {'R@1':>6}")
    for method in methods:
        q = quality(method, names, judged)
        print(f"{method.name:<26} {q['all']['MRR']:6.3f} {q['all']['R@1']:6.3f} {q['all']['R@5']:6.3f}   "
              f"{q['name_words']['MRR']:14.3f} {q['name_words']['R@1']:6.3f}")

    texts = synthetic_names(names, args.products)
    rng = np.random.default_rng(1)
    queries = [" ".join(rng.choice(texts[int(rng.integers(len(texts)))].split(), size=2)) for _ in range(args.queries_timed)]
    print(f"\ncost at {args.products:,} synthetic names, {len(queries)} two-word queries, top 10")
    factories = [ShareOfWords, lambda t: Bm25s(t, "english"), Tantivy]
    rows = [timed(factory, texts, queries) for factory in factories]
    base = rows[0]
    print(f"{'method':<26} {'build s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p50 / today':>12}")
    for name, build_s, p50, p95 in rows:
        print(f"{name:<26} {build_s:8.2f} {p50 * 1e3:8.2f} {p95 * 1e3:8.2f} {p50 / base[2]:12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
