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


class ModelSession:
    """A rembg session that returns the network's first output at the model's own resolution."""

    def __init__(self, name: str, rembg_session, spec: InputSpec, weights_path: str | None = None):
        self.name = name
        self.spec = spec
        self.weights_path = weights_path
        self._session = rembg_session
        self._identity: dict | None = None
        self._identity_lock = threading.Lock()

    @property
    def identity(self) -> dict:
        """Name and weights sha256: what decides this model's output. Hashed on first use (about
        a second for rembg's 176 MB files), not at load, so worker start-up stays fast."""
        with self._identity_lock:
            if self._identity is None:
                sha = file_sha256(self.weights_path) if self.weights_path else None
                self._identity = {"name": self.name, "sha256": sha, "input_size": self.spec.size}
            return self._identity

    def run(self, img: Image.Image) -> np.ndarray:
        feed = self._session.normalize(img, self.spec.mean, self.spec.std, (self.spec.size,) * 2)
        return np.asarray(self._session.inner_session.run(None, feed)[0], dtype=np.float32)


def open_session(name: str, specs: dict[str, InputSpec], config: BgConfig) -> ModelSession:
    if name not in specs:
        raise ValueError(f"Model {name!r} is not supported here; choose one of {sorted(specs)}.")
    if not config.allow_download and weights_file(name) is None:
        home = os.environ.get("U2NET_HOME") or "~/.rembg/models/<name>"
        raise MissingWeights(
            f"Weights for {name!r} are not installed (looked for {name}.onnx under {home}). "
            "Run `python -m bgremoval.weights download` on a machine with internet, or set "
            "BG_ALLOW_DOWNLOAD=1 to let the service download them at start."
        )
    from rembg import new_session

    options = ort.SessionOptions()
    # Several gunicorn workers share 2 cores: each session gets a fixed, small thread budget.
    options.intra_op_num_threads = config.ort_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # No CPU memory arena: with it, each session keeps its largest activations for good (U^2-Net
    # cloth at 768 px: 3.1 GB resident after two runs, vs ~0.5 GB without, at the same speed), so a
    # worker's memory would be the peak of every model times every thread, forever.
    options.enable_cpu_mem_arena = False
    session = new_session(name, sess_opts=options, providers=onnx_providers(config.device))
    report_provider(name, config.device, session.inner_session.get_providers())
    return ModelSession(name, session, specs[name], weights_file(name))


@dataclass
class Models:
    person: ModelSession
    cloth: ModelSession | None  # None only in tools that evaluate the person step alone
    product: ModelSession | None


def load_models(config: BgConfig) -> Models:
    return Models(
        person=open_session(config.models.person, MATTE_INPUTS, config),
        cloth=open_session(config.models.cloth, CLOTH_INPUTS, config),
        product=open_session(config.models.product, MATTE_INPUTS, config),
    )
