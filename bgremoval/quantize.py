"""An int8 copy of the clothing-segmentation model, offered only with its measured agreement.

    python -m bgremoval.quantize --photos DIR [--calibration 16] [--holdout 16]
                                 [--model u2net_cloth_seg] [--threads N]

Writes, beside the fp32 weights rembg finds (U2NET_HOME):
    <model>.int8.onnx   onnxruntime STATIC quantisation: QDQ format, per-channel weights (QInt8),
                        activations QUInt8, MinMax ranges calibrated on the first --calibration
                        photos of DIR (fed exactly as the pipeline feeds the model)
    <model>.int8.json   what it was made from (fp32 file + sha256, onnxruntime version, photos) and
                        how far it agrees with fp32 on the NEXT --holdout photos (never the
                        calibration ones): share of garment-mask pixels that differ (mean, max),
                        argmax class agreement, seconds per image of each

The service runs it with BG_CLOTH_PRECISION=int8 (bgremoval/int8.py `load_int8`, called by
models.open_session) and refuses it when the fp32 weights changed since (stale), or when its
recorded worst-photo mask disagreement is over BG_INT8_MAX_DISAGREEMENT (default 0.005 = 0.5 % of
the pixels). This module is the tool only; the files' names and the checks are bgremoval/int8.py's.

Why static: U^2-Net cloth (768 px, 2 threads, AVX512-VNNI CPU) ran 3.9 s an image in fp32 and
2.3 s statically quantised. onnxruntime's `quantize_dynamic` is not offered: it was measured
SLOWER than fp32 here (4.6 s; it turns the convolutions into ConvInteger, which has no fast
kernel and re-quantises every activation at run time).

The figures hold for the weights and the photos they were measured with; measure on photos like
the ones the service gets.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bgremoval.config import BgConfig
from bgremoval.int8 import (  # noqa: F401 - Int8Refused: re-exported, what the service raises on a bad copy
    DISAGREEMENT_ENV,
    Int8Files,
    Int8Refused,
    cached_sha256,
    int8_files,
)
from bgremoval.models import CLOTH_CLASSES, CLOTH_INPUTS, model_input, summed_probability, weights_file
from bgremoval.pipeline import working_copy
from bgremoval.weights import file_sha256, weights_home
from shared.garment_vocabulary import GARMENT_CLASSES
from shared.images import decode_image, flatten_onto_black
from shared.sessions import ENGINES, model_options
from shared.settings import exit_on_bad_settings

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
METHOD = ("onnxruntime.quantization.quantize_static after quant_pre_process: QDQ format, per-channel, "
          "activations QUInt8, weights QInt8, MinMax calibration")


def list_photos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)


def working_photo(path: Path, config: BgConfig):
    """The photo as the pipeline hands it to the cloth model: decoded like an upload (EXIF
    orientation, alpha flattened onto black), scaled to the working size."""
    decoded = decode_image(path.read_bytes(), max_pixels=config.max_pixels)
    return working_copy(flatten_onto_black(decoded.rgb, decoded.alpha), config.pipeline.working_max_side)


def model_feed(path: Path, name: str, config: BgConfig) -> np.ndarray:
    return model_input([working_photo(path, config)], CLOTH_INPUTS[name])


def photos_digest(paths: list[Path]) -> str:
    """A short hash over the photos' names and bytes: which photos a figure was measured on."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


class PhotoReader:
    """onnxruntime's CalibrationDataReader over photo files, one feed at a time (a 768 px feed
    is 7 MB; the photos are read lazily), with a progress bar."""

    def __init__(self, paths: list[Path], name: str, input_name: str, config: BgConfig, progress: bool):
        from tqdm import tqdm

        self.paths, self.name, self.input_name, self.config = paths, name, input_name, config
        self.position, self.end = 0, len(paths)
        self.bar = tqdm(total=len(paths), desc="calibration", unit="photo", disable=not progress)

    def get_next(self) -> dict | None:
        if self.position >= self.end:
            if self.end == len(self.paths):
                self.bar.close()
            return None
        feed = model_feed(self.paths[self.position], self.name, self.config)
        self.position += 1
        self.bar.update(1)
        return {self.input_name: feed}

    def __len__(self) -> int:
        return len(self.paths)

    def set_range(self, start_index: int, end_index: int) -> None:  # extra_options CalibStridedMinMax
        self.position, self.end = start_index, min(end_index, len(self.paths))


def quantize_model(fp32_path: str, target: str, reader, workdir: str) -> None:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = os.path.join(workdir, "prepared.onnx")
    quant_pre_process(fp32_path, prepared)
    quantize_static(prepared, target, reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)


def garment_probability(logits: np.ndarray) -> np.ndarray:
    """Summed probability of the garment classes at the model's resolution, as the pipeline sums it."""
    return summed_probability(logits[None], [CLOTH_CLASSES.index(c) for c in GARMENT_CLASSES])[0]


def garment_mask(logits: np.ndarray, threshold: float) -> np.ndarray:
    """The garment mask at the model's resolution, as the pipeline computes it."""
    return garment_probability(logits) > threshold


@dataclass
class Agreement:
    mask_pixels_differ: list[float]
    class_agreement: list[float]
    probability_diff_mean: list[float]  # |garment probability fp32 - int8|: how far from flipping a pixel
    probability_diff_max: list[float]
    seconds_fp32: list[float]
    seconds_int8: list[float]

    def summary(self) -> dict:
        fp32, int8 = float(np.mean(self.seconds_fp32)), float(np.mean(self.seconds_int8))
        return {
            "mask_pixels_differ_mean": float(np.mean(self.mask_pixels_differ)),
            "mask_pixels_differ_max": float(np.max(self.mask_pixels_differ)),
            "mask_pixels_differ_per_photo": [round(v, 6) for v in self.mask_pixels_differ],
            "class_agreement": float(np.mean(self.class_agreement)),
            "class_agreement_min": float(np.min(self.class_agreement)),
            "garment_probability_diff_mean": float(np.mean(self.probability_diff_mean)),
            "garment_probability_diff_max": float(np.max(self.probability_diff_max)),
            "seconds_per_image": {"fp32": round(fp32, 4), "int8": round(int8, 4)},
            "speedup": round(fp32 / int8, 3) if int8 > 0 else None,
        }


def measure_agreement(fp32_path: str, int8_path: str, paths: list[Path], name: str, config: BgConfig,
                      progress: bool) -> Agreement:
    """fp32 and int8 side by side on each hold-out photo, on the CPU with the service's session
    options (one warm-up run each, not timed)."""
    from tqdm import tqdm

    options = model_options(config.ort_threads)
    runners = {kind: ENGINES.get(engine)("cpu").open(path, options)
               for kind, engine, path in (("fp32", "onnxruntime-cpu", fp32_path), ("int8", "onnxruntime-int8", int8_path))}
    result = Agreement([], [], [], [], [], [])
    for i, path in enumerate(tqdm(paths, desc="agreement", unit="photo", disable=not progress)):
        feed = model_feed(path, name, config)
        outputs = {}
        for kind, runner in runners.items():
            if i == 0:
                runner(feed)
            start = time.perf_counter()
            outputs[kind] = runner(feed)[0]
            (result.seconds_fp32 if kind == "fp32" else result.seconds_int8).append(time.perf_counter() - start)
        threshold = config.pipeline.garment_threshold
        fp32, int8 = garment_probability(outputs["fp32"]), garment_probability(outputs["int8"])
        result.mask_pixels_differ.append(float(((fp32 > threshold) != (int8 > threshold)).mean()))
        gap = np.abs(fp32 - int8)
        result.probability_diff_mean.append(float(gap.mean()))
        result.probability_diff_max.append(float(gap.max()))
        result.class_agreement.append(float((outputs["fp32"].argmax(0) == outputs["int8"].argmax(0)).mean()))
    return result


def make_int8(name: str, fp32_path: str, calibration: list[Path], holdout: list[Path], config: BgConfig,
              *, progress: bool = True) -> dict:
    """Quantise, measure, and write <model>.int8.onnx + <model>.int8.json beside `fp32_path`.
    Returns the sidecar record."""
    import onnxruntime as ort

    if set(calibration) & set(holdout):
        raise ValueError("calibration and hold-out photos must not overlap")
    files = int8_files(name, fp32_path)
    with tempfile.TemporaryDirectory(prefix="bg-quantize.") as workdir:
        probe = ort.InferenceSession(fp32_path, providers=["CPUExecutionProvider"])
        input_name = probe.get_inputs()[0].name
        del probe
        staged = os.path.join(workdir, f"{name}.int8.onnx")
        reader = PhotoReader(calibration, name, input_name, config, progress)
        started = time.perf_counter()
        quantize_model(fp32_path, staged, reader, workdir)
        quantize_seconds = time.perf_counter() - started
        agreement = measure_agreement(fp32_path, staged, holdout, name, config, progress)
        record = {
            "model": name,
            "source_file": os.path.basename(fp32_path),
            "source_sha256": cached_sha256(fp32_path),
            "int8_file": os.path.basename(files.onnx),
            "int8_sha256": file_sha256(staged),
            "onnxruntime": ort.__version__,
            "method": METHOD,
            "calibration": {"count": len(calibration), "photos_sha256": photos_digest(calibration),
                            "names": [p.name for p in calibration]},
            "holdout": {"count": len(holdout), "photos_sha256": photos_digest(holdout),
                        "names": [p.name for p in holdout]},
            "measured_on": (f"garment mask (softmax of {'+'.join(GARMENT_CLASSES)} summed "
                            f"> {config.pipeline.garment_threshold}) at the model's "
                            f"{CLOTH_INPUTS[name].size}x{CLOTH_INPUTS[name].size} output, photos scaled to "
                            f"<= {config.pipeline.working_max_side} px first; share of all its pixels"),
            "garment_threshold": config.pipeline.garment_threshold,
            "working_max_side": config.pipeline.working_max_side,
            **agreement.summary(),
            "threads": config.ort_threads,
            "quantize_seconds": round(quantize_seconds, 1),
            "scope": "figures hold for these fp32 weights and these hold-out photos only",
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        # The sidecar goes last: a half-replaced pair fails load_int8's int8_sha256 check.
        if os.path.exists(files.sidecar):
            os.remove(files.sidecar)
        shutil.move(staged, files.onnx)
        staged_json = os.path.join(workdir, "sidecar.json")
        with open(staged_json, "w") as fh:
            json.dump(record, fh, indent=2)
            fh.write("\n")
        shutil.move(staged_json, files.sidecar)
    return record


def summary_text(record: dict, files: Int8Files, limit: float) -> str:
    speed = record["seconds_per_image"]
    lines = [
        f"{record['model']} int8 ({record['method']})",
        f"  written:  {files.onnx}",
        f"            {files.sidecar}",
        f"  from:     {record['source_file']} sha256 {record['source_sha256'][:16]}..., onnxruntime {record['onnxruntime']}",
        (f"  photos:   {record['calibration']['count']} for calibration, {record['holdout']['count']} hold-out "
         "(never seen by calibration) for the figures below"),
        (f"  garment-mask pixels differing from fp32: mean {record['mask_pixels_differ_mean']:.3%}, "
         f"worst photo {record['mask_pixels_differ_max']:.3%}"),
        f"  class (argmax) agreement: mean {record['class_agreement']:.3%}, worst photo {record['class_agreement_min']:.3%}",
        (f"  garment probability |fp32 - int8|: mean {record['garment_probability_diff_mean']:.5f}, "
         f"max {record['garment_probability_diff_max']:.5f}"),
        (f"  seconds per image ({record['threads']} thread(s)): fp32 {speed['fp32']:.3f}, int8 {speed['int8']:.3f} "
         f"(x{record['speedup']})"),
        "  These figures hold for these weights and these photos only.",
    ]
    if record["mask_pixels_differ_max"] > limit:
        lines.append(f"  NOTE: over the service's limit {limit:.3%}: BG_CLOTH_PRECISION=int8 will refuse it unless "
                     f"{DISAGREEMENT_ENV} >= {record['mask_pixels_differ_max']:.6f}.")
    else:
        lines.append(f"  Within the service's limit {limit:.3%}: usable with BG_CLOTH_PRECISION=int8.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", required=True, type=Path, help="folder of street photos (jpg/jpeg/png/webp)")
    parser.add_argument("--calibration", type=int, default=16, help="photos for calibration (the first, sorted)")
    parser.add_argument("--holdout", type=int, default=16, help="photos for the agreement figures (the next ones)")
    parser.add_argument("--model", default="u2net_cloth_seg", choices=sorted(CLOTH_INPUTS))
    parser.add_argument("--threads", type=int, default=None,
                        help="onnxruntime threads for the timing (default: ORT_THREADS, as the service)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    config = exit_on_bad_settings(BgConfig.from_env)
    if args.threads is not None:
        config = config.model_copy(update={"ort_threads": args.threads})
    if args.calibration < 1 or args.holdout < 1:
        print("error: --calibration and --holdout must be at least 1", file=sys.stderr)
        return 2

    fp32_path = weights_file(args.model, config.weights_dir)
    if fp32_path is None:
        print(f"error: the fp32 weights {args.model}.onnx are not installed (looked under "
              f"{weights_home(config.weights_dir)}); "
              "install them with `python -m bgremoval.weights download` or set U2NET_HOME", file=sys.stderr)
        return 2
    if not args.photos.is_dir():
        print(f"error: --photos {args.photos} is not a folder", file=sys.stderr)
        return 2
    photos = list_photos(args.photos)
    wanted = args.calibration + args.holdout
    if len(photos) < wanted:
        print(f"error: {args.photos} has {len(photos)} photos ({'/'.join(PHOTO_SUFFIXES)}); "
              f"--calibration {args.calibration} + --holdout {args.holdout} need {wanted}", file=sys.stderr)
        return 2
    calibration, holdout = photos[:args.calibration], photos[args.calibration:wanted]
    print(f"{args.model}: quantising {fp32_path} with {len(calibration)} calibration photos, "
          f"measuring on {len(holdout)} hold-out photos", file=sys.stderr)
    record = make_int8(args.model, fp32_path, calibration, holdout, config, progress=not args.no_progress)
    print(summary_text(record, int8_files(args.model, fp32_path), config.max_int8_disagreement))
    return 0


if __name__ == "__main__":
    sys.exit(main())
