"""search.duplicates: the blockwise near-duplicate report matches the all-pairs one, in bounded memory."""
from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest

from search.indexing.duplicates import find_duplicates


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def all_pairs_reference(products, counts, embeddings, thumbs, threshold, pixel_threshold=0.98):
    """search.index.find_duplicates as it was (full N x N matrices), on plain arrays."""
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    sizes = np.diff(np.append(starts, len(embeddings)))
    product_of = np.repeat(np.arange(len(products)), sizes)
    embed_sim = embeddings @ embeddings.T
    pixel_sim = thumbs @ thumbs.T
    similar = pixel_sim >= pixel_threshold
    if threshold is not None:
        similar |= embed_sim >= threshold
    across = np.triu(product_of[:, None] != product_of[None, :], k=1)
    pairs: dict[tuple[int, int], dict] = {}
    for a, b in np.argwhere(similar & across):
        pa, pb = int(product_of[a]), int(product_of[b])
        entry = pairs.setdefault((pa, pb), {
            "products": [products[pa], products[pb]], "image_pairs": 0,
            "images": [int(sizes[pa]), int(sizes[pb])],
            "max_embedding_cosine": 0.0, "max_pixel_similarity": 0.0})
        entry["image_pairs"] += 1
        entry["max_embedding_cosine"] = max(entry["max_embedding_cosine"], round(float(embed_sim[a, b]), 4))
        entry["max_pixel_similarity"] = max(entry["max_pixel_similarity"], round(float(pixel_sim[a, b]), 4))
    return sorted(pairs.values(), key=lambda e: -e["image_pairs"])


def _in_defined_order(report, products):
    """The reference's ties follow first-hit order; the new one defines (product a, product b)."""
    where = {name: i for i, name in enumerate(products)}
    return sorted(report, key=lambda e: (-e["image_pairs"], where[e["products"][0]], where[e["products"][1]]))


def _assert_same(got, want):
    assert [(e["products"], e["image_pairs"], e["images"]) for e in got] == \
           [(e["products"], e["image_pairs"], e["images"]) for e in want]
    for g, w in zip(got, want, strict=True):
        # A block's matmul may sum in another order than the full one; a float32 ulp can move
        # a 4th-decimal rounding by one step.
        assert g["max_embedding_cosine"] == pytest.approx(w["max_embedding_cosine"], abs=1.01e-4)
        assert g["max_pixel_similarity"] == pytest.approx(w["max_pixel_similarity"], abs=1.01e-4)


def _planted_catalog(seed: int):
    """~60 products of 1-5 images with duplicate clusters across products and within one."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 6, size=60)
    products = [f"p{i:03d}" for i in range(len(counts))]
    n = int(counts.sum())
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    emb = _normalise(rng.standard_normal((n, 24)))
    thumbs = _normalise(rng.standard_normal((n, 256)))

    def near(vector, noise):
        """A unit vector at cosine ~1/sqrt(1 + noise^2) from the unit `vector`."""
        return _normalise(vector + noise * rng.standard_normal(vector.shape) / np.sqrt(vector.size))

    # Pixel duplicates across products (cosine ~0.999, ~0.995, or ~0.96: a near miss), some
    # several per product pair (then image_pairs > 1), some chained.
    for _ in range(30):
        a, b = rng.choice(n, size=2, replace=False)
        thumbs[b] = near(thumbs[a], rng.choice([0.05, 0.1, 0.3]))
    # Embedding-only duplicates (thumbs left random): seen only with a threshold (0.9 here).
    for _ in range(20):
        a, b = rng.choice(n, size=2, replace=False)
        emb[b] = near(emb[a], rng.choice([0.1, 0.3, 0.7]))
    # A cluster of 4 products sharing one photo: several pairs with equal image_pairs.
    cluster = rng.choice(len(counts), size=4, replace=False)
    for p in cluster[1:]:
        thumbs[starts[p]] = near(thumbs[starts[cluster[0]]], 0.02)
        emb[starts[p]] = near(emb[starts[cluster[0]]], 0.02)
    # Two photos of one product reappearing in another: image_pairs 2 (or more).
    x, y = rng.choice(np.flatnonzero(counts >= 2), size=2, replace=False)
    for i in range(2):
        thumbs[starts[y] + i] = near(thumbs[starts[x] + i], 0.05)
    # Within-product duplicates: never reported as such.
    multi = np.flatnonzero(counts >= 2)[:5]
    for p in multi:
        thumbs[starts[p] + 1] = thumbs[starts[p]]
        emb[starts[p] + 1] = emb[starts[p]]
    return products, counts.tolist(), emb, thumbs


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [None, 0.9])
@pytest.mark.parametrize("block_rows", [1, 7, 64, None])
def test_matches_all_pairs_reference(seed, threshold, block_rows):
    products, counts, emb, thumbs = _planted_catalog(seed)
    want = _in_defined_order(all_pairs_reference(products, counts, emb, thumbs, threshold), products)
    got = find_duplicates(products, counts, emb, thumbs, threshold, block_rows=block_rows,
                          top_k=None, progress=False)
    assert len(want) >= 10 and any(e["image_pairs"] > 1 for e in want)
    _assert_same(got, want)
    big_k = find_duplicates(products, counts, emb, thumbs, threshold, block_rows=block_rows,
                            top_k=10_000, progress=False)
    assert big_k == got
    assert not [e for e in got if e["products"][0] == e["products"][1]]


def test_budget_sized_blocks_match_reference():
    """The default path: block rows derived from max_block_bytes, growing down the triangle."""
    products, counts, emb, thumbs = _planted_catalog(3)
    for threshold in (None, 0.9):
        want = _in_defined_order(all_pairs_reference(products, counts, emb, thumbs, threshold), products)
        for budget in (1, 3000, 40_000, 10**9):
            got = find_duplicates(products, counts, emb, thumbs, threshold, top_k=None,
                                  max_block_bytes=budget, progress=False)
            _assert_same(got, want)


def test_pixel_threshold_and_empty_cases():
    products, counts, emb, thumbs = _planted_catalog(4)
    want = _in_defined_order(all_pairs_reference(products, counts, emb, thumbs, None, 0.999), products)
    _assert_same(find_duplicates(products, counts, emb, thumbs, None, 0.999, block_rows=5, progress=False), want)
    one = _normalise(np.ones((3, 8), np.float32))
    assert find_duplicates(["only"], [3], one, one, 0.5, progress=False) == []  # one product
    assert find_duplicates([], [], one[:0], one[:0], 0.5, progress=False) == []
    with pytest.raises(ValueError):
        find_duplicates(["a", "b"], [1, 1], one, one, None, progress=False)


def _cluster(sims, dim=256, seed=0):
    """Unit vectors: row 0 is a base, row j has cosine sims[j-1] with it (distinct directions)."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, len(sims) + 1)))
    base, others = basis[:, 0], basis[:, 1:].T
    rows = [base] + [s * base + np.sqrt(1 - s * s) * o for s, o in zip(sims, others, strict=True)]
    return np.asarray(rows, np.float32)


def test_top_k_keeps_most_similar_later_partners():
    # Product "a" holds the base and an identical copy (same product: must not use the budget),
    # products b..f one image each, decreasingly similar to the base. Partners are ~0.99 of the
    # base but only ~0.97 of each other, so only the base row has many later partners.
    sims = [0.995, 0.9995, 0.992, 0.998, 0.9985]
    vecs = _cluster(sims)
    thumbs = np.concatenate([vecs[:1], vecs])
    products, counts = ["a", "b", "c", "d", "e", "f"], [2, 1, 1, 1, 1, 1]
    emb = _normalise(np.random.default_rng(1).standard_normal((len(thumbs), 16)))
    full = find_duplicates(products, counts, emb, thumbs, None, 0.985, block_rows=2, top_k=None, progress=False)
    want = _in_defined_order(all_pairs_reference(products, counts, emb, thumbs, None, 0.985), products)
    _assert_same(full, want)
    # Without truncation each of the two base images pairs with all five: 2 image pairs per product.
    assert {tuple(e["products"]): e["image_pairs"] for e in full if e["products"][0] == "a"} == \
        {("a", p): 2 for p in "bcdef"}
    for k in (1, 2, 3):
        got = find_duplicates(products, counts, emb, thumbs, None, 0.985, block_rows=2, top_k=k, progress=False)
        with_a = {e["products"][1]: e for e in got if e["products"][0] == "a"}
        # Each base image keeps its k most similar partners: c (0.9995), f (0.9985), e (0.998).
        assert sorted(with_a) == sorted("cfe"[:k])
        assert all(e["image_pairs"] == 2 for e in with_a.values())
        assert with_a["c"]["max_pixel_similarity"] == pytest.approx(0.9995, abs=2e-4)
        # Counts are lower bounds of the untruncated report, never more.
        by_pair = {tuple(e["products"]): e["image_pairs"] for e in full}
        assert all(e["image_pairs"] <= by_pair[tuple(e["products"])] for e in got)


def test_top_k_bounds_an_identical_cluster():
    # 12 single-image products with the same photo: 66 pairs untruncated; with top_k=k image i
    # keeps min(k, 11 - i) of the later ones.
    thumbs = _normalise(np.ones((12, 256), np.float32) + np.eye(12, 256, dtype=np.float32) * 1e-3)
    emb = thumbs[:, :32].copy()
    products, counts = [f"p{i:02d}" for i in range(12)], [1] * 12
    assert len(find_duplicates(products, counts, emb, thumbs, 0.9, top_k=None, progress=False)) == 66
    for k, block_rows in ((1, 5), (3, 1), (4, None)):
        got = find_duplicates(products, counts, emb, thumbs, 0.9, block_rows=block_rows, top_k=k, progress=False)
        assert len(got) == sum(min(k, 11 - i) for i in range(12))
        assert all(e["image_pairs"] == 1 for e in got)
        # Ties (all cosines equal up to float noise) and order: sorted by product indices.
        keys = [(int(e["products"][0][1:]), int(e["products"][1][1:])) for e in got]
        assert keys == sorted(keys)


def test_50k_images_bounded_memory(tmp_path):
    """50k images, read from memory maps: tracemalloc sees only what find_duplicates allocates."""
    n_target, dim = 50_000, 64
    rng = np.random.default_rng(7)
    counts = []
    while sum(counts) < n_target:
        counts.append(int(rng.integers(1, 6)))
    counts[-1] -= sum(counts) - n_target
    counts = [c for c in counts if c]
    n = sum(counts)
    products = [f"sku-{i:05d}" for i in range(len(counts))]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    product_of = np.repeat(np.arange(len(counts)), counts)

    emb = np.lib.format.open_memmap(tmp_path / "emb.npy", "w+", np.float32, (n, dim))
    thumbs = np.lib.format.open_memmap(tmp_path / "thumbs.npy", "w+", np.float32, (n, 256))
    for s in range(0, n, 10_000):
        emb[s:s + 10_000] = _normalise(rng.standard_normal((min(10_000, n - s), dim)))
        thumbs[s:s + 10_000] = _normalise(rng.standard_normal((min(10_000, n - s), 256)))
    # Within-product duplicates must stay out (planted first: the pairs below overwrite rows).
    for p in np.flatnonzero(np.asarray(counts) >= 2)[:5]:
        thumbs[starts[p] + 1] = thumbs[starts[p]]
    planted = set()
    rows = rng.choice(n, size=24, replace=False)
    for i, (a, b) in enumerate(zip(rows[0::2], rows[1::2], strict=True)):
        a, b = sorted((int(a), int(b)))
        if product_of[a] == product_of[b]:
            continue
        if i % 2:  # pixel duplicate
            thumbs[b] = _normalise(thumbs[a] + 0.01 * rng.standard_normal(256).astype(np.float32) / 16)
        else:  # embedding duplicate only
            emb[b] = _normalise(emb[a] + 0.01 * rng.standard_normal(dim).astype(np.float32) / 8)
        planted.add((products[product_of[a]], products[product_of[b]]))
    emb.flush()
    thumbs.flush()
    del emb, thumbs
    emb = np.load(tmp_path / "emb.npy", mmap_mode="r")
    thumbs = np.load(tmp_path / "thumbs.npy", mmap_mode="r")
    assert len(planted) >= 10

    tracemalloc.start()
    try:
        started = time.perf_counter()
        got = find_duplicates(products, counts, emb, thumbs, 0.97, progress=False)
        seconds = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"\n50k images: {seconds:.1f} s, traced peak {peak / 2**20:.0f} MiB")
    assert peak < 2**30
    assert {tuple(e["products"]) for e in got} == planted
    assert all(e["image_pairs"] == 1 for e in got)
