"""Download (or copy) the sample catalog listed in sample/manifest.tsv and verify every image.

    python sample/fetch_catalog.py --out DIR              # from the public source URLs
    python sample/fetch_catalog.py --from SRC --out DIR   # from a local copy (air-gapped builds)

The sample images are the source repository's photos downsized so the long side is 640 px (PIL
LANCZOS) and saved as PNG (see sample/README.md). A local copy is checked byte for byte
(`sha256`); a download is converted the same way and checked pixel for pixel (`pixels_sha256`,
the sha256 of the decoded RGBA pixels), which does not depend on the PNG encoder's version.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import shutil
import sys
import time
import urllib.request
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
LONG_SIDE = 640


def read_manifest(path: Path = HERE / "manifest.tsv") -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def pixels_sha256(picture: Image.Image) -> str:
    rgba = picture.convert("RGBA")
    return hashlib.sha256(f"{rgba.width}x{rgba.height}".encode() + rgba.tobytes()).hexdigest()


def prepare(data: bytes) -> Image.Image:
    """The documented conversion of a source photo: RGBA, long side 640 px, LANCZOS."""
    picture = Image.open(io.BytesIO(data)).convert("RGBA")
    scale = LONG_SIDE / max(picture.size)
    if scale < 1:
        size = (round(picture.width * scale), round(picture.height * scale))
        picture = picture.resize(size, Image.LANCZOS)
    return picture


def download(url: str, attempts: int = 3) -> bytes:
    for attempt in range(1, attempts + 1):
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                return response.read()
        except OSError as exc:
            if attempt == attempts:
                raise RuntimeError(f"download failed after {attempts} attempts: {url}: {exc}") from None
            time.sleep(2 * attempt)
    raise AssertionError("unreachable")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--from", dest="source", type=Path, help="a local copy of the catalog")
    args = parser.parse_args(argv)
    rows = read_manifest()
    failures = []
    for i, row in enumerate(rows, 1):
        target = args.out / row["folder"] / row["file"]
        target.parent.mkdir(parents=True, exist_ok=True)
        if args.source:
            src = args.source / row["folder"] / row["file"]
            if not src.is_file() or hashlib.sha256(src.read_bytes()).hexdigest() != row["sha256"]:
                failures.append(f"{src}: missing or sha256 differs")
                continue
            shutil.copyfile(src, target)
        else:
            picture = prepare(download(row["url"]))
            if pixels_sha256(picture) != row["pixels_sha256"]:
                failures.append(f"{row['url']}: pixels differ from the manifest")
                continue
            picture.save(target, "PNG")
        print(f"[{i}/{len(rows)}] {row['folder']}/{row['file']}", file=sys.stderr)
    if failures:
        print("\n".join(failures), file=sys.stderr)
        print(f"{len(failures)} of {len(rows)} images failed verification", file=sys.stderr)
        return 1
    print(f"{len(rows)} images verified into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
