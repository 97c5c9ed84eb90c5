"""The three rembg models behind one small interface, created once per process.

rembg gives us the sessions (weights lookup under U2NET_HOME, checksum-verified download,
onnxruntime options) and each model's input normalisation. We read the raw network output
instead of `session.predict()` because predict() min-max stretches mattes (an image with no
person comes back with its most person-like pixels at 255, so absence cannot be told) and
Lanczos-resizes the cloth label map (which invents in-between class ids along edges).
"""
from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from PIL import Image

from bgremoval.config import BgConfig
from shared.device import onnx_providers, report_provider

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


class MissingWeights(RuntimeError):
    pass


def session_class(name: str):
    from rembg.sessions import sessions_class

    for cls in sessions_class:
        if cls.name() == name:
            return cls
    raise ValueError(f"rembg has no model called {name!r}")


def weights_file(name: str) -> str | None:
    """Where rembg would load `name` from, or None if it is not on disk."""
    return session_class(name).resolve_existing(f"{name}.onnx")


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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


class OnnxRunner:
    """An onnxruntime session. rembg's graphs fix the batch dimension to 1, so a batch runs image
    by image there; a graph with a free batch dimension gets it in one call."""

    def __init__(self, session: ort.InferenceSession):
        self.session = session
        self.input_name = session.get_inputs()[0].name
        batch_dim = session.get_inputs()[0].shape[0]
        self.fixed_batch = batch_dim if isinstance(batch_dim, int) else None
        self.runtime = "onnxruntime"

    def run_images(self, images: list[Image.Image], spec: InputSpec, groups: list[list[int]] | None = None) -> np.ndarray:
        """From photos: [N, S, S], the first output plane (mattes), or with `groups` [N, G, S, S],
        each group of channels' summed softmax probability from the one run (cloth). TorchRunner
        has the same call, done on its device."""
        out = self(model_input(images, spec))
        return out[:, 0] if groups is None else grouped_probability(out, groups)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.fixed_batch == 1 and len(batch) > 1:
            return np.concatenate([self(batch[i:i + 1]) for i in range(len(batch))])
        return np.asarray(self.session.run(None, {self.input_name: batch})[0], dtype=np.float32)


class ModelSession:
    """One model: the network's first output at the model's own resolution, for one image or a
    batch (rembg's sessions give the weights lookup and download; onnxruntime or torch run it)."""

    def __init__(self, name: str, runner, spec: InputSpec, weights_path: str | None = None):
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
                if self.runner.runtime != "onnxruntime":
                    self._identity["runtime"] = self.runner.runtime
            return self._identity

    def run(self, img: Image.Image) -> np.ndarray:
        return self.run_batch([img])

    def run_batch(self, images: list[Image.Image]) -> np.ndarray:
        return self.runner(model_input(images, self.spec))

    def mattes(self, images: list[Image.Image]) -> np.ndarray:
        """[N, S, S]: a matte model's output plane per image."""
        return self.runner.run_images(images, self.spec)

    def class_probabilities(self, images: list[Image.Image], groups: list[list[int]]) -> np.ndarray:
        """[N, G, S, S]: per image, each group of channels' probability together, from one run of
        the cloth model (a product's classes, all garments as its fallback, each class alone)."""
        return self.runner.run_images(images, self.spec, groups)


def session_options(config: BgConfig) -> ort.SessionOptions:
    options = ort.SessionOptions()
    # Several gunicorn workers share 2 cores: each session gets a fixed, small thread budget.
    options.intra_op_num_threads = config.ort_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # No CPU memory arena: with it, each session keeps its largest activations for good (U^2-Net
    # cloth at 768 px: 3.1 GB resident after two runs, vs ~0.5 GB without, at the same speed), so a
    # worker's memory would be the peak of every model times every thread, forever.
    options.enable_cpu_mem_arena = False
    return options


def open_session(name: str, specs: dict[str, InputSpec], config: BgConfig, precision: str = "fp32") -> ModelSession:
    """`precision` "int8": the statically quantised copy `python -m bgremoval.quantize` wrote beside
    the weights (bgremoval/quantize.py), loaded only with its recorded agreement."""
    if name not in specs:
        raise ValueError(f"Model {name!r} is not supported here; choose one of {sorted(specs)}.")
    if not config.allow_download and weights_file(name) is None:
        home = os.environ.get("U2NET_HOME") or "~/.rembg/models/<name>"
        raise MissingWeights(
            f"Weights for {name!r} are not installed (looked for {name}.onnx under {home}). "
            "Run `python -m bgremoval.weights download` on a machine with internet, or set "
            "BG_ALLOW_DOWNLOAD=1 to let the service download them at start."
        )
    if precision == "int8":
        from bgremoval.quantize import load_int8

        path = load_int8(name, weights_file(name), config)
        session = ort.InferenceSession(path, session_options(config), providers=onnx_providers(config.device))
        report_provider(f"{name} (int8)", config.device, session.get_providers())
        return ModelSession(name, OnnxRunner(session), specs[name], path)
    if config.backend == "torch":
        from bgremoval.torch_backend import TorchRunner

        path = weights_file(name) or str(session_class(name).download_models())
        return ModelSession(name, TorchRunner(path, config.device), specs[name], path)
    from rembg import new_session

    session = new_session(name, sess_opts=session_options(config), providers=onnx_providers(config.device))
    report_provider(name, config.device, session.inner_session.get_providers())
    return ModelSession(name, OnnxRunner(session.inner_session), specs[name], weights_file(name))


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
