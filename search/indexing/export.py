"""Export the CLIP text and image towers to ONNX, so the search service encodes queries (text and
photos) without torch.

    python -m search.export --index DIR       # writes DIR/text-encoder/ (CLIP_* settings as for the build)

(The folder keeps its name, text-encoder/, for the indexes and settings that already point at it.)
It is a symlink to a version folder beside it (.text-encoder.v-<time>-<random>/): an export
writes a new version, then flips the link with one rename, so a worker that loads meanwhile
reads the old export or the new one, whole; the old version is removed after the flip. An
export holds the writer lock of the folder it writes into (the index's, by default): a build of
that index waits for it, and it for a build; --no-wait exits with status 2 instead.

What the folder holds (read by search/text_encoder.py):
    text.fp32.onnx   the text tower (weights in text.fp32.onnx.data, memory-mapped when served), token ids [batch, length] -> normalised embedding [batch, dim].
                     The length is dynamic: a query runs only up to its end-of-text token (the
                     tower is causal and pools there, so later tokens never count).
    text.int8.onnx   the same, MatMul weights quantised to int8 per channel (onnxruntime dynamic
                     quantisation). Served only when CLIP_TEXT_PRECISION=int8 asks for it.
    image.fp32.onnx  the image tower (photo queries, search/image_encoder.py): pixels [batch, 3, size, size]
                     as open_clip's preprocessing makes them -> normalised embedding [batch, dim].
    tokenizer.json   open_clip's BPE vocabulary for Hugging Face `tokenizers` (search/tokenizer.py).
    export.json      the CLIP identity (the index's probe embedding), each graph's own probe, and
                     what was measured at export: max abs diff of fp32 to open_clip's encode_text,
                     cosine of int8 to fp32; for the image tower its preprocessing and its max abs
                     diff to open_clip's encode_image (torch preprocessing) on check pictures.

Needs torch and open_clip (the builder's requirements), like the index build.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from search.config import ClipSettings
from search.embedder import ClipEmbedder, TextTower
from search.image_encoder import OnnxImageEncoder, check_pictures, preprocess_spec, probe_picture
from search.index_format import Index, IndexLoadError
from search.index_guard import WriterBusy, new_folder_version, switch_folder, writer_lock
from search.text_encoder import (
    EXPORT_DIRNAME,
    EXPORT_FORMAT,
    EXPORT_META,
    ExportError,
    OnnxTextEncoder,
)
from search.tokenizer import PROBE_TEXT, ClipTokenizer
from shared.settings import exit_on_bad_settings

log = logging.getLogger("fashion.search")
OPSET = 18  # torch.onnx's own: no version conversion after the export
MAX_FP32_DIFF = 1e-4  # an export further than this from open_clip is broken, not imprecise

COLOURS = ["red", "navy", "pastel", "black", "white", "mustard yellow", "olive green", "dusty pink"]
GARMENTS = ["tunic", "maxi dress", "denim jacket", "pleated skirt", "hoodie", "linen trousers", "kimono", "abaya"]
DETAILS = ["", " with long sleeves", " in silk", ", floral print", " for a summer wedding", " oversized fit"]


def check_texts() -> list[str]:
    """Queries the export is measured on: short catalogue queries, odd characters, one that
    overflows the 77-token context."""
    texts = [f"{c} {g}{d}" for c, g, d in itertools.product(COLOURS, GARMENTS, DETAILS)][::3]
    texts += [PROBE_TEXT, "", "!!!", "Ünïcödé Straße 東京 👗", "it's <end_of_text> here", "x " * 200]
    return texts


class QueryTower(torch.nn.Module):
    """The exported graph: TextTower.run plus the normalisation the service applies."""

    def __init__(self, tower: TextTower):
        super().__init__()
        self.tower = tower
        # Registered so the exporter sees them as the module's weights (TextTower is a dataclass).
        for name in ("token_embedding", "transformer", "ln_final", "positional_embedding", "text_projection"):
            part = getattr(tower, name)
            if isinstance(part, (torch.nn.Module, torch.nn.Parameter)):
                setattr(self, name, part)
        self.register_buffer("attn_mask", tower.attn_mask, persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.tower.run(tokens), dim=-1)


def supported(embedder: ClipEmbedder) -> TextTower:
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = embedder.tokenizer
    if (embedder.fp32_text is None or type(tokenizer) is not SimpleTokenizer
            or tokenizer.clean_fn.__name__ != "_clean_lower" or tokenizer.reduction_fn is not None):
        raise ExportError(f"{embedder.model_name}: only CLIP text towers with open_clip's SimpleTokenizer "
                          "(argmax pooling, lower-case cleaning) can be exported; serve it with SEARCH_TEXT_ENCODER=torch")
    return embedder.fp32_text


def export_onnx(tower: TextTower, path: Path) -> None:
    sample = torch.tensor([[49406, 320, 1125, 49407, 0, 0], [49406, 320, 1125, 537, 1237, 49407]], dtype=torch.int64)
    dims = {0: torch.export.Dim("batch", min=1, max=1024), 1: torch.export.Dim("length", min=2, max=len(tower.attn_mask))}
    with torch.inference_mode(False), torch.no_grad():
        program = torch.onnx.export(QueryTower(tower).eval(), (sample,), dynamo=True, opset_version=OPSET,
                                    input_names=["tokens"], output_names=["normalised_embedding"],
                                    dynamic_shapes={"tokens": dims}, optimize=True)
    program.save(str(path), external_data=True)


class ImageQueryTower(torch.nn.Module):
    """The exported image graph: open_clip's encode_image plus the normalisation."""

    def __init__(self, model):
        super().__init__()
        self.visual = model.visual

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.visual(pixels), dim=-1)


def export_image_onnx(model, size: int, path: Path) -> None:
    sample = torch.zeros(2, 3, size, size)
    dims = {0: torch.export.Dim("batch", min=1, max=1024)}
    with torch.inference_mode(False), torch.no_grad():
        program = torch.onnx.export(ImageQueryTower(model).eval(), (sample,), dynamo=True, opset_version=OPSET,
                                    input_names=["pixels"], output_names=["normalised_embedding"],
                                    dynamic_shapes={"pixels": dims}, optimize=True)
    program.save(str(path), external_data=True)


def export_image_tower(embedder: ClipEmbedder, work: Path, meta: dict) -> dict:
    """image.fp32.onnx in `work` and its export.json entry, measured against open_clip's own path
    (torchvision preprocessing, encode_image in fp32 on the CPU)."""
    visual = embedder.model.visual
    if visual is None:
        raise ExportError("the embedder was loaded text-only; the image tower needs the full model")
    spec = preprocess_spec(visual.preprocess_cfg)
    if next(visual.parameters()).device.type != "cpu":
        raise ExportError("export the image tower with DEVICE=cpu (the export is measured in fp32)")
    exported = work / "image.export.onnx"
    export_image_onnx(embedder.model, spec["size"], exported)
    move_weights_out(exported, work / "image.fp32.onnx")  # mapped, shared by the workers
    for leftover in work.glob("image.export.onnx*"):
        leftover.unlink()
    entry = {"file": "image.fp32.onnx", "preprocess": spec}
    encoder = OnnxImageEncoder(work, meta={**meta, "image": entry})
    pictures = check_pictures()
    vectors = encoder.encode_images(pictures)
    reference = embedder.encode_images(pictures)
    cosine = (vectors * reference).sum(axis=1)
    measured = {"max_abs_diff": float(np.abs(vectors - reference).max()), "min_cosine": float(cosine.min()),
                "pictures": len(pictures)}
    if measured["max_abs_diff"] > MAX_FP32_DIFF:
        raise ExportError(f"the ONNX image tower differs from open_clip's by {measured['max_abs_diff']:.2e} "
                          f"(> {MAX_FP32_DIFF}); not writing it")
    probe = encoder.encode_images([probe_picture()])[0]
    return {**entry, "probe": [round(float(v), 6) for v in probe], "measured_against_open_clip": measured}


def quantize_int8(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul"])
    move_weights_out(target)


def move_weights_out(path: Path, target: Path | None = None) -> None:
    """Store the graph at `path` as `target` (default: in place) with its weights in
    `<target>.data`, each tensor page-aligned: onnxruntime then maps that file instead of copying
    it, so the workers of one host share those pages (the token embedding, 101 MB for ViT-B-32,
    is only read a few rows per query)."""
    import onnx_ir

    target = target or path
    model = onnx_ir.load(str(path))
    onnx_ir.save(model, str(target), external_data=f"{target.name}.data")


def export_text_encoder(embedder: ClipEmbedder, out: Path, *, int8: bool = True, image: bool | None = None) -> dict:
    """Write the text-encoder folder at `out` (a new version, put in place once it is complete,
    see the module's docstring); with `image`, the image tower for photo queries too (None: when
    the embedder has one). Holds the writer lock of the folder `out` is in."""
    out = Path(out)
    with writer_lock(out.parent, "export"):
        _remove_work_folders_of_old_exports(out)
        return _export(embedder, out, int8, image)


def _export(embedder: ClipEmbedder, out: Path, int8: bool, image: bool | None) -> dict:
    if image is None:
        image = embedder.model.visual is not None
    from open_clip.tokenizer import default_bpe

    tower = supported(embedder)
    started = time.perf_counter()
    work = new_folder_version(out)
    try:
        ClipTokenizer.from_open_clip_vocab(default_bpe(), embedder.tokenizer.context_length).save(work / "tokenizer.json")
        export_onnx(tower, work / "text.fp32.onnx")
        files = {"fp32": "text.fp32.onnx"}
        if int8:
            quantize_int8(work / "text.fp32.onnx", work / "text.int8.onnx")
            files["int8"] = "text.int8.onnx"
        meta = {
            "format_version": EXPORT_FORMAT,
            "identity": embedder.identity,
            "files": files,
            "context_length": embedder.tokenizer.context_length,
            "opset": OPSET,
            "torch": torch.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        texts = check_texts()
        reference = embedder.encode_texts_full(texts)
        measured, probes = {}, {}
        for precision in files:
            encoder = OnnxTextEncoder(work, precision=precision, meta={**meta, "probes": {}})
            vectors = encoder.encode_texts(texts)
            probes[precision] = [round(float(v), 6) for v in encoder.encode_texts([PROBE_TEXT])[0]]
            cosine = (vectors * reference).sum(axis=1)
            measured[precision] = {"max_abs_diff": float(np.abs(vectors - reference).max()),
                                   "min_cosine": float(cosine.min()), "mean_cosine": float(cosine.mean()),
                                   "texts": len(texts)}
        if measured["fp32"]["max_abs_diff"] > MAX_FP32_DIFF:
            raise ExportError(f"the ONNX text tower differs from open_clip's by {measured['fp32']['max_abs_diff']:.2e} "
                              f"(> {MAX_FP32_DIFF}); not writing it")
        meta.update(probes=probes, measured_against_open_clip=measured)
        if image:
            meta["image"] = export_image_tower(embedder, work, meta)
        meta["export_s"] = round(time.perf_counter() - started, 1)
        (work / EXPORT_META).write_text(json.dumps(meta, indent=1))
        switch_folder(out, work)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return meta


def _remove_work_folders_of_old_exports(out: Path) -> None:
    """Exports before versions worked in `.text-encoder-XXXXXXXX` and moved the old folder to
    `.text-encoder-old-PID`; one that crashed left them (the lock is held: none is in use)."""
    for leftover in out.parent.glob(f".{out.name}-*"):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)


def summary(out: Path, meta: dict) -> list[str]:
    """One line per graph: its size on disk and how it compares with open_clip's encode_text."""
    lines = []
    for precision, figures in meta["measured_against_open_clip"].items():
        size = sum(p.stat().st_size for p in Path(out).glob(f"{meta['files'][precision]}*")) / 1e6
        lines.append(f"{precision}: {size:.1f} MB, max abs diff to open_clip encode_text {figures['max_abs_diff']:.2e}, "
                     f"cosine min {figures['min_cosine']:.6f} mean {figures['mean_cosine']:.6f} over {figures['texts']} texts")
    if "image" in meta:
        image = meta["image"]
        figures = image["measured_against_open_clip"]
        size = sum(p.stat().st_size for p in Path(out).glob(f"{image['file']}*")) / 1e6
        lines.append(f"image fp32: {size:.1f} MB, max abs diff to open_clip encode_image {figures['max_abs_diff']:.2e}, "
                     f"cosine min {figures['min_cosine']:.6f} over {figures['pictures']} pictures")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", help="the index the service serves: its identity must match, and the "
                                        f"export goes to INDEX/{EXPORT_DIRNAME} unless --out says otherwise")
    parser.add_argument("--out", help="where to write the text-encoder folder")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 graph")
    parser.add_argument("--no-image", action="store_true",
                        help="skip the image tower (the service then needs SEARCH_IMAGE_QUERIES=0)")
    parser.add_argument("--no-wait", action="store_true",
                        help="when another writer holds the folder the export goes into (the index's), exit with "
                             "status 2 instead of waiting for it")
    args = parser.parse_args(argv)
    if not args.index and not args.out:
        parser.error("give --index (or --out)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for chatty in ("onnxscript", "onnx_ir", "root"):  # per-initializer and per-tensor notes
        logging.getLogger(chatty).setLevel(logging.WARNING)
    settings = exit_on_bad_settings(ClipSettings.from_env)
    if args.index and not Path(args.index).is_dir():  # no lock file (or folder) made for a mistyped path
        print(f"error: there is no index at {args.index}; build it with "
              f"`python -m search.index build --catalog DIR --out {args.index}`", file=sys.stderr)
        return 2
    out = Path(args.out or Path(args.index) / EXPORT_DIRNAME)
    try:  # the whole command holds the folder: the index checked is the one the export lands beside
        with writer_lock(out.parent, "export", wait=not args.no_wait):
            embedder = ClipEmbedder(settings.model_copy(update={"device": "cpu"}), text_only=args.no_image)
            if args.index:
                Index.load(args.index).check_compatible(embedder.identity)
            meta = export_text_encoder(embedder, out, int8=not args.no_int8, image=not args.no_image)
    except WriterBusy as exc:
        print(exc, file=sys.stderr)
        return WriterBusy.EXIT_STATUS
    except (IndexLoadError, ExportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(summary(out, meta)))
    print(f"text encoder for {meta['identity']['model']} written to {out} in {meta['export_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
