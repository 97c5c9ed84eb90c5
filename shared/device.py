"""DEVICE=auto|cpu|cuda: where the models run, for both services and the indexer.

CPU is the default. `cuda` asks for the GPU and falls back to the CPU with a warning when this
process has none (no CUDA build of onnxruntime or torch, no visible GPU); `auto` takes the GPU
when there is one, quietly. Either way a log line says what runs.
"""
from __future__ import annotations

import logging

log = logging.getLogger("fashion.device")
DEVICES = ("auto", "cpu", "cuda")
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def check_device(device: str) -> str:
    device = (device or "cpu").strip().lower()
    if device not in DEVICES:
        raise ValueError(f"DEVICE={device!r}: choose one of {', '.join(DEVICES)}")
    return device


def onnx_providers(device: str, available: list[str] | None = None) -> list[str]:
    """onnxruntime execution providers for DEVICE, best first (rembg's `providers`)."""
    device = check_device(device)
    if device == "cpu":
        return [CPU_PROVIDER]
    if available is None:
        import onnxruntime

        available = onnxruntime.get_available_providers()
    if CUDA_PROVIDER in available:
        import onnxruntime

        if hasattr(onnxruntime, "preload_dlls"):  # CUDA/cuDNN installed from pip (requirements-gpu.txt)
            onnxruntime.preload_dlls()
        return [CUDA_PROVIDER, CPU_PROVIDER]
    if device == "cuda":
        log.warning("DEVICE=cuda but onnxruntime has no %s here (install onnxruntime-gpu, see the GPU image): "
                    "the models run on the CPU", CUDA_PROVIDER)
    return [CPU_PROVIDER]


def report_provider(name: str, device: str, running: list[str], requested: list[str] | None = None) -> str:
    """Log which provider a session really runs on (onnxruntime may drop CUDA when its libraries
    fail to load); a CPU fallback of DEVICE=cuda, or of CUDA `requested` (DEVICE=auto found it),
    is a warning, as rembg warns of it."""
    provider = running[0] if running else CPU_PROVIDER
    device = check_device(device)
    if provider != CUDA_PROVIDER and (device == "cuda" or CUDA_PROVIDER in (requested or ())):
        log.warning("%s: DEVICE=%s, but onnxruntime runs it on %s (CUDA failed to initialise)", name, device, provider)
    else:
        log.info("%s: onnxruntime runs it on %s (DEVICE=%s)", name, provider, device)
    return provider


def torch_device(device: str) -> str:
    """'cuda' or 'cpu' for torch models (the indexer's CLIP)."""
    device = check_device(device)
    if device == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        log.warning("DEVICE=cuda but torch sees no GPU here: CLIP runs on the CPU")
    return "cpu"
