"""Building the FAISS approximate index for SEARCH_BACKEND=faiss (search/vectors/faiss_ann.py
serves it): at build time (`--ann KIND`) or for an existing index (`python -m search.index ann`).

It covers the pooled product vectors (max/mean pooling) or the image vectors (score-max: a product
scores as its best image), and is written into the generation folder, beside the arrays.

Kinds and their parameters (--ann-param key=value):
    hnsw       M=32 (links per node: memory and recall), ef_construction=200 (build breadth)
    ivf-pq     nlist=4*sqrt(n) (clusters), m=64 (sub-quantizers: bytes per vector), nbits=8
    ivf-flat   nlist=4*sqrt(n)
    flat-fp16  every vector stored in float16 (also the copy SEARCH_EXACT_DTYPE=float16 scans)
The query-time settings of each kind are described in search/vectors/faiss_ann.py.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from search.index_format import Index, ann_file_name, replace_file, update_meta
from search.index_guard import writer_lock
from search.vectors.faiss_ann import faiss_module

ANN_KINDS = ("hnsw", "ivf-pq", "ivf-flat", "flat-fp16")
ADD_BATCH = 100_000
TRAIN_MAX = 262_144  # vectors used to train IVF/PQ codebooks


def default_params(kind: str, n: int, dim: int) -> dict:
    nlist = max(1, min(65536, int(4 * math.sqrt(n))))
    return {
        "hnsw": {"M": 32, "ef_construction": 200},
        "ivf-pq": {"nlist": nlist, "m": 64 if dim % 64 == 0 else 8, "nbits": 8},
        "ivf-flat": {"nlist": nlist},
        "flat-fp16": {},
    }[kind]


def build_ann_file(vectors: np.ndarray, over: str, kind: str, params: dict | None, path: Path, *,
                   progress: bool = True) -> dict:
    """Build the approximate index over `vectors` (float32, normalised), write it to `path`;
    returns the meta.json entry that describes it."""
    if kind not in ANN_KINDS:
        raise ValueError(f"--ann must be one of {', '.join(ANN_KINDS)}")
    faiss = faiss_module()
    n, dim = vectors.shape
    params = {**default_params(kind, n, dim), **(params or {})}
    started = time.perf_counter()
    metric = faiss.METRIC_INNER_PRODUCT
    if kind == "hnsw":
        ann = faiss.IndexHNSWFlat(dim, int(params["M"]), metric)
        ann.hnsw.efConstruction = int(params["ef_construction"])
    elif kind == "flat-fp16":
        ann = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, metric)
    else:
        params["nlist"] = min(int(params["nlist"]), n)
        quantizer = faiss.IndexFlatIP(dim)
        if kind == "ivf-pq":
            ann = faiss.IndexIVFPQ(quantizer, dim, int(params["nlist"]), int(params["m"]), int(params["nbits"]), metric)
        else:
            ann = faiss.IndexIVFFlat(quantizer, dim, int(params["nlist"]), metric)
        ann.own_fields = True
        quantizer.this.disown()
    if not ann.is_trained:
        sample = np.random.default_rng(0).choice(n, size=min(n, TRAIN_MAX), replace=False)
        ann.train(np.ascontiguousarray(vectors[np.sort(sample)], np.float32))
    bar = tqdm(total=n, desc=f"faiss {kind}", unit="vec", disable=not progress)
    for first in range(0, n, ADD_BATCH):
        ann.add(np.ascontiguousarray(vectors[first:first + ADD_BATCH], np.float32))
        bar.update(min(ADD_BATCH, n - first))
    bar.close()
    replace_file(path, lambda staged: faiss.write_index(ann, str(staged)))
    return {"kind": kind, "params": params, "over": over, "file": path.name, "vectors": int(n),
            "metric": "ip", "build_seconds": round(time.perf_counter() - started, 1),
            "bytes": path.stat().st_size}


def ann_source(image_embeddings: np.ndarray, product_embeddings: np.ndarray, pooling: str) -> tuple[np.ndarray, str]:
    """What the approximate index covers: products, or images for score-max pooling."""
    return (image_embeddings, "images") if pooling == "score-max" else (product_embeddings, "products")


def build_ann(index_dir: Path, kind: str, params: dict | None = None, *, progress: bool = True) -> dict:
    """Add (or replace) the approximate index of an existing index: written into the folder of
    the generation it was built from, then recorded in meta.json atomically, only if meta.json
    still names that generation (GenerationChanged otherwise). Holds the index's writer_lock
    (nested in the command's own). Returns the meta entry."""
    with writer_lock(index_dir, "ann"):
        index = Index.load(index_dir)
        generation = index.meta["generation"]
        vectors, over = ann_source(index.image_embeddings, index.product_embeddings, index.pooling)
        entry = build_ann_file(vectors, over, kind, params, Path(index_dir) / generation / ann_file_name(kind),
                               progress=progress)
        update_meta(index_dir, expect_generation=generation, ann=entry)
    return entry
