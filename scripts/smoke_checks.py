"""HTTP checks of the container smoke test (loopback published ports only)."""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import requests
from PIL import Image


def wait_ready(base: str, timeout: float) -> tuple[float, dict]:
    """When /readyz first answered 200, and its JSON body."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            response = requests.get(base + "/readyz", timeout=2)
            if response.status_code == 200:
                return time.time(), response.json()
            last = response.text[:300]
        except requests.RequestException as exc:
            last = str(exc)[:300]
        time.sleep(0.5)
    sys.exit(f"{base}/readyz not ready after {timeout:.0f} s: {last}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bg", required=True)
    parser.add_argument("--search", required=True)
    parser.add_argument("--photo", type=Path, required=True, help="catalog folder to take a photo from")
    parser.add_argument("--up-started", type=float, required=True)
    parser.add_argument("--timeout", type=float, default=180)
    args = parser.parse_args()
    ready = {}
    for name, base in (("bgremoval", args.bg), ("search", args.search)):
        ready_at, ready[name] = wait_ready(base, args.timeout)
        print(f"{name}: ready {ready_at - args.up_started:.1f} s after compose up")
    # The image has no torch: queries must run on the ONNX export (readyz info field).
    encoder = ready["search"].get("text_encoder", "")
    assert encoder.startswith("onnx"), f"search /readyz: text_encoder={encoder!r}, expected onnx: {ready['search']}"
    print(f"search: text encoder {encoder}, backend {ready['search'].get('backend')}")

    photo = sorted(args.photo.glob("*/*.png"))[0]
    size = Image.open(photo).size
    response = requests.post(args.bg + "/", files={"file": (photo.name, photo.read_bytes(), "image/png")}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "image/jpeg"
    out = Image.open(io.BytesIO(response.content))
    assert out.format == "JPEG" and out.size == size, (out.format, out.size, size)
    print(f"bgremoval: {photo.parent.name}/{photo.name} -> {out.size[0]}x{out.size[1]} JPEG, kept "
          f"{response.headers['X-Garment-Classes']} ({response.headers['X-Garment-Source']})")
    # Only the product's garment, chosen from its name (the folder name names it).
    response = requests.post(args.bg + "/", files={"file": (photo.name, photo.read_bytes(), "image/png")},
                             data={"product": photo.parent.name}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["X-Garment-Source"] in ("product", "all"), dict(response.headers)
    print(f"bgremoval: product={photo.parent.name!r} kept {response.headers['X-Garment-Classes']} "
          f"({response.headers['X-Garment-Source']}{', fallback' if 'X-Garment-Fallback' in response.headers else ''})")

    bad = requests.post(args.bg + "/", json={"url": "http://169.254.169.254/latest"}, timeout=30)
    assert bad.status_code == 400 and bad.headers["Content-Type"] == "application/problem+json", bad.text

    response = requests.post(args.search + "/", json={"text": "pastel coloured tunic", "n": 5}, timeout=30)
    assert response.status_code == 200, response.text
    results = response.json()
    assert isinstance(results, list) and len(results) == 5
    assert len({r["product_name"] for r in results}) == 5
    assert all(set(r) == {"product_name", "url", "score", "id"} for r in results)
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    image = requests.get(args.search + results[0]["url"], timeout=30)
    assert image.status_code == 200 and image.headers["Content-Type"].startswith("image/")
    print(f"search: 5 unique results, top {results[0]['product_name']} ({scores[0]:.3f}), image served")
    bad = requests.post(args.search + "/", json={"text": "x", "n": 0}, timeout=30)
    assert bad.status_code == 400

    # Photo queries: the search container asks the bg container for the garment (BG_SERVICE_URL).
    assert "bg-removal service" in ready["search"].get("photo_queries", ""), ready["search"]
    response = requests.post(args.search + "/", files={"file": (photo.name, photo.read_bytes(), "image/png")},
                             data={"n": "3"}, timeout=120)
    assert response.status_code == 200, response.text
    found = response.json()
    assert len(found) == 3 and len({r["product_name"] for r in found}) == 3, found
    assert [r["score"] for r in found] == sorted((r["score"] for r in found), reverse=True), found
    # (Random tiny-CLIP weights here: where the photo's own product ranks is reported, not judged.)
    names = [r["product_name"] for r in found]
    rank = names.index(photo.parent.name) + 1 if photo.parent.name in names else "not in the top 3"
    print(f"search: photo query {photo.parent.name}/{photo.name}: its own product ranks {rank}")
    look = requests.post(args.search + "/", files={"file": (photo.name, photo.read_bytes(), "image/png")},
                         data={"n": "2", "look": "true"}, timeout=120)
    assert look.status_code == 200, look.text
    garments = look.json()["garments"]
    assert garments and all(len(g["box"]) == 4 and len(g["results"]) == 2 for g in garments), garments
    print("search: look query: " + ", ".join(f"{g['class']} {g['box']}" for g in garments))
    record = requests.get(f"{args.search}/products/{requests.utils.quote(photo.parent.name, safe='')}", timeout=30)
    assert record.status_code == 200 and record.json()["images"], record.text
    print(f"search: product record: {record.json()['garment_classes']}")
    similar = requests.get(f"{args.search}/products/{requests.utils.quote(photo.parent.name, safe='')}/similar",
                           params={"n": 3}, timeout=30)
    assert similar.status_code == 200 and photo.parent.name not in [r["product_name"] for r in similar.json()]
    batch = requests.post(args.search + "/batch", json={"queries": [{"text": "red dress", "n": 2}, {"text": "hijab"}]},
                          timeout=30)
    assert batch.status_code == 200 and [len(a) for a in batch.json()] == [2, 5], batch.text
    embedded = requests.post(args.search + "/embed", json={"text": "red dress"}, timeout=30).json()
    assert embedded["dim"] == len(embedded["embedding"]) and embedded["model"]["model"], embedded
    print("search: similar, batch and embed answer")
    for name, base in (("bgremoval", args.bg), ("search", args.search)):
        page = requests.get(base + "/", timeout=30)
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html"), page.text[:300]
        assert "script-src 'self'" in page.headers["Content-Security-Policy"]
        assert page.headers["X-Content-Type-Options"] == "nosniff"
    print("web pages served with CSP and nosniff")
    return 0


if __name__ == "__main__":
    sys.exit(main())
