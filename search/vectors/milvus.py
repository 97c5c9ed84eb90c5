"""Vectors in Milvus (SEARCH_BACKEND=milvus): Milvus Lite for a MILVUS_URI ending in .db (a folder,
the embedded engine used by the tests), a Milvus standalone or cluster for http(s)://host:19530.

The local index stays the service's metadata (product names, image files, BM25 index, filter
masks); the vectors live in Milvus, with the products' filterable fields beside them, published from
that index by `python -m search.index publish` (see search/indexing/publish.py). Two collections
per published index:

    <base>_products   name VARCHAR (primary key), vector FLOAT_VECTOR[dim] (the pooled vector),
                      digest VARCHAR (hash of the vector and the fields: publish upserts only what
                      changed), the filter fields below
    <base>_images     key VARCHAR (primary key, "product/file"), product VARCHAR (scalar index),
                      file VARCHAR, vector FLOAT_VECTOR[dim], digest VARCHAR, the filter fields
                      below (its product's: score-max searches this collection)

Filter fields, one per attribute of the index (search.filters.AttributeColumns, in column order i;
none for a folder catalog, so its collections are as before):

    f_<i>       number DOUBLE, boolean BOOL, string VARCHAR(STRING_MAX bytes), strings
                ARRAY<VARCHAR(STRING_MAX)> (max_capacity: twice the longest list, at least 16)
    f_present   ARRAY<INT64>: the i of the attributes the product has a value for (Milvus 2.3
                has no nullable fields); an absent value is stored as 0 / false / "" / [].

Feed names are arbitrary text, so they never reach Milvus: the collections' FIELDS_PROPERTY maps
name -> (f_<i>, type), and the service refuses (VectorStoreError: re-publish with --replace)
collections whose mapping is not its index's. A string longer than filters.MAX_STRING characters
(the longest value a request may compare) is stored as no value (a list: without it): no filter
could match it, so nothing changes, and every stored string fits STRING_MAX bytes.

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
                product scores as its best image. Milvus 2.3 has no grouping (it ignores
                group_by): there the search asks for k x the most images a product has and keeps
                each product's best (groups_by, from the server's version).
                With a filter (search.filters.ProductFilter): the same search with a Milvus
                expression built from its Conditions (filter_expression), never from request
                text: field names from the mapping only, strings through quote(), numbers as the
                repr of finite floats, booleans true/false; every condition also requires
                presence. price < 50 and sizes contains "M" (attributes 1 and 3) becomes
                    (array_contains_all(f_present, [1, 3])) and (f_1 < 50.0) and
                    (array_contains(f_3, "M"))
                and category in ["dresses", "tops"] becomes `f_0 in ["dresses", "tops"]`,
                sizes contains_any -> array_contains_any(f_3, [...]). ef grows with 1 / the
                filter's share of the products. The filter's mask (computed locally) is the
                truth: hits outside it (collections published from another generation) are
                dropped, and when fewer than min(k, products passing) are left, the filter's
                rows are scored exactly (fetched by primary key, CHUNK_KEYS vectors at a time),
                so a filter never returns fewer. A filter no product passes answers [] without
                a call.
    top_among   up to EXACT_AMONG vectors (the products', or for score-max their images'): fetched
                by primary key and scored here, exact on any server. More: the ANN search with a
                filter, `name in [...]` CHUNK_KEYS names per search (merged; a chunk the ANN
                under-answers is scored exactly), or, for more than half of the products, one
                search with `not in [the others]` (scored exactly when it under-answers). A Milvus
                server answers selective filters by brute force; Milvus Lite walks the FAISS HNSW
                graph with an ID selector, which can end with fewer than k hits for a selective
                filter unless ef is large (hence ef >= k / share, and the exact paths). Measured
                with Milvus Lite 3.2.2 (20k random 32-d vectors, HNSW M=32, k=10, filters keeping
                0.05%-90%): 10 of 10 returned, recall 1.0 with that ef; with ef = k, filters
                keeping 1% or less returned 0-3 of 10.
    best_images the vectors of the products' images (keys "product/file" from the local index),
                scored here: exact, the same choice as the exact backend.

k is capped at MAX_TOPK (Milvus' own limit). Quantised index types (SQ/PQ) return approximate
distances, so their hits are re-scored from the returned vectors. HNSW searches with
ef = max(HNSW_EF, 8k, k / share of the vectors a filter keeps) (512 for k <= 64, unfiltered),
IVF with nprobe = max(IVF_NPROBE_MIN, nlist / 8). On 100k random 512-d vectors in Milvus Lite
(HNSW M=16): recall@10 0.98, recall@100 0.97.

Faults: the client is created on first use, every call has MILVUS_TIMEOUT, and any failure (server
down or hung, collection missing, not loaded, or from another index) raises VectorStoreError("Milvus
at <uri> ...") for readiness (503 with the reason) and requests (503). A worker starts while Milvus
is down. After a failed call the client is dropped and the next call connects again: one connect at
a time, in a background thread, that callers wait for at most MILVUS_TIMEOUT (during an outage they
fail at once with the last reason), so a hung server never holds a request longer than that, nor a
lock. The connect verifies the collections (a missing one: the publish command to run; one still
loading after a restart: said so) and loads those not loaded (Milvus Lite forgets loads on restart).
Each store has its own connection (dedicated): close() closes only that, so a store opened for a new
generation and the old one it replaces share a server and collections safely; opening verifies,
never creates, reloads or releases a collection.
Milvus Lite serves a .db folder to one process only: for several workers run `milvus-lite server
--data-dir DIR` and point MILVUS_URI at http://127.0.0.1:19530. docs/milvus.md: a real server, the
faults measured against it and what the service answers.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from search.filters import MAX_STRING, Condition, ProductFilter
from search.index_format import PROBE_MIN_COSINE, Index
from search.vectors.base import Hits, VectorStore, VectorStoreError

log = logging.getLogger("fashion.milvus")

IDENTITY_PROPERTY = "fashion.identity"  # embedder, pooling, dim, which collection of the pair
PUBLISHED_PROPERTY = "fashion.published"  # generation, catalog fingerprint, counts, when
INDEX_PROPERTY = "fashion.index"  # index type, metric and build params (for search params)
FIELDS_PROPERTY = "fashion.fields"  # the filter fields: attribute name -> Milvus field and type
IDENTITY_FORMAT = 1
FIELDS_FORMAT = 1
PRESENT_FIELD = "f_present"  # ARRAY<INT64>: which attributes (by column) the row has a value for
STRING_MAX = 4 * MAX_STRING  # bytes of a stored string: any value a request can compare fits
ARRAY_MAX_CAPACITY = 4096  # Milvus' limit on an ARRAY field's elements
MAX_FIELDS = 64  # a Milvus server's default proxy.maxFieldNum (fields per collection)
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
COLLECTION_MISSING = 100  # Milvus' CollectionNotExists code: dropped under the service
_COLLECTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,200}")


# --------------------------------------------------------------------------- shared with indexing/publish


# What pymilvus reads from the environment when it is imported (pymilvus/settings.py): its ORM's
# default connection, which parses MILVUS_URI and refuses a .db path ("Illegal uri") - the value
# this service documents for Milvus Lite - or a bad MILVUS_CONN_TIMEOUT. MilvusClient never uses
# them (every client here gets its uri), so they are hidden while pymilvus is imported.
PYMILVUS_IMPORT_ENV = ("MILVUS_URI", "MILVUS_DEFAULT_CONNECTION", "MILVUS_CONN_ALIAS", "MILVUS_CONN_TIMEOUT")
# pymilvus also calls python-dotenv's load_dotenv() at import: a .env file found walking up from
# its install folder (a venv inside the repo: the repo's .env, compose's file) would be loaded into
# os.environ. The service's settings come from its own environment only.
DOTENV_SWITCH = "PYTHON_DOTENV_DISABLED"
_pymilvus_module = None
_pymilvus_lock = threading.Lock()


def pymilvus():
    """The pymilvus module, imported once with PYMILVUS_IMPORT_ENV hidden and .env loading off;
    the environment is put back exactly as it was (a .env that set one of them is undone too)."""
    global _pymilvus_module
    if _pymilvus_module is not None:
        return _pymilvus_module
    with _pymilvus_lock:
        if _pymilvus_module is None:
            names = (*PYMILVUS_IMPORT_ENV, DOTENV_SWITCH)
            saved = {name: os.environ.get(name) for name in names}
            for name in PYMILVUS_IMPORT_ENV:
                os.environ.pop(name, None)
            os.environ[DOTENV_SWITCH] = "1"
            try:
                import pymilvus as module
            except ImportError as exc:
                raise VectorStoreError(f"SEARCH_BACKEND=milvus needs pymilvus installed "
                                       f"(pip install 'pymilvus[milvus-lite]'): {exc}") from None
            except Exception as exc:  # noqa: BLE001 - pymilvus failed at import: say so, not a traceback
                raise VectorStoreError(f"pymilvus failed to import: {_reason(exc)}") from None
            finally:
                for name, value in saved.items():
                    if value is None:
                        os.environ.pop(name, None)
                    else:
                        os.environ[name] = value
            _pymilvus_module = module
    return _pymilvus_module


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
    """A Milvus filter-expression string literal (Milvus Lite has no expression templates).
    Backslash, double quote, LF, CR and tab are escaped; any other character stands for itself
    inside the quotes. Those five escapes are the ones both grammars read alike: Milvus Lite's
    lexer knows only them (and \\'), refusing \\b, \\f and \\uXXXX, so json.dumps will not do;
    a Milvus server reads the literal with Go's strconv.Unquote."""
    escaped = (text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
               .replace("\r", "\\r").replace("\t", "\\t"))
    return f'"{escaped}"'


def in_filter(field: str, values) -> str:
    return f"{field} in [{', '.join(quote(v) for v in values)}]"


def field_mapping(types: Mapping[str, str], capacities: Mapping[str, int] | None = None) -> dict:
    """The filter fields a collection holds for attributes of these types (AttributeColumns.types,
    in column order): attribute i is Milvus field f_<i>. `capacities` (publish): max_capacity of
    each strings field."""
    fields = []
    for i, (name, kind) in enumerate(types.items()):
        entry = {"name": name, "type": kind, "field": f"f_{i}"}
        if kind == "strings" and capacities is not None:
            entry["max_capacity"] = int(capacities[name])
        fields.append(entry)
    return {"format": FIELDS_FORMAT, "present": PRESENT_FIELD, "max_length": STRING_MAX, "fields": fields}


NO_FIELDS = {"format": FIELDS_FORMAT, "present": PRESENT_FIELD, "max_length": STRING_MAX, "fields": []}


def _described(mapping: dict) -> str:
    shown = ", ".join(f"{f.get('name')!r} {f.get('type')}" for f in mapping.get("fields") or []) or "none"
    return shown if len(shown) <= 300 else shown[:297] + "..."


def fields_mismatch(remote: dict | None, local: dict) -> str | None:
    """Why a collection's filter fields (its FIELDS_PROPERTY; None: published before filters,
    which is right for an index without attributes) are not the local index's, or None."""
    remote = NO_FIELDS if remote is None else remote
    for key in ("format", "present", "max_length"):
        if remote.get(key) != local[key]:
            return f"filter fields {key} {remote.get(key)!r} there, {local[key]!r} here"

    def shape(mapping):
        return [(f.get("name"), f.get("type"), f.get("field")) for f in mapping.get("fields") or []]

    if shape(remote) != shape(local):
        return f"filter fields there: {_described(remote)}; here: {_described(local)}"
    return None


RANGE_SYMBOLS = {"gte": ">=", "gt": ">", "lte": "<=", "lt": "<"}


def _literal(kind: str, value) -> str | None:
    """A value of a condition as a Milvus literal, None where no stored value can equal it."""
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"not a finite number: {value!r}")
        return repr(float(value))  # shortest round trip: 12.5, -0.0, 1e-07, 1e+16 (both grammars)
    if kind == "boolean":
        if not isinstance(value, bool):
            raise ValueError(f"not a boolean: {value!r}")
        return "true" if value else "false"
    if not isinstance(value, str):
        raise ValueError(f"not a string: {value!r}")
    if len(value) > MAX_STRING:
        return None  # longer than any stored value (publish stores those as none)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON \ud800 escape: never in the index
        return None
    return quote(value)


def filter_expression(conditions: Sequence[Condition], mapping: dict) -> str | None:
    """The Milvus boolean expression of ANDed conditions over the collection's filter fields
    (`mapping`: field_mapping of the local index), or None when no product can pass. Built only
    from the checked Conditions: field names from the mapping, values as literals."""
    where = {f["name"]: (i, f) for i, f in enumerate(mapping["fields"])}
    present, parts = set(), []
    for condition in conditions:
        if condition.field not in where:
            raise VectorStoreError(f"the Milvus collections have no filter field {condition.field!r}; "
                                   "re-publish the index (`python -m search.index publish --replace`)")
        i, entry = where[condition.field]
        kind, field, op, value = entry["type"], entry["field"], condition.op, condition.value
        if condition.type != kind:
            raise ValueError(f"condition on {condition.field!r} is {condition.type}, the field {kind}")
        present.add(i)
        if op in ("in", "contains_any"):
            literals = list(dict.fromkeys(x for x in (_literal(kind, v) for v in value) if x is not None))
            if not literals:
                return None
        else:
            literal = _literal(kind, value)
            if literal is None:
                return None
        if op == "eq" and kind in ("number", "boolean", "string"):
            parts.append(f"{field} == {literal}")
        elif op == "in" and kind == "boolean":
            if len(literals) == 1:  # both true and false: any product with a value
                parts.append(f"{field} == {literals[0]}")
        elif op == "in" and kind in ("number", "string"):
            parts.append(f"{field} in [{', '.join(literals)}]")
        elif op in ("gte", "gt", "lte", "lt") and kind == "number":
            parts.append(f"{field} {RANGE_SYMBOLS[op]} {literal}")
        elif op == "contains" and kind == "strings":
            parts.append(f"array_contains({field}, {literal})")
        elif op == "contains_any" and kind == "strings":
            parts.append(f"array_contains_any({field}, [{', '.join(literals)}])")
        else:
            raise ValueError(f"operator {op!r} does not apply to a {kind} field")
    if not present:
        return ""
    parts.insert(0, f"array_contains_all({mapping['present']}, [{', '.join(str(i) for i in sorted(present))}])")
    return " and ".join(f"({part})" for part in parts)


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


def groups_by(server_version: str) -> bool:
    """Whether a Milvus of this version answers grouping searches: "v2.3.5" does not (grouping came
    with 2.4), "v2.4.x" and later do, and so does Milvus Lite ("milvus_lite-3.2.2")."""
    found = re.match(r"v?(\d+)\.(\d+)", str(server_version))
    return found is None or (int(found[1]), int(found[2])) >= (2, 4)


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
    backend = "milvus"
    capabilities = frozenset()  # an ANN search: no score of every product

    def __init__(self, index: Index, settings):
        self.index = index
        self.uri = check_uri(settings.milvus_uri)
        self.shown_uri = display_uri(self.uri)
        self.token = settings.milvus_token or ""
        self.timeout = float(settings.milvus_timeout)
        self.names = collection_names(index, settings.milvus_collection)
        self.collection_base = settings.milvus_collection  # None: derived from the index
        self.identity = local_identity(index)
        self.fields = field_mapping(index.attributes.types)  # the filter fields the collections must have
        self.score_max = index.pooling == "score-max"
        self._client = None
        self._failure: tuple[float, VectorStoreError | None] = (0.0, None)  # last failed connect
        # Guards the connection state below; never held during a Milvus call.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a connect attempt ended, or close()
        self._connecting: threading.Thread | None = None  # the connect attempt in flight
        self._attempts = 0  # connect attempts ended so far
        self._closed = False
        self._index_info: dict = {}  # the vector index of the collection searched
        self._published: dict = {}
        self._warned_unknown = False
        # score-max: whether the server answers grouping searches (group_by_field: Milvus 2.4+
        # and Milvus Lite; Milvus 2.3 ignores it and returns images, several per product).
        self._groups = True
        self._most_images = max(1, int(index.counts.max())) if len(index.counts) else 1
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
            if self.score_max:
                self._groups = groups_by(client.get_server_version(timeout=self.timeout))
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
                        f"{self._publish_command()}")
                description = client.describe_collection(name, timeout=self.timeout)
                remote = read_property(description, IDENTITY_PROPERTY)
                why = "it has no identity (not published by search.index publish)" if remote is None \
                    else identity_mismatch(remote, self.identity)
                if why:
                    raise _IdentityError(f"Milvus collection {name} at {self.shown_uri} was published from "
                                         f"another index: {why}; publish this index or fix MILVUS_COLLECTION")
                why = fields_mismatch(read_property(description, FIELDS_PROPERTY), self.fields)
                if why:  # the same vectors, other attributes (a feed gained or lost one): fixed by a publish
                    raise VectorStoreError(
                        f"Milvus collection {name} at {self.shown_uri} does not hold this index's filter fields "
                        f"({why}); re-publish it: {self._publish_command(replace=True)}")
                if kind == ("images" if self.score_max else "products"):
                    self._index_info = read_property(description, INDEX_PROPERTY) or {}
                    # Informative only: Milvus 2.3 persists each property change one change late,
                    # so a restarted 2.3 server has forgotten the last one (this, written last).
                    self._published = read_property(description, PUBLISHED_PROPERTY) or {}
                load = client.get_load_state(name, timeout=self.timeout)
                state = str(getattr(load.get("state"), "name", load.get("state")))
                if state == "Loading":  # waiting here would hold the connect: say so, try again later
                    raise VectorStoreError(
                        f"Milvus at {self.shown_uri} is still loading collection {name} "
                        f"({load.get('progress', 0)}%): a publish loading it, or a restarted server, which loads "
                        "it again once the old process's sessions in etcd expire (common.session.ttl)")
                if state != "Loaded":  # only what is not loaded: a loaded collection is never reloaded
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

    def _drop(self, client, *, grace_s: float = 0.0) -> None:
        """Forget `client` (if it is still the current one) and close it, in the background: a
        close waits on pymilvus' process-wide connection lock, which a connect to a hung server
        holds for up to MILVUS_TIMEOUT. `grace_s`: calls other requests still make on it end first."""
        with self._lock:
            current = client is not None and self._client is client
            if current:
                self._client = None
        if current:  # else another caller dropped it (and closes it) already
            _close_later(client, grace_s)

    def _connected(self, *, retry_now: bool = False):
        """The client, connecting when there is none. One connect at a time runs, in a thread of
        its own; a caller waits for it at most MILVUS_TIMEOUT, so no request (nor any lock) is held
        longer than that by a server that hangs. During an outage (a failure known, the last
        connect failed less than RECONNECT_PAUSE_S ago or one is in flight) requests fail at once
        with the last reason; readiness (check, retry_now) always waits for a fresh attempt."""
        deadline = time.monotonic() + self.timeout
        with self._lock:
            waited_for = None  # the count of finished attempts when this call began to wait
            while True:
                if self._client is not None:
                    return self._client
                if self._closed:
                    raise VectorStoreError(f"the Milvus store for {self.shown_uri} is closed")
                failed_at, failure = self._failure
                if waited_for is not None and self._attempts != waited_for and failure is not None:
                    raise type(failure)(str(failure))  # the attempt this call waited for failed
                if self._connecting is None:
                    if failure is not None and not retry_now and time.monotonic() - failed_at < RECONNECT_PAUSE_S:
                        raise type(failure)(str(failure))
                    self._connecting = threading.Thread(target=self._connect_in_background, daemon=True,
                                                        name="milvus-connect")
                    self._connecting.start()
                elif failure is not None and not retry_now and waited_for is None:
                    raise type(failure)(f"{failure} (reconnecting)")
                waited_for = self._attempts
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    last = f"; last failure: {failure}" if failure is not None else ""
                    raise VectorStoreError(f"Milvus at {self.shown_uri} did not answer a connect within "
                                           f"MILVUS_TIMEOUT ({self.timeout:g} s){last}")
                self._changed.wait(remaining)

    def _connect_in_background(self) -> None:
        client, failure = None, None
        try:
            client = self._connect()
        except VectorStoreError as exc:
            failure = exc
        except Exception as exc:  # noqa: BLE001 - a thread must not die with a traceback
            failure = VectorStoreError(f"Milvus at {self.shown_uri}: connect failed: {_reason(exc)}")
        with self._lock:
            self._connecting = None
            self._attempts += 1
            if client is not None and not self._closed:
                self._client, self._failure, client = client, (0.0, None), None
            elif failure is not None:
                self._failure = (time.monotonic(), failure)
            self._changed.notify_all()
        if client is not None:  # closed meanwhile
            _close(client)

    def _call(self, what: str, fn):
        """fn(client) with the connection made on demand; failures become VectorStoreError."""
        client = self._connected()
        try:
            return fn(client)
        except Exception as exc:  # noqa: BLE001
            # Whatever failed (a collection not loaded after a restart included), the next call
            # connects again and _verify says why or loads what is not loaded - in the background.
            error = self._call_error(what, exc)
            self._drop(client, grace_s=self.timeout)
            raise error from None

    def _call_error(self, what: str, exc: Exception) -> VectorStoreError:
        reason = _reason(exc)
        if getattr(exc, "code", None) == COLLECTION_MISSING or "collection not found" in reason.lower():
            return VectorStoreError(f"Milvus at {self.shown_uri}: {what} failed: {reason}; the collections "
                                    f"{' and '.join(self.names.values())} may have been dropped: publish the index "
                                    f"with {self._publish_command()}")
        return VectorStoreError(f"Milvus at {self.shown_uri}: {what} failed: {reason}")

    def _publish_command(self, *, replace: bool = False) -> str:
        """The command that publishes this index where this store looks for it."""
        collection = f" --collection {self.collection_base}" if self.collection_base else ""
        return (f"`python -m search.index publish --index {self.index.directory} --milvus {self.shown_uri}"
                f"{collection}{' --replace' if replace else ''}`")

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
            self._drop(client, grace_s=self.timeout)
            raise

    def close(self) -> None:
        """Closes this store's own connection only (dedicated: no other store shares it). The
        collections stay as they are - loaded, not released - for the other stores of this
        process or others (a generation swap opens the new store before it closes the old one)."""
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
            self._changed.notify_all()
        if client is not None:
            _close_later(client, 0.0)

    def describe(self) -> dict:
        info = self._index_info
        return {"backend": self.backend, "uri": self.shown_uri, "collections": list(self.names.values()),
                "pooling": self.index.pooling, "index_type": info.get("index_type"), "metric": info.get("metric"),
                "published_generation": self._published.get("generation"),
                "local_generation": self.index.meta.get("generation"), "timeout_s": self.timeout}

    # ------------------------------------------------------------------ queries

    def _names_filter(self, names: list[str], *, exclude: bool = False) -> tuple[str, float]:
        """The expression keeping these products (or all but them with `exclude`), and the share
        of the products it keeps."""
        if exclude and not names:
            return "", 1.0
        field = "product" if self.score_max else "name"
        total = len(self.index.products)
        share = (total - len(names) if exclude else len(names)) / max(total, 1)
        return f"{'not ' if exclude else ''}{in_filter(field, names)}", share

    def _search(self, query: np.ndarray, k: int, where: str = "", share: float = 1.0) -> tuple[list[str], np.ndarray]:
        """Product names and cosines of the k best passing the expression `where` (keeping
        `share` of the products), by an ANN search of Milvus."""
        info = self._index_info
        metric = info.get("metric", "IP")
        rescore = any(q in str(info.get("index_type", "")).upper() for q in QUANTISED)
        collection = self._searched
        outputs = ["product", "vector"] if rescore else ["product"] if self.score_max else ["digest"]

        def run(client):
            limit, kwargs = k, {}
            if self.score_max and self._groups:
                kwargs = {"group_by_field": "product"}
            elif self.score_max:  # no grouping there: enough images for k products, best kept below
                limit = min(MAX_TOPK, k * self._most_images)
            result = client.search(
                collection, data=[query.tolist()], limit=limit, output_fields=outputs, filter=where,
                search_params={"metric_type": metric, "params": search_params(info, limit, share)},
                timeout=self.timeout, **kwargs)
            return result[0] if result else []

        found = self._call("search", run)
        keys = [hit["entity"]["product"] if self.score_max else hit.id for hit in found]
        if rescore:
            vectors = np.asarray([hit["entity"]["vector"] for hit in found], np.float32).reshape(len(found), -1)
            scores = vectors @ query if len(found) else np.zeros(0, np.float32)
        else:
            scores = cosine_from(metric, [hit["distance"] for hit in found])
        scores = np.asarray(scores, np.float32)
        if self.score_max:  # a product scores as its best image (a server that ignored group_by)
            best: dict[str, float] = {}
            for key, score in zip(keys, scores.tolist(), strict=True):
                if score > best.get(key, -math.inf):
                    best[key] = score
            keys, scores = list(best), np.asarray(list(best.values()), np.float32)
        return keys, scores

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

    def _row_chunks(self, rows: np.ndarray):
        """The rows in runs of about CHUNK_KEYS vectors (products', or their images'; a product
        with more images is a run of its own)."""
        if not self.score_max:
            for first in range(0, len(rows), CHUNK_KEYS):
                yield rows[first:first + CHUNK_KEYS]
            return
        counts = self.index.counts[rows]
        first = held = 0
        for i, count in enumerate(counts.tolist()):
            if held and held + count > CHUNK_KEYS:
                yield rows[first:i]
                first, held = i, 0
            held += count
        if first < len(rows):
            yield rows[first:]

    def _exact_among(self, query: np.ndarray, rows: np.ndarray, k: int) -> Hits:
        """Fetch the products' vectors and score them here: exact on any server. A run of about
        CHUNK_KEYS vectors at a time, keeping the k best: memory stays bounded for any number of
        rows (a filter's fallback may score many)."""
        best = Hits(np.zeros(0, np.int64), np.zeros(0, np.float32))
        for chunk in self._row_chunks(np.asarray(rows, np.int64)):
            if self.score_max:
                found, scores, _ = self._best_images(query, chunk)
            else:
                names = [self.index.products[int(r)] for r in chunk]
                vectors = self._vectors("products", names)
                held = [i for i, name in enumerate(names) if name in vectors]
                if not held:
                    continue
                found, scores = chunk[held], np.stack([vectors[names[i]] for i in held]) @ query
            best = Hits.best(np.concatenate([best.rows, found]), np.concatenate([best.scores, scores]), k)
        return best

    def top(self, query: np.ndarray, k: int, product_filter: ProductFilter | None = None) -> Hits:
        k = min(int(k), MAX_TOPK)
        if k <= 0:
            return Hits(np.zeros(0, np.int64), np.zeros(0, np.float32))
        query = np.asarray(query, np.float32)
        if product_filter is None:
            return self._hits(*self._search(query, k), k)
        passing = product_filter.count
        if passing == 0:
            return Hits(np.zeros(0, np.int64), np.zeros(0, np.float32))
        where = filter_expression(product_filter.conditions, self.fields)
        if where is not None:
            share = passing / max(len(self.index.products), 1)
            hits = self._hits(*self._search(query, k, where, share), k)
            # The local mask is the truth: collections published from another generation may hold
            # other values. Hits outside it are dropped; too few left -> the exact path.
            inside = product_filter.mask[hits.rows]
            if inside.all() and len(hits.rows) >= min(k, passing):
                return hits
            log.debug("filtered Milvus search gave %d of %d products passing %s: scoring them exactly",
                      int(inside.sum()), min(k, passing), product_filter.key)
        return self._exact_among(query, product_filter.rows, k)

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
            keys, scores = self._search(query, k, *self._names_filter(
                [self.index.products[int(r)] for r in others], exclude=True))
            hits = self._hits(keys, scores, k)
            if len(hits.rows) >= min(k, len(rows)):
                return hits
            return self._exact_among(query, rows, k)  # the ANN could not reach enough of them
        keys, scores = [], []
        for first in range(0, len(rows), CHUNK_KEYS):
            chunk = rows[first:first + CHUNK_KEYS]
            want = min(k, len(chunk))
            found, cosines = self._search(query, want, *self._names_filter(
                [self.index.products[int(r)] for r in chunk]))
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


def _close_later(client, delay_s: float) -> None:
    """Close the client in a daemon thread, after delay_s (0: now), never in the caller's."""
    timer = threading.Timer(delay_s, _close, args=(client,))
    timer.daemon = True
    timer.start()

