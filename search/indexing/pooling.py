"""A product's vector from its images' normalised embeddings (the index's pooling)."""
from __future__ import annotations

import numpy as np

from search.index_format import POOLINGS


def normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def pool(embeddings: np.ndarray, method: str) -> np.ndarray:
    """One product vector from its images' normalised embeddings.

    max: element-wise max, re-normalised; mean: mean, re-normalised; score-max scores each
    image at query time and keeps the best, so its stored vector is the max-pooled one (used
    only for the duplicate report and as a fallback)."""
    if method == "mean":
        return normalise(embeddings.mean(axis=0))
    if method in ("max", "score-max"):
        return normalise(embeddings.max(axis=0))
    raise ValueError(f"pooling must be one of {POOLINGS}")


def group_starts(counts) -> np.ndarray:
    """First row of each product, for image rows grouped by product with these counts."""
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


def pool_products(image_matrix: np.ndarray, counts: list[int], method: str) -> np.ndarray:
    """One pooled row per product; `image_matrix` rows are grouped by product, `counts` long."""
    starts = group_starts(counts)
    return np.stack([pool(image_matrix[s:s + c], method) for s, c in zip(starts, counts, strict=True)])
