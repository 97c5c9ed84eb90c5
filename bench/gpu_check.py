"""The CUDA path, once, with figures: images/s of each model and of a build.

    python bench/gpu_check.py --tools ../shared/tools/real-cost-models [--images 512] [--json OUT.json]

Models have the real architectures and random weights (no trained weights can be fetched where
this runs): U^2-Net person matte (320 px) and clothing segmentation (768 px) written by the
real-cost tool, run as BG_BACKEND=torch (onnx2torch, fp16 batches); CLIP ViT-B-32 from open_clip
with random weights, image tower fp16. Their cost per image is the real one; their masks are
noise, so the pipeline is told to keep every photo on the garment branch (min person / garment
fraction 0), which is the branch that costs most.

Measured, in this order:
  models       the converted U^2-Nets alone (batch in, numpy out) and CLIP's image tower alone
  agreement    fp16 on the GPU against onnxruntime fp32 on the CPU, same inputs: mask pixels that differ
  pipeline     GarmentPipeline.garment_masks on a batch of decoded photos, per stage
  build        `search.index build` in-process (BuildModels.load + build_index) on a synthetic
               catalog of 1185x1600 JPEGs, with the decode pool (--decode-workers) and without
`--device cpu --images 8` is a dry run of the same code on a CPU (slow, for checking the script).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MODELS = ("u2net_human_seg", "u2net_cloth_seg")  # the person matte and the cloth model


def photo_jpeg(seed: int) -> bytes:
    from tests import scenes

    photo, _ = scenes.street_photo(1185, 1600)
    if seed % 2:
        photo = photo.transpose(0)  # mirrored: not every file the same
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def timed(fn, repeat: int) -> float:
    """Best seconds of `repeat` calls after one warm-up (the first CUDA call compiles kernels)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tools", type=Path, default=REPO.parent / "shared" / "tools" / "real-cost-models")
    parser.add_argument("--weights", type=Path, default=Path(tempfile.gettempdir()) / "gpu-check-weights",
                        help="U2NET_HOME with the real-cost models (written there when missing)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--images", type=int, default=512, help="photos in the synthetic catalog")
    parser.add_argument("--model-batch", type=int, default=32, help="U^2-Net images per forward pass")
    parser.add_argument("--clip-batch", type=int, default=256)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    os.environ.update({"U2NET_HOME": str(args.weights), "DEVICE": args.device, "BG_BACKEND": "torch",
                       "CLIP_MODEL": "ViT-B-32", "CLIP_PRETRAINED": "", "BG_MIN_PERSON_FRACTION": "0",
                       "BG_MIN_GARMENT_FRACTION": "0", "BG_PRODUCT_MODEL": "u2net_human_seg",
                       "MODEL_CHECKSUM_DISABLED": "1"})
    import numpy as np
    import torch

    figures: dict = {"torch": torch.__version__, "device": args.device, "cpus": os.cpu_count()}
    if args.device == "cuda":
        figures["gpu"] = torch.cuda.get_device_name(0)
    print(json.dumps(figures), flush=True)

    def save():  # after each part, so a run cut short still leaves what it measured
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1))

    args.weights.mkdir(parents=True, exist_ok=True)
    missing = [n for n in MODELS if not (args.weights / f"{n}.onnx").exists()]
    if missing:
        start = time.perf_counter()
        subprocess.run([sys.executable, str(args.tools / "make_models.py"), "--out", str(args.weights), "--only",
                        *missing], check=True, capture_output=True)
        figures["export_s"] = round(time.perf_counter() - start, 1)

    from bgremoval.models import (
        CLOTH_INPUTS,
        MATTE_INPUTS,
        ModelSession,
        model_input,
        summed_probability,
    )
    from bgremoval.torch_backend import TorchRunner
    from shared.sessions import OnnxRunner

    # 1. models alone
    runners, specs = {}, {name: {**MATTE_INPUTS, **CLOTH_INPUTS}[name] for name in MODELS}
    models = figures["models_img_per_s"] = {}
    for name in MODELS:
        side = specs[name].size
        runners[name] = TorchRunner(str(args.weights / f"{name}.onnx"), args.device, args.model_batch)
        batch = np.random.default_rng(0).standard_normal((args.model_batch, 3, side, side)).astype(np.float32)
        seconds = timed(lambda r=runners[name], b=batch: r(b), 3)
        models[f"{name} ({side} px, batch {args.model_batch}, {runners[name].runtime})"] = round(args.model_batch / seconds, 1)
        print(name, models, flush=True)

    from search.config import ClipSettings
    from search.embedder import ClipEmbedder

    clip = ClipEmbedder(ClipSettings.from_env())
    tower_in = torch.randn(args.clip_batch, 3, 224, 224)
    dtype = torch.float16 if clip.device == "cuda" else torch.float32

    def tower():
        with torch.inference_mode():
            clip.model.encode_image(tower_in.to(clip.device, dtype=dtype)).float().cpu()

    models[f"CLIP ViT-B-32 image tower (batch {args.clip_batch}, {dtype})"] = round(args.clip_batch / timed(tower, 3), 1)
    from tests import scenes

    crops = [scenes.street_photo(300, 400)[0] for _ in range(8)] * (args.clip_batch // 8)
    models[f"CLIP encode_images with open_clip preprocessing (batch {len(crops)})"] = round(
        len(crops) / timed(lambda: clip.encode_images(crops), 2), 1)
    print(json.dumps(models, indent=1), flush=True)
    save()

    # 2. fp16 GPU vs onnxruntime fp32 CPU on the same photos
    import onnxruntime as ort

    photos = [scenes.street_photo(768, 1024)[0], scenes.dress_photo(768, 1024),
              scenes.street_photo(600, 800)[0], scenes.flat_lay_photo(1024, 768)[0]]
    agreement = figures["agreement_vs_onnxruntime_fp32"] = {}
    for name in MODELS:
        feed = model_input(photos, specs[name])
        options = ort.SessionOptions()
        options.intra_op_num_threads = min(8, os.cpu_count() or 1)
        reference = OnnxRunner(ort.InferenceSession(str(args.weights / f"{name}.onnx"), options,
                                                    providers=["CPUExecutionProvider"]))(feed)
        got = runners[name](feed)
        if name == "u2net_cloth_seg":  # the garment mask: upper + lower + full
            differ = ((summed_probability(got, [1, 2, 3]) > 0.5) != (summed_probability(reference, [1, 2, 3]) > 0.5)).mean()
        else:
            differ = ((got[:, 0] > 0.5) != (reference[:, 0] > 0.5)).mean()
        agreement[name] = {"mask_pixels_differ": float(differ), "max_abs_diff": float(np.abs(got - reference).max())}
    print(json.dumps(agreement), flush=True)
    save()

    # 3. the garment pipeline on a batch of decoded photos, per stage
    from bgremoval.config import BgConfig
    from bgremoval.models import Models
    from bgremoval.pipeline import GarmentPipeline

    config = BgConfig.from_env()
    pipeline = GarmentPipeline(Models(*(ModelSession(n, runners[n], specs[n], str(args.weights / f"{n}.onnx"))
                                        for n in MODELS), product=None), config.pipeline)
    work = [scenes.street_photo(768, 1024)[0] for _ in range(4)] * (args.model_batch // 4 or 1)
    pipeline.garment_masks(work[:2])
    start = time.perf_counter()
    results = pipeline.garment_masks(work)
    seconds = time.perf_counter() - start
    stages = {k: round(v * 1000, 2) for k, v in results[0].timings.items()}
    figures["pipeline"] = {"photos": len(work), "img_per_s": round(len(work) / seconds, 1),
                           "ms_per_photo_by_stage": stages}
    print(json.dumps(figures["pipeline"]), flush=True)
    save()

    # 4. a whole build, with and without the decode pool
    from search.garments import LocalGarments
    from search.indexing.builder import build_index

    catalog = Path(tempfile.mkdtemp(prefix="gpu-check-catalog-"))
    distinct = [photo_jpeg(i) for i in range(16)]
    for i in range(args.images):
        folder = catalog / f"product-{i // 8:04d}"
        folder.mkdir(exist_ok=True)
        (folder / f"{i % 8}.jpg").write_bytes(distinct[i % len(distinct)])
    garments = LocalGarments(pipeline)
    decode_workers = min(8, os.cpu_count() or 1)
    builds = figures["build"] = {}
    for workers in (decode_workers, 0):
        out = catalog.parent / f"gpu-check-index-{workers}"
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        report = build_index(catalog, out, clip, garments, batch_size=args.clip_batch, progress=False,
                             decode_workers=workers)
        seconds = time.perf_counter() - start
        builds[f"decode_workers={workers}"] = {"images": report.embedded, "seconds": round(seconds, 1),
                                               "img_per_s": round(report.embedded / seconds, 1)}
        print(json.dumps(builds), flush=True)
        save()
        shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(catalog, ignore_errors=True)
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
