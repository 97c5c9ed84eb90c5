"""Filters on product fields: the columns an index stores for them, and a request's `filter`
checked against those columns and turned into a row mask (plain numpy, no Flask).

A feed's attributes (and its `category` and `brand`) are stored column by column in the index's
generation folder, one set of .npy arrays per field, memory-mapped like the vectors:

    number    attr.<i>.values   float64 [products], NaN where the product has none
    boolean   attr.<i>.values   int8 [products]: 1, 0, or -1 where the product has none
    string    attr.<i>.codes    int32 [products] into the field's sorted vocabulary, -1 = none
              attr.<i>.vocab.utf8 / .offsets
    strings   attr.<i>.offsets  int64 [products + 1], attr.<i>.codes int32: each product's values
              attr.<i>.vocab.utf8 / .offsets

meta.json's "attributes" lists [{"name", "type"}] in column order <i>. A filter is evaluated as
one boolean mask over the products (vectorised per condition, ANDed), which every backend then
applies: the exact store as a row mask, FAISS as an ID selector, Milvus as the same conditions
in its own expression language (search/vectors/milvus.py builds it from `Condition`s, never from
request text).

Request syntax, every field ANDed:

    {"category": "dresses"}                     equal (a strings field: contains)
    {"brand": ["Acme", "Zed"]}                  any of the list
    {"price": {"gte": 10, "lt": 50}}            range: gte / gt / lte / lt, numbers only
    {"in_stock": true}                          booleans as JSON true/false
    {"sizes": {"contains": "M"}}                a strings field holds the value
    {"color": {"eq": "red"}}, {"color": {"in": [...]}}, {"sizes": {"contains_any": [...]}}

A product without a value for a field never passes a condition on it.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from search.string_table import StringTable
from shared.errors import BadRequest

TYPES = ("string", "number", "boolean", "strings")
PREFIX = "attr."
RANGE_OPERATORS = ("gte", "gt", "lte", "lt")
OPERATORS = ("eq", "in", *RANGE_OPERATORS, "contains", "contains_any")
MAX_FIELDS = 32  # conditions per filter
MAX_VALUES = 256  # values in one any-of list
MAX_STRING = 1024  # characters in one compared value


@dataclass(frozen=True)
class Condition:
    """One checked condition: `op` is one of OPERATORS, `value` a str/float/bool or, for in and
    contains_any, a tuple of them; typed as the field is."""
    field: str
    type: str
    op: str
    value: Any


@dataclass(frozen=True)
class ProductFilter:
    conditions: tuple[Condition, ...]
    mask: np.ndarray  # bool [products]: which pass every condition

    @property
    def count(self) -> int:
        return int(np.count_nonzero(self.mask))

    @property
    def rows(self) -> np.ndarray:
        return np.flatnonzero(self.mask).astype(np.int64)

    @property
    def key(self) -> str:
        """A canonical text of the conditions (equal filters, equal keys)."""
        return json.dumps([[c.field, c.op, c.value] for c in self.conditions], sort_keys=True, default=list)


# --------------------------------------------------------------------------- columns


class AttributeColumns:
    """The filterable fields of an index: their types and memory-mapped columns."""

    def __init__(self, fields: Sequence[Mapping], arrays: Mapping[str, np.ndarray], n_products: int):
        self.n_products = n_products
        self.types: dict[str, str] = {}
        self._column: dict[str, int] = {}
        self._arrays = arrays
        self._vocab: dict[str, StringTable] = {}
        for i, spec in enumerate(fields):
            name, kind = spec["name"], spec["type"]
            if kind not in TYPES:
                raise ValueError(f"attribute {name!r} has unknown type {kind!r}")
            self.types[name], self._column[name] = kind, i
            if kind in ("string", "strings"):
                self._vocab[name] = StringTable(arrays[f"{PREFIX}{i}.vocab.utf8"], arrays[f"{PREFIX}{i}.vocab.offsets"])
            need = {"number": ("values",), "boolean": ("values",), "string": ("codes",),
                    "strings": ("offsets", "codes")}[kind]
            for part in need:
                if f"{PREFIX}{i}.{part}" not in arrays:
                    raise ValueError(f"attribute {name!r} lacks its {part} column")
            if kind != "strings" and len(arrays[f"{PREFIX}{i}.{need[0]}"]) != n_products:
                raise ValueError(f"attribute {name!r} has a column of another length")

    @staticmethod
    def arrays(types: Mapping[str, str], values: Sequence[Mapping[str, Any]]) -> tuple[list[dict], dict[str, np.ndarray]]:
        """The columns of `values` (one dict per product, in product order; a missing key or None
        = no value): (meta.json's "attributes" list, the arrays by file name)."""
        fields = [{"name": name, "type": types[name]} for name in sorted(types)]
        arrays: dict[str, np.ndarray] = {}
        n = len(values)
        for i, spec in enumerate(fields):
            name, kind, at = spec["name"], spec["type"], f"{PREFIX}{i}"
            column = [product.get(name) for product in values]
            if kind == "number":
                arrays[f"{at}.values"] = np.array([np.nan if v is None else float(v) for v in column], np.float64)
            elif kind == "boolean":
                arrays[f"{at}.values"] = np.array([-1 if v is None else int(bool(v)) for v in column], np.int8)
            else:
                lists = [[] if v is None else ([v] if kind == "string" else list(v)) for v in column]
                vocabulary = sorted({s for vs in lists for s in vs})
                code = {s: c for c, s in enumerate(vocabulary)}
                arrays[f"{at}.vocab.utf8"], arrays[f"{at}.vocab.offsets"] = StringTable.arrays(vocabulary)
                if kind == "string":
                    arrays[f"{at}.codes"] = np.array([code[vs[0]] if vs else -1 for vs in lists], np.int32)
                else:
                    offsets = np.zeros(n + 1, np.int64)
                    np.cumsum([len(vs) for vs in lists], out=offsets[1:])
                    arrays[f"{at}.offsets"] = offsets
                    arrays[f"{at}.codes"] = np.array([code[s] for vs in lists for s in vs], np.int32)
        return fields, arrays

    def column(self, name: str, part: str) -> np.ndarray:
        return self._arrays[f"{PREFIX}{self._column[name]}.{part}"]

    def vocabulary(self, name: str):
        return self._vocab[name]

    def value(self, name: str, row: int):
        """A product's value of a field (None where it has none), as the feed gave it."""
        kind = self.types[name]
        if kind == "number":
            v = float(self.column(name, "values")[row])
            return None if math.isnan(v) else (int(v) if v.is_integer() and abs(v) < 2**53 else v)
        if kind == "boolean":
            v = int(self.column(name, "values")[row])
            return None if v < 0 else bool(v)
        if kind == "string":
            code = int(self.column(name, "codes")[row])
            return None if code < 0 else self._vocab[name][code]
        offsets = self.column(name, "offsets")
        codes = self.column(name, "codes")[offsets[row]:offsets[row + 1]]
        return [self._vocab[name][int(c)] for c in codes] or None

    def _codes(self, name: str, values) -> np.ndarray:
        """Vocabulary codes of the values the field has (values it never holds match nothing)."""
        table = self._vocab[name]
        found = (table.find(v) for v in values)
        return np.array(sorted({c for c in found if c is not None}), np.int64)

    def mask(self, condition: Condition) -> np.ndarray:
        """Which products pass one condition (bool [products])."""
        name, op, value = condition.field, condition.op, condition.value
        kind = self.types[name]
        if kind == "number":
            values = np.asarray(self.column(name, "values"))
            with np.errstate(invalid="ignore"):  # NaN (no value) compares False, as wanted
                if op == "eq":
                    return values == value
                if op == "in":
                    return np.isin(values, np.asarray(value, np.float64))
                return {"gte": np.greater_equal, "gt": np.greater, "lte": np.less_equal, "lt": np.less}[op](values, value)
        if kind == "boolean":
            values = np.asarray(self.column(name, "values"))
            return values == int(value) if op == "eq" else np.isin(values, [int(v) for v in value])
        wanted = self._codes(name, value if isinstance(value, tuple) else (value,))
        if kind == "string":
            return np.isin(self.column(name, "codes"), wanted)
        offsets, codes = np.asarray(self.column(name, "offsets")), np.asarray(self.column(name, "codes"))
        holders = np.repeat(np.arange(self.n_products), np.diff(offsets))[np.isin(codes, wanted)]
        mask = np.zeros(self.n_products, bool)
        mask[holders] = True
        return mask


# --------------------------------------------------------------------------- requests


def _refuse(where: str, detail: str):
    raise BadRequest(detail, field=where)


def _typed(where: str, name: str, kind: str, value) -> Any:
    """One compared value, checked against the field's type (a strings field compares strings)."""
    if isinstance(value, (dict, list)):
        _refuse(where, f"{where}: too deep; a value is a string, number or boolean here.")
    if kind in ("string", "strings"):
        if not isinstance(value, str):
            _refuse(where, f"{where}: {name!r} holds text; send a string.")
        if len(value) > MAX_STRING:
            _refuse(where, f"{where}: at most {MAX_STRING} characters.")
        return value
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            _refuse(where, f"{where}: {name!r} is a number; send a finite number.")
        return float(value)
    if not isinstance(value, bool):
        _refuse(where, f"{where}: {name!r} is a boolean; send true or false.")
    return value


def _listed(where: str, name: str, kind: str, values) -> tuple:
    if not isinstance(values, list):
        _refuse(where, f"{where}: send a list of values.")
    if not values:
        _refuse(where, f"{where}: the list is empty; send at least one value.")
    if len(values) > MAX_VALUES:
        _refuse(where, f"{where}: at most {MAX_VALUES} values.")
    return tuple(dict.fromkeys(_typed(f"{where}[{i}]", name, kind, v) for i, v in enumerate(values)))


def parse_conditions(raw, types: Mapping[str, str], where: str = "filter") -> tuple[Condition, ...]:
    """A request's filter object checked against the index's field types; BadRequest names the
    path of the first problem (filter.price.gte)."""
    if not isinstance(raw, dict):
        _refuse(where, f'{where} must be an object of field conditions, e.g. {{"category": "dresses"}}.')
    if len(raw) > MAX_FIELDS:
        _refuse(where, f"{where}: at most {MAX_FIELDS} fields.")
    conditions = []
    for name, spec in raw.items():
        at = f"{where}.{name}"
        kind = types.get(name)
        if kind is None:
            known = ", ".join(sorted(types)) or "none (this index has no filterable fields)"
            _refuse(at, f"{at}: unknown field {name!r}; filterable: {known}.")
        if not isinstance(spec, dict):  # shorthand: a value (eq / contains) or a list (in / contains_any)
            if isinstance(spec, list):
                op = "contains_any" if kind == "strings" else "in"
                conditions.append(Condition(name, kind, op, _listed(at, name, kind, spec)))
            else:
                op = "contains" if kind == "strings" else "eq"
                conditions.append(Condition(name, kind, op, _typed(at, name, kind, spec)))
            continue
        if not spec:
            _refuse(at, f"{at}: an empty condition; name an operator ({', '.join(OPERATORS)}).")
        for op, value in spec.items():
            here = f"{at}.{op}"
            if op not in OPERATORS:
                _refuse(here, f"{here}: unknown operator {op!r}; one of {', '.join(OPERATORS)}.")
            if op in RANGE_OPERATORS and kind != "number":
                _refuse(here, f"{here}: {op} compares numbers, and {name!r} is {kind}.")
            if op in ("contains", "contains_any") and kind != "strings":
                _refuse(here, f"{here}: {op} applies to a list field, and {name!r} is {kind}.")
            if op in ("eq", "in") and kind == "strings":
                _refuse(here, f"{here}: {name!r} is a list; use contains or contains_any.")
            if op in ("in", "contains_any"):
                conditions.append(Condition(name, kind, op, _listed(here, name, kind, value)))
            else:
                conditions.append(Condition(name, kind, op, _typed(here, name, kind, value)))
    return tuple(conditions)


def compile_filter(raw, columns: AttributeColumns, where: str = "filter") -> ProductFilter | None:
    """The request's filter as a row mask over the index's products; None for no filter (absent
    or {})."""
    if raw is None or raw == {}:
        return None
    conditions = parse_conditions(raw, columns.types, where)
    mask = np.ones(columns.n_products, bool)
    for condition in conditions:
        mask &= columns.mask(condition)
    return ProductFilter(conditions, mask)
