"""Lean serving: queries encoded by the ONNX export of the text tower, with a tokenizer that does
not import torch; the same ids, the same vectors (fp32), the same refusals as the torch path."""
from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from search.config import ClipSettings, SearchConfig
from search.text_encoder import EXPORT_DIRNAME, ExportError, OnnxTextEncoder, open_text_encoder
from search.tokenizer import ClipTokenizer
from tests.conftest import REPO, TINY

# Characters from many scripts and blocks: ASCII punctuation, Latin with accents, Greek, Cyrillic,
# Arabic, kana, CJK, emoji, joiners and combining marks, HTML-ish and quote characters.
ALPHABET = [chr(c) for c in [*range(32, 127), *range(0xA0, 0x250), *range(0x370, 0x3FF), *range(0x400, 0x4FF),
                             *range(0x600, 0x6FF), *range(0x3040, 0x30FF), *range(0x4E00, 0x4E80),
                             *range(0x1F300, 0x1F350), *range(0x1F600, 0x1F640), 0x200D, 0xFE0F, 0x300, 0x301, 0x9, 0xA]]
HANDPICKED = [
    "", " ", "Hello, World!", "pastel coloured tunic", "it's a <end_of_text> trap", "x<<end_of_text>y",
    "<start_of_text><START_OF_TEXT>", "Ünïcödé Straße 東京 👗 مرحبا", "&amp;lt;b&amp;gt; caf\u00e9 &#x1F457;",
    "don't 'S 'LL 'd've", "  lots   of\t\nspace\u3000here ", "🤷🏽‍♀️👩‍👩‍👧", "12345 ½ ² ٣", "Ã©tÃ© mojibake â€œquotedâ€\x9d",
    "e\u0301 vs \u00e9", "ﬁne ligature", "a" * 300, "word " * 100, "\x00\x01 control", "UPPER Case MiXeD",
]


def varied_strings(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = ["shirt", "Kleid", "robe", "платье", "فستان", "ワンピース", "连衣裙", "👗", "&amp;", "'s", "<end_of_text>", "123"]
    texts = list(HANDPICKED)
    while len(texts) < count:
        if rng.random() < 0.5:
            texts.append("".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 120))))
        else:
            texts.append(rng.choice([" ", "", ",", "-"]).join(rng.choice(words) for _ in range(rng.randint(1, 30))))
    return texts


@pytest.fixture(scope="module")
def open_clip_tokenizer():
    import open_clip

    return open_clip.get_tokenizer("ViT-B-32")


def test_token_ids_match_open_clip(open_clip_tokenizer, text_export):
    built = ClipTokenizer.from_open_clip_vocab(__import__("open_clip.tokenizer").tokenizer.default_bpe())
    served = ClipTokenizer.load(text_export / "tokenizer.json")  # what the service reads
    texts = varied_strings(3000)
    mismatches = [text for text in texts if not np.array_equal(open_clip_tokenizer([text])[0].numpy(), served(text))]
    assert not mismatches, f"{len(mismatches)} of {len(texts)} differ, e.g. {mismatches[:3]!r}"
    assert all(np.array_equal(built(text), served(text)) for text in texts[:200])


def test_token_ids_match_open_clip_on_100_kb(open_clip_tokenizer, text_export):
    rng = random.Random(1)
    text = " ".join(rng.choice(["floral", "Kleid", "👗", "東京", "a,b", "&lt;", "d'été"]) for _ in range(20000))
    assert len(text.encode()) > 100_000
    served = ClipTokenizer.load(text_export / "tokenizer.json")
    ids = served(text)
    assert np.array_equal(open_clip_tokenizer([text])[0].numpy(), ids)
    assert ids[-1] == served.eot_id and len(ids) == 77  # truncated, end-of-text kept last


def test_fp32_onnx_matches_open_clip_encode_text(tiny_embedder, text_export):
    import torch

    from search.indexing.export import check_texts

    encoder = OnnxTextEncoder(text_export)
    texts = check_texts() + varied_strings(60, seed=2)
    with torch.inference_mode():
        reference = torch.nn.functional.normalize(
            tiny_embedder.model.encode_text(tiny_embedder.tokenizer(texts)), dim=-1).numpy()
    assert np.abs(encoder.encode_texts(texts) - reference).max() <= 1e-5  # a batch, padded to its longest
    for text, expected in zip(texts[:40], reference, strict=False):  # one query, cut after its end-of-text
        ids = encoder.query_tokens(text)
        assert np.array_equal(ids, tiny_embedder.query_tokens(text))  # the same query-cache keys
        assert np.abs(encoder.encode_query_tokens(ids) - expected).max() <= 1e-5


def test_export_records_identity_and_measurements(tiny_embedder, text_export):
    meta = json.loads((text_export / "export.json").read_text())
    assert meta["identity"] == tiny_embedder.identity
    assert set(meta["files"]) == {"fp32", "int8"}
    assert meta["measured_against_open_clip"]["fp32"]["max_abs_diff"] <= 1e-5
    int8 = meta["measured_against_open_clip"]["int8"]
    assert 0.95 < int8["min_cosine"] < 1.0  # quantised: close, not equal, and the figure says how close
    for graph in meta["files"].values():
        assert (text_export / graph).is_file() and (text_export / f"{graph}.data").is_file()


def test_int8_only_when_asked(text_export):
    default = open_text_encoder(ClipSettings(**TINY), "auto", text_export)
    assert default.describe() == "onnx fp32"
    int8 = open_text_encoder(ClipSettings(**TINY, text_precision="int8"), "onnx", text_export)
    assert int8.describe() == "onnx int8"
    texts = ["red top", "navy skirt", "pastel coloured tunic"]
    cosine = (int8.encode_texts(texts) * default.encode_texts(texts)).sum(axis=1)
    assert np.all(cosine > 0.95) and not np.allclose(cosine, 1.0, atol=1e-7)


def test_text_encoder_choice_and_its_errors(tmp_path, text_export):
    settings = ClipSettings(**TINY)
    assert open_text_encoder(settings, "auto", tmp_path / "none").describe().startswith("torch")
    assert open_text_encoder(settings, "torch", text_export).describe().startswith("torch")
    with pytest.raises(ExportError, match="no text-encoder export"):
        open_text_encoder(settings, "onnx", tmp_path / "none")
    with pytest.raises(ExportError, match="SEARCH_TEXT_ENCODER"):
        open_text_encoder(settings, "tensorrt", text_export)
    with pytest.raises(ExportError, match="int8 needs the ONNX"):
        open_text_encoder(ClipSettings(**TINY, text_precision="int8"), "torch", text_export)
    with pytest.raises(ExportError, match="CLIP_MODEL"):
        open_text_encoder(ClipSettings(**{**TINY, "model": "ViT-B-32"}), "onnx", text_export)
    only_fp32 = tmp_path / "fp32-only"
    shutil.copytree(text_export, only_fp32)
    meta = json.loads((only_fp32 / "export.json").read_text())
    del meta["files"]["int8"]
    (only_fp32 / "export.json").write_text(json.dumps(meta))
    with pytest.raises(ExportError, match="no int8 graph"):
        open_text_encoder(ClipSettings(**TINY, text_precision="int8"), "onnx", only_fp32)


def test_mixed_up_export_folder_is_refused(tmp_path, text_export):
    mixed = tmp_path / "mixed"
    shutil.copytree(text_export, mixed)
    shutil.copy(mixed / "text.int8.onnx.data", mixed / "text.fp32.onnx.data")  # weights of another graph
    with pytest.raises(ExportError):
        OnnxTextEncoder(mixed)
    meta = json.loads((text_export / "export.json").read_text())
    meta["probes"]["fp32"] = list(-np.asarray(meta["probes"]["fp32"]))
    (mixed / "export.json").write_text(json.dumps(meta))
    shutil.copy(text_export / "text.fp32.onnx.data", mixed / "text.fp32.onnx.data")
    with pytest.raises(ExportError, match="does not give the embedding"):
        OnnxTextEncoder(mixed)


def test_service_refuses_an_export_of_other_weights(tmp_path, synthetic_index, tiny_embedder):
    """An export of seed 1 beside an index built with seed 0: not ready, and the reason says why."""
    from search import create_app
    from search.embedder import ClipEmbedder
    from search.indexing.export import export_text_encoder

    index = tmp_path / "index"
    shutil.copytree(synthetic_index, index)
    export_text_encoder(ClipEmbedder(ClipSettings(**{**TINY, "seed": 1}), text_only=True), index / EXPORT_DIRNAME,
                        int8=False)
    app = create_app(SearchConfig(clip=ClipSettings(**{**TINY, "seed": 1}), index_dir=str(index)))
    ready = app.test_client().get("/readyz")
    assert ready.status_code == 503
    assert "index was built with seed=0" in ready.json["detail"] and "rebuild the index" in ready.json["detail"]


def test_export_cli_checks_the_index(tmp_path, synthetic_index, monkeypatch, capsys):
    from search.indexing.export import main

    for key, value in {"CLIP_MODEL": "tiny-clip", "CLIP_PRETRAINED": "", "CLIP_CONFIG_DIR": TINY["extra_config_dir"],
                       "CLIP_SEED": "1"}.items():
        monkeypatch.setenv(key, value)
    index = tmp_path / "index"
    shutil.copytree(synthetic_index, index)
    assert main(["--index", str(index), "--no-int8"]) == 2
    assert "index was built with seed=0" in capsys.readouterr().err
    assert not (index / EXPORT_DIRNAME).exists()
    monkeypatch.setenv("CLIP_SEED", "0")
    assert main(["--index", str(index), "--no-int8"]) == 0
    assert json.loads((index / EXPORT_DIRNAME / "export.json").read_text())["files"] == {"fp32": "text.fp32.onnx"}
    # text-encoder/ is a link to the one version folder left (no work folder left behind)
    assert [p.name for p in index.glob(".text-encoder*")] == [(index / EXPORT_DIRNAME).resolve().name]


SERVE_WITHOUT_TORCH = textwrap.dedent("""
    import importlib.abc, json, sys

    class NoTorch(importlib.abc.MetaPathFinder):  # as in the lean image: torch is not installed
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("torch", "open_clip", "torchvision", "rembg"):
                raise ModuleNotFoundError(f"No module named {name!r}")

    sys.meta_path.insert(0, NoTorch())
    from search import create_app
    app = create_app()
    client = app.test_client()
    ready = client.get("/readyz")
    found = client.post("/", json={"text": "red top", "n": 3})
    print(json.dumps({"ready": ready.status_code, "readyz": ready.json, "status": found.status_code,
                      "results": found.json, "heavy": sorted(m for m in sys.modules if m.split(".")[0] in
                                                             ("torch", "open_clip", "torchvision", "rembg"))}))
""")


UNREACHABLE_BG = "http://127.0.0.1:9/"  # photo queries' garment step, as in the lean image (never called here)


def serve_without_torch(index_dir, **extra_env) -> dict:
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "CLIP_MODEL": "tiny-clip", "CLIP_PRETRAINED": "",
           "SEARCH_INDEX_DIR": str(index_dir), "SEARCH_TEXT_ENCODER": "auto", "BG_SERVICE_URL": UNREACHABLE_BG,
           **extra_env}
    done = subprocess.run([sys.executable, "-c", SERVE_WITHOUT_TORCH], env=env, capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_serving_needs_no_torch(onnx_index, client):
    served = serve_without_torch(onnx_index)
    assert served["ready"] == 200 and served["readyz"]["text_encoder"] == "onnx fp32"
    assert served["readyz"]["photo_queries"] == f"onnx fp32, garments by bg-removal service at {UNREACHABLE_BG}"
    assert served["heavy"] == []
    assert served["status"] == 200 and len(served["results"]) == 3


def test_photo_queries_without_the_garment_step_say_how_to_fix(onnx_index):
    served = serve_without_torch(onnx_index, BG_SERVICE_URL="")  # no service, and no rembg to run it here
    assert served["ready"] == 503
    assert "BG_SERVICE_URL" in served["readyz"]["detail"] and "SEARCH_IMAGE_QUERIES=0" in served["readyz"]["detail"]
    served = serve_without_torch(onnx_index, BG_SERVICE_URL="", SEARCH_IMAGE_QUERIES="0")
    assert served["ready"] == 200 and served["readyz"]["photo_queries"] == "off"
    assert served["status"] == 200


def test_without_export_or_torch_readiness_says_how_to_fix(synthetic_index):
    served = serve_without_torch(synthetic_index)
    assert served["ready"] == 503
    assert "search.export" in served["readyz"]["detail"] and "torch" in served["readyz"]["detail"]
    assert served["status"] == 503


def test_evaluation_measures_the_encoder_the_service_would_run(synthetic_catalog, onnx_index, tmp_path, capsys,
                                                                monkeypatch):
    from search import evaluate

    queries = tmp_path / "q.tsv"
    queries.write_text("query\trelevant_products\tkind\nyellow dress\t3-yellow-dress-shop-333\tname_words\n")
    for key, value in {"CLIP_MODEL": "tiny-clip", "CLIP_PRETRAINED": "", "CLIP_CONFIG_DIR": TINY["extra_config_dir"],
                       "CLIP_TEXT_PRECISION": "int8"}.items():
        monkeypatch.setenv(key, value)
    args = ["--catalog", str(synthetic_catalog), "--queries", str(queries), "--index", str(onnx_index)]
    assert evaluate.main(args) == 0
    assert "text_encoder=onnx int8" in capsys.readouterr().out
    monkeypatch.setenv("SEARCH_TEXT_ENCODER", "torch")
    monkeypatch.setenv("CLIP_TEXT_PRECISION", "fp32")
    assert evaluate.main(args) == 0
    assert "text_encoder=torch fp32" in capsys.readouterr().out
