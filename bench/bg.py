"""One bg-removal request on the CPU, per stage, against the naive rembg baseline.

    python bench/bg.py [--weights DIR] [--repeat 5] [--configs today,int8,...] [--options] [--json FILE]

Models: U^2-Net person matte (320 px) and clothing segmentation (768 px) with rembg's exact
shapes and random weights (../shared/tools/real-cost-models/make_models.py; written to --weights
when missing), so each costs what the real one costs; their masks are noise, so the pipeline is
told to keep the photo on the garment branch (min person / garment fraction 0), the branch a
street photo takes. The photo is a 1185x1600 JPEG (a CCP street photo when ../shared/data is
there, else a synthetic one).

Every configuration runs in a fresh process on the service's request path (its Flask app through
the test client, one request at a time, no gunicorn: decode, garment step, composite, JPEG
encode), one warm-up request, then --repeat timed ones: p50, p90 and each stage's median from
the service's own stage log. In the same run:

  baseline          rembg.remove() with new sessions for both models on every request (the naive
                    service): person mask, cloth masks, intersected, composited onto black
  today             the pipeline: models one after the other, fp32, ORT_THREADS=2 (one request
                    with both cores, as the baseline gets them)
  shipped-1t        the same with the images' default ORT_THREADS=1 (2 workers x 2 threads share
                    the 2 cores under load, so one request's model gets one core)
  concurrent        BG_CONCURRENT_MODELS=1: the cloth model beside the person matte, 1 thread each
  concurrent-2t     the same, 2 threads each
  int8              BG_CLOTH_PRECISION=int8 (needs <weights>/u2net_cloth_seg.int8.onnx: `python -m
                    bgremoval.quantize --photos DIR`), models one after the other, 2 threads
  int8-1t           int8 with ORT_THREADS=1
  int8-concurrent   int8 and BG_CONCURRENT_MODELS=1, 1 thread each
  working-768       BG_WORKING_MAX_SIDE=768 (masks computed on fewer pixels)

`--options` also times onnxruntime session options on the cloth model alone (memory arena,
spinning, graph optimisation level): the levers that are not pipeline settings.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOOLS = REPO.parent / "shared" / "tools" / "real-cost-models"
CCP = REPO.parent / "shared" / "data" / "ccp" / "images"
SIZE = (1185, 1600)
FORCE_GARMENT_BRANCH = {"BG_MIN_PERSON_FRACTION": "0", "BG_MIN_GARMENT_FRACTION": "0"}
CONFIGS = {
    "baseline": {"ORT_THREADS": "2"},
    "today": {"ORT_THREADS": "2"},
    "shipped-1t": {"ORT_THREADS": "1"},
    "concurrent": {"ORT_THREADS": "1", "BG_CONCURRENT_MODELS": "1"},
    "concurrent-2t": {"ORT_THREADS": "2", "BG_CONCURRENT_MODELS": "1"},
    "int8": {"ORT_THREADS": "2", "BG_CLOTH_PRECISION": "int8"},
    "int8-1t": {"ORT_THREADS": "1", "BG_CLOTH_PRECISION": "int8"},
    "int8-concurrent": {"ORT_THREADS": "1", "BG_CLOTH_PRECISION": "int8", "BG_CONCURRENT_MODELS": "1"},
    "working-768": {"ORT_THREADS": "2", "BG_WORKING_MAX_SIDE": "768"},
}

SERVICE = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from bgremoval import create_app
from bgremoval.config import BgConfig
body, repeat = open(sys.argv[2], "rb").read(), int(sys.argv[3])
from bench.stage_log import capture_stage_records
records = capture_stage_records()
client = create_app(BgConfig.from_env()).test_client()
runs = []
for i in range(repeat + 1):
    records.clear()
    start = time.perf_counter()
    response = client.post("/", data=body, content_type="image/jpeg")
    seconds = time.perf_counter() - start
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    if i:  # the first request warms up
        runs.append({"seconds": seconds, "stages_ms": records[-1]["stages_ms"] if records else {}})
print(json.dumps(runs))
"""

BASELINE = r"""
import io, json, sys, time
import numpy as np
import onnxruntime as ort
from PIL import Image
from rembg import new_session, remove
body, repeat, threads = open(sys.argv[2], "rb").read(), int(sys.argv[3]), int(sys.argv[4])
def request():
    stages, clock = {}, time.perf_counter()
    def lap(name):
        nonlocal clock
        now = time.perf_counter(); stages[name] = (now - clock) * 1000; clock = now
    photo = Image.open(io.BytesIO(body)).convert("RGB"); lap("decode")
    options = ort.SessionOptions(); options.intra_op_num_threads = threads
    person_session = new_session("u2net_human_seg", sess_opts=options, providers=["CPUExecutionProvider"])
    cloth_session = new_session("u2net_cloth_seg", sess_opts=options, providers=["CPUExecutionProvider"])
    lap("new_sessions")
    person = np.asarray(remove(photo, session=person_session, only_mask=True).convert("L")) > 127; lap("person_remove")
    # rembg returns the cloth classes' masks stacked vertically (upper, lower, full)
    cloth = np.asarray(remove(photo, session=cloth_session, only_mask=True).convert("L")).reshape(3, *person.shape) > 127
    lap("cloth_remove")
    mask = Image.fromarray(((cloth.any(axis=0) & person) * 255).astype(np.uint8), "L")
    out = Image.new("RGB", photo.size); out.paste(photo, (0, 0), mask); lap("composite")
    buf = io.BytesIO(); out.save(buf, "JPEG", quality=95); lap("encode")
    return stages
runs = []
for i in range(repeat + 1):
    start = time.perf_counter()
    stages = request()
    if i:
        runs.append({"seconds": time.perf_counter() - start, "stages_ms": stages})
print(json.dumps(runs))
"""

OPTIONS = r"""
import json, sys, time
import numpy as np, onnxruntime as ort
path, repeat = sys.argv[1], int(sys.argv[2])
x = np.random.default_rng(0).standard_normal((1, 3, 768, 768)).astype(np.float32)
def session(arena=False, spin=True, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
    o = ort.SessionOptions(); o.intra_op_num_threads = 2; o.inter_op_num_threads = 1
    o.enable_cpu_mem_arena = arena; o.graph_optimization_level = level
    if not spin:
        o.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
variants = {"shipped (no arena, spinning, all optimisations)": {}, "memory arena on": {"arena": True},
            "no spinning": {"spin": False},
            "basic optimisations only": {"level": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}}
sessions = {name: session(**kwargs) for name, kwargs in variants.items()}
times = {name: [] for name in variants}
for name, s in sessions.items():
    s.run(None, {"input.1": x})  # warm-up
for _ in range(repeat):  # round robin: a slow spell of this noisy machine hits every variant alike
    for name, s in sessions.items():
        start = time.perf_counter(); s.run(None, {"input.1": x}); times[name].append(time.perf_counter() - start)
result = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
print(json.dumps(result))
"""


def photo_jpeg() -> tuple[bytes, str]:
    from PIL import Image

    if CCP.is_dir():
        source = sorted(CCP.glob("*.jpg"))[0]
        photo, where = Image.open(source).convert("RGB").resize(SIZE, Image.LANCZOS), f"CCP {source.name}"
    else:
        sys.path.insert(0, str(REPO))
        from tests import scenes

        photo, where = scenes.street_photo(*SIZE)[0], "synthetic street photo"
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=90)
    return buf.getvalue(), f"{where}, {SIZE[0]}x{SIZE[1]}"


def ensure_weights(weights: Path) -> None:
    missing = [n for n in ("u2net_human_seg", "u2net_cloth_seg") if not (weights / f"{n}.onnx").exists()]
    if missing:
        if not (TOOLS / "make_models.py").exists():
            sys.exit(f"{weights} lacks {missing} and {TOOLS} is absent: make the real-cost models first")
        print(f"writing real-cost models {missing} to {weights} ...", flush=True)
        subprocess.run([sys.executable, str(TOOLS / "make_models.py"), "--out", str(weights), "--only", *missing],
                       check=True, capture_output=True)


def run(config: str, photo: str, repeat: int, weights: Path) -> list[dict]:
    env = {**os.environ, "U2NET_HOME": str(weights), "MODEL_CHECKSUM_DISABLED": "1", "PYTHONPATH": str(REPO),
           "BG_PRODUCT_MODEL": "u2net_human_seg", **FORCE_GARMENT_BRANCH, **CONFIGS[config]}
    if config == "baseline":
        argv = ["-c", BASELINE, str(REPO), photo, str(repeat), CONFIGS[config]["ORT_THREADS"]]
    else:
        argv = ["-c", SERVICE, str(REPO), photo, str(repeat)]
    done = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{config}: {done.stderr[-1500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=Path(os.environ.get("BENCH_WEIGHTS", "/tmp/realcost")),
                        help="folder with the real-cost models (written there when missing)")
    parser.add_argument("--repeat", type=int, default=5, help="timed requests per configuration")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of: {', '.join(CONFIGS)}")
    parser.add_argument("--options", action="store_true", help="also time onnxruntime session options (cloth alone)")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    ensure_weights(args.weights)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown configurations {sorted(unknown)}")
    if any("BG_CLOTH_PRECISION" in CONFIGS[c] for c in configs) and not (
            args.weights / "u2net_cloth_seg.int8.onnx").exists():
        print(f"skipping the int8 configurations: no {args.weights}/u2net_cloth_seg.int8.onnx "
              f"(U2NET_HOME={args.weights} python -m bgremoval.quantize --photos DIR)")
        configs = [c for c in configs if "BG_CLOTH_PRECISION" not in CONFIGS[c]]
    body, where = photo_jpeg()
    print(f"photo: {where}; {os.cpu_count()} cores; {args.repeat} requests per configuration after one warm-up")
    figures = {"photo": where, "cores": os.cpu_count(), "configs": {}}
    with tempfile.NamedTemporaryFile(suffix=".jpg") as photo:
        photo.write(body)
        photo.flush()
        for config in configs:
            runs = run(config, photo.name, args.repeat, args.weights)
            seconds = [r["seconds"] for r in runs]
            stages = {k: statistics.median(r["stages_ms"].get(k, 0.0) for r in runs) for k in runs[0]["stages_ms"]}
            figures["configs"][config] = {"p50_s": statistics.median(seconds), "p90_s": percentile(seconds, 0.9),
                                          "env": CONFIGS[config], "stages_ms": stages}
            print(f"  {config:16} p50 {statistics.median(seconds):6.2f} s", flush=True)
    base = figures["configs"].get("baseline", {}).get("p50_s")
    today = figures["configs"].get("today", {}).get("p50_s")
    print(f"\n{'configuration':16} {'p50 s':>7} {'p90 s':>7} {'x baseline':>10} {'x today':>8}  median stage ms")
    for config, f in figures["configs"].items():
        vs_base = f"{base / f['p50_s']:9.2f}x" if base else "-"
        vs_today = f"{today / f['p50_s']:7.2f}x" if today else "-"
        stages = " ".join(f"{k}={v:.0f}" for k, v in f["stages_ms"].items() if v >= 1)
        print(f"{config:16} {f['p50_s']:7.2f} {f['p90_s']:7.2f} {vs_base:>10} {vs_today:>8}  {stages}")
    if args.options:
        done = subprocess.run([sys.executable, "-c", OPTIONS,
                               str(args.weights / "u2net_cloth_seg.onnx"), str(args.repeat)],
                              capture_output=True, text=True, check=True)
        options = figures["session_options_s"] = json.loads(done.stdout.strip().splitlines()[-1])
        shipped = next(iter(options.values()))
        print("\nonnxruntime session options, cloth model alone (768 px, 2 threads), median s:")
        for name, seconds in options.items():
            print(f"  {name:48} {seconds:6.2f}  ({shipped / seconds:.2f}x shipped)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
