"""Near-duplicate images across products, in bounded memory (the index builder's report).

The first version multiplied the whole image matrix by itself: one N x N float32 matrix
for the embeddings and another for the 256-d pixel thumbnails, plus N x N boolean masks.
At 50k images each similarity matrix is 50k * 50k * 4 bytes = 10 GB, so the report
alone needed over 20 GB. This module walks the upper triangle in blocks of rows instead:
a block of rows is compared only with itself and the rows after it, so every pair is seen
once and the working memory is a few block x images buffers (`max_block_bytes`), never
images x images.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

# Working memory for one block: its similarity rows and their masks. 256 MiB gives blocks
# of ~540 rows at 50k images with an embedding threshold (~1070 rows without one).
DEFAULT_MAX_BLOCK_BYTES = 256 * 2**20
# Gather at most this many image pairs at a time when their embedding cosines are looked up.
_GATHER = 65536


def find_duplicates(products: Sequence[str], counts: Sequence[int], embeddings: np.ndarray,
                    thumbs: np.ndarray, threshold: float | None, pixel_threshold: float = 0.98,
                    *, block_rows: int | None = None, top_k: int | None = 16,
                    max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES, progress: bool = True) -> list[dict]:
    """Product pairs holding near-identical images.

    `embeddings` [images, dim] and `thumbs` [images, 256] are row-normalised (float32) and
    grouped by product: `counts[i]` rows for `products[i]`, in order. They may be read-only
    memory maps; they are only read a block of rows at a time and never copied whole.

    An image pair in two different products counts when its pixel fingerprints match
    (cosine >= pixel_threshold: works whatever the model) or, when `threshold` is given, its
    embeddings' cosine reaches it. Random weights give every image nearly the same
    embedding, so the builder passes None for them. Pairs within one product never count.

    Returns one dict per product pair: {"products": [name_a, name_b], "image_pairs": n,
    "images": [count_a, count_b], "max_embedding_cosine": .., "max_pixel_similarity": ..},
    maxima rounded to 4 decimals and floored at 0.0, product a before product b in index
    order. Sorted by most image pairs first, ties by (index of a, index of b).

    Memory. Rows are taken `block_rows` at a time and compared with the same and all later
    rows only (the upper triangle). Without `block_rows`, each block is sized so that its
    similarity rows and boolean masks (10 bytes per compared pair with a threshold, 5
    without) fit `max_block_bytes`, and blocks grow as fewer later rows remain. Peak memory
    is then about `max_block_bytes` plus the result, not O(images^2) (the old all-pairs
    version needed ~10 GB per similarity matrix at 50k images).

    Truncation. Each image keeps at most `top_k` qualifying partners among the images after
    it in another product, the most similar first (ranked by the larger of the pixel cosine
    and, with a threshold, the embedding cosine; ties by row order). That bounds the result
    at images x top_k pairs even when thousands of images are identical (a placeholder
    photo). In such dense clusters `image_pairs` and the two maxima are lower bounds; the
    set of reported product pairs can miss pairs only inside a cluster where some image has
    more than `top_k` later partners. `top_k=None` keeps every pair (memory then grows with
    the number of duplicate pairs).
    """
    counts_arr = np.asarray(counts, dtype=np.int64).reshape(-1)
    n = int(counts_arr.sum())
    if len(products) != len(counts_arr) or (counts_arr < 0).any():
        raise ValueError("products and counts must have the same length, counts >= 0")
    if embeddings.ndim != 2 or thumbs.ndim != 2 or embeddings.shape[0] != n or thumbs.shape[0] != n:
        raise ValueError(f"embeddings {embeddings.shape} and thumbs {thumbs.shape} must have "
                         f"sum(counts) = {n} rows")
    if top_k is not None and top_k < 1:
        raise ValueError("top_k must be >= 1 or None")
    if block_rows is not None and block_rows < 1:
        raise ValueError("block_rows must be >= 1 or None")
    if n < 2:
        return []

    ends = np.cumsum(counts_arr)
    product_of = np.repeat(np.arange(len(counts_arr), dtype=np.int64), counts_arr)
    row_end = ends[product_of]  # first row after each row's product: later rows from here on count

    pix_dtype = np.result_type(thumbs.dtype, np.float32)
    emb_dtype = np.result_type(embeddings.dtype, np.float32)
    cell_bytes = pix_dtype.itemsize + 1 + (emb_dtype.itemsize + 1 if threshold is not None else 0)
    budget_cells = max(1, int(max_block_bytes) // cell_bytes)

    # Block plan: rows [r0, r1) against columns [r0, n).
    plan = []
    r0 = 0
    while r0 < n:
        width = n - r0
        rows = block_rows if block_rows is not None else max(1, budget_cells // width)
        r1 = min(n, r0 + rows)
        plan.append((r0, r1))
        r0 = r1
    cap = max((r1 - r0) * (n - r0) for r0, r1 in plan)
    # Reused buffers: allocating fresh ones per block costs page faults every time.
    pix_buf = np.empty(cap, pix_dtype)
    mask_buf = np.empty(cap, bool)
    emb_buf = np.empty(cap, emb_dtype) if threshold is not None else None
    tmp_buf = np.empty(cap, bool) if threshold is not None else None

    found_a, found_b, found_emb, found_pix = [], [], [], []
    total = sum((r1 - r0) * (n - r0) for r0, r1 in plan)
    with tqdm(total=total, desc="duplicate check", unit="pair", unit_scale=True, disable=not progress) as bar:
        for r0, r1 in plan:
            rows, width = r1 - r0, n - r0
            pix = pix_buf[:rows * width].reshape(rows, width)
            mask = mask_buf[:rows * width].reshape(rows, width)
            np.matmul(thumbs[r0:r1], thumbs[r0:].T, out=pix)
            np.greater_equal(pix, pixel_threshold, out=mask)
            emb = None
            if threshold is not None:
                emb = emb_buf[:rows * width].reshape(rows, width)
                tmp = tmp_buf[:rows * width].reshape(rows, width)
                np.matmul(embeddings[r0:r1], embeddings[r0:].T, out=emb)
                np.greater_equal(emb, threshold, out=tmp)
                np.logical_or(mask, tmp, out=mask)
            # Drop the lower triangle and the row's own product: a staircase near the diagonal.
            cut = row_end[r0:r1] - r0
            stair = int(cut.max())
            mask[:, :stair] &= np.arange(stair)[None, :] >= cut[:, None]

            # Usually a block holds a handful of hits: only count per row when some row might overflow.
            if top_k is not None and np.count_nonzero(mask) > top_k:
                per_row = mask.sum(axis=1, dtype=np.int64)
                for i in np.flatnonzero(per_row > top_k):
                    cols = np.flatnonzero(mask[i])
                    score = pix[i, cols]
                    if emb is not None:
                        score = np.maximum(score, emb[i, cols])
                    keep = cols[np.argsort(-score, kind="stable")[:top_k]]
                    mask[i] = False
                    mask[i, keep] = True

            li, lj = np.nonzero(mask)
            if len(li):
                a, b = li + r0, lj + r0
                found_a.append(a)
                found_b.append(b)
                found_pix.append(pix[li, lj])
                if emb is not None:
                    found_emb.append(emb[li, lj])
                else:
                    found_emb.append(_row_dots(embeddings, a, b))
            bar.update(rows * width)
    del pix_buf, mask_buf, emb_buf, tmp_buf

    if not found_a:
        return []
    a, b = np.concatenate(found_a), np.concatenate(found_b)
    pa, pb = product_of[a], product_of[b]
    keys = pa * len(counts_arr) + pb  # pa < pb: rows are grouped and b lies past a's product
    uniq, inverse = np.unique(keys, return_inverse=True)  # sorted by (pa, pb)
    n_pairs = np.bincount(inverse, minlength=len(uniq))
    max_emb = np.zeros(len(uniq), np.float64)
    max_pix = np.zeros(len(uniq), np.float64)
    np.maximum.at(max_emb, inverse, np.concatenate(found_emb).astype(np.float64))
    np.maximum.at(max_pix, inverse, np.concatenate(found_pix).astype(np.float64))

    result = []
    for k, key in enumerate(uniq.tolist()):
        ia, ib = divmod(key, len(counts_arr))
        result.append({
            "products": [products[ia], products[ib]], "image_pairs": int(n_pairs[k]),
            "images": [int(counts_arr[ia]), int(counts_arr[ib])],
            "max_embedding_cosine": round(float(max_emb[k]), 4),
            "max_pixel_similarity": round(float(max_pix[k]), 4)})
    # Stable: ties keep the (product a, product b) order np.unique gave.
    return sorted(result, key=lambda e: -e["image_pairs"])


def _row_dots(matrix: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """matrix[a[i]] . matrix[b[i]] for each i, gathering a bounded number of rows at a time."""
    out = np.empty(len(a), np.result_type(matrix.dtype, np.float32))
    for s in range(0, len(a), _GATHER):
        left, right = matrix[a[s:s + _GATHER]], matrix[b[s:s + _GATHER]]
        out[s:s + _GATHER] = np.einsum("ij,ij->i", left, right)
    return out
