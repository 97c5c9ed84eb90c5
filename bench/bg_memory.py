"""Memory and time per bg-removal request as the photo grows, per stage.

    python bench/bg_memory.py [--sizes 6,12,24,39.6] [--repeat 3] [--repo DIR]

For each size, a fresh Python process builds the service (Flask test client, the small oracle
models: their cost is small, so what is measured is the work outside the models), warms it up
on a small photo, then posts a synthetic street photo of that many megapixels as a JPEG (a big
photo is small on the wire) and reports:
  extra peak RSS   ru_maxrss after the request minus before it, and per input pixel
  time             whole request, and the stages the service logs (decode, models, composite,
                   encode...); "outside models" = the whole request minus the model and
                   working-size stages, per megapixel (what grows with the photo)
`--repo` runs the same measurement against another checkout (e.g. the previous commit), so a
before/after comparison comes from one run on the same machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Models and the steps at the <= 1024 px working size: their cost does not grow with the photo.
WORKING_SIZE_STAGES = ("person_matte", "cloth_seg", "product_matte", "main_person")

def street_jpeg(megapixels: float) -> bytes:
    """A synthetic street photo (tests/scenes.py) of about that many megapixels, as JPEG q90."""
    import io

    from tests import scenes

    height = int((megapixels * 1e6 * 4 / 3) ** 0.5) // 8 * 8
    width = int(megapixels * 1e6 / height) // 8 * 8
    buf = io.BytesIO()
    scenes.street_photo(width, height)[0].save(buf, "JPEG", quality=90)
    return buf.getvalue()


CHILD = r"""
import json, resource, sys, time
sys.path[:0] = [sys.argv[1], sys.argv[4]]  # the measured checkout first, then this one (bench.bg_memory)
from bench.bg_memory import street_jpeg
from bgremoval import create_app
from bgremoval.config import BgConfig
megapixels, repeat = float(sys.argv[2]), int(sys.argv[3])
from bench.stage_log import capture_stage_records
records = capture_stage_records()
app = create_app(BgConfig(max_pixels=40_000_000))
client = app.test_client()
assert client.post("/", data=street_jpeg(0.5), content_type="image/jpeg").status_code == 200
# Made by the parent: drawing a 40 MP photo here would set a high-water mark above the request's.
body = open(sys.argv[5], "rb").read()
from PIL import Image
import io
width, height = Image.open(io.BytesIO(body)).size
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
runs = []
for _ in range(repeat):
    records.clear()
    t = time.perf_counter()
    response = client.post("/", data=body, content_type="image/jpeg")
    runs.append((time.perf_counter() - t, dict(records[-1]["stages_ms"]) if records else {}))
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
best = min(runs, key=lambda r: r[0])
print(json.dumps({"width": width, "height": height, "body_bytes": len(body), "extra_peak_kb": after - before,
                  "seconds": best[0], "stages_ms": best[1]}))
"""


def measure(repo: Path, megapixels: float, repeat: int, weights: str) -> dict:
    """Run one size in a fresh process; returns size, extra peak RSS (kB), seconds, stages."""
    env = {**os.environ, "U2NET_HOME": weights, "ORT_THREADS": "1", "PYTHONPATH": str(repo)}
    with tempfile.NamedTemporaryFile(suffix=".jpg") as photo:
        photo.write(street_jpeg(megapixels))
        photo.flush()
        done = subprocess.run([sys.executable, "-c", CHILD, str(repo), str(megapixels), str(repeat), str(REPO),
                               photo.name], cwd=repo, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="6,12,24,39.6", help="megapixels, comma-separated")
    parser.add_argument("--repeat", type=int, default=3, help="requests per size (the fastest is reported)")
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout to measure (default: this one)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from tests.oracle_models import write_oracle_models

    with tempfile.TemporaryDirectory() as tmp:
        write_oracle_models(tmp)
        print(f"repo {args.repo}  (oracle models: the time is the work outside the models)")
        print(f"{'input':>16} {'MP':>5} {'extra peak RSS':>14} {'B/px':>5} {'time':>7} {'outside models':>15}  stages ms")
        for size in (float(s) for s in args.sizes.split(",")):
            r = measure(args.repo, size, args.repeat, tmp)
            pixels = r["width"] * r["height"]
            stages = r["stages_ms"]
            outside = r["seconds"] * 1000 - sum(v for k, v in stages.items() if k in WORKING_SIZE_STAGES)
            print(f"{r['width']:>7}x{r['height']:<8} {pixels / 1e6:5.1f} {r['extra_peak_kb'] / 1024:11.0f} MB "
                  f"{r['extra_peak_kb'] * 1024 / pixels:5.0f} {r['seconds']:6.2f}s "
                  f"{outside / (pixels / 1e6):8.1f} ms/MP  "
                  + " ".join(f"{k}={v:.0f}" for k, v in stages.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
