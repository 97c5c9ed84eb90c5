"""The int8 cloth model (bgremoval/quantize.py): made with its measured agreement, loaded by the
service only when it is fresh, untouched and within BG_INT8_MAX_DISAGREEMENT.

Runs on the oracle models (tests/oracle_models.py) in a private U2NET_HOME, with 2 calibration and
2 hold-out synthetic photos: the oracle's Mul/Add/Concat graph quantises almost, not exactly, like
fp32 (a fraction of a percent of edge pixels), so agreement is asserted within bounds, not as equality.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
from datetime import datetime

import onnx
import onnxruntime as ort
import pytest

from bgremoval import quantize
from bgremoval.config import BgConfig
from bgremoval.models import (
    CLOTH_INPUTS,
    MissingWeights,
    file_sha256,
    load_models,
    open_session,
)
from bgremoval.pipeline import GarmentPipeline
from tests import scenes
from tests.oracle_models import cloth_segmentation, write_oracle_models

NAME = "u2net_cloth_seg"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Oracle weights quantised once through the command line: (U2NET_HOME, photos folder, printed summary)."""
    root = tmp_path_factory.mktemp("int8")
    home, photos = root / "home", root / "photos"
    write_oracle_models(str(home))
    photos.mkdir()
    # Sorted names decide the split: a* calibrate, b* are the hold-out, c* is left over.
    scenes.street_photo(600, 800)[0].save(photos / "a0.jpg", quality=95)
    scenes.dress_photo().save(photos / "a1.png")
    scenes.street_photo(480, 640)[0].save(photos / "b0.jpg", quality=95)
    scenes.street_photo(1200, 1500)[0].save(photos / "b1.webp")  # over working_max_side: scaled first
    scenes.dress_photo(300, 400).save(photos / "c0.jpg")
    (photos / "notes.txt").write_text("not a photo")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("U2NET_HOME", str(home))
        for var in ("BG_INT8_MAX_DISAGREEMENT", "BG_CLOTH_PRECISION", "ORT_THREADS"):
            mp.delenv(var, raising=False)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            rc = quantize.main(["--photos", str(photos), "--calibration", "2", "--holdout", "2", "--threads", "1",
                                "--no-progress"])
    assert rc == 0, printed.getvalue()
    return home, photos, printed.getvalue()


@pytest.fixture
def home(made, tmp_path, monkeypatch):
    """A private copy of the quantised U2NET_HOME (tests tamper with it), set as U2NET_HOME."""
    copy = tmp_path / "home"
    shutil.copytree(made[0], copy)
    monkeypatch.setenv("U2NET_HOME", str(copy))
    return copy


def sidecar(home) -> dict:
    return json.loads((home / f"{NAME}.int8.json").read_text())


def int8_config(home, **kw) -> BgConfig:
    return BgConfig(weights_dir=str(home), cloth_precision="int8", **kw)


def test_quantize_writes_the_model_and_its_measured_agreement(made):
    home, _, printed = made
    fp32, int8 = home / f"{NAME}.onnx", home / f"{NAME}.int8.onnx"
    record = sidecar(home)
    assert record["source_file"] == fp32.name and record["source_sha256"] == file_sha256(str(fp32))
    assert record["int8_file"] == int8.name and record["int8_sha256"] == file_sha256(str(int8))
    assert record["onnxruntime"] == ort.__version__
    assert all(word in record["method"] for word in ("quantize_static", "QDQ", "per-channel", "QUInt8", "QInt8"))
    assert record["calibration"]["count"] == 2 and record["calibration"]["names"] == ["a0.jpg", "a1.png"]
    assert record["holdout"]["count"] == 2 and record["holdout"]["names"] == ["b0.jpg", "b1.webp"]
    assert len(record["calibration"]["photos_sha256"]) == 16
    assert record["calibration"]["photos_sha256"] != record["holdout"]["photos_sha256"]
    per_photo = record["mask_pixels_differ_per_photo"]
    assert len(per_photo) == 2
    assert 0 <= record["mask_pixels_differ_mean"] <= record["mask_pixels_differ_max"] == pytest.approx(max(per_photo), abs=1e-6)
    # The oracle quantises to within a fraction of a percent of edge pixels (measured ~0.1 % at most).
    assert record["mask_pixels_differ_max"] < 0.005
    assert 0.99 < record["class_agreement_min"] <= record["class_agreement"] <= 1.0
    assert record["seconds_per_image"]["fp32"] > 0 and record["seconds_per_image"]["int8"] > 0
    assert record["threads"] == 1 and record["garment_threshold"] == 0.5
    assert datetime.fromisoformat(record["created"]).utcoffset().total_seconds() == 0
    # Really statically quantised: QDQ pairs around the activations, 8-bit constants in the file (the
    # oracle has no Conv, so its Mul/Add constants are quantised as activations: uint8).
    graph = onnx.load(str(int8)).graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in graph.node}
    assert any(init.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) for init in graph.initializer)
    assert 0 <= record["garment_probability_diff_mean"] <= record["garment_probability_diff_max"] < 0.5
    assert "these weights and these photos" in printed and "hold-out" in printed
    assert f"{record['mask_pixels_differ_max']:.3%}" in printed


def test_int8_cloth_model_serves_masks_that_agree_with_fp32(home, caplog):
    record = sidecar(home)
    with caplog.at_level(logging.INFO, logger="fashion.models"):
        int8_models = load_models(int8_config(home))
    assert int8_models.cloth.weights_path == str(home / f"{NAME}.int8.onnx")
    assert any("int8" in r.getMessage() and f"{100 * record['mask_pixels_differ_max']:.3f}%" in r.getMessage()
               for r in caplog.records if r.name == "fashion.models")
    fp32_models = load_models(BgConfig(weights_dir=str(home)))
    assert fp32_models.cloth.weights_path == str(home / f"{NAME}.onnx")

    photo, boxes = scenes.street_photo(720, 960)  # not one of the calibration or hold-out photos
    # At the model's resolution, as the tool measures it.
    masks = [quantize.garment_mask(m.cloth.run(photo)[0], 0.5) for m in (fp32_models, int8_models)]
    differ = float((masks[0] != masks[1]).mean())
    assert masks[0].mean() > 0.1  # a real garment mask, not two empty ones
    assert differ <= max(2 * record["mask_pixels_differ_max"], 0.002)
    # Through the whole pipeline: same garment, same place.
    cut = [GarmentPipeline(m).garment_mask(photo).mask > 127 for m in (fp32_models, int8_models)]
    x0, y0, x1, y1 = scenes.inner(boxes["top"])
    assert cut[0][y0:y1, x0:x1].all() and cut[1][y0:y1, x0:x1].all()
    assert not cut[1][: boxes["face"][3] - 10].any()  # nothing above the neck
    assert float((cut[0] != cut[1]).mean()) <= 0.002


def test_missing_int8_copy_names_the_command(made, tmp_path, monkeypatch):
    fresh = tmp_path / "fresh"
    write_oracle_models(str(fresh))
    monkeypatch.setenv("U2NET_HOME", str(fresh))
    with pytest.raises(MissingWeights, match=r"python -m bgremoval\.quantize --photos DIR --model u2net_cloth_seg"):
        open_session(NAME, CLOTH_INPUTS, int8_config(fresh), "int8")
    # The model without its sidecar is as good as missing: nothing says how far it is from fp32.
    shutil.copy(made[0] / f"{NAME}.int8.onnx", fresh)
    with pytest.raises(MissingWeights, match=r"int8\.json"):
        load_models(int8_config(fresh))


def test_stale_quantisation_is_refused(home):
    # The fp32 weights were replaced (a new release) after quantising: the int8 copy is stale.
    onnx.save(cloth_segmentation(extra_layers=1), str(home / f"{NAME}.onnx"))
    with pytest.raises(quantize.Int8Refused, match="stale.*python -m bgremoval.quantize"):
        open_session(NAME, CLOTH_INPUTS, int8_config(home), "int8")


def test_tampered_sidecar_or_model_is_refused(home):
    path = home / f"{NAME}.int8.json"
    record = sidecar(home)
    path.write_text(json.dumps({**record, "source_sha256": "0" * 64}))
    with pytest.raises(quantize.Int8Refused, match="stale"):
        load_models(int8_config(home))
    path.write_text(json.dumps(record))
    with open(home / f"{NAME}.int8.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(quantize.Int8Refused, match="sha256 differs"):
        load_models(int8_config(home))
    path.write_text("{not json")
    with pytest.raises(quantize.Int8Refused, match="unreadable"):
        load_models(int8_config(home))


def test_disagreement_over_the_limit_is_refused(home):
    path = home / f"{NAME}.int8.json"
    path.write_text(json.dumps({**sidecar(home), "mask_pixels_differ_max": 0.02}))
    with pytest.raises(quantize.Int8Refused, match=r"up to 2\.00%.*0\.50%.*BG_INT8_MAX_DISAGREEMENT"):
        load_models(int8_config(home))
    # The variable the message names is the one that lets it through.
    env = {"U2NET_HOME": str(home), "BG_CLOTH_PRECISION": "int8", "BG_INT8_MAX_DISAGREEMENT": "0.025"}
    assert load_models(BgConfig.from_env(env)).cloth.weights_path.endswith(".int8.onnx")
    path.write_text(json.dumps({**sidecar(home), "mask_pixels_differ_max": float("nan")}))
    with pytest.raises(quantize.Int8Refused):
        load_models(BgConfig.from_env(env))


def test_command_line_refuses_missing_weights_and_too_few_photos(made, tmp_path, monkeypatch, capsys):
    photos = made[1]
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "empty"))
    assert quantize.main(["--photos", str(photos), "--calibration", "1", "--holdout", "1"]) == 2
    assert "u2net_cloth_seg.onnx are not installed" in capsys.readouterr().err
    monkeypatch.setenv("U2NET_HOME", str(made[0]))
    assert quantize.main(["--photos", str(photos), "--calibration", "4", "--holdout", "2"]) == 2
    assert "has 5 photos" in capsys.readouterr().err  # notes.txt is not one
    assert quantize.main(["--photos", str(tmp_path / "nowhere")]) == 2
