"""A shop's product feed, read and checked: one product per JSON Lines line or CSV row.

    python -m search.indexing.feed FEED [--schema SCHEMA.json] [--max-bad-rows N]

prints the attribute types (declared or inferred), the products read and every bad row with its
line number and reason; exit 1 when there are more bad rows than --max-bad-rows allows.

Fields:
    id           required, unique; a string (a JSON integer is taken as its digits)
    name         required; the product_name of results
    images       at least one: http(s) URLs, or paths relative to the feed's folder
                 (JSON: a list or one string; CSV: separated by `|`)
    description, category, brand, url (the product page): optional text
    anything else: an attribute of type string, number, boolean or strings (a list of strings;
                 CSV: separated by `|`), one type across the feed; declared in SCHEMA.json
                 ({"price": "number", "sizes": "strings"}) or inferred from the values

A CSV value is text, so inference reads "12.5" as a number, "true"/"false" as a boolean and a value
with `|` as strings; declare the type to keep e.g. a numeric-looking code a string. An empty CSV
cell or a JSON null is an absent attribute.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

TEXT_FIELDS = ("description", "category", "brand", "url")
RESERVED = ("id", "name", "images", *TEXT_FIELDS)
TYPES = ("string", "number", "boolean", "strings")
LIST_SEPARATOR = "|"
TRUE, FALSE = ("true", "yes"), ("false", "no")
MAX_ATTRIBUTES = 256  # per feed: each becomes a filterable field


class FeedError(ValueError):
    """The feed cannot be indexed (unreadable, a bad schema, too many bad rows); str() says why."""


@dataclass(frozen=True)
class BadRow:
    line: int  # 1-based; for CSV the header is line 1
    reason: str
    id: str | None = None

    def __str__(self) -> str:
        product = f" (id {self.id!r})" if self.id else ""
        return f"line {self.line}{product}: {self.reason}"


@dataclass(frozen=True)
class FeedProduct:
    id: str
    name: str
    images: tuple[str, ...]  # URLs as given, local paths made absolute
    line: int
    description: str | None = None
    category: str | None = None
    brand: str | None = None
    url: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """What chooses the garment classes and what lexical search reads: name, category, description."""
        return " ".join(part for part in (self.name, self.category, self.description) if part)


@dataclass
class Feed:
    products: list[FeedProduct]
    schema: dict[str, str]  # attribute -> type
    bad_rows: list[BadRow]
    inferred: set[str]  # attributes whose type was inferred, not declared


class _Bad(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def load_schema(path: Path) -> dict[str, str]:
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FeedError(f"schema {path}: {exc}") from None
    if not isinstance(schema, dict):
        raise FeedError(f"schema {path}: must be a JSON object of attribute -> type")
    for name, kind in schema.items():
        if name in RESERVED:
            raise FeedError(f"schema {path}: {name!r} is a product field, not an attribute")
        if kind not in TYPES:
            raise FeedError(f"schema {path}: {name!r} has type {kind!r}; types are {', '.join(TYPES)}")
    return dict(schema)


def _rows(path: Path) -> Iterator[tuple[int, dict | None, str | None]]:
    """(line, fields, why unreadable) per product row, from JSON Lines or CSV (by the suffix)."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".ndjson", ".json"):
            with open(path, encoding="utf-8") as fh:
                for line, text in enumerate(fh, 1):
                    if not text.strip():
                        continue
                    try:
                        row = json.loads(text)
                    except ValueError as exc:
                        yield line, None, f"not JSON: {exc}"
                        continue
                    yield (line, row, None) if isinstance(row, dict) else (line, None, "not a JSON object")
        elif suffix in (".csv", ".tsv"):
            with open(path, encoding="utf-8-sig", newline="") as fh:
                reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
                if not reader.fieldnames:
                    raise FeedError(f"{path}: no header row")
                for row in reader:
                    if None in row:
                        yield reader.line_num, None, "more cells than the header has columns"
                        continue
                    yield reader.line_num, {k: v for k, v in row.items() if v not in (None, "")}, None
        else:
            raise FeedError(f"{path}: a feed is .jsonl (JSON Lines) or .csv/.tsv, not {suffix or 'no suffix'}")
    except UnicodeDecodeError as exc:
        raise FeedError(f"{path}: not UTF-8 ({exc})") from None
    except OSError as exc:
        raise FeedError(f"{path}: {exc}") from None


def _text(row: dict, name: str, *, required: bool = False) -> str | None:
    value = row.get(name)
    if value is None:
        if required:
            raise _Bad(f"no {name}")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _Bad(f"{name} must be a string, not {type(value).__name__}")
    value = str(value).strip()
    if required and not value:
        raise _Bad(f"{name} is empty")
    return value or None


def _images(row: dict, base: Path, from_text: bool) -> tuple[str, ...]:
    value = row.get("images")
    if isinstance(value, str):
        value = value.split(LIST_SEPARATOR) if from_text else [value]
    if value is None or not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Bad("images must be a list of URLs or paths" if value is not None else "no images")
    images = []
    for image in (v.strip() for v in value):
        if not image:
            continue
        scheme = urlsplit(image).scheme.lower()
        if scheme in ("http", "https"):
            if not urlsplit(image).hostname:
                raise _Bad(f"image URL {image!r} has no host")
            images.append(image)
        elif scheme and len(scheme) > 1:  # a one-letter "scheme" is a Windows drive
            raise _Bad(f"image {image!r}: only http(s) URLs or local paths")
        else:
            images.append(str((base / image).resolve()))
    if not images:
        raise _Bad("no images")
    return tuple(dict.fromkeys(images))


def _kind_of(value: Any, from_text: bool) -> str:
    """The type a value shows (for inference)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, list):
        return "strings"
    if from_text and isinstance(value, str):
        text = value.strip()
        if text.lower() in TRUE + FALSE:
            return "boolean"
        if LIST_SEPARATOR in text:
            return "strings"
        try:
            return "number" if math.isfinite(float(text)) else "string"
        except ValueError:
            return "string"
    return "string"


def _typed(value: Any, kind: str, from_text: bool) -> Any:
    """`value` as attribute type `kind`, or _Bad saying why not."""
    if kind == "string":
        if isinstance(value, str):
            return value.strip()
        if from_text or isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Bad(f"is {type(value).__name__}, the feed's type for it is string")
        return str(value)  # a JSON number where text is declared: its digits
    if kind == "number":
        if from_text and isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise _Bad(f"{value!r} is not a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _Bad(f"{value!r} is not a number")
        return value
    if kind == "boolean":
        if from_text and isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
            return value.strip().lower() in TRUE
        if not isinstance(value, bool):
            raise _Bad(f"{value!r} is not a boolean")
        return value
    if from_text and isinstance(value, str):
        value = value.split(LIST_SEPARATOR)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Bad(f"{value!r} is not a list of strings")
    return [v.strip() for v in value if v.strip()]


def _inferred(shown: Counter) -> str:
    """An attribute's type from the types its values show: text next to lists is a one-item list;
    otherwise the most common type wins (ties: string), and the other rows are bad rows."""
    if "strings" in shown and set(shown) <= {"string", "strings"}:
        return "strings"
    return max(shown, key=lambda kind: (shown[kind], kind == "string"))


def read_feed(path: Path, schema: dict[str, str] | None = None) -> Feed:
    """Every product of the feed at `path`, and every bad row with its reason (never raised for a
    row: the caller decides how many it accepts, see check_bad_rows). Attribute types come from
    `schema`; an attribute it does not declare takes the type most of its values show."""
    path = Path(path)
    base = path.resolve().parent
    from_text = path.suffix.lower() in (".csv", ".tsv")
    rows = list(_rows(path))
    declared = dict(schema or {})
    shown: dict[str, Counter] = {}
    for _, row, _ in rows:
        for name, value in (row or {}).items():
            if name not in RESERVED and name not in declared and value is not None:
                shown.setdefault(name, Counter())[_kind_of(value, from_text)] += 1
    inferred = {name: _inferred(counts) for name, counts in shown.items()}
    types = {**declared, **inferred}
    if len(types) > MAX_ATTRIBUTES:
        raise FeedError(f"{path}: {len(types)} attributes; at most {MAX_ATTRIBUTES}")

    products: list[FeedProduct] = []
    bad: list[BadRow] = []
    seen: dict[str, int] = {}
    for line, row, unreadable in rows:
        if unreadable:
            bad.append(BadRow(line, unreadable))
            continue
        product_id = None
        try:
            product_id = _text(row, "id", required=True)
            if product_id in seen:
                raise _Bad(f"duplicate id: first on line {seen[product_id]}")
            name = _text(row, "name", required=True)
            texts = {f: _text(row, f) for f in TEXT_FIELDS}
            images = _images(row, base, from_text)
            attributes = {}
            for attribute, value in row.items():
                if attribute in RESERVED or value is None:
                    continue
                try:
                    attributes[attribute] = _typed(value, types[attribute], from_text)
                except _Bad as exc:
                    raise _Bad(f"attribute {attribute!r}: {exc.reason}") from None
        except _Bad as exc:
            bad.append(BadRow(line, exc.reason, product_id if isinstance(product_id, str) else None))
            continue
        seen[product_id] = line
        products.append(FeedProduct(id=product_id, name=name, images=images, line=line, attributes=attributes,
                                    **texts))
    return Feed(products, types, bad, set(inferred))


def check_bad_rows(feed: Feed, max_bad_rows: int, path: Path | str = "the feed") -> None:
    """FeedError listing the bad rows when there are more than `max_bad_rows` (the build then
    stops and leaves the previous index as it was)."""
    if len(feed.bad_rows) > max_bad_rows:
        shown = "\n  ".join(str(row) for row in feed.bad_rows[:20])
        more = f"\n  ... and {len(feed.bad_rows) - 20} more" if len(feed.bad_rows) > 20 else ""
        raise FeedError(f"{path}: {len(feed.bad_rows)} bad rows, {max_bad_rows} allowed (--max-bad-rows):\n  "
                        f"{shown}{more}")


def describe(feed: Feed) -> str:
    lines = [f"{len(feed.products)} products, {len(feed.bad_rows)} bad rows"]
    for name, kind in sorted(feed.schema.items()):
        lines.append(f"  {name}: {kind}{' (inferred)' if name in feed.inferred else ''}")
    lines += [f"  bad: {row}" for row in feed.bad_rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("feed", type=Path)
    parser.add_argument("--schema", type=Path, help="attribute types, JSON: {\"price\": \"number\", ...}")
    parser.add_argument("--max-bad-rows", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        feed = read_feed(args.feed, load_schema(args.schema) if args.schema else None)
        print(describe(feed))
        if feed.inferred:
            inferred = {name: feed.schema[name] for name in sorted(feed.inferred)}
            print(f"inferred schema (save it and pass --schema to fix it): {json.dumps(inferred)}")
        check_bad_rows(feed, args.max_bad_rows, args.feed)
    except FeedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
