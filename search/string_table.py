"""StringTable: many strings as one UTF-8 byte array plus offsets (memory-mappable .npy pairs),
used by the index (search/index_format.py), its BM25 vocabulary and its filter columns."""
from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

import numpy as np


class StringTable(Sequence):
    """Strings stored as one UTF-8 byte array plus offsets: memory-mappable, no Python object per
    entry. `find` is a binary search and needs the strings sorted (the builder sorts them)."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray):
        self.blob, self.offsets = blob, offsets

    @staticmethod
    def arrays(strings: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        encoded = [s.encode("utf-8") for s in strings]
        offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
        blob = np.frombuffer(b"".join(encoded), np.uint8) if encoded else np.zeros(0, np.uint8)
        return blob, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return bytes(self.blob[self.offsets[i]:self.offsets[i + 1]]).decode("utf-8")

    def find(self, value: str) -> int | None:
        """Row of `value` in a sorted table, or None."""
        row = bisect.bisect_left(range(len(self)), value, key=self.__getitem__)
        return row if row < len(self) and self[row] == value else None

    def __contains__(self, value) -> bool:
        return isinstance(value, str) and self.find(value) is not None
