"""A photo query's latency per stage, and the memory the CLIP image tower adds to a search worker.

    python bench/photo_query.py --weights DIR [--photos ../shared/data/ccp/images] [--queries 12]

DIR holds rembg's three models: the real-cost U^2-Net files that
../shared/tools/real-cost-models/make_models.py writes (random weights, real shapes and cost)
plus ../shared/models/isnet-general-use.onnx. CLIP is ViT-B-32 with random weights (real size and
cost), exported to ONNX (text and image towers) as the shipped image serves it, over a synthetic
index of --products products.

What runs is the shipped topology and configuration: the bg-removal service and the search service
each under gunicorn with docker/gunicorn.conf.py (2 workers x 2 threads, worker recycling on), the
search service asking the bg service for the garment (BG_SERVICE_URL). Street photos (CCP) are
sent one at a time as multipart uploads; each service logs its stages per request, and the
figures are medians over the queries. A text query (cold: every query text is new) is the
baseline measured in the same run.

Memory: every search worker's RSS and PSS (/proc/<pid>/smaps_rollup) after the same traffic with
SEARCH_IMAGE_QUERIES=1 and =0, and with the garment step in-process (no BG_SERVICE_URL: the bg
models load into each search worker). Traffic goes only to 127.0.0.1.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import requests  # noqa: E402

from bench.load import start, worker_pids  # noqa: E402
from bench.memory import smaps_rollup, write_synthetic_index  # noqa: E402

SHIPPED = {"GUNICORN_WORKERS": "2", "GUNICORN_THREADS": "2", "ORT_THREADS": "1", "TORCH_THREADS": "1",
           "GUNICORN_LOG_LEVEL": "warning"}


def stage_lines(proc) -> list[dict]:
    """The JSON request logs the server printed (each with its stages_ms)."""
    proc.log.seek(0)
    records = []
    for line in proc.log.read().decode(errors="replace").splitlines():
        if line.startswith("{") and '"stages_ms"' in line:
            records.append(json.loads(line))
    return records


def medians(records: list[dict], path: str = "/") -> dict[str, float]:
    wanted = [r for r in records if r["path"] == path and r["status"] == 200]
    stages = sorted({s for r in wanted for s in r["stages_ms"]})
    out = {s: statistics.median(r["stages_ms"].get(s, 0.0) for r in wanted) for s in stages}
    out["total"] = statistics.median(r["ms"] for r in wanted)
    return out


def workers_memory(master: int) -> list[dict[str, float]]:
    return [smaps_rollup(pid) for pid in worker_pids(master)]


def traffic(base: str, photos: list[Path], texts: int, tag: str, with_photos: bool) -> tuple[list[float], list[float]]:
    """Cold text queries, then photo queries (multipart), one at a time; client-side seconds."""
    session = requests.Session()
    text_s, photo_s = [], []
    for i in range(texts):
        t = time.perf_counter()
        response = session.post(base + "/", json={"text": f"{tag} pastel linen tunic {i}", "n": 10}, timeout=120)
        text_s.append(time.perf_counter() - t)
        assert response.status_code == 200, response.text
    for photo in photos if with_photos else []:
        t = time.perf_counter()
        response = session.post(base + "/", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")},
                                data={"n": "10"}, timeout=300)
        photo_s.append(time.perf_counter() - t)
        assert response.status_code in (200, 422), response.text  # 422: a photo without a garment
    return text_s, photo_s


def print_memory(label: str, rows: list[dict[str, float]]) -> dict[str, float]:
    mean = {k: statistics.mean(r.get(k, 0.0) for r in rows) for k in ("Rss", "Pss", "Anonymous")}
    print(f"  {label:<34} workers {len(rows)}  RSS {mean['Rss']:7.0f} MB  PSS {mean['Pss']:7.0f} MB  "
          f"anonymous {mean['Anonymous']:7.0f} MB  (mean per worker)")
    return mean


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True, help="rembg models (U2NET_HOME) of real cost")
    parser.add_argument("--photos", type=Path, default=REPO.parent / "shared" / "data" / "ccp" / "images")
    parser.add_argument("--queries", type=int, default=12, help="photo queries per configuration")
    parser.add_argument("--texts", type=int, default=30, help="cold text queries (the baseline)")
    parser.add_argument("--products", type=int, default=20_000)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--skip-in-process", action="store_true", help="skip the in-process garment step")
    args = parser.parse_args()
    if not args.photos.is_dir():
        print(f"skipped: {args.photos} is absent (needs ../shared/data beside the repo)")
        return 0
    photos = sorted(args.photos.glob("*.jpg"))[: args.queries]

    from search.config import ClipSettings
    from search.embedder import ClipEmbedder
    from search.indexing.export import export_text_encoder
    from search.text_encoder import EXPORT_DIRNAME

    embedder = ClipEmbedder(ClipSettings(model=args.model, pretrained=""))
    identity = embedder.identity
    with tempfile.TemporaryDirectory() as tmp:
        catalog, index_dir, images, _ = write_synthetic_index(Path(tmp), args.products, 3, identity,
                                                              len(identity["probe"]))
        started = time.perf_counter()
        meta = export_text_encoder(embedder, index_dir / EXPORT_DIRNAME, int8=False)
        image_file = index_dir / EXPORT_DIRNAME / meta["image"]["file"]
        image_mb = sum(p.stat().st_size for p in image_file.parent.glob(image_file.name + "*")) / 1e6
        print(f"{args.model} (random weights) exported, text + image towers, in {time.perf_counter() - started:.0f} s; "
              f"image tower {image_mb:.0f} MB on disk; index {args.products:,} products, {images:,} images")
        del embedder
        search_env = {**SHIPPED, "CLIP_MODEL": args.model, "CLIP_PRETRAINED": "", "SEARCH_INDEX_DIR": str(index_dir),
                      "SEARCH_CATALOG_DIR": str(catalog), "U2NET_HOME": str(args.weights)}
        bg, bg_base = start("bgremoval:create_app()", {**SHIPPED, "U2NET_HOME": str(args.weights)}, 2, 2)
        memory = {}
        try:
            search, base = start("search:create_app()", {**search_env, "BG_SERVICE_URL": bg_base}, 2, 2)
            try:
                traffic(base, photos[:2], 4, "warm", True)  # first calls of each session
                text_s, photo_s = traffic(base, photos, args.texts, "on", True)
                search_stages = medians(stage_lines(search)[-(args.texts + len(photos)):])
                photo_records = [r for r in stage_lines(search) if "garment" in r["stages_ms"]][-len(photos):]
                photo_stages = medians(photo_records)
                bg_stages = medians(stage_lines(bg)[-len(photos):])
                memory["on"] = workers_memory(search.pid)
            finally:
                search.terminate()
                search.wait(30)
            print(f"\nphoto query, {len(photos)} CCP street photos as multipart uploads (median ms per stage):")
            print("  search service: " + ", ".join(f"{k} {v:.1f}" for k, v in photo_stages.items()))
            print("  inside 'garment', the bg service: " + ", ".join(f"{k} {v:.1f}" for k, v in bg_stages.items()))
            http = photo_stages.get("garment", 0.0) - bg_stages["total"]
            print(f"  garment step over HTTP beyond the bg service's own time: {http:.1f} ms")
            text_p50, photo_p50 = statistics.median(text_s) * 1000, statistics.median(photo_s) * 1000
            print(f"client-side p50: text query (cold) {text_p50:.1f} ms, photo query {photo_p50:.0f} ms "
                  f"({photo_p50 / text_p50:.0f}x the text query); text stages: "
                  + ", ".join(f"{k} {v:.1f}" for k, v in search_stages.items() if k in ("embed_text", "rank")))

            search, base = start("search:create_app()", {**search_env, "BG_SERVICE_URL": bg_base,
                                                         "SEARCH_IMAGE_QUERIES": "0"}, 2, 2)
            try:
                traffic(base, [], 4 + args.texts, "off", False)
                memory["off"] = workers_memory(search.pid)
            finally:
                search.terminate()
                search.wait(30)
        finally:
            bg.terminate()
            bg.wait(30)
        if not args.skip_in_process:
            search, base = start("search:create_app()", {**search_env, "BG_SERVICE_URL": ""}, 2, 2)
            try:
                traffic(base, photos[:2], 4, "warm", True)
                _, local_s = traffic(base, photos, args.texts, "local", True)
                local_stages = medians([r for r in stage_lines(search) if "garment" in r["stages_ms"]][-len(photos):])
                memory["in-process"] = workers_memory(search.pid)
            finally:
                search.terminate()
                search.wait(30)
            print("photo query with the garment step in-process (median ms): "
                  + ", ".join(f"{k} {v:.1f}" for k, v in local_stages.items())
                  + f"; client p50 {statistics.median(local_s) * 1000:.0f} ms")
        print("\nsearch worker memory after the same traffic:")
        off = print_memory("SEARCH_IMAGE_QUERIES=0", memory["off"])
        on = print_memory("photo queries on (BG_SERVICE_URL)", memory["on"])
        print(f"  the image tower adds: RSS {on['Rss'] - off['Rss']:+.0f} MB, PSS {on['Pss'] - off['Pss']:+.0f} MB, "
              f"anonymous {on['Anonymous'] - off['Anonymous']:+.0f} MB per worker")
        if "in-process" in memory:
            local = print_memory("photo queries on, garments in-process", memory["in-process"])
            print(f"  the in-process garment step adds a further RSS {local['Rss'] - on['Rss']:+.0f} MB, "
                  f"PSS {local['Pss'] - on['Pss']:+.0f} MB per worker")
    return 0


if __name__ == "__main__":
    sys.exit(main())
