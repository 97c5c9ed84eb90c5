"""BG_BACKEND=torch: rembg's ONNX graphs converted to PyTorch by onnx2torch, run in batches.

Why: onnxruntime's CUDA provider needs onnxruntime-gpu, which is not everywhere a GPU is (the
GPU image installs it; a torch-only GPU box does not), and rembg's graphs fix the batch size to
1. The converted module takes any batch, and on CUDA runs in fp16 (bench/gpu_check.py measured U^2-Net
at 818 img/s at 320 px, 143 img/s at 768 px on one H200). On the CPU it runs fp32 and
gives onnxruntime's numbers (tests/test_torch_backend.py checks the masks match).

The same weights file is read (its sha256 stays the model's identity); the identity adds
`runtime`, because fp16 masks can differ from onnxruntime's by a few edge pixels.

This module registers the "torch" engine of shared/sessions.py (bgremoval.models imports it;
torch and onnx2torch are imported only when a model is opened).
"""
from __future__ import annotations

import logging
import threading

import numpy as np
from PIL import Image

from shared.images import threaded_map
from shared.sessions import Declared, Engine, OrtOptions, Runner, register_engine, torch_device

log = logging.getLogger("fashion.device")
GPU_BATCH = 32  # images per forward pass on a GPU: 768 px U^2-Net fp16 needs ~10 GB at 32


class TorchRunner(Runner):
    """One converted model; callable on a [N, 3, S, S] float32 batch like OnnxRunner, and on photos
    (`run_images`, normalised on its device), as it declares."""

    def __init__(self, onnx_path: str, device: str = "cpu", max_batch: int | None = None):
        import onnx
        import torch
        from onnx2torch import convert

        self.device = torch_device(device)
        self.half = self.device == "cuda"
        module = convert(onnx.load(onnx_path)).eval()
        self.module = (module.half() if self.half else module).to(self.device)
        self.max_batch = max_batch or (GPU_BATCH if self.device == "cuda" else 4)
        precision = "fp16" if self.half else "fp32"
        # Any batch in one call (chunked by max_batch); photos fed on the device; fp16 numbers differ
        # from onnxruntime's by a few edge pixels, so an identity names the runtime.
        self.declares = Declared(engine="torch", runtime=f"torch-{self.device}-{precision}", device=self.device,
                                 precision=precision, batch=None, feeds_images=True, names_runtime=True)
        self._torch = torch
        # A converted graph holds no per-call state, but one forward at a time keeps a GPU's
        # memory to one batch's activations when several threads share the model.
        self._lock = threading.Lock()
        log.info("%s: torch runs it on %s (%s)", onnx_path.rsplit("/", 1)[-1], self.device, self.runtime)

    def run_images(self, images: list[Image.Image], spec, groups: list[list[int]] | None = None) -> np.ndarray:
        """From photos: [N, S, S], the first output plane (mattes), or with `groups` [N, G, S, S],
        each group of channels' summed softmax probability (cloth). Only the Lanczos resize runs on
        the CPU (in threads: Pillow releases the GIL); rembg's normalisation, the model and the
        softmax run on the device and only those planes come back, so the GPU is not left waiting
        on numpy."""
        torch = self._torch
        side = (spec.size, spec.size)
        pixels = np.stack(threaded_map(
            lambda im: np.asarray(im.convert("RGB").resize(side, Image.Resampling.LANCZOS)), images))
        mean = torch.tensor(spec.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(spec.std, device=self.device).view(1, 3, 1, 1)

        def feed(x):  # uint8 NHWC -> rembg's normalisation, on the device
            x = x.permute(0, 3, 1, 2).float()
            x = x / x.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)  # each image by its brightest value
            return (x - mean) / std

        def reduce(first):
            if groups is None:
                return first[:, 0]
            probability = first.softmax(dim=1)
            return torch.stack([probability[:, group].sum(dim=1) for group in groups], dim=1)

        return self._forward(pixels, feed, reduce)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self._forward(batch, lambda x: x, lambda first: first)

    def _forward(self, batch: np.ndarray, feed, reduce) -> np.ndarray:
        """The model over `batch` in chunks of max_batch: feed(tensor on the device) in, the
        first output (fp32) through reduce() out, back as one numpy array."""
        torch = self._torch
        outputs = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(batch), self.max_batch):
                x = feed(torch.from_numpy(np.ascontiguousarray(batch[start:start + self.max_batch])).to(self.device))
                out = self.module(x.half() if self.half else x)
                first = (out[0] if isinstance(out, (list, tuple)) else out).float()
                outputs.append(reduce(first).cpu().numpy())
        return np.concatenate(outputs)


@register_engine("torch")
class TorchEngine(Engine):
    """BG_BACKEND=torch: rembg's ONNX graphs converted by onnx2torch, on DEVICE (fp16 on CUDA)."""

    def open(self, path: str, options: OrtOptions | None = None, label: str | None = None) -> TorchRunner:
        return TorchRunner(path, self.device)  # logs where it runs itself
