"""File digests both services and the indexer take (weights files, catalog images)."""
from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """The file's sha256 (hex), read in blocks: a weights file of gigabytes is never held whole."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
