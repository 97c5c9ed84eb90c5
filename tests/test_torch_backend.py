"""Batches through the garment step, and BG_BACKEND=torch (onnx2torch) against onnxruntime.

The GPU path batches the models and runs them under torch; on the CPU both must give the masks
onnxruntime gives one photo at a time, so a GPU-built index means what a CPU-built one means.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bgremoval.config import BgConfig
from bgremoval.pipeline import GarmentPipeline, NoGarmentFound
from tests import scenes

REAL_COST_TOOLS = Path(__file__).resolve().parents[2] / "shared" / "tools" / "real-cost-models"
needs_onnx2torch = pytest.mark.skipif(importlib.util.find_spec("onnx2torch") is None,
                                      reason="onnx2torch is not installed (requirements-search-build.txt)")


def mixed_batch() -> list[Image.Image]:
    """A street photo, a flat-lay, a person with no garment, a dress, and grey scenery alone."""
    street, _ = scenes.street_photo()
    flat, _ = scenes.flat_lay_photo()
    skin_only = Image.new("RGB", (400, 500), (120, 120, 120))
    skin_only.paste((40, 200, 40), (100, 50, 300, 450))  # saturated green: person, no clothing class
    return [street, flat, skin_only, scenes.dress_photo(), Image.new("RGB", (300, 300), (128, 128, 128))]


def outcomes(results) -> list:
    return [type(r).__name__ if isinstance(r, NoGarmentFound) else (r.source, r.working) for r in results]


def same_outcomes(a, b) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if isinstance(x, str) or isinstance(y, str):
            if x != y:
                return False
        elif x[0] != y[0] or not np.array_equal(x[1], y[1]):
            return False
    return True


def test_a_batch_gives_the_masks_of_one_photo_at_a_time(bg_pipeline):
    photos = mixed_batch()
    batched = outcomes(bg_pipeline.garment_masks(photos))
    one_by_one = []
    for photo in photos:
        try:
            one_by_one.append(bg_pipeline.garment_mask(photo))
        except NoGarmentFound as exc:
            one_by_one.append(exc)
    assert [o if isinstance(o, str) else o[0] for o in batched] == [
        "garment", "product", "NoGarmentFound", "garment", "NoGarmentFound"]
    assert same_outcomes(batched, outcomes(one_by_one))


def test_cut_outs_match_cut_out(bg_pipeline):
    from shared.images import DecodedImage

    photos = mixed_batch()[:2]
    decoded = [DecodedImage(p, None, "PNG") for p in photos]
    for (picture, mask), photo in zip(bg_pipeline.cut_outs(decoded), photos, strict=True):
        single, single_mask = bg_pipeline.remove_background(photo)
        assert np.array_equal(np.asarray(picture), np.asarray(single))
        assert np.array_equal(mask.working, single_mask.working)


@needs_onnx2torch
def test_torch_backend_gives_onnxruntimes_masks_on_the_cpu(oracle_weights, bg_pipeline):
    from bgremoval.models import load_models

    torch_models = load_models(BgConfig(weights_dir=str(oracle_weights), backend="torch"))
    assert torch_models.cloth.runner.runtime == "torch-cpu-fp32"
    assert torch_models.cloth.identity["runtime"] == "torch-cpu-fp32"  # an index records what made it
    assert "runtime" not in bg_pipeline.models.cloth.identity
    photos = mixed_batch()
    assert same_outcomes(outcomes(GarmentPipeline(torch_models).garment_masks(photos)),
                         outcomes(bg_pipeline.garment_masks(photos)))


@needs_onnx2torch
def test_torch_backend_matches_onnxruntime_on_the_real_u2net_architecture(tmp_path):
    """rembg's real graph: U^2-Net (the authors' code, random weights) exported as rembg's files
    are, batch 1 fixed. Converted, it takes a batch of 3 and gives onnxruntime's outputs."""
    if not (REAL_COST_TOOLS / "u2net_arch.py").exists():
        pytest.skip(f"{REAL_COST_TOOLS} is absent: needs ../shared/tools beside the repo")
    import onnxruntime as ort
    import torch

    sys.path.insert(0, str(REAL_COST_TOOLS))
    try:
        from u2net_arch import U2NET
    finally:
        sys.path.remove(str(REAL_COST_TOOLS))
    from bgremoval.models import CLOTH_INPUTS, InputSpec, model_input
    from bgremoval.torch_backend import TorchRunner

    side = 192  # rembg's cloth model is 768 px; the graph is the same at any side
    torch.manual_seed(0)
    path = tmp_path / "u2net_cloth_seg.onnx"
    with torch.no_grad():
        torch.onnx.export(U2NET(3, 4).eval(), torch.randn(1, 3, side, side), str(path), input_names=["input.1"],
                          output_names=[f"d{i}" for i in range(7)], opset_version=17, dynamo=False)
    spec = InputSpec(side, CLOTH_INPUTS["u2net_cloth_seg"].mean, CLOTH_INPUTS["u2net_cloth_seg"].std)
    photos = [scenes.street_photo()[0], scenes.dress_photo(), scenes.flat_lay_photo()[0]]
    batch = model_input(photos, spec)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = np.concatenate([session.run(None, {"input.1": batch[i:i + 1]})[0] for i in range(len(batch))])
    got = TorchRunner(str(path), "cpu")(batch)
    assert got.shape == expected.shape == (3, 4, side, side)
    assert np.abs(got - expected).max() < 1e-3 * max(1.0, np.abs(expected).max())
    assert (got.argmax(1) != expected.argmax(1)).mean() <= 0.005  # the mask budget
    # The GPU path's own feed (normalised on the device in float32) and softmax: the same planes.
    from bgremoval.models import summed_probability

    garment = TorchRunner(str(path), "cpu").run_images(photos, spec, [[1, 2, 3]])[:, 0]
    reference = summed_probability(expected, [1, 2, 3])
    assert garment.shape == (3, side, side)
    assert np.abs(garment - reference).max() < 1e-3
    assert ((garment > 0.5) != (reference > 0.5)).mean() <= 0.005


def test_model_input_is_rembgs_normalisation(oracle_weights):
    """The batch feed equals rembg's own normalize() for each photo, to the bit."""
    from rembg import new_session

    from bgremoval.models import CLOTH_INPUTS, model_input

    spec = CLOTH_INPUTS["u2net_cloth_seg"]
    session = new_session("u2net_cloth_seg", providers=["CPUExecutionProvider"])
    photos = mixed_batch()[:3]
    batch = model_input(photos, spec)
    for i, photo in enumerate(photos):
        feed = session.normalize(photo, spec.mean, spec.std, (spec.size, spec.size))
        assert np.array_equal(batch[i:i + 1], next(iter(feed.values())))


def test_a_bad_backend_or_precision_is_refused():
    with pytest.raises(ValueError, match="BG_BACKEND"):
        BgConfig(backend="tensorrt")
    with pytest.raises(ValueError, match="BG_CLOTH_PRECISION"):
        BgConfig.from_env({"BG_CLOTH_PRECISION": "fp8"})


def test_cloth_beside_the_person_matte_gives_the_same_masks(bg_models, bg_pipeline):
    """BG_CONCURRENT_MODELS=1 starts the cloth model while the person matte runs: same outcomes
    (garment, flat-lay, no garment), photo by photo and in a batch."""
    from bgremoval.config import PipelineSettings

    concurrent = GarmentPipeline(bg_models, PipelineSettings(concurrent_models=True))
    photos = mixed_batch()
    assert same_outcomes(outcomes(concurrent.garment_masks(photos)), outcomes(bg_pipeline.garment_masks(photos)))
    for photo in photos:
        assert same_outcomes(outcomes(concurrent.garment_masks([photo])), outcomes(bg_pipeline.garment_masks([photo])))
    assert PipelineSettings.from_env({"BG_CONCURRENT_MODELS": "1"}).concurrent_models
