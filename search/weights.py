"""Fetch the configured CLIP weights with open_clip's own download code (into CLIP_CACHE_DIR).

    python -m search.weights download   # needs internet; the Docker build runs it

Prints the sha256 of every weights file fetched. With CLIP_WEIGHTS_SHA256 set (the Docker build
arg of the same name), the download fails unless one of them has that digest.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from search.config import ClipSettings
from shared.digests import file_sha256
from shared.settings import exit_on_bad_settings


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["download"]:
        print(__doc__, file=sys.stderr)
        return 2
    settings = exit_on_bad_settings(ClipSettings.from_env)
    if not settings.pretrained:
        print("CLIP_PRETRAINED is empty: nothing to download (random weights)")
        return 0
    from search.embedder import ClipEmbedder

    ClipEmbedder(settings)  # create_model_and_transforms(pretrained=...) downloads and loads
    cache = Path(settings.cache_dir or os.path.expanduser("~/.cache"))
    digests = set()
    for path in sorted(p for p in cache.rglob("*") if p.is_file() and p.stat().st_size > 1 << 20):
        digest = file_sha256(path)
        digests.add(digest)
        print(f"{path}: {path.stat().st_size:,} bytes, sha256 {digest}")
    expected = (settings.weights_sha256 or "").lower()
    if expected and expected not in digests:
        print(f"no downloaded weights file has the expected sha256 {expected}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
