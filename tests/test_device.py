"""DEVICE=auto|cpu|cuda: CPU by default, CUDA where asked and present, a warned fallback where not."""
from __future__ import annotations

import logging

import pytest

from shared.device import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    onnx_providers,
    report_provider,
    torch_device,
)


def test_onnx_providers_per_device(caplog):
    with_gpu, without = [CUDA_PROVIDER, CPU_PROVIDER], [CPU_PROVIDER]
    assert onnx_providers("cpu", with_gpu) == [CPU_PROVIDER]  # the default never takes the GPU
    assert onnx_providers("auto", with_gpu) == [CUDA_PROVIDER, CPU_PROVIDER]
    assert onnx_providers("cuda", with_gpu) == [CUDA_PROVIDER, CPU_PROVIDER]
    with caplog.at_level(logging.WARNING, logger="fashion.device"):
        assert onnx_providers("auto", without) == [CPU_PROVIDER]
        assert not caplog.records  # auto on a CPU box is not a problem
        assert onnx_providers(" CUDA ", without) == [CPU_PROVIDER]
    assert "onnxruntime-gpu" in caplog.text
    with pytest.raises(ValueError, match="DEVICE='gpu'"):
        onnx_providers("gpu", with_gpu)


def test_the_provider_that_runs_is_logged_and_a_cuda_fallback_warned(caplog):
    with caplog.at_level(logging.INFO, logger="fashion.device"):
        assert report_provider("u2net_cloth_seg", "cuda", [CUDA_PROVIDER, CPU_PROVIDER]) == CUDA_PROVIDER
        assert report_provider("u2net_cloth_seg", "cuda", [CPU_PROVIDER]) == CPU_PROVIDER
    levels = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert levels[0][0] == logging.INFO and "CUDAExecutionProvider" in levels[0][1]
    assert levels[1][0] == logging.WARNING and "DEVICE=cuda" in levels[1][1]


def test_torch_device_falls_back_to_cpu_with_a_warning(caplog):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the fallback cannot be seen")
    assert torch_device("cpu") == "cpu" and torch_device("auto") == "cpu"
    with caplog.at_level(logging.WARNING, logger="fashion.device"):
        assert torch_device("cuda") == "cpu"
    assert "torch sees no GPU" in caplog.text


def test_bg_service_on_device_cuda_without_a_gpu_serves_on_the_cpu(oracle_weights, caplog):
    from bgremoval import create_app
    from bgremoval.config import BgConfig

    with caplog.at_level(logging.INFO, logger="fashion.device"):
        app = create_app(BgConfig(weights_dir=str(oracle_weights), device="cuda"))
    assert app.test_client().get("/readyz").status_code == 200
    assert "DEVICE=cuda but onnxruntime has no CUDAExecutionProvider" in caplog.text
    assert "runs it on CPUExecutionProvider" in caplog.text


def test_bg_service_refuses_an_unknown_device(oracle_weights, monkeypatch):
    """Refused before anything loads (it was a 503 on /readyz once), naming what is allowed."""
    from bgremoval import create_app
    from bgremoval.config import BgConfig
    from shared.settings import SettingsError

    with pytest.raises(SettingsError, match="DEVICE='tpu' is not allowed: choose 'auto', 'cpu' or 'cuda'"):
        BgConfig(weights_dir=str(oracle_weights), device="tpu")
    monkeypatch.setenv("DEVICE", "tpu")
    with pytest.raises(SettingsError, match="DEVICE='tpu'"):
        create_app()


def test_indexer_embedder_reports_its_device():
    from search.config import ClipSettings
    from search.embedder import ClipEmbedder
    from tests.conftest import TINY

    assert ClipEmbedder(ClipSettings(**TINY, device="auto")).device in ("cpu", "cuda")
    assert ClipEmbedder(ClipSettings(**TINY), text_only=True).device == "cpu"
