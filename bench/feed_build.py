"""Feed indexing throughput (URL images from a local HTTP server) against the folder build, in one run.

    python bench/feed_build.py [--products 24] [--per-product 2] [--models real-cost|oracle]
                               [--weights DIR] [--batch-size 8] [--out DIR]

Makes --products x --per-product synthetic product photos (a person wearing one garment, as
tests/conftest.py `person_wearing` draws them, 480x640 JPEG) and writes them twice:

  (a) a catalog folder, one folder per product ("p007-navy-skirt/1.jpg"), built with
      `search.indexing.builder.build_index(catalog, out, embedder, garments)`;
  (b) a JSON Lines feed (id, name, category, price, in_stock, images) whose images are URLs served
      by a `http.server.ThreadingHTTPServer` on 127.0.0.1 (from memory, with an ETag; a request
      with a matching If-None-Match gets a 304 and no body), built with
      `load_feed_catalog(feed, vocabulary=Vocabulary.load(), fetch_policy=FetchPolicy(allow_hosts=
      {"127.0.0.1"}), cache_dir=...)` then `build_index(None, out, embedder, garments, feed=catalog)`;
  (c) the same feed again with `update=True` (image cache warm: every image a 304, no body; every
      embedding reused by key and content hash).

Timed in this process with one model set (the models are loaded and warmed on one photo first, so
neither build pays the first session run): images/s = images / wall seconds of each step (for the
feed: download + build), the ratio feed / folder, the download share of the feed build (the
load_feed_catalog call: fetch, cache write, sha256, the feed's rows read) and the bytes downloaded.
The folder and feed indexes are checked to hold the same vectors.

Models, as bench/index_throughput.py: --models real-cost (default) writes the random-weight U^2-Net
ONNX models of rembg's exact shapes with ../shared/tools/real-cost-models/make_models.py (once, into
--out/real-cost-models; --weights DIR uses a folder that has them): the real cost per image;
--models oracle uses the tests' tiny oracle models, so the figures show the pipeline's own overhead
(decode, hashing, downloads, writing) rather than model time. CLIP is random-weight ViT-B-32
(CLIP_PRETRAINED=""), ORT_THREADS=1 and TORCH_THREADS=1 (one build worker). Traffic goes only to
127.0.0.1; the server is shut down at the end.
"""
from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

MAKE_MODELS = REPO.parent / "shared" / "tools" / "real-cost-models" / "make_models.py"
# (name words, garment colour) per product, cycled: the colours the oracle models segment
# (tests/conftest.py PRODUCT_COLOURS), the words naming the garment the vocabulary chooses.
GARMENTS = [("red top", (220, 30, 30)), ("blue trousers", (30, 30, 220)), ("yellow dress", (220, 220, 30)),
            ("dark red blouse", (150, 20, 20)), ("navy skirt", (20, 20, 150)), ("orange tunic", (230, 120, 20))]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def photo(colour, variant: int) -> bytes:
    """tests/conftest.py person_wearing (a face, one garment on grey), at 480x640, as JPEG."""
    import io

    from PIL import Image, ImageDraw

    from tests import scenes

    img = Image.new("RGB", (240, 320), scenes.SCENERY)
    d = ImageDraw.Draw(img)
    d.rectangle((95, 20, 145, 70), fill=scenes.SKIN)
    d.rectangle((60 + variant * 4, 70, 180 - variant * 4, 300), fill=colour)
    out = io.BytesIO()
    img.resize((480, 640), Image.NEAREST).save(out, "JPEG", quality=95)
    return out.getvalue()


class ImageServer:
    """A ThreadingHTTPServer on 127.0.0.1 serving images from memory, each with an ETag (its
    sha256): If-None-Match with it gets a 304 and no body. Counts bodies, 304s and bytes."""

    def __init__(self):
        self.images: dict[str, tuple[bytes, str]] = {}
        self.bodies = self.not_modified = self.bytes = 0
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 - http.server's name
                held = server.images.get(self.path)
                if held is None:
                    self.send_error(404)
                    return
                body, etag = held
                if self.headers.get("If-None-Match") == etag:
                    with server.lock:
                        server.not_modified += 1
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                with server.lock:
                    server.bodies += 1
                    server.bytes += len(body)
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # quiet
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def add(self, path: str, body: bytes) -> str:
        self.images[path] = (body, f'"{hashlib.sha256(body).hexdigest()[:16]}"')
        return self.base + path

    def counts(self) -> tuple[int, int, int]:
        with self.lock:
            return self.bodies, self.not_modified, self.bytes

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


def model_env(args, root: Path) -> tuple[dict, str]:
    """The environment of one build worker and a line saying which bg models it runs."""
    if args.models == "oracle":
        from tests.oracle_models import write_oracle_models

        weights = root / "oracle-models"
        write_oracle_models(str(weights))
        which = f"tiny oracle models ({weights}): pipeline overhead, not model time"
    else:
        weights = Path(args.weights) if args.weights else root / "real-cost-models"
        if not args.weights and not any(weights.glob("*.onnx")):
            log(f"writing the real-cost U^2-Net models with {MAKE_MODELS} --out {weights}")
            subprocess.run([sys.executable, str(MAKE_MODELS), "--out", str(weights)], check=True)
        which = f"real-cost random-weight U^2-Net ONNX models ({weights}, make_models.py): the real cost per image"
    env = {"U2NET_HOME": str(weights), "MODEL_CHECKSUM_DISABLED": "1", "CLIP_MODEL": args.clip_model,
           "CLIP_PRETRAINED": "", "ORT_THREADS": "1", "TORCH_THREADS": "1", "BG_ALLOW_DOWNLOAD": "0"}
    return env, which


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=24)
    parser.add_argument("--per-product", type=int, default=2)
    parser.add_argument("--models", choices=("real-cost", "oracle"), default="real-cost")
    parser.add_argument("--weights", help="a U2NET_HOME with the real-cost models already written")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--clip-model", default="ViT-B-32")
    parser.add_argument("--out", type=Path, default=Path("/tmp/feed-build-bench"),
                        help="scratch folder (the models are kept there; the rest is rewritten)")
    args = parser.parse_args()
    root = args.out
    root.mkdir(parents=True, exist_ok=True)
    for stale in ("catalog", "feed", "cache", "index-folder", "index-feed"):
        shutil.rmtree(root / stale, ignore_errors=True)
    env, which = model_env(args, root)
    os.environ.update(env)

    from search.config import ClipSettings
    from search.index_format import Index
    from search.indexing.builder import build_index
    from search.indexing.embedding import BuildModels
    from search.indexing.feed_catalog import load_feed_catalog
    from shared.fetch import FetchPolicy
    from shared.garment_vocabulary import Vocabulary
    from shared.images import decode_image

    server = ImageServer()
    try:
        catalog, feed_dir = root / "catalog", root / "feed"
        feed_dir.mkdir(parents=True)
        rows, total_bytes = [], 0
        for p in range(args.products):
            words, colour = GARMENTS[p % len(GARMENTS)]
            key = f"p{p:03d}"
            folder = catalog / f"{key}-{words.replace(' ', '-')}"
            folder.mkdir(parents=True)
            urls = []
            for v in range(args.per_product):
                body = photo(colour, (p + v) % 6)
                total_bytes += len(body)
                (folder / f"{v}.jpg").write_bytes(body)
                urls.append(server.add(f"/img/{key}/{v}.jpg", body))
            rows.append({"id": key, "name": f"{words} {p}", "category": words.split()[-1],
                         "price": 10.0 + p, "in_stock": p % 2 == 0, "images": urls})
        feed = feed_dir / "feed.jsonl"
        feed.write_text("".join(json.dumps(r) + "\n" for r in rows))
        images = args.products * args.per_product
        print(f"{images} photos (480x640 JPEG, {total_bytes / 1e6:.2f} MB) over {args.products} products; "
              f"bg models: {which}; CLIP {args.clip_model} random weights; ORT_THREADS=1 TORCH_THREADS=1; "
              f"batch {args.batch_size}; {os.cpu_count()} cores, load {'/'.join(f'{v:.1f}' for v in os.getloadavg())}; "
              f"image server {server.base} (ThreadingHTTPServer, ETag)")

        started = time.perf_counter()
        embedder, garments = BuildModels(ClipSettings.from_env()).load()
        first = decode_image((next(catalog.glob("*/0.jpg"))).read_bytes(), max_side=garments.working_max_side)
        embedder.encode_images([garments.garment(first).picture])  # each session's first run allocates
        print(f"models loaded and warmed in {time.perf_counter() - started:.1f} s (not in the timings)")
        policy = FetchPolicy(allow_hosts=frozenset({"127.0.0.1"}))
        vocabulary = Vocabulary.load()
        common = {"batch_size": args.batch_size, "progress": False}
        results = []

        log("folder build")
        started = time.perf_counter()
        report = build_index(catalog, root / "index-folder", embedder, garments, **common)
        results.append({"mode": "folder build", "wall": time.perf_counter() - started, "build": report.seconds,
                        "download": 0.0, "report": report, "http": (0, 0, 0)})

        for mode, update in (("feed build (cold cache)", False), ("feed --update (warm cache)", True)):
            log(mode)
            before = server.counts()
            started = time.perf_counter()
            loaded = load_feed_catalog(feed, vocabulary=vocabulary, fetch_policy=policy, cache_dir=root / "cache",
                                       progress=False)
            download = time.perf_counter() - started
            report = build_index(None, root / "index-feed", embedder, garments, feed=loaded, update=update, **common)
            wall = time.perf_counter() - started
            after = server.counts()
            results.append({"mode": mode, "wall": wall, "build": report.seconds, "download": download, "report": report,
                            "http": tuple(a - b for a, b in zip(after, before, strict=True))})

        folder_rate = images / results[0]["wall"]
        print("\n| mode | images | embedded / reused / skipped | wall s | images/s | x folder | download s "
              "(share of wall) | bodies / 304s | bytes downloaded |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in results:
            rep, (bodies, not_modified, sent) = r["report"], r["http"]
            rate = images / r["wall"]
            d = rep.downloads
            got = f"{d.bytes:,} (server sent {sent:,})" if d is not None else "-"
            print(f"| {r['mode']} | {rep.images} | {rep.embedded} / {rep.reused} / {len(rep.skipped)} | {r['wall']:.2f} | "
                  f"{rate:.2f} | {rate / folder_rate:.2f} | "
                  + (f"{r['download']:.2f} ({r['download'] / r['wall']:.1%})" if d is not None else "-")
                  + f" | {bodies} / {not_modified} | {got} |")
        a = Index.load(root / "index-folder")
        b = Index.load(root / "index-feed")
        same = (np.asarray(a.image_embeddings).shape == np.asarray(b.image_embeddings).shape
                and float(np.abs(np.asarray(a.image_embeddings) - np.asarray(b.image_embeddings)).max()))
        print(f"\nfolder and feed indexes: {len(a.products)} / {len(b.products)} products, "
              f"{len(a.image_files)} / {len(b.image_files)} images, "
              + (f"image vectors max |diff| {same:.1e}" if same is not False else "image vectors differ in shape")
              + f"; feed index catalog_kind {b.catalog_kind}, filterable {sorted(b.attributes.types)}")
        cold, warm = results[1], results[2]
        print(f"feed build / folder build: {cold['wall'] / results[0]['wall']:.2f}x the wall time "
              f"({(images / cold['wall']) / folder_rate:.2f}x the images/s); download {cold['download']:.2f} s = "
              f"{cold['download'] / cold['wall']:.1%} of the feed build, {cold['http'][2] / 1e6:.2f} MB over "
              f"{cold['http'][0]} bodies; --update: {warm['http'][0]} bodies, {warm['http'][1]} 304s, "
              f"{warm['report'].embedded} embedded, {warm['wall']:.2f} s")
    finally:
        server.close()
        print("image server shut down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
