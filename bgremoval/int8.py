"""BG_CLOTH_PRECISION=int8: the service's side of the int8 cloth model. `python -m bgremoval.quantize`
(bgremoval/quantize.py, the offline tool) writes, beside the fp32 weights rembg finds:

    <model>.int8.onnx   the statically quantised graph
    <model>.int8.json   what it was made from (fp32 file + sha256) and how far it agrees with fp32
                        on hold-out photos (share of garment-mask pixels that differ, worst photo)

`load_int8` gives the graph's path only when that record exists, says it was made from the fp32
weights installed now, matches the graph's own sha256, and its worst photo differs by at most
BG_INT8_MAX_DISAGREEMENT (default 0.005 = 0.5 % of the pixels). The graph then runs on the
"onnxruntime-int8" engine (shared/sessions.py, chosen by bgremoval.models.open_session).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

from bgremoval.config import BgConfig
from bgremoval.weights import MissingWeights, file_sha256

log = logging.getLogger("fashion.models")
DISAGREEMENT_ENV = "BG_INT8_MAX_DISAGREEMENT"


class Int8Refused(ValueError):
    """The int8 model exists but must not be used: stale, tampered, or too far from fp32."""


@dataclass(frozen=True)
class Int8Files:
    onnx: str
    sidecar: str


def int8_files(name: str, fp32_path: str) -> Int8Files:
    """Where the int8 copy of `name` and its sidecar live: beside the fp32 weights."""
    folder = os.path.dirname(os.path.abspath(fp32_path))
    return Int8Files(os.path.join(folder, f"{name}.int8.onnx"), os.path.join(folder, f"{name}.int8.json"))


def create_command(name: str) -> str:
    return (f"python -m bgremoval.quantize --photos DIR --model {name}  "
            "(DIR: street photos like the service's, at least 32; with the same U2NET_HOME)")


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def cached_sha256(path: str) -> str:
    """sha256 of a file, remembered by (path, size, mtime) so a worker hashes 176 MB once."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = file_sha256(path)
    return _SHA_CACHE[key]


def load_int8(name: str, fp32_path: str | None, config: BgConfig) -> str:
    """The path of the int8 copy of `name`, checked against its sidecar: made from these fp32
    weights, unchanged since, and recorded within `config.max_int8_disagreement` of fp32.

    Raises MissingWeights when it was never made, Int8Refused (a ValueError) when it must not be used.
    """
    if fp32_path is None:
        raise MissingWeights(f"BG_CLOTH_PRECISION=int8 needs the fp32 weights of {name!r} installed first "
                             "(`python -m bgremoval.weights download`), then " + create_command(name))
    files = int8_files(name, fp32_path)
    missing = [p for p in (files.onnx, files.sidecar) if not os.path.isfile(p)]
    if missing:
        raise MissingWeights(
            f"BG_CLOTH_PRECISION=int8, but the int8 copy of {name!r} is not there ({', '.join(missing)} missing). "
            f"Create it with `{create_command(name)}`, or set BG_CLOTH_PRECISION=fp32."
        )
    try:
        with open(files.sidecar) as fh:
            record = json.load(fh)
        source_sha, int8_sha = record["source_sha256"], record["int8_sha256"]
        worst = float(record["mask_pixels_differ_max"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise Int8Refused(f"{files.sidecar} is unreadable or incomplete ({type(exc).__name__}: {exc}); "
                          f"re-create it with `{create_command(name)}`.") from None
    if cached_sha256(fp32_path) != source_sha:
        raise Int8Refused(
            f"{files.onnx} is stale: it was quantised from {record.get('source_file')} with sha256 "
            f"{source_sha[:12]}..., but {fp32_path} now has a different sha256. "
            f"Re-create it with `{create_command(name)}`, or set BG_CLOTH_PRECISION=fp32."
        )
    if cached_sha256(files.onnx) != int8_sha:
        raise Int8Refused(f"{files.onnx} is not the file its sidecar {files.sidecar} describes (sha256 differs); "
                          f"re-create both with `{create_command(name)}`.")
    if not worst <= config.max_int8_disagreement:  # `not <=`: a NaN is refused too
        raise Int8Refused(
            f"The int8 {name} differs from fp32 on up to {worst:.2%} of the garment-mask pixels of a photo "
            f"(measured {record.get('created')} on {record.get('holdout', {}).get('count')} hold-out photos), "
            f"over the limit {config.max_int8_disagreement:.2%}. Raise {DISAGREEMENT_ENV} "
            f"(now {config.max_int8_disagreement}) to accept it, or set BG_CLOTH_PRECISION=fp32."
        )
    speed = record.get("seconds_per_image", {})
    log.info("%s: int8 copy %s, recorded against fp32 on %s hold-out photos: garment-mask pixels differing "
             "mean %.3f%% max %.3f%% (limit %.3f%%), class agreement %.3f%%, %.2f s vs %.2f s an image",
             name, files.onnx, record.get("holdout", {}).get("count"), 100 * record.get("mask_pixels_differ_mean", 0),
             100 * worst, 100 * config.max_int8_disagreement, 100 * record.get("class_agreement", 0),
             speed.get("int8", float("nan")), speed.get("fp32", float("nan")))
    return files.onnx
