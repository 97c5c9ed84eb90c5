"""Vectors in Milvus (SEARCH_BACKEND=milvus): Milvus Lite for a MILVUS_URI ending in .db (a folder,
the embedded engine used by the tests), a Milvus standalone or cluster for http(s)://host:19530.

The local index stays the service's metadata (product names, image files, name words); only the
vectors live in Milvus, published from that index by `python -m search.index publish` (see
search/indexing/publish.py). Two collections per published index:

    <base>_products   name VARCHAR (primary key), vector FLOAT_VECTOR[dim] (the pooled vector),
                      digest VARCHAR (hash of the vector: publish upserts only what changed)
    <base>_images     key VARCHAR (primary key, "product/file"), product VARCHAR (scalar index),
                      file VARCHAR, vector FLOAT_VECTOR[dim], digest VARCHAR

Rows are keyed by name, not by row number, so they stay valid across rebuilds; hits are mapped back
to the local index's rows by name (a name the local index does not have is skipped, with one
warning). <base> comes from the index's identity: embedder model, pretrained weights (or the seed
of random ones), a hash of the probe embedding's signs, pooling and dimension - never from the
generation, so re-publishing a rebuilt index updates the same collections. MILVUS_COLLECTION (or
publish --collection) names <base> explicitly instead. The identity is stored in the collections'
properties; the service compares it with its own index (embedder, pooling, dimension) and refuses
another index's vectors.

Queries (every score is a true cosine: IP on normalised vectors, or converted from COSINE/L2):
    top         max/mean pooling: an ANN search of the products collection, limit k.
                score-max: a grouping search of the images collection (group_by product): each
                product scores as its best image.
    top_among   up to EXACT_AMONG vectors (the products', or for score-max their images'): fetched
                by primary key and scored here, exact on any server. More: the ANN search with a
                filter, `name in [...]` CHUNK_KEYS names per search (merged; a chunk the ANN
                under-answers is scored exactly), or, for more than half of the products, one
                search with `not in [the others]`. A Milvus server answers selective filters by
                brute force; Milvus Lite's filtered HNSW search misses many, hence the exact path.
    best_images the vectors of the products' images (keys "product/file" from the local index),
                scored here: exact, the same choice as the exact backend.

k is capped at MAX_TOPK (Milvus' own limit). Quantised index types (SQ/PQ) return approximate
distances, so their hits are re-scored from the returned vectors. HNSW searches with
ef = max(HNSW_EF, 8k, k / share of the vectors a filter keeps) (512 for k <= 64, unfiltered),
IVF with nprobe = max(IVF_NPROBE_MIN, nlist / 8). On 100k random 512-d vectors in Milvus Lite
(HNSW M=16): recall@10 0.98, recall@100 0.97.

Faults: the client is created on first use, every call has MILVUS_TIMEOUT, and any failure (server
down, collection missing or from another index) raises VectorStoreError("Milvus at <uri> ...") for
readiness (503 with the reason) and requests (503). A worker starts while Milvus is down; the next
call after Milvus comes back reconnects (and re-loads the collections if Milvus forgot them).
Milvus Lite serves a .db folder to one process only: for several workers run `milvus-lite server
--data-dir DIR` and point MILVUS_URI at http://127.0.0.1:19530.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import threading
import time
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from search.index_format import PROBE_MIN_COSINE, Index
from search.vectors.base import Hits, VectorStore, VectorStoreError

log = logging.getLogger("fashion.milvus")

IDENTITY_PROPERTY = "fashion.identity"  # embedder, pooling, dim, which collection of the pair
PUBLISHED_PROPERTY = "fashion.published"  # generation, catalog fingerprint, counts, when
INDEX_PROPERTY = "fashion.index"  # index type, metric and build params (for search params)
IDENTITY_FORMAT = 1
KINDS = ("products", "images")
NAME_MAX = 1024  # bytes of a product or file name
KEY_MAX = 2 * NAME_MAX + 1
CHUNK_KEYS = 1000  # keys per filter expression
EXACT_AMONG = 1024  # top_among fetches up to this many vectors and scores them itself
MAX_TOPK = 16384  # Milvus refuses larger limits
HNSW_EF = 512
IVF_NPROBE_MIN = 32
QUANTISED = ("SQ", "PQ", "RABITQ", "SCANN", "DISKANN")  # index types with approximate distances
METRICS = ("IP", "COSINE", "L2")
RECONNECT_PAUSE_S = 1.0  # after a failed connect, requests fail fast this long
NOT_LOADED = 101  # Milvus' CollectionNotLoaded code: Milvus Lite forgets loads on restart
_COLLECTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,200}")


# --------------------------------------------------------------------------- shared with indexing/publish


def pymilvus():
    try:
        import pymilvus as module
    except ImportError as exc:
        raise VectorStoreError(f"SEARCH_BACKEND=milvus needs pymilvus installed "
                               f"(pip install 'pymilvus[milvus-lite]'): {exc}") from None
    return module


def check_uri(uri: str | None) -> str:
    """MILVUS_URI as pymilvus takes it, or VectorStoreError saying what is wrong with it."""
    if not uri:
        raise VectorStoreError("SEARCH_BACKEND=milvus needs MILVUS_URI: a path ending in .db (Milvus Lite) "
                               "or http(s)://host:19530 (a Milvus server)")
    scheme = urlsplit(uri).scheme.lower()
    if uri.endswith(".db") or scheme in ("http", "https", "tcp", "unix"):
        return uri
    raise VectorStoreError(f"MILVUS_URI={display_uri(uri)!r} is neither a path ending in .db (Milvus Lite) "
                           "nor http(s)://host:port (a Milvus server)")


def display_uri(uri: str) -> str:
    """The URI without a password (user:password@host is accepted by pymilvus)."""
    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def quote(text: str) -> str:
    """A Milvus filter-expression string literal (Milvus Lite has no expression templates)."""
    escaped = (text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
               .replace("\r", "\\r").replace("\t", "\\t"))
    return f'"{escaped}"'


def in_filter(field: str, values) -> str:
    return f"{field} in [{', '.join(quote(v) for v in values)}]"


def local_identity(index: Index) -> dict:
    """What a collection must have been published from to serve this index."""
    embedder = index.meta.get("embedder", {})
    return {"format": IDENTITY_FORMAT,
            "embedder": {k: embedder.get(k) for k in ("model", "pretrained", "seed", "probe")},
            "pooling": index.pooling, "dim": int(index.product_embeddings.shape[1])}


def _slug(text: str, limit: int) -> str:
    return re.sub(r"[^0-9a-z]+", "_", str(text).lower()).strip("_")[:limit].strip("_") or "x"


def collection_base(index: Index) -> str:
    """Collection name prefix from the index's identity (not its generation)."""
    identity = local_identity(index)
    embedder = identity["embedder"]
    pretrained = embedder.get("pretrained") or ""
    weights = _slug(pretrained.replace("\\", "/").rsplit("/", 1)[-1], 40) if pretrained else f"seed{embedder.get('seed')}"
    # Signs of the probe embedding: another set of weights flips many; float noise between CPUs
    # (1e-6) flips one only if a component is that close to 0. The real check compares cosines.
    signs = np.packbits(np.asarray(embedder.get("probe") or [], np.float32) >= 0).tobytes()
    probe = hashlib.sha256(signs).hexdigest()[:8]
    pooling = identity["pooling"].replace("-", "")
    return f"fashion_{_slug(embedder.get('model'), 32)}_{weights}_{probe}_{pooling}_{identity['dim']}"


def collection_names(index: Index, base: str | None = None) -> dict[str, str]:
    base = base or collection_base(index)
    if not _COLLECTION_NAME.fullmatch(base):
        raise VectorStoreError(f"collection name {base!r}: use letters, digits and _ (not first a digit), "
                               "at most 200 characters")
    return {kind: f"{base}_{kind}" for kind in KINDS}


def identity_mismatch(remote: dict, local: dict) -> str | None:
    """Why a collection's identity does not serve the local index, or None when it does."""
    if remote.get("format") != local["format"]:
        return f"identity format {remote.get('format')!r} there, {local['format']!r} here"
    there, here = remote.get("embedder") or {}, local["embedder"]
    for key in ("model", "pretrained", "seed"):
        if there.get(key) != here.get(key):
            return f"embedder {key}={there.get(key)!r} there, {key}={here.get(key)!r} here"
    old, new = np.asarray(there.get("probe") or [], np.float32), np.asarray(here.get("probe") or [], np.float32)
    if old.shape != new.shape or float(old @ new) < PROBE_MIN_COSINE:
        return "embedder weights differ (probe embedding)"
    for key in ("pooling", "dim"):
        if remote.get(key) != local[key]:
            return f"{key}={remote.get(key)!r} there, {key}={local[key]!r} here"
    return None


def read_property(description: dict, key: str) -> dict | None:
    value = (description.get("properties") or {}).get(key)
    try:
        return json.loads(value) if value else None
    except ValueError:
        return None


def cosine_from(metric: str, distances: np.ndarray) -> np.ndarray:
    """Milvus distances -> cosines for normalised vectors (L2 is the squared distance)."""
    distances = np.asarray(distances, np.float32)
    return (1.0 - distances / 2.0).astype(np.float32) if metric == "L2" else distances


def search_params(index_info: dict, k: int, share: float = 1.0) -> dict:
    """Query-time parameters for the collection's index type, sized for recall >= 0.95; `share`
    is the fraction of the vectors a filter lets through (a graph search must visit more)."""
    kind = str(index_info.get("index_type", "")).upper()
    params = index_info.get("params") or {}
    if kind.startswith("HNSW"):
        return {"ef": max(k, min(32768, max(HNSW_EF, 8 * k, int(k / max(share, 1e-9)))))}
    if kind.startswith("IVF"):
        # Not capped at the recorded nlist: the server may have built more lists (Milvus Lite
        # ignores build params sent by pymilvus 3 and uses min(128, rows)); more is harmless.
        return {"nprobe": min(65536, max(IVF_NPROBE_MIN, int(params.get("nlist", 128)) // 8))}
    return {}


# --------------------------------------------------------------------------- the store


class MilvusStore(VectorStore):
    among_limit = EXACT_AMONG  # fetched and scored locally: exact and fast on any server
    backend = "milvus"
    capabilities = frozenset()  # an ANN search: no score of every product

    def __init__(self, index: Index, settings):
        self.index = index
        self.uri = check_uri(settings.milvus_uri)
        self.shown_uri = display_uri(self.uri)
        self.token = settings.milvus_token or ""
        self.timeout = float(settings.milvus_timeout)
        self.names = collection_names(index, settings.milvus_collection)
        self.identity = local_identity(index)
        self.score_max = index.pooling == "score-max"
        self._client = None
        self._failure: tuple[float, VectorStoreError | None] = (0.0, None)  # last failed connect
        self._lock = threading.Lock()
        self._index_info: dict = {}  # the vector index of the collection searched
        self._published: dict = {}
        self._warned_unknown = False
        # pymilvus logs every failed call with a traceback; the reason is in our error instead.
        logging.getLogger("pymilvus.decorators").setLevel(logging.CRITICAL)

    @classmethod
    def open(cls, index: Index, settings) -> MilvusStore:
        """Raises only for configuration errors (no or bad MILVUS_URI, no pymilvus, or collections
        published from another index); an unreachable server or missing collection is left to
        check(), so a worker starts while Milvus is down and serves once it is back."""
        pymilvus()
        store = cls(index, settings)
        try:
            store.check()
        except _IdentityError:
            store.close()
            raise
        except VectorStoreError as exc:
            log.warning("milvus backend not ready yet: %s", exc)
        return store

    # ------------------------------------------------------------------ connection

    def _connect(self):
        """A new client, connected, with the collections verified and loaded."""
        try:
            client = pymilvus().MilvusClient(
                uri=self.uri, token=self.token, timeout=self.timeout, dedicated=True,
                # gRPC backs off up to 2 minutes between reconnects by default: recover sooner.
                grpc_options={"grpc.initial_reconnect_backoff_ms": 250, "grpc.min_reconnect_backoff_ms": 250,
                              "grpc.max_reconnect_backoff_ms": 2000})
        except Exception as exc:  # noqa: BLE001 - any failure to connect is "unreachable"
            hint = ""
            if self.uri.endswith(".db"):
                hint = (" (Milvus Lite serves a .db folder to one process only: with several workers, run "
                        "`milvus-lite server --data-dir DIR` and set MILVUS_URI=http://127.0.0.1:19530)")
            raise VectorStoreError(f"Milvus at {self.shown_uri} is unreachable: {_reason(exc)}{hint}") from None
        try:
            self._verify(client)
        except BaseException:
            _close(client)
            raise
        return client

    def _verify(self, client) -> None:
        """Both collections exist, come from this index's identity and are loaded (cheap: metadata)."""
        for kind, name in self.names.items():
            try:
                if not client.has_collection(name, timeout=self.timeout):
                    raise VectorStoreError(
                        f"Milvus at {self.shown_uri} has no collection {name}; publish the index with "
                        f"`python -m search.index publish --index {self.index.directory} --milvus {self.shown_uri}`")
                description = client.describe_collection(name, timeout=self.timeout)
                remote = read_property(description, IDENTITY_PROPERTY)
                why = "it has no identity (not published by search.index publish)" if remote is None \
                    else identity_mismatch(remote, self.identity)
                if why:
                    raise _IdentityError(f"Milvus collection {name} at {self.shown_uri} was published from "
                                         f"another index: {why}; publish this index or fix MILVUS_COLLECTION")
                if kind == ("images" if self.score_max else "products"):
                    self._index_info = read_property(description, INDEX_PROPERTY) or {}
                    self._published = read_property(description, PUBLISHED_PROPERTY) or {}
                state = client.get_load_state(name, timeout=self.timeout).get("state")
                if str(getattr(state, "name", state)) != "Loaded":
                    client.load_collection(name, timeout=self.timeout)
            except VectorStoreError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise VectorStoreError(f"Milvus at {self.shown_uri}: {name}: {_reason(exc)}") from None
        if not self._index_info:  # publish writes it once the vector index exists
            raise VectorStoreError(f"Milvus collection {self._searched} at {self.shown_uri} has no vector index yet "
                                   "(a publish in progress or interrupted: run it again)")
        if self._index_info.get("metric") not in METRICS:
            raise _IdentityError(f"Milvus collection {self._searched} at {self.shown_uri} has metric "
                                 f"{self._index_info.get('metric')!r}; publish it with one of {', '.join(METRICS)}")

    @property
    def _searched(self) -> str:
        return self.names["images" if self.score_max else "products"]

    def _drop(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            _close(client)

    def _connected(self, *, retry_now: bool = False):
        with self._lock:
            if self._client is None:
                # Requests during an outage fail at once with the last reason instead of each
                # waiting out a connect; readiness (check) always tries again.
                failed_at, failure = self._failure
                if failure is not None and not retry_now and time.monotonic() - failed_at < RECONNECT_PAUSE_S:
                    raise type(failure)(str(failure))
                try:
                    self._client = self._connect()
                except VectorStoreError as exc:
                    self._failure = (time.monotonic(), exc)
                    raise
                self._failure = (0.0, None)
            return self._client

    def _call(self, what: str, fn):
        """fn(client) with the connection made on demand; failures become VectorStoreError."""
        client = self._connected()
        try:
            return fn(client)
        except Exception as exc:  # noqa: BLE001
            if getattr(exc, "code", None) == NOT_LOADED:  # Milvus restarted and forgot the load
                try:
                    for name in self.names.values():
                        client.load_collection(name, timeout=self.timeout)
                    return fn(client)
                except Exception as again:  # noqa: BLE001
                    exc = again
            self._drop()  # the next call reconnects and verifies again
            raise VectorStoreError(f"Milvus at {self.shown_uri}: {what} failed: {_reason(exc)}") from None

    def check(self) -> None:
        """Connects if needed and verifies the collections again (they may have been dropped or
        re-published): a few metadata calls, no scan."""
        with self._lock:
            client = self._client
        if client is None:
            self._connected(retry_now=True)
            return
        try:
            self._verify(client)
        except VectorStoreError:
            self._drop()
            raise

    def close(self) -> None:
        self._drop()

    def describe(self) -> dict:
        info = self._index_info
        return {"backend": self.backend, "uri": self.shown_uri, "collections": list(self.names.values()),
                "pooling": self.index.pooling, "index_type": info.get("index_type"), "metric": info.get("metric"),
                "published_generation": self._published.get("generation"),
                "local_generation": self.index.meta.get("generation"), "timeout_s": self.timeout}

    # ------------------------------------------------------------------ queries

    def _search(self, query: np.ndarray, k: int, names: list[str] | None = None, *,
                exclude: bool = False) -> tuple[list[str], np.ndarray]:
        """Product names and cosines of the k best: among `names` if given (or all but them
        with `exclude`), by an ANN search of Milvus."""
        info = self._index_info
        metric = info.get("metric", "IP")
        rescore = any(q in str(info.get("index_type", "")).upper() for q in QUANTISED)
        collection = self._searched
        field = "product" if self.score_max else "name"
        kwargs = {"group_by_field": "product"} if self.score_max else {}
        outputs = ["product", "vector"] if rescore else ["product"] if self.score_max else ["digest"]
        where, share = "", 1.0
        if names is not None and (names or not exclude):
            where = f"{'not ' if exclude else ''}{in_filter(field, names)}"
            total = len(self.index.products)
            share = (total - len(names) if exclude else len(names)) / max(total, 1)

        def run(client):
            result = client.search(
                collection, data=[query.tolist()], limit=k, output_fields=outputs, filter=where,
                search_params={"metric_type": metric, "params": search_params(info, k, share)},
                timeout=self.timeout, **kwargs)
            return result[0] if result else []

        found = self._call("search", run)
        keys = [hit["entity"]["product"] if self.score_max else hit.id for hit in found]
        if rescore:
            vectors = np.asarray([hit["entity"]["vector"] for hit in found], np.float32).reshape(len(found), -1)
            scores = vectors @ query if len(found) else np.zeros(0, np.float32)
        else:
            scores = cosine_from(metric, [hit["distance"] for hit in found])
        return keys, np.asarray(scores, np.float32)

    def _hits(self, keys: list[str], scores: np.ndarray, k: int) -> Hits:
        rows = [self.index.products.find(key) for key in keys]
        known = np.array([row is not None for row in rows], bool)
        if not known.all():
            self._unknown([key for key, ok in zip(keys, known, strict=True) if not ok])
        rows = np.array([row for row in rows if row is not None], np.int64)
        return Hits.best(rows, scores[known] if len(scores) else scores, k)

    def _unknown(self, keys: list[str]) -> None:
        if not self._warned_unknown:
            self._warned_unknown = True
            log.warning("Milvus returned products this index does not have (e.g. %r): the collections were "
                        "published from another generation of the catalog; ignoring them", keys[0])

    def _vectors(self, kind: str, keys: list[str]) -> dict[str, np.ndarray]:
        """The stored vectors of these primary keys (products' names or images' "product/file"),
        fetched CHUNK_KEYS at a time; keys Milvus does not hold are absent."""
        field = "name" if kind == "products" else "key"
        out = {}
        for first in range(0, len(keys), CHUNK_KEYS):
            chunk = keys[first:first + CHUNK_KEYS]
            found = self._call("query", lambda client, chunk=chunk: client.query(
                self.names[kind], filter=in_filter(field, chunk), output_fields=[field, "vector"],
                timeout=self.timeout))
            out.update((entity[field], np.asarray(entity["vector"], np.float32)) for entity in found)
        return out

    def _best_images(self, query: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For the products (rows) Milvus holds images of: their rows, best image score and that
        image's row of the local index (ties: the first image, as the exact backend)."""
        index = self.index
        keys, owners, images = [], [], []
        for row in rows:
            product = index.products[int(row)]
            for image in index.image_rows(int(row)):
                keys.append(f"{product}/{index.image_files[image]}")
                owners.append(int(row))
                images.append(image)
        vectors = self._vectors("images", keys)
        held = [i for i, key in enumerate(keys) if key in vectors]
        if not held:
            return np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64)
        scores = np.stack([vectors[keys[i]] for i in held]) @ query
        owners, images = np.asarray(owners, np.int64)[held], np.asarray(images, np.int64)[held]
        order = np.lexsort((images, -scores, owners))  # by product, best score first, then first image
        first = np.concatenate([[True], owners[order][1:] != owners[order][:-1]])
        pick = order[first]
        return owners[pick], scores[pick].astype(np.float32), images[pick]

    def _exact_among(self, query: np.ndarray, rows: np.ndarray, k: int) -> Hits:
        """Fetch the products' vectors and score them here: exact on any server."""
        if self.score_max:
            found, scores, _ = self._best_images(query, rows)
            return Hits.best(found, scores, k)
        names = [self.index.products[int(r)] for r in rows]
        vectors = self._vectors("products", names)
        held = [i for i, name in enumerate(names) if name in vectors]
        if not held:
            return Hits(np.zeros(0, np.int64), np.zeros(0, np.float32))
        scores = np.stack([vectors[names[i]] for i in held]) @ query
        return Hits.best(rows[held], scores, k)

    def top(self, query: np.ndarray, k: int) -> Hits:
        k = min(int(k), MAX_TOPK)
        if k <= 0:
            return Hits(np.zeros(0, np.int64), np.zeros(0, np.float32))
        keys, scores = self._search(np.asarray(query, np.float32), k)
        return self._hits(keys, scores, k)

    def top_among(self, query: np.ndarray, rows: np.ndarray, k: int) -> Hits:
        rows = np.unique(np.asarray(rows, np.int64))
        k = min(int(k), MAX_TOPK)
        if k <= 0 or len(rows) == 0:
            return Hits(np.zeros(0, np.int64), np.zeros(0, np.float32))
        query = np.asarray(query, np.float32)
        vectors = int(self.index.counts[rows].sum()) if self.score_max else len(rows)
        if vectors <= EXACT_AMONG:
            return self._exact_among(query, rows, k)
        total = len(self.index.products)
        if 2 * len(rows) > total:  # most products: one search that filters out the others instead
            others = np.setdiff1d(np.arange(total), rows)
            keys, scores = self._search(query, k, [self.index.products[int(r)] for r in others], exclude=True)
            return self._hits(keys, scores, k)
        keys, scores = [], []
        for first in range(0, len(rows), CHUNK_KEYS):
            chunk = rows[first:first + CHUNK_KEYS]
            want = min(k, len(chunk))
            found, cosines = self._search(query, want, [self.index.products[int(r)] for r in chunk])
            if len(found) < want:  # the ANN could not reach enough of them (a very selective filter)
                exact = self._exact_among(query, chunk, want)
                found, cosines = [self.index.products[int(r)] for r in exact.rows], exact.scores
            keys += found
            scores.append(cosines)
        return self._hits(keys, np.concatenate(scores), k)

    def best_images(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        found, _, images = self._best_images(np.asarray(query, np.float32), np.unique(rows))
        best = dict(zip(found.tolist(), images.tolist(), strict=True))
        # A product without images in Milvus (published from an older catalog): its first image.
        return np.array([best.get(int(r), int(self.index.product_starts[r])) for r in rows], np.int64)


class _IdentityError(VectorStoreError):
    """The collections were published from another index (a configuration error)."""


def _reason(exc: Exception) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return " ".join(str(message).split())[:500]


def _close(client) -> None:
    with contextlib.suppress(Exception):  # closing a broken connection may fail too
        client.close()
