"""Publish an index's vectors to Milvus, for SEARCH_BACKEND=milvus (see search/vectors/milvus.py).

    python -m search.index publish --index INDEX_DIR --milvus URI [--collection BASE]
                                   [--index-type HNSW] [--metric IP] [--index-param M=32 ...]

URI: a path ending in .db (Milvus Lite, a folder; one process at a time) or http(s)://host:19530.
Idempotent: rows are keyed by product key and "product/file" and carry a hash of their vector and
their product's filter values, so a publish upserts only new or changed rows (a changed price: that
product's row and its images' rows) and deletes the rows of products and images the index no
longer has; publishing the same index twice changes nothing. The collections are created (with
the index's identity and filter-field mapping in their properties) when absent, and refused when
they hold another index's vectors or other filter fields (a feed gained, lost or retyped an
attribute, or a list outgrew its field's max_capacity): --replace drops and recreates them. Their
vector index is created when absent, or rebuilt when --index-type/--metric/--index-param changed;
then they are loaded.

Filter fields (see search/vectors/milvus.py): attribute i of the index is field f_<i> (number
DOUBLE, boolean BOOL, string VARCHAR, strings ARRAY<VARCHAR>) in both collections, and f_present
lists the attributes a product has a value for. A Milvus server holds MAX_FIELDS fields per
collection (proxy.maxFieldNum), so an index with more than MAX_FIELDS - 6 attributes is refused.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from search.config import BackendSettings
from search.filters import MAX_STRING
from search.index_format import Index, IndexLoadError
from search.vectors import VectorStoreError
from search.vectors.milvus import (
    ARRAY_MAX_CAPACITY,
    FIELDS_PROPERTY,
    IDENTITY_PROPERTY,
    INDEX_PROPERTY,
    KEY_MAX,
    MAX_FIELDS,
    METRICS,
    NAME_MAX,
    PRESENT_FIELD,
    PUBLISHED_PROPERTY,
    STRING_MAX,
    check_uri,
    collection_names,
    display_uri,
    field_mapping,
    fields_mismatch,
    identity_mismatch,
    in_filter,
    local_identity,
    pymilvus,
    read_property,
)

PRIMARY = {"products": "name", "images": "key"}
BASE_FIELDS = 6  # the images collection's key, product, file, digest, vector and f_present
SCAN_BATCH = 4096  # keys per page when listing what a collection holds
DELETE_BATCH = 1000
MIN_CAPACITY = 16  # max_capacity of a strings field: twice its longest list, at least this


class PublishError(Exception):
    """The publish cannot proceed (message says why); nothing was changed, or the next run fixes it."""


def default_index_params(index_type: str, n: int) -> dict:
    kind = index_type.upper()
    if kind.startswith("HNSW"):
        return {"M": 32, "efConstruction": 200}
    if kind.startswith("IVF"):
        return {"nlist": max(1, min(65536, int(4 * math.sqrt(n))))}
    return {}


def digest(vector: np.ndarray, fields: bytes = b"") -> str:
    """Hash of a row's vector and its filter values (none: the vector's alone, as before filters)."""
    return hashlib.blake2b(np.ascontiguousarray(vector, np.float32).tobytes() + fields, digest_size=8).hexdigest()


class FilterValues:
    """An index's filter fields as Milvus stores them, product by product: every field set (an
    absent value as 0 / false / "" / []) and f_present listing the attributes the product has a
    value for. A string longer than MAX_STRING characters is stored as no value (a list: without
    it): no request can compare it, so no filter changes, and every stored string fits STRING_MAX."""

    def __init__(self, index: Index):
        attributes = index.attributes
        self.types = dict(attributes.types)
        self.fields = [f"f_{i}" for i in range(len(self.types))]
        self.values: list[list] = []
        self.present: list[np.ndarray] = []
        self.longest: dict[str, int] = {}
        for name, kind in self.types.items():
            if kind == "number":
                column = np.asarray(attributes.column(name, "values"), np.float64)
                has = ~np.isnan(column)
                values = np.where(has, column, 0.0).tolist()
            elif kind == "boolean":
                column = np.asarray(attributes.column(name, "values"))
                has = column >= 0
                values = (column == 1).tolist()
            else:
                table = attributes.vocabulary(name)
                vocabulary = [table[c] for c in range(len(table))]
                usable = [len(v) <= MAX_STRING for v in vocabulary]
                codes = np.asarray(attributes.column(name, "codes")).tolist()
                if kind == "string":
                    values = [vocabulary[c] if c >= 0 and usable[c] else "" for c in codes]
                    has = np.array([c >= 0 and usable[c] for c in codes], bool)
                else:
                    offsets = np.asarray(attributes.column(name, "offsets")).tolist()
                    values = [list(dict.fromkeys(vocabulary[c] for c in codes[offsets[p]:offsets[p + 1]] if usable[c]))
                              for p in range(len(offsets) - 1)]
                    has = np.array([bool(v) for v in values], bool)
                    longest = max((len(v) for v in values), default=0)
                    if longest > ARRAY_MAX_CAPACITY:
                        p = max(range(len(values)), key=lambda p: len(values[p]))
                        raise PublishError(f"product {index.products[p]!r} has {longest} values of {name!r}; "
                                           f"a Milvus array holds at most {ARRAY_MAX_CAPACITY}")
                    self.longest[name] = longest
            self.values.append(values)
            self.present.append(has)
        if self.types and len(self.types) + BASE_FIELDS > MAX_FIELDS:
            raise PublishError(f"the index has {len(self.types)} filterable fields; a Milvus collection holds at most "
                               f"{MAX_FIELDS} fields (proxy.maxFieldNum), so at most {MAX_FIELDS - BASE_FIELDS} "
                               "attributes: drop some from the feed (or its --schema)")

    def mapping(self, capacities: dict[str, int] | None = None) -> dict:
        """The collections' FIELDS_PROPERTY; a new collection gets room for twice its longest lists."""
        if capacities is None:
            capacities = {name: min(ARRAY_MAX_CAPACITY, max(MIN_CAPACITY, 2 * n)) for name, n in self.longest.items()}
        return field_mapping(self.types, capacities)

    def short_capacity(self, remote: dict | None) -> str | None:
        """Why a collection's strings fields cannot hold this index's lists, or None."""
        for entry in (remote or {}).get("fields") or []:
            name = entry.get("name")
            if name in self.longest and self.longest[name] > int(entry.get("max_capacity") or 0):
                return (f"{name!r} has a list of {self.longest[name]} values, the collection's field holds at most "
                        f"{entry.get('max_capacity')}")
        return None

    def row(self, product: int) -> tuple[dict, bytes]:
        """The product's filter fields (for the upsert) and their canonical bytes (for the digest)."""
        if not self.types:
            return {}, b""
        fields = {field: values[product] for field, values in zip(self.fields, self.values, strict=True)}
        fields[PRESENT_FIELD] = [i for i, has in enumerate(self.present) if has[product]]
        return fields, json.dumps([fields[f] for f in (*self.fields, PRESENT_FIELD)]).encode()


def schema(client_cls, kind: str, dim: int, mapping: dict | None = None):
    from pymilvus import DataType

    s = client_cls.create_schema(auto_id=False, enable_dynamic_field=False)
    if kind == "products":
        s.add_field("name", DataType.VARCHAR, is_primary=True, max_length=NAME_MAX)
    else:
        s.add_field("key", DataType.VARCHAR, is_primary=True, max_length=KEY_MAX)
        s.add_field("product", DataType.VARCHAR, max_length=NAME_MAX)
        s.add_field("file", DataType.VARCHAR, max_length=NAME_MAX)
    s.add_field("digest", DataType.VARCHAR, max_length=32)
    s.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    fields = (mapping or {}).get("fields") or []
    for entry in fields:
        kind_of = entry["type"]
        if kind_of == "number":
            s.add_field(entry["field"], DataType.DOUBLE)
        elif kind_of == "boolean":
            s.add_field(entry["field"], DataType.BOOL)
        elif kind_of == "string":
            s.add_field(entry["field"], DataType.VARCHAR, max_length=STRING_MAX)
        else:
            s.add_field(entry["field"], DataType.ARRAY, element_type=DataType.VARCHAR, max_length=STRING_MAX,
                        max_capacity=entry["max_capacity"])
    if fields:
        s.add_field(PRESENT_FIELD, DataType.ARRAY, element_type=DataType.INT64, max_capacity=len(fields))
    return s


def local_rows(index: Index, kind: str, filters: FilterValues | None = None):
    """(key, digest, row of the matrix, extra fields) of every product or image, in index order;
    the extra fields hold the product's filter fields (an image row: its product's)."""
    filters = filters or FilterValues(index)
    if kind == "products":
        vectors = index.product_embeddings
        for p in range(len(index.products)):
            fields, text = filters.row(p)
            yield index.products[p], digest(vectors[p], text), p, fields
        return
    vectors = index.image_embeddings
    for p in range(len(index.products)):
        product = index.products[p]
        fields, text = filters.row(p)
        for row in index.image_rows(p):
            file = index.image_files[row]
            yield f"{product}/{file}", digest(vectors[row], text), row, {"product": product, "file": file, **fields}


def remote_digests(client, name: str, kind: str, timeout: float | None) -> dict[str, str]:
    """Every primary key the collection holds, with its digest, read in pages (no vectors)."""
    iterator = client.query_iterator(name, batch_size=SCAN_BATCH, output_fields=[PRIMARY[kind], "digest"],
                                     timeout=timeout)
    held = {}
    try:
        while True:
            page = iterator.next()
            if not page:
                break
            held.update((row[PRIMARY[kind]], row.get("digest")) for row in page)
    finally:
        iterator.close()
    return held


def publish(index_dir, uri: str, *, token: str | None = None, collection: str | None = None,
            index_type: str = "HNSW", metric: str = "IP", index_params: dict | None = None,
            batch: int = 1000, timeout: float | None = 120.0, replace: bool = False,
            progress: bool = True) -> dict:
    """Load `index_dir`'s vectors into Milvus at `uri`; returns a report (collections, rows
    upserted / unchanged / deleted per collection, index, seconds)."""
    started = time.perf_counter()
    metric = metric.upper()
    index_type = index_type.upper()
    if metric not in METRICS:
        raise PublishError(f"metric {metric!r} is not one of {', '.join(METRICS)} (the vectors are normalised: "
                           "IP and COSINE give the cosine, L2 its distance)")
    try:
        uri = check_uri(uri)
        index = Index.load(index_dir)
        names = collection_names(index, collection)
        client_cls = pymilvus().MilvusClient
    except (VectorStoreError, IndexLoadError) as exc:
        raise PublishError(str(exc)) from None
    filters = FilterValues(index)
    identity = local_identity(index)
    dim = identity["dim"]
    shown = display_uri(uri)
    try:
        client = client_cls(uri=uri, token=token or "", timeout=timeout)
    except Exception as exc:  # noqa: BLE001
        hint = (" (Milvus Lite serves a .db folder to one process at a time: stop the service using it, or "
                "run `milvus-lite server --data-dir DIR` and publish to http://127.0.0.1:19530)"
                if uri.endswith(".db") else "")
        raise PublishError(f"Milvus at {shown} is unreachable: {getattr(exc, 'message', None) or exc}{hint}") from None
    report = {"uri": shown, "collections": dict(names), "index_type": index_type, "metric": metric,
              "generation": index.meta.get("generation"), "upserted": {}, "unchanged": {}, "deleted": {},
              "index_built": []}
    try:
        for kind, name in names.items():
            n = len(index.products) if kind == "products" else len(index.image_files)
            params = dict(index_params) if index_params is not None else default_index_params(index_type, n)
            wanted_index = {"index_type": index_type, "metric": metric, "params": params}
            created = _ensure_collection(client, client_cls, name, kind, identity, dim, replace, timeout, shown,
                                         filters)
            # Index first, then load: a Milvus server answers queries on loaded collections only.
            if _ensure_index(client, name, kind, wanted_index, timeout):
                report["index_built"].append(name)
                client.alter_collection_properties(name, properties={INDEX_PROPERTY: json.dumps(wanted_index)},
                                                   timeout=timeout)
            client.load_collection(name, timeout=timeout)
            held = {} if created else remote_digests(client, name, kind, timeout)
            upserted, unchanged, seen = _upsert(client, name, kind, index, filters, held, batch, timeout, progress)
            gone = [key for key in held if key not in seen]
            for first in range(0, len(gone), DELETE_BATCH):
                client.delete(name, filter=in_filter(PRIMARY[kind], gone[first:first + DELETE_BATCH]),
                              timeout=timeout)
            if upserted or gone:
                client.flush(name, timeout=timeout)  # seal the segments: indexed and persisted
            client.alter_collection_properties(name, properties={
                PUBLISHED_PROPERTY: json.dumps({
                    "generation": index.meta.get("generation"),
                    "catalog_fingerprint": index.meta.get("catalog_fingerprint"),
                    "rows": len(seen), "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}),
            }, timeout=timeout)
            report["upserted"][kind], report["unchanged"][kind], report["deleted"][kind] = upserted, unchanged, len(gone)
    except PublishError:
        raise
    except Exception as exc:  # noqa: BLE001 - a Milvus error: say which server and why
        raise PublishError(f"Milvus at {shown}: {getattr(exc, 'message', None) or exc}") from None
    finally:
        with contextlib.suppress(Exception):
            client.close()
    report["seconds"] = round(time.perf_counter() - started, 3)
    return report


def _ensure_collection(client, client_cls, name, kind, identity, dim, replace, timeout, shown,
                       filters: FilterValues) -> bool:
    """Create the collection unless it exists with this identity and these filter fields; True
    when created."""
    mapping = filters.mapping()
    if client.has_collection(name, timeout=timeout):
        description = client.describe_collection(name, timeout=timeout)
        remote = read_property(description, IDENTITY_PROPERTY)
        why = "it has no identity (not made by publish)" if remote is None \
            else identity_mismatch(remote, identity)
        if why is None:
            fields = read_property(description, FIELDS_PROPERTY)
            why_fields = fields_mismatch(fields, mapping) or filters.short_capacity(fields)
            if why_fields is None:
                return False
            if not replace:
                raise PublishError(f"collection {name} at {shown} holds other filter fields than this index: "
                                   f"{why_fields}; pass --replace to drop and recreate it (the service answers 503 "
                                   "until the publish is done), or publish under another --collection")
        elif not replace:
            raise PublishError(f"collection {name} at {shown} holds another index's vectors: {why}; "
                               "publish under another --collection, or pass --replace to drop and recreate it")
        client.drop_collection(name, timeout=timeout)
    client.create_collection(
        name, schema=schema(client_cls, kind, dim, mapping), consistency_level="Bounded", timeout=timeout,
        properties={IDENTITY_PROPERTY: json.dumps({**identity, "collection": kind}),
                    FIELDS_PROPERTY: json.dumps(mapping)})
    return True


def _upsert(client, name, kind, index, filters, held, batch, timeout, progress) -> tuple[int, int, set]:
    vectors = index.product_embeddings if kind == "products" else index.image_embeddings
    total = len(index.products) if kind == "products" else len(index.image_files)
    seen, pending = set(), []
    upserted = unchanged = 0
    bar = tqdm(total=total, desc=f"publishing {kind}", unit="row", disable=not progress)

    def flush_pending():
        nonlocal upserted
        if pending:
            client.upsert(name, [{PRIMARY[kind]: key, "digest": d, "vector": np.asarray(vectors[row], np.float32),
                                  **extra} for key, d, row, extra in pending], timeout=timeout)
            upserted += len(pending)
            pending.clear()

    for key, d, row, extra in local_rows(index, kind, filters):
        seen.add(key)
        bar.update(1)
        if held.get(key) == d:
            unchanged += 1
            continue
        pending.append((key, d, row, extra))
        if len(pending) >= batch:
            flush_pending()
    flush_pending()
    bar.close()
    return upserted, unchanged, seen


def _ensure_index(client, name, kind, wanted: dict, timeout) -> bool:
    """Create the vector index (and the images' scalar index on product) if absent or changed."""
    current = read_property(client.describe_collection(name, timeout=timeout), INDEX_PROPERTY)
    existing = client.list_indexes(name, field_name="vector", timeout=timeout)
    if existing and current == wanted:
        return False
    if existing:
        client.release_collection(name, timeout=timeout)
        for index_name in existing:
            client.drop_index(name, index_name, timeout=timeout)
    params = client.prepare_index_params()
    params.add_index("vector", index_type=wanted["index_type"], metric_type=wanted["metric"], params=wanted["params"])
    client.create_index(name, params, timeout=timeout)
    if kind == "images" and not client.list_indexes(name, field_name="product", timeout=timeout):
        _create_product_index(client, name, timeout)
    return True


def _create_product_index(client, name, timeout) -> None:
    """The images' scalar index on product: INVERTED (Milvus Lite has no other, Milvus 2.4+ has
    it), else Trie - Milvus 2.3 has no INVERTED and answers "index type not match: invalid
    parameter[expected=Trie][actual=INVERTED]"."""
    for index_type in ("INVERTED", "Trie"):
        params = client.prepare_index_params()
        params.add_index("product", index_type=index_type)
        try:
            client.create_index(name, params, timeout=timeout)
            return
        except Exception as exc:  # noqa: BLE001 - only that refusal moves on to Trie
            if index_type != "INVERTED" or "expected=Trie" not in str(getattr(exc, "message", None) or exc):
                raise


# --------------------------------------------------------------------------- command line


def key_value(text: str) -> tuple[str, object]:
    """argparse type of a KEY=VALUE option (--index-param, --ann-param): values parsed as JSON
    where they are (numbers, true/false), else kept as strings."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected key=value")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def register(subparsers, settings: BackendSettings | None = None) -> argparse.ArgumentParser:
    """Add the `publish` subcommand to search.index's argparse subparsers (func=run); defaults
    from the MILVUS_* settings."""
    p = subparsers.add_parser("publish", help="load an index's vectors into Milvus (SEARCH_BACKEND=milvus)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", type=Path, required=True, help="index folder (built by `search.index build`)")
    settings = settings or BackendSettings.from_env()
    uri = settings.milvus_uri
    p.add_argument("--milvus", default=uri, required=uri is None,
                   help="a path ending in .db (Milvus Lite) or http(s)://host:19530 (default: $MILVUS_URI)")
    p.add_argument("--token", default=settings.milvus_token,
                   help="user:password or API key of a secured server (default: $MILVUS_TOKEN)")
    p.add_argument("--collection", default=settings.milvus_collection,
                   help="collection name prefix (default: derived from the index's identity)")
    p.add_argument("--index-type", default="HNSW", help="Milvus vector index type (HNSW, IVF_FLAT, FLAT, ...)")
    p.add_argument("--metric", default="IP", choices=METRICS, type=str.upper)
    p.add_argument("--index-param", dest="index_params", action="append", type=key_value, metavar="KEY=VALUE",
                   help="index build parameter, repeatable (default HNSW M=32 efConstruction=200; "
                        "IVF nlist=4*sqrt(n))")
    p.add_argument("--batch", type=int, default=1000, help="rows per upsert")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per Milvus call")
    p.add_argument("--replace", action="store_true",
                   help="drop collections of the same name that hold another index's vectors")
    p.add_argument("--no-wait", action="store_true",
                   help="when another writer holds the index folder, exit with status 2 instead of waiting for it")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    """`search.index publish`: holds the index folder's writer lock while it publishes, so the
    collections get one whole generation (a build waits for it, and it for a build)."""
    from search.index_guard import WriterBusy, writer_lock

    if not Path(args.index).is_dir():  # no lock file (or folder) made for a mistyped path
        print(f"error: there is no index at {args.index}; build it with "
              f"`python -m search.index build --catalog DIR --out {args.index}`", file=sys.stderr)
        return 1
    try:
        with writer_lock(args.index, "publish", wait=not getattr(args, "no_wait", False)):
            report = publish(args.index, args.milvus, token=args.token, collection=args.collection,
                             index_type=args.index_type, metric=args.metric,
                             index_params=dict(args.index_params) if args.index_params else None,
                             batch=args.batch, timeout=args.timeout, replace=args.replace)
    except WriterBusy as exc:
        print(exc, file=sys.stderr)
        return WriterBusy.EXIT_STATUS
    except PublishError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=1))
    return 0
