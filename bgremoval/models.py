"""The three rembg models behind one small interface, created once per process.

rembg gives us the sessions (weights lookup under U2NET_HOME, checksum-verified download,
onnxruntime options) and each model's input normalisation. We read the raw network output
instead of `session.predict()` because predict() min-max stretches mattes (an image with no
person comes back with its most person-like pixels at 255, so absence cannot be told) and
Lanczos-resizes the cloth label map (which invents in-between class ids along edges).

Which runtime opens a model (onnxruntime on the CPU or CUDA, the int8 graph, torch) is chosen by
shared/sessions.py from DEVICE, BG_BACKEND and BG_CLOTH_PRECISION; what the runner it returns can
do is declared there (`Runner.declares`). The int8 graph is checked by bgremoval/int8.py first.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from bgremoval.config import BgConfig
from bgremoval.int8 import load_int8
from bgremoval.torch_backend import TorchEngine  # noqa: F401 - importing it registers the "torch" engine
from bgremoval.weights import MissingWeights, fetched_weights_file, file_sha256, weights_file, weights_home
from shared.sessions import OnnxRunner, Runner, choose_engine, model_options

# Re-exported: callers and tests import these from here.
__all__ = ["CLOTH_CLASSES", "CLOTH_INPUTS", "MATTE_INPUTS", "InputSpec", "MissingWeights", "ModelSession", "Models",
           "OnnxRunner", "file_sha256", "grouped_probability", "load_models", "model_input", "open_session",
           "softmax", "summed_probability", "weights_file"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """How rembg feeds a model: square side and per-channel normalisation (from rembg's sessions)."""

    size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


# Mattes: output[0] is [1, 1, S, S] in 0..1. Cloth: output[0] is [1, 4, S, S] logits for
# background / upper / lower / full.
MATTE_INPUTS = {
    "u2net_human_seg": InputSpec(320),
    "u2net": InputSpec(320),
    "u2netp": InputSpec(320),
    "silueta": InputSpec(320),
    "isnet-general-use": InputSpec(1024, (0.5, 0.5, 0.5), (1.0, 1.0, 1.0)),
}
CLOTH_INPUTS = {"u2net_cloth_seg": InputSpec(768)}
CLOTH_CLASSES = ("background", "upper", "lower", "full")


def softmax(logits: np.ndarray, axis: int) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def grouped_probability(logits: np.ndarray, groups: list[list[int]]) -> np.ndarray:
    """[N, C, S, S] logits -> [N, G, S, S]: each group of channels' softmax probability together."""
    probability = softmax(logits, axis=1)
    return np.stack([probability[:, group].sum(axis=1) for group in groups], axis=1)


def summed_probability(logits: np.ndarray, channels: list[int]) -> np.ndarray:
    """[N, C, S, S] logits -> [N, S, S]: the softmax probability of `channels` together."""
    return grouped_probability(logits, [channels])[:, 0]


def model_input(images: list[Image.Image], spec: InputSpec) -> np.ndarray:
    """A [N, 3, S, S] float32 batch, each image fed exactly as rembg's `normalize()` feeds it:
    Lanczos-resized to the model's square, divided by its own brightest value, then standardised."""
    batch = np.empty((len(images), 3, spec.size, spec.size), np.float32)
    for i, img in enumerate(images):
        pixels = np.array(img.convert("RGB").resize((spec.size, spec.size), Image.Resampling.LANCZOS))
        scaled = pixels / max(np.max(pixels), 1e-6)  # float64, as rembg computes it
        batch[i] = ((scaled - np.array(spec.mean)) / np.array(spec.std)).transpose(2, 0, 1)
    return batch


class ModelSession:
    """One model: the network's first output at the model's own resolution, for one image or a
    batch (rembg's sessions give the weights lookup and download; an engine of shared/sessions.py
    runs it, and its runner declares what it can do)."""

    def __init__(self, name: str, runner: Runner, spec: InputSpec, weights_path: str | None = None):
        self.name = name
        self.spec = spec
        self.weights_path = weights_path
        self.runner = runner
        self._identity: dict | None = None
        self._identity_lock = threading.Lock()

    @property
    def identity(self) -> dict:
        """Name and weights sha256: what decides this model's output. Hashed on first use (about
        a second for rembg's 176 MB files), not at load, so worker start-up stays fast. A runtime
        other than onnxruntime (torch fp16 on a GPU) gives slightly different numbers, so it is named."""
        with self._identity_lock:
            if self._identity is None:
                sha = file_sha256(self.weights_path) if self.weights_path else None
                self._identity = {"name": self.name, "sha256": sha, "input_size": self.spec.size}
                if self.runner.declares.names_runtime:
                    self._identity["runtime"] = self.runner.declares.runtime
            return self._identity

    def run(self, img: Image.Image) -> np.ndarray:
        return self.run_batch([img])

    def run_batch(self, images: list[Image.Image]) -> np.ndarray:
        return self.runner(model_input(images, self.spec))

    def mattes(self, images: list[Image.Image]) -> np.ndarray:
        """[N, S, S]: a matte model's output plane per image."""
        return self._run_images(images, None)

    def class_probabilities(self, images: list[Image.Image], groups: list[list[int]]) -> np.ndarray:
        """[N, G, S, S]: per image, each group of channels' probability together, from one run of
        the cloth model (a product's classes, all garments as its fallback, each class alone)."""
        return self._run_images(images, groups)

    def _run_images(self, images: list[Image.Image], groups: list[list[int]] | None) -> np.ndarray:
        """From photos: [N, S, S], the first output plane (mattes), or with `groups` [N, G, S, S],
        each group of channels' summed softmax probability from the one run (cloth). A runner that
        declares `feeds_images` (torch) normalises the photos and sums the softmax on its device;
        the others get rembg's feed from the CPU."""
        if self.runner.declares.feeds_images:
            return self.runner.run_images(images, self.spec, groups)
        out = self.runner(model_input(images, self.spec))
        return out[:, 0] if groups is None else grouped_probability(out, groups)


# The weights each precision runs: rembg's fp32 file (downloaded first when BG_ALLOW_DOWNLOAD lets
# it), or the int8 copy `python -m bgremoval.quantize` made, only with its recorded agreement.
WEIGHTS: dict[str, Callable[[str, BgConfig], str]] = {
    "fp32": lambda name, config: fetched_weights_file(name, config.weights_dir),
    "int8": lambda name, config: load_int8(name, weights_file(name, config.weights_dir), config),
}


def open_session(name: str, specs: dict[str, InputSpec], config: BgConfig, precision: str = "fp32") -> ModelSession:
    """`name` on the engine DEVICE, BG_BACKEND and `precision` choose (shared.sessions.choose_engine).
    `precision` "int8": the statically quantised copy `python -m bgremoval.quantize` wrote beside
    the weights, loaded only with its recorded agreement (bgremoval/int8.py)."""
    if name not in specs:
        raise ValueError(f"Model {name!r} is not supported here; choose one of {sorted(specs)}.")
    if not config.allow_download and weights_file(name, config.weights_dir) is None:
        raise MissingWeights(
            f"Weights for {name!r} are not installed (looked for {name}.onnx under {weights_home(config.weights_dir)}). "
            "Run `python -m bgremoval.weights download` on a machine with internet, or set "
            "BG_ALLOW_DOWNLOAD=1 to let the service download them at start."
        )
    engine = choose_engine(device=config.device, backend=config.backend, precision=precision)
    path = WEIGHTS[engine.precision](name, config)
    label = name if engine.precision == "fp32" else f"{name} ({engine.precision})"
    return ModelSession(name, engine.open(path, model_options(config.ort_threads), label), specs[name], path)


@dataclass
class Models:
    person: ModelSession
    cloth: ModelSession | None  # None only in tools that evaluate the person step alone
    product: ModelSession | None


def load_models(config: BgConfig) -> Models:
    return Models(
        person=open_session(config.models.person, MATTE_INPUTS, config),
        cloth=open_session(config.models.cloth, CLOTH_INPUTS, config, config.cloth_precision),
        product=open_session(config.models.product, MATTE_INPUTS, config),
    )
