"""`python -m search.index verify --index DIR [--catalog DIR] [--decode] [--report FILE]`: the full
offline check of an index and its catalog, which a serving worker no longer does at start (it
checks a bounded sample, search/live.py, so that starting stays O(products) and one missing
image never takes a worker down).

Checks every image row: its file is under the catalog (a feed's URL images are not fetched), a
non-empty regular file, and with --decode an image Pillow can decode; and every vector row is
finite (a worker checks the product rows and the ends of the image rows). Prints a summary and
the first missing files, writes every problem to --report (JSON), and exits 1 when there is any.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from search.index_format import FINITE_CHECK_ROWS, Index, IndexLoadError

SHOWN = 10  # problems printed; the report lists them all


def verify_index(index: Index, catalog: Path, *, decode: bool = False, progress: bool = True) -> dict:
    """Every problem of the index at hand against `catalog`, as a report dict."""
    started = time.perf_counter()
    problems: dict[str, list[str]] = {"missing": [], "empty": [], "undecodable": []}
    checked = remote = 0
    for row in tqdm(range(len(index.image_files)), desc="images", unit="img", disable=not progress):
        path = index.image_path(catalog, row)
        if path is None:
            remote += 1
            continue
        checked += 1
        relpath = index.image_relpath(row)
        try:
            size = os.stat(path).st_size
        except OSError:
            problems["missing"].append(relpath)
            continue
        if size == 0 or not path.is_file():
            problems["empty"].append(relpath)
        elif decode and not _decodes(path):
            problems["undecodable"].append(relpath)
    bad_rows = [int(start + i) for start in range(0, len(index.image_files), FINITE_CHECK_ROWS)
                for i in np.flatnonzero(~np.isfinite(index.image_embeddings[start:start + FINITE_CHECK_ROWS]).all(axis=1))]
    return {"index": str(index.directory), "generation": index.meta["generation"], "catalog": str(catalog),
            "products": len(index.products), "images": len(index.image_files), "checked": checked, "remote": remote,
            **problems, "non_finite_image_rows": bad_rows, "seconds": round(time.perf_counter() - started, 2),
            "ok": not any(problems.values()) and not bad_rows}


def _decodes(path: Path) -> bool:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
        return True
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return False


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("verify", help="check every image file and vector of an index (offline, with a report)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", type=Path, required=True, help="index folder")
    p.add_argument("--catalog", type=Path, help="the catalog folder (default: the one the index was built from)")
    p.add_argument("--decode", action="store_true", help="also decode every image (slower)")
    p.add_argument("--report", type=Path, help="write every problem found here (JSON)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    try:
        index = Index.load(args.index)
    except IndexLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    catalog = args.catalog or Path(index.meta["catalog_dir"])
    if not catalog.is_dir():
        print(f"error: catalog folder {catalog} does not exist (pass --catalog)", file=sys.stderr)
        return 1
    report = verify_index(index, catalog, decode=args.decode, progress=not args.no_progress)
    if args.report:
        args.report.write_text(json.dumps(report, indent=1))
    print(f"{report['products']:,} products, {report['images']:,} images: {report['checked']:,} files checked under "
          f"{catalog}{' (decoded)' if args.decode else ''}, {report['remote']:,} URL images not fetched, "
          f"in {report['seconds']} s")
    for kind in ("missing", "empty", "undecodable"):
        if report[kind]:
            print(f"{len(report[kind]):,} {kind}: {', '.join(report[kind][:SHOWN])}"
                  f"{' ...' if len(report[kind]) > SHOWN else ''}")
    if report["non_finite_image_rows"]:
        print(f"{len(report['non_finite_image_rows']):,} image rows with NaN/inf: rebuild the index")
    print("ok" if report["ok"] else f"problems found{'; all of them in ' + str(args.report) if args.report else ''}")
    return 0 if report["ok"] else 1
