"""The command-line tools run end to end: evaluations, weights check, sample fetch, index info."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image

from tests.conftest import REPO, TINY, shared_data


def test_bg_evaluation_on_labelled_street_photos(oracle_weights, tmp_path, capsys):
    from bgremoval import evaluate

    data = shared_data("ccp")
    rows = evaluate.evaluate(data, tmp_path / "worst", limit=4, worst=2)
    out = capsys.readouterr().out
    assert len(rows) == 4 and "MEAN" in out and "keep-main-person changed" in out
    assert all(0.0 <= r.garment_iou <= 1.0 and 0.0 <= r.person_iou_main <= 1.0 for r in rows)
    assert len(list((tmp_path / "worst").glob("worst_*.jpg"))) == 2


def test_iou_and_class_mapping():
    from bgremoval.evaluate import GARMENT_CLASS_NAMES, iou

    a = np.zeros((4, 4), bool); a[:2] = True
    b = np.zeros((4, 4), bool); b[1:3] = True
    assert iou(a, b) == 4 / 12
    assert {"skin", "hair", "null", "shoes", "bag", "scarf", "sunglasses"}.isdisjoint(GARMENT_CLASS_NAMES)
    assert {"dress", "jeans", "t-shirt", "coat"} <= GARMENT_CLASS_NAMES


def test_search_evaluation(synthetic_catalog, synthetic_index, tmp_path, capsys, monkeypatch):
    from search import evaluate

    queries = tmp_path / "q.tsv"
    queries.write_text("query\trelevant_products\tkind\nyellow dress\t3-yellow-dress-shop-333\tname_words\n"
                       "red top\t1-red-top-shop-111,4-dark-red-blouse-shop-444\tname_words\n")
    monkeypatch.setenv("CLIP_MODEL", TINY["model"])
    monkeypatch.setenv("CLIP_PRETRAINED", "")
    monkeypatch.setenv("CLIP_CONFIG_DIR", TINY["extra_config_dir"])
    assert evaluate.main(["--catalog", str(synthetic_catalog), "--queries", str(queries),
                          "--index", str(synthetic_index)]) == 0
    out = capsys.readouterr().out
    assert "OVERALL" in out and "score-max" in out
    assert evaluate.metrics(["a", "b", "c"], {"b"}) == {"R@1": 0.0, "R@5": 1.0, "MRR": 0.5}


def test_weights_check_reports_missing(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bgremoval.weights", "check"], cwd=REPO,
                            env={"U2NET_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert result.returncode == 1 and "MISSING" in result.stdout


def test_sample_fetch_verifies_a_local_copy(tmp_path):
    catalog = shared_data("catalog")
    out = tmp_path / "copy"
    result = subprocess.run([sys.executable, "sample/fetch_catalog.py", "--from", str(catalog), "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-500:]
    assert len(list(out.glob("*/*.png"))) == 171
    tampered = tmp_path / "tampered"
    subprocess.run(["cp", "-r", str(out), str(tampered)], check=True)
    victim = sorted(tampered.glob("*/*.png"))[0]
    Image.new("RGB", (10, 10)).save(victim)
    bad = subprocess.run([sys.executable, "sample/fetch_catalog.py", "--from", str(tampered), "--out",
                          str(tmp_path / "again")], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 1 and "sha256 differs" in bad.stderr


def test_index_info(synthetic_index):
    result = subprocess.run([sys.executable, "-m", "search.index", "info", "--index", str(synthetic_index)],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and '"products": 6' in result.stdout


def test_problem_for_status_maps_remote_errors():
    from shared.errors import ProblemError, Unprocessable, UpstreamTimeout, problem_for_status

    assert isinstance(problem_for_status(422, "no garment"), Unprocessable)
    assert isinstance(problem_for_status(504, "slow"), UpstreamTimeout)
    odd = problem_for_status(418, "teapot")
    assert isinstance(odd, ProblemError) and odd.status == 418 and odd.detail == "teapot"
