"""How the search backends scale: 100k and 1M products, 5 images each, on this machine.

    python bench/scale.py [--sizes 100k,1m] [--datasets clip-like,sample]
                          [--backends exact,hnsw,ivf-pq,flat-fp16,milvus] [--queries 300]
                          [--out /tmp/scale-bench] [--keep] [--http-sizes 100k] [--memory-sizes 100k,1m]
                          [--filter-queries 300] [--no-filtered]

For every dataset and size it writes an index in the service's format (search/index_format.py: meta.json +
a gen-*/ folder of .npy files, written in chunks so the generator's own memory stays small), then
for each backend reports:

  build    time to build the approximate index (FAISS `build_ann`) or to publish to Milvus Lite
           (`search.publish.publish`), and its size on disk. Every backend also needs the local index
           arrays (ids, names, BM25, attributes, image rows): the "x exact" column compares what each
           backend adds with the product matrix the exact backend scans.
  latency  p50/p95 of one query through `search.searcher.Searcher` (n=10, lexical (BM25) weight 0 and
           the service default 0.3, weighted fusion) with a FIXED query vector: the text is mapped to a precomputed
           vector by a stand-in embedder, so the CLIP text tower is not in these timings (its own
           cost is printed separately, and it is in the HTTP timings).
           HTTP: gunicorn with the shipped docker/gunicorn.conf.py, 2 workers x 2 threads, random-
           weight ViT-B-32 embedding each (uncached) query, one client, sequential requests.
  memory   RSS and PSS of each of the 2 gunicorn workers (/proc/PID/smaps_rollup, as
           bench/memory.py), after traffic from 4 clients touched the index in both workers.
           For sizes without a catalog of symlinks (1M: 5M files) the workers run the same app with
           the start-up image sample off (SEARCH_STARTUP_IMAGE_SAMPLE=0: the folder is checked, no image).
  recall   recall@10 against the exact backend over the same queries (visual score, and the
           fused score with lexical weight 0.3).
  filtered each backend's `store.top(q, 10, product_filter)` under three filters on the synthetic
           attributes (index format v3: `attr.<i>.*` columns written by AttributeColumns.arrays):
               category = c000      ~1 % of products (100 categories, uniform): the selective one
               in_stock = true      ~50 %: the broad one
               price in [20, 40)    ~14 % (prices uniform 5..150): a numeric range
           p50/p95 ms, recall@10 against the exact filtered answer (numpy over the filter's mask),
           the ratio to the same backend's unfiltered p50 (measured in the same loop), and the same
           through `Searcher.rank` with the default fusion (weighted, lexical weight 0.3), its
           recall against the exact fusion (ExactStore); the attributes are independent of the
           vectors (a random 1 % of the catalog, the hard case for a graph walk). Goals: FAISS
           filtered p50 <= 2x its unfiltered p50 at recall@10 >= 0.95; exact filtered no slower
           than unfiltered. The lexical match counts of the query texts are printed too: past
           searcher.LEXICAL_LIMIT matches an approximate backend's weighted fusion is approximate.

FAISS kinds are tuned on a grid (hnsw: M x efSearch x oversample; ivf-pq: nprobe x oversample;
flat-fp16: oversample); the grid is printed as a curve, and the fastest point with recall@10 >= 0.95
(lexical weight 0) is then measured in full and over HTTP. Every table also shows ratios against the
exact backend measured in the same run. Load averages are printed with the timings: the machine
has 2 cores and other work on it moves the numbers.

Datasets
--------
clip-like  synthetic vectors shaped like real CLIP image embeddings (ViT-B-32, 512 dims), which are
           anisotropic: catalog images share a strong common direction (cosine between two
           unrelated images ~0.4-0.6), neighbours within a category reach 0.8-0.95, and a text
           query scores its best images at only ~0.2-0.35 (the "modality gap"). Near-orthogonal
           vectors (isotropic noise around random centres: mean cosine 0.06) make every ANN look
           bad (HNSW recall@10 0.37) and are not what the service sees. Per product:

              v = a*mu + b*c_k + g*U_k z + h*n_p           (a=0.70, b=0.50, g=0.40, h=0.30)

           mu      one shared unit "image" direction (the common component of all embeddings);
           c_k     the centre of the product's category k: 300 categories (15 colours x 20 garment
                   types, which also give the product's name words), popularity ~ rank^-0.8;
           U_k z   the category's own low-rank variation (cut, pattern...): U_k an orthonormal
                   basis of 8 directions per category, z ~ N(0, diag(s_j^2)), s_j ~ 1/sqrt(j),
                   sum s_j^2 = 1;
           n_p     a product-specific isotropic offset (N(0, I/512), norm ~1).
           Its 5 images are v + e*n_i (e=0.35, fresh isotropic noise: different photos of the same
           garment), each normalised; the product row is their element-wise max, re-normalised
           (the indexer's "max" pooling).
           A query ("text-like"): q = normalise(0.20*mu + 0.55*t + 0.22*c_k + 0.25*U_k u + 0.72*n_q)
           with t one shared "text" direction (the modality gap: text vectors sit apart from the
           image cone), k a category drawn by popularity, u a unit direction in its attribute
           subspace (what the words ask for) and n_q isotropic noise. Its text (for the BM25
           score) is "<colour> <garment> <detail> <i>"; a product's text (its display name) is
           "<colour> <garment> <detail> <detail>" and its category attribute (cNNN, a word no query
           has), and its key (folder name) "<row>-<colour>-<garment>-<detail>-<detail>". The measured statistics are printed:
           mean pairwise cosine, nearest-neighbour cosine, query-to-top-1 cosine, top-1/top-10 gap.
sample     the real sample index's image vectors (`python -m search.index build --catalog
           ../shared/data/catalog --out /tmp/sample-index` with CLIP_MODEL=ViT-B-32
           CLIP_PRETRAINED= and oracle U2NET_HOME models) replicated with noise: each synthetic
           product picks a sample product and a second one, mixes their images (weight t ~
           U(0, 0.5) on the second, images taken in turn to make 5), adds a product offset (0.15 x
           N(0, I/512)) and image noise (0.05 x N(0, I/512)), normalises and max-pools. Queries are
           real texts (the dev queries and 2-3 word combinations of catalog name words) embedded by
           the same model. CAUTION: that model has RANDOM weights (no pretrained download here), so
           these vectors have the real architecture's geometry (very anisotropic: two unrelated
           images at cosine ~0.8, variance concentrated in a few directions) but no semantics: text
           and images are unrelated, and the ranking is not a relevance ranking. The set is a second
           geometry to check recall and timings on, not a quality measure.

Data and the approximate indexes are written under --out (never in the repository); --keep reuses
them when the generator's parameters match (an index is ~12 GB at 1M products: 10 GB of image
rows, 2 GB of product rows). Traffic goes only to 127.0.0.1.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

DIM = 512
PER_PRODUCT = 5
CHUNK = 16384  # products generated and written at a time (~170 MB of image rows)
K_RECALL = 10
TARGET_RECALL = 0.95
BACKENDS = ("exact", "exact-fp16", "hnsw", "ivf-pq", "flat-fp16", "ivf-flat", "milvus")
DATASETS = ("clip-like", "sample")
COLOURS = ["black", "white", "red", "navy", "green", "beige", "pink", "grey", "brown", "blue", "yellow",
           "purple", "orange", "khaki", "cream"]
GARMENTS = ["shirt", "dress", "skirt", "trousers", "jacket", "coat", "blouse", "hoodie", "cardigan",
            "jumpsuit", "vest", "tunic", "jeans", "shorts", "sweater", "blazer", "parka", "kimono",
            "poncho", "overalls"]
DETAILS = ["floral", "striped", "linen", "cotton", "satin", "denim", "oversized", "slim", "long", "short",
           "sleeve", "collar", "pleated", "ribbed", "knit", "silk", "wool", "velvet", "lace", "checked",
           "dotted", "hooded", "zipped", "belted", "cropped", "wrap", "flared", "fitted", "printed", "plain"]

T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[{(time.monotonic() - T0) / 60:6.1f} min] {message}", file=sys.stderr, flush=True)


def size_of(label: str) -> int:
    label = label.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(label[-1:], 1)
    return int(float(label[:-1] if scale > 1 else label) * scale)


def size_label(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def load_avg() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


# --------------------------------------------------------------------------- generators


@dataclasses.dataclass(frozen=True)
class ClipLikeParams:
    categories: int = 300
    rank: int = 8
    zipf: float = 0.8
    mean_w: float = 0.70  # a: shared image direction
    category_w: float = 0.50  # b: category centre
    attribute_w: float = 0.40  # g: category's low-rank variation
    product_w: float = 0.30  # h: product-specific isotropic offset
    image_noise: float = 0.35  # e: per-image isotropic noise
    q_mean_w: float = 0.20
    q_text_w: float = 0.55
    q_category_w: float = 0.22
    q_attribute_w: float = 0.25
    q_noise_w: float = 0.72
    seed: int = 0


class ClipLike:
    """The clip-like generator (see the module docstring)."""

    name = "clip-like"

    def __init__(self, params: ClipLikeParams = ClipLikeParams(), dim: int = DIM):
        self.p, self.dim = params, dim
        rng = np.random.default_rng([params.seed, 0])
        k, r = params.categories, params.rank
        self.mu = unit(rng.standard_normal(dim))
        self.text = unit(rng.standard_normal(dim))
        self.centres = unit(rng.standard_normal((k, dim)))
        self.basis = np.linalg.qr(rng.standard_normal((k, dim, r)))[0].transpose(0, 2, 1).astype(np.float32)  # k,r,d
        s = 1.0 / np.sqrt(np.arange(1, r + 1))
        self.spread = (s / np.sqrt((s ** 2).sum())).astype(np.float32)
        pop = 1.0 / np.arange(1, k + 1) ** params.zipf
        self.popularity = pop / pop.sum()

    def signature(self) -> dict:
        return {"generator": self.name, **dataclasses.asdict(self.p)}

    def categories(self, n: int) -> np.ndarray:
        return np.random.default_rng([self.p.seed, 2]).choice(self.p.categories, n, p=self.popularity)

    def names(self, n: int, categories: np.ndarray) -> list[str]:
        rng = np.random.default_rng([self.p.seed, 3])
        details = rng.integers(0, len(DETAILS), (n, 2))
        return [f"{i:07d}-{COLOURS[k % len(COLOURS)]}-{GARMENTS[(k // len(COLOURS)) % len(GARMENTS)]}-"
                f"{DETAILS[a]}-{DETAILS[b]}" for i, (k, (a, b)) in enumerate(zip(categories, details, strict=True))]

    def _low_rank(self, cats: np.ndarray, z: np.ndarray) -> np.ndarray:
        out = np.empty((len(cats), self.dim), np.float32)
        for k in np.unique(cats):
            rows = cats == k
            out[rows] = z[rows] @ self.basis[k]
        return out

    def products(self, first: int, cats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Image rows [n, 5, dim] and pooled rows [n, dim] of products first..first+len(cats)."""
        p, d = self.p, self.dim
        rng = np.random.default_rng([p.seed, 1, first])
        n = len(cats)
        z = rng.standard_normal((n, p.rank), np.float32) * self.spread
        v = (p.mean_w * self.mu + p.category_w * self.centres[cats] + p.attribute_w * self._low_rank(cats, z)
             + p.product_w / math.sqrt(d) * rng.standard_normal((n, d), np.float32))
        images = v[:, None, :] + (p.image_noise / math.sqrt(d)) * rng.standard_normal((n, PER_PRODUCT, d), np.float32)
        images = unit(images)
        return images, unit(images.max(axis=1))

    def queries(self, count: int) -> tuple[list[str], np.ndarray, np.ndarray]:
        p, d = self.p, self.dim
        rng = np.random.default_rng([p.seed, 4])
        cats = rng.choice(p.categories, count, p=self.popularity)
        u = rng.standard_normal((count, p.rank)).astype(np.float32) * self.spread
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        q = (p.q_mean_w * self.mu + p.q_text_w * self.text + p.q_category_w * self.centres[cats]
             + p.q_attribute_w * self._low_rank(cats, u) + p.q_noise_w / math.sqrt(d) * rng.standard_normal((count, d)))
        details = rng.integers(0, len(DETAILS), count)
        texts = [f"{COLOURS[k % len(COLOURS)]} {GARMENTS[(k // len(COLOURS)) % len(GARMENTS)]} {DETAILS[x]} {i}"
                 for i, (k, x) in enumerate(zip(cats, details, strict=True))]
        return texts, unit(q), cats


@dataclasses.dataclass(frozen=True)
class SampleParams:
    mix_max: float = 0.5
    product_noise: float = 0.15
    image_noise: float = 0.05
    seed: int = 0


class SampleReplica:
    """The real sample index's image vectors replicated with noise (see the module docstring)."""

    name = "sample"

    def __init__(self, sample_index: Path, params: SampleParams = SampleParams()):
        import re

        from search.index_format import Index

        self.p = params
        index = Index.load(sample_index)
        self.source = sample_index
        self.identity = index.meta["embedder"]
        word = re.compile(r"[^\W_]+")  # letters and digits (the catalog's folder names' words)
        self.words = [[w for w in word.findall(index.product_name(i).lower()) if len(w) > 1]
                      for i in range(len(index.products))]
        self.vocabulary = sorted({w for ws in self.words for w in ws})
        images = np.asarray(index.image_embeddings, np.float32)
        self.images = np.stack([images[[r.start + j % len(r) for j in range(PER_PRODUCT)]]
                                for r in (index.image_rows(p) for p in range(len(index.products)))])  # P,5,d
        self.dim = images.shape[1]
        self.fingerprint = index.meta.get("catalog_fingerprint")

    def signature(self) -> dict:
        return {"generator": self.name, "source": str(self.source), "source_fingerprint": self.fingerprint,
                **dataclasses.asdict(self.p)}

    def categories(self, n: int) -> np.ndarray:
        return np.random.default_rng([self.p.seed, 2]).integers(0, len(self.images), n)

    def names(self, n: int, categories: np.ndarray) -> list[str]:
        return [f"{i:07d}-{'-'.join(self.words[k])}" for i, k in enumerate(categories)]

    def products(self, first: int, cats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p, d = self.p, self.dim
        rng = np.random.default_rng([p.seed, 1, first])
        n = len(cats)
        other = rng.integers(0, len(self.images), n)
        t = rng.uniform(0, p.mix_max, (n, 1, 1)).astype(np.float32)
        offset = (p.product_noise / math.sqrt(d)) * rng.standard_normal((n, 1, d), np.float32)
        noise = (p.image_noise / math.sqrt(d)) * rng.standard_normal((n, PER_PRODUCT, d), np.float32)
        images = unit((1 - t) * self.images[cats] + t * self.images[other] + offset + noise)
        return images, unit(images.max(axis=1))

    def queries(self, count: int) -> tuple[list[str], np.ndarray, None]:
        from search.config import ClipSettings
        from search.embedder import ClipEmbedder

        dev = REPO.parent / "shared" / "data" / "queries_dev.tsv"
        base = [line.split("\t")[0] for line in dev.read_text().splitlines()[1:] if line.strip()] if dev.is_file() else []
        rng = np.random.default_rng([self.p.seed, 4])
        while len(base) < count:
            base.append(" ".join(rng.choice(self.vocabulary, rng.integers(2, 4), replace=False)))
        texts = [f"{t} {i}" for i, t in enumerate(base[:count])]
        embedder = ClipEmbedder(ClipSettings(model="ViT-B-32", pretrained="", threads=2), text_only=True)
        if embedder.identity.get("probe") != self.identity.get("probe"):
            log("warning: the query embedder's probe differs from the sample index's")
        vectors, times = [], []
        for text in texts:
            started = time.perf_counter()
            vectors.append(embedder.encode_query_tokens(embedder.query_tokens(text)))
            times.append(time.perf_counter() - started)
        self.embed_ms = (float(np.percentile(times, 50) * 1000), float(np.percentile(times, 95) * 1000))
        return texts, unit(np.stack(vectors)), None


# --------------------------------------------------------------------------- writing an index


def _write_rows(path: Path, shape: tuple, dtype) -> tuple[int, int]:
    """Create an .npy file of that shape (sparse: nothing written yet); its data offset and row bytes."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    offset = array.offset
    del array
    return offset, int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize


ATTRIBUTE_TYPES = {"category": "string", "in_stock": "boolean", "price": "number"}
CATEGORIES = 100  # the category attribute's values, uniform: one value is ~1 % of the products
FILTERS = {  # the filtered-queries table: name -> a request's `filter`
    "category (~1%)": {"category": "c000"},
    "in_stock (~50%)": {"in_stock": True},
    "price 20-40 (~14%)": {"price": {"gte": 20, "lt": 40}},
}


def synthetic_attributes(n: int, seed: int) -> dict[str, np.ndarray]:
    """Per product: category cNNN (CATEGORIES values, uniform, independent of the vectors), in_stock
    (true for half), price (uniform 5..150, two decimals); drawn vectorised."""
    rng = np.random.default_rng([seed, 7])
    return {"category": rng.integers(0, CATEGORIES, n), "in_stock": rng.random(n) < 0.5,
            "price": np.round(rng.uniform(5.0, 150.0, n), 2)}


def display_name(key: str) -> str:
    """A product's display name (and BM25 text): its key's words without the row number."""
    return key.split("-", 1)[1].replace("-", " ")


def product_arrays(keys: list[str], attributes: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[dict], dict]:
    """The format-v3 product arrays (ids, names, records, BM25, attribute columns) through the
    library's own helpers, as write_index makes them from each product's record: (arrays, the
    attributes list for meta.json, seconds per step)."""
    from search.filters import AttributeColumns
    from search.index_format import filterable_values, product_text
    from search.lexical import LexicalIndex
    from search.string_table import StringTable

    seconds = {}
    started = time.perf_counter()
    categories = [f"c{c:03d}" for c in range(CATEGORIES)]
    records = [{"id": key, "name": display_name(key), "category": categories[c],
                "attributes": {"in_stock": stock, "price": price}}
               for key, c, stock, price in zip(keys, attributes["category"].tolist(), attributes["in_stock"].tolist(),
                                               attributes["price"].tolist(), strict=True)]
    seconds["records"] = time.perf_counter() - started
    started = time.perf_counter()
    arrays = dict(LexicalIndex.arrays([product_text(r) for r in records], "english"))
    seconds["lexical"] = time.perf_counter() - started
    started = time.perf_counter()
    # The per-product dict path of AttributeColumns.arrays: ~4 s for 3 fields at 1M products on
    # a 2-core VM, so no hand-made columns (the layout stays the library's).
    fields, columns = AttributeColumns.arrays(ATTRIBUTE_TYPES, [filterable_values(r) for r in records])
    arrays.update(columns)
    seconds["attributes"] = time.perf_counter() - started
    started = time.perf_counter()
    for prefix, strings in (("product_ids", keys), ("product_names", [r["name"] for r in records]),
                            ("product_records", [json.dumps(r, ensure_ascii=False, sort_keys=True) for r in records])):
        arrays[f"{prefix}.utf8"], arrays[f"{prefix}.offsets"] = StringTable.arrays(strings)
    seconds["strings"] = time.perf_counter() - started
    return arrays, fields, {k: round(v, 1) for k, v in seconds.items()}


def write_generated_index(out: Path, generator, n: int, identity: dict, catalog: Path, seed: int = 0) -> dict:
    """Write an index of n products x 5 images in the format search.index_format.write_index writes (same
    files, keys sorted and unique), generating and writing CHUNK products at a time through file
    writes, not a memory map, so the process holds one chunk (not 12 GB of dirty mapped pages).
    The product arrays (ids, names, records, BM25, attributes) come from the library's helpers."""
    from search.index_format import FORMAT_VERSION, new_generation_name, write_meta
    from search.index_guard import READERS_FILE

    out.mkdir(parents=True, exist_ok=True)
    generation = new_generation_name()
    folder = out / generation
    folder.mkdir()
    images_n = n * PER_PRODUCT
    cats = generator.categories(n)
    names = generator.names(n, cats)
    if names != sorted(names) or len(set(names)) != n:
        raise AssertionError("product names must be unique and sorted")
    started = time.perf_counter()
    img_off, img_row = _write_rows(folder / "image_embeddings.npy", (images_n, generator.dim), np.float32)
    prod_off, prod_row = _write_rows(folder / "product_embeddings.npy", (n, generator.dim), np.float32)
    with open(folder / "image_embeddings.npy", "r+b") as fi, open(folder / "product_embeddings.npy", "r+b") as fp:
        for first in range(0, n, CHUNK):
            images, pooled = generator.products(first, cats[first:first + CHUNK])
            fi.seek(img_off + first * PER_PRODUCT * img_row)
            fi.write(np.ascontiguousarray(images, np.float32).tobytes())
            fp.seek(prod_off + first * prod_row)
            fp.write(np.ascontiguousarray(pooled, np.float32).tobytes())
            if first // CHUNK % 16 == 0:
                log(f"  generated {first + len(pooled):,}/{n:,} products")
        for fh in (fi, fp):
            fh.flush()
            os.fsync(fh.fileno())
    vectors_s = time.perf_counter() - started
    product, fields, product_s = product_arrays(names, synthetic_attributes(n, seed))
    log(f"  product arrays (ids, names, records, BM25, attributes): {product_s} s")
    arrays = {"product_starts": np.arange(n + 1, dtype=np.int64) * PER_PRODUCT,
              "image_sources": np.zeros(images_n, np.uint8), **product}
    files = b"".join(f"{j}.jpg".encode() for j in range(PER_PRODUCT))  # every product: 0.jpg .. 4.jpg
    arrays["image_files.utf8"] = np.frombuffer(files * n, np.uint8)
    arrays["image_files.offsets"] = (np.arange(images_n + 1, dtype=np.int64) * 5)
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array, allow_pickle=False)
    _write_rows(folder / "image_sha256.npy", (images_n, 32), np.uint8)  # builder-only: sparse zeros
    _write_rows(folder / "thumbs.npy", (images_n, 256), np.float32)
    (folder / READERS_FILE).touch()  # as write_index: serving workers hold the generation through it
    meta = {"format_version": FORMAT_VERSION, "generation": generation, "catalog_kind": "folders", "embedder": identity,
            "garment_pipeline": {}, "embed_dim": generator.dim, "pooling": "max", "catalog_dir": str(catalog),
            "catalog_fingerprint": "synthetic", "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "skipped": [], "synthetic": generator.signature(), "attributes": fields,
            "lexical": {"language": "english"}, "products": n, "images": images_n}
    write_meta(out, meta)
    return {"vectors_s": round(vectors_s, 1), "product_arrays_s": product_s, "total_s": round(time.perf_counter() - started, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def write_catalog(catalog: Path, index) -> float:
    """A folder per product, every image a symlink to one small JPEG (the start-up check stats them)."""
    from PIL import Image

    started = time.perf_counter()
    tmp = catalog.with_name(catalog.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    photo = catalog.parent / "photo.jpg"
    Image.new("RGB", (64, 64), (120, 40, 40)).save(photo)
    for p in range(len(index.products)):
        folder = tmp / index.products[p]
        folder.mkdir()
        for row in index.image_rows(p):
            os.symlink(photo, folder / index.image_files[row])
    tmp.rename(catalog)
    return time.perf_counter() - started


def identity_of(out: Path, sample_index: Path) -> dict:
    """The embedder identity the service computes for random-weight ViT-B-32 (index.check_compatible)."""
    cached = out / "identity.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    if (sample_index / "meta.json").is_file():
        identity = json.loads((sample_index / "meta.json").read_text())["embedder"]
    else:
        from search.config import ClipSettings
        from search.embedder import ClipEmbedder

        identity = ClipEmbedder(ClipSettings(model="ViT-B-32", pretrained=""), text_only=True).identity
    cached.write_text(json.dumps(identity))
    return identity


# --------------------------------------------------------------------------- statistics


def top_k_batch(matrix: np.ndarray, queries: np.ndarray, k: int, block: int = 131072):
    """Top-k scores (descending) and rows of each query over a memory-mapped matrix, a block at a time."""
    best = np.full((len(queries), k), -np.inf, np.float32)
    rows = np.zeros((len(queries), k), np.int64)
    for first in range(0, matrix.shape[0], block):
        scores = np.concatenate([best, queries @ np.asarray(matrix[first:first + block]).T], axis=1)
        ids = np.concatenate([rows, np.broadcast_to(np.arange(first, first + scores.shape[1] - k), (len(queries), scores.shape[1] - k))], axis=1)
        keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        best, rows = np.take_along_axis(scores, keep, 1), np.take_along_axis(ids, keep, 1)
        order = np.argsort(-best, axis=1)
        best, rows = np.take_along_axis(best, order, 1), np.take_along_axis(rows, order, 1)
    return best, rows


def top_k_masked(matrix: np.ndarray, queries: np.ndarray, k: int, mask: np.ndarray, block: int = 131072):
    """The exact filtered answer: top-k rows of each query among the rows `mask` passes (plain
    numpy over the memory-mapped matrix, a block at a time; not the code the backends run)."""
    best = np.full((len(queries), k), -np.inf, np.float32)
    rows = np.full((len(queries), k), -1, np.int64)
    for first in range(0, matrix.shape[0], block):
        inside = np.flatnonzero(mask[first:first + block])
        if not len(inside):
            continue
        scores = np.concatenate([best, queries @ np.asarray(matrix[first:first + block])[inside].T], axis=1)
        ids = np.concatenate([rows, np.broadcast_to(first + inside, (len(queries), len(inside)))], axis=1)
        keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        best, rows = np.take_along_axis(scores, keep, 1), np.take_along_axis(ids, keep, 1)
    order = np.argsort(-best, axis=1)
    return [[int(r) for r in line if r >= 0] for line in np.take_along_axis(rows, order, 1)]


def data_stats(index, queries: np.ndarray, qcats, cats) -> dict:
    rng = np.random.default_rng(5)
    products, images = index.product_embeddings, index.image_embeddings
    n, m = products.shape[0], images.shape[0]

    def pair_cos(matrix, count, pairs=20000):
        i, j = np.sort(rng.integers(0, count, pairs)), np.sort(rng.integers(0, count, pairs))
        a, b = np.asarray(matrix[i]), np.asarray(matrix[rng.permutation(j)])
        return float((a * b).sum(1).mean())

    some = np.sort(rng.choice(n, min(n, 2000), replace=False))
    same = np.asarray(images[np.concatenate([some * PER_PRODUCT, some * PER_PRODUCT + 1])]).reshape(2, len(some), -1)
    probe = np.asarray(products[some[:200]])
    nn = top_k_batch(products, probe, 11)[0][:, 1:]  # drop itself
    top, top_rows = top_k_batch(products, queries, 10)
    sample = np.asarray(products[np.sort(rng.choice(n, min(n, 20000), replace=False))])
    stats = {"product_pair_cos": pair_cos(products, n), "image_pair_cos": pair_cos(images, m),
             "same_product_image_cos": float((same[0] * same[1]).sum(1).mean()),
             "nn1_cos": float(nn[:, 0].mean()), "nn10_cos": float(nn[:, 9].mean()),
             "query_top1": float(top[:, 0].mean()), "query_top10": float(top[:, 9].mean()),
             "query_gap": float((top[:, 0] - top[:, 9]).mean()),
             "query_median": float(np.median(queries @ sample.T, axis=1).mean())}
    if qcats is not None and cats is not None:
        stats["top10_in_category"] = float((cats[top_rows] == np.asarray(qcats)[:, None]).mean())
    return stats


# --------------------------------------------------------------------------- measuring


class FixedQueries:
    """Stands in for the CLIP text encoder: each query text maps to its precomputed vector, so the
    Searcher timings are the search alone (the embedding is measured apart and is in HTTP)."""

    def __init__(self, texts, vectors):
        self.vectors = dict(zip(texts, vectors, strict=True))

    def query_tokens(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode(), np.uint8)

    def encode_query_tokens(self, ids: np.ndarray) -> np.ndarray:
        return self.vectors[ids.tobytes().decode()]


def through_searcher(index, store, texts, vectors, weight: float, warm: int = 10) -> dict:
    from search.searcher import Fusion, Searcher

    searcher = Searcher(index, FixedQueries(texts, vectors), store=store, fusion=Fusion(weight=weight), cache_size=0)
    for text in texts[:warm]:
        searcher.search(text, K_RECALL)
    latencies, rows = [], []
    load = load_avg()
    for text in texts:
        started = time.perf_counter()
        results = searcher.search(text, K_RECALL)
        latencies.append(time.perf_counter() - started)
        rows.append([r.row for r in results])
    return {"p50_ms": float(np.percentile(latencies, 50) * 1000), "p95_ms": float(np.percentile(latencies, 95) * 1000),
            "rows": rows, "load": load}


def recall(found: list[list[int]], truth: list[list[int]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / max(1, len(t)) for f, t in zip(found, truth, strict=True)]))


def file_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20 if path.exists() else 0.0


def disk_mb(path: Path) -> float:
    """Blocks actually used (sparse files count what they hold)."""
    paths = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()] if path.exists() else []
    return sum(p.stat().st_blocks * 512 for p in paths) / 2**20


# --------------------------------------------------------------------------- HTTP and memory


def smaps_of(pid: int) -> dict:
    from bench.memory import smaps_rollup

    try:
        return smaps_rollup(pid)
    except OSError:
        return {}


def serve_and_measure(app: str, env: dict, texts: list[str], generation: Path, clients: int = 4,
                      extra_pids: tuple = ()) -> dict:
    import requests

    from bench.load import start, worker_pids
    from bench.memory import mapped_file_mb, smaps_rollup

    env = {"CLIP_MODEL": "ViT-B-32", "CLIP_PRETRAINED": "", "TORCH_THREADS": "1", "GUNICORN_LOG_LEVEL": "warning", **env}
    started = time.perf_counter()
    proc, base = start(app, env, 2, 2)
    ready_s = time.perf_counter() - started
    try:
        described = requests.get(base + "/readyz", timeout=10).json()
        local = threading.local()

        def post(text: str) -> float:
            local.http = getattr(local, "http", None) or requests.Session()
            t = time.perf_counter()
            response = local.http.post(base + "/", json={"text": text, "n": K_RECALL}, timeout=120)
            elapsed = time.perf_counter() - t
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
            return elapsed

        with ThreadPoolExecutor(clients) as pool:  # both workers serve and touch the index
            list(pool.map(post, [f"warm {t}" for t in texts[:max(8 * clients, 40)]]))
        load = load_avg()
        latencies = [post(t) for t in texts]
        cached = [post(texts[0]) for _ in range(100)]  # the floor: HTTP, Flask and scoring, no encoding
        workers = []
        for pid in worker_pids(proc.pid):
            m = smaps_rollup(pid)
            index_rss, index_pss = mapped_file_mb(pid, str(generation))
            with open(f"/proc/{pid}/maps") as fh:
                libtorch = "libtorch" in fh.read()
            workers.append({"pid": pid, "rss": m["Rss"], "pss": m["Pss"], "anon": m.get("Anonymous", 0),
                            "index_rss": index_rss, "index_pss": index_pss, "libtorch": libtorch})
        others = []
        for pid in extra_pids:
            with contextlib.suppress(OSError):
                others.append({"pid": pid, **{k: smaps_rollup(pid)[k] for k in ("Rss", "Pss")}})
        return {"p50_ms": float(np.percentile(latencies, 50) * 1000), "p95_ms": float(np.percentile(latencies, 95) * 1000),
                "cached_p50_ms": float(np.percentile(cached, 50) * 1000),
                "ready_s": ready_s, "workers": workers, "backend": described.get("backend") or described,
                "load": load, "servers": others}
    finally:
        proc.terminate()
        proc.wait(60)


# --------------------------------------------------------------------------- the benchmark


class Bench:
    def __init__(self, args):
        self.args = args
        self.out = args.out
        self.results_path = self.out / "results.json"
        self.results = json.loads(self.results_path.read_text()) if args.keep and self.results_path.is_file() else {}
        self.deadline = T0 + args.budget_min * 60
        self.filter_ctx = None  # the filters and their exact answers of the size being run

    def save(self) -> None:
        self.results_path.write_text(json.dumps(self.results, indent=1, default=float))

    def left_min(self) -> float:
        return (self.deadline - time.monotonic()) / 60

    def section(self, dataset: str, n: int) -> dict:
        return self.results.setdefault(f"{dataset}/{size_label(n)}", {})

    # ----------------------------------------------------------------- data

    def dataset(self, name: str, n: int):
        from search.index_format import Index

        a = self.args
        folder = self.out / f"{name}-{size_label(n)}"
        index_dir = folder / "index"
        generator = ClipLike(ClipLikeParams(seed=a.seed)) if name == "clip-like" else SampleReplica(
            a.sample_index, SampleParams(seed=a.seed))
        meta_path = index_dir / "meta.json"
        from search.index_format import FORMAT_VERSION

        held = json.loads(meta_path.read_text()) if a.keep and meta_path.is_file() else {}
        reuse = held.get("synthetic") == json.loads(json.dumps(generator.signature())) and held.get("products") == n \
            and held.get("format_version") == FORMAT_VERSION and bool(held.get("attributes"))
        sec = self.section(name, n)
        if not reuse:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            identity = generator.identity if name == "sample" else identity_of(self.out, a.sample_index)
            log(f"{name} {size_label(n)}: writing {n:,} products x {PER_PRODUCT} images to {index_dir}")
            sec["generate"] = write_generated_index(index_dir, generator, n, identity, folder / "catalog", a.seed)
            log(f"  written: {sec['generate']}")
            for stale in ("stats", "queries"):
                sec.pop(stale, None)
        else:
            log(f"{name} {size_label(n)}: reusing {index_dir}")
        queries_path = folder / f"queries-{a.queries}.npz"
        if queries_path.is_file():
            saved = np.load(queries_path, allow_pickle=False)
            texts, vectors = [str(t) for t in saved["texts"]], saved["vectors"]
            qcats = saved["cats"] if "cats" in saved else None
        else:
            texts, vectors, qcats = generator.queries(a.queries)
            extra = {"cats": qcats} if qcats is not None else {}
            np.savez(queries_path, texts=np.array(texts), vectors=vectors, **extra)
            if hasattr(generator, "embed_ms"):
                sec["embed_ms"] = generator.embed_ms
        index = Index.load(index_dir)
        if "stats" not in sec:
            log("  data statistics")
            sec["stats"] = data_stats(index, vectors, qcats, generator.categories(n) if qcats is not None else None)
            sec["arrays_mb"] = {p.name: file_mb(p) for p in (index_dir / index.meta["generation"]).glob("*.npy")
                                if p.stem not in ("thumbs", "image_sha256", "image_sources")}  # serving arrays
        self.save()
        return folder, index, texts, vectors, qcats

    # ----------------------------------------------------------------- backends

    def ann_entry(self, folder: Path, index, kind: str, params: dict, tag: str) -> dict:
        """Build (or reuse with --keep) the FAISS index `tag`; its meta entry, with the build time."""
        from search.index_format import update_meta
        from search.indexing.ann import build_ann

        registry_path = folder / "ann.json"
        registry = json.loads(registry_path.read_text()) if registry_path.is_file() else {}
        generation = index.directory / index.meta["generation"]
        held = registry.get(tag)
        # Reused with --keep, and always within this run (every grid point of a tag shares one build).
        fresh = held and held.get("generation") == index.meta["generation"] and held.get("run") == self.results["run"]["started"]
        if (self.args.keep or fresh) and held and (generation / held["file"]).is_file() and held.get("requested") == params:
            return held
        log(f"  building faiss {tag} ({params}), load {load_avg()}")
        started = time.perf_counter()
        entry = build_ann(index.directory, kind, params, progress=False)
        wall = time.perf_counter() - started
        final = f"ann-{tag}.faiss"
        os.replace(generation / entry["file"], generation / final)
        entry = {**entry, "file": final, "wall_seconds": round(wall, 1), "requested": params,
                 "generation": index.meta["generation"], "run": self.results["run"]["started"]}
        update_meta(index.directory, ann=entry)
        registry[tag] = entry
        registry_path.write_text(json.dumps(registry, indent=1))
        log(f"  built {tag} in {wall:.0f} s, {entry['bytes'] / 2**20:.0f} MB")
        return entry

    @staticmethod
    def store_over(index, entry: dict, **settings):
        """The backend `settings` (BackendSettings fields) name, over `index` with FAISS file `entry`."""
        from search.config import BackendSettings
        from search.vectors import open_store

        return open_store(BackendSettings(**settings), dataclasses.replace(index, meta={**index.meta, "ann": entry}))

    @classmethod
    def faiss_store(cls, index, entry: dict, ef: int = 128, nprobe: int = 32, oversample: int = 4):
        return cls.store_over(index, entry, backend="faiss", faiss_ef_search=ef, faiss_nprobe=nprobe,
                              faiss_oversample=oversample)

    def grid(self, kind: str, n: int) -> list[dict]:
        a = self.args
        if kind == "hnsw":
            ms = a.hnsw_m_large if n >= 500_000 else a.hnsw_m
            return [{"M": m, "ef": ef, "oversample": o} for m in ms for ef in a.ef for o in a.oversample]
        if kind in ("ivf-pq", "ivf-flat"):
            return [{"nprobe": p, "oversample": o} for p in a.nprobe for o in (a.oversample if kind == "ivf-pq" else [4])]
        return [{"oversample": o} for o in (1, 4)]

    def run_size(self, name: str, n: int) -> None:
        from search.vectors.exact import ExactStore

        a = self.args
        folder, index, texts, vectors, _ = self.dataset(name, n)
        sec = self.section(name, n)
        log(f"  exact, load {load_avg()}")
        exact = {}
        for w in (0.0, 0.3):
            exact[w] = through_searcher(index, ExactStore(index), texts, vectors, w)
        truth = {w: exact[w].pop("rows") for w in exact}
        sec["backends"] = {"exact": {"config": "exact (numpy, memory-mapped)", "own_mb": file_mb(
            index.directory / index.meta["generation"] / "product_embeddings.npy"), "build_s": 0.0,
            "w0": {**exact[0.0], "recall": 1.0}, "w03": {**exact[0.3], "recall": 1.0}}}
        sec.setdefault("curve", [])
        sec["curve"] = []
        self.filter_ctx = None if a.no_filtered else self.filter_context(index, texts, vectors, sec)
        self.filtered("exact", ExactStore(index), index, sec, "exact")
        self.save()
        if "exact-fp16" in a.backends:
            try:
                self.exact_fp16(folder, index, texts, vectors, truth, sec)
            except Exception as exc:  # noqa: BLE001 - report it, go on with the other backends
                sec["backends"]["exact-fp16"] = {"skipped": f"failed: {exc!r}"[:500]}
                log(f"  exact-fp16 failed: {exc!r}")
            self.save()
        for kind in [b for b in a.backends if b not in ("exact", "exact-fp16", "milvus")]:
            if self.left_min() < 5:
                sec["backends"][kind] = {"skipped": "time budget (--budget-min) spent"}
                continue
            try:
                self.tune_faiss(folder, index, kind, n, texts, vectors, truth, sec)
            except Exception as exc:  # noqa: BLE001 - report it, go on with the other backends
                sec["backends"][kind] = {"skipped": f"failed: {exc!r}"[:500]}
                log(f"  {kind} failed: {exc!r}")
            self.save()
        if "milvus" in a.backends:
            try:
                self.milvus(folder, index, n, texts, vectors, truth, sec)
            except Exception as exc:  # noqa: BLE001
                sec["backends"]["milvus"] = {"skipped": f"failed: {exc!r}"[:500]}
                log(f"  milvus failed: {exc!r}")
            self.save()
        if n in a.http_sizes or n in a.memory_sizes:
            if name in a.http_datasets:
                self.http(folder, index, n, texts, sec)
                self.save()

    # ----------------------------------------------------------------- filtered queries

    def filter_context(self, index, texts, vectors, sec) -> dict:
        """The FILTERS compiled against the index's columns, the exact filtered answers (numpy over
        each mask) and the exact fusion's answers (Searcher.rank over ExactStore), for the first
        --filter-queries queries; the query texts' lexical match counts go to sec["filtered"]."""
        from search.filters import compile_filter
        from search.searcher import LEXICAL_LIMIT, Fusion, Searcher
        from search.vectors.exact import ExactStore

        count = min(self.args.filter_queries, len(texts))
        texts, vectors = texts[:count], np.asarray(vectors[:count], np.float32)
        log(f"  filtered queries: exact answers of {len(FILTERS)} filters x {count} queries, load {load_avg()}")
        started = time.perf_counter()
        filters = {name: compile_filter(raw, index.attributes) for name, raw in FILTERS.items()}
        exact = Searcher(index, None, store=ExactStore(index), fusion=Fusion(), cache_size=0)
        n = len(index.products)
        ctx = {"texts": texts, "vectors": vectors, "filters": filters, "truth": {}, "fused": {}}
        matched = [index.lexical.matches(t)[0] for t in texts]
        lexical = {}
        for name, pf in [("none", None), *filters.items()]:
            mask = pf.mask if pf is not None else np.ones(n, bool)
            ctx["truth"][name] = top_k_masked(index.product_embeddings, vectors, K_RECALL, mask)
            ctx["fused"][name] = [exact.rank(v, t, K_RECALL, pf).rows.tolist()
                                  for t, v in zip(texts, vectors, strict=True)]
            counts = np.array([np.count_nonzero(mask[rows]) for rows in matched])
            lexical[name] = {"passing": int(mask.sum()), "matches_p50": float(np.median(counts)),
                             "matches_max": int(counts.max()), "over_limit": float((counts > LEXICAL_LIMIT).mean())}
        sec["filtered"] = {"queries": count, "filters": FILTERS, "lexical": lexical, "lexical_limit": LEXICAL_LIMIT,
                           "rows": {}, "truth_s": round(time.perf_counter() - started, 1)}
        log(f"  exact answers in {sec['filtered']['truth_s']:.0f} s; lexical matches {lexical}")
        return ctx

    def filtered(self, label: str, store, index, sec, goal: str | None, limit: int | None = None) -> None:
        """The FILTERED QUERIES rows of one backend: store.top(q, 10, filter) and Searcher.rank with
        the default fusion, unfiltered and under each filter, interleaved per query (same load)."""
        ctx = self.filter_ctx
        if ctx is None:
            return
        from search.searcher import Fusion, Searcher

        try:
            searcher = Searcher(index, None, store=store, fusion=Fusion(), cache_size=0)
            count = min(limit or len(ctx["texts"]), len(ctx["texts"]))
            texts, vectors = ctx["texts"][:count], ctx["vectors"][:count]
            cases = [("none", None), *ctx["filters"].items()]
            for v in vectors[:5]:  # warm: the first reads map the files
                for _, pf in cases:
                    store.top(v, K_RECALL, pf)
            top_s = {name: [] for name, _ in cases}
            rank_s = {name: [] for name, _ in cases}
            found = {name: [] for name, _ in cases}
            fused = {name: [] for name, _ in cases}
            load = load_avg()
            for text, v in zip(texts, vectors, strict=True):
                for name, pf in cases:
                    t0 = time.perf_counter()
                    hits = store.top(v, K_RECALL, pf)
                    t1 = time.perf_counter()
                    ranked = searcher.rank(v, text, K_RECALL, pf)
                    t2 = time.perf_counter()
                    top_s[name].append(t1 - t0)
                    rank_s[name].append(t2 - t1)
                    found[name].append(hits.rows.tolist())
                    fused[name].append(ranked.rows.tolist())
            rows = {}
            for name, _ in cases:
                rows[name] = {"p50_ms": float(np.percentile(top_s[name], 50) * 1000),
                              "p95_ms": float(np.percentile(top_s[name], 95) * 1000),
                              "recall": recall(found[name], ctx["truth"][name][:count]),
                              "rank_p50_ms": float(np.percentile(rank_s[name], 50) * 1000),
                              "rank_p95_ms": float(np.percentile(rank_s[name], 95) * 1000),
                              "rank_recall": recall(fused[name], ctx["fused"][name][:count])}
            sec["filtered"]["rows"][label] = {"goal": goal, "queries": count, "load": load, "cases": rows}
            summary = "; ".join(f"{name}: {r['p50_ms']:.2f} ms r{r['recall']:.3f}" for name, r in rows.items())
            log(f"  filtered {label}: {summary}")
        except Exception as exc:  # noqa: BLE001 - report it, go on
            sec["filtered"]["rows"][label] = {"skipped": f"failed: {exc!r}"[:500]}
            log(f"  filtered {label} failed: {exc!r}")

    def exact_fp16(self, folder, index, texts, vectors, truth, sec) -> None:
        """SEARCH_BACKEND=exact SEARCH_EXACT_DTYPE=float16: its float16 copy is the flat-fp16 file."""
        entry = self.ann_entry(folder, index, "flat-fp16", {}, "flat-fp16")
        store = self.store_over(index, entry, backend="exact", exact_dtype="float16")
        result = {"config": "exact float16 (faiss flat fp16 scan, float32 re-score)", "entry": entry,
                  "own_mb": entry["bytes"] / 2**20, "build_s": entry["wall_seconds"],
                  "mapped": store.describe().get("memory_mapped"), "setting": {}}
        for w, key in ((0.0, "w0"), (0.3, "w03")):
            measured = through_searcher(index, store, texts, vectors, w)
            measured["recall"] = recall(measured.pop("rows"), truth[w])
            result[key] = measured
        sec["backends"]["exact-fp16"] = result
        self.filtered("exact-fp16", store, index, sec, "exact")
        log(f"  exact-fp16: w0 {result['w0']['p50_ms']:.2f} ms recall {result['w0']['recall']:.3f}; "
            f"w0.3 {result['w03']['p50_ms']:.2f} ms recall {result['w03']['recall']:.3f}")

    def tune_faiss(self, folder, index, kind, n, texts, vectors, truth, sec) -> None:
        from search.indexing.ann import default_params

        points, warmed = [], set()
        for point in self.grid(kind, n):
            params = {"M": point["M"], "ef_construction": 200} if kind == "hnsw" else {}
            tag = f"hnsw-M{point['M']}" if kind == "hnsw" else kind
            try:
                entry = self.ann_entry(folder, index, kind, params, tag)
            except Exception as exc:  # noqa: BLE001 - report and go on with the other backends
                sec["backends"][kind] = {"skipped": f"build failed: {exc!r}"}
                log(f"  {kind} build failed: {exc!r}")
                return
            store = self.faiss_store(index, entry, ef=point.get("ef", 128), nprobe=point.get("nprobe", 32),
                                     oversample=point["oversample"])
            if tag not in warmed:  # the first pass reads the memory-mapped file from disk: not timed
                through_searcher(index, store, texts, vectors, 0.0, warm=0)
                warmed.add(tag)
            measured = through_searcher(index, store, texts, vectors, 0.0)
            measured["recall"] = recall(measured.pop("rows"), truth[0.0])
            row = {"kind": kind, **point, **measured, "entry": entry, "mapped": store.describe().get("memory_mapped")}
            points.append(row)
            sec["curve"].append({k: v for k, v in row.items() if k != "entry"})
            log(f"  {kind} {point}: recall@10 {measured['recall']:.3f} p50 {measured['p50_ms']:.2f} ms "
                f"p95 {measured['p95_ms']:.2f} ms (load {measured['load']})")
        good = [p for p in points if p["recall"] >= TARGET_RECALL]
        chosen = min(good, key=lambda p: p["p50_ms"]) if good else max(points, key=lambda p: (p["recall"], -p["p50_ms"]))
        setting = {k: chosen[k] for k in ("ef", "nprobe", "oversample", "M") if k in chosen}
        store = self.faiss_store(index, chosen["entry"], ef=chosen.get("ef", 128), nprobe=chosen.get("nprobe", 32),
                                 oversample=chosen["oversample"])
        result = {"config": f"{kind} " + " ".join(f"{k}={v}" for k, v in setting.items()), "setting": setting,
                  "entry": chosen["entry"], "own_mb": chosen["entry"]["bytes"] / 2**20,
                  "build_s": chosen["entry"]["wall_seconds"], "mapped": chosen["mapped"],
                  "meets_target": bool(good), "defaults": default_params(kind, n, index.product_embeddings.shape[1])}
        for w, key in ((0.0, "w0"), (0.3, "w03")):
            measured = through_searcher(index, store, texts, vectors, w)
            measured["recall"] = recall(measured.pop("rows"), truth[w])
            result[key] = measured
        sec["backends"][kind] = result
        self.filtered(f"{kind} " + " ".join(f"{k}={v}" for k, v in setting.items()), store, index, sec, "faiss")
        log(f"  {kind} chosen {setting}: w0 {result['w0']['p50_ms']:.2f} ms recall {result['w0']['recall']:.3f}; "
            f"w0.3 {result['w03']['p50_ms']:.2f} ms recall {result['w03']['recall']:.3f}")

    def milvus(self, folder, index, n, texts, vectors, truth, sec) -> None:
        a = self.args
        try:
            from search.config import BackendSettings
            from search.indexing.publish import publish
            from search.vectors import open_store
        except ImportError as exc:
            sec["backends"]["milvus"] = {"skipped": f"not run: backend not ready ({exc})"}
            return
        if n > a.milvus_max:
            sec["backends"]["milvus"] = {"skipped": f"not run: {n:,} products is above --milvus-max "
                                                    f"{a.milvus_max:,}: Milvus Lite's server held ~3 GB for 100k "
                                                    "products + 500k images, so ~30 GB here, over this machine's 24 GB"}
            return
        db = folder / "milvus.db"
        if not a.keep:
            shutil.rmtree(db, ignore_errors=True)
        # Milvus Lite serves a data folder to one process at a time: the 2 gunicorn workers (and this
        # process, then them) share it through `milvus-lite server`, as search/vectors/milvus.py says.
        server, port = self.milvus_server(db, create=True)
        if server is None:
            sec["backends"]["milvus"] = {"skipped": port}
            return
        uri = f"http://127.0.0.1:{port}"
        try:
            log(f"  milvus lite server: publishing {n:,} products + {n * PER_PRODUCT:,} images ({a.milvus_index}), "
                f"load {load_avg()}")
            started = time.perf_counter()
            try:
                report = publish(index.directory, uri, index_type=a.milvus_index, metric="IP", progress=False,
                                 timeout=3600)
            except Exception as exc:  # noqa: BLE001
                sec["backends"]["milvus"] = {"skipped": f"publish failed: {exc}"}
                log(f"  milvus publish failed: {exc}")
                return
            publish_s = time.perf_counter() - started
            log(f"  published in {publish_s:.0f} s: {report.get('upserted')}")
            store = open_store(BackendSettings(backend="milvus", milvus_uri=uri, milvus_timeout=600), index)
            result = {"config": f"milvus lite server {a.milvus_index}", "own_mb": disk_mb(db), "build_s": publish_s,
                      "publish": {k: report.get(k) for k in ("upserted", "unchanged", "seconds", "index_type")},
                      "describe": store.describe()}
            try:
                for w, key in ((0.0, "w0"), (0.3, "w03")):
                    if w and a.milvus_skip_hybrid:
                        continue
                    count = min(a.milvus_hybrid_queries if w else a.milvus_queries, len(texts))
                    measured = through_searcher(index, store, texts[:count], vectors[:count], w, warm=3)
                    measured["recall"] = recall(measured.pop("rows"), truth[w][:count])
                    measured["queries"] = count
                    result[key] = measured
                    log(f"  milvus w={w}: p50 {measured['p50_ms']:.1f} ms recall {measured['recall']:.3f}")
                self.filtered("milvus", store, index, sec, None, limit=a.milvus_hybrid_queries)
            finally:
                store.close()
            result["server"] = {k: v for k, v in smaps_of(server.pid).items() if k in ("Rss", "Pss")}
        finally:
            server.terminate()
            server.wait(120)
        sec["backends"]["milvus"] = result

    def http(self, folder, index, n, texts, sec) -> None:
        a = self.args
        generation = index.directory / index.meta["generation"]
        with_catalog = n in a.http_sizes
        catalog = folder / "catalog"
        if with_catalog and not catalog.is_dir():
            log(f"  writing the catalog of symlinks ({n * PER_PRODUCT:,} files)")
            sec["catalog_s"] = write_catalog(catalog, index)
        empty = folder / "empty-catalog"
        empty.mkdir(exist_ok=True)
        app = "search:create_app()"
        base_env = {"SEARCH_INDEX_DIR": str(index.directory), "SEARCH_CATALOG_DIR": str(catalog if with_catalog else empty)}
        if not with_catalog:  # no image files to sample: the start checks the folder only
            base_env["SEARCH_STARTUP_IMAGE_SAMPLE"] = "0"
        sec["http"] = {"app": app, "rows": {}}
        from search.index_format import update_meta

        for backend in a.backends:
            if self.left_min() < 4:
                sec["http"]["rows"][backend] = {"skipped": "time budget spent"}
                continue
            chosen = sec["backends"].get(backend, {})
            if chosen.get("skipped"):
                continue
            env, servers, server = dict(base_env), (), None
            if backend == "exact":
                env["SEARCH_BACKEND"] = "exact"
            elif backend == "exact-fp16":
                update_meta(index.directory, ann=chosen["entry"])
                env.update(SEARCH_BACKEND="exact", SEARCH_EXACT_DTYPE="float16")
            elif backend == "milvus":
                if not with_catalog:
                    continue
                server, port = self.milvus_server(folder / "milvus.db")
                if server is None:
                    sec["http"]["rows"][backend] = {"skipped": port}
                    continue
                env.update(SEARCH_BACKEND="milvus", MILVUS_URI=f"http://127.0.0.1:{port}", MILVUS_TIMEOUT="60")
                servers = (server.pid,)
            else:
                setting = chosen["setting"]
                update_meta(index.directory, ann=chosen["entry"])  # the service reads the ann entry from meta.json
                env.update(SEARCH_BACKEND="faiss", SEARCH_FAISS_EF_SEARCH=str(setting.get("ef", 128)),
                           SEARCH_FAISS_NPROBE=str(setting.get("nprobe", 32)),
                           SEARCH_FAISS_OVERSAMPLE=str(setting.get("oversample", 4)))
            log(f"  gunicorn 2 workers, {backend}, {'catalog of symlinks' if with_catalog else 'no catalog check'}")
            try:
                count = min(a.http_queries, a.milvus_hybrid_queries) if backend == "milvus" else a.http_queries
                row = serve_and_measure(app, env, texts[:count], generation, extra_pids=servers)
                row["queries"] = count
                row["with_catalog"] = with_catalog
                sec["http"]["rows"][backend] = row
                pss = "/".join(f"{w['pss']:.0f}" for w in row["workers"])
                log(f"  http {backend}: p50 {row['p50_ms']:.1f} ms p95 {row['p95_ms']:.1f} ms, PSS {pss} MB")
            except Exception as exc:  # noqa: BLE001
                sec["http"]["rows"][backend] = {"skipped": f"failed: {exc}"[:500]}
                log(f"  http {backend} failed: {exc}")
            finally:
                if server is not None:
                    server.terminate()
                    server.wait(60)
            self.save()

    @staticmethod
    def milvus_server(db: Path, create: bool = False):
        """`milvus-lite server` on the .db folder (Lite serves a folder to one process: the 2
        workers share it through this server); (process, port) or (None, why not)."""
        import socket

        if not create and not db.exists():
            return None, "not run: nothing published"
        exe = Path(sys.executable).with_name("milvus-lite")
        if not exe.is_file():
            return None, "not run: no milvus-lite command"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log_path = db.parent / "milvus-server.log"
        with open(log_path, "ab") as sink:
            server = subprocess.Popen([str(exe), "server", "--data-dir", str(db), "--host", "127.0.0.1",
                                       "--port", str(port)], stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    time.sleep(2)
                    return server, port
            if server.poll() is not None:
                return None, f"not run: milvus-lite server exited ({log_path})"
            time.sleep(0.5)
        server.terminate()
        return None, "not run: milvus-lite server did not start in 300 s"


# --------------------------------------------------------------------------- report


def fmt(value, spec=".1f", none="-"):
    return none if value is None else format(value, spec)


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, cells)])


def report(results: dict, args) -> str:
    out = [f"run: {results.get('run', {})}"]
    keys = [k for k in results if "/" in k]
    out.append("DATA (statistics of the generated vectors; cosines)")
    rows = []
    for key in keys:
        s, g = results[key].get("stats", {}), results[key].get("generate", {})
        rows.append([key, fmt(s.get("product_pair_cos"), ".3f"), fmt(s.get("image_pair_cos"), ".3f"),
                     fmt(s.get("same_product_image_cos"), ".3f"), fmt(s.get("nn1_cos"), ".3f"), fmt(s.get("nn10_cos"), ".3f"),
                     fmt(s.get("query_top1"), ".3f"), fmt(s.get("query_top10"), ".3f"), fmt(s.get("query_gap"), ".4f"),
                     fmt(s.get("query_median"), ".3f"), fmt(g.get("total_s"), ".0f"), fmt(g.get("peak_rss_mb"), ".0f"),
                     fmt(sum(results[key].get("arrays_mb", {}).values()) / 1024, ".1f")])
    out.append(table(["dataset/size", "prod pair", "img pair", "same-prod img", "prod NN1", "prod NN10", "q top1",
                      "q top10", "top1-top10", "q median", "write s", "gen RSS MB", "serving arrays GB"], rows))
    for key in keys:
        if results[key].get("embed_ms"):
            p50, p95 = results[key]["embed_ms"]
            out.append(f"{key}: CLIP text embedding alone (random-weight ViT-B-32, 2 threads) p50 {p50:.1f} ms p95 {p95:.1f} ms")

    out.append("\nBUILD AND SIZE (own MB: the backend's files; every backend also uses the local index arrays)")
    rows = []
    for key in keys:
        backends = results[key].get("backends", {})
        ref = backends.get("exact", {}).get("own_mb")
        for name, b in backends.items():
            if b.get("skipped"):
                rows.append([key, name, b["skipped"], "", "", ""])
                continue
            rows.append([key, b["config"], fmt(b.get("build_s"), ".0f"), fmt(b.get("own_mb"), ".0f"),
                         fmt(b["own_mb"] / ref if ref else None, ".2f"),
                         "faiss file memory-mapped" if b.get("mapped") else "faiss file read into RAM"
                         if b.get("mapped") is False else f"server RSS {b['server']['Rss']:.0f} MB after queries"
                         if b.get("server") else ""])
    out.append(table(["dataset/size", "backend (chosen setting)", "build s", "own MB", "x exact", "note"], rows))

    out.append("\nTUNING CURVE (through Searcher, lexical weight 0, n=10, fixed query vectors)")
    rows = []
    for key in keys:
        for p in results[key].get("curve", []):
            setting = " ".join(f"{k}={p[k]}" for k in ("M", "ef", "nprobe", "oversample") if k in p)
            rows.append([key, p["kind"], setting, fmt(p["recall"], ".3f"), fmt(p["p50_ms"], ".2f"), fmt(p["p95_ms"], ".2f"),
                         p.get("load", "")])
    out.append(table(["dataset/size", "kind", "setting", "recall@10", "p50 ms", "p95 ms", "load avg"], rows))

    out.append("\nSINGLE QUERY THROUGH Searcher (n=10, fixed query vectors: no CLIP in the timing; recall@10 vs exact)")
    rows = []
    for key in keys:
        backends = results[key].get("backends", {})
        ex = backends.get("exact", {})
        for b in backends.values():
            if b.get("skipped"):
                continue
            line = [key, b["config"]]
            for w in ("w0", "w03"):
                m = b.get(w)
                if not m:
                    line += ["-", "-", "-", "-"]
                    continue
                ratio = m["p50_ms"] / ex[w]["p50_ms"] if ex.get(w) else None
                line += [fmt(m["p50_ms"], ".2f"), fmt(m["p95_ms"], ".2f"), fmt(m["recall"], ".3f"), fmt(ratio, ".3f")]
            line.append(b.get("w0", {}).get("load", "") + (f" ({b['w0']['queries']}/{b.get('w03', {}).get('queries', '-')} queries)"
                                                         if b.get("w0", {}).get("queries") else ""))
            rows.append(line)
    out.append(table(["dataset/size", "backend", "w=0 p50", "p95", "recall", "p50 x exact", "w=0.3 p50", "p95",
                      "recall", "p50 x exact", "load avg"], rows))

    out.append("\nHTTP (gunicorn, shipped config, 2 workers x 2 threads; random-weight ViT-B-32 embeds each uncached "
               "query; lexical weight 0.3; one client) AND MEMORY PER WORKER (MB, after 4-client traffic)")
    rows = []
    for key in keys:
        http = results[key].get("http", {})
        ex = http.get("rows", {}).get("exact", {})
        for name, r in http.get("rows", {}).items():
            if r.get("skipped"):
                rows.append([key, name, r["skipped"]] + [""] * 9)
                continue
            w = r["workers"]
            ex_pss = np.mean([x["pss"] for x in ex["workers"]]) if ex.get("workers") else None
            backend = r.get("backend", {})
            label = name if name in ("exact", "exact-fp16", "milvus") else f"{name} {json.dumps(backend.get('search', ''))}"
            rows.append([key, label, fmt(r["p50_ms"]), fmt(r["p95_ms"]),
                         fmt(r["p50_ms"] / ex["p50_ms"] if ex.get("p50_ms") else None, ".2f"),
                         "/".join(fmt(x["rss"], ".0f") for x in w), "/".join(fmt(x["pss"], ".0f") for x in w),
                         fmt(np.mean([x["pss"] for x in w]) / ex_pss if ex_pss else None, ".2f"),
                         "/".join(fmt(x["index_pss"], ".0f") for x in w), "/".join(fmt(x["anon"], ".0f") for x in w),
                         "catalog" if r.get("with_catalog") else "no catalog check",
                         "; ".join(f"server RSS {s['Rss']:.0f} PSS {s['Pss']:.0f}" for s in r.get("servers", [])) or r.get("load", "")])
    out.append(table(["dataset/size", "backend", "p50 ms", "p95 ms", "p50 x exact", "RSS/worker", "PSS/worker",
                      "PSS x exact", "index PSS", "anon", "start", "note/load"], rows))
    out.append(filtered_report(results))
    return "\n".join(out)


def filtered_goal(kind: str | None, ratio: float, found: float) -> str:
    """faiss: filtered p50 <= 2x unfiltered at recall@10 >= 0.95; exact: filtered no slower than
    unfiltered (5 % allowed for timing noise)."""
    if kind == "faiss":
        return "PASS" if ratio <= 2.0 and found >= TARGET_RECALL else \
            "FAIL (" + ", ".join(([f"{ratio:.2f}x > 2x"] if ratio > 2.0 else []) +
                                 ([f"recall {found:.3f} < 0.95"] if found < TARGET_RECALL else [])) + ")"
    if kind == "exact":
        return "PASS" if ratio <= 1.05 else f"FAIL ({ratio:.2f}x slower)"
    return "-"


def filtered_report(results: dict) -> str:
    out = ["\nFILTERED QUERIES (store.top(q, 10, filter), and Searcher.rank with the default fusion: weighted, lexical "
           "weight 0.3; fixed query vectors; recall@10 vs the exact filtered answer (numpy over the mask) and, for "
           "rank, vs the exact fusion (ExactStore); 'x unf' = p50 / the same backend's unfiltered p50)"]
    rows, lexical = [], []
    for key in [k for k in results if "/" in k]:
        f = results[key].get("filtered")
        if not f:
            continue
        for name, c in f["lexical"].items():
            lexical.append([key, name, f"{c['passing']:,}", fmt(c["matches_p50"], ".0f"), f"{c['matches_max']:,}",
                            fmt(c["over_limit"], ".2f")])
        for label, r in f["rows"].items():
            if r.get("skipped"):
                rows.append([key, label, r["skipped"]] + [""] * 10)
                continue
            base = r["cases"]["none"]
            for name, c in r["cases"].items():
                ratio, rank_ratio = c["p50_ms"] / base["p50_ms"], c["rank_p50_ms"] / base["rank_p50_ms"]
                goal = "(reference)" if name == "none" else filtered_goal(r["goal"], ratio, c["recall"])
                rows.append([key, label, name, f"{f['lexical'][name]['passing']:,}", fmt(c["p50_ms"], ".2f"),
                             fmt(c["p95_ms"], ".2f"), fmt(c["recall"], ".3f"), fmt(ratio, ".2f"),
                             fmt(c["rank_p50_ms"], ".2f"), fmt(c["rank_p95_ms"], ".2f"), fmt(c["rank_recall"], ".3f"),
                             fmt(rank_ratio, ".2f"), goal])
            rows.append([key, label, f"({r['queries']} queries, load {r['load']})"] + [""] * 10)
    if not rows:
        return "\n".join(out + ["  not measured"])
    out.append(table(["dataset/size", "backend", "filter", "passing", "top p50", "p95", "recall@10", "x unf",
                      "rank p50", "p95", "rank recall", "x unf", "goal"], rows))
    out.append("\nLEXICAL MATCHES of the query texts (products a text's BM25 terms match, among those the filter "
               "passes): past searcher.LEXICAL_LIMIT an approximate backend's weighted fusion stops asking")
    out.append(table(["dataset/size", "filter", "passing", "matches p50", "max", "share > LEXICAL_LIMIT"], lexical))
    return "\n".join(out)


def filtered_goals(results: dict) -> str:
    """The filtered-query goals, every size: a line per backend and filter."""
    lines = ["\nGOALS, filtered queries: faiss filtered p50 <= 2x unfiltered at recall@10 >= 0.95; "
             "exact filtered no slower than unfiltered"]
    for key in [k for k in results if "/" in k]:
        for label, r in results[key].get("filtered", {}).get("rows", {}).items():
            if r.get("skipped") or r.get("goal") is None:
                continue
            base = r["cases"]["none"]["p50_ms"]
            for name, c in r["cases"].items():
                if name != "none":
                    lines.append(f"  {key} {label}, {name}: p50 {c['p50_ms']:.2f} ms ({c['p50_ms'] / base:.2f}x "
                                 f"unfiltered {base:.2f} ms), recall@10 {c['recall']:.3f} -> "
                                 f"{filtered_goal(r['goal'], c['p50_ms'] / base, c['recall'])}")
    return "\n".join(lines)


def goals(results: dict, args) -> str:
    lines = ["\nGOALS at 1M products (clip-like data)"]
    sec = results.get("clip-like/1M")
    if not sec:
        return "\n".join(lines + ["  not measured (no clip-like 1M run)", filtered_goals(results)])
    b = sec.get("backends", {})
    faiss = [(k, v) for k, v in b.items() if k not in ("exact", "exact-fp16", "milvus") and not v.get("skipped") and v.get("w0")]
    ok = [(k, v) for k, v in faiss if v["w0"]["recall"] >= TARGET_RECALL]
    if ok:
        k, v = min(ok, key=lambda kv: kv[1]["w0"]["p50_ms"])
        lines.append(f"  faiss p50 <= 5 ms at recall@10 >= 0.95: best {v['config']}: p50 {v['w0']['p50_ms']:.2f} ms, "
                     f"recall {v['w0']['recall']:.3f} -> {'MET' if v['w0']['p50_ms'] <= 5 else 'MISSED'}")
    else:
        lines.append("  faiss: no configuration reached recall@10 0.95 -> MISSED")
    for name in ("exact", "exact-fp16"):
        if b.get(name, {}).get("w0"):
            p = b[name]["w0"]["p50_ms"]
            lines.append(f"  {name} p50 <= 40 ms: {p:.1f} ms (lexical weight 0), {b[name]['w03']['p50_ms']:.1f} ms (0.3) -> "
                         f"{'MET' if p <= 40 else f'MISSED by {p - 40:.1f} ms ({p / 40:.2f}x)'}")
    for name, r in sec.get("http", {}).get("rows", {}).items():
        if r.get("workers"):
            worst = max(x["pss"] for x in r["workers"])
            lines.append(f"  PSS <= 1.5 GB per worker, {name}: max {worst:.0f} MB -> "
                         f"{'MET' if worst <= 1536 else f'MISSED by {worst - 1536:.0f} MB'}")
    m = b.get("milvus", {})
    lines.append(f"  milvus lite: {m.get('skipped') or 'see the tables'}")
    lines.append(filtered_goals(results))
    small = results.get("clip-like/100k", {}).get("backends", {}).get("milvus", {})
    if small.get("w0"):
        lines.append(f"  milvus lite at 100k: recall@10 {small['w0']['recall']:.3f} "
                     f"({'MET' if small['w0']['recall'] >= TARGET_RECALL else 'MISSED'}), p50 {small['w0']['p50_ms']:.1f} ms, "
                     f"publish {small['build_s']:.0f} s for {100_000 * (1 + PER_PRODUCT):,} rows")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    sizes = lambda s: [size_of(x) for x in s.split(",") if x]  # noqa: E731
    parser.add_argument("--sizes", type=sizes, default=sizes("100k,1m"), help="products, e.g. 100k,1m")
    parser.add_argument("--datasets", default="clip-like,sample", type=lambda s: s.split(","))
    parser.add_argument("--backends", default="exact,exact-fp16,hnsw,ivf-pq,milvus", type=lambda s: s.split(","),
                        help=f"any of {', '.join(BACKENDS)}")
    parser.add_argument("--queries", type=int, default=300, help="queries per dataset (recall and latency)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/scale-bench"), help="data folder (large: ~15 GB at 1M)")
    parser.add_argument("--keep", action="store_true", help="reuse generated data and FAISS indexes from --out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample-index", type=Path, default=Path("/tmp/sample-index"))
    parser.add_argument("--hnsw-m", type=ints, default=ints("16,32,48"), help="HNSW M built below 500k products")
    parser.add_argument("--hnsw-m-large", type=ints, default=ints("32"), help="HNSW M built from 500k products")
    parser.add_argument("--ef", type=ints, default=ints("64,128,256,512,1024,2048"))
    parser.add_argument("--oversample", type=ints, default=ints("1,4,16"), help="hnsw and ivf-pq grid")
    parser.add_argument("--nprobe", type=ints, default=ints("16,32,64,128"))
    parser.add_argument("--milvus-index", default="HNSW")
    parser.add_argument("--milvus-max", type=size_of, default=size_of("100k"), help="largest size published to Milvus Lite")
    parser.add_argument("--milvus-queries", type=int, default=300)
    parser.add_argument("--milvus-hybrid-queries", type=int, default=60,
                        help="queries with lexical weight 0.3 (each asks about its lexical matches), and filtered queries")
    parser.add_argument("--milvus-skip-hybrid", action="store_true")
    parser.add_argument("--http-sizes", type=sizes, default=sizes("100k"), help="sizes served over HTTP (catalog of symlinks)")
    parser.add_argument("--memory-sizes", type=sizes, default=sizes("1m"),
                        help="sizes served over HTTP without a catalog (catalog check skipped) for RSS/PSS")
    parser.add_argument("--http-datasets", default="clip-like", type=lambda s: s.split(","))
    parser.add_argument("--http-queries", type=int, default=200)
    parser.add_argument("--budget-min", type=float, default=300, help="stop starting new steps after this")
    parser.add_argument("--filter-queries", type=int, default=300, help="queries of the FILTERED QUERIES table")
    parser.add_argument("--no-filtered", action="store_true", help="skip the FILTERED QUERIES table")
    parser.add_argument("--report-only", action="store_true", help="print the tables of --out/results.json")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        results = json.loads((args.out / "results.json").read_text())
        print(report(results, args) + "\n" + goals(results, args))
        return 0
    bench = Bench(args)
    bench.results["run"] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv[1:], "cpus": os.cpu_count(),
                            "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default")}
    for name in args.datasets:
        if name == "sample" and not (args.sample_index / "meta.json").is_file():
            log(f"sample dataset skipped: no index at {args.sample_index} (see the docstring to build it)")
            continue
        for n in args.sizes:
            if bench.left_min() < 10:
                log(f"{name} {size_label(n)} skipped: time budget spent")
                continue
            bench.run_size(name, n)
            print(report(bench.results, args), flush=True)
    text = report(bench.results, args) + "\n" + goals(bench.results, args)
    (args.out / "report.txt").write_text(text + "\n")
    print("\n" + "=" * 100 + "\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
